"""Faults the budget service must ride through (issue 19): races of other processes' writes against the leader's
pass and takeover, a stalled writer, lost PostgreSQL connections, the server's default isolation level and
concurrent first starts. Each test pins its interleaving by injecting the other process's write at the exact
point of the race (no timing luck), runs on SQLite and PostgreSQL where the fault exists on both, and ends with
the audit.

The leader-side tests drive :class:`~dpf_sched.service.leader.LeaderLoop` directly (``_try_lead``/``_tick``, one
step at a time, no thread) with a second ledger connection standing for the API processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from service_support import auth, create_token, start_server
from sql_ledger_support import PG_SKIP, PG_URL, drop_schemas, new_schema_name, pg_url

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import LedgerStorageError, StorageTimeoutError
from dpf_sched.ledger.base import ClaimState
from dpf_sched.ledger.sql import SqlLedger, open_ledger, open_store
from dpf_sched.policies.base import Decision, PassContext
from dpf_sched.service.leader import LeaderLoop, LeaderScheduler


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=PG_SKIP)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh ledger URL (SQLite file or PostgreSQL schema, dropped afterwards)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    name = new_schema_name("dpf_faults")
    try:
        yield pg_url(name)
    finally:
        drop_schemas([name])


def with_options(url: str, **options: object) -> str:
    """``url`` with query options added."""
    sep = "&" if "?" in url else "?"
    return url + sep + "&".join(f"{k}={quote(str(v))}" for k, v in options.items())


def eps(e: float) -> EpsDelta:
    return EpsDelta(e, 0.0)


def leader(db: str, policy: str, **params: Any) -> LeaderLoop:
    """A leader loop that holds the lease and has built its scheduler (no thread: the test steps it)."""
    loop = LeaderLoop(db, policy, params, poll=0.01, lease_retry=0.01)
    assert loop._try_lead()
    return loop


def inject_in_pass(loop: LeaderLoop, write: Callable[[], None]) -> list[int]:
    """Run ``write`` (another process's commit) once, inside the next pass: after the policy decided, before the
    decisions are applied. Returns a list that holds 1 once it ran."""
    sched = loop._sched
    assert sched is not None
    policy = sched.policy
    original = policy.schedule
    fired: list[int] = []

    def schedule(ctx: PassContext) -> list[Decision]:
        decisions = original(ctx)
        if not fired:
            fired.append(1)
            write()
        return decisions

    policy.schedule = schedule  # type: ignore[method-assign]
    return fired


def close(*ledgers: SqlLedger | LeaderLoop) -> None:
    for x in ledgers:
        if isinstance(x, LeaderLoop):
            x._step_down()
        else:
            x.close()


def test_withdrawal_racing_the_pass_does_not_strand_budget(db: str) -> None:
    """Finding 2, the issue's scenario: block 1.0, claims A and B of 1.0 under DPF-N N=1, A withdrawn by another
    connection inside the pass that grants it. The refused grant must not count: B is granted next."""
    api = open_ledger(db, BasicComposition())
    now = time.time()
    api.add_block(Block("b", eps(1.0), created=now))
    api.add_claim(Claim.uniform("A", ["b"], eps(1.0), arrival=now))
    api.add_claim(Claim.uniform("B", ["b"], eps(1.0), arrival=now))
    loop = leader(db, "dpf-n", N=1)
    try:
        fired = inject_in_pass(loop, lambda: api.reject("A", time.time(), "withdrawn"))
        loop._tick()
        assert fired == [1]
        assert api.state("A") is ClaimState.REJECTED
        for _ in range(3):
            loop._tick()
        assert api.state("B") is ClaimState.GRANTED, "the budget set aside for the withdrawn claim was stranded"
        assert api.audit().ok
    finally:
        close(loop, api)


def test_block_retired_mid_pass_is_one_decisions_outcome(db: str) -> None:
    """Finding 3: a block retired by another process during a pass refuses only the grant on that block; the
    pass's other grant commits, the leader keeps its lease, and the next step rejects the claim on the retired
    block."""
    api = open_ledger(db, BasicComposition())
    now = time.time()
    api.add_block(Block("b1", eps(1.0), created=now))
    api.add_block(Block("b2", eps(1.0), created=now))
    api.add_claim(Claim.uniform("A", ["b1"], eps(1.0), arrival=now))
    api.add_claim(Claim.uniform("C", ["b2"], eps(1.0), arrival=now))
    loop = leader(db, "dpf-n", N=1)
    try:
        fired = inject_in_pass(loop, lambda: api.retire("b1"))
        loop._tick()  # old code: the refusal escaped the batch, rolled C's grant back and cost the lease
        assert fired == [1]
        assert loop.is_leader
        assert api.state("C") is ClaimState.GRANTED
        loop._tick()
        record = api.claim("A")
        assert record.state is ClaimState.REJECTED and record.reason == "block retired"
        assert api.audit().ok
    finally:
        close(loop, api)


def test_takeover_reads_one_snapshot(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 5: a claim committed (and withdrawn) by another process while a new leader builds its scheduler is
    counted once by DPF-N's arrival rule, not twice: N=4 and one arrival unlock 1/4 of the block."""
    api = open_ledger(db, BasicComposition())
    other = open_ledger(db)
    now = time.time()
    api.add_block(Block("b", eps(1.0), created=now))
    done = threading.Event()
    errors: list[BaseException] = []

    def commit_arrival() -> None:
        try:
            other.add_claim(Claim.uniform("X", ["b"], eps(0.1), arrival=time.time()))
            other.reject("X", time.time(), "withdrawn")
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)
        finally:
            done.set()

    writer = threading.Thread(target=commit_arrival)
    original = LeaderScheduler.adopt_block

    def adopt_block(self: LeaderScheduler, block_id: str) -> None:
        # Between the journal position the takeover starts from and its reading of the claims: the old code let
        # the other process commit here (the wait returns at once); the fix holds it off until the build is done.
        if not writer.is_alive() and not done.is_set():
            writer.start()
            done.wait(1.0)
        original(self, block_id)

    monkeypatch.setattr(LeaderScheduler, "adopt_block", adopt_block)
    loop = LeaderLoop(db, "dpf-n", {"N": 4}, poll=0.01, lease_retry=0.01)
    try:
        assert loop._try_lead()
        writer.join(30)
        assert done.is_set() and not errors, errors
        loop._tick()
        loop._tick()
        assert api.state("X") is ClaimState.REJECTED
        assert float(api.unlocked_fraction[0]) == pytest.approx(0.25), "an arrival was counted twice"
        assert api.audit().ok
    finally:
        close(loop, api, other)


