"""Claim leases in the library: the scheduler expires a granted claim whose lease lapsed, renewals keep it, and
the SQL ledgers keep leases durable (their own table, schema 2), journal the expiry and audit both.

The ledger-level contract of ``expire`` / ``renew`` is in tests/ledger_contract.py (scenarios ``lease_*``), run on
the memory ledger, SQLite and PostgreSQL; here: the scheduler on each backend, two connections on one SQL ledger
(a renewal by another process), the schema migration and the audit of tampered lease rows.
"""

from __future__ import annotations

import math
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sql_ledger_support import PG_SKIP, SchemaPool

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import InvalidParameterError, InvalidStateError, LeaseExpiredError, LedgerStorageError
from dpf_sched.ledger import ClaimState, Ledger, MemoryLedger
from dpf_sched.ledger.sql import SqlLedger, open_ledger
from dpf_sched.scheduler import Scheduler

LEASE = 2.0


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=PG_SKIP)])
def make_ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Ledger]]:
    """A factory of fresh ledgers of one backend; SQL ledgers are audited and closed at the end."""
    opened: list[SqlLedger] = []
    pool = SchemaPool() if request.param == "postgresql" else None

    def make() -> Ledger:
        if request.param == "memory":
            return MemoryLedger(BasicComposition())
        url = pool.url() if pool is not None else f"sqlite:///{tmp_path / f'l{len(opened)}.db'}"
        led = open_ledger(url, BasicComposition())
        opened.append(led)
        return led

    try:
        yield make
        for led in opened:
            report = led.audit()
            assert report.ok, report.to_dict()
    finally:
        for led in opened:
            led.close()
        if pool is not None:
            pool.close()


def _scheduler(ledger: Ledger) -> tuple[Scheduler, ManualClock]:
    clock = ManualClock()
    sched = Scheduler(ledger, "dpf-n", clock, N=1)  # the first arrival unlocks everything; misfits wait
    sched.add_block(Block("b", EpsDelta(1.0, 1e-6)))
    return sched, clock


def _eps(budget: object) -> float:
    assert isinstance(budget, EpsDelta)
    return budget.epsilon


def test_lapsed_lease_expires_and_waiting_claim_is_granted(make_ledger: Callable[[], Ledger]) -> None:
    """Without renewals a granted claim expires at grant + lease: its unconsumed rest is unlocked again, what it
    consumed stays consumed, it is EXPIRED, and the claim waiting for that budget is granted in the same pass."""
    sched, clock = _scheduler(make_ledger())
    sched.submit(Claim.uniform("job", ["b"], EpsDelta(0.7, 0.0), lease=LEASE))
    sched.step()
    sched.submit(Claim.uniform("next", ["b"], EpsDelta(0.6, 0.0)))
    sched.step()
    assert sched.states() == {"job": ClaimState.GRANTED, "next": ClaimState.WAITING}
    clock.set(0.5)
    sched.consume("job", {"b": EpsDelta(0.3, 0.0)})
    assert sched.next_wakeup() == LEASE
    clock.set(LEASE - 1e-6)
    sched.step()
    assert sched.ledger.state("job") is ClaimState.GRANTED
    clock.set(LEASE)
    sched.step()
    assert sched.states() == {"job": ClaimState.EXPIRED, "next": ClaimState.GRANTED}
    record = sched.status("job")
    assert record.lease_deadline == LEASE and record.state.was_granted
    assert _eps(record.consumed["b"]) == pytest.approx(0.3) and _eps(record.remaining["b"]) == 0.0
    budgets = sched.ledger.budgets("b")
    assert _eps(budgets.consumed) == pytest.approx(0.3)
    assert _eps(budgets.allocated) == pytest.approx(0.6)  # only "next" holds a grant
    assert _eps(budgets.unlocked) == pytest.approx(0.1)
    assert sched.ledger.violations() == []
    with pytest.raises(LeaseExpiredError):
        sched.consume("job", {"b": EpsDelta(0.1, 0.0)})
    with pytest.raises(LeaseExpiredError):
        sched.release("job")
    with pytest.raises(LeaseExpiredError):
        sched.renew("job")
    assert isinstance(LeaseExpiredError("x"), InvalidStateError)


