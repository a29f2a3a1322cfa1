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
from itertools import chain
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
    arrival_unlocker,
    timed_unlocker,
)
from dpf_sched.queue import QueuedClaim

BoolArray = NDArray[np.bool_]

#: Unlocking rules DPack can run with: everything at creation (offline, as in the paper), DPF-T's or DPF-N's.
DPACK_UNLOCKS = ("all", "timed", "arrival")

#: Parameters of the timed unlocking as DPack and DPF-Pack declare them: DPF-T's own ``T``, ``tick`` and ``unlock``
#: (paper/artifact), under the same names; ``unlocking`` chooses the rule (as in ``optimal``).
TIMED_UNLOCK_PARAMS: Mapping[str, Param] = dict(TIMED_PARAMS)

#: How often the best orders and efficiencies are recomputed within a pass.
K_PARAM = Param(positive_int("k"), 1, "recompute best orders and efficiencies every k grants (1: after each)")


def unlocker_for(config: Mapping[str, Any]) -> Unlocker | None:
    """The unlocker of a DPack-family policy: ``config["unlocking"]`` picks DPF-T's timed rule (``T``, ``tick``,
    ``unlock``) or DPF-N's per-arrival rule (``N``); ``None`` for ``"all"`` (everything at creation)."""
    how = config["unlocking"]
    if how == "timed":
        return timed_unlocker(config)
    if how == "arrival":
        return arrival_unlocker(config)
    return None


def unlock_active_params(config: Mapping[str, Any], always: set[str], default_unlock: str) -> set[str]:
    """The parameters of a DPack-family policy that matter for ``config``: ``always`` plus the chosen unlocking
    rule's own (``T``, ``tick``, ``unlock`` for ``timed``; ``N`` for ``arrival``).

    :func:`dpf_sched.sim.compare.plan_runs` uses it so that a grid over another rule's parameters does not
    multiply the runs of a configuration that ignores them.
    """
    how = str(config.get("unlocking", default_unlock)).strip().lower()
    keys = set(always) | {"unlocking"}
    if how == "timed":
        keys |= set(TIMED_UNLOCK_PARAMS)
    elif how == "arrival":
        keys |= set(ARRIVAL_PARAMS)
    return keys


def _rows(claims: Sequence[QueuedClaim]) -> tuple[IntArray, IntArray, FloatArray]:
    """Per claim its number of blocks; per (claim, block) row its block and demand (claims in order)."""
    idx = [q.idx for q in claims]
    lens = np.fromiter(map(len, idx), dtype=np.int64, count=len(idx))
    blk = np.concatenate(idx).astype(np.int64, copy=False)
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


#: Claims on at most this many blocks keep their terms in a dense (slot × claim) table, summed slot by slot;
#: wider claims fall back to a per-row table summed by ``bincount`` (the same left-to-right sums, see
#: :meth:`_Packing.rescore`).
_DENSE_SLOTS = 16

#: The window of sorted demands a block's greedy counts sum over: at first ``_WINDOW`` rows, then as many as the
#: last counts reached plus ``_MARGIN`` (it doubles when too short).
_WINDOW = 32
_MARGIN = 8


