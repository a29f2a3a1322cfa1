"""DPack: pack waiting claims by efficiency, at the best Rényi order of each block (Tholoniat et al., EuroSys'25).

Source: P. Tholoniat, K. Kostopoulou, P. McNeely, P. S. Sodhi, A. Varanasi, B. Case, A. Cidon, R. Geambasu,
M. Lécuyer, "Packing Privacy Budget Efficiently", EuroSys 2025 (arXiv 2212.13228), §4 (the DPack heuristic).
DPF grants the claim with the smallest dominant share first, which is fair but wastes budget when claims prefer
different Rényi orders α: a block's budget is only ever "read" at one order (the one at which its guarantee
holds), so budget spent on claims that are cheap at another order is lost. DPack packs instead:

1. **Best order per block** (paper §4.2, "best alpha"): for every block ``j``, the order ``α_j`` at which the
   most of the pass's candidate claims would fit in the *available* (unlocked, not allocated) budget, counted
   greedily — sort the candidates' demands on ``j`` at ``α`` ascending and count how many fit cumulatively
   within ``available_j(α)`` (the paper's per-block single-dimension knapsack, solved by its greedy bound).
   Only usable orders (``G_j(α) > 0``) compete; **ties go to the smallest order index** (the first order of
   the grid reaching the largest count).
2. **Efficiency** (paper §4.2, Eq. "efficiency"): claim ``i`` scores
   ``e_i = w_i / Σ_{j ∈ B_i} d_ij(α_j) / available_j(α_j)`` — its weight per unit of normalised demand at the
   blocks' best orders. A positive demand on a block with nothing available at its best order makes that term
   infinite (``e_i = 0``); a claim whose terms are all zero has ``e_i = ∞``.
3. **Grant** in descending efficiency with the all-or-nothing fit rule of the composition (Rényi: some order of
   every block fits, ``∀j ∃α``), against a scratch copy of the available budget that shrinks with each grant.
   **Ties** in efficiency go to DPF's key (dominant share, then the next shares, then arrival): a claim whose
   demand is covered by another's is then never ordered after it, which keeps dynamic envy-freeness
   (``proofs/dpack.md``). The paper breaks ties arbitrarily.
4. **Recompute** the best orders and the efficiencies every ``k`` grants (``k = 1``: after every grant). Only
   the blocks whose candidates or available budget changed get a new best order, and only the claims on those
   blocks a new efficiency, so ``k = 1`` costs a few small sorts per grant, not a new pass.

Candidates of a pass are the waiting claims that still fit the scratch budget: a claim that does not fit is out
of the pass at once (budget only shrinks within a pass, so it could never be granted in it) and no longer counts
in any block's best order. The pass runs on every waiting claim whenever anything changed (blocks gained budget,
or claims arrived): DPack is a global heuristic, so a new claim may change the order of every other one.

Basic composition has one order: the best-order step is void and a block's term is its normalised demand at the
binding column, ``max_c d_ij(c) / available_j(c)`` over usable columns (ε, and δ when δ_G > 0) — the "smallest
normalised demand first" knapsack heuristic (paper §4.1).

The module exposes the packing as :func:`pack` (used by DPack and by the DPF/DPack hybrid of
:mod:`dpf_sched.policies.hybrid`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from dpf_sched.composition import REL_TOL, Composition
from dpf_sched.policies.base import (
    Decision,
    FloatArray,
    IntArray,
    Param,
    PassContext,
    Policy,
    Unlocker,
    Verdict,
    choice,
    positive_int,
)
from dpf_sched.policies.unlocking import (
    ARRIVAL_PARAMS,
    TIMED_PARAMS,
    UNLOCK_MODES,
    arrival_unlocker,
    timed_unlocker,
)
from dpf_sched.queue import QueuedClaim

BoolArray = NDArray[np.bool_]

#: Unlocking rules DPack can run with: everything at creation (offline, as in the paper), DPF-T's or DPF-N's.
DPACK_UNLOCKS = ("all", "timed", "arrival")

#: Parameters of the timed unlocking as DPack and DPF-Pack declare them: DPF-T's ``T`` and ``tick``, and its
#: ``unlock`` mode (paper/artifact) renamed ``mode``, since ``unlock`` chooses the unlocking rule here.
TIMED_UNLOCK_PARAMS: Mapping[str, Param] = {
    "T": TIMED_PARAMS["T"],
    "tick": TIMED_PARAMS["tick"],
    "mode": Param(choice("mode", UNLOCK_MODES), "paper", "timed unlocking: " + TIMED_PARAMS["unlock"].doc),
}

#: How often the best orders and efficiencies are recomputed within a pass.
K_PARAM = Param(positive_int("k"), 1, "recompute best orders and efficiencies every k grants (1: after each)")


def unlocker_for(config: Mapping[str, Any]) -> Unlocker | None:
    """The unlocker of a DPack-family policy: ``config["unlock"]`` picks DPF-T's timed rule (``T``, ``tick``,
    ``mode``) or DPF-N's per-arrival rule (``N``); ``None`` for ``"all"`` (everything at creation)."""
    how = config["unlock"]
    if how == "timed":
        return timed_unlocker({"T": config["T"], "tick": config["tick"], "unlock": config["mode"]})
    if how == "arrival":
        return arrival_unlocker(config)
    return None


