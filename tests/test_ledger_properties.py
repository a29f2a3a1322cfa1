"""Property tests: the shared ledger contract (tests/ledger_contract.py) run against MemoryLedger.

Random sequences of ledger operations, valid and invalid, under basic composition and under Rényi composition
on the α grid (1.5, 2, 4, 8, 32), checked after every step against an independent model and the six ledger
invariants of DESIGN.md, with every probe of the contract switched on (consumptions at the tolerance, forged
negative / NaN budget rows, Rényi demands at orders of zero capacity). A SQL backend runs the same contract
by passing its own factory to ``contract_machine`` and ``SCENARIOS``.

A known bug is pinned as a strict xfail on its deterministic minimal scenario only, naming the bug.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, settings
from hypothesis.stateful import run_state_machine_as_test
from ledger_contract import SCENARIOS, contract_machine, renyi_composition

from dpf_sched.composition import BasicComposition, Composition
from dpf_sched.ledger import Ledger, MemoryLedger

COMPOSITIONS = {"basic": BasicComposition, "renyi": renyi_composition}


def make_memory_ledger(composition: Composition) -> Ledger:
    # A tiny initial size so that the contract also exercises the arrays' growth.
    return MemoryLedger(composition, initial_blocks=2)


_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}
FAST = settings(max_examples=40, stateful_step_count=25, **_COMMON)
SLOW = settings(max_examples=500, stateful_step_count=60, **_COMMON)

# (scenario, composition) → the bug that makes it fail today.
XFAIL_SCENARIOS: dict[tuple[str, str], str] = {}  # (scenario, composition) → reason, for a bug not yet fixed


def _machine(comp: str) -> type:
    return contract_machine(make_memory_ledger, COMPOSITIONS[comp], name=f"MemoryLedger{comp.capitalize()}Contract")


@pytest.mark.parametrize("comp", sorted(COMPOSITIONS))
def test_memory_ledger_contract(comp: str) -> None:
    """Random operation sequences keep every invariant; failed operations change nothing."""
    run_state_machine_as_test(_machine(comp), settings=FAST)


@pytest.mark.slow
@pytest.mark.parametrize("comp", sorted(COMPOSITIONS))
def test_memory_ledger_contract_slow(comp: str, request: pytest.FixtureRequest) -> None:
    """The same contract with many more and longer sequences (select with ``-m slow``)."""
    if "slow" not in (request.config.getoption("markexpr", "") or ""):
        pytest.skip("long property run: select it with -m slow")
    run_state_machine_as_test(_machine(comp), settings=SLOW)


@pytest.mark.parametrize(
    ("name", "comp"),
    [
        pytest.param(
            name,
            comp,
            id=f"{name}-{comp}",
            marks=[pytest.mark.xfail(strict=True, reason=XFAIL_SCENARIOS[name, comp])]
            if (name, comp) in XFAIL_SCENARIOS
            else [],
        )
        for name in SCENARIOS
        for comp in sorted(COMPOSITIONS)
    ],
)
def test_memory_ledger_scenario(name: str, comp: str) -> None:
    """Deterministic contract scenarios: tolerance boundary, fair-share unlocks, minimal repros of past bugs."""
    SCENARIOS[name](make_memory_ledger, COMPOSITIONS[comp]())
