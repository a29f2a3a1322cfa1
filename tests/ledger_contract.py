"""A reusable, backend-independent property contract for :class:`dpf_sched.ledger.base.Ledger`.

Every ledger backend (memory today, SQLite / PostgreSQL later) runs the very same contract by handing it a
*ledger factory* ``make_ledger(composition) -> Ledger``::

    from hypothesis.stateful import run_state_machine_as_test
    from ledger_contract import contract_machine  # tests/ is on sys.path under pytest

    Machine = contract_machine(lambda comp: SqliteLedger(comp, ":memory:"), BasicComposition)
    run_state_machine_as_test(Machine, settings=...)

The state machine drives random sequences of every ledger operation (add_block, unlock_to, add_claim, allocate,
reject, consume all / part, release, retire, renew and expire a lease), valid ones and bad ones. It keeps its own
*model* of the ledger (plain numpy rows per block and per claim, written from DESIGN.md and spec/dpf.md without
using the ledger's code) and checks:

* every operation either succeeds or raises a ``DpfSchedError`` subclass, and the model predicts which
  (a precise error class where the input has exactly one thing wrong with it);
* a failed operation changes nothing: the complete observable state (all bucket arrays, the unlocked
  fractions, the retired mask, every claim's state, times, reason, remaining and consumed rows) is bit-for-bit
  what it was before (invariant 5);
* after every step: ``violations() == []``; conservation L+U+A+C = capacity (invariant 1); no overspend
  (invariant 2); allocated / consumed / locked / fractions / claim states agree with the model; a claim's
  consumption never exceeds its demand (invariant 4);
* a successful ``allocate`` moves exactly the demand from U to A on every block of the claim and touches
  nothing else (invariant 3, all-or-nothing), and happens only when the model says the demand fits (with the
  documented tolerance ``1e-9 × capacity``); an ``InsufficientBudgetError`` happens only when it does not fit;
* consuming up to what ``claim(id).remaining`` reports always succeeds; a consumption beyond it is allowed by
  rounding only (at most ``1e-9 × capacity`` over the rest and over the whole grant, never leaving the
  block's guarantee), and ``release`` returns exactly the unconsumed rest to the unlocked pool (invariant 4).

Three probes can be switched off for a backend that is not there yet (each found a bug in MemoryLedger, since
fixed; the scenarios below are their minimal repros): ``probe_consume_within_tolerance`` (consumptions just
over what remains, twice), ``probe_forged_budgets`` (budget objects whose rows hold negative / NaN / infinite
numbers, built without the value classes' validation, as a buggy deserialiser could) and
``probe_unusable_orders`` (Rényi demands positive at orders of zero capacity, as a Gaussian curve on a
classic-converted capacity always is). With a probe off, the contract does not generate those inputs;
everything else is checked the same.

The module also holds deterministic scenarios (``SCENARIOS``) with the same factory signature.

Only the abstract :class:`Ledger` interface is used, except that the ``allocated`` array is read from the
ledger when it has one (``MemoryLedger`` does; the abstract interface does not declare it) and is otherwise
rebuilt from :meth:`Ledger.budgets`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.composition import MAX_CAPACITY, Composition, RenyiComposition
from dpf_sched.errors import (
    AlphaGridMismatchError,
    CompositionMismatchError,
    DpfSchedError,
    DuplicateIdError,
    InsufficientBudgetError,
    InvalidBudgetError,
    InvalidParameterError,
    InvalidStateError,
    LeaseExpiredError,
    OverConsumptionError,
    UnknownBlockError,
    UnknownClaimError,
)
from dpf_sched.ledger.base import ClaimState, Ledger

FloatArray = np.ndarray
LedgerFactory = Callable[[Composition], Ledger]
CompositionFactory = Callable[[], Composition]

#: The documented relative tolerance of budget comparisons (DESIGN.md, composition.py); restated on purpose.
REL_TOL = 1e-9
#: Relative slack for floating-point rounding of the model against the ledger (scaled by the budget "churn").
FP_REL = 1e-14

#: The α grid of the Rényi runs required by the brief.
CONTRACT_GRID = AlphaGrid((1.5, 2.0, 4.0, 8.0, 32.0))

BAD_TIMES = (math.nan, math.inf, -math.inf)

ErrorTypes = tuple[type[DpfSchedError], ...]


# ----- helpers independent of the ledger ----------------------------------------------------------------------
def renyi_composition() -> RenyiComposition:
    """The Rényi composition the contract runs under (classic conversion, ``CONTRACT_GRID``)."""
    return RenyiComposition(CONTRACT_GRID)


def forge_budget(comp: Composition, row: Any) -> Budget:
    """A budget object of the right type whose row holds ``row`` verbatim (negatives, NaN), skipping validation.

    Models a buggy caller or deserialiser: the ledger, not the value classes, is the last line of defence.
    """
    values = np.array(row, dtype=np.float64)
    if isinstance(comp, RenyiComposition):
        curve = object.__new__(RenyiCurve)
        object.__setattr__(curve, "grid", comp.grid)
        values.flags.writeable = False
        object.__setattr__(curve, "values", values)
        return curve
    pair = object.__new__(EpsDelta)
    object.__setattr__(pair, "epsilon", float(values[0]))
    object.__setattr__(pair, "delta", float(values[1]))
    return pair


def make_budget(comp: Composition, row: Any) -> Budget:
    """A validated budget value of the composition's kind from a row."""
    values = np.asarray(row, dtype=np.float64)
    if isinstance(comp, RenyiComposition):
        return RenyiCurve(comp.grid, values)
    return EpsDelta(float(values[0]), float(values[1]))


def wrong_kind_budget(comp: Composition) -> Budget:
    """A valid budget of the *other* composition."""
    if isinstance(comp, RenyiComposition):
        return EpsDelta(0.25, 0.0)
    return RenyiCurve(AlphaGrid((2.0, 4.0)), np.array([0.25, 0.25]))


def wrong_grid_budget(comp: RenyiComposition) -> RenyiCurve:
    """A valid Rényi curve of the right length on a different α grid."""
    grid = AlphaGrid(tuple(a + 0.25 for a in comp.grid.orders))
    return RenyiCurve(grid, np.full(len(grid), 0.25))


def allocated_array(ledger: Ledger) -> FloatArray:
    """The (n_blocks, width) allocated budget: ``ledger.allocated`` where the backend has it (the abstract
    interface does not declare it), else rebuilt from :meth:`Ledger.budgets`."""
    arr = getattr(ledger, "allocated", None)
    if arr is None:
        arr = [ledger.composition.row(ledger.budgets(b.id).allocated) for b in ledger.blocks()]
    return np.array(arr, dtype=np.float64).reshape(ledger.n_blocks, ledger.composition.width)


def ledger_arrays(ledger: Ledger) -> dict[str, FloatArray]:
    """The block-level observable state as plain arrays."""
    return {
        "capacity": np.array(ledger.capacity, dtype=np.float64),
        "locked": np.array(ledger.locked, dtype=np.float64),
        "unlocked": np.array(ledger.unlocked, dtype=np.float64),
        "allocated": allocated_array(ledger),
        "consumed": np.array(ledger.consumed, dtype=np.float64),
        "unlocked_fraction": np.array(ledger.unlocked_fraction, dtype=np.float64),
        "retired": np.array(ledger.retired_mask, dtype=bool),
        "created": np.array(ledger.created, dtype=np.float64),
    }


def claim_rows(ledger: Ledger, claim_id: str) -> tuple[ClaimState, FloatArray, FloatArray, Any]:
    """(state, remaining rows, consumed rows, the record) of one claim, rows in the claim's block order."""
    rec = ledger.claim(claim_id)
    row = ledger.composition.row
    remaining = np.array([row(rec.remaining[b]) for b in rec.claim.blocks], dtype=np.float64)
    consumed = np.array([row(rec.consumed[b]) for b in rec.claim.blocks], dtype=np.float64)
    return rec.state, remaining, consumed, rec


def snapshot(ledger: Ledger) -> dict[str, Any]:
    """Everything observable, as hashable, bit-exact values (floats compared by their bytes)."""
    snap: dict[str, Any] = {"n_blocks": ledger.n_blocks}
    snap["block_ids"] = tuple(b.id for b in ledger.blocks())
    for name, arr in ledger_arrays(ledger).items():
        snap[name] = (arr.shape, arr.tobytes())
    snap["claim_ids"] = tuple(ledger.claim_ids())
    for cid in snap["claim_ids"]:
        state, remaining, consumed, rec = claim_rows(ledger, cid)
        snap[f"claim {cid}"] = (
            state.value,
            rec.granted_at,
            rec.decided_at,
            rec.reason,
            remaining.tobytes(),
            consumed.tobytes(),
            rec.lease_deadline,
        )
    return snap


def snapshot_diff(before: Mapping[str, Any], after: Mapping[str, Any]) -> list[str]:
    """Names of the snapshot entries that differ."""
    keys = sorted(set(before) | set(after))
    return [k for k in keys if before.get(k) != after.get(k)]


# ----- the model --------------------------------------------------------------------------------------------
@dataclass
class ModelBlock:
    """The model of one block: capacity, cumulative unlocked fraction, allocated and consumed per column."""

    id: str
    cap: FloatArray
    created: float
    frac: float = 0.0
    allocated: FloatArray = field(default_factory=lambda: np.zeros(0))
    consumed: FloatArray = field(default_factory=lambda: np.zeros(0))
    churn: FloatArray = field(default_factory=lambda: np.zeros(0))  # Σ|amounts moved|, for rounding slack
    retired: bool = False

    def locked(self) -> FloatArray:
        if self.frac >= 1.0:
            return np.zeros_like(self.cap)
        return self.cap * (1.0 - self.frac)

    def unlocked(self) -> FloatArray:
        return self.cap - self.locked() - self.allocated - self.consumed

    def tol(self) -> FloatArray:
        return REL_TOL * self.cap

    def fp(self) -> FloatArray:
        return FP_REL * (self.churn + self.cap)

    def sat(self) -> FloatArray:
        """The most one claim books in this block's buckets per column (docs/ledger.md, "Saturation")."""
        return 2.0 * self.cap


