"""Scheduling policies: plug-ins behind the small interface of :mod:`dpf_sched.policies.base`."""

from dpf_sched.policies.base import Decision, PassContext, Policy, Unlock, Unlocker, Verdict
from dpf_sched.policies.registry import available, create_policy, get_policy_class, register

__all__ = [
    "Decision",
    "PassContext",
    "Policy",
    "Unlock",
    "Unlocker",
    "Verdict",
    "available",
    "create_policy",
    "get_policy_class",
    "register",
]
