"""Policy registry: built-in policies by name, third-party ones through the ``dpf_sched.policies`` entry points.

A third-party package registers a policy class (a subclass of :class:`~dpf_sched.policies.base.Policy`) in its
own ``pyproject.toml``::

    [project.entry-points."dpf_sched.policies"]
    my-policy = "my_package.module:MyPolicy"

and ``dpf-sched simulate --policy my-policy`` finds it.
"""

from __future__ import annotations

import functools
import logging
from importlib.metadata import entry_points
from typing import Any

from dpf_sched.errors import UnknownPolicyError
from dpf_sched.policies.base import Policy
from dpf_sched.policies.dpack import DPack
from dpf_sched.policies.dpf import DPFN, DPFT
from dpf_sched.policies.drf import DRF
from dpf_sched.policies.fcfs import FCFS
from dpf_sched.policies.hybrid import DPFPack
from dpf_sched.policies.optimal import Optimal
from dpf_sched.policies.round_robin import RRN, RRT

logger = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "dpf_sched.policies"

_BUILTIN: dict[str, type[Policy]] = {
    cls.name: cls for cls in (FCFS, DRF, DPFN, DPFT, RRN, RRT, DPack, DPFPack, Optimal)
}
_extra: dict[str, type[Policy]] = {}


def register(cls: type[Policy], name: str | None = None) -> type[Policy]:
    """Register a policy class in-process (tests, notebooks); usable as a decorator."""
    if not (isinstance(cls, type) and issubclass(cls, Policy)):
        raise TypeError(f"{cls!r} is not a Policy subclass")
    key = name or cls.name
    if not key:
        raise ValueError(f"policy class {cls.__name__} has no name")
    _extra[key] = cls
    return cls


@functools.cache
def _from_entry_points() -> dict[str, type[Policy]]:
    found: dict[str, type[Policy]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        if ep.name in _BUILTIN:
            continue
        try:
            cls = ep.load()
        except Exception:  # a broken plug-in must not break the built-ins
            logger.exception("could not load policy entry point %s", ep.name)
            continue
        if isinstance(cls, type) and issubclass(cls, Policy):
            found[ep.name] = cls
        else:
            logger.warning("entry point %s is not a Policy subclass; ignored", ep.name)
    return found


def available() -> dict[str, type[Policy]]:
    """All policy classes by name: built-ins, entry points, then in-process registrations."""
    return {**_BUILTIN, **_from_entry_points(), **_extra}


def refresh() -> None:
    """Forget the cached entry points (after installing a plug-in in a running process)."""
    _from_entry_points.cache_clear()


def get_policy_class(name: str) -> type[Policy]:
    """The policy class registered under ``name``."""
    policies = available()
    try:
        return policies[name]
    except (KeyError, TypeError):
        raise UnknownPolicyError(f"unknown policy {name!r}; available: {', '.join(sorted(policies))}") from None


def create_policy(name: str, **params: Any) -> Policy:
    """Instantiate the policy ``name`` with ``params`` (validated by the policy)."""
    return get_policy_class(name)(**params)