def _rows(claims: Sequence[QueuedClaim]) -> tuple[IntArray, IntArray, FloatArray]:
    """Per claim its number of blocks; per (claim, block) row its block and demand (claims in order)."""
    n = len(claims)
    lens = np.fromiter((q.idx.shape[0] for q in claims), dtype=np.int64, count=n)
    blk = np.concatenate([q.idx for q in claims]).astype(np.int64, copy=False)
    dem = np.concatenate([q.demand for q in claims])
    return lens, blk, dem


def _select(ptr: IntArray, lens: IntArray, claims: IntArray) -> tuple[IntArray, IntArray]:
    """Rows of ``claims`` in a claim-major row array (``ptr``/``lens``) and, per row, its claim's position."""
    ls = lens[claims]
    local = np.repeat(np.arange(claims.shape[0], dtype=np.int64), ls)
    offsets = np.cumsum(ls) - ls
    rows = np.arange(int(ls.sum()), dtype=np.int64) - offsets[local] + ptr[claims][local]
    return rows, local


def _claims_ok(row_ok: BoolArray, lens: IntArray) -> BoolArray:
    """Per claim: are all its rows ok?"""
    n = lens.shape[0]
    bad = np.bincount(np.repeat(np.arange(n), lens), weights=~row_ok, minlength=n)
    return np.asarray(bad == 0, dtype=np.bool_)


def fitting(claims: Sequence[QueuedClaim], avail: FloatArray, capacity: FloatArray, comp: Composition) -> BoolArray:
    """Per claim: does it fit ``avail`` on all its blocks (the composition's all-or-nothing rule)? Vectorised."""
    if not claims:
        return np.zeros(0, dtype=np.bool_)
    lens, blk, dem = _rows(claims)
    return _claims_ok(comp.fits(dem, avail[blk], capacity[blk]), lens)


def _fits_t(d: FloatArray, a: FloatArray, tol: FloatArray, usable: BoolArray, renyi: bool) -> BoolArray:
    """The composition's fit rule on transposed rows (columns × rows), the same arithmetic as
    :meth:`~dpf_sched.composition.Composition.fits` (``d <= a + capacity·REL_TOL``); reducing over the first
    axis of a C-ordered array is much faster than over a short last axis."""
    ok = d <= a + tol
    if renyi:
        return np.asarray(np.logical_or.reduce(ok & usable, axis=0), dtype=np.bool_)
    return np.asarray(np.logical_and.reduce(ok, axis=0), dtype=np.bool_)