# ----- PostgreSQL: lost connections, isolation, first start ---------------------------------------------------
def terminate_backends(application_name: str) -> int:
    """``pg_terminate_backend`` every session of ``application_name`` (this test's server only: the database is
    shared with other runs). Returns how many were ended."""
    import psycopg

    assert PG_URL
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s AND pid <> "
            "pg_backend_pid()",
            (application_name,),
        ).fetchall()
    return sum(1 for (ok,) in rows if ok)


@PG_SKIP
def test_service_reconnects_after_its_connections_are_terminated(tmp_path: Path) -> None:
    """Finding 1: every connection of a server (API, service tables, leader) is ended by the database twice while
    two clients submit and consume claims. Requests meanwhile get 503 with Retry-After; the server recovers by
    itself (readiness, the leader's lease), and every acknowledged operation is in the ledger; the audit passes."""
    name = new_schema_name("dpf_faults")
    app = f"dpf_faults_{uuid.uuid4().hex[:12]}"
    db = with_options(pg_url(name), application_name=app)
    try:
        admin = create_token(db, "ops", admin=True)
        server = start_server(db, "fcfs", log_dir=tmp_path)
        try:
            assert server.wait_leader(30)
            with httpx.Client(base_url=server.url, timeout=30) as c:
                r = c.post("/v1/blocks", json={"id": "b", "budget": {"epsilon": 1000.0}}, headers=auth(admin))
                assert r.status_code == 201
            acked: dict[str, str] = {}  # claim id → last acknowledged state
            unavailable: list[httpx.Response] = []
            stop = threading.Event()

            failures: list[BaseException] = []

            def call(c: httpx.Client, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
                give_up = time.monotonic() + 20
                while time.monotonic() < give_up:  # the client's contract: retry a 503 with the same request
                    try:
                        r = c.request(method, path, json=body, headers=auth(admin))
                    except httpx.TransportError:
                        time.sleep(0.05)
                        continue
                    if r.status_code != 503:
                        return r
                    unavailable.append(r)
                    time.sleep(0.05)
                raise AssertionError(f"{method} {path}: still 503 after 20 s")

            def client(k: int) -> None:
                try:
                    load(k)
                except BaseException as e:
                    failures.append(e)
                    stop.set()

            def load(k: int) -> None:
                with httpx.Client(base_url=server.url, timeout=30) as c:
                    i = 0
                    while not stop.is_set():
                        cid = f"c{k}-{i}"
                        i += 1
                        r = call(c, "POST", "/v1/claims", {"id": cid, "demand": {"epsilon": 0.1}, "blocks": ["b"]})
                        assert r.status_code in (200, 201), r.text
                        acked[cid] = "waiting"
                        r = call(c, "GET", f"/v1/claims/{cid}/wait?timeout=10", {})
                        if r.json()["state"] == "granted":
                            r = call(c, "POST", f"/v1/claims/{cid}/consume", {"request_id": f"r-{cid}"})
                            assert r.status_code == 200, r.text
                            acked[cid] = "consumed"

            threads = [threading.Thread(target=client, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            try:
                # The API's ledger, the service tables and the leader each hold one session (the change feed and
                # the readiness probe share the tables'): at least three are ended the first time; the second
                # time, those already reopened.
                for minimum in (3, 1):
                    time.sleep(1.0)
                    assert terminate_backends(app) >= minimum
                time.sleep(1.5)
            finally:
                stop.set()
                for t in threads:
                    t.join(60)
            assert not failures, failures
            deadline = time.monotonic() + 15
            while server.ready() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            assert server.ready() is not None, "readiness never recovered:\n" + server.log()
            assert server.wait_leader(15), "no process took the lease back:\n" + server.log()
            assert unavailable, "no request met the outage"
            assert all(r.headers.get("Retry-After") == "1" for r in unavailable)
            assert len(acked) >= 4
            led = open_ledger(db, create=False)
            try:
                for cid, st in acked.items():
                    seen = led.state(f"ops/{cid}")
                    assert seen is not ClaimState.REJECTED, cid
                    if st == "consumed":
                        assert seen is ClaimState.FINISHED, cid
                assert led.audit().ok
            finally:
                led.close()
        finally:
            server.stop()
    finally:
        drop_schemas([name])


@PG_SKIP
@pytest.mark.parametrize("level", ["repeatable read", "serializable"])
def test_writes_do_not_depend_on_the_servers_default_isolation(level: str) -> None:
    """Finding 4: with the session default set to REPEATABLE READ or SERIALIZABLE (through this test's connection
    options only), concurrent writers from four connections all succeed and the journal has no gap."""
    name = new_schema_name("dpf_faults")
    db = with_options(pg_url(name), options=f"-c default_transaction_isolation={level.replace(' ', chr(92) + ' ')}")
    try:
        first = open_ledger(db, BasicComposition())
        first.add_block(Block("b", eps(1000.0), created=time.time()))
        errors: list[BaseException] = []
        barrier = threading.Barrier(4)

        def writer(k: int) -> None:
            led = open_ledger(db)
            try:
                # The session started with the option's default (its reset value); the store set its own on top.
                raw = led._store.execute(
                    "SELECT reset_val FROM pg_settings WHERE name = 'default_transaction_isolation'"
                )
                assert raw == [(level,)]
                barrier.wait()
                for i in range(25):
                    led.add_claim(Claim.uniform(f"w{k}-{i}", ["b"], eps(0.1), arrival=time.time()))
            except BaseException as e:
                errors.append(e)
            finally:
                led.close()

        threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[:3]
        assert first.journal_length == 1 + 100
        assert first._store.execute("SHOW default_transaction_isolation") == [("read committed",)]  # ours
        assert first.audit().ok
        first.close()
    finally:
        drop_schemas([name])


@PG_SKIP
def test_concurrent_first_start_on_a_new_schema() -> None:
    """Finding 7: six processes' worth of connections open (and create) a ledger on a schema that does not exist
    yet, all at once, several times: every open succeeds and there is one ledger."""
    names: list[str] = []
    try:
        for _ in range(8):
            name = new_schema_name("dpf_faults")
            names.append(name)
            db = pg_url(name)
            errors: list[BaseException] = []
            barrier = threading.Barrier(6)

            def start(db: str = db, barrier: threading.Barrier = barrier, errors: list[BaseException] = errors) -> None:
                try:
                    barrier.wait()
                    open_ledger(db, BasicComposition()).close()
                except BaseException as e:
                    errors.append(e)

            threads = [threading.Thread(target=start) for _ in range(6)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            led = open_ledger(db, create=False)
            assert led.journal_length == 0 and led.audit().ok
            led.close()
    finally:
        drop_schemas(names)


# ----- stalled processes: bounded waits -----------------------------------------------------------------------
_HOLDER = textwrap.dedent(
    """
    import sys, time
    from dpf_sched.ledger.sql import open_store
    store = open_store(sys.argv[1], create=False)
    store.begin_write()
    print("holding", flush=True)
    time.sleep(600)
    """
)

_LEADER = textwrap.dedent(
    """
    import sys, time
    from dpf_sched.service.leader import LeaderLoop
    loop = LeaderLoop(sys.argv[1], "fcfs", {}, poll=0.05, lease_retry=0.1, idle_bound=2.0)
    loop.start()
    while not loop.is_leader:
        time.sleep(0.01)
    print("leader", flush=True)
    time.sleep(600)
    """
)


def spawn(script: str, db: str, ready: str) -> subprocess.Popen[str]:
    """A Python subprocess running ``script`` on ``db``, once it printed ``ready``."""
    proc = subprocess.Popen([sys.executable, "-c", script, db], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == ready, line
    return proc


def finish(proc: subprocess.Popen[str]) -> None:
    """Resume (it may be stopped) and kill a subprocess."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
    proc.wait(30)


def test_stalled_writer_gets_bounded_waits_and_503(db: str, tmp_path: Path) -> None:
    """Finding 6: a writer stopped (SIGSTOP) inside its write transaction. Other writers give up after the lock
    timeout with StorageTimeoutError, and the API answers 503 with Retry-After instead of hanging. On PostgreSQL
    the server ends the stalled session after idle_in_transaction_timeout and writes resume while the writer is
    still stopped; on SQLite (one host, the lock belongs to the process) they resume when it is resumed or
    killed."""
    pg = db.startswith("postgresql")
    bounded = with_options(db, lock_timeout=1, **({"idle_in_transaction_timeout": 5} if pg else {}))
    admin = create_token(bounded, "ops", admin=True)
    server = start_server(bounded, "fcfs", log_dir=tmp_path)
    holder = None
    led = open_ledger(bounded)
    try:
        assert server.wait_leader(30)
        holder = spawn(_HOLDER, bounded, "holding")
        os.kill(holder.pid, signal.SIGSTOP)
        stalled = time.monotonic()
        t0 = time.monotonic()
        with pytest.raises(StorageTimeoutError):
            led.add_block(Block("lib", eps(1.0), created=time.time()))
        assert time.monotonic() - t0 < 4
        with httpx.Client(base_url=server.url, timeout=30) as c:
            body = {"id": "b", "budget": {"epsilon": 1.0}}
            t0 = time.monotonic()
            r = c.post("/v1/blocks", json=body, headers=auth(admin))
            assert r.status_code == 503 and r.headers.get("Retry-After") == "1", r.text
            assert time.monotonic() - t0 < 4
            if pg:
                while r.status_code == 503 and time.monotonic() - stalled < 15:
                    time.sleep(0.2)
                    r = c.post("/v1/blocks", json=body, headers=auth(admin))
                assert r.status_code == 201, r.text
                assert holder.poll() is None  # still stopped: the server ended its session, not the process
            else:
                finish(holder)
                r = c.post("/v1/blocks", json=body, headers=auth(admin))
                assert r.status_code == 201, r.text
        led.add_block(Block("lib", eps(1.0), created=time.time()))
        assert led.audit().ok
    finally:
        if holder is not None:
            finish(holder)
        led.close()
        server.stop()


@PG_SKIP
def test_stopped_leader_loses_the_lease_within_its_idle_bound() -> None:
    """Suspected item: a leader stopped (or partitioned) while it holds the lease must not keep it for hours.
    PostgreSQL ends its idle session after the loop's idle bound (2 s here), and another process takes the lease
    while it is still stopped; resumed, it finds its session gone and steps down (its grants were fenced: each is
    a transaction on that session)."""
    name = new_schema_name("dpf_faults")
    db = pg_url(name)
    proc = None
    store = None
    try:
        open_ledger(db, BasicComposition()).close()
        proc = spawn(_LEADER, db, "leader")
        store = open_store(db, create=False)
        assert not store.try_grant_lease()
        os.kill(proc.pid, signal.SIGSTOP)
        t0 = time.monotonic()
        assert store.acquire_grant_lease(15.0), "the stopped leader kept its lease"
        assert time.monotonic() - t0 < 15
    finally:
        if proc is not None:
            finish(proc)
        if store is not None:
            store.close()
        drop_schemas([name])


# ----- the leader's clock -------------------------------------------------------------------------------------
def test_a_wall_clock_step_on_the_leader_expires_nothing(db: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Suspected item: the leader's host clock steps an hour forward while a claim with a 60 s timeout waits.
    The leader's clock is monotonic time anchored at takeover, so the claim still waits (the old wall clock
    expired it, irreversibly)."""
    api = open_ledger(db, BasicComposition())
    now = time.time()
    api.add_block(Block("b", eps(1.0), created=now))
    api.add_claim(Claim.uniform("A", ["b"], eps(1.0), arrival=now, timeout=60.0))
    loop = leader(db, "dpf-n", N=10)  # one arrival unlocks 1/10: A cannot be granted yet
    try:
        loop._tick()
        real = time.time
        monkeypatch.setattr(time, "time", lambda: real() + 3600.0)
        loop._tick()
        loop._tick()
        assert api.state("A") is ClaimState.WAITING
        assert float(api.unlocked_fraction[0]) == pytest.approx(0.1)
    finally:
        monkeypatch.undo()
        close(loop, api)


@PG_SKIP
def test_a_transaction_whose_connection_died_is_never_continued_on_a_new_one() -> None:
    """The reconnect's safety: after the session dies inside a write transaction, the transaction's later
    statements fail (they would otherwise run in autocommit on a new session, half a transaction committed)
    until the caller rolls back; the next call then reconnects, and the lease is no longer believed held."""
    name = new_schema_name("dpf_faults")
    app = f"dpf_faults_{uuid.uuid4().hex[:12]}"
    db = with_options(pg_url(name), application_name=app)
    try:
        led = open_ledger(db, BasicComposition())
        store = led._store
        assert store.try_grant_lease()
        store.begin_write()
        assert terminate_backends(app) == 1
        with pytest.raises(LedgerStorageError, match="connection lost"):
            store.execute("SELECT 1")
        with pytest.raises(LedgerStorageError, match="inside a transaction"):
            store.execute("INSERT INTO dpf_meta (key, value) VALUES ('x', 'y')")
        store.rollback()
        assert store.execute("SELECT COUNT(*) FROM dpf_meta WHERE key = 'x'") == [(0,)]  # reconnected
        assert not store._grant_held  # the lease died with the old session; taking it again is a new decision
        assert store.try_grant_lease()
        led.add_block(Block("b", eps(1.0), created=time.time()))
        assert led.journal_length == 1 and led.audit().ok
        led.close()
    finally:
        drop_schemas([name])


def test_a_request_behind_a_stuck_one_gets_503_not_a_queue() -> None:
    """Finding 6 (the API side): a request waits for its process's ledger lock (held by a request stuck on the
    database) only up to the bound, then fails with the typed timeout error, which the API answers with 503."""
    from dpf_sched.service.app import _TimedLock, map_error

    lock = _TimedLock(0.2)
    held = threading.Event()
    release = threading.Event()

    def stuck() -> None:
        with lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=stuck)
    t.start()
    try:
        assert held.wait(10)
        t0 = time.monotonic()
        with pytest.raises(StorageTimeoutError) as info, lock:
            pass
        assert 0.15 < time.monotonic() - t0 < 5
        assert map_error(info.value).status == 503
    finally:
        release.set()
        t.join(10)
    with lock:  # free again once the stuck request ends
        pass
