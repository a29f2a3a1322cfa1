"""Private data blocks: the unit that carries a global privacy budget."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dpf_sched.budget import Budget, EpsDelta, RenyiCurve
from dpf_sched.errors import InvalidBudgetError, InvalidParameterError


def check_id(kind: str, value: Any) -> str:
    """Ids are non-empty strings (ints are accepted and turned into strings, as JSON traces often use them)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InvalidParameterError(f"{kind} id must be a string, got {value!r}")
    s = str(value)
    if not s:
        raise InvalidParameterError(f"{kind} id is empty")
    return s


def check_time(name: str, value: Any) -> float:
    """A finite time value."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x):
        raise InvalidParameterError(f"{name} must be finite, got {x}")
    return x


def frozen_mapping(value: Mapping[str, Any] | None, what: str) -> Mapping[str, Any]:
    """A read-only copy of a str-keyed mapping."""
    if value is None:
        return MappingProxyType({})
    if not isinstance(value, Mapping):
        raise InvalidParameterError(f"{what} must be a mapping, got {value!r}")
    for k in value:
        if not isinstance(k, str):
            raise InvalidParameterError(f"{what} keys must be strings, got {k!r}")
    return MappingProxyType(dict(value))


@dataclass(frozen=True)
class Block:
    """A private block: an id, its global capacity, when it was created, and free-form attributes.

    ``capacity`` is an :class:`EpsDelta` on a basic-composition ledger and a :class:`RenyiCurve` on a Rényi
    ledger. ``guarantee`` records the (ε_G, δ_G) a Rényi capacity was derived from, for reporting.
    """

    id: str
    capacity: Budget
    created: float = 0.0
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    guarantee: EpsDelta | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", check_id("block", self.id))
        object.__setattr__(self, "created", check_time("block creation time", self.created))
        object.__setattr__(self, "attributes", frozen_mapping(self.attributes, "block attributes"))
        if not isinstance(self.capacity, (EpsDelta, RenyiCurve)):
            raise InvalidBudgetError(f"block {self.id}: capacity must be a budget, got {self.capacity!r}")
        if self.capacity.is_zero():
            raise InvalidBudgetError(f"block {self.id}: capacity must be positive, got zero")
        if isinstance(self.capacity, EpsDelta) and self.capacity.epsilon == 0:
            raise InvalidBudgetError(f"block {self.id}: capacity epsilon must be positive, got 0")