class _Packing:
    """The state of one packing: candidates as sparse (claim, block) rows, best orders, terms and efficiencies.

    Claims are numbered in tie-break order. Rows are held claim-major (each claim's rows contiguous, in block
    order, so that a claim's denominator is a left-to-right sum over its blocks) with a block-major index on
    top; budgets are held transposed (columns × rows, columns × blocks) so that per-row questions reduce over
    the first axis. ``alive`` marks the candidates; a granted or misfitting claim dies and its efficiency
    becomes ``-inf``, so ``argmax`` over the efficiencies (its first maximum) is the next grant.

    Each block keeps one snapshot of (best order, available budget), taken when it was last recomputed; every
    term on the block is computed from that snapshot, so all efficiencies are always those of one common state
    (the basis of dynamic envy-freeness, ``proofs/dpack.md``).
    """

    def __init__(
        self,
        claims: Sequence[QueuedClaim],
        lens: IntArray,
        blk: IntArray,
        dem: FloatArray,
        avail: FloatArray,
        capacity: FloatArray,
        comp: Composition,
    ) -> None:
        n = len(claims)
        self.handles = np.fromiter((q.handle for q in claims), dtype=np.int64, count=n)
        self.weight = np.fromiter((q.weight for q in claims), dtype=np.float64, count=n)
        owner = np.repeat(np.arange(n, dtype=np.int64), lens)
        order = np.lexsort((blk, owner))  # claim-major, block order within a claim
        self.blk: IntArray = blk[order]
        self.dem_t: FloatArray = np.ascontiguousarray(dem[order].T)
        self.owner: IntArray = owner[order]
        self.ptr: IntArray = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
        self.lens = lens
        self.n_rows = int(self.blk.shape[0])
        self.n_blocks = n_blocks = int(avail.shape[0])
        self.by_block: IntArray = np.argsort(self.blk, kind="stable").astype(np.int64)
        self.bptr: IntArray = np.concatenate(([0], np.cumsum(np.bincount(self.blk, minlength=n_blocks))))
        self.avail = avail
        self.avail_t: FloatArray = np.ascontiguousarray(avail.T)
        self.cap = capacity
        self.cap_t: FloatArray = np.ascontiguousarray(capacity.T)
        self.tol_t: FloatArray = self.cap_t * REL_TOL
        self.renyi = comp.name == "renyi"
        self.alive = np.ones(n, dtype=np.bool_)
        self.row_alive = np.ones(self.n_rows, dtype=np.bool_)
        self.mark = np.zeros(n, dtype=np.bool_)
        self.alpha = np.zeros(n_blocks, dtype=np.int64)
        self.term = np.zeros(self.n_rows)
        self.score = np.zeros(n)

    # ----- rows -------------------------------------------------------------------------------------------
    def rows_on(self, blocks: IntArray) -> IntArray:
        """Rows of live candidates on ``blocks`` (distinct), grouped by block in the order of ``blocks``."""
        bp = self.bptr
        if blocks.shape[0] == 1:
            b = int(blocks[0])
            rows = self.by_block[bp[b] : bp[b + 1]]
        else:
            rows = np.concatenate([self.by_block[bp[b] : bp[b + 1]] for b in blocks.tolist()])
        return rows[self.row_alive.take(rows)]

    def rows_of(self, claims: IntArray) -> tuple[IntArray, IntArray]:
        """Rows of ``claims`` (claim-major) and, per row, the position of its claim in ``claims``."""
        return _select(self.ptr, self.lens, claims)

    def fits(self, rows: IntArray) -> BoolArray:
        """Per row: does its demand fit the block's current scratch budget?"""
        b = self.blk.take(rows)
        return _fits_t(
            self.dem_t.take(rows, axis=1),
            self.avail_t.take(b, axis=1),
            self.tol_t.take(b, axis=1),
            self.cap_t.take(b, axis=1) > 0,
            self.renyi,
        )

    # ----- best orders, terms, efficiencies ---------------------------------------------------------------
    def presort(self) -> None:
        """Per block and order, the rows sorted by demand (once per pass; the best-order counts then only skip
        the rows of claims that left the pass). The sort key is the block number plus the demand scaled into
        [0, 0.5] by the block's largest demand at that order; the demands themselves are read back exactly."""
        # Orders that no block can use never win; leave them out of the counts.
        self.cols: IntArray = np.flatnonzero((self.cap_t > 0).any(axis=1))
        v = self.dem_t.take(self.by_block, axis=1).take(self.cols, axis=0)  # orders × rows, block-major
        b = self.blk.take(self.by_block)
        present = np.flatnonzero(np.diff(self.bptr) > 0)
        top = np.zeros((self.cols.shape[0], self.n_blocks))
        top[:, present] = np.maximum.reduceat(v, self.bptr[present], axis=1)
        scale = np.divide(0.5, top, out=np.zeros_like(top), where=top > 0)
        order = np.argsort(b + v * scale.take(b, axis=1), axis=1, kind="stable")
        self.sorted_rows: IntArray = self.by_block.take(order)
        self.sorted_dem: FloatArray = np.take_along_axis(v, order, axis=1)

    def choose_alpha(self, blocks: IntArray) -> None:
        """Best order of each of ``blocks`` (module docstring, step 1): the first usable order at which the most
        live candidates' smallest demands fit, by a cumulative sum over the presorted demands of all the blocks
        at once (rows of claims that left the pass count as zero and are not counted)."""
        bp = self.bptr
        lo, hi = bp.take(blocks), bp.take(blocks + 1)
        keep = hi > lo
        if not bool(keep.all()):
            blocks, lo, hi = blocks[keep], lo[keep], hi[keep]
        if blocks.shape[0] == 0:
            return
        if blocks.shape[0] == 1:
            sl = slice(int(lo[0]), int(hi[0]))
            rows, v = self.sorted_rows[:, sl], self.sorted_dem[:, sl]
        else:
            spans = list(zip(lo.tolist(), hi.tolist(), strict=True))
            rows = np.concatenate([self.sorted_rows[:, a:z] for a, z in spans], axis=1)
            v = np.concatenate([self.sorted_dem[:, a:z] for a, z in spans], axis=1)
        live = self.row_alive.take(rows)
        x = v * live
        cum = np.cumsum(x, axis=1)
        lens = hi - lo
        starts = np.cumsum(lens) - lens
        seg = np.repeat(np.arange(blocks.shape[0]), lens)
        before = cum[:, starts] - x[:, starts]  # cumulative sum of the earlier blocks, per order
        cols = self.cols
        avail = self.avail_t.take(cols, axis=0).take(blocks, axis=1)
        limit = before + avail + self.tol_t.take(cols, axis=0).take(blocks, axis=1)
        ok = (cum <= limit.take(seg, axis=1)) & live
        count = np.add.reduceat(ok.astype(np.int64), starts, axis=1)
        count[self.cap_t.take(cols, axis=0).take(blocks, axis=1) <= 0] = -1
        self.alpha[blocks] = cols.take(np.argmax(count, axis=0))

    def update(self, blocks: IntArray, rows: IntArray) -> None:
        """New snapshot of ``blocks`` (distinct): best orders, the terms of ``rows`` (the live rows on them), and
        the efficiencies of their claims."""
        if self.renyi:
            self.choose_alpha(blocks)
        if rows.shape[0] == 0:
            return
        b = self.blk.take(rows)
        if self.renyi:
            a = self.alpha.take(b)
            d = self.dem_t.ravel().take(a * self.n_rows + rows)
            av = self.avail_t.ravel().take(a * self.n_blocks + b)
            t = np.divide(d, av, out=np.where(d > 0, np.inf, 0.0), where=av > 0)
        else:
            d2 = self.dem_t.take(rows, axis=1)
            av2 = self.avail_t.take(b, axis=1)
            ratio = np.divide(d2, av2, out=np.where(d2 > 0, np.inf, 0.0), where=av2 > 0)
            ratio[self.cap_t.take(b, axis=1) <= 0] = 0.0  # unusable columns serve nothing (a live claim asks 0)
            t = np.maximum.reduce(ratio, axis=0)
        self.term[rows] = t
        mark = self.mark
        mark[self.owner.take(rows)] = True
        claims = np.flatnonzero(mark)
        mark[claims] = False
        self.rescore(claims)

    def rescore(self, claims: IntArray) -> None:
        """Efficiency ``w / Σ terms`` of ``claims`` (sums in block order, one claim after the other)."""
        rows, local = self.rows_of(claims)
        denom = np.bincount(local, weights=self.term.take(rows), minlength=claims.shape[0])
        w = self.weight.take(claims)
        self.score[claims] = np.divide(w, denom, out=np.full(claims.shape[0], np.inf), where=denom > 0)

    def kill(self, claims: IntArray) -> None:
        """Take ``claims`` (granted, or no longer fitting) out of the pass."""
        self.alive[claims] = False
        self.score[claims] = -np.inf
        self.row_alive[self.rows_of(claims)[0]] = False

    # ----- the pass ---------------------------------------------------------------------------------------
    def start(self) -> IntArray:
        """The first snapshot of every block with candidates (which it returns)."""
        if self.renyi:
            self.presort()
        blocks = np.flatnonzero(np.diff(self.bptr) > 0)
        self.update(blocks, self.by_block)
        return blocks

    def run(self, k: int) -> list[int]:
        """Grant in descending efficiency until no candidate is left; recompute every ``k`` grants.
        The scratch budget ``avail`` given at construction is updated in place."""
        self.start()
        out: list[int] = []
        touched: list[IntArray] = []
        score, owner, avail_t, dem_t = self.score, self.owner, self.avail_t, self.dem_t
        while True:
            i = int(np.argmax(score))
            if score[i] == -np.inf:
                break
            r0, r1 = int(self.ptr[i]), int(self.ptr[i + 1])
            bi = self.blk[r0:r1]
            avail_t[:, bi] -= dem_t[:, r0:r1]
            out.append(int(self.handles[i]))
            self.alive[i] = False
            score[i] = -np.inf
            self.row_alive[r0:r1] = False
            # Candidates on the blocks that just shrank may no longer fit: out of the pass.
            rows = self.rows_on(bi)
            if rows.shape[0]:
                ok = self.fits(rows)
                if not bool(ok.all()):
                    self.kill(np.unique(owner.take(rows[~ok])))
                    rows = rows[self.row_alive.take(rows)]
            touched.append(bi)
            if len(touched) >= k:
                blocks = bi if k == 1 else np.unique(np.concatenate(touched))
                if k > 1:
                    rows = self.rows_on(blocks)
                touched = []
                self.update(blocks, rows)
        self.avail[...] = avail_t.T
        return out


