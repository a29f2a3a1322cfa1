"""No caller can break the ledger (DESIGN.md, invariant 7; issue 14 finding 1; issue 19's half-updated mirror).

* What the ledger hands out (the policies' arrays, ``add_claim``'s rows, ``unlock_to``'s indices) cannot be made
  writable, through the array or anything behind it: the red-team attack (``v.flags.writeable = True`` on
  ``ledger.unlocked``, then a grant of 100 on a block of capacity 1) fails at its first step, on MemoryLedger,
  SQLite and PostgreSQL, and nothing is committed.
* A journal entry that does not replay (written into the database by hand, as the attack used to commit) makes
  opening raise ``LedgerStorageError`` naming the entry, and ``dpf-sched ledger audit`` lists it (exit 1), never
  a traceback.
* An exception inside the mirror's update (``KeyboardInterrupt`` injected half-way) throws the mirror away: the
  rows written afterwards come from the journal's replay, and the audit passes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner
from sql_ledger_support import PG_SKIP, SchemaPool

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.cli import main
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import InsufficientBudgetError, LedgerStorageError
from dpf_sched.ledger import ClaimState, MemoryLedger
from dpf_sched.ledger.base import Ledger
from dpf_sched.ledger.sql import SqlLedger, open_ledger

ARRAYS = ("capacity", "locked", "unlocked", "allocated", "consumed", "unlocked_fraction", "created", "retired_mask")


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgresql", marks=PG_SKIP)])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[], Ledger]]:
    """A factory of fresh basic ledgers: MemoryLedger, SQLite or PostgreSQL."""
    opened: list[SqlLedger] = []
    pool = SchemaPool()
    counter = iter(range(1000))

    def factory() -> Ledger:
        if request.param == "memory":
            return MemoryLedger(BasicComposition())
        url = pool.url() if request.param == "postgresql" else f"sqlite:///{tmp_path / f'l{next(counter)}.db'}"
        led = open_ledger(url, BasicComposition())
        opened.append(led)
        return led

    try:
        yield factory
    finally:
        for led in opened:
            led.close()
        pool.close()


def _one_block(led: Ledger) -> Ledger:
    led.add_block(Block("b", EpsDelta(1.0, 1e-6)))
    led.unlock_to([0], [1.0])
    return led


def _assert_immutable(arr: Any, what: str) -> None:
    """Neither ``arr`` nor any array behind it (``.base``) can be made writable."""
    x = arr
    while isinstance(x, np.ndarray):
        with pytest.raises(ValueError, match="WRITEABLE"):
            x.flags.writeable = True
        x = x.base
    assert not isinstance(x, (bytearray, memoryview)) or (isinstance(x, memoryview) and x.readonly), what


def test_the_red_team_attack_fails_and_commits_nothing(make: Callable[[], Ledger]) -> None:
    led = _one_block(make())
    v = led.unlocked
    with pytest.raises(ValueError, match="WRITEABLE"):
        v.flags.writeable = True  # the attack's first step
    with pytest.raises(ValueError, match="read-only"):
        v[0, 0] = 1e6
    led.add_claim(Claim("c", {"b": EpsDelta(100.0, 0.0)}))
    with pytest.raises(InsufficientBudgetError):
        led.allocate("c", 0.0)
    assert led.state("c") is ClaimState.WAITING
    assert float(led.unlocked[0, 0]) == 1.0
    assert led.violations() == []
    if isinstance(led, SqlLedger):
        assert led.audit().ok
        url = led.describe()
        led.close()
        if url.startswith("sqlite:"):  # reopening replays the journal: it is sound
            with open_ledger(url, create=False) as again:
                assert again.state("c") is ClaimState.WAITING


def test_nothing_handed_out_can_be_made_writable(make: Callable[[], Ledger]) -> None:
    led = _one_block(make())
    idx, demand = led.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}))
    _assert_immutable(idx, "add_claim's block indices")
    _assert_immutable(demand, "add_claim's demand rows")
    led.allocate("c", 0.0)
    led.add_block(Block("b2", EpsDelta(1.0, 1e-6)))
    _assert_immutable(led.unlock_to([1], [0.5]), "unlock_to's indices")
    for name in ARRAYS:
        _assert_immutable(getattr(led, name), name)


def test_a_handed_out_array_is_a_snapshot_that_the_ledger_never_reads_back(make: Callable[[], Ledger]) -> None:
    """Whatever a caller does to what it got, the next operations are checked against the ledger's own state."""
    led = _one_block(make())
    idx, demand = led.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}))
    before = led.unlocked
    led.allocate("c", 0.0)
    assert float(before[0, 0]) == 1.0 and float(led.unlocked[0, 0]) == 0.5  # old snapshot kept, new one fresh
    with pytest.raises(ValueError):
        demand.flags.writeable = True
    with pytest.raises(ValueError):
        idx.flags.writeable = True
    led.add_claim(Claim("d", {"b": EpsDelta(0.6, 0.0)}))
    with pytest.raises(InsufficientBudgetError):
        led.allocate("d", 0.0)
    assert led.violations() == []


