"""The batch simulator: a whole run of a greedy policy (DPF-N, DPF-T, DRF, FCFS) over columnar arrays.

The :class:`~dpf_sched.scheduler.Scheduler` is online: it reacts to one event at a time, as a service must.
A trace replay knows the future arrivals, so the same semantics (spec/dpf.md) can be computed with far less
work, by jumping from one instant where something *can* change to the next:

* **Unlocking is a known step function of time** (:class:`~dpf_sched.policies.base.UnlockSchedule`): a block's
  unlocked budget at time t is ``f_b(t)·G_b − S_b`` where ``S_b`` is what granted claims took. Unlock steps are
  never simulated one by one.
* **Each waiting claim watches one block on which it does not fit**; each block keeps the element-wise minimum
  (the *floor*) of its watchers' demands there. With ``S_b`` fixed, the first unlock step at which the floor
  could fit is computed in closed form (:meth:`UnlockSchedule.first_time`): that is the block's *wake time*,
  kept in a heap. Until then no watcher of the block can fit, so nothing about them is looked at. A grant
  raises ``S_b`` and only postpones wake times, so those of the blocks it touched are recomputed.
* **Arrivals are checked in vectorised batches**: while no grant happens the budget ``S`` is fixed, so for a
  batch of upcoming arrivals one numpy expression tells which fit at arrival, which can never fit, and when
  each of the others could first fit. Arrivals before the first one that fits (and before any wake) join the
  watch lists in bulk; the batch stops at the first instant where a pass can grant something.
* At such an instant the pass of spec/dpf.md runs over the candidates only (the arrivals of the instant and the
  watchers of the blocks that woke), in the policy's order: claims that fit are granted and consumed at once
  (the microbenchmarks' model), the others watch a block again.

Every claim that could fit at an instant is among the candidates of that instant, and candidates are tried in
the same order against the same budget, so the grants (who and when) are exactly those of the online
scheduler; ``tests/test_engine_equivalence.py`` checks that on random traces for every supported policy, with
every claim's final status. Claims that can never be granted are told "never" at arrival, as online; a claim
that becomes impossible later waits until its timeout in both engines.
"""

from __future__ import annotations

import heapq
import logging
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dpf_sched.composition import REL_TOL, Composition
from dpf_sched.errors import InvalidParameterError, InvalidStateError
from dpf_sched.policies.base import GreedyPlan, Policy, Unlocker, UnlockSchedule
from dpf_sched.sim.table import SimInput

logger = logging.getLogger(__name__)

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]

#: Claim status codes of :class:`EngineResult`.
WAITING, GRANTED, REJECTED = 0, 1, 2
#: Rejection reasons of :class:`EngineResult` (index into :data:`REASONS`).
REASONS = (
    "",
    "timeout",
    "demand exceeds what a block can ever provide",
    "does not fit at arrival",
)
_TIMEOUT, _NEVER_AT_ARRIVAL, _MISFIT = 1, 2, 3

#: Conservative margin on the fraction a claim needs (an early wake is re-checked; a late one would be a bug).
_NEED_MARGIN = 1e-12


@dataclass
class EngineResult:
    """Per-claim outcome arrays and the final per-block budget of one batch run."""

    status: NDArray[np.int8]
    reason: NDArray[np.int8]
    granted_at: FloatArray
    decided_at: FloatArray
    end_time: float
    fraction: FloatArray
    consumed: FloatArray


def batch_plan(policy: Policy, inp: SimInput) -> tuple[GreedyPlan, UnlockSchedule] | None:
    """The plan and unlock schedule to run ``policy`` in batch, or ``None`` when it needs the online path."""
    plan = policy.batch_plan()
    if plan is None:
        return None
    claims = inp.claims
    row_times = np.repeat(claims.arrival, claims.n_blocks)
    sched = policy.unlocker.schedule(inp.blocks.created, claims.block, row_times)
    if sched is None:
        return None
    return plan, sched