@dataclass
class ModelClaim:
    """The model of one claim."""

    id: str
    blocks: tuple[str, ...]
    idx: list[int]
    demand: FloatArray
    state: ClaimState = ClaimState.WAITING
    remaining: FloatArray = field(default_factory=lambda: np.zeros(0))
    consumed: FloatArray = field(default_factory=lambda: np.zeros(0))
    reported: FloatArray = field(default_factory=lambda: np.zeros(0))  # Σ amounts asked, before clipping
    # What the blocks' buckets hold for the claim: remaining / consumed saturated at 2 × capacity per column.
    booked_remaining: FloatArray = field(default_factory=lambda: np.zeros(0))
    booked_consumed: FloatArray = field(default_factory=lambda: np.zeros(0))
    granted_at: float | None = None
    decided_at: float | None = None
    reason: str | None = None
    lease: float | None = None
    deadline: float | None = None  # the lease deadline once granted (renewals included)


@dataclass(frozen=True)
class Expect:
    """What an operation may do: succeed (``ok``) and / or raise one of ``errors``."""

    ok: bool
    errors: ErrorTypes = ()

    def __str__(self) -> str:
        names = [e.__name__ for e in self.errors]
        return " or ".join((["success"] if self.ok else []) + names) or "nothing"


OK = Expect(True)


def expect(faults: list[type[DpfSchedError]], *, maybe: ErrorTypes = ()) -> Expect:
    """Success iff there is no fault; ``maybe`` are errors also tolerated (borderline cases)."""
    if faults:
        return Expect(False, tuple(dict.fromkeys([*faults, *maybe])))
    return Expect(True, maybe)


def _combine(status: list[str]) -> str:
    """All must be 'yes' for 'yes'; any 'no' gives 'no'; otherwise 'borderline'."""
    if "no" in status:
        return "no"
    return "yes" if all(x == "yes" for x in status) else "borderline"


def _sampled(*weighted: tuple[str, int]) -> st.SearchStrategy[str]:
    """Weighted choice; the first option is what hypothesis shrinks towards."""
    return st.sampled_from([name for name, w in weighted for _ in range(w)])


#: Cumulative unlock fractions: round values first (hypothesis shrinks towards full unlocking), then any.
UNLOCK_FRACTIONS = st.one_of(
    st.sampled_from([1.0, 0.5, 0.25, 1.0 / 3.0, 0.75, 0.1, 0.0, 1.0 + 1e-12, 1.0 - 1e-12, 1.5, 2.0]),
    st.floats(0.0, 1.0),
    st.floats(1.0, 10.0),
)


