"""Dominant Private Block Fairness (Luo et al., OSDI'21, Algorithms 1-3): DPF-N and DPF-T."""

from __future__ import annotations

from typing import ClassVar

from dpf_sched.policies.base import TIE_BREAKS, Param, Unlocker, boolean, choice, positive_float, positive_int
from dpf_sched.policies.greedy import GreedyPolicy
from dpf_sched.policies.unlocking import UNLOCK_MODES, UnlockOverTime, UnlockPerArrival

_COMMON = {
    "tie_break": Param(choice("tie_break", TIE_BREAKS), "lexicographic", "order among equal dominant shares"),
    "strict": Param(boolean("strict"), False, "stop a pass at the first claim that does not fit"),
}


class DPFN(GreedyPolicy):
    """DPF-N: each arriving claim unlocks ``G_j / N`` of each block it asks for; waiting claims are granted in
    ascending dominant share (ties: second largest share, and so on, then arrival)."""

    name = "dpf-n"
    params: ClassVar = {
        "N": Param(positive_int("N"), 100, "arrivals after which a block is fully unlocked"),
        **_COMMON,
    }

    def make_unlocker(self) -> Unlocker:
        return UnlockPerArrival(int(self.config["N"]))


class DPFT(GreedyPolicy):
    """DPF-T: every ``tick`` each block unlocks ``G_j · tick / T``, fully unlocked ``T`` after its creation;
    waiting claims are granted in ascending dominant share."""

    name = "dpf-t"
    params: ClassVar = {
        "T": Param(positive_float("T"), 100.0, "time after creation at which a block is fully unlocked"),
        "tick": Param(positive_float("tick", allow_none=True), None, "unlock period (default T/100)"),
        "unlock": Param(choice("unlock", UNLOCK_MODES), "paper", "paper: (t-created)/T; artifact: (k+1)/K"),
        **_COMMON,
    }

    def make_unlocker(self) -> Unlocker:
        T = float(self.config["T"])
        tick = self.config["tick"]
        return UnlockOverTime(T, float(tick) if tick is not None else T / 100.0, str(self.config["unlock"]))
