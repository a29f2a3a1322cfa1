"""The waiting queue: claims that wait for budget, indexed by block so a pass touches only what changed.

The scheduler owns one :class:`ClaimQueue`; policies read it. Besides the claims themselves it keeps, per block,
a dense buffer of the waiting claims' handles and demand rows on that block. A pass after an unlock on block j
asks :meth:`ClaimQueue.fitting_on` for the claims whose demand on j fits in j's unlocked budget: one vectorised
comparison over that block's entries, instead of a walk over every waiting claim. Entries of claims that left
are dropped lazily (a liveness mask) and the buffer is compacted when more than half of it is stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from dpf_sched.composition import Composition

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


@dataclass(frozen=True, eq=False, slots=True)
class QueuedClaim:
    """What a policy knows of a waiting claim, computed once at submission.

    ``shares`` holds the per-block dominant shares in descending order with trailing zeros dropped, so that
    tuple comparison is the paper's lexicographic tie-break (missing shares count as 0).
    """

    handle: int
    id: str
    arrival: float
    seq: int
    deadline: float
    weight: float
    owner: str | None
    idx: IntArray
    demand: FloatArray
    shares: tuple[float, ...]

    @property
    def dominant_share(self) -> float:
        """The largest per-block share (0 for an all-zero demand)."""
        return self.shares[0] if self.shares else 0.0


class _BlockBuffer:
    """Growable arrays of (handle, demand row) for the claims waiting on one block."""

    __slots__ = ("dem", "handles", "live", "n")

    def __init__(self, width: int) -> None:
        self.handles = np.empty(8, dtype=np.int64)
        self.dem = np.empty((8, width))
        self.n = 0
        self.live = 0

    def append(self, handle: int, row: FloatArray) -> None:
        if self.n == self.handles.shape[0]:
            size = 2 * self.n
            h = np.empty(size, dtype=np.int64)
            h[: self.n] = self.handles
            d = np.empty((size, self.dem.shape[1]))
            d[: self.n] = self.dem
            self.handles, self.dem = h, d
        self.handles[self.n] = handle
        self.dem[self.n] = row
        self.n += 1
        self.live += 1

    def compact(self, alive: NDArray[np.bool_]) -> None:
        keep = alive[self.handles[: self.n]]
        k = int(keep.sum())
        self.handles[:k] = self.handles[: self.n][keep]
        self.dem[:k] = self.dem[: self.n][keep]
        self.n = k
        self.live = k


class ClaimQueue:
    """Waiting claims of one scheduler, in submission order, indexed by block."""

    def __init__(self, composition: Composition) -> None:
        self.composition = composition
        self._claims: dict[int, QueuedClaim] = {}
        self._by_id: dict[str, int] = {}
        self._blocks: list[_BlockBuffer] = []
        self._alive = np.zeros(1024, dtype=bool)

    def __len__(self) -> int:
        return len(self._claims)

    def __iter__(self) -> Iterator[QueuedClaim]:
        return iter(list(self._claims.values()))

    def __contains__(self, handle: object) -> bool:
        return handle in self._claims

    def get(self, handle: int) -> QueuedClaim:
        """The waiting claim with this handle (``KeyError`` if it left)."""
        return self._claims[handle]

    def handle_of(self, claim_id: str) -> int | None:
        """The handle of a waiting claim id, or ``None``."""
        return self._by_id.get(claim_id)

    def add(self, q: QueuedClaim) -> None:
        """Enqueue a claim; its handle must be new."""
        h = q.handle
        if h >= self._alive.shape[0]:
            alive = np.zeros(max(2 * self._alive.shape[0], h + 1), dtype=bool)
            alive[: self._alive.shape[0]] = self._alive
            self._alive = alive
        self._alive[h] = True
        self._claims[h] = q
        self._by_id[q.id] = h
        width = self.composition.width
        while len(self._blocks) <= int(q.idx.max()):
            self._blocks.append(_BlockBuffer(width))
        for k, b in enumerate(q.idx.tolist()):
            self._blocks[b].append(h, q.demand[k])

    def remove(self, handle: int) -> QueuedClaim:
        """Dequeue a claim (granted, rejected or expired)."""
        q = self._claims.pop(handle)
        del self._by_id[q.id]
        self._alive[handle] = False
        for b in q.idx.tolist():
            buf = self._blocks[b]
            buf.live -= 1
            if buf.live * 2 < buf.n and buf.n > 32:
                buf.compact(self._alive)
        return q

    def waiting_on(self, block: int) -> IntArray:
        """Handles of the claims waiting on ``block``, in submission order."""
        if block >= len(self._blocks):
            return np.empty(0, dtype=np.int64)
        buf = self._blocks[block]
        h = buf.handles[: buf.n]
        return h[self._alive[h]]

    def fitting_on(self, block: int, available: FloatArray, capacity: FloatArray) -> IntArray:
        """Handles of waiting claims whose demand on ``block`` alone fits in ``available`` (one row)."""
        if block >= len(self._blocks):
            return np.empty(0, dtype=np.int64)
        buf = self._blocks[block]
        if buf.live == 0:
            return np.empty(0, dtype=np.int64)
        h = buf.handles[: buf.n]
        ok = self._alive[h]
        ok &= self.composition.fits(buf.dem[: buf.n], available[None, :], capacity[None, :])
        return h[ok]

    def fitting(self, blocks: IntArray, available: FloatArray, capacity: FloatArray) -> list[QueuedClaim]:
        """Waiting claims that fit on *all* their blocks now, among those waiting on any of ``blocks``.

        ``available`` and ``capacity`` are the full (n_blocks, width) arrays.
        """
        parts = [self.fitting_on(int(b), available[b], capacity[b]) for b in blocks.tolist()]
        parts = [p for p in parts if p.size]
        if not parts:
            return []
        handles = np.unique(np.concatenate(parts)) if len(parts) > 1 else parts[0]
        fits = self.composition.fits
        out = []
        for h in handles.tolist():
            q = self._claims[h]
            if q.idx.shape[0] == 1 or bool(fits(q.demand, available[q.idx], capacity[q.idx]).all()):
                out.append(q)
        return out
