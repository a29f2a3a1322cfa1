"""Unlocking rules: DPF-N's per-arrival unlock and DPF-T's timed unlock (spec/dpf.md, "Unlocking")."""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpf_sched.errors import InvalidParameterError
from dpf_sched.policies.base import (
    FloatArray,
    IntArray,
    LedgerView,
    Param,
    Unlock,
    Unlocker,
    UnlockSchedule,
    choice,
    positive_float,
    positive_int,
)
from dpf_sched.queue import QueuedClaim

UNLOCK_MODES = ("paper", "artifact")


class UnlockPerArrival(Unlocker):
    """DPF-N: each arrival of a claim asking for block j unlocks ``G_j / N`` (capped at the capacity).

    The rule counts arrivals per block and unlocks to ``min(1, count / N)``, so N unlocks reach exactly the
    whole capacity, without the drift of adding ``1/N`` N times.
    """

    def __init__(self, n: int) -> None:
        if n <= 0:
            raise InvalidParameterError(f"N must be positive, got {n}")
        self.n = n
        self._counts: dict[int, int] = {}  # block → arrivals so far (a claim asks for few blocks: plain ints)

    def on_arrival(self, claim: QueuedClaim, ledger: LedgerView) -> Unlock | None:
        counts = self._counts
        fractions = []
        for b in claim.idx.tolist():
            c = counts[b] = counts.get(b, 0) + 1
            fractions.append(min(c / self.n, 1.0))
        return Unlock(claim.idx, np.array(fractions))

    def schedule(self, created: FloatArray, row_blocks: IntArray, row_times: FloatArray) -> UnlockSchedule:
        return PerArrivalSchedule(self.n, int(created.shape[0]), row_blocks, row_times)


class PerArrivalSchedule(UnlockSchedule):
    """DPF-N over a known run: a block's fraction is ``min(1, c / N)`` after its c-th arrival.

    The arrival times of every block are kept in one array sorted by (block, time); a complex key
    ``block + i·time`` lets one ``searchsorted`` count the arrivals of many blocks at once (numpy orders complex
    numbers by real part, then imaginary part, so this is an exact lexicographic search).
    """

    def __init__(self, n: int, n_blocks: int, row_blocks: IntArray, row_times: FloatArray) -> None:
        self.n = n
        order = np.lexsort((row_times, row_blocks))
        b = np.asarray(row_blocks, dtype=np.int64)[order]
        self.times = np.asarray(row_times, dtype=np.float64)[order]
        self.keys = b.astype(np.float64) + 1j * self.times
        counts = np.bincount(b, minlength=n_blocks)
        self.count = counts
        self.offset = np.concatenate(([0], np.cumsum(counts)[:-1])).astype(np.int64)
        # Per block, its arrival times as a Python list: the scalar queries bisect them at C speed.
        self._lists: list[list[float]] = [part.tolist() for part in np.split(self.times, np.cumsum(counts)[:-1])]

    def fraction_at(self, block: int, time: float) -> float:
        return min(bisect.bisect_right(self._lists[block], time) / self.n, 1.0)

    def first_time_at(self, block: int, need: float, after: float) -> float:
        if not need <= 1.0 + 1e-9:
            return math.inf
        times = self._lists[block]
        c = max(math.floor(min(need, 2.0) * self.n), bisect.bisect_right(times, after) + 1)
        return times[c - 1] if c <= len(times) else math.inf

    def _arrivals(self, blocks: IntArray, times: FloatArray) -> IntArray:
        key = np.asarray(blocks, dtype=np.float64) + 1j * np.asarray(times, dtype=np.float64)
        return np.searchsorted(self.keys, key, side="right") - self.offset[blocks]

    def fraction(self, blocks: IntArray, times: FloatArray) -> FloatArray:
        # The same expression as UnlockPerArrival.on_arrival, so both give bit-identical fractions.
        return np.minimum(self._arrivals(blocks, times) / self.n, 1.0)

    def first_time(self, blocks: IntArray, need: FloatArray, after: FloatArray) -> FloatArray:
        seen = self._arrivals(blocks, after)
        # Smallest c with c/N ≥ need, rounded down (an early answer is allowed, a late one is not).
        with np.errstate(invalid="ignore", over="ignore"):
            c = np.floor(np.minimum(need, 2.0) * self.n)
        c = np.maximum(c, seen + 1)
        never = (need > 1.0 + 1e-9) | (c > self.count[blocks])
        pos = self.offset[blocks] + np.where(never, 1, c).astype(np.int64) - 1
        out = self.times[np.minimum(pos, self.times.shape[0] - 1)] if self.times.size else np.zeros(pos.shape)
        return np.where(never, np.inf, out)


