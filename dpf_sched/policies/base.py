"""The policy interface: small plug points, one per decision, and verdicts that separate "wait" from "never".

A policy answers three questions, each through one small object or method:

* **when does budget unlock?** — its :class:`Unlocker` (on block creation, on a claim's arrival, at times);
* **in which order are waiting claims considered?** — :meth:`Policy.sort_key`;
* **what does one scheduling pass decide?** — :meth:`Policy.schedule`, which returns :class:`Decision` values
  (grant or reject); a claim without a decision keeps waiting.

Optionally, a policy can describe itself to the batch simulator (:mod:`dpf_sched.sim.engine`) with a
:class:`GreedyPlan` and its unlocker's :class:`UnlockSchedule`; trace replay then skips the per-pass calls.

Policies never write the ledger: they read a :class:`LedgerView` and the scheduler's :class:`ClaimQueue`, and
the scheduler applies their decisions through the ledger, which checks every invariant again. Policies may keep
scheduling state of their own (arrival counters, round-robin accumulators), never budget state.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import numpy as np
from numpy.typing import NDArray

from dpf_sched.composition import Composition
from dpf_sched.errors import InvalidParameterError
from dpf_sched.queue import ClaimQueue, QueuedClaim

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


class LedgerView(Protocol):
    """The read-only part of a ledger that policies see (arrays are immutable snapshots, taken when read)."""

    composition: Composition

    @property
    def n_blocks(self) -> int: ...

    @property
    def capacity(self) -> FloatArray: ...

    @property
    def locked(self) -> FloatArray: ...

    @property
    def unlocked(self) -> FloatArray: ...

    @property
    def consumed(self) -> FloatArray: ...

    @property
    def unlocked_fraction(self) -> FloatArray: ...

    @property
    def created(self) -> FloatArray: ...

    @property
    def retired_mask(self) -> NDArray[np.bool_]: ...


class Verdict(StrEnum):
    """What a pass decided for one claim (absence of a decision means WAIT)."""

    GRANT = "grant"
    WAIT = "wait"
    REJECT = "reject"


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict on one waiting claim, with a reason for rejections."""

    handle: int
    verdict: Verdict
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Unlock:
    """Raise the cumulative unlocked fraction of ``blocks`` to ``fractions``."""

    blocks: IntArray
    fractions: FloatArray


@dataclass(frozen=True)
class PassContext:
    """Everything one pass may read: time, ledger view, queue, blocks that gained budget, new arrivals."""

    now: float
    ledger: LedgerView
    queue: ClaimQueue
    dirty: IntArray
    arrivals: Sequence[QueuedClaim]


class Unlocker:
    """When and how much of each block becomes available (cumulative fractions of its capacity)."""

    def on_block(self, block: int, created: float, ledger: LedgerView) -> float:
        """Initial unlocked fraction of a new block."""
        return 0.0

    def on_arrival(self, claim: QueuedClaim, ledger: LedgerView) -> Unlock | None:
        """Unlocks triggered by a claim's arrival."""
        return None

    def next_time(self, now: float, ledger: LedgerView) -> float | None:
        """The next time (> ``now``) at which :meth:`at_time` unlocks something, or ``None``."""
        return None

    def at_time(self, now: float, ledger: LedgerView) -> Unlock | None:
        """Time-driven unlocks due at ``now``."""
        return None

    def schedule(self, created: FloatArray, row_blocks: IntArray, row_times: FloatArray) -> UnlockSchedule | None:
        """This rule as a function of time, for the batch simulator (``None``: the simulator cannot use it).

        ``created`` holds every block's creation time; ``row_blocks`` and ``row_times`` list every (claim, block)
        pair of the whole run as the block index and the claim's arrival time, so a rule driven by arrivals
        knows them all in advance.
        """
        return None