# ----- the state machine -------------------------------------------------------------------------------------
class LedgerContract(RuleBasedStateMachine):
    """Random operation sequences against one ledger and an independent model; see the module docstring.

    Subclass through :func:`contract_machine` rather than directly.
    """

    make_ledger: ClassVar[LedgerFactory]
    make_composition: ClassVar[CompositionFactory]
    max_blocks: ClassVar[int] = 8
    probe_consume_within_tolerance: ClassVar[bool] = True
    probe_forged_budgets: ClassVar[bool] = True
    probe_unusable_orders: ClassVar[bool] = True

    def __init__(self) -> None:
        super().__init__()
        self.comp = type(self).make_composition()
        self.ledger = type(self).make_ledger(self.comp)
        self.renyi = isinstance(self.comp, RenyiComposition)
        self.width = self.comp.width
        self.blocks: list[ModelBlock] = []
        self.claims: dict[str, ModelClaim] = {}
        self.n_new_blocks = 0
        self.n_new_claims = 0
        self.steps = 0
        assert self.ledger.n_blocks == 0, "a fresh ledger must be empty"
        assert list(self.ledger.claim_ids()) == [], "a fresh ledger must be empty"

    # ----- running one operation ----------------------------------------------------------------------------
    def apply(self, what: str, op: Callable[[], Any], exp: Expect) -> tuple[bool, Any]:
        """Run ``op``; check success / error against ``exp`` and that a failure changed nothing."""
        self.steps += 1
        before = snapshot(self.ledger)
        try:
            result = op()
        except DpfSchedError as exc:
            diff = snapshot_diff(before, snapshot(self.ledger))
            assert not diff, f"{what} raised {type(exc).__name__} ({exc}) but changed {diff}"
            assert isinstance(exc, exp.errors), f"{what} raised {type(exc).__name__} ({exc}); expected {exp}"
            assert str(exc), f"{what} raised {type(exc).__name__} without a message"
            return False, exc
        assert exp.ok, f"{what} succeeded; expected {exp}"
        return True, result

    # ----- drawing values -------------------------------------------------------------------------------------
    def draw_now(self, data: st.DataObject) -> tuple[float, bool]:
        """A time; one in 40 is NaN or infinite (which every time-taking operation must refuse)."""
        k = data.draw(st.integers(0, 399), label="now (< 10: NaN / ±inf)")
        if k < 10:
            return BAD_TIMES[k % len(BAD_TIMES)], False
        return float(k) * 2.5, True

    def draw_capacity(self, data: st.DataObject) -> FloatArray | None:
        """A capacity row, or ``None`` when the drawn Rényi capacity is zero everywhere (checked, then skipped)."""
        if not self.renyi:
            eps = data.draw(st.floats(0.1, 10.0), label="capacity ε")
            delta = data.draw(st.one_of(st.just(0.0), st.floats(1e-8, 1e-5)), label="capacity δ")
            return np.array([eps, delta])
        assert isinstance(self.comp, RenyiComposition)
        mode = data.draw(_sampled(("from (ε, δ)", 2), ("random curve", 1)), label="capacity kind")
        if mode == "from (ε, δ)":
            eps = data.draw(st.floats(0.1, 10.0), label="ε_G")
            delta = data.draw(st.floats(1e-8, 1e-5), label="δ_G")
            curve = EpsDelta(eps, delta).to_renyi(self.comp.grid)
        else:
            values = data.draw(
                st.lists(
                    st.one_of(st.floats(0.01, 10.0), st.just(0.0)),
                    min_size=self.width,
                    max_size=self.width,
                ),
                label="capacity curve",
            )
            curve = RenyiCurve(self.comp.grid, np.array(values))
        row = np.array(curve.values, dtype=np.float64)
        if not np.any(row > 0):
            try:
                Block("zero", curve)
            except InvalidBudgetError:
                return None
            raise AssertionError("Block accepted a capacity that is zero at every order")
        return row

    def draw_demand(self, data: st.DataObject, b: ModelBlock) -> FloatArray:
        """A non-zero demand row for one block, sometimes larger than its capacity or right at the tolerance."""
        cap = b.cap
        if not self.renyi:
            mode = data.draw(
                _sampled(("fraction", 4), ("over capacity", 1), ("at the edge", 2), ("δ on pure block", 1)),
                label="demand kind",
            )
            if mode == "at the edge":
                t = data.draw(st.sampled_from([0.0, 0.5, 0.99, 1.01, 2.0]), label="tolerances over U")
                row = np.maximum(b.unlocked(), 0.0) + t * b.tol()
                if row[0] > 0:
                    return row
            u = data.draw(st.floats(0.001, 0.35), label="share of capacity")
            if mode == "over capacity":
                u = data.draw(st.floats(1.0, 3.0), label="share of capacity")
            eps = u * cap[0]
            delta = 0.0
            if mode == "δ on pure block" and cap[1] == 0:
                delta = 1e-7
            elif cap[1] > 0 and data.draw(st.booleans(), label="ask δ?"):
                delta = data.draw(st.floats(0.0, 0.5), label="share of δ") * cap[1]
            return np.array([eps, delta])
        row = self.draw_renyi_demand(data, b)
        if not self.probe_unusable_orders:
            row = np.where(cap > 0, row, 0.0)
            if not np.any(row > 0):
                row = cap * 0.1
        return row

    def draw_renyi_demand(self, data: st.DataObject, b: ModelBlock) -> FloatArray:
        cap = b.cap
        alphas = np.asarray(self.comp.grid.array)  # type: ignore[attr-defined]
        mode = data.draw(
            _sampled(("gaussian", 3), ("fraction", 2), ("random", 2), ("at the edge", 2), ("over capacity", 1)),
            label="demand kind",
        )
        usable = cap > 0
        if mode == "at the edge":
            t = data.draw(st.sampled_from([0.0, 0.5, 0.99, 1.01, 2.0]), label="tolerances over U")
            row = np.maximum(b.unlocked(), 0.0) + t * b.tol()
            if np.any(row > 0):
                return row
            mode = "fraction"
        if mode == "gaussian":
            # A Gaussian mechanism's curve α·ρ, scaled to a share of the best usable order.
            u = data.draw(st.floats(0.01, 0.5), label="share at best order")
            best = float(np.max(cap[usable] / alphas[usable]))
            return alphas * best * u
        if mode == "random":
            us = data.draw(st.lists(st.floats(0.0, 0.6), min_size=self.width, max_size=self.width), label="shares")
            row = np.array(us) * float(cap.max())
            if np.any(row > 0):
                return row
        lo, hi = (1.0, 3.0) if mode == "over capacity" else (0.001, 0.35)
        u = data.draw(st.floats(lo, hi), label="share of capacity")
        return cap * u

    def pick_claim(self, data: st.DataObject, prefer: ClaimState, *, fitting: bool = False) -> str:
        """A claim id: mostly one in ``prefer`` state (that the model says fits, if ``fitting``), sometimes any
        claim, sometimes an unknown id."""
        if not self.claims:
            return "no-such-claim"
        preferred = [c.id for c in self.claims.values() if c.state is prefer]
        if fitting:
            preferred = [cid for cid in preferred if self.fit_status(self.claims[cid]) == "yes"] or preferred
        choice = data.draw(_sampled(("preferred", 12), ("any", 3), ("unknown", 1)), label="which claim")
        if choice == "unknown":
            return "no-such-claim"
        if choice == "any" or not preferred:
            preferred = list(self.claims)
        return data.draw(st.sampled_from(preferred), label="claim")

    # ----- rules: blocks ---------------------------------------------------------------------------------------
    def op_add_block(self, data: st.DataObject, *, valid: bool = False) -> None:
        kinds = [("new", 6), ("duplicate id", 1), ("wrong kind", 1)]
        if self.probe_forged_budgets:
            kinds.append(("forged capacity", 1))
        if len(self.blocks) >= self.max_blocks:
            return
        mode = "new" if valid else data.draw(_sampled(*kinds), label="add_block")
        created = float(data.draw(st.integers(0, 10**6), label="created"))
        row = self.draw_capacity(data)
        if row is None:
            return
        block_id = f"b{self.n_new_blocks}"
        capacity: Budget = make_budget(self.comp, row)
        faults: list[type[DpfSchedError]] = []
        if mode == "duplicate id" and self.blocks:
            block_id = data.draw(st.sampled_from([b.id for b in self.blocks]), label="duplicate block id")
            faults.append(DuplicateIdError)
        elif mode == "wrong kind":
            capacity = wrong_kind_budget(self.comp)
            faults.append(CompositionMismatchError)
        elif mode == "forged capacity":
            bad = data.draw(st.sampled_from([-1e-3, math.nan, math.inf]), label="forged value")
            forged = row.copy()
            forged[data.draw(st.integers(0, self.width - 1), label="forged column")] = bad
            if not np.any(np.nan_to_num(forged, nan=0.0, posinf=0.0) > 0):
                return
            capacity = forge_budget(self.comp, forged)
            faults.append(InvalidBudgetError)
        block = Block(block_id, capacity, created=created)
        ok, index = self.apply(f"add_block({block_id})", lambda: self.ledger.add_block(block), expect(faults))
        if not ok:
            return
        assert index == len(self.blocks), f"add_block returned index {index}, expected {len(self.blocks)}"
        assert self.ledger.block_index(block_id) == index
        assert self.ledger.block(block_id) == block
        self.n_new_blocks += 1
        w = self.width
        self.blocks.append(
            ModelBlock(
                id=block_id,
                cap=row.copy(),
                created=created,
                allocated=np.zeros(w),
                consumed=np.zeros(w),
                churn=np.zeros(w),
            )
        )

    def op_unlock(self, data: st.DataObject, *, valid: bool = False) -> None:
        n = len(self.blocks)
        fraction = UNLOCK_FRACTIONS
        if valid:
            idx = list(range(n))
        else:
            idx = data.draw(
                st.lists(st.integers(0, max(n - 1, 0)), unique=True, min_size=min(n, 1), max_size=n),
                label="idx",
            )
        fracs: list[float] = data.draw(st.lists(fraction, min_size=len(idx), max_size=len(idx)), label="fractions")
        mode = (
            "plain"
            if valid
            else data.draw(
                _sampled(
                    ("plain", 8),
                    ("broadcast", 1),
                    ("index out of range", 1),
                    ("bad fraction", 1),
                    ("index twice", 1),
                    ("length mismatch", 1),
                ),
                label="unlock",
            )
        )
        faults: list[type[DpfSchedError]] = []
        maybe: ErrorTypes = ()
        applied = list(zip(idx, fracs, strict=True))
        if mode == "broadcast":
            f = data.draw(fraction, label="broadcast fraction")
            fracs = [f]
            applied = [(i, f) for i in idx]
        elif mode == "index out of range":
            idx.append(data.draw(st.sampled_from([n, n + 3, -1]), label="bad index"))
            fracs.append(0.5)
            faults.append(UnknownBlockError)
        elif mode == "bad fraction" and idx:
            k = data.draw(st.integers(0, len(idx) - 1), label="which fraction")
            fracs[k] = data.draw(st.sampled_from([-0.25, -1e-12, math.nan, math.inf]), label="bad fraction")
            faults.append(InvalidParameterError)
        elif mode == "index twice" and idx:
            idx.append(idx[0])
            fracs.append(0.5)
            faults.append(InvalidParameterError)
        elif mode == "length mismatch" and idx:
            fracs.append(0.5)
            faults.append(InvalidParameterError)
        if any(self.blocks[i].retired for i, _ in applied):
            maybe = (InvalidStateError,)  # a backend may refuse to unlock a retired block; memory allows it
        as_array = data.draw(st.booleans(), label="numpy arguments?")
        args: tuple[Any, Any] = (
            (np.array(idx, dtype=np.int64), np.array(fracs, dtype=np.float64)) if as_array else (idx, fracs)
        )
        before = ledger_arrays(self.ledger)
        ok, grew = self.apply(
            f"unlock_to({idx}, {fracs})", lambda: self.ledger.unlock_to(*args), expect(faults, maybe=maybe)
        )
        if not ok:
            return
        touched = {i for i, _ in applied}
        raised = {i for i, f in applied if min(f, 1.0) > self.blocks[i].frac}
        for i, f in applied:
            b = self.blocks[i]
            b.frac = max(b.frac, min(f, 1.0))
            b.churn = b.churn + b.cap
        after = ledger_arrays(self.ledger)
        self.check_untouched(before, after, touched, "unlock_to")
        for i in touched:
            for name in ("allocated", "consumed"):
                assert after[name][i].tobytes() == before[name][i].tobytes(), f"unlock_to changed {name}"
        # It returns the blocks whose unlocked budget grew (Ledger.unlock_to): at least every block whose
        # unlocked budget visibly grew, at most those whose fraction rose (a rise of 1e-308 moves no budget).
        returned = {int(i) for i in np.asarray(grew).reshape(-1)}
        really_grew = {i for i in touched if np.any(after["unlocked"][i] > before["unlocked"][i])}
        assert really_grew <= returned <= raised, f"unlock_to returned {returned}; grew {really_grew}, raised {raised}"

    def op_retire(self, data: st.DataObject) -> None:
        known = [b.id for b in self.blocks]
        unknown = not known or data.draw(st.integers(0, 9), label="unknown block?") == 0
        block_id = "no-such-block" if unknown else data.draw(st.sampled_from(known), label="block")
        faults: list[type[DpfSchedError]] = [UnknownBlockError] if unknown else []
        maybe: ErrorTypes = ()
        if not unknown and self.blocks[self.index_of(block_id)].retired:
            maybe = (InvalidStateError,)  # retiring twice: idempotent or refused, both are sound
        before = ledger_arrays(self.ledger)
        ok, _ = self.apply(f"retire({block_id})", lambda: self.ledger.retire(block_id), expect(faults, maybe=maybe))
        if ok:
            i = self.index_of(block_id)
            self.blocks[i].retired = True
            after = ledger_arrays(self.ledger)
            for name in ("capacity", "locked", "unlocked", "allocated", "consumed", "unlocked_fraction"):
                assert after[name].tobytes() == before[name].tobytes(), f"retire changed {name}"

    # ----- rules: claims -------------------------------------------------------------------------------------
    def op_add_claim(self, data: st.DataObject) -> None:
        n = len(self.blocks)
        if n == 0:
            self.op_add_block(data, valid=True)
            return
        chosen: list[int] = data.draw(
            st.lists(st.integers(0, n - 1), unique=True, min_size=1, max_size=min(3, n)), label="claim blocks"
        )
        demand_rows = {self.blocks[i].id: self.draw_demand(data, self.blocks[i]) for i in chosen}
        kinds = [("valid", 8), ("unknown block", 1), ("duplicate id", 1), ("wrong kind", 1)]
        if self.renyi:
            kinds.append(("wrong grid", 1))
        if self.probe_forged_budgets:
            kinds.append(("forged demand", 1))
        mode = data.draw(_sampled(*kinds), label="add_claim")
        claim_id = f"c{self.n_new_claims}"
        demand: dict[str, Budget] = {b: make_budget(self.comp, r) for b, r in demand_rows.items()}
        faults: list[type[DpfSchedError]] = []
        if any(self.blocks[i].retired for i in chosen):
            faults.append(InvalidStateError)
        if mode == "unknown block":
            demand["no-such-block"] = next(iter(demand.values()))
            faults.append(UnknownBlockError)
        elif mode == "duplicate id" and self.claims:
            claim_id = data.draw(st.sampled_from(list(self.claims)), label="duplicate claim id")
            faults.append(DuplicateIdError)
        elif mode == "wrong kind":
            other = wrong_kind_budget(self.comp)
            demand = dict.fromkeys(demand, other)
            faults.append(CompositionMismatchError)
        elif mode == "wrong grid":
            assert isinstance(self.comp, RenyiComposition)
            demand = dict.fromkeys(demand, wrong_grid_budget(self.comp))
            faults.append(AlphaGridMismatchError)
        elif mode == "forged demand":
            b = data.draw(st.sampled_from(list(demand)), label="forged block")
            forged = demand_rows[b].copy()
            col = data.draw(st.integers(0, self.width - 1), label="forged column")
            forged[col] = data.draw(st.sampled_from([-1e-3, -1.0, math.nan]), label="forged value")
            if np.all(np.nan_to_num(forged) == 0):
                return
            demand[b] = forge_budget(self.comp, forged)
            faults.append(InvalidBudgetError)
        lease = data.draw(st.sampled_from([None, 5.0, 50.0]), label="lease")
        claim = Claim(claim_id, demand, arrival=data.draw(st.floats(0.0, 1e6), label="arrival"), lease=lease)
        ok, result = self.apply(f"add_claim({claim_id})", lambda: self.ledger.add_claim(claim), expect(faults))
        if not ok:
            return
        idx = [self.index_of(b) for b in claim.blocks]
        rows = np.array([demand_rows[b] for b in claim.blocks])
        got_idx, got_rows = result
        assert [int(i) for i in np.asarray(got_idx)] == idx, f"add_claim returned indices {got_idx}, not {idx}"
        assert np.array_equal(np.asarray(got_rows, dtype=np.float64), rows), "add_claim returned other demands"
        self.n_new_claims += 1
        self.claims[claim_id] = ModelClaim(
            id=claim_id,
            blocks=claim.blocks,
            idx=idx,
            demand=rows,
            remaining=np.zeros_like(rows),
            consumed=np.zeros_like(rows),
            lease=lease,
            reported=np.zeros_like(rows),
        )

    def guarantee_status(self, b: ModelBlock, slack: FloatArray, fp: FloatArray) -> str:
        """'yes' / 'no' / 'borderline' for one block, given per-column slack ``available + tol − wanted``.

        Basic: every column must hold; Rényi: some usable order (capacity > 0) must (spec/dpf.md). A slack
        within ``± fp`` of 0 is too close to call from outside the ledger's rounding.
        """
        sure, sure_not = slack >= fp, slack < -fp
        if self.renyi:
            usable = b.cap > 0
            if np.any(sure & usable):
                return "yes"
            return "no" if np.all(sure_not | ~usable) else "borderline"
        if np.all(sure):
            return "yes"
        return "no" if np.any(sure_not) else "borderline"

    def fit_status(self, c: ModelClaim) -> str:
        """'yes' / 'no' / 'borderline': does the demand fit the model's unlocked budget (spec/dpf.md)?"""
        status = [
            self.guarantee_status(
                self.blocks[i],
                self.blocks[i].unlocked() + self.blocks[i].tol() - c.demand[k],
                self.blocks[i].fp() + FP_REL * np.abs(c.demand[k]),
            )
            for k, i in enumerate(c.idx)
        ]
        return _combine(status)

    def consume_status(self, c: ModelClaim, amt: FloatArray) -> str:
        """'yes' / 'no' / 'borderline': may a granted claim consume ``amt`` (rows per claim block)?

        The tolerance absorbs rounding only: at most ``tol`` over what remains and over the whole grant (the
        sum of the amounts asked, not per call). Within it the ledger books exactly the rest (clip, don't
        overshoot), so a consumption never takes a block outside its guarantee.
        """
        status = []
        for k, i in enumerate(c.idx):
            b = self.blocks[i]
            fp = b.fp() + FP_REL * (np.abs(amt[k]) + np.abs(c.demand[k]))
            for slack in (c.remaining[k] + b.tol() - amt[k], c.demand[k] + b.tol() - c.reported[k] - amt[k]):
                status.append("yes" if np.all(slack >= fp) else "no" if np.any(slack < -fp) else "borderline")
        return _combine(status)

    def op_allocate(self, data: st.DataObject) -> None:
        cid = self.pick_claim(data, ClaimState.WAITING, fitting=True)
        now, now_ok = self.draw_now(data)
        c = self.claims.get(cid)
        faults: list[type[DpfSchedError]] = []
        maybe: ErrorTypes = ()
        fit = "n/a"
        if c is None:
            faults.append(UnknownClaimError)
        else:
            if not now_ok:
                faults.append(InvalidParameterError)
            if c.state is not ClaimState.WAITING:
                faults.append(InvalidStateError)
            else:
                if any(self.blocks[i].retired for i in c.idx):
                    faults.append(InvalidStateError)
                fit = self.fit_status(c)
                if fit == "no":
                    faults.append(InsufficientBudgetError)
                elif fit == "borderline":
                    maybe = (InsufficientBudgetError,)
        before = ledger_arrays(self.ledger)
        ok, err = self.apply(
            f"allocate({cid}) [model fit: {fit}]",
            lambda: self.ledger.allocate(cid, now),
            expect(faults, maybe=maybe),
        )
        if isinstance(err, InsufficientBudgetError):
            assert fit != "yes", f"allocate({cid}) refused a demand that the model says fits"
        if not ok:
            return
        assert c is not None
        assert fit != "no", f"allocate({cid}) granted a demand that the model says does not fit"
        after = ledger_arrays(self.ledger)
        self.check_untouched(before, after, set(c.idx), "allocate")
        # Invariant 3: exactly the demand, on every block of the claim, moved U → A (clipped to what is unlocked
        # where the demand is over it by no more than the tolerance: never past the capacity), saturated at
        # 2 × capacity per column (docs/ledger.md, "Saturation").
        grants, booked = [], []
        for k, i in enumerate(c.idx):
            b = self.blocks[i]
            u = b.unlocked()
            clip = (c.demand[k] > u) & (u >= 0) & (c.demand[k] <= u + b.tol())
            grant = np.where(clip, np.maximum(u, 0.0), c.demand[k])
            book = np.minimum(grant, b.sat())
            slack = b.tol() + b.fp() + FP_REL * np.abs(book)
            spent_before = before["allocated"][i] + before["consumed"][i]
            spent_after = after["allocated"][i] + after["consumed"][i]
            assert np.all(np.abs(spent_after - spent_before - book) <= slack), (
                f"allocate({cid}) moved {spent_after - spent_before} on block {b.id}, booked demand {book}"
            )
            assert np.all(np.abs(before["unlocked"][i] - after["unlocked"][i] - book) <= slack)
            assert after["locked"][i].tobytes() == before["locked"][i].tobytes(), "allocate changed locked"
            assert after["consumed"][i].tobytes() == before["consumed"][i].tobytes(), "allocate changed consumed"
            grants.append(grant)
            booked.append(book)
            b.allocated = b.allocated + book
            b.churn = b.churn + book
        c.state = ClaimState.GRANTED
        c.remaining = np.array(grants)
        c.booked_remaining = np.array(booked)
        c.booked_consumed = np.zeros_like(c.booked_remaining)
        c.granted_at = c.decided_at = now
        if c.lease is not None:
            c.deadline = now + c.lease

    def op_reject(self, data: st.DataObject) -> None:
        cid = self.pick_claim(data, ClaimState.WAITING)
        now, now_ok = self.draw_now(data)
        reason = data.draw(st.sampled_from(["timeout", "does not fit", ""]), label="reason")
        c = self.claims.get(cid)
        faults: list[type[DpfSchedError]] = []
        if c is None:
            faults.append(UnknownClaimError)
        else:
            if not now_ok:
                faults.append(InvalidParameterError)
            if c.state is not ClaimState.WAITING:
                faults.append(InvalidStateError)
        before = ledger_arrays(self.ledger)
        ok, _ = self.apply(f"reject({cid})", lambda: self.ledger.reject(cid, now, reason), expect(faults))
        if ok:
            assert c is not None
            self.check_untouched(before, ledger_arrays(self.ledger), set(), "reject")
            c.state = ClaimState.REJECTED
            c.decided_at = now
            c.reason = reason

    def op_consume(self, data: st.DataObject) -> None:
        cid = self.pick_claim(data, ClaimState.GRANTED)
        now, now_ok = self.draw_now(data)
        c = self.claims.get(cid)
        kinds = [
            ("all (None)", 3),
            ("part", 5),
            ("exactly the rest", 2),
            ("more than remains", 2),
            ("foreign block", 1),
            ("empty mapping", 1),
            ("wrong kind", 1),
        ]
        if self.probe_consume_within_tolerance:
            kinds.append(("over by less than the tolerance", 3))
        if self.probe_forged_budgets:
            kinds.append(("negative / NaN (forged)", 1))
        mode = data.draw(_sampled(*kinds), label="consume")
        faults: list[type[DpfSchedError]] = []
        maybe: ErrorTypes = ()
        if c is None:
            faults.append(UnknownClaimError)
            rest = np.zeros((1, self.width))
            blocks: tuple[str, ...] = ("b0",)
            caps = np.ones((1, self.width))
        else:
            # What the ledger reports as the rest of the grant: consuming up to that must always succeed.
            rest = claim_rows(self.ledger, cid)[1]
            blocks = c.blocks
            caps = np.array([self.blocks[i].cap for i in c.idx])
            if not now_ok:
                faults.append(InvalidParameterError)
            if c.state is not ClaimState.GRANTED:
                faults.append(InvalidStateError)
        if mode == "all (None)":
            self.run_consume(cid, mode, None, c.remaining.copy() if c is not None else rest, now, expect(faults))
            return
        subset: list[int] = data.draw(
            st.lists(st.integers(0, len(blocks) - 1), unique=True, min_size=1, max_size=len(blocks)),
            label="blocks consumed",
        )
        amt = np.zeros_like(rest)
        for k in subset:
            if mode == "part":
                us = data.draw(
                    st.lists(st.floats(0.0, 1.0), min_size=self.width, max_size=self.width), label="share of rest"
                )
                amt[k] = rest[k] * np.array(us)
            else:
                amt[k] = rest[k]
        k0 = subset[0]
        col = data.draw(st.integers(0, self.width - 1), label="column")
        t = data.draw(st.floats(0.6, 0.9), label="tolerances over") if mode.startswith("over by less") else 0.0
        if mode == "more than remains":
            amt[k0, col] = rest[k0, col] * 1.5 + 1e-6 * caps[k0, col] + 1e-12
        elif mode == "over by less than the tolerance":
            # The documented rounding slack (≤ 1e-9·capacity over the rest) on every column of every named block.
            for k in subset:
                amt[k] = rest[k] + t * REL_TOL * caps[k]
        amounts: dict[str, Budget] = {blocks[k]: make_budget(self.comp, amt[k]) for k in subset}
        if mode == "foreign block":
            foreign = [b.id for b in self.blocks if b.id not in blocks] + ["no-such-block"]
            amounts[data.draw(st.sampled_from(foreign), label="foreign block")] = make_budget(self.comp, amt[k0])
            faults.append(UnknownBlockError)
        elif mode == "empty mapping":
            amounts = {}
            faults.append(InvalidParameterError)
        elif mode == "wrong kind":
            amounts[blocks[k0]] = wrong_kind_budget(self.comp)
            faults.append(CompositionMismatchError)
        elif mode == "negative / NaN (forged)":
            forged = amt[k0].copy()
            forged[col] = data.draw(st.sampled_from([-1e-3, -0.5, math.nan]), label="forged value")
            amounts[blocks[k0]] = forge_budget(self.comp, forged)
            faults.append(InvalidBudgetError)
            maybe = (InvalidParameterError,)
        elif c is not None and c.state is ClaimState.GRANTED and mode not in ("part", "exactly the rest"):
            verdict = self.consume_status(c, amt)
            if verdict == "no":
                faults.append(OverConsumptionError)
            elif verdict == "borderline":
                maybe = (OverConsumptionError,)
        ok = self.run_consume(cid, mode, amounts, amt, now, expect(faults, maybe=maybe))
        if ok and mode == "over by less than the tolerance" and c is not None and c.state is ClaimState.GRANTED:
            # Once more, now that the rest is 0: within the slack of this call, but not of the whole grant.
            again = np.zeros_like(amt)
            for k in subset:
                again[k] = t * REL_TOL * caps[k]
            verdict = self.consume_status(c, again)
            exp = expect(
                [OverConsumptionError] if verdict == "no" else [],
                maybe=(OverConsumptionError,) if verdict == "borderline" else (),
            )
            amounts = {blocks[k]: make_budget(self.comp, again[k]) for k in subset}
            self.run_consume(cid, f"{mode}, again", amounts, again, now, exp)

    def run_consume(
        self, cid: str, mode: str, amounts: dict[str, Budget] | None, amt: FloatArray, now: float, exp: Expect
    ) -> bool:
        """Consume ``amounts`` (``amt`` per claim block in the model); check the effect and update the model."""
        before = ledger_arrays(self.ledger)
        ok, _ = self.apply(f"consume({cid}, {mode})", lambda: self.ledger.consume(cid, amounts, now), exp)
        if not ok:
            return False
        c = self.claims[cid]
        after = ledger_arrays(self.ledger)
        self.check_untouched(before, after, set(c.idx), "consume")
        for k, i in enumerate(c.idx):
            b = self.blocks[i]
            booked = np.minimum(amt[k], c.remaining[k])  # clip, don't overshoot
            # The blocks move the claim's consumption saturated at 2 × capacity (docs/ledger.md, "Saturation"),
            # all of what it booked once nothing of the grant remains.
            rest = c.remaining[k] - booked
            target = np.minimum(np.minimum(c.consumed[k] + booked, c.demand[k]), b.sat())
            move = np.clip(target - c.booked_consumed[k], 0.0, c.booked_remaining[k])
            move = np.where(rest <= 0, c.booked_remaining[k], move)
            asked = np.minimum(amt[k], b.sat())
            slack = b.tol() + b.fp() + FP_REL * np.abs(asked)
            moved = after["consumed"][i] - before["consumed"][i]
            assert np.all(np.abs(moved - move) <= slack), f"consume moved {moved} on {b.id}, expected {move}"
            assert np.all(moved <= np.maximum(before["allocated"][i], 0.0) + b.fp()), "consume booked beyond the grant"
            assert after["locked"][i].tobytes() == before["locked"][i].tobytes(), "consume changed locked"
            assert after["unlocked"][i].tobytes() == before["unlocked"][i].tobytes(), "consume changed unlocked"
            b.allocated = b.allocated - move
            b.consumed = b.consumed + move
            b.churn = b.churn + np.abs(asked)
            c.booked_remaining[k] = c.booked_remaining[k] - move
            c.booked_consumed[k] = c.booked_consumed[k] + move
            c.remaining[k] = rest
            c.consumed[k] = c.consumed[k] + booked
            c.reported[k] = c.reported[k] + amt[k]
        if amounts is None:
            c.state = ClaimState.FINISHED
        return True

    def op_release(self, data: st.DataObject) -> None:
        cid = self.pick_claim(data, ClaimState.GRANTED)
        now, now_ok = self.draw_now(data)
        c = self.claims.get(cid)
        faults: list[type[DpfSchedError]] = []
        if c is None:
            faults.append(UnknownClaimError)
        else:
            if not now_ok:
                faults.append(InvalidParameterError)
            if c.state is not ClaimState.GRANTED:
                faults.append(InvalidStateError)
        before = ledger_arrays(self.ledger)
        ok, _ = self.apply(f"release({cid})", lambda: self.ledger.release(cid, now), expect(faults))
        if not ok:
            return
        assert c is not None
        after = ledger_arrays(self.ledger)
        self.check_untouched(before, after, set(c.idx), "release")
        # Invariant 4: the unconsumed rest goes back to the unlocked pool, exactly.
        for k, i in enumerate(c.idx):
            b = self.blocks[i]
            slack = b.tol() + b.fp() + FP_REL * np.abs(c.booked_remaining[k])
            back = after["unlocked"][i] - before["unlocked"][i]
            assert np.all(np.abs(back - c.booked_remaining[k]) <= slack), (
                f"release returned {back} to block {b.id}, the booked rest of the grant was {c.booked_remaining[k]}"
            )
            assert after["consumed"][i].tobytes() == before["consumed"][i].tobytes(), "release changed consumed"
            assert after["locked"][i].tobytes() == before["locked"][i].tobytes(), "release changed locked"
            b.allocated = b.allocated - c.booked_remaining[k]
            b.churn = b.churn + np.abs(c.booked_remaining[k])
        c.remaining = np.zeros_like(c.remaining)
        c.booked_remaining = np.zeros_like(c.booked_remaining)
        c.state = ClaimState.FINISHED

    def _lease_faults(self, c: ModelClaim | None, now_ok: bool) -> list[type[DpfSchedError]]:
        if c is None:
            return [UnknownClaimError]
        faults: list[type[DpfSchedError]] = [] if now_ok else [InvalidParameterError]
        if c.state is ClaimState.EXPIRED:
            faults.append(LeaseExpiredError)
        elif c.state is not ClaimState.GRANTED:
            faults.append(InvalidStateError)
        return faults

    def op_renew(self, data: st.DataObject) -> None:
        """A renewal moves the deadline to max(deadline, now + lease) (``inf`` without a lease) and no budget."""
        cid = self.pick_claim(data, ClaimState.GRANTED)
        now, now_ok = self.draw_now(data)
        c = self.claims.get(cid)
        before = ledger_arrays(self.ledger)
        exp = expect(self._lease_faults(c, now_ok))
        ok, got = self.apply(f"renew({cid})", lambda: self.ledger.renew(cid, now), exp)
        if not ok:
            return
        assert c is not None
        self.check_untouched(before, ledger_arrays(self.ledger), set(), "renew")
        if c.lease is None:
            assert got == math.inf, f"renew({cid}) without a lease returned {got}"
            return
        assert c.deadline is not None
        c.deadline = max(c.deadline, now + c.lease)
        assert got == c.deadline, f"renew({cid}) returned {got}, model says {c.deadline}"

    def op_expire(self, data: st.DataObject) -> None:
        """Expiry: only a granted claim with a lease whose deadline is ≤ now; the rest goes back to unlocked."""
        leased = [c.id for c in self.claims.values() if c.state is ClaimState.GRANTED and c.deadline is not None]
        if leased and data.draw(st.integers(0, 3), label="a granted claim with a lease (0: any)") > 0:
            cid = data.draw(st.sampled_from(leased), label="leased claim")
        else:
            cid = self.pick_claim(data, ClaimState.GRANTED)
        c = self.claims.get(cid)
        if c is not None and c.deadline is not None and data.draw(st.integers(0, 3), label="around the deadline"):
            now = c.deadline + data.draw(st.sampled_from([0.0, -1.0, 2.5]), label="now - deadline")
            now_ok = True
        else:
            now, now_ok = self.draw_now(data)
        faults = self._lease_faults(c, now_ok)
        if c is not None and not faults and (c.lease is None or c.deadline is None or now < c.deadline):
            faults.append(InvalidStateError)
        before = ledger_arrays(self.ledger)
        ok, _ = self.apply(f"expire({cid})", lambda: self.ledger.expire(cid, now), expect(faults))
        if not ok:
            return
        assert c is not None
        after = ledger_arrays(self.ledger)
        self.check_untouched(before, after, set(c.idx), "expire")
        # As a release: the unconsumed rest goes back to the unlocked pool, exactly; consumed stays.
        for k, i in enumerate(c.idx):
            b = self.blocks[i]
            slack = b.tol() + b.fp() + FP_REL * np.abs(c.booked_remaining[k])
            back = after["unlocked"][i] - before["unlocked"][i]
            assert np.all(np.abs(back - c.booked_remaining[k]) <= slack), (
                f"expire returned {back} to block {b.id}, the booked rest of the grant was {c.booked_remaining[k]}"
            )
            assert after["consumed"][i].tobytes() == before["consumed"][i].tobytes(), "expire changed consumed"
            assert after["locked"][i].tobytes() == before["locked"][i].tobytes(), "expire changed locked"
            b.allocated = b.allocated - c.booked_remaining[k]
            b.churn = b.churn + np.abs(c.booked_remaining[k])
        c.remaining = np.zeros_like(c.remaining)
        c.booked_remaining = np.zeros_like(c.booked_remaining)
        c.state = ClaimState.EXPIRED
        c.reason = "lease expired"

    def op_unknown_lookups(self, data: st.DataObject) -> None:
        """Read-only queries on unknown ids raise the typed lookup errors and change nothing."""
        name = data.draw(st.sampled_from(["no-such-block", "", "b999"]), label="unknown id")
        checks: list[tuple[str, Callable[[], Any], type[DpfSchedError]]] = [
            ("block_index", lambda: self.ledger.block_index(name), UnknownBlockError),
            ("block", lambda: self.ledger.block(name), UnknownBlockError),
            ("budgets", lambda: self.ledger.budgets(name), UnknownBlockError),
            ("state", lambda: self.ledger.state(name), UnknownClaimError),
            ("claim", lambda: self.ledger.claim(name), UnknownClaimError),
        ]
        for what, op, err in checks:
            ok, _ = self.apply(f"{what}({name!r})", op, Expect(False, (err,)))
            assert not ok

    # ----- the driver -------------------------------------------------------------------------------------------
    @initialize(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """Start from one to three valid blocks, each unlocked to some fraction."""
        for _ in range(data.draw(st.integers(1, 3), label="initial blocks")):
            self.op_add_block(data, valid=True)
        if self.blocks:
            self.op_unlock(data, valid=True)

    @rule(data=st.data())
    def step(self, data: st.DataObject) -> None:
        """One operation, chosen with weights that keep claims flowing (retire and lookups are rare)."""
        states = {c.state for c in self.claims.values()}
        waiting, granted = ClaimState.WAITING in states, ClaimState.GRANTED in states
        op = data.draw(
            _sampled(
                ("add_claim", 12),
                ("allocate", 14 if waiting else 1),
                ("consume", 16 if granted else 1),
                ("unlock", 6),
                ("release", 6 if granted else 1),
                ("add_block", 3),
                ("reject", 2 if waiting else 1),
                ("retire", 1),
                ("renew", 3 if granted else 1),
                ("expire", 3 if granted else 1),
                ("unknown_lookups", 1),
            ),
            label="operation",
        )
        getattr(self, f"op_{op}")(data)

    # ----- checks after every step ------------------------------------------------------------------------------
    def index_of(self, block_id: str) -> int:
        for i, b in enumerate(self.blocks):
            if b.id == block_id:
                return i
        raise AssertionError(f"model has no block {block_id}")

    def check_untouched(
        self, before: Mapping[str, FloatArray], after: Mapping[str, FloatArray], touched: set[int], what: str
    ) -> None:
        """Blocks an operation does not name keep every bucket bit-for-bit."""
        for name in before:
            for i in range(len(self.blocks)):
                if i not in touched:
                    assert before[name][i].tobytes() == after[name][i].tobytes(), (
                        f"{what} changed {name} of block {self.blocks[i].id}, which it does not touch"
                    )

    @invariant()
    def ledger_matches_model_and_invariants(self) -> None:
        led = self.ledger
        violations = led.violations()
        assert violations == [], f"violations(): {[str(v) for v in violations]}"
        n = len(self.blocks)
        assert led.n_blocks == n
        assert [b.id for b in led.blocks()] == [b.id for b in self.blocks]
        assert list(led.claim_ids()) == list(self.claims)
        if n == 0:
            return
        arr = ledger_arrays(led)
        cap = np.array([b.cap for b in self.blocks])
        tol = REL_TOL * cap
        fp = np.array([b.fp() for b in self.blocks])
        assert arr["capacity"].tobytes() == cap.tobytes(), "capacity changed"
        assert np.array_equal(arr["retired"], [b.retired for b in self.blocks]), "retired mask"
        assert np.array_equal(arr["created"], [b.created for b in self.blocks]), "creation times"
        fracs = np.array([b.frac for b in self.blocks])
        assert np.array_equal(arr["unlocked_fraction"], fracs), f"fractions {arr['unlocked_fraction']} ≠ {fracs}"
        L, U, A, C = arr["locked"], arr["unlocked"], arr["allocated"], arr["consumed"]
        # Invariant 1: conservation, and no negative locked / allocated / consumed.
        assert np.all(np.abs(L + U + A + C - cap) <= tol + fp), f"L+U+A+C - cap = {L + U + A + C - cap}"
        for name, bucket in (("locked", L), ("allocated", A), ("consumed", C)):
            assert np.all(bucket >= -(tol + fp)), f"{name} is negative: {bucket}"
        # Invariant 2: no overspend, not even within the tolerance (clip, don't overshoot): only float rounding of
        # the sums (fp, ~1e-14 relative) separates A + C from the capacity.
        spent = A + C
        fits = spent <= cap + fp
        ok_rows = np.any(fits & (cap > 0), axis=1) if self.renyi else np.all(fits, axis=1)
        assert np.all(ok_rows), f"overspend on blocks {np.flatnonzero(~ok_rows)}: A+C={spent}, cap={cap}"
        # The model: buckets.
        mL = np.array([b.locked() for b in self.blocks])
        mA = np.array([b.allocated for b in self.blocks])
        mC = np.array([b.consumed for b in self.blocks])
        assert np.all(np.abs(L - mL) <= tol + fp), f"locked {L} ≠ model {mL}"
        assert np.all(np.abs(A - mA) <= tol + fp), f"allocated {A} ≠ model {mA}"
        assert np.all(np.abs(C - mC) <= tol + fp), f"consumed {C} ≠ model {mC}"
        # budgets() agrees with the arrays (values clip tiny negatives at 0).
        row = self.comp.row
        for i in {self.steps % n, n - 1}:  # one block per step, in rotation, to keep steps cheap
            b = self.blocks[i]
            bb = led.budgets(b.id)
            assert bb.retired == b.retired and bb.unlocked_fraction == b.frac
            assert row(bb.capacity).tobytes() == b.cap.tobytes()
            for name in ("locked", "unlocked", "allocated", "consumed"):
                got = row(getattr(bb, name))
                want = np.maximum(arr[name][i], 0.0)
                assert np.all(np.abs(got - want) <= tol[i] + fp[i]), f"budgets({b.id}).{name}"
        # The model: claims.
        for cid, c in self.claims.items():
            state, remaining, consumed, rec = claim_rows(led, cid)
            assert state is c.state, f"claim {cid} is {state}, model says {c.state}"
            assert led.state(cid) is c.state
            assert rec.granted_at == c.granted_at and rec.decided_at == c.decided_at and rec.reason == c.reason
            assert rec.lease_deadline == c.deadline, f"claim {cid} lease deadline {rec.lease_deadline} ≠ {c.deadline}"
            ctol = np.array([self.blocks[i].tol() + self.blocks[i].fp() for i in c.idx])
            assert np.all(np.abs(remaining - np.maximum(c.remaining, 0.0)) <= ctol), f"claim {cid} remaining"
            assert np.all(np.abs(consumed - np.maximum(c.consumed, 0.0)) <= ctol), f"claim {cid} consumed"
            # Invariant 4: never consume more than the grant, not even within the tolerance (clip).
            assert np.all(consumed <= c.demand), f"claim {cid} consumed {consumed} > demand {c.demand}"
            if not c.state.was_granted:
                assert not remaining.any() and not consumed.any(), f"claim {cid} holds budget without a grant"


def contract_machine(
    make_ledger: LedgerFactory,
    make_composition: CompositionFactory,
    *,
    name: str | None = None,
    max_blocks: int = 8,
    probe_consume_within_tolerance: bool = True,
    probe_forged_budgets: bool = True,
    probe_unusable_orders: bool = True,
) -> type[LedgerContract]:
    """A concrete :class:`LedgerContract` for one backend and one composition."""
    attrs: dict[str, Any] = {
        "make_ledger": staticmethod(make_ledger),
        "make_composition": staticmethod(make_composition),
        "max_blocks": max_blocks,
        "probe_consume_within_tolerance": probe_consume_within_tolerance,
        "probe_forged_budgets": probe_forged_budgets,
        "probe_unusable_orders": probe_unusable_orders,
    }
    return type(name or "LedgerContractMachine", (LedgerContract,), attrs)


# ----- deterministic scenarios (same factory signature) ---------------------------------------------------------
def _one_block(make_ledger: LedgerFactory, comp: Composition, cap: Any) -> Ledger:
    ledger = make_ledger(comp)
    ledger.add_block(Block("b", make_budget(comp, cap)))
    ledger.unlock_to([0], [1.0])
    return ledger


def _cap_row(comp: Composition) -> FloatArray:
    if isinstance(comp, RenyiComposition):
        return np.array(EpsDelta(10.0, 1e-6).to_renyi(comp.grid).values)
    return np.array([1.0, 1e-6])


def scenario_fractional_unlocks_admit_fair_shares(make_ledger: LedgerFactory, comp: Composition) -> None:
    """N cumulative unlocks of k/N each admit one claim of exactly G/N (the tolerance absorbs rounding)."""
    cap = _cap_row(comp)
    for n in (3, 7, 10, 49):
        ledger = make_ledger(comp)
        ledger.add_block(Block("b", make_budget(comp, cap)))
        for k in range(1, n + 1):
            ledger.unlock_to([0], [k / n])
            cid = f"c{k}"
            ledger.add_claim(Claim(cid, {"b": make_budget(comp, cap / n)}))
            ledger.allocate(cid, float(k))
        assert ledger.violations() == []
        extra = Claim("extra", {"b": make_budget(comp, cap * 1e-6)})
        ledger.add_claim(extra)
        try:
            ledger.allocate("extra", 0.0)
        except InsufficientBudgetError:
            pass
        else:
            raise AssertionError(f"n={n}: a claim beyond the fully granted capacity was admitted")


def scenario_tolerance_boundary(make_ledger: LedgerFactory, comp: Composition) -> None:
    """A demand within ``1e-9 × capacity`` over the unlocked budget fits; beyond it, it is refused."""
    cap = _cap_row(comp)
    for t, fits in ((0.0, True), (0.5, True), (0.99, True), (1.01, False), (2.0, False)):
        ledger = _one_block(make_ledger, comp, cap)
        ledger.add_claim(Claim("c", {"b": make_budget(comp, cap * (1.0 + t * REL_TOL))}))
        try:
            ledger.allocate("c", 0.0)
            granted = True
        except InsufficientBudgetError:
            granted = False
        assert granted == fits, f"demand cap·(1 + {t}·tol): granted={granted}, expected {fits}"
        assert ledger.violations() == []


def scenario_repeated_within_tolerance_consumption(make_ledger: LedgerFactory, comp: Composition) -> None:
    """Consuming a little over the rest of a grant, again and again, must not spend more than the grant."""
    cap = _cap_row(comp)
    ledger = _one_block(make_ledger, comp, cap)
    demand = cap * 0.5
    ledger.add_claim(Claim("c", {"b": make_budget(comp, demand)}))
    ledger.allocate("c", 0.0)
    ledger.consume("c", {"b": make_budget(comp, demand)})
    for _ in range(5):
        with contextlib.suppress(OverConsumptionError):
            ledger.consume("c", {"b": make_budget(comp, cap * 0.9 * REL_TOL)})
    consumed = ledger.composition.row(ledger.claim("c").consumed["b"])
    assert np.all(consumed <= demand + cap * REL_TOL), f"consumed {consumed}, granted {demand}"
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]


