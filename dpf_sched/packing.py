"""The packing optimum: the largest total weight of claims that fit together in the available budget (a MILP).

Every claim ``i`` asks a demand row ``d_{i,b}`` (one column per dimension) on each block ``b`` of its set, all
or nothing; a set S of claims *fits* when, on every block b, the summed demand ``Σ_{i∈S} d_{i,b}`` fits in the
block's available budget ``c_b`` in the composition's sense (:meth:`Composition.fits`, with its tolerance):

* **basic** composition — every column: a plain multidimensional knapsack;
* **Rényi** composition — *some* usable order α of each block (spec/dpf.md, "Can a claim run now?"), the order
  chosen per block. This is the knapsack of DPack (Tholoniat et al., EuroSys 2025, §3, "privacy knapsack"),
  written as a mixed-integer linear programme with one binary ``y_{b,α}`` per (block, order)::

      maximise    Σ_i w_i x_i
      subject to  Σ_α y_{b,α} ≥ 1                                                 for every constrained block b
                  Σ_i d_{i,b,α} x_i ≤ c_{b,α} + M_{b,α} (1 − y_{b,α})              for every (b, α) kept
                  x_i, y_{b,α} ∈ {0, 1},     M_{b,α} = max(0, Σ_i d_{i,b,α} − c_{b,α})

  where ``c_{b,α}`` is the available budget plus the composition's tolerance. ``y_{b,α} = 1`` says "order α must
  hold on block b"; with ``y_{b,α} = 0`` the row is implied by the definition of ``M`` (it is the standard
  big-M disjunction, e.g. Wolsey, *Integer Programming*, 2nd ed., §1.5).

Reductions, each exact:

* a claim that does not fit alone (some block where no order fits its demand) is in no feasible set: fixed out;
* an order whose available budget is ≤ 0 can hold no positive demand: it gets no ``y`` (claims with a positive
  demand at every other order of a block were already fixed out, so this only loses the degenerate case of a
  set of claims all asking exactly 0 at that order, which the greedy completion below still finds);
* a block on which some order holds the demand of *all* its claims constrains nothing: no row, no ``y``;
* an order dominated by another (every claim's demand, relative to the available budget, is at least as large)
  is dropped: any set that fits at it fits at the other;
* a block left with one order needs no ``y`` (the row is a plain knapsack row);
* the claim–block bipartite graph is cut into connected components (networkx), solved one by one.

Rows are scaled by ``c_{b,α}`` (so every right-hand side is 1) for the solver's sake. The solver is HiGHS through
:func:`scipy.optimize.milp`, with a relative gap tolerance ``gap`` (default 0: prove the optimum) and a wall-clock
``time_limit`` for the whole call (components are solved smallest first, each with the time left). A component
that runs out of time keeps the solver's incumbent (or, without one, the greedy solution) and reports the
solver's dual bound: the result then says ``proven=False`` — it is never called optimal.

**Validation.** The solver works to feasibility tolerances of about 1e-6 on the scaled rows, looser than the
ledger's 1e-9 relative tolerance, so its answer is re-checked with the composition's own ``fits`` on the summed
demands of every block (exactly the check the ledger's allocations amount to: a set whose sums fit can be
granted claim by claim, in any order). On a block that fails, the chosen claim of least weight (ties: largest
demand) is dropped and the check repeated; a warning is logged and the component is no longer ``proven``.
Finally every remaining claim that still fits is added greedily (weight first), so the chosen set is maximal:
no left-out claim fits in what remains (zero-weight claims included), which makes the online policy Pareto
efficient.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import networkx as nx
import numpy as np
from numpy.typing import NDArray
from scipy.optimize import Bounds, LinearConstraint, milp
from scipy.sparse import coo_array

from dpf_sched.composition import REL_TOL, Composition, RenyiComposition
from dpf_sched.errors import InvalidParameterError

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Default wall-clock limit of one :func:`solve_packing` call, in seconds.
DEFAULT_TIME_LIMIT = 60.0

#: MILP formulations of the Rényi "some order per block" disjunction (:func:`solve_packing`).
FORMULATIONS = ("bigm", "hull")

#: A claim's demand: its block indices and one demand row per block (shape ``(len(blocks), width)``).
ClaimDemand = tuple[IntArray, FloatArray]


class PackingStatus(StrEnum):
    """How a component (or the whole problem) was solved."""

    OPTIMAL = "optimal"  #: proven optimal (within the requested relative gap)
    TIME_LIMIT = "time_limit"  #: stopped by the time limit; the objective is an incumbent, the bound is proven
    REPAIRED = "repaired"  #: the solver's optimum overspent within its tolerance and lost claims in validation
    FAILED = "failed"  #: the solver failed; the objective is the greedy solution's, the bound trivial


@dataclass(frozen=True)
class ComponentResult:
    """The solve of one connected component of the claim–block graph.

    Attributes
    ----------
    claims
        Indices (in the caller's claim list) of the component's candidate claims (those that fit alone).
    blocks
        Indices of the blocks they ask for.
    chosen
        The claims kept, after validation and greedy completion.
    objective
        Total weight of ``chosen``.
    bound
        A proven upper bound on the component's optimum (≥ ``objective``).
    status
        :class:`PackingStatus` of the solve.
    method
        ``"trivial"`` (nothing to decide: every candidate fits together), ``"milp"`` or ``"greedy"`` (no
        solver incumbent).
    n_variables, n_rows
        Size of the MILP (0 when none was solved).
    repaired
        Claims the validation dropped from the solver's answer (0 normally).
    seconds
        Wall-clock time of this component.
    """

    claims: tuple[int, ...]
    blocks: tuple[int, ...]
    chosen: tuple[int, ...]
    objective: float
    bound: float
    status: PackingStatus
    method: str
    n_variables: int
    n_rows: int
    repaired: int
    seconds: float

    @property
    def proven(self) -> bool:
        """Whether ``objective`` is proven optimal (the solver said so and validation changed nothing)."""
        return self.status is PackingStatus.OPTIMAL

    @property
    def gap(self) -> float:
        """Relative gap ``(bound − objective) / bound`` (0 when the bound is 0)."""
        return _gap(self.objective, self.bound)


@dataclass(frozen=True)
class PackingResult:
    """The answer of :func:`solve_packing`.

    Attributes
    ----------
    chosen
        Indices of the chosen claims, ascending; they fit together (validated with the composition's ``fits``).
    objective
        Their total weight (the incumbent).
    bound
        A proven upper bound on the optimum: the sum of the components' bounds.
    components
        One :class:`ComponentResult` per connected component with at least one candidate claim.
    fixed_out
        Claims that cannot fit alone, left out before solving.
    seconds
        Wall-clock time of the whole call.
    """

    chosen: tuple[int, ...]
    objective: float
    bound: float
    components: tuple[ComponentResult, ...]
    fixed_out: tuple[int, ...]
    seconds: float

    @property
    def proven(self) -> bool:
        """Whether the objective is proven optimal: every component is."""
        return all(c.proven for c in self.components)

    @property
    def status(self) -> PackingStatus:
        """``optimal`` when every component is proven; else the worst component status."""
        for worst in (PackingStatus.FAILED, PackingStatus.TIME_LIMIT, PackingStatus.REPAIRED):
            if any(c.status is worst for c in self.components):
                return worst
        return PackingStatus.OPTIMAL

    @property
    def gap(self) -> float:
        """Relative gap ``(bound − objective) / bound`` over the whole problem."""
        return _gap(self.objective, self.bound)


def _gap(objective: float, bound: float) -> float:
    if bound <= 0 or not math.isfinite(bound):
        return 0.0 if bound <= 0 else math.inf
    return max(0.0, (bound - objective) / bound)


# ----- input checks -------------------------------------------------------------------------------------------


def _check_time_limit(value: object) -> float:
    if isinstance(value, bool):
        raise InvalidParameterError(f"time_limit must be a positive number of seconds, got {value!r}")
    try:
        t = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidParameterError(f"time_limit must be a positive number of seconds, got {value!r}") from None
    if not (math.isfinite(t) and t > 0):
        raise InvalidParameterError(f"time_limit must be a positive finite number of seconds, got {value!r}")
    return t


def _check_gap(value: object) -> float:
    if isinstance(value, bool):
        raise InvalidParameterError(f"gap must be a number in [0, 1), got {value!r}")
    try:
        g = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise InvalidParameterError(f"gap must be a number in [0, 1), got {value!r}") from None
    if not (math.isfinite(g) and 0.0 <= g < 1.0):
        raise InvalidParameterError(f"gap must be a number in [0, 1), got {value!r}")
    return g


def _as_claims(demands: Sequence[ClaimDemand], n_blocks: int, width: int) -> tuple[list[IntArray], list[FloatArray]]:
    idxs: list[IntArray] = []
    rows: list[FloatArray] = []
    for k, (idx, dem) in enumerate(demands):
        i = np.asarray(idx, dtype=np.int64).reshape(-1)
        d = np.asarray(dem, dtype=np.float64).reshape(i.shape[0], width) if i.size else np.zeros((0, width))
        if i.size == 0:
            raise InvalidParameterError(f"claim {k} asks for no block")
        if i.min() < 0 or i.max() >= n_blocks:
            raise InvalidParameterError(f"claim {k} asks for a block outside 0..{n_blocks - 1}")
        if np.unique(i).size != i.size:
            raise InvalidParameterError(f"claim {k} names a block twice")
        if not np.all(np.isfinite(d)) or np.any(d < 0):
            raise InvalidParameterError(f"claim {k} has a negative or non-finite demand")
        idxs.append(i)
        rows.append(d)
    return idxs, rows


# ----- the solver ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Model:
    """One component's MILP for :func:`scipy.optimize.milp`: minimise ``c·v`` s.t. ``lb ≤ a v ≤ ub``, v ∈ [0, 1],
    the first ``n_x`` variables being the claims' x."""

    c: FloatArray
    a: coo_array
    lb: FloatArray
    ub: FloatArray
    integrality: FloatArray
    n_x: int


class _Packer:
    """One call of :func:`solve_packing`: the instance, the feasibility check and the per-component solves."""

    def __init__(
        self,
        idxs: list[IntArray],
        rows: list[FloatArray],
        weights: FloatArray,
        available: FloatArray,
        capacity: FloatArray,
        comp: Composition,
        formulation: str = "bigm",
    ) -> None:
        self.formulation = formulation
        self.tight_m = True
        self.idxs = idxs
        self.rows = rows
        self.w = weights
        self.avail = available
        self.cap = capacity
        self.comp = comp
        self.renyi = isinstance(comp, RenyiComposition) or comp.name == "renyi"
        # What the MILP may fill: the available budget plus the composition's tolerance (as in ``fits``).
        self.room = available + capacity * REL_TOL

    # -- feasibility, exactly as the ledger checks it --
    def sums(self, chosen: Sequence[int]) -> FloatArray:
        """Summed demand of ``chosen`` per block, shape (n_blocks, width)."""
        out = np.zeros_like(self.cap)
        for i in chosen:
            out[self.idxs[i]] += self.rows[i]
        return out

    def block_ok(self, total: FloatArray, blocks: IntArray) -> NDArray[np.bool_]:
        """Per block of ``blocks``: does the summed demand ``total[blocks]`` fit?"""
        return self.comp.fits(total[blocks], self.avail[blocks], self.cap[blocks])

    def fits_alone(self, i: int) -> bool:
        b = self.idxs[i]
        return bool(self.comp.fits(self.rows[i], self.avail[b], self.cap[b]).all())

    # -- the greedy completion (also the fallback incumbent) --
    def complete(self, chosen: list[int], candidates: Sequence[int]) -> list[int]:
        """Add every candidate that still fits, heaviest first (ties: smallest dominant share, then index)."""
        total = self.sums(chosen)
        have = set(chosen)
        rest = [i for i in candidates if i not in have]
        share = {i: float(self.comp.shares(self.rows[i], self.cap[self.idxs[i]]).max()) for i in rest}
        for i in sorted(rest, key=lambda i: (-self.w[i], share[i], i)):
            b = self.idxs[i]
            trial = total[b] + self.rows[i]
            if bool(self.comp.fits(trial, self.avail[b], self.cap[b]).all()):
                total[b] = trial
                chosen.append(i)
        return chosen

    def repair(self, chosen: list[int]) -> tuple[list[int], int]:
        """Drop the least valuable claims on blocks whose summed demand does not fit (module docstring)."""
        dropped = 0
        while chosen:
            total = self.sums(chosen)
            blocks = np.unique(np.concatenate([self.idxs[i] for i in chosen]))
            ok = self.block_ok(total, blocks)
            if ok.all():
                break
            bad = set(blocks[~ok].tolist())
            on_bad = [i for i in chosen if bad.intersection(self.idxs[i].tolist())]
            size = {i: float(self.comp.shares(self.rows[i], self.cap[self.idxs[i]]).max()) for i in on_bad}
            victim = min(on_bad, key=lambda i: (self.w[i], -size[i], -i))
            chosen.remove(victim)
            dropped += 1
        return chosen, dropped

    # -- one component --
    def solve_component(self, claims: list[int], deadline: float, gap: float) -> ComponentResult:
        started = time.perf_counter()
        blocks = np.unique(np.concatenate([self.idxs[i] for i in claims]))
        model = self.build(claims, blocks)
        total_w = float(sum(self.w[i] for i in claims))
        if model is None:  # nothing constrains these claims: all of them fit together
            kept, dropped = self.repair(list(claims))
            kept = self.complete(kept, claims)
            status = PackingStatus.REPAIRED if dropped else PackingStatus.OPTIMAL
            return self.result(claims, blocks, kept, total_w, status, "trivial", 0, 0, dropped, started)
        c, a_mat, n_x = model.c, model.a, model.n_x
        n_var = c.shape[0]
        left = deadline - time.perf_counter()
        status = PackingStatus.TIME_LIMIT
        chosen: list[int] = []
        bound = total_w
        method = "greedy"
        if left > 0:
            res = milp(
                c,
                integrality=model.integrality,
                bounds=Bounds(0.0, 1.0),
                constraints=LinearConstraint(a_mat, model.lb, model.ub),
                options={"time_limit": max(left, 1e-3), "mip_rel_gap": gap, "presolve": True, "disp": False},
            )
            dual = getattr(res, "mip_dual_bound", None)
            if dual is not None and math.isfinite(float(dual)):
                bound = min(bound, -float(dual))  # the solver minimises −w·x: its lower bound is our upper bound
            if res.status == 0:
                status = PackingStatus.OPTIMAL
                if gap == 0.0 or dual is None or not math.isfinite(float(dual)):
                    bound = min(bound, float(-res.fun))  # proven to the solver's tolerances
            elif res.status != 1:
                status = PackingStatus.FAILED
                logger.warning("packing: HiGHS failed on a component of %d claims: %s", len(claims), res.message)
            if res.x is not None and status is not PackingStatus.FAILED:
                x = np.asarray(res.x[:n_x])
                chosen = [claims[k] for k in np.flatnonzero(x > 0.5).tolist()]
                method = "milp"
        chosen, dropped = self.repair(chosen)
        if dropped and status is PackingStatus.OPTIMAL:
            status = PackingStatus.REPAIRED
        if dropped:
            logger.warning(
                "packing: the solver's answer overspent within its tolerance; dropped %d claim(s) of a component "
                "of %d claims to make it fit exactly",
                dropped,
                len(claims),
            )
        chosen = self.complete(chosen, claims)
        return self.result(claims, blocks, chosen, bound, status, method, n_var, a_mat.shape[0], dropped, started)

    def result(
        self,
        claims: list[int],
        blocks: IntArray,
        chosen: list[int],
        bound: float,
        status: PackingStatus,
        method: str,
        n_var: int,
        n_rows: int,
        dropped: int,
        started: float,
    ) -> ComponentResult:
        objective = float(sum(self.w[i] for i in chosen))
        return ComponentResult(
            tuple(sorted(claims)),
            tuple(blocks.tolist()),
            tuple(sorted(chosen)),
            objective,
            max(bound, objective),
            status,
            method,
            n_var,
            n_rows,
            dropped,
            time.perf_counter() - started,
        )

    def build(self, claims: list[int], blocks: IntArray) -> _Model | None:
        """The component's MILP as (objective, constraint matrix, upper bounds, number of x), or ``None``
        when no row is needed."""
        local = {b: k for k, b in enumerate(blocks.tolist())}
        width = self.cap.shape[1]
        # Per block: the claims on it (positions in ``claims``) and their demand rows there.
        on: list[list[int]] = [[] for _ in blocks]
        dem: list[list[FloatArray]] = [[] for _ in blocks]
        for pos, i in enumerate(claims):
            for r, b in enumerate(self.idxs[i].tolist()):
                k = local[b]
                on[k].append(pos)
                dem[k].append(self.rows[i][r])
        n_x = len(claims)
        r_idx: list[int] = []  # coo triplets of the "≤" rows
        c_idx: list[int] = []
        vals: list[float] = []
        lb: list[float] = []
        ub: list[float] = []
        n_y = 0
        n_z = 0  # continuous copies of the hull formulation, numbered after every binary
        z_rows: list[tuple[int, list[int], list[float]]] = []  # (row, z offsets, coefficients), fixed up at the end

        def add_row(cols: list[int], coefs: list[float], rhs: float, low: float = -np.inf) -> int:
            row = len(ub)
            r_idx.extend([row] * len(cols))
            c_idx.extend(cols)
            vals.extend(coefs)
            lb.append(low)
            ub.append(rhs)
            return row

        for k, b in enumerate(blocks.tolist()):
            d = np.asarray(dem[k]).reshape(-1, width)
            room = self.room[b]
            tot = d.sum(axis=0)
            if self.renyi:
                usable = (self.cap[b] > 0) & (room > 0)
                if not usable.any() or bool(np.any(usable & (tot <= room))):
                    continue  # no order can hold anything positive, or one order holds every claim on b
                orders = np.flatnonzero(usable)
            else:
                orders = np.flatnonzero(tot > room)  # basic: every column must hold; skip the slack ones
                if orders.size == 0:
                    continue
            scaled = d[:, orders] / np.where(room[orders] > 0, room[orders], 1.0)
            if self.renyi and orders.size > 1:
                scaled, orders = _undominated(scaled, orders)
            cols = on[k]
            if not self.renyi or orders.size == 1:
                for j in range(orders.size):
                    add_row(cols, scaled[:, j].tolist(), 1.0)
                continue
            ys = list(range(n_x + n_y, n_x + n_y + orders.size))
            n_y += orders.size
            if self.formulation == "hull":  # exactly one order, or the copies below would add capacities up
                add_row(ys, [1.0] * len(ys), 1.0, 1.0)
            else:
                add_row(ys, [-1.0] * len(ys), -1.0)  # Σ_α y ≥ 1, as −Σ y ≤ −1
            if self.formulation == "hull":
                # Balas's disjunctive hull of "some order α fits": z_{i,α} is claim i's share of the
                # choice of α; x_i = Σ_α z_{i,α}, z_{i,α} ≤ y_α, Σ_i d_{i,α}/c_α z_{i,α} ≤ y_α.
                # A claim that does not fit alone at α (d > c) is out of every set that fits at α: no copy (z = 0).
                # The copies are declared integer (binary): for integer x and y they are integer anyway
                # (z_{i,α} = x_i y_α), and HiGHS then separates knapsack covers on the rows Σ_i d z ≤ y.
                n_c, n_o = scaled.shape
                has = scaled <= 1.0
                zid = np.full((n_c, n_o), -1, dtype=np.int64)
                zid[has] = np.arange(n_z, n_z + int(has.sum()))
                n_z += int(has.sum())
                for r in range(n_c):
                    mine = zid[r, has[r]].tolist()
                    z_rows.append((add_row([cols[r]], [1.0], 0.0, 0.0), mine, [-1.0] * len(mine)))
                for j, y in enumerate(ys):
                    keep = has[:, j] & (scaled[:, j] > 0)
                    z_rows.append((add_row([y], [-1.0], 0.0), zid[keep, j].tolist(), scaled[keep, j].tolist()))
                    for r in np.flatnonzero(has[:, j]).tolist():
                        z_rows.append((add_row([y], [-1.0], 0.0), [int(zid[r, j])], [1.0]))
                continue
            best = scaled.min(axis=1)
            for j, y in enumerate(ys):
                big_m = max(0.0, float(scaled[:, j].sum()) - 1.0)  # M = max(0, Σ d − c), scaled by c
                if self.tight_m:
                    big_m = min(big_m, max(0.0, _fractional_knapsack(scaled[:, j], best) - 1.0))
                add_row([*cols, y], [*scaled[:, j].tolist(), big_m], 1.0 + big_m)
            # Valid inequalities that the big-M rows imply for integer points but that tighten the LP relaxation
            # (with fractional y the big-M rows are nearly slack):
            # (1) best-order knapsack: a set that fits at some order α has Σ_i d_{i,α}/c_α ≤ 1, hence
            #     Σ_i min_α (d_{i,α}/c_α) x_i ≤ 1;
            if float(best.sum()) > 1.0:
                add_row(cols, best.tolist(), 1.0)
            # (2) a claim can only be taken if an order where it fits alone is chosen: x_i ≤ Σ_{α: d ≤ c} y_α.
            fit = scaled <= 1.0
            for r in np.flatnonzero(~fit.all(axis=1)).tolist():
                ok = [ys[j] for j in np.flatnonzero(fit[r]).tolist()]
                add_row([cols[r], *ok], [1.0] + [-1.0] * len(ok), 0.0)
        if not ub:
            return None
        n_bin = n_x + n_y
        for row, zs, coefs in z_rows:
            r_idx.extend([row] * len(zs))
            c_idx.extend(n_bin + z for z in zs)
            vals.extend(coefs)
        n_var = n_bin + n_z
        c = np.zeros(n_var)
        c[:n_x] = -np.asarray([self.w[i] for i in claims])
        a_mat = coo_array((np.asarray(vals), (np.asarray(r_idx), np.asarray(c_idx))), shape=(len(ub), n_var))
        integrality = np.ones(n_var)  # x, y and the hull's copies z (see above) are all binary
        return _Model(c, a_mat, np.asarray(lb), np.asarray(ub), integrality, n_x)


def _fractional_knapsack(value: FloatArray, size: FloatArray) -> float:
    """``max Σ value·x`` s.t. ``Σ size·x ≤ 1``, ``0 ≤ x ≤ 1`` (Dantzig's greedy by value/size ratio).

    Every set that fits on a block satisfies the best-order row ``Σ_i min_α d_{i,α}/c_α ≤ 1``, so this bounds
    how far ``Σ_i d_{i,α}/c_α x_i`` can go at an order α that is not the one chosen: a valid, smaller big-M.
    """
    free = size <= 0
    total = float(value[free].sum())
    v, w = value[~free], size[~free]
    order = np.argsort(-v / w, kind="stable")
    room = 1.0
    for k in order.tolist():
        if w[k] <= room:
            room -= float(w[k])
            total += float(v[k])
        else:
            total += float(v[k]) * room / float(w[k])
            break
    return total


def _undominated(scaled: FloatArray, orders: IntArray) -> tuple[FloatArray, IntArray]:
    """Drop the orders (columns) dominated by another: at least as large for every claim (first of equals kept)."""
    m = orders.size
    keep = np.ones(m, dtype=bool)
    for j in range(m):
        if not keep[j]:
            continue
        # Column j dominates column l when scaled[:, j] <= scaled[:, l] everywhere.
        dominated = np.all(scaled[:, [j]] <= scaled, axis=0)
        dominated[j] = False
        keep &= ~dominated
    return scaled[:, keep], orders[keep]


def solve_packing(
    demands: Sequence[ClaimDemand],
    capacity: FloatArray,
    composition: Composition,
    weights: Sequence[float] | FloatArray | None = None,
    available: FloatArray | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    gap: float = 0.0,
    formulation: str = "hull",
    decompose: bool = True,
) -> PackingResult:
    """The maximum total weight of claims that fit together (module docstring for the model and guarantees).

    Parameters
    ----------
    demands
        Per claim: ``(blocks, rows)`` — the indices of the blocks it asks for and one demand row per block
        (``rows.shape == (len(blocks), width)``), all or nothing.
    capacity
        ``(n_blocks, width)`` capacities of the blocks (which orders are usable, and the tolerance's scale).
    composition
        The ledger's composition (basic or Rényi); its ``fits`` decides feasibility.
    weights
        Positive or zero weight per claim (default 1: the number of claims).
    available
        ``(n_blocks, width)`` budget the claims may share (default: the whole ``capacity``, the offline optimum).
    time_limit
        Wall-clock seconds for the whole call (> 0, finite).
    gap
        Relative gap at which the solver may stop and call the answer optimal (default 0).
    formulation
        ``"hull"`` (default: Balas's disjunctive hull per block, a tighter relaxation in a larger LP; it proves
        or closes the gap faster on the packing-mix instances, docs/benchmarks.md; its copies ``z_{i,b,α}`` are
        binary, and absent where claim i does not fit alone at α, see :meth:`_Packer.build`) or ``"bigm"`` (the big-M
        rows above, with the valid inequalities of :meth:`_Packer.build`).
    decompose
        Solve the connected components of the claim–block graph separately (default); ``False`` solves one
        MILP over every candidate (the same optimum; tests compare the two).

    Returns
    -------
    PackingResult
        The chosen claims, objective, proven bound, status and per-component details.

    Raises
    ------
    InvalidParameterError
        On a bad time limit or gap, a negative or non-finite demand or weight, or shapes that do not match.
    """
    started = time.perf_counter()
    limit = _check_time_limit(time_limit)
    rel_gap = _check_gap(gap)
    if formulation not in FORMULATIONS:
        raise InvalidParameterError(f"formulation must be one of {', '.join(FORMULATIONS)}, got {formulation!r}")
    cap = np.asarray(capacity, dtype=np.float64)
    if cap.ndim != 2 or cap.shape[1] != composition.width:
        raise InvalidParameterError(f"capacity must have shape (n_blocks, {composition.width}), got {cap.shape}")
    avail = cap.copy() if available is None else np.asarray(available, dtype=np.float64)
    if avail.shape != cap.shape:
        raise InvalidParameterError(f"available has shape {avail.shape}, capacity {cap.shape}")
    if not (np.all(np.isfinite(cap)) and np.all(np.isfinite(avail))):
        raise InvalidParameterError("capacity and available budget must be finite")
    idxs, rows = _as_claims(demands, cap.shape[0], composition.width)
    n = len(idxs)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != n:
        raise InvalidParameterError(f"{w.shape[0]} weights for {n} claims")
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise InvalidParameterError("weights must be finite and ≥ 0")
    packer = _Packer(idxs, rows, w, avail, cap, composition, formulation)
    deadline = started + limit
    candidates = [i for i in range(n) if packer.fits_alone(i)]
    fixed_out = tuple(i for i in range(n) if not packer.fits_alone(i)) if len(candidates) < n else ()
    # Connected components of the claim–block graph (claims as ("c", i), blocks as ("b", j)).
    graph: nx.Graph = nx.Graph()
    for i in candidates if decompose else ():
        graph.add_node(("c", i))
        graph.add_edges_from((("c", i), ("b", b)) for b in idxs[i].tolist())
    if decompose:
        comps = [sorted(node[1] for node in part if node[0] == "c") for part in nx.connected_components(graph)]
        comps = [cl for cl in comps if cl]
    else:
        comps = [candidates] if candidates else []
    comps.sort(key=lambda cl: (len(cl), cl[0]))  # small ones first: they finish fast, the big one gets the rest
    results = []
    for cl in comps:
        if len(cl) == 1:  # fits alone: take it (and it is optimal)
            t0 = time.perf_counter()
            results.append(packer.result(cl, idxs[cl[0]], list(cl), 0.0, PackingStatus.OPTIMAL, "trivial", 0, 0, 0, t0))
            continue
        results.append(packer.solve_component(cl, deadline, rel_gap))
    chosen = tuple(sorted(i for r in results for i in r.chosen))
    result = PackingResult(
        chosen,
        float(sum(r.objective for r in results)),
        float(sum(r.bound for r in results)),
        tuple(results),
        fixed_out,
        time.perf_counter() - started,
    )
    # Last line of defence: the whole answer fits exactly (components share no block, so this cannot fail
    # when every component passed; it is cheap and guards the ledger's invariant).
    if chosen:
        total = packer.sums(chosen)
        touched = np.unique(np.concatenate([idxs[i] for i in chosen]))
        if not bool(packer.block_ok(total, touched).all()):  # pragma: no cover - would be a bug above
            raise AssertionError("packing: the validated answer does not fit")
    return result


def solve_packing_csr(
    ptr: IntArray,
    block: IntArray,
    demand: FloatArray,
    capacity: FloatArray,
    composition: Composition,
    weights: Sequence[float] | FloatArray | None = None,
    available: FloatArray | None = None,
    time_limit: float = DEFAULT_TIME_LIMIT,
    gap: float = 0.0,
    formulation: str = "hull",
    decompose: bool = True,
) -> PackingResult:
    """:func:`solve_packing` on claims in compressed-row form (claim ``k`` owns rows ``ptr[k]:ptr[k+1]`` of
    ``block`` and ``demand``), as a :class:`~dpf_sched.sim.table.ClaimTable` holds them: the offline optimum of a
    whole generated workload is ``solve_packing_csr(c.ptr, c.block, c.demand, inp.blocks.capacity,
    inp.composition)`` with ``c = inp.claims``."""
    p = np.asarray(ptr, dtype=np.int64)
    blk = np.asarray(block, dtype=np.int64)
    dem = np.asarray(demand, dtype=np.float64)
    demands = [(blk[p[k] : p[k + 1]], dem[p[k] : p[k + 1]]) for k in range(p.shape[0] - 1)]
    return solve_packing(demands, capacity, composition, weights, available, time_limit, gap, formulation, decompose)
