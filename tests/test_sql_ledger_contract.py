"""The shared ledger contract (tests/ledger_contract.py) run unchanged against the SQL ledgers.

The same hypothesis state machine and deterministic scenarios as the memory ledger, every probe on, under basic
and Rényi composition, against SQLite (a new temporary file per example, WAL, synchronous=FULL) and PostgreSQL
(a new schema per example inside one schema-per-run namespace; skipped, saying why, when
``DPF_SCHED_TEST_POSTGRES_URL`` is unset). A SQL ledger additionally must replay its journal into exactly its
stored state: every example ends with an audit.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from ledger_contract import SCENARIOS, contract_machine, renyi_composition
from sql_ledger_support import PG_SKIP, SchemaPool

from dpf_sched.composition import BasicComposition, Composition
from dpf_sched.ledger import Ledger
from dpf_sched.ledger.sql import SqlLedger, open_ledger

COMPOSITIONS = {"basic": BasicComposition, "renyi": renyi_composition}
_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}
FAST = settings(max_examples=25, stateful_step_count=25, **_COMMON)

Factory = Callable[[Composition], Ledger]


class Opened:
    """Opens ledgers for one test and audits / closes them all at the end."""

    def __init__(self, make_url: Callable[[], str]) -> None:
        self.make_url = make_url
        self.ledgers: list[SqlLedger] = []

    def __call__(self, comp: Composition) -> Ledger:
        ledger = open_ledger(self.make_url(), comp)
        self.ledgers.append(ledger)
        return ledger

    def finish(self) -> None:
        try:
            for led in self.ledgers:
                report = led.audit()
                assert report.ok, report.to_dict()
        finally:
            for led in self.ledgers:
                led.close()


@pytest.fixture
def sqlite_factory(tmp_path: Path) -> Iterator[Opened]:
    counter = itertools.count()
    opened = Opened(lambda: f"sqlite:///{tmp_path / f'ledger{next(counter)}.db'}")
    yield opened
    opened.finish()


@pytest.fixture
def pg_factory() -> Iterator[Opened]:
    pool = SchemaPool()
    opened = Opened(pool.url)
    try:
        yield opened
        opened.finish()
    finally:
        for led in opened.ledgers:
            led.close()
        pool.close()


@pytest.mark.parametrize("comp", sorted(COMPOSITIONS))
def test_sqlite_ledger_contract(comp: str, sqlite_factory: Opened) -> None:
    """Random operation sequences keep every invariant on SQLite; failed operations change nothing."""
    machine = contract_machine(sqlite_factory, COMPOSITIONS[comp], name=f"Sqlite{comp.capitalize()}Contract")
    run_state_machine_as_test(machine, settings=FAST)


@pytest.mark.parametrize(("name", "comp"), [(n, c) for n in SCENARIOS for c in sorted(COMPOSITIONS)])
def test_sqlite_ledger_scenario(name: str, comp: str, sqlite_factory: Opened) -> None:
    """The deterministic contract scenarios on SQLite."""
    SCENARIOS[name](sqlite_factory, COMPOSITIONS[comp]())


@PG_SKIP
@pytest.mark.parametrize("comp", sorted(COMPOSITIONS))
def test_postgres_ledger_contract(comp: str, pg_factory: Opened) -> None:
    """Random operation sequences keep every invariant on PostgreSQL; failed operations change nothing."""
    machine = contract_machine(pg_factory, COMPOSITIONS[comp], name=f"Postgres{comp.capitalize()}Contract")
    run_state_machine_as_test(machine, settings=settings(FAST, max_examples=15))


@PG_SKIP
@pytest.mark.parametrize(("name", "comp"), [(n, c) for n in SCENARIOS for c in sorted(COMPOSITIONS)])
def test_postgres_ledger_scenario(name: str, comp: str, pg_factory: Opened) -> None:
    """The deterministic contract scenarios on PostgreSQL."""
    SCENARIOS[name](pg_factory, COMPOSITIONS[comp]())
