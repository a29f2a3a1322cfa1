"""Property tests: the shared ledger contract (tests/ledger_contract.py) run against MemoryLedger.

Random sequences of ledger operations, valid and invalid, under basic composition and under Rényi composition
on the α grid (1.5, 2, 4, 8, 32), checked after every step against an independent model and the six ledger
invariants of DESIGN.md. A SQL backend runs the same contract by passing its own factory to
``contract_machine`` and ``SCENARIOS``.

Known bugs of MemoryLedger are pinned as strict xfails, each naming its bug: a deterministic minimal scenario
per bug, and a contract run with the probe that finds it switched on. The main contract runs switch those
probes off, so that everything else keeps being checked; once a bug is fixed, its xfails turn into XPASS
failures and the probe should be switched back on in the main runs.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test
from ledger_contract import SCENARIOS, contract_machine, renyi_composition

from dpf_sched.composition import BasicComposition, Composition
from dpf_sched.ledger import Ledger, MemoryLedger

COMPOSITIONS = {"basic": BasicComposition, "renyi": renyi_composition}


def make_memory_ledger(composition: Composition) -> Ledger:
    # A tiny initial size so that the contract also exercises the arrays' growth.
    return MemoryLedger(composition, initial_blocks=2)


_COMMON = {"deadline": None, "suppress_health_check": [HealthCheck.too_slow, HealthCheck.filter_too_much]}
FAST = settings(max_examples=25, stateful_step_count=25, **_COMMON)
SLOW = settings(max_examples=1000, stateful_step_count=60, **_COMMON)
# The bug probes must fail every time for strict xfail: a fixed seed, no example database, and no shrinking
# (they fail by design; the minimal examples are the SCENARIOS).
PROBE = settings(
    max_examples=100, stateful_step_count=25, derandomize=True, database=None, phases=[Phase.generate], **_COMMON
)

BUG_CONSUME_TOLERANCE = (
    "bug: MemoryLedger.consume (dpf_sched/ledger/memory.py: `over = amt > e.remaining + tol`, the excess charged "
    "to unlocked) lets every partial consume exceed what remains of the grant by up to 1e-9·capacity, again "
    "after the rest is 0; consumed exceeds the demand beyond the tolerance (invariant 4), and on a grant "
    "admitted at the tolerance A+C exceeds cap·(1+1e-9) (invariant 2)"
)
BUG_FORGED_CONSUME = (
    "bug: MemoryLedger.consume never checks that the amounts' rows are finite and ≥ 0: a negative row moves "
    "budget from consumed back to allocated, a NaN row is accepted"
)
BUG_FORGED_DEMAND = (
    "bug: MemoryLedger.add_claim never checks that demand rows are finite and ≥ 0: a negative demand is "
    "accepted (allocate would then mint budget)"
)
BUG_FORGED_CAPACITY = (
    "bug: MemoryLedger.add_block (composition.check_capacity only asks for some column > 0) accepts a capacity "
    "row with a negative, NaN or infinite column"
)
BUG_UNUSABLE_ORDERS = (
    "bug: MemoryLedger.violations scales its tolerance with the current bucket magnitudes only "
    "(1e-9·(cap+|L|+|U|+|A|+|C|)); at Rényi orders of zero capacity, after grants are released, A and U hold "
    "~1e-17 of rounding residue and the tolerance is ~1e-26, so a sound ledger reports invariant 1/3 violations"
)

# (scenario, composition) → the bug that makes it fail today.
XFAIL_SCENARIOS = {
    **{
        (name, comp): BUG_CONSUME_TOLERANCE
        for name in ("repeated_within_tolerance_consumption", "tolerance_stacking_overspend")
        for comp in COMPOSITIONS
    },
    **{
        (name, comp): BUG_FORGED_CONSUME
        for name in ("forged_negative_consumption", "forged_nan_consumption")
        for comp in COMPOSITIONS
    },
    **{("forged_negative_demand", comp): BUG_FORGED_DEMAND for comp in COMPOSITIONS},
    **{("forged_bad_capacity", comp): BUG_FORGED_CAPACITY for comp in COMPOSITIONS},
    ("released_grants_on_unusable_orders", "renyi"): BUG_UNUSABLE_ORDERS,
}


def _machine(comp: str, *, tolerance: bool = False, forged: bool = False, unusable: bool = False) -> type:
    return contract_machine(
        make_memory_ledger,
        COMPOSITIONS[comp],
        name=f"MemoryLedger{comp.capitalize()}Contract",
        probe_consume_within_tolerance=tolerance,
        probe_forged_budgets=forged,
        probe_unusable_orders=unusable,
    )


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
    ("comp", "probe", "bug"),
    [
        pytest.param(comp, probe, bug, id=f"{probe}-{comp}", marks=pytest.mark.xfail(strict=True, reason=bug))
        for probe, bug, comps in (
            ("tolerance", BUG_CONSUME_TOLERANCE, ("basic", "renyi")),
            ("forged", f"{BUG_FORGED_CAPACITY}; {BUG_FORGED_DEMAND}; {BUG_FORGED_CONSUME}", ("basic", "renyi")),
        )
        for comp in comps
    ],
)
def test_memory_ledger_contract_probe(comp: str, probe: str, bug: str) -> None:
    """The contract with one known-bug probe switched on (it finds the bug within the first examples)."""
    run_state_machine_as_test(_machine(comp, **{probe: True}), settings=PROBE)


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
    """Deterministic contract scenarios (tolerance boundary, fair-share unlocks, minimal known-bug repros)."""
    SCENARIOS[name](make_memory_ledger, COMPOSITIONS[comp]())
