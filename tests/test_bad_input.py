"""Bad input gets a clear, typed error and changes nothing (DESIGN.md, invariant 5).

For every public entry point: the error class, a message that names the bad value, and — for the ledger and
the scheduler — a bit-for-bit snapshot of the budget state and the claim states that must not move.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from dpf_sched.block import Block
from dpf_sched.budget import (
    AlphaGrid,
    Conversion,
    EpsDelta,
    RenyiCurve,
    curve,
    epsdelta_to_rdp_capacity,
    rdp_to_epsilon,
)
from dpf_sched.claim import Claim
from dpf_sched.cli import main, parse_params
from dpf_sched.clock import ManualClock
from dpf_sched.composition import BasicComposition, RenyiComposition
from dpf_sched.errors import (
    AlphaGridMismatchError,
    CompositionMismatchError,
    DpfSchedError,
    DuplicateIdError,
    InsufficientBudgetError,
    InvalidBudgetError,
    InvalidParameterError,
    InvalidStateError,
    OverConsumptionError,
    UnknownBlockError,
    UnknownClaimError,
    UnknownPolicyError,
)
from dpf_sched.ledger import ClaimState, MemoryLedger
from dpf_sched.policies.registry import create_policy
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

NAN = math.nan
INF = math.inf
GRID = AlphaGrid.default()
OTHER_GRID = AlphaGrid((2.0, 4.0, 8.0))


def raises(exc: type[Exception], fragment: str | None, fn: Callable[[], Any]) -> Exception:
    """Call ``fn``; it must raise ``exc`` (a DpfSchedError) whose message contains ``fragment``."""
    with pytest.raises(exc) as ei:
        fn()
    assert isinstance(ei.value, DpfSchedError), f"{type(ei.value).__name__} is not a DpfSchedError"
    if fragment is not None:
        assert fragment in str(ei.value), f"{fragment!r} not in message {str(ei.value)!r}"
    return ei.value


# ==========================================================================================================
# Budget values
# ==========================================================================================================


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ((NAN,), "epsilon is NaN"),
        ((INF,), "inf"),
        ((-INF,), "-inf"),
        ((-0.5,), "-0.5"),
        ((np.float64(NAN),), "NaN"),
        ((1.0, NAN), "delta is NaN"),
        ((1.0, INF), "delta is infinite"),
        ((1.0, -1e-9), "-1e-09"),
        ((1.0, 1.0), "delta must be < 1, got 1.0"),
        ((1.0, 1.5), "1.5"),
        (("1",), "'1'"),
        ((None,), "None"),
        ((True,), "True"),
        (([1.0],), "[1.0]"),
        ((1j,), "1j"),
        ((1.0, "0"), "'0'"),
    ],
)
def test_epsdelta_refuses(args: tuple[Any, ...], fragment: str) -> None:
    raises(InvalidBudgetError, fragment, lambda: EpsDelta(*args))


def test_epsdelta_arithmetic_refuses_negative_results_and_bad_factors() -> None:
    raises(InvalidBudgetError, "negative", lambda: EpsDelta(1.0) - EpsDelta(2.0))
    raises(InvalidBudgetError, "delta", lambda: EpsDelta(1.0, 1e-6) - EpsDelta(0.5, 1e-5))
    raises(InvalidBudgetError, "delta must be < 1", lambda: EpsDelta(1.0, 0.6) + EpsDelta(1.0, 0.6))
    for k, frag in ((-1.0, "-1.0"), (NAN, "NaN"), (INF, "inf"), ("2", "'2'")):
        raises(InvalidBudgetError, frag, lambda k=k: EpsDelta(1.0).scale(k))


@pytest.mark.parametrize(
    ("orders", "fragment"),
    [
        ((), "empty"),
        ([], "empty"),
        ((1.0, 2.0), "order 1.0"),
        ((0.5, 2.0), "order 0.5"),
        ((-2.0,), "-2.0"),
        ((2.0, NAN), "nan"),
        ((2.0, INF), "inf"),
        ((2.0, 2.0), "2.0 then 2.0"),
        ((3.0, 2.0), "3.0 then 2.0"),
        ((1.5, 4.0, 3.0), "4.0 then 3.0"),
        (("a",), "'a'"),
        ((2.0, None), "None"),
        (5, "5"),
        (None, "None"),
    ],
)
def test_alpha_grid_refuses(orders: Any, fragment: str) -> None:
    raises(InvalidParameterError, fragment, lambda: AlphaGrid(orders))


@pytest.mark.parametrize(
    ("values", "exc", "fragment"),
    [
        ([1.0, 2.0], AlphaGridMismatchError, "2 values"),
        ([1.0, 2.0, 3.0, 4.0], AlphaGridMismatchError, "4 values"),
        ([], AlphaGridMismatchError, "0 values"),
        ([1.0, NAN, 3.0], InvalidBudgetError, "nan"),
        ([1.0, 2.0, INF], InvalidBudgetError, "inf"),
        ([-INF, 2.0, 3.0], InvalidBudgetError, "-inf"),
        ([1.0, -0.5, 3.0], InvalidBudgetError, "-0.5"),
        (["a", "b", "c"], InvalidBudgetError, "'a'"),
        ([1.0, None, 3.0], InvalidBudgetError, "nan"),
    ],
)
def test_renyi_curve_refuses(values: Any, exc: type[Exception], fragment: str) -> None:
    raises(exc, fragment, lambda: RenyiCurve(OTHER_GRID, values))
    if not any(isinstance(v, str) for v in values):
        raises(exc, fragment, lambda: curve(OTHER_GRID, values))


def test_curve_helper_refuses_non_numbers() -> None:
    raises(InvalidBudgetError, "'a'", lambda: curve(OTHER_GRID, ["a", "b", "c"]))


def test_renyi_curve_needs_a_grid() -> None:
    raises(InvalidParameterError, "tuple", lambda: RenyiCurve((2.0, 4.0, 8.0), [1.0, 1.0, 1.0]))  # type: ignore[arg-type]
    for eps, frag in ((-1.0, "-1.0"), (NAN, "NaN"), (INF, "inf"), ("1", "'1'")):
        raises(InvalidBudgetError, frag, lambda eps=eps: RenyiCurve.constant(OTHER_GRID, eps))


def test_curve_arithmetic_across_grids() -> None:
    a = RenyiCurve.constant(GRID, 1.0)
    b = RenyiCurve.constant(OTHER_GRID, 1.0)
    same_values_other_grid = RenyiCurve(AlphaGrid((2.0, 4.0, 9.0)), [1.0, 1.0, 1.0])
    raises(AlphaGridMismatchError, "α grids differ", lambda: a + b)
    raises(AlphaGridMismatchError, "8.0", lambda: b - same_values_other_grid)
    raises(AlphaGridMismatchError, "9.0", lambda: same_values_other_grid + b)
    raises(CompositionMismatchError, "EpsDelta", lambda: a + EpsDelta(1.0))  # type: ignore[operator]
    raises(CompositionMismatchError, "EpsDelta", lambda: a - EpsDelta(1.0))  # type: ignore[operator]
    raises(InvalidBudgetError, "α=", lambda: b - b.scale(2.0))
    for k, frag in ((-1.0, "-1.0"), (NAN, "NaN")):
        raises(InvalidBudgetError, frag, lambda k=k: a.scale(k))
    assert a == RenyiCurve.constant(GRID, 1.0)  # operands untouched


@pytest.mark.parametrize(
    ("eps", "delta", "conversion", "exc", "fragment"),
    [
        (0.0, 1e-5, "classic", InvalidBudgetError, "epsilon must be positive"),
        (-1.0, 1e-5, "classic", InvalidBudgetError, "-1.0"),
        (NAN, 1e-5, "classic", InvalidBudgetError, "NaN"),
        (INF, 1e-5, "balle", InvalidBudgetError, "inf"),
        (1.0, 0.0, "classic", InvalidBudgetError, "delta must be positive"),
        (1.0, -1e-5, "classic", InvalidBudgetError, "-1e-05"),
        (1.0, 1.0, "balle", InvalidBudgetError, "delta must be < 1"),
        (1.0, NAN, "balle", InvalidBudgetError, "NaN"),
        (1.0, 1e-5, "mironov", InvalidParameterError, "'mironov'"),
        (1.0, 1e-5, "", InvalidParameterError, "''"),
        (1.0, 1e-5, None, InvalidParameterError, "None"),
    ],
)
def test_epsdelta_to_rdp_capacity_refuses(eps: Any, delta: Any, conversion: Any, exc: type, fragment: str) -> None:
    raises(exc, fragment, lambda: epsdelta_to_rdp_capacity(eps, delta, GRID.array, conversion))


def test_to_renyi_and_to_eps_delta_refuse() -> None:
    raises(InvalidBudgetError, "delta must be positive", lambda: EpsDelta(1.0).to_renyi(GRID))
    raises(InvalidParameterError, "'foo'", lambda: EpsDelta(1.0, 1e-5).to_renyi(GRID, "foo"))
    c = RenyiCurve.constant(GRID, 1.0)
    raises(InvalidBudgetError, "delta must be positive", lambda: c.to_eps_delta(0.0))
    raises(InvalidBudgetError, "delta must be < 1", lambda: c.to_eps_delta(1.0))
    raises(InvalidParameterError, "'foo'", lambda: c.to_eps_delta(1e-5, "foo"))
    raises(InvalidParameterError, "'foo'", lambda: Conversion.parse("foo"))
    raises(InvalidParameterError, "'foo'", lambda: RenyiComposition(GRID, "foo"))


@pytest.mark.parametrize(
    ("alphas", "rdp", "delta", "conversion", "exc", "fragment"),
    [
        ([2.0, 4.0], [0.1, 0.2], 0.0, "balle", InvalidBudgetError, "delta must be positive"),
        ([2.0, 4.0], [0.1, 0.2], 1.0, "balle", InvalidBudgetError, "delta must be < 1"),
        ([2.0, 4.0], [0.1, 0.2], NAN, "classic", InvalidBudgetError, "NaN"),
        ([2.0, 4.0], [0.1, 0.2], "0.1", "classic", InvalidBudgetError, "'0.1'"),
        ([2.0, 4.0], [0.1, 0.2, 0.3], 1e-5, "balle", AlphaGridMismatchError, "3 RDP values for 2 orders"),
        ([2.0, 4.0, 8.0], [0.1], 1e-5, "classic", AlphaGridMismatchError, "1 RDP values"),
        ([2.0, 4.0], [0.1, 0.2], 1e-5, "renyi", InvalidParameterError, "'renyi'"),
    ],
)
def test_rdp_to_epsilon_refuses(alphas: Any, rdp: Any, delta: Any, conversion: str, exc: type, fragment: str) -> None:
    raises(exc, fragment, lambda: rdp_to_epsilon(alphas, rdp, delta, conversion))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_epsdelta_to_rdp_capacity_refuses_bad_alphas() -> None:
    # One test for the four cases (α < 1, α = 1, NaN, decreasing): xfail tracebacks are slow to render.
    for alphas in ([0.5, 2.0], [1.0, 2.0], [NAN, 2.0], [3.0, 2.0]):
        with pytest.raises(InvalidParameterError):
            epsdelta_to_rdp_capacity(1.0, 1e-5, alphas, "classic")


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_rdp_to_epsilon_refuses_bad_curves() -> None:
    cases = [  # NaN value, all NaN, negative value, order below 1
        ([1.5, 2.0], [NAN, 0.1]),
        ([1.5, 2.0], [NAN, NAN]),
        ([1.5, 2.0], [-5.0, 0.1]),
        ([0.5, 2.0], [0.1, 0.1]),
    ]
    for alphas, rdp in cases:
        with pytest.raises(DpfSchedError):
            rdp_to_epsilon(alphas, rdp, 1e-5)


# ==========================================================================================================
# Blocks, claims, selectors
# ==========================================================================================================


@pytest.mark.parametrize(
    ("kwargs", "exc", "fragment"),
    [
        ({"capacity": EpsDelta(0.0)}, InvalidBudgetError, "zero"),
        ({"capacity": EpsDelta(0.0, 1e-6)}, InvalidBudgetError, "epsilon must be positive"),
        ({"capacity": RenyiCurve(GRID, np.zeros(len(GRID)))}, InvalidBudgetError, "zero"),
        ({"capacity": 1.0}, InvalidBudgetError, "1.0"),
        ({"capacity": None}, InvalidBudgetError, "None"),
        ({"id": ""}, InvalidParameterError, "empty"),
        ({"id": None}, InvalidParameterError, "None"),
        ({"id": 1.5}, InvalidParameterError, "1.5"),
        ({"id": True}, InvalidParameterError, "True"),
        ({"id": ["b"]}, InvalidParameterError, "['b']"),
        ({"created": NAN}, InvalidParameterError, "nan"),
        ({"created": INF}, InvalidParameterError, "inf"),
        ({"created": "0"}, InvalidParameterError, "'0'"),
        ({"created": None}, InvalidParameterError, "None"),
        ({"attributes": [("k", 1)]}, InvalidParameterError, "[('k', 1)]"),
        ({"attributes": {1: "x"}}, InvalidParameterError, "1"),
    ],
)
def test_block_refuses(kwargs: dict[str, Any], exc: type, fragment: str) -> None:
    args = {"id": "b0", "capacity": EpsDelta(1.0), **kwargs}
    raises(exc, fragment, lambda: Block(**args))


def test_renyi_capacity_that_is_zero_at_every_order() -> None:
    cap = EpsDelta(0.1, 1e-5).to_renyi(GRID)  # ln(1/δ)/(α−1) > ε at every order of the default grid
    assert cap.is_zero()
    raises(InvalidBudgetError, "b0", lambda: Block("b0", cap))


D = EpsDelta(0.1)
R = RenyiCurve.constant(GRID, 0.1)


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "fragment"),
    [
        (("c", {}), {}, InvalidParameterError, "at least one block"),
        (("c", [("b0", D)]), {}, InvalidParameterError, "at least one block"),
        (("c", None), {}, InvalidParameterError, "at least one block"),
        (("c", {"b0": EpsDelta(0.0)}), {}, InvalidBudgetError, "block b0 is zero"),
        (("c", {"b0": D, "b1": RenyiCurve(GRID, np.zeros(len(GRID)))}), {}, InvalidBudgetError, "block b1"),
        (("c", {"b0": 0.1}), {}, InvalidBudgetError, "0.1"),
        (("c", {"b0": D, "b1": R}), {}, CompositionMismatchError, "mixes"),
        (
            ("c", {"b0": R, "b1": RenyiCurve.constant(OTHER_GRID, 0.1)}),
            {},
            AlphaGridMismatchError,
            "α grids",
        ),
        (("c", {"": D}), {}, InvalidParameterError, "empty"),
        (("c", {None: D}), {}, InvalidParameterError, "None"),
        (("c", {1: D, "1": D}), {}, InvalidParameterError, "listed twice"),
        (("", {"b0": D}), {}, InvalidParameterError, "claim id is empty"),
        ((None, {"b0": D}), {}, InvalidParameterError, "None"),
        (("c", {"b0": D}), {"timeout": 0}, InvalidParameterError, "timeout must be positive, got 0"),
        (("c", {"b0": D}), {"timeout": -1.0}, InvalidParameterError, "-1.0"),
        (("c", {"b0": D}), {"timeout": NAN}, InvalidParameterError, "nan"),
        (("c", {"b0": D}), {"timeout": INF}, InvalidParameterError, "inf"),
        (("c", {"b0": D}), {"timeout": "5"}, InvalidParameterError, "'5'"),
        (("c", {"b0": D}), {"weight": 0}, InvalidParameterError, "weight"),
        (("c", {"b0": D}), {"weight": -2.0}, InvalidParameterError, "-2.0"),
        (("c", {"b0": D}), {"weight": NAN}, InvalidParameterError, "nan"),
        (("c", {"b0": D}), {"weight": INF}, InvalidParameterError, "inf"),
        (("c", {"b0": D}), {"weight": "1"}, InvalidParameterError, "'1'"),
        (("c", {"b0": D}), {"weight": True}, InvalidParameterError, "True"),
        (("c", {"b0": D}), {"weight": None}, InvalidParameterError, "None"),
        (("c", {"b0": D}), {"owner": 5}, InvalidParameterError, "5"),
        (("c", {"b0": D}), {"owner": b"me"}, InvalidParameterError, "b'me'"),
        (("c", {"b0": D}), {"arrival": NAN}, InvalidParameterError, "nan"),
        (("c", {"b0": D}), {"arrival": "now"}, InvalidParameterError, "'now'"),
    ],
)
def test_claim_refuses(args: tuple[Any, ...], kwargs: dict[str, Any], exc: type, fragment: str) -> None:
    raises(exc, fragment, lambda: Claim(*args, **kwargs))


def test_claim_uniform_refuses() -> None:
    raises(InvalidParameterError, "no blocks", lambda: Claim.uniform("c", [], D))
    raises(InvalidParameterError, "listed twice", lambda: Claim.uniform("c", ["b0", "b0"], D))
    raises(InvalidBudgetError, "zero", lambda: Claim.uniform("c", ["b0"], EpsDelta(0.0)))


def _sel_blocks() -> list[Block]:
    return [
        Block("d1", EpsDelta(1.0), created=1.0, attributes={"src": "web"}),
        Block("d2", EpsDelta(1.0), created=2.0, attributes={"src": "app"}),
        Block("d3", EpsDelta(1.0), created=3.0, attributes={"src": "web"}),
    ]


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"created_from": 5, "created_until": 5}, "empty"),
        ({"created_from": 5, "created_until": 3}, "[5, 3)"),
        ({"created_from": NAN}, "nan"),
        ({"created_until": "x"}, "'x'"),
        ({"created_from": True}, "True"),
        ({"latest": 0}, "latest"),
        ({"latest": -1}, "-1"),
        ({"latest": 1.5}, "1.5"),
        ({"latest": True}, "True"),
        ({"latest": "2"}, "'2'"),
        ({"min_blocks": -1}, "-1"),
        ({"min_blocks": 1.5}, "1.5"),
        ({"ids": "d1"}, "'d1'"),
        ({"ids": ["d1", "d1"]}, "twice"),
        ({"ids": [""]}, "empty"),
        ({"ids": 3}, "3"),
        ({"attributes": ["src"]}, "['src']"),
    ],
)
def test_selector_refuses(kwargs: dict[str, Any], fragment: str) -> None:
    raises(InvalidParameterError, fragment, lambda: BlockSelector(**kwargs))


def test_selector_refuses_min_blocks_none() -> None:
    raises(InvalidParameterError, "None", lambda: BlockSelector(min_blocks=None))  # type: ignore[arg-type]


def test_selector_select_refuses() -> None:
    blocks = _sel_blocks()
    raises(UnknownBlockError, "nope", lambda: BlockSelector(ids=("d1", "nope")).select(blocks))
    raises(
        InvalidParameterError,
        "matched 2 blocks, fewer than min_blocks=3",
        lambda: BlockSelector(attributes={"src": "web"}, min_blocks=3).select(blocks),
    )
    raises(InvalidParameterError, "matched 0 blocks", lambda: BlockSelector(created_from=10).select(blocks))
    raises(InvalidParameterError, "min_blocks=2", lambda: BlockSelector(latest=1, min_blocks=2).select(blocks))
    assert [b.id for b in blocks] == ["d1", "d2", "d3"]  # the pool is not reordered in place


# ==========================================================================================================
# Ledger: typed errors and nothing changed
# ==========================================================================================================

ARRAYS = (
    "capacity",
    "locked",
    "unlocked",
    "allocated",
    "consumed",
    "unlocked_fraction",
    "created",
    "retired_mask",
)


def snapshot(ledger: MemoryLedger) -> dict[str, Any]:
    """Everything observable about the ledger, arrays as raw bytes (bit-for-bit comparison, NaN-safe)."""
    snap: dict[str, Any] = {
        name: (arr.dtype.str, arr.shape, arr.tobytes())
        for name in ARRAYS
        for arr in [np.asarray(getattr(ledger, name))]
    }
    snap["blocks"] = [(b.id, b.capacity, b.created) for b in ledger.blocks()]
    claims = {}
    for cid in ledger.claim_ids():
        rec = ledger.claim(cid)
        claims[cid] = (
            rec.state,
            rec.granted_at,
            rec.decided_at,
            rec.reason,
            {b: _bits(v) for b, v in rec.remaining.items()},
            {b: _bits(v) for b, v in rec.consumed.items()},
        )
    snap["claims"] = claims
    return snap


def _bits(v: EpsDelta | RenyiCurve) -> bytes:
    if isinstance(v, EpsDelta):
        return np.array([v.epsilon, v.delta]).tobytes()
    return v.values.tobytes()


def assert_unchanged(ledger: MemoryLedger, before: dict[str, Any]) -> None:
    after = snapshot(ledger)
    for key in before:
        assert after[key] == before[key], f"ledger {key} changed by a failed operation"
    assert ledger.violations() == []


def basic_ledger() -> MemoryLedger:
    """A basic ledger with claims in every state.

    Blocks: b0 (ε 1, δ 1e-6, half unlocked), b1 (ε 2, δ 1e-6), b2 (pure ε 1, δ 0), b3 (retired), b4 (locked).
    """
    L = MemoryLedger(BasicComposition(), initial_blocks=2)  # force one growth of the arrays
    L.add_block(Block("b0", EpsDelta(1.0, 1e-6), created=0.0))
    L.add_block(Block("b1", EpsDelta(2.0, 1e-6), created=0.0))
    L.add_block(Block("b2", EpsDelta(1.0), created=0.5))
    L.add_block(Block("b3", EpsDelta(1.0, 1e-6), created=0.5))
    L.add_block(Block("b4", EpsDelta(1.0, 1e-6), created=1.0))
    L.unlock_to([0, 1, 2, 3], [0.5, 1.0, 1.0, 1.0])
    claims = {
        "granted": {"b0": EpsDelta(0.2, 1e-7), "b1": EpsDelta(0.2, 1e-7)},
        "partial": {"b1": EpsDelta(0.3)},
        "finished": {"b1": EpsDelta(0.1)},
        "released": {"b1": EpsDelta(0.1)},
        "rejected": {"b0": EpsDelta(0.1)},
        "waiting": {"b0": EpsDelta(0.9)},
        "waiting2": {"b1": EpsDelta(0.1), "b0": EpsDelta(0.9)},
        "pure-delta": {"b2": EpsDelta(0.1, 1e-7)},
        "on-locked": {"b4": EpsDelta(0.1)},
        "on-retired": {"b3": EpsDelta(0.1)},
        "fits": {"b1": EpsDelta(0.1)},
    }
    for cid, demand in claims.items():
        L.add_claim(Claim(cid, demand, arrival=1.0))
    for cid in ("granted", "partial", "finished", "released"):
        L.allocate(cid, 1.0)
    L.consume("partial", {"b1": EpsDelta(0.1)}, 1.5)
    L.consume("finished", None, 1.5)
    L.consume("released", {"b1": EpsDelta(0.05)}, 1.5)
    L.release("released", 1.6)
    L.reject("rejected", 1.6, "test")
    L.retire("b3")
    return L


def renyi_ledger() -> MemoryLedger:
    """A Rényi ledger on the default grid: r0 half unlocked, r1 fully unlocked, r2 locked."""
    L = MemoryLedger(RenyiComposition(GRID))
    cap = EpsDelta(10.0, 1e-5).to_renyi(GRID)
    for i, bid in enumerate(("r0", "r1", "r2")):
        L.add_block(Block(bid, cap, created=float(i), guarantee=EpsDelta(10.0, 1e-5)))
    L.unlock_to([0, 1], [0.5, 1.0])
    c = RenyiCurve.constant
    claims = {
        "granted": {"r0": c(GRID, 1.0), "r1": c(GRID, 1.0)},
        "finished": {"r1": c(GRID, 0.5)},
        "waiting": {"r0": c(GRID, 5.0)},
        "on-locked": {"r2": c(GRID, 0.1)},
        "fits": {"r1": c(GRID, 0.5)},
    }
    for cid, demand in claims.items():
        L.add_claim(Claim(cid, demand, arrival=2.0))
    L.allocate("granted", 2.0)
    L.allocate("finished", 2.0)
    L.consume("finished", None, 2.0)
    return L


def test_fixture_ledgers_are_sound() -> None:
    for L in (basic_ledger(), renyi_ledger()):
        assert L.violations() == []
    L = basic_ledger()
    assert {cid: L.state(cid) for cid in L.claim_ids()} == {
        "granted": ClaimState.GRANTED,
        "partial": ClaimState.GRANTED,
        "finished": ClaimState.FINISHED,
        "released": ClaimState.FINISHED,
        "rejected": ClaimState.REJECTED,
        "waiting": ClaimState.WAITING,
        "waiting2": ClaimState.WAITING,
        "pure-delta": ClaimState.WAITING,
        "on-locked": ClaimState.WAITING,
        "on-retired": ClaimState.WAITING,
        "fits": ClaimState.WAITING,
    }


Op = Callable[[MemoryLedger], Any]
E = EpsDelta

BASIC_CASES: list[tuple[str, Op, type[Exception], str | None]] = [
    # blocks
    ("add-block-duplicate", lambda L: L.add_block(Block("b0", E(1.0))), DuplicateIdError, "b0"),
    ("add-block-not-a-block", lambda L: L.add_block("b9"), InvalidParameterError, "str"),
    (
        "add-block-renyi-capacity",
        lambda L: L.add_block(Block("b9", RenyiCurve.constant(GRID, 1.0))),
        CompositionMismatchError,
        "RenyiCurve",
    ),
    ("retire-unknown", lambda L: L.retire("nope"), UnknownBlockError, "nope"),
    ("block-unknown", lambda L: L.block("nope"), UnknownBlockError, "nope"),
    ("budgets-unknown", lambda L: L.budgets("nope"), UnknownBlockError, "nope"),
    ("block-index-unknown", lambda L: L.block_index("nope"), UnknownBlockError, "nope"),
    ("block-index-unhashable", lambda L: L.block_index(["b0"]), UnknownBlockError, "['b0']"),
    # claims
    (
        "add-claim-duplicate",
        lambda L: L.add_claim(Claim("granted", {"b1": E(0.1)})),
        DuplicateIdError,
        "granted",
    ),
    (
        "add-claim-duplicate-of-rejected",
        lambda L: L.add_claim(Claim("rejected", {"b1": E(0.1)})),
        DuplicateIdError,
        "rejected",
    ),
    ("add-claim-not-a-claim", lambda L: L.add_claim({"b0": E(0.1)}), InvalidParameterError, "dict"),
    (
        "add-claim-unknown-block",
        lambda L: L.add_claim(Claim("new", {"b0": E(0.1), "nope": E(0.1)})),
        UnknownBlockError,
        "nope",
    ),
    (
        "add-claim-renyi-demand",
        lambda L: L.add_claim(Claim("new", {"b0": RenyiCurve.constant(GRID, 0.1)})),
        CompositionMismatchError,
        "RenyiCurve",
    ),
    (
        "add-claim-retired-block",
        lambda L: L.add_claim(Claim("new", {"b0": E(0.1), "b3": E(0.1)})),
        InvalidStateError,
        "b3",
    ),
    ("state-unknown", lambda L: L.state("nope"), UnknownClaimError, "nope"),
    ("claim-unknown", lambda L: L.claim("nope"), UnknownClaimError, "nope"),
    # allocate
    ("allocate-unknown", lambda L: L.allocate("nope", 2.0), UnknownClaimError, "nope"),
    ("allocate-beyond-unlocked", lambda L: L.allocate("waiting", 2.0), InsufficientBudgetError, "b0"),
    ("allocate-fits-one-block-only", lambda L: L.allocate("waiting2", 2.0), InsufficientBudgetError, "b0"),
    ("allocate-delta-on-pure-block", lambda L: L.allocate("pure-delta", 2.0), InsufficientBudgetError, "b2"),
    ("allocate-locked-budget", lambda L: L.allocate("on-locked", 2.0), InsufficientBudgetError, "b4"),
    ("allocate-twice", lambda L: L.allocate("granted", 2.0), InvalidStateError, "granted"),
    ("allocate-finished", lambda L: L.allocate("finished", 2.0), InvalidStateError, "finished"),
    ("allocate-rejected", lambda L: L.allocate("rejected", 2.0), InvalidStateError, "rejected"),
    ("allocate-retired", lambda L: L.allocate("on-retired", 2.0), InvalidStateError, "retired"),
    ("allocate-nan-time", lambda L: L.allocate("fits", NAN), InvalidParameterError, "nan"),
    ("allocate-inf-time", lambda L: L.allocate("fits", INF), InvalidParameterError, "inf"),
    ("allocate-string-time", lambda L: L.allocate("fits", "2"), InvalidParameterError, "'2'"),
    # reject
    ("reject-unknown", lambda L: L.reject("nope", 2.0, "x"), UnknownClaimError, "nope"),
    ("reject-granted", lambda L: L.reject("granted", 2.0, "x"), InvalidStateError, "granted"),
    ("reject-twice", lambda L: L.reject("rejected", 2.0, "x"), InvalidStateError, "rejected"),
    ("reject-nan-time", lambda L: L.reject("fits", NAN, "x"), InvalidParameterError, "nan"),
    # consume
    ("consume-unknown", lambda L: L.consume("nope"), UnknownClaimError, "nope"),
    ("consume-before-grant", lambda L: L.consume("fits"), InvalidStateError, "waiting"),
    ("consume-part-before-grant", lambda L: L.consume("fits", {"b1": E(0.05)}), InvalidStateError, "waiting"),
    ("consume-rejected", lambda L: L.consume("rejected"), InvalidStateError, "rejected"),
    ("consume-more-than-granted", lambda L: L.consume("granted", {"b0": E(0.3)}), OverConsumptionError, "b0"),
    (
        "consume-delta-more-than-granted",
        lambda L: L.consume("granted", {"b0": E(0.1, 1e-6)}),
        OverConsumptionError,
        "b0",
    ),
    (
        "consume-more-than-remains",
        lambda L: L.consume("partial", {"b1": E(0.25)}),
        OverConsumptionError,
        "b1",
    ),
    (
        "consume-one-block-over",
        lambda L: L.consume("granted", {"b0": E(0.1), "b1": E(0.5)}),
        OverConsumptionError,
        "b1",
    ),
    ("consume-after-finishing", lambda L: L.consume("finished"), InvalidStateError, "finished"),
    (
        "consume-part-after-finishing",
        lambda L: L.consume("finished", {"b1": E(0.01)}),
        InvalidStateError,
        "finished",
    ),
    ("consume-after-release", lambda L: L.consume("released"), InvalidStateError, "released"),
    ("consume-block-not-in-claim", lambda L: L.consume("partial", {"b0": E(0.01)}), UnknownBlockError, "b0"),
    ("consume-unknown-block", lambda L: L.consume("granted", {"nope": E(0.01)}), UnknownBlockError, "nope"),
    (
        "consume-good-then-unknown-block",
        lambda L: L.consume("granted", {"b0": E(0.1), "zz": E(0.01)}),
        UnknownBlockError,
        "zz",
    ),
    ("consume-empty-amounts", lambda L: L.consume("granted", {}), InvalidParameterError, "{}"),
    (
        "consume-amounts-not-a-mapping",
        lambda L: L.consume("granted", [E(0.1)]),
        InvalidParameterError,
        "EpsDelta",
    ),
    (
        "consume-negative-number",
        lambda L: L.consume("granted", {"b0": -0.1}),
        CompositionMismatchError,
        "float",
    ),
    ("consume-nan-number", lambda L: L.consume("granted", {"b0": NAN}), CompositionMismatchError, "float"),
    (
        "consume-renyi-amount",
        lambda L: L.consume("granted", {"b0": RenyiCurve.constant(GRID, 0.1)}),
        CompositionMismatchError,
        "RenyiCurve",
    ),
    ("consume-nan-time", lambda L: L.consume("granted", None, NAN), InvalidParameterError, "nan"),
    # release
    ("release-unknown", lambda L: L.release("nope"), UnknownClaimError, "nope"),
    ("release-twice", lambda L: L.release("released"), InvalidStateError, "released"),
    ("release-finished", lambda L: L.release("finished"), InvalidStateError, "finished"),
    ("release-waiting", lambda L: L.release("fits"), InvalidStateError, "waiting"),
    ("release-rejected", lambda L: L.release("rejected"), InvalidStateError, "rejected"),
    ("release-nan-time", lambda L: L.release("granted", NAN), InvalidParameterError, "nan"),
    # unlock
    ("unlock-nan", lambda L: L.unlock_to([4], [NAN]), InvalidParameterError, "nan"),
    ("unlock-negative", lambda L: L.unlock_to([4], [-0.1]), InvalidParameterError, "-0.1"),
    ("unlock-inf", lambda L: L.unlock_to([4], [INF]), InvalidParameterError, "inf"),
    ("unlock-one-nan-among-good", lambda L: L.unlock_to([4, 0], [0.5, NAN]), InvalidParameterError, "nan"),
    ("unlock-unknown-index", lambda L: L.unlock_to([99], [0.5]), UnknownBlockError, "index"),
    ("unlock-negative-index", lambda L: L.unlock_to([-1], [0.5]), UnknownBlockError, "index"),
    ("unlock-good-and-unknown-index", lambda L: L.unlock_to([4, 5], [0.5, 0.5]), UnknownBlockError, "0..4"),
    (
        "unlock-length-mismatch",
        lambda L: L.unlock_to([0, 4], [0.5, 0.5, 0.5]),
        InvalidParameterError,
        "2 blocks but 3",
    ),
    ("unlock-duplicate-index", lambda L: L.unlock_to([4, 4], [0.5, 0.6]), InvalidParameterError, "twice"),
]


@pytest.mark.parametrize(("op", "exc", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in BASIC_CASES])
def test_basic_ledger_refuses_and_changes_nothing(op: Op, exc: type[Exception], fragment: str | None) -> None:
    L = basic_ledger()
    before = snapshot(L)
    raises(exc, fragment, lambda: op(L))
    assert_unchanged(L, before)


def _curve_over_at_one_order() -> RenyiCurve:
    v = np.full(len(GRID), 0.5)
    v[-1] = 1.5  # granted 1.0 at every order
    return RenyiCurve(GRID, v)


RENYI_CASES: list[tuple[str, Op, type[Exception], str | None]] = [
    (
        "add-block-epsdelta",
        lambda L: L.add_block(Block("r9", E(1.0, 1e-5))),
        CompositionMismatchError,
        "EpsDelta",
    ),
    (
        "add-block-other-grid",
        lambda L: L.add_block(Block("r9", RenyiCurve.constant(OTHER_GRID, 1.0))),
        AlphaGridMismatchError,
        "(2.0, 4.0, 8.0)",
    ),
    (
        "add-block-duplicate",
        lambda L: L.add_block(Block("r0", RenyiCurve.constant(GRID, 1.0))),
        DuplicateIdError,
        "r0",
    ),
    (
        "add-claim-other-grid",
        lambda L: L.add_claim(Claim("new", {"r1": RenyiCurve.constant(OTHER_GRID, 0.1)})),
        AlphaGridMismatchError,
        "(2.0, 4.0, 8.0)",
    ),
    (
        "add-claim-epsdelta",
        lambda L: L.add_claim(Claim("new", {"r1": E(0.1)})),
        CompositionMismatchError,
        "EpsDelta",
    ),
    (
        "add-claim-duplicate",
        lambda L: L.add_claim(Claim("fits", {"r1": RenyiCurve.constant(GRID, 0.1)})),
        DuplicateIdError,
        "fits",
    ),
    (
        "add-claim-unknown-block",
        lambda L: L.add_claim(Claim("new", {"zz": RenyiCurve.constant(GRID, 0.1)})),
        UnknownBlockError,
        "zz",
    ),
    ("allocate-beyond-unlocked", lambda L: L.allocate("waiting", 3.0), InsufficientBudgetError, "r0"),
    ("allocate-locked", lambda L: L.allocate("on-locked", 3.0), InsufficientBudgetError, "r2"),
    ("allocate-twice", lambda L: L.allocate("granted", 3.0), InvalidStateError, "granted"),
    (
        "consume-over-at-one-order",
        lambda L: L.consume("granted", {"r0": _curve_over_at_one_order()}),
        OverConsumptionError,
        "r0",
    ),
    (
        "consume-other-grid",
        lambda L: L.consume("granted", {"r0": RenyiCurve.constant(OTHER_GRID, 0.1)}),
        AlphaGridMismatchError,
        "(2.0, 4.0, 8.0)",
    ),
    (
        "consume-epsdelta",
        lambda L: L.consume("granted", {"r0": E(0.1)}),
        CompositionMismatchError,
        "EpsDelta",
    ),
    ("consume-before-grant", lambda L: L.consume("fits"), InvalidStateError, "waiting"),
    ("consume-after-finishing", lambda L: L.consume("finished"), InvalidStateError, "finished"),
    ("release-after-finishing", lambda L: L.release("finished"), InvalidStateError, "finished"),
    ("unlock-nan", lambda L: L.unlock_to([2], [NAN]), InvalidParameterError, "nan"),
    ("unlock-negative", lambda L: L.unlock_to([2], [-1.0]), InvalidParameterError, "-1.0"),
    ("unlock-unknown-index", lambda L: L.unlock_to([3], [1.0]), UnknownBlockError, "index"),
]


@pytest.mark.parametrize(("op", "exc", "fragment"), [pytest.param(*c[1:], id=c[0]) for c in RENYI_CASES])
def test_renyi_ledger_refuses_and_changes_nothing(op: Op, exc: type[Exception], fragment: str | None) -> None:
    L = renyi_ledger()
    before = snapshot(L)
    raises(exc, fragment, lambda: op(L))
    assert_unchanged(L, before)


def test_refused_operations_leave_the_ledger_usable() -> None:
    """After a run of refusals, the same claims still go through their legal transitions."""
    L = basic_ledger()
    for _, op, exc, _ in BASIC_CASES:
        with pytest.raises(exc):
            op(L)
    L.allocate("fits", 3.0)
    L.consume("granted", {"b0": E(0.2, 1e-7)}, 3.0)
    L.consume("partial", {"b1": E(0.2)}, 3.0)
    L.release("granted", 3.0)
    L.unlock_to([4], [0.5])
    L.allocate("on-locked", 3.0)
    assert L.state("fits") is ClaimState.GRANTED
    assert L.violations() == []


def test_unlock_to_refuses_non_integer_indices() -> None:
    L = basic_ledger()
    before = snapshot(L)
    for indices, fractions in (([4.7], [0.5]), ([NAN], [0.5]), (["x"], [0.5]), ([4], ["half"])):
        with pytest.raises(DpfSchedError):
            L.unlock_to(indices, fractions)
        assert_unchanged(L, before)


# ==========================================================================================================
# Scheduler
# ==========================================================================================================


class SettableClock:
    """A clock that may be moved anywhere, even backwards or to NaN (unlike ManualClock)."""

    def __init__(self, t: float = 0.0) -> None:
        self.t = t

    def now(self) -> float:
        return self.t


def test_unknown_policy_name() -> None:
    L = MemoryLedger(BasicComposition())
    e = raises(UnknownPolicyError, "'dpf-x'", lambda: Scheduler(L, "dpf-x"))
    assert "dpf-n" in str(e)  # lists what is available
    raises(UnknownPolicyError, "'DPF-N'", lambda: create_policy("DPF-N"))
    assert isinstance(e, LookupError)


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("dpf-n", {"N": 0}, "N must be a positive integer, got 0"),
        ("dpf-n", {"N": -1}, "-1"),
        ("dpf-n", {"N": 1.5}, "1.5"),
        ("dpf-n", {"N": "1.5"}, "'1.5'"),
        ("dpf-n", {"N": "ten"}, "'ten'"),
        ("dpf-n", {"N": True}, "True"),
        ("dpf-n", {"N": NAN}, "nan"),
        ("dpf-n", {"N": INF}, "inf"),
        ("dpf-n", {"N": None}, "None"),
        ("rr-n", {"N": 0}, "N must be a positive integer"),
        ("dpf-t", {"T": NAN}, "nan"),
        ("dpf-t", {"T": "nan"}, "'nan'"),
        ("dpf-t", {"T": 0}, "T must be a positive"),
        ("dpf-t", {"T": -5.0}, "-5.0"),
        ("dpf-t", {"T": INF}, "inf"),
        ("dpf-t", {"tick": 0}, "tick"),
        ("dpf-t", {"unlock": "linear"}, "'linear'"),
        ("rr-t", {"T": "x"}, "'x'"),
        ("dpf-n", {"tie_break": "foo"}, "'foo'"),
        ("drf", {"tie_break": "random"}, "'random'"),
        ("dpf-n", {"strict": "maybe"}, "'maybe'"),
        ("drf", {"strict": 2}, "2"),
        ("dpf-n", {"n": 10}, "['n']"),
        ("dpf-t", {"N": 10}, "['N']"),
        ("fcfs", {"N": 10}, "known: none"),
        ("rr-n", {"tie_break": "arrival"}, "tie_break"),
    ],
)
def test_bad_policy_params(name: str, params: dict[str, Any], fragment: str) -> None:
    raises(InvalidParameterError, fragment, lambda: create_policy(name, **params))


@pytest.mark.parametrize(
    ("name", "params", "fragment"),
    [
        ("dpf-n", {"N": 0}, "got 0"),
        ("dpf-n", {"N": -1}, "-1"),
        ("dpf-n", {"N": 1.5}, "1.5"),
        ("dpf-t", {"T": NAN}, "nan"),
        ("dpf-n", {"tie_break": "foo"}, "'foo'"),
        ("drf", {"strict": "maybe"}, "'maybe'"),
        ("dpf-n", {"M": 3}, "['M']"),
    ],
)
def test_bad_policy_params_through_the_scheduler(name: str, params: dict[str, Any], fragment: str) -> None:
    L = basic_ledger()
    before = snapshot(L)
    raises(InvalidParameterError, fragment, lambda: Scheduler(L, name, **params))
    assert_unchanged(L, before)


def test_scheduler_refuses_bad_policy_arguments() -> None:
    L = MemoryLedger(BasicComposition())
    raises(
        InvalidParameterError,
        "only accepted with a policy name",
        lambda: Scheduler(L, create_policy("dpf-n"), N=3),
    )
    raises(InvalidParameterError, "int", lambda: Scheduler(L, 42))  # type: ignore[arg-type]
    raises(InvalidParameterError, "NoneType", lambda: Scheduler(L, None))  # type: ignore[arg-type]


@pytest.mark.parametrize("name", ["rr-n", "rr-t"])
def test_round_robin_refuses_renyi_ledgers(name: str) -> None:
    L = renyi_ledger()
    before = snapshot(L)
    raises(InvalidParameterError, name, lambda: Scheduler(L, name))
    raises(
        InvalidParameterError,
        "basic composition only",
        lambda: Scheduler(L, name, N=5) if name == "rr-n" else Scheduler(L, name, T=5),
    )
    assert_unchanged(L, before)


def _scheduler(policy: str = "dpf-n", clock: Any = None, **params: Any) -> tuple[Scheduler, MemoryLedger]:
    L = MemoryLedger(BasicComposition())
    s = Scheduler(L, policy, clock, **params)
    return s, L


def test_scheduler_submit_refuses() -> None:
    s, L = _scheduler(N=2)
    s.add_block(Block("b0", EpsDelta(1.0)))
    s.submit(Claim("c0", {"b0": EpsDelta(0.4)}))
    s.step()
    before = snapshot(L)
    states = s.states()
    raises(InvalidParameterError, "dict", lambda: s.submit({"b0": EpsDelta(0.1)}))  # type: ignore[arg-type]
    raises(InvalidParameterError, "str", lambda: s.submit("c1"))  # type: ignore[arg-type]
    raises(UnknownBlockError, "nope", lambda: s.submit(Claim("c1", {"b0": EpsDelta(0.1), "nope": EpsDelta(0.1)})))
    raises(DuplicateIdError, "c0", lambda: s.submit(Claim("c0", {"b0": EpsDelta(0.1)})))
    raises(
        CompositionMismatchError,
        "RenyiCurve",
        lambda: s.submit(Claim("c1", {"b0": RenyiCurve.constant(GRID, 0.1)})),
    )
    raises(UnknownBlockError, "zz", lambda: s.submit_request("c1", BlockSelector(ids=("zz",)), EpsDelta(0.1)))
    raises(
        InvalidParameterError,
        "min_blocks=2",
        lambda: s.submit_request("c1", BlockSelector(min_blocks=2), EpsDelta(0.1)),
    )
    raises(InvalidBudgetError, "zero", lambda: s.submit_request("c1", BlockSelector(), EpsDelta(0.0)))
    raises(UnknownClaimError, "nope", lambda: s.consume("nope"))
    raises(UnknownClaimError, "nope", lambda: s.release("nope"))
    raises(UnknownClaimError, "nope", lambda: s.status("nope"))
    raises(UnknownBlockError, "nope", lambda: s.retire_block("nope"))
    raises(DuplicateIdError, "b0", lambda: s.add_block(Block("b0", EpsDelta(1.0))))
    raises(InvalidParameterError, "str", lambda: s.add_block("b1"))  # type: ignore[arg-type]
    assert_unchanged(L, before)
    assert s.states() == states
    assert len(s.queue) == 0
    # The DPF-N arrival counter did not move: one more arrival on b0 unlocks the second half.
    s.submit(Claim("c1", {"b0": EpsDelta(0.5)}))
    assert float(L.unlocked_fraction[0]) == 1.0


def test_scheduler_consume_and_release_refuse() -> None:
    s, L = _scheduler("fcfs")
    s.add_block(Block("b0", EpsDelta(1.0, 1e-6)))
    s.submit(Claim("c0", {"b0": EpsDelta(0.4)}))
    s.submit(Claim("c1", {"b0": EpsDelta(0.4)}))
    s.step()
    s.consume("c1")
    before = snapshot(L)
    raises(OverConsumptionError, "b0", lambda: s.consume("c0", {"b0": EpsDelta(0.5)}))
    raises(InvalidStateError, "c1", lambda: s.consume("c1"))
    raises(InvalidStateError, "c1", lambda: s.release("c1"))
    assert_unchanged(L, before)
    s.release("c0")
    raises(InvalidStateError, "c0", lambda: s.release("c0"))
    raises(InvalidStateError, "c0", lambda: s.consume("c0", {"b0": EpsDelta(0.1)}))
    assert L.violations() == []


def test_clock_going_backwards() -> None:
    clock = SettableClock(5.0)
    s, L = _scheduler(clock=clock, N=2)
    s.add_block(Block("b0", EpsDelta(1.0), created=5.0))
    s.submit(Claim("c0", {"b0": EpsDelta(0.4)}))
    s.step()
    before = snapshot(L)
    clock.t = 3.0
    raises(InvalidParameterError, "3.0 < 5.0", lambda: s.step())
    raises(InvalidParameterError, "backwards", lambda: s.submit(Claim("c1", {"b0": EpsDelta(0.1)})))
    raises(InvalidParameterError, "backwards", lambda: s.add_block(Block("b1", EpsDelta(1.0))))
    raises(InvalidParameterError, "backwards", lambda: s.consume("c0"))
    raises(InvalidParameterError, "backwards", lambda: s.release("c0"))
    assert_unchanged(L, before)
    clock.t = 5.0
    s.consume("c0")
    assert L.state("c0") is ClaimState.FINISHED


def test_manual_clock_refuses() -> None:
    c = ManualClock(2.0)
    raises(InvalidParameterError, "1.0 < 2.0", lambda: c.set(1.0))
    raises(InvalidParameterError, "nan", lambda: c.set(NAN))
    raises(InvalidParameterError, "inf", lambda: c.set(INF))
    raises(InvalidParameterError, "backwards", lambda: c.advance(-0.5))
    assert c.now() == 2.0


def test_scheduler_refuses_a_nan_clock() -> None:
    for policy in ("fcfs", "dpf-t"):
        s, L = _scheduler(policy, SettableClock(NAN))
        with pytest.raises(InvalidParameterError):
            s.add_block(Block("b0", EpsDelta(1.0)))
        assert L.n_blocks == 0


def test_manual_clock_refuses_nan_start() -> None:
    with pytest.raises(InvalidParameterError):
        ManualClock(NAN)


# ==========================================================================================================
# CLI
# ==========================================================================================================


def _write(path: Path, objs: list[Any]) -> Path:
    path.write_text("".join((o if isinstance(o, str) else json.dumps(o)) + "\n" for o in objs), encoding="utf-8")
    return path


@pytest.fixture()
def good_trace(tmp_path: Path) -> Path:
    return _write(
        tmp_path / "good.jsonl",
        [
            {"kind": "block", "id": "b0", "time": 0, "epsilon": 1.0},
            {"kind": "claim", "id": "c0", "time": 1, "blocks": ["b0"], "epsilon": 0.5},
        ],
    )


def _run(args: list[str]) -> Any:
    return CliRunner().invoke(main, args)


def _assert_cli_error(result: Any, fragment: str) -> None:
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert result.stdout == ""
    assert result.stderr.startswith("error: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert fragment in result.stderr


def test_cli_good_run_is_clean(good_trace: Path) -> None:
    result = _run(["simulate", "--trace", str(good_trace), "--policy", "dpf-n", "--param", "N=1", "--json"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["granted"] == 1


@pytest.mark.parametrize(
    ("extra", "fragment"),
    [
        (["--policy", "nope"], "unknown policy 'nope'"),
        (["--policy", "dpf-n", "--param", "N"], "KEY=VALUE, got 'N'"),
        (["--policy", "dpf-n", "--param", "=3"], "KEY=VALUE, got '=3'"),
        (["--policy", "dpf-n", "--param", " =3"], "KEY=VALUE"),
        (["--policy", "dpf-n", "--param", "N=2", "--param", "N=3"], "N given twice"),
        (["--policy", "dpf-n", "--param", "N=0"], "N must be a positive integer, got '0'"),
        (["--policy", "dpf-n", "--param", "N=-1"], "'-1'"),
        (["--policy", "dpf-n", "--param", "N=1.5"], "'1.5'"),
        (["--policy", "dpf-n", "--param", "N="], "''"),
        (["--policy", "dpf-t", "--param", "T=nan"], "'nan'"),
        (["--policy", "dpf-n", "--param", "tie_break=foo"], "'foo'"),
        (["--policy", "drf", "--param", "strict=maybe"], "'maybe'"),
        (["--policy", "dpf-n", "--param", "bogus=1"], "['bogus']"),
        (["--policy", "fcfs", "--param", "N=3"], "['N']"),
    ],
)
def test_cli_bad_policy_or_params(good_trace: Path, extra: list[str], fragment: str) -> None:
    _assert_cli_error(_run(["simulate", "--trace", str(good_trace), *extra]), fragment)


def test_cli_missing_trace(tmp_path: Path) -> None:
    missing = tmp_path / "missing.jsonl"
    _assert_cli_error(_run(["simulate", "--trace", str(missing), "--policy", "fcfs"]), "missing.jsonl")


@pytest.mark.parametrize(
    ("objs", "fragment"),
    [
        ([{"kind": "block", "id": "b0", "time": 0, "epsilon": 1.0}, "{oops"], "line 2: not valid JSON"),
        (["[1, 2, 3]"], "line 1: each line must be a JSON object"),
        ([{"kind": "header", "composition": "quantum"}], "line 1: composition"),
        (
            [
                {"kind": "block", "id": "b0", "time": 0, "epsilon": 1.0},
                {"kind": "claim", "id": "c0", "time": 1, "blocks": ["b0"], "epsilon": 0.5, "timout": 3},
            ],
            "line 2: ",
        ),
        (
            [
                {"kind": "block", "id": "b0", "time": 0, "epsilon": 1.0},
                {"kind": "claim", "id": "c0", "time": 1, "blocks": ["b7"], "epsilon": 0.5},
            ],
            "b7",
        ),
        (
            [
                {"kind": "block", "id": "b0", "time": 2, "epsilon": 1.0},
                {"kind": "block", "id": "b1", "time": 1, "epsilon": 1.0},
            ],
            "line 2: out of time order",
        ),
    ],
)
def test_cli_malformed_trace(tmp_path: Path, objs: list[Any], fragment: str) -> None:
    p = _write(tmp_path / "bad.jsonl", objs)
    _assert_cli_error(_run(["simulate", "--trace", str(p), "--policy", "dpf-n"]), fragment)


def test_cli_non_utf8_trace(tmp_path: Path) -> None:
    p = tmp_path / "latin1.jsonl"
    p.write_bytes(b'{"kind": "block", "id": "caf\xe9", "time": 0, "epsilon": 1}\n')
    _assert_cli_error(_run(["simulate", "--trace", str(p), "--policy", "fcfs"]), "UTF-8")


def test_cli_rr_on_a_renyi_trace(tmp_path: Path) -> None:
    p = _write(tmp_path / "renyi.jsonl", [{"kind": "header", "composition": "renyi"}])
    _assert_cli_error(_run(["simulate", "--trace", str(p), "--policy", "rr-n"]), "basic composition only")


def test_cli_nan_until(good_trace: Path) -> None:
    _assert_cli_error(_run(["simulate", "--trace", str(good_trace), "--policy", "fcfs", "--until", "nan"]), "nan")


def test_parse_params_direct() -> None:
    assert parse_params(["N=10", " strict = true "]) == {"N": "10", "strict": "true"}
    assert parse_params(["tick=a=b"]) == {"tick": "a=b"}
    raises(InvalidParameterError, "'N'", lambda: parse_params(["N"]))
    raises(InvalidParameterError, "'=3'", lambda: parse_params(["=3"]))
    raises(InvalidParameterError, "given twice", lambda: parse_params(["N=1", "N =2"]))