class UnlockOverTime(Unlocker):
    """DPF-T: every ``tick``, each block unlocks ``G · tick / T`` until it is fully unlocked ``T`` after creation.

    Ticks fall on a global grid ``k · tick``. Two modes:

    * ``paper`` — the cumulative unlocked fraction at a tick ``t`` is ``min(1, (t − created) / T)``;
      nothing is unlocked at creation.
    * ``artifact`` — as the OSDI'21 simulator: ``K = int(T / tick) + 1`` unlocks, the first at creation, the
      cumulative fraction after the k-th tick since creation being ``(k + 1) / K``.
    """

    def __init__(self, T: float, tick: float, mode: str = "paper") -> None:
        if not (math.isfinite(T) and T > 0):
            raise InvalidParameterError(f"T must be positive and finite, got {T}")
        if not (math.isfinite(tick) and tick > 0):
            raise InvalidParameterError(f"tick must be positive and finite, got {tick}")
        if mode not in UNLOCK_MODES:
            raise InvalidParameterError(f"unlock mode must be one of {UNLOCK_MODES}, got {mode!r}")
        self.T = T
        self.tick = tick
        self.mode = mode
        self.K = int(T / tick) + 1

    def on_block(self, block: int, created: float, ledger: LedgerView) -> float:
        return 1.0 / self.K if self.mode == "artifact" else 0.0

    def next_time(self, now: float, ledger: LedgerView) -> float | None:
        if ledger.n_blocks == 0 or bool(np.all(ledger.unlocked_fraction >= 1.0)):
            return None
        k = math.floor(now / self.tick) + 1
        t = k * self.tick
        while t <= now:
            k += 1
            t = k * self.tick
        return t

    def at_time(self, now: float, ledger: LedgerView) -> Unlock | None:
        frac = ledger.unlocked_fraction
        created = ledger.created
        active = np.flatnonzero((frac < 1.0) & (created <= now))
        if active.size == 0:
            return None
        age = now - created[active]
        if self.mode == "paper":
            target = np.minimum(age / self.T, 1.0)
        else:
            k = np.floor(age / self.tick + 1e-9)
            target = np.minimum((k + 1.0) / self.K, 1.0)
        return Unlock(active.astype(np.int64), target)

    def schedule(self, created: FloatArray, row_blocks: IntArray, row_times: FloatArray) -> UnlockSchedule:
        return TimedSchedule(self, np.asarray(created, dtype=np.float64))