class UnlockSchedule(ABC):
    """The cumulative unlocked fraction of every block over a whole run, known in advance (batch simulation).

    An online :class:`Unlocker` reacts to arrivals and ticks one at a time; a trace replay knows every arrival
    beforehand, so the same rule becomes a step function of time per block. The batch simulator only asks two
    questions of it, both vectorised over (block, time) pairs.
    """

    @abstractmethod
    def fraction(self, blocks: IntArray, times: FloatArray) -> FloatArray:
        """Per pair: the block's unlocked fraction once every unlock at or before ``time`` has happened."""

    @abstractmethod
    def first_time(self, blocks: IntArray, need: FloatArray, after: FloatArray) -> FloatArray:
        """Per pair: a time ``> after`` no later than the first unlock that brings the block to ``need``.

        Returning an earlier unlock instant is allowed (the simulator re-checks); returning a later one is not.
        ``inf`` when no unlock after ``after`` reaches ``need``.
        """

    def last_step(self) -> float:
        """Time of the last unlock that changes anything (``-inf`` when unlocks coincide with arrivals)."""
        return -math.inf

    def fraction_at(self, block: int, time: float) -> float:
        """:meth:`fraction` for one block (subclasses override it with scalar code: it is on the hot path)."""
        return float(self.fraction(np.array([block]), np.array([time]))[0])

    def first_time_at(self, block: int, need: float, after: float) -> float:
        """:meth:`first_time` for one block."""
        return float(self.first_time(np.array([block]), np.array([need]), np.array([after]))[0])


class UnlockAll(Unlocker):
    """Everything is unlocked when the block is created (FCFS, DRF)."""

    def on_block(self, block: int, created: float, ledger: LedgerView) -> float:
        return 1.0

    def schedule(self, created: FloatArray, row_blocks: IntArray, row_times: FloatArray) -> UnlockSchedule:
        return UnlockedAtCreation(created)


class UnlockedAtCreation(UnlockSchedule):
    """Schedule of :class:`UnlockAll`: 0 before creation, 1 from then on; nothing unlocks later."""

    def __init__(self, created: FloatArray) -> None:
        self.created = np.asarray(created, dtype=np.float64)
        self._created = self.created.tolist()

    def fraction_at(self, block: int, time: float) -> float:
        return 1.0 if self._created[block] <= time else 0.0

    def first_time_at(self, block: int, need: float, after: float) -> float:
        return math.inf

    def fraction(self, blocks: IntArray, times: FloatArray) -> FloatArray:
        return np.where(self.created[blocks] <= times, 1.0, 0.0)

    def first_time(self, blocks: IntArray, need: FloatArray, after: FloatArray) -> FloatArray:
        return np.full(np.shape(blocks), np.inf)


@dataclass(frozen=True)
class GreedyPlan:
    """What the batch simulator needs to run a greedy policy (grant in order while claims fit) on its own.

    ``order`` is the order of consideration within a pass: ``"shares"`` (dominant share, ties by the next
    largest shares, then arrival), ``"dominant"`` (dominant share, then arrival) or ``"arrival"``.
    ``reject_misfits_on_arrival``: an arriving claim that does not fit is rejected at once (FCFS).
    """

    order: str
    reject_misfits_on_arrival: bool = False


# ----- parameters -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Param:
    """A declared policy parameter: how to parse it from text, its default and what it means."""

    parse: Callable[[Any], Any]
    default: Any
    doc: str


def positive_int(name: str) -> Callable[[Any], int]:
    """Parser for a positive integer parameter."""

    def parse(v: Any) -> int:
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"{name} must be a positive integer, got {v!r}") from None
        if isinstance(v, bool) or not np.isfinite(f) or f != int(f) or f <= 0:
            raise InvalidParameterError(f"{name} must be a positive integer, got {v!r}")
        return int(f)

    return parse


def positive_float(name: str, allow_none: bool = False) -> Callable[[Any], float | None]:
    """Parser for a positive finite float parameter (optionally ``None``)."""

    def parse(v: Any) -> float | None:
        if allow_none and (v is None or (isinstance(v, str) and v.lower() in ("none", "auto", ""))):
            return None
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"{name} must be a positive number, got {v!r}") from None
        if isinstance(v, bool) or not np.isfinite(f) or f <= 0:
            raise InvalidParameterError(f"{name} must be a positive finite number, got {v!r}")
        return f

    return parse


