"""A tiny discrete-event core: events keyed by (time, priority, sequence), as in SimPy.

Within one instant, lower priorities run first; equal priorities run in insertion order. The replay uses it to
merge the trace's events with the scheduler's own wake-ups (timed unlocks, expiries).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from enum import IntEnum

from dpf_sched.errors import InvalidParameterError


class Priority(IntEnum):
    """Order of kinds of events within one instant (spec: a pass runs after all arrivals and unlocks)."""

    BLOCK = 0
    WAKEUP = 1
    ARRIVAL = 2
    PASS = 3


class EventLoop:
    """A heap of timed callbacks; :meth:`run` pops them in (time, priority, sequence) order."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, int, Callable[[], None]]] = []
        self._seq = 0
        self.now = -math.inf

    def schedule(self, time: float, priority: int, action: Callable[[], None]) -> None:
        """Run ``action`` at ``time`` (not before the current time)."""
        if not math.isfinite(time):
            raise InvalidParameterError(f"event time must be finite, got {time}")
        if time < self.now:
            raise InvalidParameterError(f"event at {time} is in the past (now {self.now})")
        heapq.heappush(self._heap, (time, int(priority), self._seq, action))
        self._seq += 1

    def peek(self) -> float | None:
        """Time of the next event, or ``None``."""
        return self._heap[0][0] if self._heap else None

    def __len__(self) -> int:
        return len(self._heap)

    def run(self, until: float = math.inf) -> None:
        """Run events in order until the heap is empty or the next event is after ``until``."""
        heap = self._heap
        while heap and heap[0][0] <= until:
            time, _, _, action = heapq.heappop(heap)
            self.now = time
            action()
