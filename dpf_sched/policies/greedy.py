"""The shared greedy pass of FCFS, DRF and DPF: grant waiting claims in order while they fit.

Best effort (the paper): claims are tried in :meth:`Policy.sort_key` order; a claim that fits is granted and
the pass goes on past claims that do not. Only claims that *could* have become grantable are examined: new
arrivals, and claims waiting on a block that gained unlocked budget since the last pass whose demand on that
block fits (:meth:`ClaimQueue.fitting`). Since grants only shrink the unlocked budget, a claim that does not fit
at the start of a pass cannot fit later in it; the candidates are therefore filtered once, sorted, and granted
against a scratch copy of the unlocked budget.

Strict (the artifact simulator's variant): the pass walks *all* waiting claims in order and stops at the first
that does not fit; a heap keyed by the sort key keeps that walk proportional to the grants.
"""

from __future__ import annotations

import heapq
from typing import Any, ClassVar

import numpy as np

from dpf_sched.policies.base import Decision, PassContext, Policy, Verdict
from dpf_sched.queue import QueuedClaim


class GreedyPolicy(Policy):
    """A policy whose pass is the greedy pass above; subclasses choose unlocking, order and misfit handling."""

    #: Reject an arriving claim that does not fit at once (FCFS) instead of letting it wait.
    reject_misfits_on_arrival: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._heap: list[tuple[Any, int]] = []

    @property
    def strict(self) -> bool:
        """Whether a pass stops at the first claim that does not fit."""
        return bool(self.config.get("strict", False))

    def schedule(self, ctx: PassContext) -> list[Decision]:
        if self.strict:
            return self._strict_pass(ctx)
        U = ctx.ledger.unlocked
        cap = ctx.ledger.capacity
        fits = ctx.ledger.composition.fits
        found: dict[int, QueuedClaim] = {}
        if ctx.dirty.size:
            for q in ctx.queue.fitting(ctx.dirty, U, cap):
                found[q.handle] = q
        misfits: list[QueuedClaim] = []
        for q in ctx.arrivals:
            if q.handle in found or q.handle not in ctx.queue:
                continue
            if bool(fits(q.demand, U[q.idx], cap[q.idx]).all()):
                found[q.handle] = q
            elif self.reject_misfits_on_arrival:
                misfits.append(q)
        decisions = self._grant_in_order(sorted(found.values(), key=self.sort_key), ctx, stop_at_misfit=False)
        if self.reject_misfits_on_arrival:
            granted = {d.handle for d in decisions}
            for q in list(found.values()) + misfits:
                if q.handle not in granted:
                    decisions.append(Decision(q.handle, Verdict.REJECT, "does not fit at arrival"))
        return decisions

    def _grant_in_order(
        self, ordered: list[QueuedClaim], ctx: PassContext, *, stop_at_misfit: bool
    ) -> list[Decision]:
        U = ctx.ledger.unlocked
        cap = ctx.ledger.capacity
        fits = ctx.ledger.composition.fits
        avail: np.ndarray[Any, np.dtype[np.float64]] | None = None
        out: list[Decision] = []
        for q in ordered:
            pool = U if avail is None else avail
            if bool(fits(q.demand, pool[q.idx], cap[q.idx]).all()):
                if avail is None:
                    avail = U.copy()
                avail[q.idx] -= q.demand
                out.append(Decision(q.handle, Verdict.GRANT))
            elif stop_at_misfit:
                break
        return out

    def _strict_pass(self, ctx: PassContext) -> list[Decision]:
        for q in ctx.arrivals:
            heapq.heappush(self._heap, (self.sort_key(q), q.handle))
        U = ctx.ledger.unlocked
        cap = ctx.ledger.capacity
        fits = ctx.ledger.composition.fits
        avail = U.copy()
        out: list[Decision] = []
        heap = self._heap
        while heap:
            _, h = heap[0]
            if h not in ctx.queue:
                heapq.heappop(heap)
                continue
            q = ctx.queue.get(h)
            if not bool(fits(q.demand, avail[q.idx], cap[q.idx]).all()):
                break
            heapq.heappop(heap)
            avail[q.idx] -= q.demand
            out.append(Decision(h, Verdict.GRANT))
        return out
