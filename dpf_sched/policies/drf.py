"""Dominant Resource Fairness over privacy blocks: DPF's order without gradual unlocking."""

from __future__ import annotations

from typing import ClassVar

from dpf_sched.policies.base import TIE_BREAKS, Param, boolean, choice
from dpf_sched.policies.greedy import GreedyPolicy


class DRF(GreedyPolicy):
    """DRF (spec/dpf.md): all budget unlocked at block creation; the claims waiting in a pass are granted in
    ascending dominant share. Without gradual unlocking it has no sharing incentive."""

    name = "drf"
    params: ClassVar = {
        "tie_break": Param(choice("tie_break", TIE_BREAKS), "lexicographic", "order among equal dominant shares"),
        "strict": Param(boolean("strict"), False, "stop a pass at the first claim that does not fit"),
    }
