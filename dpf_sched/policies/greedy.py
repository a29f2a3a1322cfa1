"""The shared greedy pass of FCFS, DRF and DPF: grant waiting claims in order while they fit.

Best effort (the paper): claims are tried in :meth:`Policy.sort_key` order; a claim that fits is granted and
the pass goes on past claims that do not. Only claims that could have become grantable are examined. Each
waiting claim *watches* one block on which it does not fit (the first such block found); since budget only
grows by unlocks and releases, the claim cannot fit again until that block gains unlocked budget. A pass
therefore looks only at the claims watching a block that gained budget and whose demand there now fits (one
vectorised comparison per such block), re-checks them on all their blocks, and moves the ones that still do
not fit to the block that now stops them. Grants only shrink the unlocked budget, so a claim that does not fit
at the start of a pass cannot fit later in it: the fitting candidates are sorted once and granted against a
scratch copy of the unlocked budget; those overtaken by earlier grants watch the block that stops them.

Strict (the artifact simulator's variant): the pass walks *all* waiting claims in order and stops at the first
that does not fit; a heap keyed by the sort key keeps that walk proportional to the grants.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from dpf_sched.composition import Composition
from dpf_sched.policies.base import Decision, PassContext, Policy, Verdict
from dpf_sched.queue import BlockEntries, QueuedClaim

FloatArray = NDArray[np.float64]


class WatchIndex:
    """For each waiting claim, the one block it waits on; per block, the watchers' demands there."""

    def __init__(self) -> None:
        self._blocks: list[BlockEntries] = []
        self._where = np.full(1024, -1, dtype=np.int64)  # handle → watched block, -1 when not watching

    def __contains__(self, handle: object) -> bool:
        return isinstance(handle, int) and handle < self._where.shape[0] and self._where[handle] >= 0

    def watch(self, q: QueuedClaim, pos: int) -> None:
        """Make ``q`` wait on its ``pos``-th block."""
        h = q.handle
        if h >= self._where.shape[0]:
            where = np.full(max(2 * self._where.shape[0], h + 1), -1, dtype=np.int64)
            where[: self._where.shape[0]] = self._where
            self._where = where
        self.unwatch(h)
        b = int(q.idx[pos])
        while len(self._blocks) <= b:
            self._blocks.append(BlockEntries(q.demand.shape[1]))
        self._blocks[b].append(h, q.demand[pos])
        self._where[h] = b

    def unwatch(self, handle: int) -> None:
        """Forget a claim (woken, granted or gone)."""
        if handle >= self._where.shape[0]:
            return
        b = int(self._where[handle])
        if b >= 0:
            self._where[handle] = -1
            self._blocks[b].dropped(self._where, b)

    def block_of(self, handle: int) -> int:
        """The block ``handle`` watches, or -1."""
        return int(self._where[handle]) if handle < self._where.shape[0] else -1

    def fitting(self, block: int, available: FloatArray, capacity: FloatArray, comp: Composition) -> list[int]:
        """Handles watching ``block`` whose demand there fits in ``available`` (one row)."""
        if block >= len(self._blocks):
            return []
        buf = self._blocks[block]
        if buf.live == 0:
            return []
        h = buf.handles[: buf.n]
        ok = (self._where[h] == block) & comp.fits(buf.dem[: buf.n], available[None, :], capacity[None, :])
        out: list[int] = h[ok].tolist()
        return out


def first_misfit(q: QueuedClaim, avail: FloatArray, cap: FloatArray, comp: Composition) -> int:
    """Position in ``q.idx`` of the block on which ``q`` is furthest from fitting, or -1 if it fits everywhere.

    Waiting on the block that is furthest from fitting wakes the claim less often than waiting on any misfit.
    """
    gap = comp.shortfall(q.demand, avail[q.idx], cap[q.idx])
    worst = int(gap.argmax())
    return worst if gap[worst] > 0 else -1