def _prepare(
    claims: Sequence[QueuedClaim], avail: FloatArray, capacity: FloatArray, comp: Composition, tie_break: str
) -> _Packing | None:
    """The packing of the claims that fit ``avail``, numbered in tie-break order (``None``: none fits)."""
    if not claims:
        return None
    lens, blk, dem = _rows(claims)
    keep = np.flatnonzero(_claims_ok(comp.fits(dem, avail[blk], capacity[blk]), lens))
    if keep.shape[0] == 0:
        return None
    # Tie-break order, vectorised: (dominant share, seq) for "arrival"; the whole share tuple, then seq, for
    # "lexicographic" (tuples padded with zeros compare like the tuples: trailing zeros are dropped from them).
    live = [claims[c] for c in keep.tolist()]
    seq = np.fromiter((q.seq for q in live), dtype=np.int64, count=len(live))
    if tie_break == "arrival":
        ds = np.fromiter((q.dominant_share for q in live), dtype=np.float64, count=len(live))
        order = np.lexsort((seq, ds))
    else:
        width = max((len(q.shares) for q in live), default=0)
        shares = np.zeros((len(live), max(width, 1)))
        for r, q in enumerate(live):
            shares[r, : len(q.shares)] = q.shares
        order = np.lexsort((seq, *shares.T[::-1]))
    idx = keep.take(order)
    rows, _ = _select(np.concatenate(([0], np.cumsum(lens))), lens, idx)
    ordered = [claims[c] for c in idx.tolist()]
    return _Packing(ordered, lens.take(idx), blk.take(rows), dem.take(rows, axis=0), avail, capacity, comp)


