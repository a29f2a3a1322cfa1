"""Dominant Private Block Fairness (Luo et al., OSDI'21, Algorithms 1-3): DPF-N and DPF-T."""

from __future__ import annotations

from typing import ClassVar

from dpf_sched.policies.base import TIE_BREAKS, Param, Unlocker, boolean, choice
from dpf_sched.policies.greedy import GreedyPolicy
from dpf_sched.policies.unlocking import ARRIVAL_PARAMS, TIMED_PARAMS, arrival_unlocker, timed_unlocker

_COMMON = {
    "tie_break": Param(choice("tie_break", TIE_BREAKS), "lexicographic", "order among equal dominant shares"),
    "strict": Param(boolean("strict"), False, "stop a pass at the first claim that does not fit"),
}


class DPFN(GreedyPolicy):
    """DPF-N: each arriving claim unlocks ``G_j / N`` of each block it asks for; waiting claims are granted in
    ascending dominant share (ties: second largest share, and so on, then arrival)."""

    name = "dpf-n"
    params: ClassVar = {**ARRIVAL_PARAMS, **_COMMON}

    def make_unlocker(self) -> Unlocker:
        return arrival_unlocker(self.config)


class DPFT(GreedyPolicy):
    """DPF-T: every ``tick`` each block unlocks ``G_j · tick / T``, fully unlocked ``T`` after its creation;
    waiting claims are granted in ascending dominant share."""

    name = "dpf-t"
    params: ClassVar = {**TIMED_PARAMS, **_COMMON}

    def make_unlocker(self) -> Unlocker:
        return timed_unlocker(self.config)