def scenario_tolerance_stacking_overspend(make_ledger: LedgerFactory, comp: Composition) -> None:
    """A grant admitted at the tolerance, then consumed with the tolerance again, must not overspend."""
    cap = _cap_row(comp)
    ledger = _one_block(make_ledger, comp, cap)
    ledger.add_claim(Claim("c", {"b": make_budget(comp, cap * (1.0 + 0.9 * REL_TOL))}))
    ledger.allocate("c", 0.0)
    with contextlib.suppress(OverConsumptionError):
        ledger.consume("c", {"b": make_budget(comp, cap * (1.0 + 1.8 * REL_TOL))})
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]
    spent = np.asarray(ledger.consumed)[0] + allocated_array(ledger)[0]
    assert np.all(spent <= cap), f"spent {spent} of capacity {cap}"  # not even within the tolerance


def scenario_clip_within_tolerance(make_ledger: LedgerFactory, comp: Composition) -> None:
    """Stored values never exceed the capacity or the grant, even within the tolerance (issue 14 finding 10).

    The finding: capacity 1.0, grant 1.0, consume 1.000000001 was accepted and the block's consumed was above its
    capacity. Within the tolerance the ledger books exactly what is there (clip); beyond it, it refuses; and the
    slack is once per grant, not once per call.
    """
    cap = _cap_row(comp)
    over = cap * (1.0 + 0.999 * REL_TOL)
    if not isinstance(comp, RenyiComposition):
        cap, over = np.array([1.0, 1e-6]), np.array([1.000000001, 1e-6])  # the finding's exact numbers
    # A consumption over the grant by less than the tolerance: booked as exactly the grant.
    ledger = _one_block(make_ledger, comp, cap)
    ledger.add_claim(Claim("c", {"b": make_budget(comp, cap)}))
    ledger.allocate("c", 0.0)
    ledger.consume("c", {"b": make_budget(comp, over)})
    consumed = np.asarray(ledger.consumed)[0]
    assert np.array_equal(consumed, cap), f"consumed {consumed.tolist()} ≠ capacity {cap.tolist()}"
    assert np.array_equal(ledger.composition.row(ledger.claim("c").consumed["b"]), cap)
    assert not allocated_array(ledger)[0].any() and np.array_equal(np.asarray(ledger.unlocked)[0], 0 * cap)
    # Once more, now that nothing remains: the tolerance was used up by the first call.
    before = snapshot(ledger)
    try:
        ledger.consume("c", {"b": make_budget(comp, cap * 0.5 * REL_TOL)})
    except OverConsumptionError:
        pass
    else:
        raise AssertionError("a second consumption within the tolerance was accepted after the grant was spent")
    assert not snapshot_diff(before, snapshot(ledger))
    # A demand over the unlocked budget by less than the tolerance: granted exactly what is unlocked.
    ledger = _one_block(make_ledger, comp, cap)
    ledger.add_claim(Claim("d", {"b": make_budget(comp, over)}))
    ledger.allocate("d", 0.0)
    allocated = allocated_array(ledger)[0]
    assert np.array_equal(allocated, cap), f"allocated {allocated.tolist()} ≠ capacity {cap.tolist()}"
    assert np.all(np.asarray(ledger.unlocked)[0] >= 0.0)
    ledger.consume("d", {"b": make_budget(comp, over)})  # the whole demand, as the claim believes it has it
    assert np.array_equal(np.asarray(ledger.consumed)[0], cap)
    # Beyond the tolerance: refused, nothing changes.
    ledger = _one_block(make_ledger, comp, cap)
    ledger.add_claim(Claim("e", {"b": make_budget(comp, cap)}))
    ledger.allocate("e", 0.0)
    before = snapshot(ledger)
    try:
        ledger.consume("e", {"b": make_budget(comp, cap * (1.0 + 2.0 * REL_TOL))})
    except OverConsumptionError:
        pass
    else:
        raise AssertionError("a consumption beyond the tolerance was accepted")
    assert not snapshot_diff(before, snapshot(ledger))
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]


