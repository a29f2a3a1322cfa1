"""Round robin (RR-N, RR-T): DPF's unlocking, but unlocked budget is split max-min fairly among waiting claims.

Each block's free unlocked budget is poured, by water-filling, into per-claim accumulators of the claims waiting
on it (each claim's accumulator on a block fills up to its demand there). A claim is granted when all of its
accumulators are full. Budget poured into a claim that then times out or is rejected is lost: it stays in the
ledger's unlocked bucket but this policy never hands it out again. That waste is why RR collapses at large N
(OSDI'21 §6.1). Basic composition only, as in the artifact.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from dpf_sched.policies.base import (
    Decision,
    PassContext,
    Policy,
    Unlocker,
    Verdict,
)
from dpf_sched.policies.unlocking import ARRIVAL_PARAMS, TIMED_PARAMS, arrival_unlocker, timed_unlocker

FloatArray = NDArray[np.float64]


def water_fill(need: FloatArray, budget: float) -> FloatArray:
    """Max-min fair split of ``budget`` among needs: each gets ``min(need_i, λ)`` with ``Σ = budget``.

    Returns the amounts; if the needs sum to at most the budget, every need is met.
    """
    total = float(need.sum())
    if total <= budget:
        return need.copy()
    order = np.sort(need)
    n = order.shape[0]
    # Before the k-th smallest need is met, the level λ satisfies Σ_{i<k} r_i + (n-k) λ = budget.
    prefix = np.concatenate(([0.0], np.cumsum(order)[:-1]))
    levels = (budget - prefix) / (n - np.arange(n))
    k = int(np.argmax(levels < order))
    out: FloatArray = np.minimum(need, levels[k])
    return out


class _RoundRobin(Policy):
    """Shared pass of RR-N and RR-T."""

    supports_renyi = False

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._acc: dict[int, FloatArray] = {}  # handle → (n_blocks_of_claim, width) poured budget
        self._poured = np.zeros((0, 2))  # per block: budget poured into live or lost accumulators

    def _ensure(self, n_blocks: int, width: int) -> None:
        if self._poured.shape[0] < n_blocks:
            grown = np.zeros((max(n_blocks, 2 * self._poured.shape[0]), width))
            grown[: self._poured.shape[0]] = self._poured
            self._poured = grown

    def schedule(self, ctx: PassContext) -> list[Decision]:
        ledger = ctx.ledger
        queue = ctx.queue
        self._ensure(ledger.n_blocks, ledger.composition.width)
        # Accumulators of claims that left the queue without a grant stay poured (lost); granted ones were
        # removed when granted below.
        for h in [h for h in self._acc if h not in queue]:
            del self._acc[h]
        for q in ctx.arrivals:
            if q.handle in queue and q.handle not in self._acc:
                self._acc[q.handle] = np.zeros_like(q.demand)
        blocks = set(ctx.dirty.tolist())
        for q in ctx.arrivals:
            blocks.update(q.idx.tolist())
        U = ledger.unlocked
        cap = ledger.capacity
        tol = ledger.composition.tolerance(cap)
        touched: set[int] = set()
        for b in sorted(blocks):
            free = U[b] - self._poured[b]
            if not bool((free > tol[b]).any()):
                continue
            handles = queue.waiting_on(b).tolist()
            if not handles:
                continue
            claims = [queue.get(h) for h in handles]
            pos = [int(np.flatnonzero(q.idx == b)[0]) for q in claims]
            need = np.stack([q.demand[p] - self._acc[q.handle][p] for q, p in zip(claims, pos, strict=True)])
            pour = np.zeros_like(need)
            for col in range(need.shape[1]):
                if free[col] > 0:
                    pour[:, col] = water_fill(np.maximum(need[:, col], 0.0), float(free[col]))
            for q, p, amount in zip(claims, pos, pour, strict=True):
                if amount.any():
                    self._acc[q.handle][p] += amount
                    touched.add(q.handle)
            self._poured[b] += pour.sum(axis=0)
        out: list[Decision] = []
        for h in sorted(touched, key=lambda h: queue.get(h).seq):
            q = queue.get(h)
            acc = self._acc[h]
            if bool((acc >= q.demand - tol[q.idx]).all()):
                out.append(Decision(h, Verdict.GRANT))
                self._poured[q.idx] -= acc
                del self._acc[h]
        return out


class RRN(_RoundRobin):
    """RR-N: DPF-N's unlocking (``G_j / N`` per arrival) with max-min fair pouring."""

    name = "rr-n"
    params: ClassVar = ARRIVAL_PARAMS

    def make_unlocker(self) -> Unlocker:
        return arrival_unlocker(self.config)


class RRT(_RoundRobin):
    """RR-T: DPF-T's timed unlocking with max-min fair pouring."""

    name = "rr-t"
    params: ClassVar = TIMED_PARAMS

    def make_unlocker(self) -> Unlocker:
        return timed_unlocker(self.config)