def claim_rank(order: str, comp: Composition, inp: SimInput) -> IntArray:
    """Every claim's position in the policy's order of consideration (smaller first), as one integer.

    ``shares`` sorts each claim's per-block shares in descending order (the lexicographic tie-break; missing
    shares count as 0, like the dropped trailing zeros of the online key), then by arrival; ``dominant`` uses
    the largest share then arrival; ``arrival`` is submission order.
    """
    claims = inp.claims
    n = len(claims)
    seq = np.arange(n, dtype=np.int64)
    if order == "arrival":
        return seq
    if order not in ("shares", "dominant"):
        raise InvalidParameterError(f"unknown batch order {order!r}")
    # Per-row shares, in chunks: a gathered capacity row per (claim, block) pair would double the peak memory.
    share = np.empty(claims.block.shape[0])
    step = 1 << 17
    for lo in range(0, share.shape[0], step):
        hi = lo + step
        share[lo:hi] = comp.shares(claims.demand[lo:hi], inp.blocks.capacity[claims.block[lo:hi]])
    counts = claims.n_blocks
    if n == 0:
        return seq
    if order == "dominant":
        dom = np.maximum.reduceat(share, claims.ptr[:-1])
        keys: list[NDArray[np.float64] | IntArray] = [seq, dom]
    else:
        width = int(counts.max())
        mat = np.zeros((n, width))
        owner = np.repeat(seq, counts)
        col = np.arange(share.shape[0]) - np.repeat(claims.ptr[:-1], counts)
        mat[owner, col] = share
        mat = -np.sort(-mat, axis=1)
        keys = [seq, *[mat[:, j] for j in range(width - 1, -1, -1)]]
    order_idx = np.lexsort(keys)
    rank = np.empty(n, dtype=np.int64)
    rank[order_idx] = seq
    return rank


@dataclass
class _Group:
    """The watchers of one woken block that fit there, in rank order, with their suffix floors."""

    block: int
    frac: float
    claims: list[int]
    suffix: list[list[float]]


