"""Block selectors: pick the blocks a claim reads by id, by attribute, or by creation-time range.

The PrivateKube system lets a claim name its blocks by a selector rather than a list; a selector is resolved
against the blocks the ledger holds at submission time, and the claim then holds the resolved id list.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from dpf_sched.block import Block, check_id, frozen_mapping
from dpf_sched.errors import InvalidParameterError, UnknownBlockError


@dataclass(frozen=True)
class BlockSelector:
    """Which blocks a claim reads.

    All given criteria must hold (logical AND). ``created_from`` is inclusive and ``created_until``
    exclusive. ``latest`` keeps the ``latest`` most recently created matches. Fewer than ``min_blocks``
    matches is an error (the claim could not run as intended).
    """

    ids: tuple[str, ...] | None = None
    attributes: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)
    created_from: float | None = None
    created_until: float | None = None
    latest: int | None = None
    min_blocks: int = 1

    def __post_init__(self) -> None:
        if self.ids is not None:
            if isinstance(self.ids, (str, bytes)) or not isinstance(self.ids, Iterable):
                raise InvalidParameterError(f"selector ids must be a list of ids, got {self.ids!r}")
            ids = tuple(check_id("block", i) for i in self.ids)
            if len(set(ids)) != len(ids):
                raise InvalidParameterError(f"selector lists a block twice: {list(ids)}")
            object.__setattr__(self, "ids", ids)
        object.__setattr__(self, "attributes", frozen_mapping(self.attributes, "selector attributes"))
        for name in ("created_from", "created_until"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or math.isnan(float(v))):
                raise InvalidParameterError(f"selector {name} must be a number, got {v!r}")
        if self.created_from is not None and self.created_until is not None and self.created_until <= self.created_from:
            raise InvalidParameterError(f"selector time range is empty: [{self.created_from}, {self.created_until})")
        if self.latest is not None and (
            isinstance(self.latest, bool) or not isinstance(self.latest, int) or self.latest < 1
        ):
            raise InvalidParameterError(f"selector latest must be a positive integer, got {self.latest!r}")
        mb = self.min_blocks
        if isinstance(mb, bool) or not isinstance(mb, int) or mb < 0:
            raise InvalidParameterError(f"selector min_blocks must be a non-negative integer, got {mb!r}")

    def select(self, blocks: Iterable[Block]) -> tuple[str, ...]:
        """The ids of the matching blocks, oldest first (ids order when ``ids`` is given)."""
        pool = list(blocks)
        if self.ids is not None:
            by_id = {b.id: b for b in pool}
            missing = [i for i in self.ids if i not in by_id]
            if missing:
                raise UnknownBlockError(f"selector names unknown blocks: {missing}")
            pool = [by_id[i] for i in self.ids]
        else:
            pool.sort(key=lambda b: b.created)
        out = [b for b in pool if self._matches(b)]
        if self.latest is not None:
            out = sorted(out, key=lambda b: b.created)[-self.latest :]
        if len(out) < self.min_blocks:
            raise InvalidParameterError(f"selector matched {len(out)} blocks, fewer than min_blocks={self.min_blocks}")
        return tuple(b.id for b in out)

    def _matches(self, block: Block) -> bool:
        for k, v in self.attributes.items():
            if block.attributes.get(k) != v:
                return False
        if self.created_from is not None and block.created < self.created_from:
            return False
        return not (self.created_until is not None and block.created >= self.created_until)