def pack(
    claims: Sequence[QueuedClaim],
    avail: FloatArray,
    capacity: FloatArray,
    comp: Composition,
    k: int = 1,
    tie_break: str = "lexicographic",
) -> list[int]:
    """DPack's packing (module docstring): the handles of the claims granted, in grant order.

    Parameters
    ----------
    claims
        The waiting claims to pack (any order).
    avail
        Available budget per block (blocks × columns); **updated in place** by every grant.
    capacity
        Block capacities (usable columns: ``capacity > 0``).
    comp
        The composition (fit rule; Rényi chooses a best order per block, basic has one).
    k
        Recompute best orders and efficiencies every ``k`` grants.
    tie_break
        Order among equal efficiencies: DPF's key, ``"lexicographic"`` (all shares, then arrival) or
        ``"arrival"`` (dominant share, then arrival).
    """
    packing = _prepare(claims, avail, capacity, comp, tie_break)
    return packing.run(k) if packing is not None else []


@dataclass(frozen=True)
class PackingStart:
    """Best order per block (column index into the α grid; basic: 0) and efficiency per claim handle, as a packing
    starts (claims that do not fit have none). For inspection and tests."""

    best_order: Mapping[int, int]
    efficiency: Mapping[int, float]


def packing_start(
    claims: Sequence[QueuedClaim], avail: FloatArray, capacity: FloatArray, comp: Composition
) -> PackingStart:
    """What :func:`pack` computes before its first grant (``avail`` is not modified)."""
    packing = _prepare(claims, np.array(avail, dtype=np.float64), capacity, comp, "lexicographic")
    if packing is None:
        return PackingStart({}, {})
    blocks = packing.start()
    orders = {b: int(packing.alpha[b]) for b in blocks.tolist()}
    return PackingStart(orders, dict(zip(packing.handles.tolist(), packing.score.tolist(), strict=True)))


