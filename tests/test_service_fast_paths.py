"""The service's fast paths keep their guarantees: the token cache (revocation within ``TOKEN_TTL``), the claim
metadata written in the claim's own transaction, and the leader's one-transaction-per-pass grants
(:meth:`SqlLedger.batch`: one journal entry per grant, nothing visible before the commit, all or nothing)."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from service_support import auth, create_token, revoke_token, start_server

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import InvalidStateError, LedgerStorageError, UnknownClaimError
from dpf_sched.ledger import ClaimState
from dpf_sched.ledger.sql import SqlLedger, open_store
from dpf_sched.ledger.sql.stores import Store
from dpf_sched.service.app import TOKEN_TTL
from dpf_sched.service.tables import Principal, Role, TokenCache


# ----- token cache ----------------------------------------------------------------------------------------------
def test_token_cache_expires_after_ttl_and_keeps_no_secret() -> None:
    cache = TokenCache(ttl=0.2)
    p = Principal("abc", "alice", Role.TENANT)
    tok = "dpf_0123456789ab.secret-secret-secret-secret"
    assert cache.get(tok) is None
    cache.put(tok, p, time.monotonic())
    assert cache.get(tok) == p
    assert cache.get(tok + "x") is None
    assert all(tok.encode() not in k for k in cache._entries)  # keyed by digest only
    time.sleep(0.25)
    assert cache.get(tok) is None  # trusted for at most ttl seconds after the lookup


def test_token_cache_counts_from_the_lookup_and_can_be_disabled() -> None:
    cache = TokenCache(ttl=0.2)
    p = Principal("abc", "alice", Role.TENANT)
    cache.put("t", p, time.monotonic() - 0.3)  # the lookup started before the ttl: already stale
    assert cache.get("t") is None
    off = TokenCache(ttl=0.0)
    off.put("t", p, time.monotonic())
    assert off.get("t") is None
    small = TokenCache(ttl=10.0, max_size=2)
    for k in "abc":
        small.put(k, p, time.monotonic())
    assert small.get("c") == p and len(small._entries) <= 2


def test_revocation_takes_effect_within_the_ttl(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}?synchronous=normal"
    tok = create_token(db, "alice")
    server = start_server(db, "fcfs", log_dir=tmp_path)
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for _ in range(3):  # cached now
                assert c.get("/v1/claims", headers=auth(tok)).status_code == 200
            revoke_token(db, tok)  # another process, committed when it returns
            revoked_at = time.monotonic()
            while True:
                r = c.get("/v1/claims", headers=auth(tok))
                if r.status_code == 401:
                    break
                assert r.status_code == 200
                assert time.monotonic() - revoked_at < TOKEN_TTL + 0.5, "revocation not effective within the TTL"
                time.sleep(0.02)
            # Once refused, always refused (negative lookups are never cached as live).
            time.sleep(TOKEN_TTL + 0.1)
            for _ in range(3):
                assert c.get("/v1/claims", headers=auth(tok)).status_code == 401
    finally:
        server.stop()


# ----- ledger: add_claim's hook and batches -------------------------------------------------------------------
def _ledger(tmp_path: Path, name: str = "l.db") -> SqlLedger:
    led = SqlLedger(open_store(f"sqlite:///{tmp_path / name}"), BasicComposition(), create=True)
    led.add_block(Block("b", EpsDelta(10.0), created=0.0))
    led.unlock_to([0], [1.0])
    return led


def test_add_claim_hook_runs_in_the_same_transaction(tmp_path: Path) -> None:
    led = _ledger(tmp_path)
    led._store.execute("CREATE TABLE side (id TEXT)")
    before = led.journal_length

    def refuse(st: Store) -> None:
        st.execute("INSERT INTO side (id) VALUES ('x')")
        raise RuntimeError("refused")

    with pytest.raises(RuntimeError):
        led.add_claim(Claim("c", {"b": EpsDelta(1.0)}, arrival=1.0), before=refuse)
    assert led.journal_length == before and led._store.execute("SELECT id FROM side") == []
    with pytest.raises(UnknownClaimError):
        led.claim("c")
    led.add_claim(
        Claim("c", {"b": EpsDelta(1.0)}, arrival=1.0),
        before=lambda st: st.execute("INSERT INTO side (id) VALUES ('c')") and None,
    )
    assert led.journal_length == before + 1 and led._store.execute("SELECT id FROM side") == [("c",)]
    assert led.audit().ok
    led.close()


def _two_waiting(tmp_path: Path) -> tuple[SqlLedger, SqlLedger]:
    led = _ledger(tmp_path)
    for i in range(3):
        led.add_claim(Claim(f"c{i}", {"b": EpsDelta(1.0)}, arrival=1.0 + i))
    other = SqlLedger(open_store(f"sqlite:///{tmp_path / 'l.db'}", create=False), create=False)
    return led, other


def test_batch_commits_once_with_one_journal_entry_per_operation(tmp_path: Path) -> None:
    led, other = _two_waiting(tmp_path)
    start = led.journal_length
    with led.batch():
        led.allocate("c0", 5.0)
        with pytest.raises(InvalidStateError):
            led.allocate("c0", 5.0)  # refused by the mirror: the batch's earlier grant stands
        led.allocate("c1", 5.0)
        led.reject("c2", 5.0, "policy")
        assert led.journal_length == start + 3
        assert other.state("c0") is ClaimState.WAITING  # nothing visible before the commit
    assert [other.state(f"c{i}") for i in range(3)] == [ClaimState.GRANTED, ClaimState.GRANTED, ClaimState.REJECTED]
    ops = led._store.execute("SELECT seq, op FROM dpf_journal WHERE seq > ? ORDER BY seq", (start,))
    assert [str(r[1]) for r in ops] == ["allocate", "allocate", "reject"]
    assert [int(r[0]) for r in ops] == [start + 1, start + 2, start + 3]
    assert led.audit().ok
    led.close()
    other.close()


def test_batch_is_all_or_nothing(tmp_path: Path) -> None:
    led, other = _two_waiting(tmp_path)
    start = led.journal_length
    with pytest.raises(RuntimeError), led.batch():
        led.allocate("c0", 5.0)
        raise RuntimeError("boom")
    assert led.state("c0") is ClaimState.WAITING and led.journal_length == start  # mirror rebuilt
    assert other.state("c0") is ClaimState.WAITING

    def fail() -> None:
        raise LedgerStorageError("disk on fire")

    led._before_commit = fail
    with pytest.raises(LedgerStorageError), led.batch():
        led.allocate("c0", 5.0)
        led.allocate("c1", 5.0)
    led._before_commit = None
    assert led.state("c0") is ClaimState.WAITING and led.state("c1") is ClaimState.WAITING
    assert led.journal_length == start and led.audit().ok
    led.allocate("c0", 6.0)  # the ledger works normally afterwards
    assert other.state("c0") is ClaimState.GRANTED and led.audit().ok
    led.close()
    other.close()
