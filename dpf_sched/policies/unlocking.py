"""Unlocking rules: DPF-N's per-arrival unlock and DPF-T's timed unlock (spec/dpf.md, "Unlocking")."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from dpf_sched.errors import InvalidParameterError
from dpf_sched.policies.base import LedgerView, Param, Unlock, Unlocker, choice, positive_float, positive_int
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