def test_renewed_lease_never_expires(make_ledger: Callable[[], Ledger]) -> None:
    """A holder that renews every lease/3 keeps its claim through many lease lengths; when it stops renewing,
    the claim expires one lease after its last renewal."""
    sched, clock = _scheduler(make_ledger())
    sched.submit(Claim.uniform("job", ["b"], EpsDelta(0.5, 0.0), lease=LEASE))
    sched.step()
    t = 0.0
    for _ in range(60):  # 20 lease lengths
        t += LEASE / 3
        clock.set(t)
        sched.step()
        assert sched.ledger.state("job") is ClaimState.GRANTED
        assert sched.renew("job") == pytest.approx(t + LEASE)
    clock.set(t + LEASE - 1e-6)
    sched.step()
    assert sched.ledger.state("job") is ClaimState.GRANTED
    clock.set(t + LEASE)
    sched.step()
    assert sched.ledger.state("job") is ClaimState.EXPIRED


def test_claims_without_lease_never_expire(make_ledger: Callable[[], Ledger]) -> None:
    """The library default: no lease, so a grant stays however long nobody renews; renew answers inf."""
    sched, clock = _scheduler(make_ledger())
    claim = Claim.uniform("job", ["b"], EpsDelta(0.5, 0.0))
    assert claim.lease is None
    sched.submit(claim)
    sched.step()
    clock.set(1e9)
    sched.step()
    assert sched.ledger.state("job") is ClaimState.GRANTED
    assert sched.renew("job") == math.inf and sched.status("job").lease_deadline is None
    assert sched.next_wakeup() is None


@pytest.mark.parametrize("bad", [0, -1.0, math.nan, math.inf, True, "5"])
def test_bad_lease_is_refused(bad: object) -> None:
    with pytest.raises(InvalidParameterError, match="lease"):
        Claim.uniform("c", ["b"], EpsDelta(0.1, 0.0), lease=bad)  # type: ignore[arg-type]


# ----- SQL: durable leases ------------------------------------------------------------------------------------
def test_renewal_by_another_connection_is_seen(url: str) -> None:
    """A renewal written through another connection (the service's API process) keeps the claim: the scheduler
    reads the stored deadline when its own one comes due; a new scheduler on the ledger (a new leader) adopts
    the lease with that deadline and expires it when it lapses."""
    with open_ledger(url, BasicComposition()) as led, open_ledger(url) as other:
        sched, clock = _scheduler(led)
        sched.submit(Claim.uniform("job", ["b"], EpsDelta(0.5, 0.0), lease=LEASE))
        sched.step()
        assert other.lease_deadline("job") == LEASE
        clock.set(1.5)
        assert other.renew("job", 1.5) == 1.5 + LEASE
        clock.set(LEASE)
        sched.step()
        assert led.state("job") is ClaimState.GRANTED
        assert sched.next_wakeup() == 1.5 + LEASE
        assert led.claim("job").lease_deadline == 1.5 + LEASE
        # A new scheduler loop takes over: the lease is rebuilt from the ledger.
        clock2 = ManualClock(3.0)
        successor = Scheduler(led, "dpf-n", clock2, N=1)
        assert successor.adopt_lease("job") and successor.next_wakeup() == 1.5 + LEASE
        clock2.set(1.5 + LEASE)
        successor.step()
        assert other.state("job") is ClaimState.EXPIRED
        with pytest.raises(LeaseExpiredError):
            other.renew("job", 4.0)
        report = other.audit()
        assert report.ok, report.to_dict()


def test_expiry_refused_when_renewed_in_between(url: str) -> None:
    """The expiry reads the deadline inside its transaction: one renewed after the scheduler looked is kept."""
    with open_ledger(url, BasicComposition()) as led, open_ledger(url) as other:
        sched, clock = _scheduler(led)
        sched.submit(Claim.uniform("job", ["b"], EpsDelta(0.5, 0.0), lease=LEASE))
        sched.step()
        other.renew("job", 1.0)
        with pytest.raises(InvalidStateError, match="runs until"):
            led.expire("job", LEASE)
        clock.set(LEASE)
        sched.step()
        assert led.state("job") is ClaimState.GRANTED and led.audit().ok


def _granted_with_lease(path: Path) -> str:
    url = f"sqlite:///{path}"
    with open_ledger(url, BasicComposition()) as led:
        led.add_block(Block("b", EpsDelta(1.0, 1e-6)))
        led.unlock_to([0], [1.0])
        led.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}, lease=10.0))
        led.allocate("c", 5.0)
    return url


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        ("UPDATE dpf_leases SET deadline = 14.0", "earlier than its grant allows"),
        ("UPDATE dpf_leases SET lease = 1000.0", "stored lease"),
        ("DELETE FROM dpf_leases", "no lease row"),
        ("INSERT INTO dpf_leases VALUES ('ghost', 1.0, 2.0, 1.0)", "lease row for claim ghost"),
    ],
)
def test_audit_checks_lease_rows(tmp_path: Path, tamper: str, problem: str) -> None:
    url = _granted_with_lease(tmp_path / "l.db")
    with open_ledger(url) as led:
        assert led.audit().ok
    con = sqlite3.connect(tmp_path / "l.db")
    con.execute(tamper)
    con.commit()
    con.close()
    with open_ledger(url) as led:
        report = led.audit()
        assert not report.ok and any(problem in p for p in report.problems), report.to_dict()