class GreedyPolicy(Policy):
    """A policy whose pass is the greedy pass above; subclasses choose unlocking, order and misfit handling."""

    #: Reject an arriving claim that does not fit at once (FCFS) instead of letting it wait.
    reject_misfits_on_arrival: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._heap: list[tuple[Any, int]] = []
        self._watches = WatchIndex()
        self._keys: dict[int, Any] = {}

    @property
    def strict(self) -> bool:
        """Whether a pass stops at the first claim that does not fit."""
        return bool(self.config.get("strict", False))

    def forget(self, handle: int) -> None:
        self._watches.unwatch(handle)
        self._keys.pop(handle, None)

    def schedule(self, ctx: PassContext) -> list[Decision]:
        if self.strict:
            return self._strict_pass(ctx)
        ledger = ctx.ledger
        comp = ledger.composition
        U = ledger.unlocked
        cap = ledger.capacity
        queue = ctx.queue
        watches = self._watches
        keys = self._keys
        for q in ctx.arrivals:
            keys[q.handle] = self.sort_key(q)
        # Candidates: claims watching a block that gained budget whose demand there now fits, and arrivals.
        candidates: dict[int, QueuedClaim] = {}
        for b in ctx.dirty.tolist():
            for h in watches.fitting(b, U[b], cap[b], comp):
                if h in queue:
                    candidates[h] = queue.get(h)
                else:
                    watches.unwatch(h)
        new = set()
        for q in ctx.arrivals:
            if q.handle in queue:
                candidates[q.handle] = q
                new.add(q.handle)
        if not candidates:
            return []
        # Single-block candidates of one block compete for that block alone. Sorted by key, with the
        # element-wise minimum of the demands from each position on ("suffix floor"): once the block cannot
        # fit the floor, no later single-block candidate of that block can fit (basic: a column is short for
        # all; Rényi: no order fits any), and the rest of that list is skipped unexamined.
        multi: list[QueuedClaim] = []
        singles: dict[int, list[QueuedClaim]] = {}
        for q in candidates.values():
            if q.idx.shape[0] == 1:
                singles.setdefault(int(q.idx[0]), []).append(q)
            else:
                multi.append(q)
        heads: list[tuple[Any, int, int]] = []  # (key, source, position); source -1 is the multi list
        floors: dict[int, FloatArray] = {}
        for b, lst in singles.items():
            lst.sort(key=lambda q: keys[q.handle])
            dem = np.stack([q.demand[0] for q in lst])
            floors[b] = np.minimum.accumulate(dem[::-1], axis=0)[::-1]
            heads.append((keys[lst[0].handle], b, 0))
        if multi:
            multi.sort(key=lambda q: keys[q.handle])
            heads.append((keys[multi[0].handle], -1, 0))
        heapq.heapify(heads)
        avail = U.copy()
        decisions: list[Decision] = []
        reject_new = self.reject_misfits_on_arrival
        while heads:
            _, src, i = heapq.heappop(heads)
            if src < 0:
                q = multi[i]
                if i + 1 < len(multi):
                    heapq.heappush(heads, (keys[multi[i + 1].handle], -1, i + 1))
                pos = first_misfit(q, avail, cap, comp)
            else:
                lst = singles[src]
                if not bool(comp.fits(floors[src][i : i + 1], avail[src : src + 1], cap[src : src + 1])[0]):
                    self._park(lst[i:], new, decisions)
                    continue
                q = lst[i]
                if i + 1 < len(lst):
                    heapq.heappush(heads, (keys[lst[i + 1].handle], src, i + 1))
                pos = first_misfit(q, avail, cap, comp)
            h = q.handle
            if pos < 0:
                avail[q.idx] -= q.demand
                watches.unwatch(h)
                decisions.append(Decision(h, Verdict.GRANT))
            elif reject_new and h in new:
                decisions.append(Decision(h, Verdict.REJECT, "does not fit at arrival"))
            elif watches.block_of(h) != int(q.idx[pos]):
                watches.watch(q, pos)
        return decisions

    def _park(self, rest: list[QueuedClaim], new: set[int], decisions: list[Decision]) -> None:
        """Single-block candidates that cannot fit their block: reject (FCFS arrivals) or watch it."""
        for q in rest:
            if self.reject_misfits_on_arrival and q.handle in new:
                decisions.append(Decision(q.handle, Verdict.REJECT, "does not fit at arrival"))
            elif q.handle not in self._watches:
                self._watches.watch(q, 0)

    def _strict_pass(self, ctx: PassContext) -> list[Decision]:
        for q in ctx.arrivals:
            heapq.heappush(self._heap, (self.sort_key(q), q.handle))
        comp = ctx.ledger.composition
        cap = ctx.ledger.capacity
        avail = ctx.ledger.unlocked.copy()
        out: list[Decision] = []
        heap = self._heap
        while heap:
            _, h = heap[0]
            if h not in ctx.queue:
                heapq.heappop(heap)
                continue
            q = ctx.queue.get(h)
            if first_misfit(q, avail, cap, comp) >= 0:
                break
            heapq.heappop(heap)
            avail[q.idx] -= q.demand
            out.append(Decision(h, Verdict.GRANT))
        return out
