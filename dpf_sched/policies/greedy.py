"""The shared greedy pass of FCFS, DRF and DPF: grant waiting claims in order while they fit.

Best effort (the paper): claims are tried in :meth:`Policy.sort_key` order; a claim that fits is granted and
the pass goes on past claims that do not. Only claims that could have become grantable are examined. Each
waiting claim *watches* one block on which it does not fit (preferably one it cannot fit even once fully
unlocked, else the one it is furthest from fitting); since budget only grows by unlocks and releases, the
claim cannot fit again until that block gains unlocked budget. A pass therefore looks only at the claims
watching a block that gained budget whose demand there now fits (one vectorised comparison over all such
blocks first, against a per-block floor of the watchers' demands), re-checks them on all their blocks, and
moves the ones that still do not fit. Grants only shrink the unlocked budget, so candidates are grouped by
the block that woke them, sorted once, and granted against a scratch copy of the unlocked budget; a group
stops as soon as its block cannot fit the smallest remaining demand.

Strict (the artifact simulator's variant): the pass walks *all* waiting claims in order and stops at the first
that does not fit; a heap keyed by the sort key keeps that walk proportional to the grants.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from dpf_sched.composition import Composition
from dpf_sched.policies.base import Decision, GreedyPlan, LedgerView, PassContext, Policy, Verdict
from dpf_sched.queue import BlockEntries, IntArray, QueuedClaim

FloatArray = NDArray[np.float64]


class WatchIndex:
    """For each waiting claim, the one block it waits on; per block, the watchers' demands there.

    ``floor[b]`` is an element-wise lower bound of the demands of block b's watchers (``inf`` without
    watchers; stale entries only lower it, and compaction tightens it again). If a block's budget cannot fit
    its floor, none of its watchers can fit there, so :meth:`fitting` checks every block that gained budget
    with one vectorised comparison before it looks at any watcher.
    """

    def __init__(self, width: int) -> None:
        self._blocks: list[BlockEntries] = []
        self._where = np.full(1024, -1, dtype=np.int64)  # handle → watched block, -1 when not watching
        self.single = np.zeros(1024, dtype=bool)  # handle → the claim asks for one block only
        self.floor = np.full((64, width), np.inf)

    def __contains__(self, handle: object) -> bool:
        return isinstance(handle, int) and handle < self._where.shape[0] and self._where[handle] >= 0

    def watch(self, q: QueuedClaim, pos: int) -> None:
        """Make ``q`` wait on its ``pos``-th block."""
        h = q.handle
        if h >= self._where.shape[0]:
            size = max(2 * self._where.shape[0], h + 1)
            where = np.full(size, -1, dtype=np.int64)
            where[: self._where.shape[0]] = self._where
            single = np.zeros(size, dtype=bool)
            single[: self.single.shape[0]] = self.single
            self._where, self.single = where, single
        self.unwatch(h)
        b = int(q.idx[pos])
        if b >= self.floor.shape[0]:
            floor = np.full((max(2 * self.floor.shape[0], b + 1), self.floor.shape[1]), np.inf)
            floor[: self.floor.shape[0]] = self.floor
            self.floor = floor
        while len(self._blocks) <= b:
            self._blocks.append(BlockEntries(q.demand.shape[1]))
        row = q.demand[pos]
        self._blocks[b].append(h, row)
        np.minimum(self.floor[b], row, out=self.floor[b])
        self._where[h] = b
        self.single[h] = q.idx.shape[0] == 1

    def unwatch(self, handle: int) -> None:
        """Forget a claim (woken, granted or gone)."""
        if handle >= self._where.shape[0]:
            return
        b = int(self._where[handle])
        if b >= 0:
            self._where[handle] = -1
            buf = self._blocks[b]
            n_before = buf.n
            buf.dropped(self._where, b)
            if buf.live == 0:
                buf.n = 0
                self.floor[b] = np.inf
            elif buf.n != n_before:  # compacted: tighten the floor to the live entries
                self.floor[b] = buf.dem[: buf.n].min(axis=0)

    def block_of(self, handle: int) -> int:
        """The block ``handle`` watches, or -1."""
        return int(self._where[handle]) if handle < self._where.shape[0] else -1

    def fitting(
        self, blocks: IntArray, available: FloatArray, capacity: FloatArray, comp: Composition
    ) -> list[tuple[int, IntArray, FloatArray]]:
        """Per block of ``blocks``: the watchers whose demand there fits its ``available`` row, and those demands."""
        if int(blocks.max()) >= self.floor.shape[0]:  # the newest blocks may have no watchers yet
            blocks = blocks[blocks < self.floor.shape[0]]
            if blocks.size == 0:
                return []
        maybe = blocks[comp.fits(self.floor[blocks], available[blocks], capacity[blocks])]
        out = []
        for block in maybe.tolist():
            buf = self._blocks[block]
            h = buf.handles[: buf.n]
            d = buf.dem[: buf.n]
            ok = (self._where[h] == block) & comp.fits(d, available[block][None, :], capacity[block][None, :])
            if ok.any():
                out.append((block, h[ok], d[ok]))
        return out


def first_misfit(q: QueuedClaim, avail: FloatArray, cap: FloatArray, comp: Composition) -> int:
    """Position in ``q.idx`` of the block on which ``q`` is furthest from fitting, or -1 if it fits everywhere.

    Waiting on the block that is furthest from fitting wakes the claim less often than waiting on any misfit.
    """
    a, c = avail[q.idx], cap[q.idx]
    if comp.fits(q.demand, a, c).all():  # the common case, cheaper than the shortfall
        return -1
    gap = comp.shortfall(q.demand, a, c)
    return int(gap.argmax())


def block_to_watch(
    q: QueuedClaim, pos: int, avail: FloatArray, locked: FloatArray, cap: FloatArray, comp: Composition
) -> int:
    """Where a claim that misfits (at ``pos``) should wait: preferably a block that cannot fit it even once fully
    unlocked (only a release can help there, so the claim is not woken by unlocks that cannot satisfy it);
    otherwise the block on which it is furthest from fitting."""
    c = cap[q.idx]
    dead = comp.shortfall(q.demand, avail[q.idx] + locked[q.idx], c)
    worst = int(dead.argmax())
    return worst if dead[worst] > 0 else pos


class GreedyPolicy(Policy):
    """A policy whose pass is the greedy pass above; subclasses choose unlocking, order and misfit handling."""

    #: Reject an arriving claim that does not fit at once (FCFS) instead of letting it wait.
    reject_misfits_on_arrival: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._heap: list[tuple[Any, int]] = []
        self._watches: WatchIndex | None = None
        self._keys: dict[int, Any] = {}

    #: Order of consideration for the batch simulator when :meth:`sort_key` is overridden (``None``: unknown).
    batch_order: ClassVar[str | None] = None

    def batch_plan(self) -> GreedyPlan | None:
        """The best-effort pass as a :class:`GreedyPlan` (strict passes and custom sort keys have none)."""
        if self.strict:
            return None
        if type(self).sort_key is Policy.sort_key:
            order = "dominant" if self.config.get("tie_break", "lexicographic") == "arrival" else "shares"
        elif self.batch_order is not None:
            order = self.batch_order
        else:
            return None
        return GreedyPlan(order, self.reject_misfits_on_arrival)

    @property
    def strict(self) -> bool:
        """Whether a pass stops at the first claim that does not fit."""
        return bool(self.config.get("strict", False))

    def forget(self, handle: int) -> None:
        if self._watches is not None:
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
        if self._watches is None:
            self._watches = WatchIndex(comp.width)
        watches = self._watches
        keys = self._keys
        arrivals = [q for q in ctx.arrivals if q.handle in queue]
        for q in arrivals:
            keys[q.handle] = self.sort_key(q)
        # Candidates: claims watching a block that gained budget whose demand there now fits, and arrivals.
        woken = watches.fitting(ctx.dirty, U, cap, comp) if ctx.dirty.size else []
        if not woken:
            if not arrivals:
                return []
            if len(arrivals) == 1:
                return self._lone_arrival(arrivals[0], ledger)
        new = {q.handle: q for q in arrivals}
        # Candidates that need budget on one block b form b's group: the claims woken by b (single- or
        # multi-block) and the single-block arrivals on b. A group is sorted by key, with the element-wise
        # minimum of its members' demands on b from each position on ("suffix floor"): once b cannot fit the
        # floor, no later member can fit (basic: a column is short for all; Rényi: no order fits any), and the
        # rest of the group is left as it is, unexamined. Multi-block arrivals form their own list.
        parts: dict[int, list[tuple[IntArray, FloatArray]]] = {b: [(h, d)] for b, h, d in woken}
        mixed = {b for b, h, _ in woken if not bool(watches.single[h].all())}
        loose: list[QueuedClaim] = []
        for q in arrivals:
            if q.idx.shape[0] == 1:
                parts.setdefault(int(q.idx[0]), []).append((np.full(1, q.handle, dtype=np.int64), q.demand))
            else:
                loose.append(q)
        groups: dict[int, tuple[list[int], FloatArray, FloatArray]] = {}
        heads: list[tuple[Any, int, int]] = []  # (key, source, position); source -1 is the loose list
        for b, chunks in parts.items():
            h = np.concatenate([c[0] for c in chunks]) if len(chunks) > 1 else chunks[0][0]
            d = np.concatenate([c[1] for c in chunks]) if len(chunks) > 1 else chunks[0][1]
            if h.shape[0] == 1:
                hl = h.tolist()
                groups[b] = (hl, d, d)
            else:
                order = self._group_order(h, d, cap[b], comp, b not in mixed)
                hl = h[order].tolist()
                d = d[order]
                groups[b] = (hl, d, np.minimum.accumulate(d[::-1], axis=0)[::-1])
            heads.append((keys[hl[0]], b, 0))
        if loose:
            loose.sort(key=lambda q: keys[q.handle])
            heads.append((keys[loose[0].handle], -1, 0))
        heapq.heapify(heads)
        avail = U.copy()
        decisions: list[Decision] = []
        decided: set[int] = set()
        while heads:
            _, src, i = heapq.heappop(heads)
            if src < 0:
                q = loose[i]
                if i + 1 < len(loose):
                    heapq.heappush(heads, (keys[loose[i + 1].handle], -1, i + 1))
            else:
                hl, d, floor = groups[src]
                row = slice(src, src + 1)
                if not bool(comp.fits(floor[i : i + 1], avail[row], cap[row])[0]):
                    continue  # nobody left in this group fits on its block; they keep waiting there
                if i + 1 < len(hl):
                    heapq.heappush(heads, (keys[hl[i + 1]], src, i + 1))
                if not bool(comp.fits(d[i : i + 1], avail[row], cap[row])[0]):
                    continue  # an earlier grant of this pass took what it needed on its block
                q = queue.get(hl[i])
                if q.idx.shape[0] == 1:
                    self._grant(q, avail, decisions, decided)
                    continue
            handle = q.handle
            pos = first_misfit(q, avail, cap, comp)
            if pos < 0:
                self._grant(q, avail, decisions, decided)
            elif handle in new:
                continue  # settled after the loop
            else:
                # A claim that has become impossible (beyond capacity − consumed) watches the block it can never
                # fit, where only a release could wake it; it waits until its timeout, as in every engine.
                pos = block_to_watch(q, pos, avail, ledger.locked, cap, comp)
                if watches.block_of(handle) != int(q.idx[pos]):
                    watches.watch(q, pos)
        for handle, q in new.items():  # arrivals not granted: FCFS rejects them, others wait on a misfit block
            if handle in decided:
                continue
            if self.reject_misfits_on_arrival:
                decisions.append(Decision(handle, Verdict.REJECT, "does not fit at arrival"))
            else:
                pos = max(first_misfit(q, avail, cap, comp), 0)
                watches.watch(q, block_to_watch(q, pos, avail, ledger.locked, cap, comp) if q.idx.shape[0] > 1 else pos)
        return decisions

    def _grant(self, q: QueuedClaim, avail: FloatArray, decisions: list[Decision], decided: set[int]) -> None:
        avail[q.idx] -= q.demand
        assert self._watches is not None
        self._watches.unwatch(q.handle)
        decisions.append(Decision(q.handle, Verdict.GRANT))
        decided.add(q.handle)

    def _lone_arrival(self, q: QueuedClaim, ledger: LedgerView) -> list[Decision]:
        """The common pass: one arrival and no waiting claim woke up. Grant it, reject it (FCFS) or watch."""
        U, cap, comp = ledger.unlocked, ledger.capacity, ledger.composition
        pos = first_misfit(q, U, cap, comp)
        if pos < 0:
            return [Decision(q.handle, Verdict.GRANT)]
        if self.reject_misfits_on_arrival:
            return [Decision(q.handle, Verdict.REJECT, "does not fit at arrival")]
        assert self._watches is not None
        self._watches.watch(q, block_to_watch(q, pos, U, ledger.locked, cap, comp) if q.idx.shape[0] > 1 else pos)
        return []

    def _group_order(
        self, handles: IntArray, dem: FloatArray, cap_row: FloatArray, comp: Composition, all_single: bool
    ) -> IntArray:
        """Order of one block's group of candidates by this policy's sort key.

        For the built-in key (dominant share, then lexicographic shares or arrival, then submission order) a
        single-block claim's key is (its share on that block, its sequence number), and handles are sequence
        numbers: one vectorised lexsort. Groups with multi-block claims, or a subclass with its own
        ``sort_key``, get their keys compared as they are.
        """
        if all_single and type(self).sort_key is Policy.sort_key:
            shares = comp.shares(dem, cap_row[None, :])
            return np.lexsort((handles, shares))
        keys = self._keys
        hl = handles.tolist()
        return np.asarray(sorted(range(len(hl)), key=lambda k: keys[hl[k]]), dtype=np.int64)

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