# ----- a journal entry that does not replay ------------------------------------------------------------------------
def _break_entry(url: str, seq: int, payload: str) -> None:
    """Overwrite journal entry ``seq``'s payload by hand (as a bug or a person could)."""
    if url.startswith("sqlite:"):
        with sqlite3.connect(url.removeprefix("sqlite:///")) as conn:
            conn.execute("UPDATE dpf_journal SET payload = ? WHERE seq = ?", (payload, seq))
        return
    import psycopg

    base, schema = url.rsplit("schema=", 1)
    with psycopg.connect(base.rstrip("?&"), autocommit=True) as conn:
        conn.execute(f'UPDATE "{schema}".dpf_journal SET payload = %s WHERE seq = %s', (payload, seq))


def test_a_bad_journal_entry_is_a_typed_error_at_open_and_a_problem_in_the_audit(url: str) -> None:
    with open_ledger(url, BasicComposition()) as led:
        _one_block(led)
        led.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}))
        led.allocate("c", 0.0)
        led.consume("c", {"b": EpsDelta(0.25, 0.0)})
        n = led.journal_length
    # The red team's journal (a grant of 100 on a block of capacity 1) and a payload whose amounts are a string.
    for payload in (
        json.dumps({"claim": "c", "amounts": "lots", "now": 0.0, "request_id": None}),
        json.dumps({"claim": "c", "amounts": {"b": [100.0, 0.0]}, "now": 0.0, "request_id": None}),
    ):
        _break_entry(url, n, payload)
        with pytest.raises(LedgerStorageError, match=f"journal entry {n} \\('consume'\\) does not replay"):
            open_ledger(url, create=False)
        res = CliRunner().invoke(main, ["ledger", "audit", "--db", url])
        assert res.exit_code == 1, res.output
        assert f"problem: journal entry {n} ('consume') does not replay" in res.output
        assert res.exception is None or isinstance(res.exception, SystemExit)
        res = CliRunner().invoke(main, ["ledger", "show", "--db", url])
        assert res.exit_code == 2 and f"journal entry {n}" in res.output, res.output


# ----- an exception inside the mirror's update (issue 19) ------------------------------------------------------
def test_an_interrupted_mirror_update_is_thrown_away(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    led = open_ledger(url, BasicComposition())
    try:
        _one_block(led)
        led.add_block(Block("b2", EpsDelta(1.0, 1e-6)))
        led.unlock_to([1], [1.0])
        led.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}))
        real = MemoryLedger.allocate

        def half_then_interrupt(self: MemoryLedger, claim_id: str, now: float) -> None:
            self._unlocked[0] -= 0.5  # the first half of the update, as an interrupt could leave it
            raise KeyboardInterrupt

        monkeypatch.setattr(MemoryLedger, "allocate", half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            led.allocate("c", 1.0)
        monkeypatch.setattr(MemoryLedger, "allocate", real)
        # Later operations write their rows from the journal's replay, not from the half-updated mirror.
        led.add_claim(Claim("d", {"b": EpsDelta(0.75, 0.0), "b2": EpsDelta(0.5, 0.0)}))
        led.allocate("d", 2.0)
        assert float(led.unlocked[0, 0]) == 0.25
        report = led.audit()
        assert report.ok, report.to_dict()
        assert led.state("c") is ClaimState.WAITING
    finally:
        led.close()


def test_an_interrupted_replay_is_thrown_away(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """An interrupt while the mirror catches up (replaying another process's entry) does not leave it half applied."""
    with open_ledger(url, BasicComposition()) as writer, open_ledger(url) as reader:
        _one_block(writer)
        writer.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}))
        assert reader.journal_length == 3
        writer.allocate("c", 0.0)
        real = MemoryLedger.allocate

        def half_then_interrupt(self: MemoryLedger, claim_id: str, now: float) -> None:
            self._unlocked[0] -= 0.5
            raise KeyboardInterrupt

        monkeypatch.setattr(MemoryLedger, "allocate", half_then_interrupt)
        with pytest.raises(KeyboardInterrupt):
            reader.journal_length  # noqa: B018 - catches up
        monkeypatch.setattr(MemoryLedger, "allocate", real)
        assert float(reader.unlocked[0, 0]) == 0.5
        reader.release("c")
        assert float(reader.unlocked[0, 0]) == 1.0
        assert reader.audit().ok
