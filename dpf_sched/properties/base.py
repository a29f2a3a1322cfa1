"""Shared machinery of the property checkers: the policy under test, the input, and one observed replay.

Every checker runs the *online* :class:`~dpf_sched.scheduler.Scheduler` (through
:func:`~dpf_sched.sim.replay.replay` with an observer), never the batch simulator, so that a third-party policy
with no batch plan is checked exactly as it would run, and so that the state after every pass can be inspected.
The replay model is the paper's: claims finish instantly (a grant is consumed whole at once, nothing is ever
released), which is the model in which the theorems of ``proofs/`` are stated.

A policy is given by name (any registered one, including entry-point plug-ins), as a
:class:`~dpf_sched.policies.Policy` class, or as an instance; a checker needs a *fresh* policy for every replay
(policies keep scheduling state), so an instance is cloned as ``type(policy)(**policy.config)``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from dpf_sched.composition import Composition
from dpf_sched.errors import InvalidParameterError
from dpf_sched.policies.base import Policy, Verdict
from dpf_sched.policies.registry import create_policy
from dpf_sched.scheduler import Outcome, Scheduler
from dpf_sched.sim.replay import ReplayResult, replay
from dpf_sched.sim.table import SimInput, tables_from_trace, trace_from_tables
from dpf_sched.sim.trace import Trace, read_trace

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
PolicyFactory = Callable[[], Policy]
#: What a checker accepts as its input: a trace (object, path or open file) or a run in columnar form.
Subject = SimInput | Trace | str | Path | IO[str]
#: What a checker accepts as the policy under test.
PolicyLike = str | Policy | type[Policy]

#: The fair-demand ``N`` used for policies that have no integer parameter ``N`` of their own (FCFS, DRF, DPF-T).
DEFAULT_FAIR_N = 4


class Property(StrEnum):
    """The four game-theoretic properties of DPF (spec/dpf.md, paper §4.3)."""

    SHARING_INCENTIVE = "sharing-incentive"
    STRATEGY_PROOFNESS = "strategy-proofness"
    ENVY_FREENESS = "envy-freeness"
    PARETO_EFFICIENCY = "pareto-efficiency"


ALL_PROPERTIES: tuple[Property, ...] = tuple(Property)


def policy_factory(policy: PolicyLike, params: Mapping[str, Any] | None = None) -> PolicyFactory:
    """A function returning a fresh policy each call, from a registered name, a class or an instance.

    Raises :class:`~dpf_sched.errors.UnknownPolicyError` for an unknown name and
    :class:`~dpf_sched.errors.InvalidParameterError` for bad parameters (checked once, here).
    """
    kwargs = dict(params or {})
    if isinstance(policy, str):
        name = policy

        def make() -> Policy:
            return create_policy(name, **kwargs)

    elif isinstance(policy, type) and issubclass(policy, Policy):
        cls = policy

        def make() -> Policy:
            return cls(**kwargs)

    elif isinstance(policy, Policy):
        if kwargs:
            raise InvalidParameterError("params are only accepted with a policy name or class")
        cls_of, config = type(policy), dict(policy.config)

        def make() -> Policy:
            return cls_of(**config)

    else:
        raise InvalidParameterError(f"policy must be a name, a Policy class or instance, got {type(policy).__name__}")
    make()  # validate the parameters now, not inside a search
    return make


def fair_n_of(policy: Policy, fair_n: int | None) -> int:
    """The ``N`` of the fair-demand definition: ``fair_n`` if given, else the policy's own integer ``N``,
    else :data:`DEFAULT_FAIR_N`."""
    if fair_n is not None:
        if isinstance(fair_n, bool) or int(fair_n) != fair_n or fair_n <= 0:
            raise InvalidParameterError(f"fair N must be a positive integer, got {fair_n!r}")
        return int(fair_n)
    n = policy.config.get("N")
    if isinstance(n, int) and not isinstance(n, bool) and n > 0:
        return n
    return DEFAULT_FAIR_N


def as_input(subject: Subject) -> SimInput:
    """The columnar form of a checker's input (a trace is read whole, up to its header's end time)."""
    if isinstance(subject, SimInput):
        return subject
    trace = subject if isinstance(subject, Trace) else read_trace(subject)
    return tables_from_trace(trace, trace.header.end)


@dataclass(frozen=True)
class ClaimInfo:
    """What the checkers need of one claim: its blocks (ledger indices), demand rows and dominant share."""

    id: str
    arrival: float
    blocks: tuple[str, ...]
    idx: IntArray
    demand: FloatArray
    dominant_share: float


def claim_infos(inp: SimInput) -> dict[str, ClaimInfo]:
    """Per claim id, its :class:`ClaimInfo` (block indices are those of the input's block table, which are the
    ledger's indices in a replay of that input: blocks are added in table order)."""
    claims = inp.claims
    comp = inp.composition
    cap = inp.blocks.capacity
    out: dict[str, ClaimInfo] = {}
    ptr = claims.ptr.tolist()
    for k, cid in enumerate(claims.ids):
        rows = slice(ptr[k], ptr[k + 1])
        idx = claims.block[rows]
        dem = claims.demand[rows]
        ds = float(comp.shares(dem, cap[idx]).max()) if idx.size else math.inf
        out[cid] = ClaimInfo(
            cid, float(claims.arrival[k]), tuple(inp.blocks.ids[b] for b in idx.tolist()), idx, dem, ds
        )
    return out


def usable(capacity: FloatArray) -> NDArray[np.bool_]:
    """The columns that can serve anything (capacity > 0): basic ε (and δ when δ_G > 0), Rényi orders with
    ``G(α) > 0``. Dominant shares, fits and coverage are all taken over these columns only."""
    return np.asarray(capacity > 0, dtype=np.bool_)


def covers(comp: Composition, inner: FloatArray, outer: FloatArray, capacity: FloatArray) -> bool:
    """Whether a grant of ``outer`` would serve a claim that needs ``inner`` (both rows of one block).

    Coverage is pointwise on every usable column (basic: ε and δ; Rényi: every usable order): a Rényi grant is
    a curve charged at every order, so a mechanism can stand in for it only if its curve is nowhere larger.
    Uses the library's relative tolerance, like the fit test.
    """
    mask = usable(capacity)
    return bool(np.all(inner[mask] <= outer[mask] + comp.tolerance(capacity)[mask]))


def same_share(a: float, b: float) -> bool:
    """Equal dominant shares, up to the library's relative tolerance."""
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)


