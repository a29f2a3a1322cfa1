"""Many processes on one SQL ledger at once, and writers SIGKILLed at random points (SQLite and PostgreSQL).

* Hammering: several client processes submit claims, consume their grants in pieces (each piece with a request
  id, sent twice as a client retry would) and release them, while one granter process holds the grant lease
  and allocates. Afterwards: every claim finished, exactly one journaled grant per claim (no double grant), the
  consumed budget per block equals the sum of what the clients were acknowledged (no lost update, no double
  effect of a retry), and the audit (journal replay = stored state, all invariants) passes.
* Grant lease: while one ledger holds the right to grant, a second one fails clearly (``GrantLeaseError``) or
  waits; it gets the lease when the holder closes or dies.
* Crash: writer processes that consume with request ids and append each id to an ack file only *after* the
  call returned are SIGKILLed at random moments, many times; after each kill the ledger is reopened and
  audited: every acknowledged request is in the journal, nothing is half-applied, no invariant is broken.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import GrantLeaseError
from dpf_sched.ledger import ClaimState
from dpf_sched.ledger.sql import open_ledger

CTX = mp.get_context("fork")  # children open their own connections; the parent holds none while forking
N_BLOCKS = 4
PIECE = 1e-4  # ε of one consumption piece


def _setup(url: str, capacity: float = 1000.0) -> None:
    with open_ledger(url, BasicComposition()) as led:
        for b in range(N_BLOCKS):
            led.add_block(Block(f"b{b}", EpsDelta(capacity, 1e-6)))
        led.unlock_to(list(range(N_BLOCKS)), [1.0] * N_BLOCKS)


def _client(url: str, worker: int, n_claims: int, pieces: int, out: Any) -> None:
    rng = random.Random(worker)
    consumed = np.zeros(N_BLOCKS)
    with open_ledger(url) as led:
        for k in range(n_claims):
            cid = f"w{worker}-c{k}"
            blocks = sorted(rng.sample(range(N_BLOCKS), 2))
            led.add_claim(Claim(cid, {f"b{b}": EpsDelta(pieces * PIECE * 2, 0.0) for b in blocks}))
            deadline = time.monotonic() + 60
            while led.state(cid) is ClaimState.WAITING:
                assert time.monotonic() < deadline, f"{cid} never granted"
                time.sleep(0.002)
            for p in range(pieces):
                amounts = {f"b{b}": EpsDelta(PIECE, 0.0) for b in blocks}
                led.consume(cid, amounts, request_id=f"{cid}-p{p}")
                led.consume(cid, amounts, request_id=f"{cid}-p{p}")  # a client retry: no second effect
                for b in blocks:
                    consumed[b] += PIECE
            led.release(cid, request_id=f"{cid}-rel")
            led.release(cid, request_id=f"{cid}-rel")
    out.put((worker, consumed.tolist()))


def _granter(url: str, total: int, out: Any) -> None:
    granted: set[str] = set()
    with open_ledger(url, grant_timeout=30.0) as led:
        led.hold_grant_lease()
        out.put("lease")
        deadline = time.monotonic() + 90
        while len(granted) < total and time.monotonic() < deadline:
            for cid in list(led.claim_ids()):
                if cid.startswith("w") and cid not in granted and led.state(cid) is ClaimState.WAITING:
                    led.allocate(cid, 0.0)
                    granted.add(cid)
            time.sleep(0.001)
    out.put(("granted", len(granted)))


def test_many_processes_hammer_one_ledger(url: str) -> None:
    _setup(url)
    n_workers, n_claims, pieces = 4, 6, 5
    out = CTX.Queue()
    granter = CTX.Process(target=_granter, args=(url, n_workers * n_claims, out))
    granter.start()
    assert out.get(timeout=60) == "lease"
    # A second scheduler loop cannot grant while the first holds the lease: it fails clearly.
    with open_ledger(url) as other:
        other.add_claim(Claim("intruder", {"b0": EpsDelta(0.1, 0.0)}))
        with pytest.raises(GrantLeaseError, match="only one may grant"):
            other.allocate("intruder", 0.0)
        other.reject("intruder", 0.0, "test")
    workers = [CTX.Process(target=_client, args=(url, w, n_claims, pieces, out)) for w in range(n_workers)]
    for p in workers:
        p.start()
    results = [out.get(timeout=120) for _ in range(n_workers + 1)]
    for p in [granter, *workers]:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = np.zeros(N_BLOCKS)
    for r in results:
        if r[0] != "granted":
            expected += np.array(r[1])
    assert ("granted", n_workers * n_claims) in results
    with open_ledger(url) as led:
        report = led.audit()
        assert report.ok, report.to_dict()
        states = {led.state(c) for c in led.claim_ids() if c != "intruder"}
        assert states == {ClaimState.FINISHED}
        grants = led._store.execute("SELECT payload FROM dpf_journal WHERE op = 'allocate'")
        assert len(grants) == n_workers * n_claims, "each claim granted exactly once"
        consumed = np.asarray(led.consumed)[:, 0]
        np.testing.assert_allclose(consumed, expected, rtol=1e-12, atol=1e-15)
        assert np.all(np.abs(np.asarray(led.allocated)) < 1e-12)  # float residue of the sums only


def test_second_granter_waits_for_the_lease(url: str) -> None:
    _setup(url)
    a = open_ledger(url)
    b = open_ledger(url, grant_timeout=5.0)
    try:
        for cid in ("c1", "c2"):
            a.add_claim(Claim(cid, {"b0": EpsDelta(0.1, 0.0)}))
        a.allocate("c1", 0.0)
        with pytest.raises(GrantLeaseError):
            b.hold_grant_lease(timeout=0.05)
        a.close()  # the holder goes away: the waiting loop takes over
        b.allocate("c2", 1.0)
        assert b.state("c2") is ClaimState.GRANTED
    finally:
        a.close()
        b.close()


def _crash_writer(url: str, worker: int, ack_path: str, start: int) -> None:
    with open_ledger(url) as led:
        fd = os.open(ack_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        i = start
        while True:
            cid = f"g{worker}"
            rid = f"{worker}-{i}"
            if i % 7 == 6:
                led.add_claim(Claim(f"x{worker}-{i}", {"b1": EpsDelta(0.01, 0.0)}))
                rid = f"claim x{worker}-{i}"
            else:
                led.consume(cid, {"b0": EpsDelta(PIECE, 0.0)}, float(i), request_id=rid)
            os.write(fd, f"{rid}\n".encode())  # acknowledged only after the call returned (committed)
            i += 1


def test_sigkill_writers_then_reopen_and_audit(url: str, tmp_path: Path) -> None:
    _setup(url)
    n_writers = 2
    with open_ledger(url) as led:
        for w in range(n_writers):
            led.add_claim(Claim(f"g{w}", {"b0": EpsDelta(100.0, 0.0)}))
            led.allocate(f"g{w}", 0.0)
    rng = random.Random(6)
    acks = [tmp_path / f"acks{w}" for w in range(n_writers)]
    rounds = 12
    for r in range(rounds):
        procs = []
        for w in range(n_writers):
            start = 1000 * r
            p = CTX.Process(target=_crash_writer, args=(url, w, str(acks[w]), start))
            p.start()
            procs.append(p)
        time.sleep(rng.uniform(0.05, 0.3))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
        for p in procs:
            p.join(timeout=30)
            assert p.exitcode == -signal.SIGKILL
        with open_ledger(url) as led:
            report = led.audit()
            assert report.ok, f"round {r}: {report.to_dict()}"
            assert led.violations() == []
            claims = set(led.claim_ids())
            n_acked = 0
            for path in acks:
                for line in path.read_text().splitlines() if path.exists() else []:
                    n_acked += 1
                    if line.startswith("claim "):
                        assert line.split(" ", 1)[1] in claims, f"round {r}: acknowledged {line} lost"
                    else:
                        assert led.has_request(line), f"round {r}: acknowledged consume {line} lost"
            # The consumed budget is exactly the pieces of the journaled consumptions (nothing half-applied).
            n_consumes = len(led._store.execute("SELECT seq FROM dpf_journal WHERE op = 'consume'"))
            assert n_consumes >= sum(
                1 for p in acks if p.exists() for ln in p.read_text().splitlines() if not ln.startswith("claim")
            )
            np.testing.assert_allclose(np.asarray(led.consumed)[0, 0], n_consumes * PIECE, rtol=1e-9)
    assert n_acked > rounds, "the writers made too little progress to test anything"