def scenario_released_grants_on_unusable_orders(make_ledger: LedgerFactory, comp: Composition) -> None:
    """Grants that are positive at orders of zero capacity, granted then released, leave a sound ledger.

    Rényi only (a basic demand cannot be granted on a column of zero capacity). Allocation subtracts the
    demand at every order (spec/dpf.md), so U and A move at the unusable orders too and carry rounding residue.
    """
    if not isinstance(comp, RenyiComposition):
        return
    cap = np.array(EpsDelta(5.0, 1e-6).to_renyi(comp.grid).values)
    assert cap[0] == 0.0 and cap[-1] > 0.0
    ledger = _one_block(make_ledger, comp, cap)
    for cid, x in (("c0", 0.1), ("c1", 0.2)):
        demand = np.where(cap > 0, 0.01, x)
        ledger.add_claim(Claim(cid, {"b": make_budget(comp, demand)}))
        ledger.allocate(cid, 0.0)
    ledger.release("c0")
    ledger.release("c1")
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]


def _partly_consumed(make_ledger: LedgerFactory, comp: Composition) -> Ledger:
    """One claim granted, then partly consumed with a split where ``c + fl(d − c) > d`` by one ulp (on the
    Rényi orders of zero capacity, where the tolerance ``1e-9 × capacity`` is 0)."""
    d, part = 0.4325543497782562, 0.07340193916505053
    assert part + (d - part) > d
    if isinstance(comp, RenyiComposition):
        cap = np.array(EpsDelta(5.0, 1e-6).to_renyi(comp.grid).values)
        assert cap[0] == 0.0
        demand, first = np.where(cap > 0, 0.01, d), np.where(cap > 0, 0.001, part)
    else:
        cap = np.array([1.0, 1e-6])
        demand, first = np.array([d, 1e-7]), np.array([part, 1e-8])
    ledger = _one_block(make_ledger, comp, cap)
    ledger.add_claim(Claim("c", {"b": make_budget(comp, demand)}))
    ledger.allocate("c", 0.0)
    ledger.consume("c", {"b": make_budget(comp, first)})
    return ledger