class DPack(Policy):
    """DPack (Tholoniat et al., EuroSys'25): grant waiting claims in descending efficiency, weight over demand
    normalised by the available budget at each block's best Rényi order (module docstring).

    Parameters: ``k`` (recompute every k grants), ``unlock`` (``all``: everything at block creation, the
    paper's offline setting; ``timed``: DPF-T's rule with ``T``, ``tick``, ``mode``; ``arrival``: DPF-N's rule
    with ``N``). Parameters of an unlocking rule that is not selected are ignored.
    """

    name = "dpack"
    params: ClassVar[Mapping[str, Param]] = {
        "k": K_PARAM,
        "unlock": Param(choice("unlock", DPACK_UNLOCKS), "all", "unlocking: all (at creation), timed, arrival"),
        **TIMED_UNLOCK_PARAMS,
        **ARRIVAL_PARAMS,
    }

    def make_unlocker(self) -> Unlocker:
        rule = unlocker_for(self.config)
        return rule if rule is not None else super().make_unlocker()

    def schedule(self, ctx: PassContext) -> list[Decision]:
        if ctx.dirty.size == 0 and not ctx.arrivals:
            return []  # nothing changed since the last pass: it left no candidate that fits
        ledger = ctx.ledger
        avail = np.array(ledger.unlocked, dtype=np.float64)
        k = int(self.config["k"])
        granted = pack(list(ctx.queue), avail, ledger.capacity, ledger.composition, k)
        return [Decision(h, Verdict.GRANT) for h in granted]