@dataclass
class PassObservation:
    """What the shared observer saw after one pass (mutable only while the replay runs)."""

    time: float
    granted: tuple[str, ...]
    waiting: tuple[str, ...]
    fitting: tuple[str, ...]


@dataclass
class ObservedRun:
    """One observed replay of an input under a policy: the result and, per pass, grants, waiters and the waiting
    claims that would fit in the unlocked budget after the pass (the raw material of Pareto efficiency and
    envy-freeness)."""

    input: SimInput
    policy: str
    fair_n: int
    result: ReplayResult
    claims: Mapping[str, ClaimInfo]
    passes: list[PassObservation] = field(default_factory=list)


def observe(inp: SimInput, factory: PolicyFactory, fair_n: int | None = None) -> ObservedRun:
    """Replay ``inp`` under a fresh policy through the online scheduler, recording every pass."""
    policy = factory()
    if inp.composition.name == "renyi" and not policy.supports_renyi:
        raise InvalidParameterError(f"policy {policy.name} supports basic composition only")
    passes: list[PassObservation] = []
    comp = inp.composition

    def watch(scheduler: Scheduler, outcomes: list[Outcome]) -> None:
        led = scheduler.ledger
        U, cap = led.unlocked, led.capacity
        waiting: list[str] = []
        fitting: list[str] = []
        for q in scheduler.queue:
            waiting.append(q.id)
            if bool(comp.fits(q.demand, U[q.idx], cap[q.idx]).all()):
                fitting.append(q.id)
        granted = tuple(o.claim_id for o in outcomes if o.verdict is Verdict.GRANT)
        passes.append(PassObservation(float(scheduler.clock.now()), granted, tuple(waiting), tuple(fitting)))

    result = replay(trace_from_tables(inp), policy, observer=watch, engine="scheduler")
    return ObservedRun(inp, policy.describe(), fair_n_of(policy, fair_n), result, claim_infos(inp), passes)


def grant_time(result: ReplayResult, k: int) -> float:
    """When the ``k``-th claim of a replay was granted (``inf`` if never)."""
    g = float(result.granted_at[k])
    return math.inf if math.isnan(g) else g


def opt_time(t: float) -> float | None:
    """``None`` for an infinite time (never), for reports."""
    return None if math.isinf(t) else t