def scenario_consume_exact_rest_after_partial(make_ledger: LedgerFactory, comp: Composition) -> None:
    """After a partial consumption, consuming exactly the rest the ledger reports succeeds."""
    ledger = _partly_consumed(make_ledger, comp)
    ledger.consume("c", {"b": ledger.claim("c").remaining["b"]})
    assert ledger.state("c") is ClaimState.GRANTED
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]


def scenario_consume_all_after_partial(make_ledger: LedgerFactory, comp: Composition) -> None:
    """After a partial consumption, consuming all the rest (``None``) leaves a ledger without violations."""
    ledger = _partly_consumed(make_ledger, comp)
    ledger.consume("c")
    assert ledger.state("c") is ClaimState.FINISHED
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]


def _expect_refusal(what: str, op: Callable[[], Any], ledger: Ledger) -> None:
    before = snapshot(ledger)
    try:
        op()
    except (InvalidBudgetError, InvalidParameterError):
        assert not snapshot_diff(before, snapshot(ledger)), f"{what} failed but changed the ledger"
        return
    raise AssertionError(f"{what} was accepted; violations now: {[str(v) for v in ledger.violations()]}")


def scenario_forged_negative_consumption(make_ledger: LedgerFactory, comp: Composition) -> None:
    """A consumption whose row is negative is refused (it would move budget back from consumed)."""
    cap = _cap_row(comp)
    ledger = _one_block(make_ledger, comp, cap)
    ledger.add_claim(Claim("c", {"b": make_budget(comp, cap * 0.5)}))
    ledger.allocate("c", 0.0)
    _expect_refusal("consume(-0.3·cap)", lambda: ledger.consume("c", {"b": forge_budget(comp, -0.3 * cap)}), ledger)


