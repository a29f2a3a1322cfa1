"""First come, first served: everything unlocked at creation; grant on arrival if it fits, else reject."""

from __future__ import annotations

from typing import Any, ClassVar

from dpf_sched.policies.greedy import GreedyPolicy
from dpf_sched.queue import QueuedClaim


class FCFS(GreedyPolicy):
    """FCFS (spec/dpf.md): a claim is granted at arrival if it fits; otherwise it is rejected at once,
    since nothing will be unlocked later. Claims arriving at the same instant are served in arrival order."""

    name = "fcfs"
    params: ClassVar = {}
    reject_misfits_on_arrival = True
    batch_order = "arrival"

    def sort_key(self, claim: QueuedClaim) -> Any:
        return claim.seq