def boolean(name: str) -> Callable[[Any], bool]:
    """Parser for a boolean parameter (true/false/1/0/yes/no)."""

    def parse(v: Any) -> bool:
        if isinstance(v, bool):
            return v
        s = str(v).strip().lower()
        if s in ("1", "true", "yes", "on"):
            return True
        if s in ("0", "false", "no", "off"):
            return False
        raise InvalidParameterError(f"{name} must be true or false, got {v!r}")

    return parse


def choice(name: str, options: Sequence[str]) -> Callable[[Any], str]:
    """Parser for a parameter with a fixed set of values."""

    def parse(v: Any) -> str:
        s = str(v).strip().lower()
        if s not in options:
            raise InvalidParameterError(f"{name} must be one of {', '.join(options)}; got {v!r}")
        return s

    return parse


TIE_BREAKS = ("lexicographic", "arrival")


class Policy(ABC):
    """Base class of every scheduling policy.

    Subclasses declare ``name`` and ``params`` (name → :class:`Param`) and implement :meth:`schedule`.
    Parameters arrive as keyword arguments (strings from the CLI are parsed by the declared parsers);
    unknown names are an error.
    """

    name: ClassVar[str] = ""
    params: ClassVar[Mapping[str, Param]] = {}
    supports_renyi: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            known = ", ".join(sorted(self.params)) or "none"
            raise InvalidParameterError(f"policy {self.name}: unknown parameter(s) {unknown}; known: {known}")
        self.config: dict[str, Any] = {}
        for key, spec in self.params.items():
            self.config[key] = spec.parse(params[key]) if key in params else spec.default
        self.unlocker: Unlocker = self.make_unlocker()

    def make_unlocker(self) -> Unlocker:
        """The unlocking rule of this policy (default: everything at block creation)."""
        return UnlockAll()

    def attach(self, ledger: LedgerView) -> None:
        """Called once by the scheduler; refuse a ledger this policy cannot serve."""
        if ledger.composition.name == "renyi" and not self.supports_renyi:
            raise InvalidParameterError(f"policy {self.name} supports basic composition only")

    def sort_key(self, claim: QueuedClaim) -> Any:
        """Order of consideration within a pass (default: dominant share, tie-break per ``tie_break``)."""
        if self.config.get("tie_break", "lexicographic") == "arrival":
            return (claim.dominant_share, claim.seq)
        return (claim.shares, claim.seq)

    def forget(self, handle: int) -> None:
        """The claim ``handle`` left the queue (granted, rejected or expired); drop any state kept for it."""
        return None

    @abstractmethod
    def schedule(self, ctx: PassContext) -> list[Decision]:
        """Decide grants and rejections for one pass; claims without a decision keep waiting."""

    def batch_plan(self) -> GreedyPlan | None:
        """How the batch simulator can run this policy without calling :meth:`schedule` per pass.

        ``None`` (the default) means it cannot: trace replay then drives the policy through the
        :class:`~dpf_sched.scheduler.Scheduler`, pass by pass. A policy that returns a plan promises that the
        plan and its unlocker's :meth:`Unlocker.schedule` grant exactly what :meth:`schedule` would.
        """
        return None

    def report(self) -> dict[str, Any]:
        """Extra columns for the summary of a run this policy scheduled (``compare`` tables); none by default.

        A policy whose work has a quality of its own to report says it here (``optimal``: whether every pass was
        proven optimal, and the last pass's proven bound), so a comparison never hides a non-proven "optimum".
        """
        return {}

    def describe(self) -> str:
        """Name and parameters, for logs and reports (only those that matter when the class declares
        ``active_params(config)``, as the packing policies do)."""
        active = getattr(type(self), "active_params", None)
        keys = set(active(self.config)) if callable(active) else set(self.config)
        args = ", ".join(f"{k}={v}" for k, v in self.config.items() if k in keys)
        return f"{self.name}({args})"