def scenario_forged_nan_consumption(make_ledger: LedgerFactory, comp: Composition) -> None:
    """A consumption with a NaN in its row is refused."""
    cap = _cap_row(comp)
    ledger = _one_block(make_ledger, comp, cap)
    ledger.add_claim(Claim("c", {"b": make_budget(comp, cap * 0.5)}))
    ledger.allocate("c", 0.0)
    row = cap * 0.1
    row[-1] = math.nan
    _expect_refusal("consume(NaN)", lambda: ledger.consume("c", {"b": forge_budget(comp, row)}), ledger)


def scenario_forged_negative_demand(make_ledger: LedgerFactory, comp: Composition) -> None:
    """A claim whose demand row is negative is refused (granting it would mint budget)."""
    cap = _cap_row(comp)
    ledger = _one_block(make_ledger, comp, cap)
    claim = Claim("c", {"b": forge_budget(comp, -0.5 * cap)})
    _expect_refusal("add_claim(negative demand)", lambda: ledger.add_claim(claim), ledger)


def scenario_forged_bad_capacity(make_ledger: LedgerFactory, comp: Composition) -> None:
    """A block capacity with a negative or NaN column is refused."""
    for bad in (-1e-3, math.nan):
        ledger = make_ledger(comp)
        row = _cap_row(comp).copy()
        row[-1] = bad
        block = Block("b", forge_budget(comp, row))
        _expect_refusal(f"add_block(capacity column {bad})", lambda b=block, led=ledger: led.add_block(b), ledger)


# ----- leases (the expire operation and renewals) ---------------------------------------------------------------
def _leased(make_ledger: LedgerFactory, comp: Composition) -> tuple[Ledger, FloatArray, FloatArray]:
    """One fully unlocked block; claim ``c`` (lease 10) granted at t=1 and consumed in part at t=2."""
    cap = _cap_row(comp)
    ledger = _one_block(make_ledger, comp, cap)
    demand, part = cap * 0.6, cap * 0.25
    ledger.add_claim(Claim("c", {"b": make_budget(comp, demand)}, lease=10.0))
    ledger.allocate("c", 1.0)
    assert ledger.lease_deadline("c") == 11.0 and ledger.claim("c").lease_deadline == 11.0
    ledger.consume("c", {"b": make_budget(comp, part)}, 2.0)
    return ledger, cap, part


def _refused(what: str, op: Callable[[], Any], ledger: Ledger, error: type[DpfSchedError]) -> None:
    before = snapshot(ledger)
    try:
        op()
    except error:
        assert not snapshot_diff(before, snapshot(ledger)), f"{what} failed but changed the ledger"
        return
    raise AssertionError(f"{what} did not raise {error.__name__}")


def scenario_lease_expiry_returns_remainder(make_ledger: LedgerFactory, comp: Composition) -> None:
    """A lapsed lease expires the claim: the unconsumed rest goes back to unlocked, the consumed part stays, the
    claim is EXPIRED, every later use is a typed error, and the returned budget can be granted again."""
    ledger, cap, part = _leased(make_ledger, comp)
    _refused("expire before the deadline", lambda: ledger.expire("c", 10.5), ledger, InvalidStateError)
    assert ledger.state("c") is ClaimState.GRANTED
    ledger.expire("c", 11.0)
    assert ledger.state("c") is ClaimState.EXPIRED and ledger.state("c").was_granted
    rec = ledger.claim("c")
    assert rec.lease_deadline == 11.0 and rec.reason == "lease expired"
    np.testing.assert_allclose(ledger.composition.row(rec.remaining["b"]), 0.0)
    np.testing.assert_allclose(ledger.composition.row(rec.consumed["b"]), part)
    np.testing.assert_allclose(allocated_array(ledger)[0], 0.0, atol=1e-15)
    np.testing.assert_allclose(ledger.unlocked[0], cap - part, rtol=1e-12)
    np.testing.assert_allclose(ledger.consumed[0], part, rtol=1e-12)
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]
    small = make_budget(comp, part * 0.1)
    for what, op in (
        ("consume", lambda: ledger.consume("c", {"b": small}, 12.0)),
        ("consume all", lambda: ledger.consume("c", None, 12.0)),
        ("release", lambda: ledger.release("c", 12.0)),
        ("renew", lambda: ledger.renew("c", 12.0)),
        ("expire again", lambda: ledger.expire("c", 12.0)),
    ):
        _refused(f"{what} after expiry", op, ledger, LeaseExpiredError)
    # Everything not consumed is free again: a claim for exactly that is granted.
    ledger.add_claim(Claim("next", {"b": make_budget(comp, cap - part)}))
    ledger.allocate("next", 12.0)
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]


