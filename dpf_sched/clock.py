"""Clocks: the scheduler reads time only through one of these, so simulation and live use share all code."""

from __future__ import annotations

import math
import threading
import time
from typing import Protocol

from dpf_sched.errors import InvalidParameterError


class Clock(Protocol):
    """Anything with a ``now()`` in seconds (or simulation time units)."""

    def now(self) -> float: ...


class WallClock:
    """Real time (Unix seconds) that never goes backwards.

    The scheduler refuses a clock that goes back, and the system clock can be stepped back (NTP), so a step back
    reads as the last time given until real time catches up. Safe to share between threads.
    """

    def __init__(self) -> None:
        self._last = -math.inf
        self._lock = threading.Lock()

    def now(self) -> float:
        with self._lock:
            self._last = max(self._last, time.time())
            return self._last


class ManualClock:
    """A clock that moves only when told to; the simulator's clock. Time never goes backwards."""

    def __init__(self, start: float = 0.0) -> None:
        t = float(start)
        if not math.isfinite(t):
            raise InvalidParameterError(f"start time must be finite, got {start}")
        self._now = t

    def now(self) -> float:
        return self._now

    def set(self, t: float) -> None:
        """Move to time ``t`` (≥ the current time)."""
        t = float(t)
        if not math.isfinite(t):
            raise InvalidParameterError(f"time must be finite, got {t}")
        if t < self._now:
            raise InvalidParameterError(f"time cannot go backwards: {t} < {self._now}")
        self._now = t

    def advance(self, dt: float) -> None:
        """Move forward by ``dt`` ≥ 0."""
        self.set(self._now + dt)