class TimedSchedule(UnlockSchedule):
    """DPF-T over a known run: the fraction of :class:`UnlockOverTime` at the last grid tick ``k·tick ≤ t``.

    The scheduler ticks on the global grid ``k·tick`` while some block is not fully unlocked, so a block's
    fraction at time t is the rule's value at the last tick at or before t (and its creation value before its
    first tick). Tick times are the same float products ``k * tick`` as the online rule's.
    """

    def __init__(self, rule: UnlockOverTime, created: FloatArray) -> None:
        self.T, self.tick, self.mode, self.K = rule.T, rule.tick, rule.mode, rule.K
        self.created = created
        self._created = created.tolist()

    def _last_tick_at(self, time: float) -> float:
        k = float(math.floor(time / self.tick))
        if (k + 1.0) * self.tick <= time:
            k += 1.0
        if k * self.tick > time:
            k -= 1.0
        return k

    def _value_at(self, tick_time: float, created: float) -> float:
        age = tick_time - created
        if self.mode == "paper":
            return min(max(age / self.T, 0.0), 1.0)
        if age < 0:
            return 1.0 / self.K
        return min((math.floor(age / self.tick + 1e-9) + 1.0) / self.K, 1.0)

    def fraction_at(self, block: int, time: float) -> float:
        c = self._created[block]
        if time < c:
            return 0.0
        return self._value_at(self._last_tick_at(time) * self.tick, c)

    def first_time_at(self, block: int, need: float, after: float) -> float:
        if not need <= 1.0 + 1e-9:
            return math.inf
        c = self._created[block]
        x = min(max(need, 0.0), 1.0)
        age = x * self.T if self.mode == "paper" else max(math.ceil(x * self.K - 1.0 - 1e-09), 0.0) * self.tick
        k = max(float(math.ceil((c + age) / self.tick - 1e-7)), self._last_tick_at(after) + 1.0)
        return k * self.tick

    def _last_tick(self, times: FloatArray) -> FloatArray:
        k = np.floor(np.asarray(times, dtype=np.float64) / self.tick)
        k = np.where((k + 1.0) * self.tick <= times, k + 1.0, k)
        return np.where(k * self.tick > times, k - 1.0, k)

    def _value(self, tick_time: FloatArray, created: FloatArray) -> FloatArray:
        age = tick_time - created
        if self.mode == "paper":
            return np.clip(age / self.T, 0.0, 1.0)
        k = np.floor(age / self.tick + 1e-9)
        return np.where(age >= 0, np.minimum((k + 1.0) / self.K, 1.0), 1.0 / self.K)

    def fraction(self, blocks: IntArray, times: FloatArray) -> FloatArray:
        c = self.created[blocks]
        t = np.broadcast_to(np.asarray(times, dtype=np.float64), c.shape)
        value = self._value(self._last_tick(t) * self.tick, c)
        return np.where(t >= c, value, 0.0)

    def first_time(self, blocks: IntArray, need: FloatArray, after: FloatArray) -> FloatArray:
        c = self.created[blocks]
        need = np.asarray(need, dtype=np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            if self.mode == "paper":
                age = np.clip(need, 0.0, 1.0) * self.T
            else:
                kk = np.ceil(np.clip(need, 0.0, 1.0) * self.K - 1.0 - 1e-9)
                age = np.maximum(kk, 0.0) * self.tick
            k = np.ceil((c + age) / self.tick - 1e-7)
        k = np.maximum(k, self._last_tick(np.asarray(after, dtype=np.float64)) + 1.0)
        return np.where(need > 1.0 + 1e-9, np.inf, k * self.tick)

    def last_step(self) -> float:
        if self.created.size == 0:
            return -math.inf
        full_age = self.T if self.mode == "paper" else (self.K - 1) * self.tick
        k = np.ceil((self.created + full_age) / self.tick - 1e-7)
        k = np.maximum(k, self._last_tick(self.created) + 1.0)
        # The tick at which the last block reaches 1 (checked against the rule, one tick later if rounding says so).
        t = k * self.tick
        t = np.where(self._value(t, self.created) >= 1.0, t, t + self.tick)
        return float(t.max())


#: Parameters of the per-arrival unlocking (DPF-N, RR-N).
ARRIVAL_PARAMS: Mapping[str, Param] = {
    "N": Param(positive_int("N"), 100, "arrivals after which a block is fully unlocked"),
}

#: Parameters of the timed unlocking (DPF-T, RR-T).
TIMED_PARAMS: Mapping[str, Param] = {
    "T": Param(positive_float("T"), 100.0, "time after creation at which a block is fully unlocked"),
    "tick": Param(positive_float("tick", allow_none=True), None, "unlock period (default T/100)"),
    "unlock": Param(choice("unlock", UNLOCK_MODES), "paper", "paper: (t-created)/T; artifact: (k+1)/K"),
}


def arrival_unlocker(config: Mapping[str, Any]) -> UnlockPerArrival:
    """The per-arrival unlocker of a policy configured with :data:`ARRIVAL_PARAMS`."""
    return UnlockPerArrival(int(config["N"]))


def timed_unlocker(config: Mapping[str, Any]) -> UnlockOverTime:
    """The timed unlocker of a policy configured with :data:`TIMED_PARAMS` (default tick ``T/100``)."""
    T = float(config["T"])
    tick = config["tick"]
    return UnlockOverTime(T, float(tick) if tick is not None else T / 100.0, str(config["unlock"]))