def scenario_lease_renewals_keep_claim(make_ledger: LedgerFactory, comp: Composition) -> None:
    """Each renewal moves the deadline to now + lease (never earlier): a renewed claim never expires, and ends
    normally; a claim without a lease, a waiting one or a finished one cannot be expired."""
    ledger, _cap, part = _leased(make_ledger, comp)
    t = 2.0
    for _ in range(20):
        t += 7.0
        assert ledger.renew("c", t) == t + 10.0
        _refused("expire of a renewed claim", lambda t=t: ledger.expire("c", t + 9.0), ledger, InvalidStateError)
    assert ledger.renew("c", t - 5.0) == t + 10.0  # a lagging clock does not shorten the lease
    assert ledger.lease_deadline("c") == t + 10.0 and ledger.claim("c").lease_deadline == t + 10.0
    ledger.release("c", t + 1.0)
    assert ledger.state("c") is ClaimState.FINISHED
    _refused("expire of a finished claim", lambda: ledger.expire("c", t + 100.0), ledger, InvalidStateError)
    _refused("renew of a finished claim", lambda: ledger.renew("c", t + 2.0), ledger, InvalidStateError)
    ledger.add_claim(Claim("plain", {"b": make_budget(comp, part)}))
    _refused("renew of a waiting claim", lambda: ledger.renew("plain", t + 2.0), ledger, InvalidStateError)
    assert ledger.lease_deadline("plain") is None
    ledger.allocate("plain", t + 2.0)
    assert ledger.renew("plain", t + 3.0) == math.inf and ledger.lease_deadline("plain") is None
    _refused("expire without a lease", lambda: ledger.expire("plain", 1e9), ledger, InvalidStateError)
    _refused("expire of an unknown claim", lambda: ledger.expire("nobody", 1e9), ledger, UnknownClaimError)
    _refused("renew of an unknown claim", lambda: ledger.renew("nobody", 1e9), ledger, UnknownClaimError)
    for bad in BAD_TIMES:
        _refused(f"renew at {bad}", lambda bad=bad: ledger.renew("plain", bad), ledger, InvalidParameterError)
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]
def scenario_capacity_limit(make_ledger: LedgerFactory, comp: Composition) -> None:
    """Capacities up to ``MAX_CAPACITY`` are audited correctly; above it (1e308: sums overflow) they are refused.

    Issue 14 finding 5: two blocks of ε = 1e308 (or a Rényi block of 1e308 at every order) made the audit report
    a non-finite unlocked budget on a sound ledger.
    """

    def row(x: float) -> FloatArray:
        r = np.full(comp.width, x)
        if not isinstance(comp, RenyiComposition):
            r[1] = 1e-6 * min(x / MAX_CAPACITY, 1.0)  # δ stays below 1
        return r

    ledger = make_ledger(comp)
    for k in range(3):
        ledger.add_block(Block(f"b{k}", make_budget(comp, row(MAX_CAPACITY))))
    ledger.unlock_to([0, 1, 2], [1.0, 1.0, 0.5])
    ledger.add_claim(Claim("c", {f"b{k}": make_budget(comp, row(MAX_CAPACITY / 2)) for k in range(3)}))
    ledger.allocate("c", 0.0)
    ledger.consume("c", {"b0": make_budget(comp, row(MAX_CAPACITY / 4))})
    ledger.add_claim(Claim("d", {"b1": make_budget(comp, row(MAX_CAPACITY / 2))}))
    ledger.allocate("d", 0.0)
    ledger.release("d")
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]
    for bad in (float(np.nextafter(MAX_CAPACITY, math.inf)), 1e308):
        big = row(1.0)
        big[0] = bad
        block = Block("big", make_budget(comp, big))
        before = snapshot(ledger)
        try:
            ledger.add_block(block)
        except InvalidBudgetError as e:
            assert "above the maximum" in str(e)
        else:
            raise AssertionError(f"a capacity of {bad!r} was accepted")
        assert not snapshot_diff(before, snapshot(ledger))


def scenario_huge_renyi_demand_creates_no_budget(make_ledger: LedgerFactory, comp: Composition) -> None:
    """Defect D1 (docs/reliability.md), pinned witness: a Rényi demand of 1e17 at an order of capacity 24 (the
    claim fits at another order), granted then released, must give back exactly what it took.

    Booking the full demand made ``24 − 1e17 + 1e17`` round to 32: 8 units of budget created at α = 2, and a
    claim demanding (30, 5, 5), over the capacity at every order, was then granted. Rényi only.
    """
    if not isinstance(comp, RenyiComposition):
        return
    rcomp = RenyiComposition(AlphaGrid((2.0, 4.0, 8.0)))
    cap = np.array([24.0, 1.0, 1.0])
    ledger = _one_block(make_ledger, rcomp, cap)
    ledger.add_claim(Claim("c", {"b": make_budget(rcomp, [1e17, 0.1, 0.1])}))
    ledger.allocate("c", 0.0)
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]
    ledger.release("c")
    np.testing.assert_array_equal(ledger.unlocked[0], cap)
    np.testing.assert_array_equal(allocated_array(ledger)[0], 0.0)
    ledger.add_claim(Claim("over", {"b": make_budget(rcomp, [30.0, 5.0, 5.0])}))
    _refused("allocate (30, 5, 5) on a block of capacity (24, 1, 1)", lambda: ledger.allocate("over", 1.0), ledger,
             InsufficientBudgetError)
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]


def scenario_huge_renyi_demands_leave_allocated_nonnegative(make_ledger: LedgerFactory, comp: Composition) -> None:
    """Defect D1's second face, pinned witness: two claims demanding ≈ 1e6 at an order of capacity 1 (they fit at
    α = 8), granted and released, leave that order's allocated budget at exactly 0 (it was −1.16e-10: the
    rounding of ``(a + b) − a − b``), never negative (DESIGN.md, invariant 7). Rényi only.
    """
    if not isinstance(comp, RenyiComposition):
        return
    rcomp = RenyiComposition(AlphaGrid((2.0, 4.0, 8.0)))
    cap = np.array([1.0, 1.0, 24.0])
    ledger = _one_block(make_ledger, rcomp, cap)
    for cid, x in (("c1", 1675697.883552159), ("c2", 954969.0891183912)):
        ledger.add_claim(Claim(cid, {"b": make_budget(rcomp, [x, 5.0, 1.0])}))
        ledger.allocate(cid, 0.0)
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]
    ledger.release("c1")
    ledger.release("c2")
    allocated = allocated_array(ledger)[0]
    assert (allocated >= 0).all(), allocated.tolist()
    np.testing.assert_array_equal(allocated, 0.0)
    np.testing.assert_array_equal(ledger.unlocked[0], cap)
    assert ledger.violations() == [], [str(v) for v in ledger.violations()]


def scenario_forged_delta_at_least_one(make_ledger: LedgerFactory, comp: Composition) -> None:
    """Defect D2 (docs/reliability.md): a forged (ε, δ) with δ ≥ 1, as a capacity, a demand or a consumption, is
    refused with InvalidBudgetError and changes nothing. Basic composition only."""
    if isinstance(comp, RenyiComposition):
        return
    for delta in (1.0, 5.0, 1e6):
        ledger = make_ledger(comp)
        block = Block("b", forge_budget(comp, [1.0, delta]))
        _refused(f"add_block(δ = {delta})", lambda b=block, led=ledger: led.add_block(b), ledger, InvalidBudgetError)
        ledger = _one_block(make_ledger, comp, _cap_row(comp))
        claim = Claim("c", {"b": forge_budget(comp, [0.1, delta])})
        _refused(f"add_claim(δ = {delta})", lambda c=claim, led=ledger: led.add_claim(c), ledger, InvalidBudgetError)
        ledger.add_claim(Claim("ok", {"b": make_budget(comp, [0.5, 5e-7])}))
        ledger.allocate("ok", 0.0)
        amount = {"b": forge_budget(comp, [0.1, delta])}
        _refused(f"consume(δ = {delta})", lambda a=amount, led=ledger: led.consume("ok", a), ledger, InvalidBudgetError)
        assert ledger.violations() == [], [str(v) for v in ledger.violations()]


SCENARIOS: dict[str, Callable[[LedgerFactory, Composition], None]] = {
    "capacity_limit": scenario_capacity_limit,
    "clip_within_tolerance": scenario_clip_within_tolerance,
    "fractional_unlocks_admit_fair_shares": scenario_fractional_unlocks_admit_fair_shares,
    "tolerance_boundary": scenario_tolerance_boundary,
    "repeated_within_tolerance_consumption": scenario_repeated_within_tolerance_consumption,
    "tolerance_stacking_overspend": scenario_tolerance_stacking_overspend,
    "forged_negative_consumption": scenario_forged_negative_consumption,
    "forged_nan_consumption": scenario_forged_nan_consumption,
    "forged_negative_demand": scenario_forged_negative_demand,
    "forged_bad_capacity": scenario_forged_bad_capacity,
    "released_grants_on_unusable_orders": scenario_released_grants_on_unusable_orders,
    "consume_exact_rest_after_partial": scenario_consume_exact_rest_after_partial,
    "consume_all_after_partial": scenario_consume_all_after_partial,
    "lease_expiry_returns_remainder": scenario_lease_expiry_returns_remainder,
    "lease_renewals_keep_claim": scenario_lease_renewals_keep_claim,
    "huge_renyi_demand_creates_no_budget": scenario_huge_renyi_demand_creates_no_budget,
    "huge_renyi_demands_leave_allocated_nonnegative": scenario_huge_renyi_demands_leave_allocated_nonnegative,
    "forged_delta_at_least_one": scenario_forged_delta_at_least_one,
}

__all__ = [
    "CONTRACT_GRID",
    "SCENARIOS",
    "LedgerContract",
    "contract_machine",
    "forge_budget",
    "renyi_composition",
    "snapshot",
]
