"""The waiting queue: claims that wait for budget, in submission order, with a per-block index.

The scheduler owns one :class:`ClaimQueue`; policies read it. :class:`BlockEntries` is a dense per-block
buffer for policy-side indexes (the greedy pass's watch index): growable arrays of (handle, demand row) whose
dead entries are dropped lazily and compacted once more than half are stale.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

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


class BlockEntries:
    """Growable arrays of (handle, demand row) for one block; dead entries are filtered by a mask."""

    __slots__ = ("dem", "handles", "live", "n")

    def __init__(self, width: int) -> None:
        self.handles = np.empty(8, dtype=np.int64)
        self.dem = np.empty((8, width))
        self.n = 0
        self.live = 0

    def append(self, handle: int, row: FloatArray) -> None:
        """Add one entry."""
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

    def dropped(self, owner: IntArray, me: int) -> None:
        """One entry died; compact when more than half are dead.

        An entry is alive while ``owner[handle] == me``: the index that owns the buffers records, per handle,
        which buffer currently holds its live entry.
        """
        self.live -= 1
        if self.live * 2 < self.n and self.n > 32:
            keep = owner[self.handles[: self.n]] == me
            k = int(keep.sum())
            self.handles[:k] = self.handles[: self.n][keep]
            self.dem[:k] = self.dem[: self.n][keep]
            self.n = k
            self.live = k


class ClaimQueue:
    """Waiting claims of one scheduler, in submission order, indexed by block (handles only)."""

    def __init__(self, width: int) -> None:
        self.width = width
        self._claims: dict[int, QueuedClaim] = {}
        self._blocks: list[list[int]] = []  # per block: handles that waited there (stale ones dropped lazily)
        self._stale: list[int] = []  # per block: how many of those have left

    def __len__(self) -> int:
        return len(self._claims)

    def __iter__(self) -> Iterator[QueuedClaim]:
        return iter(list(self._claims.values()))

    def __contains__(self, handle: object) -> bool:
        return handle in self._claims

    def get(self, handle: int) -> QueuedClaim:
        """The waiting claim with this handle (``KeyError`` if it left)."""
        return self._claims[handle]

    def add(self, q: QueuedClaim) -> None:
        """Enqueue a claim; its handle must be new."""
        self._claims[q.handle] = q
        blocks = self._blocks
        for b in q.idx.tolist():
            while len(blocks) <= b:
                blocks.append([])
                self._stale.append(0)
            blocks[b].append(q.handle)

    def remove(self, handle: int) -> QueuedClaim:
        """Dequeue a claim (granted, rejected or expired)."""
        q = self._claims.pop(handle)
        claims = self._claims
        for b in q.idx.tolist():
            self._stale[b] += 1
            lst = self._blocks[b]
            if self._stale[b] * 2 > len(lst) and len(lst) > 32:
                self._blocks[b] = [h for h in lst if h in claims]
                self._stale[b] = 0
        return q

    def waiting_on(self, block: int) -> IntArray:
        """Handles of the claims waiting on ``block``, in submission order."""
        if block >= len(self._blocks):
            return np.empty(0, dtype=np.int64)
        claims = self._claims
        return np.fromiter((h for h in self._blocks[block] if h in claims), dtype=np.int64)
