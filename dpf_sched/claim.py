"""Claims: an all-or-nothing request for privacy budget on a set of blocks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dpf_sched.block import check_id, check_time
from dpf_sched.budget import Budget, EpsDelta, RenyiCurve
from dpf_sched.errors import (
    AlphaGridMismatchError,
    CompositionMismatchError,
    InvalidBudgetError,
    InvalidParameterError,
)


@dataclass(frozen=True)
class Claim:
    """A request for ``demand[block]`` on every listed block, granted in full or not at all.

    Parameters
    ----------
    id
        Unique claim id.
    demand
        Block id → budget (all of one kind: every value an :class:`EpsDelta`, or every value a
        :class:`RenyiCurve`). Every per-block demand must be non-zero.
    arrival
        Submission time on the scheduler's clock.
    timeout
        Seconds (clock units) after ``arrival`` at which a still-waiting claim is rejected; ``None`` waits
        forever.
    owner
        Free-form owner (tenant, pipeline); used for metrics and access control.
    weight
        Positive importance, used by weighted policies (not by DPF itself).
    lease
        Seconds (clock units) a *granted* claim stays granted without a renewal: on grant its lease deadline is
        the grant time + ``lease``, each :meth:`Scheduler.renew <dpf_sched.scheduler.Scheduler.renew>` moves it
        to now + ``lease``, and a pass after the deadline expires the claim (its unconsumed remainder returns to
        the unlocked pool). ``None`` (the default in the library and the simulator): no lease, a grant is held
        until it is consumed or released.
    """

    id: str
    demand: Mapping[str, Budget]
    arrival: float = 0.0
    timeout: float | None = None
    owner: str | None = None
    weight: float = 1.0
    lease: float | None = None
    _blocks: tuple[str, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "id", check_id("claim", self.id))
        arrival = self.arrival
        if type(arrival) is not float or not math.isfinite(arrival):  # fast path for the common case
            object.__setattr__(self, "arrival", check_time(f"claim {self.id}: arrival", arrival))
        if not (type(self.demand) is dict or isinstance(self.demand, Mapping)) or not self.demand:
            raise InvalidParameterError(f"claim {self.id}: demand must name at least one block")
        demand: dict[str, Budget] = {}
        checked: dict[int, Budget] = {}  # a uniform claim repeats one budget object: check it once
        for raw_block, budget in self.demand.items():
            block = raw_block if type(raw_block) is str and raw_block else check_id("block", raw_block)
            if block in demand:
                raise InvalidParameterError(f"claim {self.id}: block {block} listed twice")
            if id(budget) not in checked:
                if not isinstance(budget, (EpsDelta, RenyiCurve)):
                    raise InvalidBudgetError(f"claim {self.id}: demand on block {block} is not a budget: {budget!r}")
                if budget.is_zero():
                    raise InvalidBudgetError(f"claim {self.id}: demand on block {block} is zero")
                checked[id(budget)] = budget
            demand[block] = budget
        kinds = {type(b) for b in checked.values()}
        if len(kinds) > 1:
            raise CompositionMismatchError(f"claim {self.id}: mixes (ε, δ) and Rényi demands")
        curves = [b for b in checked.values() if isinstance(b, RenyiCurve)]
        if curves and any(c.grid != curves[0].grid for c in curves):
            raise AlphaGridMismatchError(f"claim {self.id}: demands on different α grids")
        object.__setattr__(self, "demand", MappingProxyType(demand))
        object.__setattr__(self, "_blocks", tuple(demand))
        if self.timeout is not None:
            t = check_time(f"claim {self.id}: timeout", self.timeout)
            if t <= 0:
                raise InvalidParameterError(f"claim {self.id}: timeout must be positive, got {t}")
            object.__setattr__(self, "timeout", t)
        if self.owner is not None and not isinstance(self.owner, str):
            raise InvalidParameterError(f"claim {self.id}: owner must be a string, got {self.owner!r}")
        w = self.weight
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
            raise InvalidParameterError(f"claim {self.id}: weight must be a positive finite number, got {w!r}")
        object.__setattr__(self, "weight", float(w))
        if self.lease is not None:
            lease = self.lease
            if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not math.isfinite(lease) or lease <= 0:
                raise InvalidParameterError(f"claim {self.id}: lease must be a positive finite number, got {lease!r}")
            object.__setattr__(self, "lease", float(lease))

    @classmethod
    def uniform(cls, id: str, blocks: Iterable[str], demand: Budget, **kwargs: Any) -> Claim:
        """A claim asking the same ``demand`` on every one of ``blocks``."""
        block_list = list(blocks)
        if not block_list:
            raise InvalidParameterError(f"claim {id}: no blocks")
        if len(set(block_list)) != len(block_list):
            raise InvalidParameterError(f"claim {id}: a block is listed twice in {block_list}")
        return cls(id, dict.fromkeys(block_list, demand), **kwargs)

    @property
    def blocks(self) -> tuple[str, ...]:
        """The block ids, in the order given."""
        return self._blocks

    @property
    def deadline(self) -> float:
        """Absolute expiry time (``inf`` without a timeout)."""
        return math.inf if self.timeout is None else self.arrival + self.timeout