class _Packing:
    """The state of one packing: candidates as sparse (claim, block) rows, best orders, terms and efficiencies.

    Claims are numbered in tie-break order, so the first maximum of the efficiencies (``argmax``) is the next
    grant; a granted or misfitting claim dies and its efficiency becomes ``-inf``. Rows are numbered
    claim-major (each claim's rows contiguous, in block order). Only the columns that can matter are kept
    (``cols``: Rényi, the orders usable on some block; basic, every column), in a working copy ``avail`` of the
    scratch budget (blocks × cols); the caller's full-width array is brought up to date once, at the end.

    Per block, the rows on it sorted by demand at each column (``srt_rows``/``srt_dem``, cols × rows on the
    block), so that the three per-block questions of a grant read contiguous slices instead of gathering:

    * *fit*: at each column the demands over the limit ``avail + tol`` are a suffix of the sorted row; if some
      column's largest demand is within it, nothing on the block can fail, else only a suffix is checked;
    * *best order*: the greedy count is a cumulative sum along each sorted row compared with the limit, over a
      window of the smallest demands that is widened until it holds every count (counts are small);
    * *terms*: the demands at the best order, divided by the available budget, scattered to the rows.

    The sorted arrays keep the rows of claims that left the pass (``dead[b]`` of them on block ``b``, masked
    out of counts and terms) until they are the majority, then drop them (order kept).

    Each block keeps one snapshot of (best order, available budget), taken when it was last recomputed; every
    term on the block is computed from that snapshot, so all efficiencies are always those of one common state
    (the basis of dynamic envy-freeness, ``proofs/dpack.md``). The efficiency of a claim is its weight over the
    left-to-right sum of its terms in block order.
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
        self.n = n
        self.handles: list[int] = [q.handle for q in claims]
        self.weight = np.fromiter((q.weight for q in claims), dtype=np.float64, count=n)
        owner = np.repeat(np.arange(n, dtype=np.int64), lens)
        ptr = np.concatenate(([0], np.cumsum(lens))).astype(np.int64)
        if bool((np.diff(blk)[np.diff(owner) == 0] < 0).any()):
            order = np.lexsort((blk, owner))  # claim-major already; block order within a claim
            blk, dem = blk[order], dem[order]
        self.blk: IntArray = blk
        self.dem: FloatArray = dem  # rows × full width, for the final update of the caller's budget
        self.owner: IntArray = owner
        self.ptr_arr: IntArray = ptr
        self.lens = lens
        self.ptr: list[int] = ptr.tolist()
        self.blk_list: list[int] = blk.tolist()
        self.n_rows = n_rows = int(blk.shape[0])
        self.n_blocks = n_blocks = int(avail.shape[0])
        self.renyi = comp.name == "renyi"
        usable = capacity > 0
        self.cols: IntArray = (
            np.flatnonzero(usable.any(axis=0)) if self.renyi else np.arange(avail.shape[1], dtype=np.int64)
        )
        cols = self.cols
        self.full_avail = avail
        self.avail: FloatArray = np.ascontiguousarray(avail[:, cols])
        tol = capacity[:, cols] * REL_TOL
        if self.renyi:  # an unusable order serves nothing: its limit is -inf (fits and counts nothing)
            tol[~usable[:, cols]] = -np.inf
        self.tol: FloatArray = np.ascontiguousarray(tol)
        #: Per block, the fit limit ``avail + capacity·REL_TOL`` of the current scratch budget, per column.
        self.lim: list[FloatArray] = list(self.avail + self.tol)
        self.dem_c: FloatArray = np.ascontiguousarray(dem[:, cols])
        self.usable_mask: BoolArray = np.ascontiguousarray(usable[:, cols])
        self.usable: list[list[int]] = [np.flatnonzero(u).tolist() for u in self.usable_mask]
        self.alive = np.ones(n, dtype=np.bool_)
        self.row_alive = np.ones(n_rows, dtype=np.bool_)
        self.alpha: list[int] = [0] * n_blocks  # best order per block, as a position in ``cols``
        self.score = np.zeros(n)
        self.granted: list[int] = []
        # Terms: dense (slot × claim) when claims are narrow, else per row.
        width = int(lens.max()) if n else 0
        self.dense = width <= _DENSE_SLOTS
        self.width = width
        if self.dense:
            slot = np.arange(n_rows, dtype=np.int64) - ptr[:-1].take(owner)
            self.term_at: IntArray = slot * n + owner
            self.term = np.zeros(width * n)
        else:
            self.term_at = np.arange(n_rows, dtype=np.int64)
            self.term = np.zeros(n_rows)
        # Per block: its rows sorted by demand at every column (filled by presort()).
        self.by_block: IntArray = np.argsort(blk, kind="stable").astype(np.int64)
        self.bptr: list[int] = np.concatenate(([0], np.cumsum(np.bincount(blk, minlength=n_blocks)))).tolist()
        empty_rows = np.zeros((cols.shape[0], 0), dtype=np.int64)
        empty_dem = np.zeros((cols.shape[0], 0))
        self.srt_rows: list[IntArray] = [empty_rows] * n_blocks
        self.srt_dem: list[FloatArray] = [empty_dem] * n_blocks
        self.dead: list[int] = [0] * n_blocks
        self.window: list[int] = [_WINDOW] * n_blocks

    # ----- per-block sorted demands ----------------------------------------------------------------------
    def presort(self, blocks: list[int]) -> None:
        """Sort the rows of each of ``blocks`` by demand, at every column (once per pass)."""
        for b in blocks:
            rows = self.by_block[self.bptr[b] : self.bptr[b + 1]]
            v = self.dem_c.take(rows, axis=0).T  # cols × rows on b
            order = np.argsort(v, axis=1, kind="stable")
            self.srt_rows[b] = rows.take(order)
            self.srt_dem[b] = np.take_along_axis(v, order, axis=1)

    def compact(self, b: int) -> None:
        """Drop the rows of claims that left the pass from block ``b``'s sorted arrays (order kept)."""
        rows = self.srt_rows[b]
        live = self.row_alive.take(rows)  # the same rows are live in every column's order
        n_cols = rows.shape[0]
        self.srt_rows[b] = rows[live].reshape(n_cols, -1)
        self.srt_dem[b] = self.srt_dem[b][live].reshape(n_cols, -1)
        self.dead[b] = 0

    # ----- leaving the pass --------------------------------------------------------------------------------
    def remove(self, c: int) -> None:
        """Take claim ``c`` (granted, or no longer fitting) out of the pass."""
        self.alive[c] = False
        self.score[c] = -np.inf
        r0, r1 = self.ptr[c], self.ptr[c + 1]
        self.row_alive[r0:r1] = False
        dead = self.dead
        for b in self.blk_list[r0:r1]:
            dead[b] += 1

    def misfits(self, b: int) -> IntArray:
        """Live rows on block ``b`` that no longer fit its scratch budget (the composition's fit rule,
        ``d <= avail + capacity·REL_TOL``: Rényi at some usable order, basic at every column)."""
        lim = self.lim[b]
        srt, rows = self.srt_dem[b], self.srt_rows[b]
        m = srt.shape[1]
        none = rows[0, :0]
        if m == 0:
            return none
        top_ok = srt[:, -1] <= lim  # per column: does even the largest demand fit?
        if self.renyi:
            if bool(top_ok.any()):
                return none  # every row fits at that (usable) order
            # A row fails iff it is over the limit at every usable order: among the rows over it at the order
            # with the fewest such rows, check the live ones.
            under = (srt <= lim[:, None]).sum(axis=1).tolist()  # per column: demands within the limit
            o = max(range(len(under)), key=under.__getitem__)
            cand = rows[o, under[o] :]
            live: IntArray = cand[self.row_alive.take(cand)]
            if live.shape[0] == 0:
                return live
            bad: IntArray = live[~(self.dem_c.take(live, axis=0) <= lim).any(axis=1)]
            return bad
        # Basic: a row over the limit at any column fails.
        if bool(top_ok.all()):
            return none
        under = (srt <= lim[:, None]).sum(axis=1).tolist()
        over = [rows[c, under[c] :] for c in range(len(under)) if under[c] < m]
        cand = over[0] if len(over) == 1 else np.concatenate(over)
        over_live: IntArray = cand[self.row_alive.take(cand)]
        return over_live

    # ----- best orders, terms, efficiencies ---------------------------------------------------------------
    def choose_alpha(self, b: int) -> int:
        """Best order of block ``b`` (module docstring, step 1), as a position in ``cols``: the first usable
        order at which the most live candidates' smallest demands fit, counted by a cumulative sum along the
        sorted demands (rows of claims that left the pass count as zero and are not counted).

        The sums are non-decreasing, so only a window of the smallest demands is summed: it is widened until
        the sum at its end exceeds the limit at every usable order (no later row can be counted)."""
        usable = self.usable[b]
        if not usable:
            return 0
        lim = self.lim[b][:, None]
        srt = self.srt_dem[b]
        m = srt.shape[1]
        w = min(m, self.window[b])
        live = None
        while True:
            x = srt[:, :w]
            if self.dead[b]:
                live = self.row_alive.take(self.srt_rows[b][:, :w])
                x = x * live
            within = x.cumsum(axis=1) <= lim
            reach = np.add.reduce(
                within, axis=1, dtype=np.int64
            ).tolist()  # per order: the rows within the limit (a prefix)
            top = max(reach)
            if top < w or w == m:
                break
            w = min(m, 2 * w)
        self.window[b] = top + _MARGIN
        counts = reach if live is None else np.add.reduce(within, axis=1, dtype=np.int64, where=live).tolist()
        return max(usable, key=counts.__getitem__)  # the first of the largest counts

    def snapshot(self, b: int) -> IntArray:
        """New snapshot of block ``b``: best order and the terms of its rows (returned; they may include rows
        of claims that left the pass, whose terms are never read again)."""
        if 2 * self.dead[b] > self.srt_rows[b].shape[1]:
            self.compact(b)
        rows: IntArray
        if self.renyi:
            a = self.alpha[b] = self.choose_alpha(b)
            rows, d = self.srt_rows[b][a], self.srt_dem[b][a]
            av = float(self.avail[b, a])
            t = d / av if av > 0 else np.where(d > 0, np.inf, 0.0)
        else:
            rows = self.srt_rows[b][0]
            d2 = self.dem_c.take(rows, axis=0)
            t = np.zeros(rows.shape[0])
            for c in self.usable[b]:  # unusable columns serve nothing (a live claim asks 0 there)
                av = float(self.avail[b, c])
                dc = d2[:, c]
                np.maximum(t, dc / av if av > 0 else np.where(dc > 0, np.inf, 0.0), out=t)
        self.term[self.term_at.take(rows)] = t
        return rows

    def update(self, blocks: list[int]) -> None:
        """New snapshots of ``blocks`` (distinct) and new efficiencies of the live claims on them."""
        rows = [self.snapshot(b) for b in blocks]
        claims = self.owner.take(rows[0] if len(rows) == 1 else np.concatenate(rows))
        claims = claims[self.alive.take(claims)]
        if claims.shape[0]:
            self.rescore(claims)

    def rescore(self, claims: IntArray) -> None:
        """Efficiency ``w / Σ terms`` of the live ``claims`` (repeats allowed). The sum runs left to right over
        the claim's blocks in block order, starting from 0 — the same floating-point sum for any claim whatever
        else is rescored with it."""
        if self.dense:
            t = self.term.reshape(self.width, self.n).take(claims, axis=1)
            denom = t[0] + t[1] if self.width > 1 else t[0]
            for s in range(2, self.width):
                denom += t[s]  # zero slots past a claim's last block add nothing
        else:
            rows, local = _select(self.ptr_arr, self.lens, claims)
            denom = np.bincount(local, weights=self.term.take(rows), minlength=claims.shape[0])
        w = self.weight.take(claims)
        self.score[claims] = np.divide(w, denom, out=np.full(claims.shape[0], np.inf), where=denom > 0)

    # ----- the pass ---------------------------------------------------------------------------------------
    def start(self) -> list[int]:
        """The first snapshot of every block with candidates (which it returns)."""
        bptr = self.bptr
        blocks = [b for b in range(self.n_blocks) if bptr[b + 1] > bptr[b]]
        self.presort(blocks)
        for b in blocks:
            self.snapshot(b)
        self.rescore(np.arange(self.n, dtype=np.int64))
        return blocks

    def run(self, k: int) -> list[int]:
        """Grant in descending efficiency until no candidate is left; recompute every ``k`` grants.
        The scratch budget ``avail`` given at construction is updated in place."""
        self.start()
        score, owner, alive = self.score, self.owner, self.alive
        avail, tol, lim, dem_c = self.avail, self.tol, self.lim, self.dem_c
        ptr, blk = self.ptr, self.blk_list
        out: list[int] = []
        touched: set[int] = set()
        since = 0
        while True:
            i = int(score.argmax())
            if score[i] == -np.inf:
                break
            out.append(self.handles[i])
            self.granted.append(i)
            self.remove(i)
            r0, r1 = ptr[i], ptr[i + 1]
            blocks = blk[r0:r1]
            for r in range(r0, r1):
                b = blk[r]
                avail[b] -= dem_c[r]
                lim[b] = avail[b] + tol[b]
            # Candidates on the blocks that just shrank may no longer fit: out of the pass.
            for b in blocks:
                bad = self.misfits(b)
                if bad.shape[0]:
                    for c in set(owner.take(bad).tolist()):
                        if alive[c]:
                            self.remove(c)
            touched.update(blocks)
            since += 1
            if since >= k:
                self.update(sorted(touched))
                touched.clear()
                since = 0
        self.finish()
        return out

    def finish(self) -> None:
        """Take the granted demands out of the caller's full-width budget, grant after grant (the same
        sequence of subtractions as the working copy's)."""
        if not self.granted:
            return
        rows, _ = _select(self.ptr_arr, self.lens, np.asarray(self.granted, dtype=np.int64))
        np.subtract.at(self.full_avail, self.blk.take(rows), self.dem.take(rows, axis=0))


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
        tuples = [q.shares for q in live]
        n_shares = np.fromiter(map(len, tuples), dtype=np.int64, count=len(tuples))
        flat = np.fromiter(chain.from_iterable(tuples), dtype=np.float64, count=int(n_shares.sum()))
        shares = np.zeros((max(int(n_shares.max()), 1), len(tuples)))  # share position × claim
        at = np.arange(flat.shape[0]) - np.repeat(np.cumsum(n_shares) - n_shares, n_shares)
        shares[at, np.repeat(np.arange(len(tuples)), n_shares)] = flat
        order = np.lexsort((seq, *shares[::-1]))
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
    orders = {b: int(packing.cols[packing.alpha[b]]) for b in blocks}
    return PackingStart(orders, dict(zip(packing.handles, packing.score.tolist(), strict=True)))


class DPack(Policy):
    """DPack (Tholoniat et al., EuroSys'25): grant waiting claims in descending efficiency, weight over demand
    normalised by the available budget at each block's best Rényi order (module docstring).

    Parameters: ``k`` (recompute every k grants), ``unlocking`` (``all``: everything at block creation, the
    paper's offline setting; ``timed``: DPF-T's rule with ``T``, ``tick``, ``unlock``; ``arrival``: DPF-N's rule
    with ``N``). Parameters of an unlocking rule that is not selected are ignored.
    """

    name = "dpack"
    params: ClassVar[Mapping[str, Param]] = {
        "k": K_PARAM,
        "unlocking": Param(choice("unlocking", DPACK_UNLOCKS), "all", "unlocking: all (at creation), timed, arrival"),
        **TIMED_UNLOCK_PARAMS,
        **ARRIVAL_PARAMS,
    }

    @classmethod
    def active_params(cls, config: Mapping[str, Any]) -> set[str]:
        """``k``, ``unlocking`` and the chosen unlocking rule's parameters (:func:`unlock_active_params`)."""
        return unlock_active_params(config, {"k"}, cls.params["unlocking"].default)

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