class _Run:
    """The state of one batch run (arrays indexed by claim, row or block)."""

    def __init__(self, inp: SimInput, plan: GreedyPlan, sched: UnlockSchedule, end: float) -> None:
        self.comp = inp.composition
        self.renyi = self.comp.name == "renyi"
        self.plan = plan
        self.sched = sched
        self.end = end
        c = inp.claims
        self.n = len(c)
        self.t = c.arrival
        self.dl = c.deadline
        self.timeouts = bool(np.isfinite(self.dl).any())
        self.ptr = c.ptr
        self.rb = c.block
        self.D = c.demand
        self.G = inp.blocks.capacity
        self.created = inp.blocks.created
        nb = self.G.shape[0]
        self.tol = self.G * REL_TOL
        self.usable = self.G > 0
        safe = np.where(self.usable, self.G, 1.0)
        self.invG = np.where(self.usable, 1.0 / safe, 0.0)
        # Python-list mirrors of the per-block rows: one claim's check on a few short rows is several times
        # faster in plain float arithmetic than through numpy calls. ``S_py`` is refreshed from ``S`` on grants,
        # so both always hold the same numbers.
        self.G_py: list[list[float]] = self.G.tolist()
        self.tol_py: list[list[float]] = self.tol.tolist()
        self.invG_py: list[list[float]] = self.invG.tolist()
        self.pair = not self.renyi and self.G.shape[1] == 2
        self.rank = claim_rank(plan.order, self.comp, inp)
        self.row_claim = np.repeat(np.arange(self.n, dtype=np.int64), c.n_blocks)
        self.frac_arr = sched.fraction(self.rb, self.t[self.row_claim]) if self.n else np.zeros(0)
        self.S = np.zeros_like(self.G)
        self.S_py: list[list[float]] = self.S.tolist()
        self.status = np.zeros(self.n, dtype=np.int8)
        self.reason = np.zeros(self.n, dtype=np.int8)
        self.granted_at = np.full(self.n, np.nan)
        self.decided_at = np.full(self.n, np.nan)
        # Watch lists: per block the claims watching it (lazily cleaned), per claim the watched row.
        self.watchers: list[list[int]] = [[] for _ in range(nb)]
        self.watch_row = np.full(self.n, -1, dtype=np.int64)
        # Per block, the last examined watchers (rank order, rows, demand rows) and the watch-list version it
        # was built at; a join bumps the version, so a cache is reused only while nobody joined.
        self.wver: list[int] = [0] * nb
        self.wcache: list[tuple[IntArray, IntArray, FloatArray, int] | None] = [None] * nb
        self.floor = np.full_like(self.G, np.inf)
        self.wake = np.full(nb, np.inf)
        self.heap: list[tuple[float, int]] = []

    # ----- budget arithmetic (the same comparisons as Composition.fits, on f·G − S) ----------------------------
    def _fit_rows(self, rows: IntArray, frac: FloatArray) -> NDArray[np.bool_]:
        b = self.rb[rows]
        avail = frac[:, None] * self.G[b] - self.S[b]
        ok = self.D[rows] <= avail + self.tol[b]
        if self.renyi:
            return np.logical_or.reduce(ok & self.usable[b], axis=1)  # type: ignore[no-any-return]
        return np.logical_and.reduce(ok, axis=1)  # type: ignore[no-any-return]

    def _fit_slice(self, lo: int, hi: int, frac: FloatArray) -> NDArray[np.bool_]:
        """:meth:`_fit_rows` for the rows ``lo:hi`` of one claim (views instead of gathers)."""
        b = self.rb[lo:hi]
        ok = self.D[lo:hi] <= frac[:, None] * self.G[b] - self.S[b] + self.tol[b]
        if self.renyi:
            return np.logical_or.reduce(ok & self.usable[b], axis=1)  # type: ignore[no-any-return]
        return np.logical_and.reduce(ok, axis=1)  # type: ignore[no-any-return]

    # The same three questions on one row, in plain floats (same operations, same order, same results).
    def _fit_py(self, row: list[float], b: int, f: float) -> bool:
        G, S, tol = self.G_py[b], self.S_py[b], self.tol_py[b]
        if self.pair:  # basic (ε, δ): the two comparisons written out
            return row[0] <= f * G[0] - S[0] + tol[0] and row[1] <= f * G[1] - S[1] + tol[1]
        if self.renyi:
            return any(g > 0 and d <= f * g - s + t for d, g, s, t in zip(row, G, S, tol, strict=True))
        return all(d <= f * g - s + t for d, g, s, t in zip(row, G, S, tol, strict=True))

    def _possible_py(self, row: list[float], b: int) -> bool:
        G, S, tol = self.G_py[b], self.S_py[b], self.tol_py[b]
        if self.renyi:
            return any(g > 0 and d <= (g - s) + t for d, g, s, t in zip(row, G, S, tol, strict=True))
        return all(d <= (g - s) + t for d, g, s, t in zip(row, G, S, tol, strict=True))

    def _need_py(self, row: list[float], b: int) -> float:
        G, S, inv = self.G_py[b], self.S_py[b], self.invG_py[b]
        if self.pair and G[0] > 0 and G[1] > 0:  # basic (ε, δ) with both capacities positive, written out
            return max((row[0] + S[0]) * inv[0], (row[1] + S[1]) * inv[1]) - REL_TOL - _NEED_MARGIN
        if self.renyi:
            need = min([(d + s) * i for d, g, s, i in zip(row, G, S, inv, strict=True) if g > 0], default=math.inf)
            return need - REL_TOL - _NEED_MARGIN
        worst = -math.inf
        for d, g, s, i in zip(row, G, S, inv, strict=True):
            x = (d + s) * i - REL_TOL if g > 0 else (-math.inf if d + s <= 0 else math.inf)
            worst = max(worst, x)
        return worst - _NEED_MARGIN

    def _arrive_one(self, i: int, tb: float) -> int:
        """Arrival ``i`` (before the next block wake ``tb``) on its own, in plain floats.

        Returns 0 when it needs the instant's full pass (it fits, and another arrival shares its instant),
        1 when it was settled without a grant (rejected, or waiting on a block), 2 when it was granted.
        """
        lo, hi = int(self.ptr[i]), int(self.ptr[i + 1])
        t = float(self.t[i])
        rb, D, frac = self.rb, self.D, self.frac_arr
        rows = [(int(rb[r]), D[r].tolist(), float(frac[r])) for r in range(lo, hi)]
        if not all(self._possible_py(row, b) for b, row, _ in rows):
            self._reject(np.array([i]), np.array([t]), _NEVER_AT_ARRIVAL)
            return 1
        fit = [self._fit_py(row, b, f) for b, row, f in rows]
        if all(fit):
            if i + 1 < self.n and self.t[i + 1] == t:
                return 0
            self._grant(i, t)
            return 2
        if self.plan.reject_misfits_on_arrival:
            self._reject(np.array([i]), np.array([t]), _MISFIT)
            return 1
        w, row_w = -math.inf, -1
        first_time_at = self.sched.first_time_at
        for r, (b, row, _), ok in zip(range(lo, hi), rows, fit, strict=True):
            if not ok:
                x = first_time_at(b, self._need_py(row, b), t)
                if x > w:
                    w, row_w = x, r
        if w >= self.dl[i] or math.isinf(w):
            self._give_up(np.array([i], dtype=np.int64), np.array([w]))
        else:
            self._watch_one(i, row_w, w)
        return 1

    def _possible_slice(self, lo: int, hi: int) -> NDArray[np.bool_]:
        b = self.rb[lo:hi]
        return self.comp.possible(self.D[lo:hi], self.S[b], self.G[b])

    def _possible_rows(self, rows: IntArray) -> NDArray[np.bool_]:
        b = self.rb[rows]
        return self.comp.possible(self.D[rows], self.S[b], self.G[b])

    def _need(self, dem: FloatArray, b: IntArray) -> FloatArray:
        """Per row: the unlocked fraction of block ``b`` from which ``dem`` could fit, given today's ``S``.

        ``d ≤ f·G − S + tol·G`` ⇔ ``f ≥ (d + S)/G − tol`` at a column with ``G > 0``. Basic needs every column
        (a zero-capacity column fits only if ``d + S ≤ 0``); Rényi needs one usable order.
        """
        s = self.S[b]
        ratio = (dem + s) * self.invG[b] - REL_TOL
        usable = self.usable[b]
        if self.renyi:
            need = np.where(usable, ratio, np.inf).min(axis=1)
        else:
            zero_ok = dem + s <= 0
            need = np.where(usable, ratio, np.where(zero_ok, -np.inf, np.inf)).max(axis=1)
        return need - _NEED_MARGIN  # type: ignore[no-any-return]

    # ----- watch lists and block wake-ups ----------------------------------------------------------------------
    def _wake_from_floor(self, b: int, now: float) -> None:
        """Set block ``b``'s wake time from its floor and today's ``S`` (the first step after ``now``)."""
        floor = self.floor[b]
        if floor[0] == math.inf and not np.isfinite(floor).any():
            self.wake[b] = math.inf
            return
        w = self.sched.first_time_at(b, self._need_py(floor.tolist(), b), now)
        self.wake[b] = w
        if w <= self.end:
            heapq.heappush(self.heap, (w, b))

    def _watch_many(self, claims: IntArray, rows: IntArray, times: FloatArray) -> None:
        """``claims[i]`` waits on the block of row ``rows[i]`` and cannot fit before ``times[i]``.

        A block's wake time is a lower bound of its watchers' first possible fit, so a new watcher can only
        bring it forward (to its own time). Grants never bring it forward (they only take budget), so they do
        not touch wake times at all: a block whose wake comes and whose floor no longer fits just computes a
        later one (:meth:`_due`).
        """
        self.watch_row[claims] = rows
        blocks = self.rb[rows]
        np.minimum.at(self.floor, blocks, self.D[rows])
        watchers, wake, heap, end = self.watchers, self.wake, self.heap, self.end
        wver = self.wver
        for k, b, w in zip(claims.tolist(), blocks.tolist(), times.tolist(), strict=True):
            watchers[b].append(k)
            wver[b] += 1
            if w < wake[b]:
                wake[b] = w
                if w <= end:
                    heapq.heappush(heap, (w, b))

    def _watch_one(self, k: int, row: int, w: float) -> None:
        """:meth:`_watch_many` for one claim."""
        self.watch_row[k] = row
        b = int(self.rb[row])
        np.minimum(self.floor[b], self.D[row], out=self.floor[b])
        self.watchers[b].append(k)
        self.wver[b] += 1
        if w < self.wake[b]:
            self.wake[b] = w
            if w <= self.end:
                heapq.heappush(self.heap, (w, b))

    def _due(self, b: int, now: float) -> _Group | None:
        """Block ``b``'s wake time has come: examine it if its floor fits now, else compute a later wake."""
        frac_b = self.sched.fraction_at(b, now)
        if self._fits_block(b, frac_b, self.floor[b]):
            group = self._examine(b, now, frac_b)
            self._wake_from_floor(b, now)
            return group
        self._wake_from_floor(b, now)
        return None

    def _examine(self, b: int, now: float, frac_b: float) -> _Group | None:
        """Block ``b`` woke: its live watchers that fit there now, in the policy's order, as one group.

        Every live watcher keeps watching ``b`` (those that get granted or move are dropped lazily), and the
        block's floor is tightened to its live watchers. Short watch lists are handled in plain floats.
        """
        if len(self.watchers[b]) <= 8:
            return self._examine_few(b, now, frac_b)
        listed = self.watchers[b]
        cache = self.wcache[b]
        if cache is not None and cache[3] == self.wver[b]:
            # Nobody joined since the last look: the same claims, already in rank order, minus those that left.
            ks, rows, dem, _ = cache
            live = (self.status[ks] == WAITING) & (self.watch_row[ks] == rows)
            stale = not live.all()
            if stale:
                ks, rows, dem = ks[live], rows[live], dem[live]
        else:
            if len(set(listed)) != len(listed):  # a claim that left this block and came back: keep one entry
                listed = list(dict.fromkeys(listed))
            ks = np.array(listed, dtype=np.int64)
            rows = self.watch_row[ks]
            # rb[-1] is some row's block; the (rows >= 0) term masks it out.
            live = (self.status[ks] == WAITING) & (self.rb[rows] == b) & (rows >= 0)
            ks, rows = ks[live], rows[live]
            order = np.argsort(self.rank[ks], kind="stable")
            ks, rows = ks[order], rows[order]
            dem = self.D[rows]
            stale = True
        if self.timeouts:
            expired = self.dl[ks] <= now
            if expired.any():  # timed out while waiting here (the deadline passed before this instant)
                self._reject(ks[expired], self.dl[ks[expired]], _TIMEOUT)
                self.watch_row[ks[expired]] = -1
                ks, rows, dem = ks[~expired], rows[~expired], dem[~expired]
                stale = True
        if stale:
            self.watchers[b] = ks.tolist()
            self.floor[b] = dem.min(axis=0) if ks.size else np.inf
        self.wcache[b] = (ks, rows, dem, self.wver[b])
        if not ks.size:
            return None
        # Every row is on block b: one available row, broadcast (same expression as _fit_rows).
        ok = dem <= frac_b * self.G[b] - self.S[b] + self.tol[b]
        fit = (ok & self.usable[b]).any(axis=1) if self.renyi else ok.all(axis=1)
        if not fit.any():
            return None
        ks, dem = ks[fit], dem[fit]
        suffix = np.minimum.accumulate(dem[::-1], axis=0)[::-1]
        return _Group(b, frac_b, ks.tolist(), suffix.tolist())

    def _examine_few(self, b: int, now: float, frac_b: float) -> _Group | None:
        """:meth:`_examine` for a short watch list, without numpy calls."""
        self.wcache[b] = None
        status, watch_row, rb, dl, D = self.status, self.watch_row, self.rb, self.dl, self.D
        keep: list[int] = []
        rows: list[list[float]] = []
        for k in dict.fromkeys(self.watchers[b]):  # once each, even if it left this block and came back
            r = int(watch_row[k])
            if status[k] != WAITING or r < 0 or rb[r] != b:
                continue  # granted, rejected or moved to another block since
            if dl[k] <= now:  # timed out while waiting here
                self._reject(np.array([k]), np.array([dl[k]]), _TIMEOUT)
                watch_row[k] = -1
                continue
            keep.append(k)
            rows.append(D[r].tolist())
        self.watchers[b] = keep
        if not keep:
            self.floor[b] = np.inf
            return None
        self.floor[b] = [min(col) for col in zip(*rows, strict=True)]
        rank = self.rank
        fit = sorted((int(rank[k]), k, row) for k, row in zip(keep, rows, strict=True) if self._fit_py(row, b, frac_b))
        if not fit:
            return None
        suffix: list[list[float]] = []
        low = [math.inf] * len(rows[0])
        for _, _, row in reversed(fit):
            low = [min(x, y) for x, y in zip(low, row, strict=True)]
            suffix.append(low)
        suffix.reverse()
        return _Group(b, frac_b, [k for _, k, _ in fit], suffix)

    def _fits_block(self, b: int, frac_b: float, row: FloatArray) -> bool:
        """Does ``row`` fit in block ``b``'s unlocked budget now (fraction ``frac_b``)?"""
        return self._fit_py(row.tolist(), b, frac_b)

    def _reject(self, claims: IntArray, when: FloatArray, reason: int) -> None:
        self.status[claims] = REJECTED
        self.reason[claims] = reason
        self.decided_at[claims] = when

    # ----- one claim that did not fit: where and until when it waits -------------------------------------------
    def _settle(self, k: int, now: float, fit: NDArray[np.bool_]) -> None:
        """Claim ``k`` does not fit at ``now`` (``fit`` per row): watch the block where it can fit last.

        That is the block whose first unlock step that could fit it (with today's ``S``) comes latest; no
        earlier step can grant the claim. It times out instead when that step is after its deadline.
        """
        lo = int(self.ptr[k])
        if fit.shape[0] * self.G.shape[1] <= 64:
            w, row = -math.inf, -1
            rb, D, first_time_at = self.rb, self.D, self.sched.first_time_at
            for r in (lo + np.flatnonzero(~fit)).tolist():
                b0 = int(rb[r])
                x = first_time_at(b0, self._need_py(D[r].tolist(), b0), now)
                if x > w:
                    w, row = x, r
        else:
            mis = lo + np.flatnonzero(~fit)
            b = self.rb[mis]
            times = self.sched.first_time(b, self._need(self.D[mis], b), np.full(b.shape, now))
            j = int(times.argmax())
            w = float(times[j])
            row = int(mis[j])
        if w >= self.dl[k] or math.isinf(w):
            # It cannot fit before its deadline: it times out then (or waits to the end without one).
            self._give_up(np.array([k], dtype=np.int64), np.array([w]))
            return
        old = int(self.watch_row[k])
        if old >= 0 and self.rb[old] == self.rb[row]:
            return  # already watching that block (its floor already covers the demand)
        self._watch_one(k, row, w)

    def _give_up(self, claims: IntArray, wake: FloatArray) -> None:
        """Claims that cannot fit before their deadline: rejected at the deadline if it falls in the run."""
        dl = self.dl[claims]
        due = (dl <= self.end) & np.isfinite(dl)
        self._reject(claims[due], dl[due], _TIMEOUT)
        # The others stay WAITING with no watch: nothing in the run can grant them.
        self.watch_row[claims] = -1

    # ----- passes ----------------------------------------------------------------------------------------------
    def _grant(self, k: int, now: float) -> None:
        lo, hi = int(self.ptr[k]), int(self.ptr[k + 1])
        b = self.rb[lo:hi]
        # Booked as the ledger books it: saturated at 2 × capacity per column (docs/ledger.md, "Saturation"). A
        # saturated column is over the capacity either way, so no decision changes, and the buckets match.
        self.S[b] += np.minimum(self.D[lo:hi], 2.0 * self.G[b])
        S, S_py = self.S, self.S_py
        for x in b.tolist():
            S_py[x] = S[x].tolist()
        self.status[k] = GRANTED
        self.granted_at[k] = now
        self.decided_at[k] = now

    def _pass(self, now: float, arrivals: list[int], groups: list[_Group]) -> None:
        """The pass of spec/dpf.md over the candidates of one instant.

        Candidates are the instant's arrivals and, per block that woke, its watchers that fit there, each group
        in the policy's order; the groups are merged by rank. Grants only shrink the unlocked budget, so once a
        block cannot fit the smallest demand left in its group (the suffix floor), the rest of that group is
        skipped: they keep watching the block, unexamined.
        """
        rank = self.rank
        if not arrivals and len(groups) == 1:
            g = groups[0]
            for pos, k in enumerate(g.claims):
                if not self._fit_py(g.suffix[pos], g.block, g.frac):
                    break
                self._try(k, now, False)
            return
        if len(arrivals) > 1:
            arrivals.sort(key=lambda k: int(rank[k]))
        heads: list[tuple[int, int, int]] = []
        if arrivals:
            heads.append((int(rank[arrivals[0]]), -1, 0))
        for gid, g in enumerate(groups):
            heads.append((int(rank[g.claims[0]]), gid, 0))
        heapq.heapify(heads)
        while heads:
            _, gid, pos = heapq.heappop(heads)
            if gid < 0:
                k = arrivals[pos]
                if pos + 1 < len(arrivals):
                    heapq.heappush(heads, (int(rank[arrivals[pos + 1]]), -1, pos + 1))
            else:
                g = groups[gid]
                if not self._fit_py(g.suffix[pos], g.block, g.frac):
                    continue
                if pos + 1 < len(g.claims):
                    heapq.heappush(heads, (int(rank[g.claims[pos + 1]]), gid, pos + 1))
                k = g.claims[pos]
            self._try(k, now, gid < 0)

    def _try(self, k: int, now: float, arrival: bool) -> None:
        """One candidate of a pass: grant it if it fits everywhere now; else reject (FCFS) or let it wait."""
        if self.status[k] != WAITING:
            raise InvalidStateError(f"batch engine: claim index {k} was offered twice in one pass (a bug)")
        lo, hi = int(self.ptr[k]), int(self.ptr[k + 1])
        blocks = self.rb[lo:hi].tolist()
        fraction_at = self.sched.fraction_at
        fl = self.frac_arr[lo:hi].tolist() if arrival else [fraction_at(b, now) for b in blocks]
        if (hi - lo) * self.G.shape[1] <= 64:
            D = self.D
            fit = np.array(
                [self._fit_py(D[r].tolist(), b, f) for r, b, f in zip(range(lo, hi), blocks, fl, strict=True)]
            )
        else:
            fit = self._fit_slice(lo, hi, np.array(fl))
        if bool(fit.all()):
            self._grant(k, now)
        elif arrival and self.plan.reject_misfits_on_arrival:
            self._reject(np.array([k]), np.array([now]), _MISFIT)
        elif not arrival and not bool(fit[int(self.watch_row[k]) - lo]):
            return  # an earlier grant of this pass took what it needed on its block: it keeps watching
        else:
            self._settle(k, now, fit)

    # ----- arrivals in batches ---------------------------------------------------------------------------------
    def _batch(self, i: int, j: int, tb: float) -> int:
        """Look at arrivals ``i..j-1`` (all before the next block wake ``tb``) with today's ``S``.

        Commits, in bulk, every arrival before the first instant at which something can be granted (an arrival
        that fits, or the first possible fit of one of these arrivals). If that instant is a lone arrival that
        fits (no other arrival at the same time, before ``tb``), it is granted here too. Returns the index of the
        first arrival not yet handled.
        """
        ptr = self.ptr
        lo, hi = int(ptr[i]), int(ptr[j])
        rows = np.arange(lo, hi, dtype=np.int64)
        counts = np.diff(ptr[i : j + 1])
        starts = ptr[i:j] - lo
        fit_row = self._fit_rows(rows, self.frac_arr[lo:hi])
        fits = np.logical_and.reduceat(fit_row, starts)
        possible = np.logical_and.reduceat(self._possible_rows(rows), starts)
        t = self.t[i:j]
        event = math.inf
        cand = np.flatnonzero(fits & possible)
        if cand.size:
            event = float(t[cand[0]])
        reject_misfits = self.plan.reject_misfits_on_arrival
        waits = possible & ~fits
        first = wake = None
        first_wake = math.inf
        if not reject_misfits and waits[: cand[0] if cand.size else None].any():
            # Rows that misfit: when could each first fit (with today's S)? A claim waits for its latest row.
            b = self.rb[rows]
            first = np.where(fit_row, -np.inf, np.inf)
            mis = ~fit_row
            first[mis] = self.sched.first_time(b[mis], self._need(self.D[rows[mis]], b[mis]), np.repeat(t, counts)[mis])
            wake = np.maximum.reduceat(first, starts)
            first_wake = float(wake[waits].min())
            event = min(event, first_wake)
        m = int(np.searchsorted(t, event, side="left"))  # arrivals strictly before the event instant
        if m:
            ks = np.arange(i, i + m, dtype=np.int64)
            never = ~possible[:m]
            if never.any():
                self._reject(ks[never], t[:m][never], _NEVER_AT_ARRIVAL)
            waiting = waits[:m]
            if waiting.any():
                if reject_misfits:
                    self._reject(ks[waiting], t[:m][waiting], _MISFIT)
                else:
                    assert wake is not None and first is not None
                    kw = ks[waiting]
                    w = wake[:m][waiting]
                    dead = (w >= self.dl[kw]) | np.isinf(w)
                    if dead.any():
                        self._give_up(kw[dead], w[dead])
                    if not dead.all():
                        # The watched row: the latest-fitting row of each claim.
                        end_row = int(starts[m]) if m < starts.shape[0] else first.shape[0]
                        best = self._argmax_rows(first[:end_row], starts[:m], counts[:m])
                        live = ~dead
                        self._watch_many(kw[live], (lo + best)[waiting][live], w[live])
        e = i + m
        lone = m < t.shape[0] and cand.size and cand[0] == m and event == t[m] and event < min(tb, first_wake)
        if lone and (e + 1 >= self.n or self.t[e + 1] != event):
            # The lone arrival of its instant, and it fits: the pass of that instant grants it and nothing else
            # (no block wakes then, and the budget only shrinks).
            self._grant(e, event)
            return e + 1
        return e

    @staticmethod
    def _argmax_rows(values: FloatArray, starts: IntArray, counts: IntArray) -> IntArray:
        """Per segment, the offset (from the batch start) of its largest value (first on ties)."""
        if bool((counts == 1).all()):
            return starts
        seg_max = np.maximum.reduceat(values, starts)
        owner = np.repeat(np.arange(starts.shape[0]), counts)
        hit = np.flatnonzero(values == seg_max[owner])
        first_hit = np.full(starts.shape[0], -1, dtype=np.int64)
        first_hit[owner[hit][::-1]] = hit[::-1]
        return first_hit

    # ----- the run ---------------------------------------------------------------------------------------------
    def run(self) -> None:
        """Advance from instant to instant until nothing can change before the end."""
        n, t, heap, wake = self.n, self.t, self.heap, self.wake
        i = 0
        size = 32  # batch size in quiet stretches
        quiet = 0  # arrivals since the last grant
        while True:
            while heap and heap[0][0] != wake[heap[0][1]]:
                heapq.heappop(heap)  # stale: the block's wake time was recomputed since
            tb = heap[0][0] if heap else math.inf
            ta = float(t[i]) if i < n else math.inf
            now = min(ta, tb)
            if now > self.end or math.isinf(now):
                break
            groups: list[_Group] = []
            if tb <= ta:
                # Blocks due now: those whose floor fits give a group of candidates; the others (a grant took
                # what their watchers needed) just compute a later wake, and nothing happens at this instant.
                while heap and heap[0][0] == tb:
                    w, b = heapq.heappop(heap)
                    if w != wake[b]:
                        continue
                    wake[b] = math.inf
                    group = self._due(b, tb)
                    if group is not None:
                        groups.append(group)
                if not groups:
                    continue
            elif quiet < 16 or (i + 8 < n and t[i + 8] >= tb) or i + 8 >= n:
                # Grants are frequent, or a block wakes within the next few arrivals: one arrival at a time in
                # plain floats beats a vectorised batch.
                done = self._arrive_one(i, tb)
                if done:
                    i += 1
                    quiet = quiet + 1 if done == 1 else 0
                    continue
            else:
                # A quiet stretch (arrivals that only wait or are rejected): check them in vectorised batches.
                j = min(n, i + size, int(np.searchsorted(t, tb, side="left")))
                i2 = self._batch(i, j, tb)
                if i2 >= j:
                    size = min(4096, 2 * size)
                else:
                    size, quiet = 32, 0
                if i2 > i:
                    i = i2
                    continue
            # One instant: every arrival at `now` and the groups of the blocks due now.
            arrivals: list[int] = []
            while i < n and t[i] == now:
                if bool(self._possible_slice(int(self.ptr[i]), int(self.ptr[i + 1])).all()):
                    arrivals.append(i)
                else:
                    self._reject(np.array([i]), np.array([now]), _NEVER_AT_ARRIVAL)
                i += 1
            self._pass(now, arrivals, groups)

    def finish(self, end_given: bool) -> EngineResult:
        """Settle the claims still waiting, check the guarantee, and return the outcome.

        Without an end time the run ends at its last change: the last trace event, decision (grants, rejections,
        timeouts) or unlock step, as for the online replay.
        """
        waiting = np.flatnonzero(self.status == WAITING)
        due = waiting[(self.dl[waiting] <= self.end) & np.isfinite(self.dl[waiting])]
        self._reject(due, self.dl[due], _TIMEOUT)
        if end_given:
            end_time = self.end
        else:
            times = [self.sched.last_step()]
            if self.n:
                times.append(float(self.t[-1]))
            if self.created.size:
                times.append(float(self.created.max()))
            if self.n and not bool(np.isnan(self.decided_at).all()):
                times.append(float(np.nanmax(self.decided_at)))
            finite = [x for x in times if math.isfinite(x)]
            end_time = max(finite) if finite else 0.0
        within = self.comp.within(self.S, self.G)
        if not bool(within.all()):
            bad = int(np.argmin(within))
            raise InvalidStateError(f"batch run overspent block index {bad}: this is a bug, please report it")
        fraction = self.sched.fraction(np.arange(self.G.shape[0]), np.full(self.G.shape[0], end_time))
        return EngineResult(self.status, self.reason, self.granted_at, self.decided_at, end_time, fraction, self.S)


def supports(policy: Policy) -> bool:
    """Whether ``policy`` can run in batch: it has a plan and its unlocker can describe itself as a schedule."""
    return policy.batch_plan() is not None and type(policy.unlocker).schedule is not Unlocker.schedule


def simulate(inp: SimInput, policy: Policy) -> EngineResult | None:
    """Run ``policy`` over ``inp`` in batch; ``None`` if the policy has no batch plan (use the scheduler)."""
    if inp.composition.name == "renyi" and not policy.supports_renyi:
        raise InvalidParameterError(f"policy {policy.name} supports basic composition only")
    planned = batch_plan(policy, inp)
    if planned is None:
        return None
    plan, sched = planned
    end = inp.end if inp.end is not None else math.inf
    run = _Run(inp, plan, sched, end)
    run.run()
    return run.finish(inp.end is not None)