def test_audit_checks_journaled_expiry(tmp_path: Path) -> None:
    """The journal's expire entry carries the deadline that lapsed; a replay refuses one before grant + lease."""
    url = _granted_with_lease(tmp_path / "l.db")
    with open_ledger(url) as led:
        led.expire("c", 15.0)
        assert led.audit().ok
    con = sqlite3.connect(tmp_path / "l.db")
    con.execute(
        "UPDATE dpf_journal SET payload = replace(payload, ?, ?) WHERE op = 'expire'",
        ('"deadline":15.0', '"deadline":12.0'),
    )
    con.commit()
    con.close()
    # The ledger replays its journal when it opens: a tampered expiry is refused there, as a storage error.
    with pytest.raises(LedgerStorageError, match="earlier than its lease allows"):
        open_ledger(url)


def test_version_1_ledger_migrates_to_leases(tmp_path: Path) -> None:
    """A schema-1 ledger (no lease table) is migrated forward on open, audits clean and takes leased claims."""
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with open_ledger(url, BasicComposition()) as led:
        led.add_block(Block("b", EpsDelta(1.0, 1e-6)))
        led.unlock_to([0], [1.0])
    con = sqlite3.connect(tmp_path / "l.db")
    con.execute("DROP TABLE dpf_leases")
    con.execute("UPDATE dpf_schema_version SET version = 1")  # created at 2: make it look like a version-1 file
    con.commit()
    con.close()
    with open_ledger(url) as led:
        assert led.schema_version() == 2
        led.add_claim(Claim("d", {"b": EpsDelta(0.5, 0.0)}, lease=3.0))
        led.allocate("d", 1.0)
        assert led.lease_deadline("d") == 4.0
        report = led.audit()
        assert report.ok, report.to_dict()


def test_leader_expires_due_leases_in_one_transaction(tmp_path: Path) -> None:
    """The service's leader expires the leases due at one step in one transaction (one commit); a claim renewed
    or released through another connection meanwhile is skipped inside it, the others still expire."""
    from dpf_sched.ledger.sql import open_store
    from dpf_sched.service.leader import LeaderLedger, LeaderScheduler

    url = f"sqlite:///{tmp_path / 'l.db'}"
    open_ledger(url, BasicComposition()).close()
    with LeaderLedger(open_store(url), create=False) as led, open_ledger(url) as other:
        clock = ManualClock()
        sched = LeaderScheduler(led, "fcfs", clock)
        sched.add_block(Block("b", EpsDelta(1.0, 1e-6)))
        for i in range(4):
            sched.submit(Claim.uniform(f"c{i}", ["b"], EpsDelta(0.2, 0.0), lease=1.0))
        sched.step()
        other.renew("c1", 0.5)
        other.release("c2", 0.6)
        commits: list[int] = []
        led._before_commit = lambda: commits.append(1)
        clock.set(1.0)
        sched.step()
        assert commits == [1]
        assert sched.states() == {
            "c0": ClaimState.EXPIRED,
            "c1": ClaimState.GRANTED,
            "c2": ClaimState.FINISHED,
            "c3": ClaimState.EXPIRED,
        }
        clock.set(1.5)
        sched.step()
        assert led.state("c1") is ClaimState.EXPIRED
        report = led.audit()
        assert report.ok, report.to_dict()


def test_failed_expiry_keeps_the_lease_watched(tmp_path: Path) -> None:
    """A storage failure in the expiry's transaction changes nothing, and the next step expires the claim."""
    with open_ledger(f"sqlite:///{tmp_path / 'l.db'}", BasicComposition()) as led:
        sched, clock = _scheduler(led)
        sched.submit(Claim.uniform("job", ["b"], EpsDelta(0.5, 0.0), lease=LEASE))
        sched.step()

        def fail() -> None:
            raise LedgerStorageError("disk full (injected)")

        led._before_commit = fail
        clock.set(LEASE)
        with pytest.raises(LedgerStorageError, match="injected"):
            sched.step()
        assert led.state("job") is ClaimState.GRANTED
        led._before_commit = None
        sched.step()
        assert led.state("job") is ClaimState.EXPIRED
        assert led.audit().ok
