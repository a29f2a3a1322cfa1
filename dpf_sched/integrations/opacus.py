"""Budgeted DP-SGD with Opacus: a training job claims, waits for, consumes and releases privacy budget.

This module is the optional ``opacus`` extra: it is the only place of the library that imports torch and opacus,
and nothing in the core imports it. The life of a job (``docs/opacus.md`` explains the design):

1. **Plan.** The job's Rényi demand is the curve of the Poisson-subsampled Gaussian mechanism, composed over the
   steps it will take, computed by :mod:`dpf_sched.accounting` on the ledger's α grid
   (:func:`plan_dp_sgd`, :func:`plan_for_loader`). The numbers are the ones the Opacus accountant will record:
   the sample rate ``1 / len(private loader)`` (which is *not* always ``private_loader.sample_rate``: for 93
   batches the private loader has 92 and the accountant charges 1/92) times the accumulated iterations, and
   ``epochs × len(private loader)`` steps. A target (ε, δ) is met by calibrating σ with the library's own
   accountant (:func:`calibrate_for_loader`).
2. **Claim and wait.** The demand is claimed on the blocks the job reads (picked by a
   :class:`~dpf_sched.selector.BlockSelector`: ids, attributes, time range) through a :class:`BudgetClient`, and
   the job waits for the grant with a timeout (:func:`claim_and_wait`); a rejection raises
   :class:`ClaimRejectedError`, a timeout :class:`GrantTimeoutError`, before any model, optimizer or data is
   touched.
3. **Read only granted rows.** :class:`GrantedDataset` holds the rows of the selected blocks only, and refuses
   every read until the claim is granted and after the job has finished.
4. **Charge every step.** :class:`BudgetHook` is chained in front of the optimizer's existing step hook (the
   accountant's): for each real step it adds the step's curve (σ, ``sample_rate × accumulated_iterations``) to
   what the job has spent, and if that would exceed the grant at any α it zeroes the noised gradients and raises
   :class:`BudgetExhaustedError` *before* the accountant records the step and before the parameters change.
5. **Commit and release.** On exit, whatever the reason, the curve of the accountant's own ``history``
   (``(noise_multiplier, sample_rate, steps)`` segments; any accountant: PRV, RDP, GDP) is consumed on every
   block, and the rest of the grant is released.

:class:`BudgetedPrivacyEngine` ties these together in an API that reads like Opacus's ``PrivacyEngine``.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence, Sized
from dataclasses import dataclass, field
from enum import StrEnum
from types import TracebackType
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np
import torch
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from opacus.utils.uniform_sampler import UniformWithReplacementSampler
from torch.utils.data import DataLoader, Dataset

from dpf_sched.accounting import calibrate_noise_multiplier, rdp_to_epsilon, subsampled_gaussian_rdp
from dpf_sched.budget import AlphaGrid, Budget, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.errors import (
    CompositionMismatchError,
    DpfSchedError,
    InvalidBudgetError,
    InvalidParameterError,
    InvalidStateError,
)
from dpf_sched.ledger.base import ClaimRecord, ClaimState
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

__all__ = [
    "AccountingMismatchError",
    "BlockAccessError",
    "BudgetClient",
    "BudgetExhaustedError",
    "BudgetHook",
    "BudgetedPrivacyEngine",
    "BudgetedTraining",
    "ClaimRejectedError",
    "CommitError",
    "DpSgdPlan",
    "GrantTimeoutError",
    "GrantedDataset",
    "NoGrantError",
    "RunReport",
    "RunStatus",
    "SchedulerClient",
    "Segment",
    "SessionClosedError",
    "calibrate_for_loader",
    "claim_and_wait",
    "history_curve",
    "history_rdp",
    "history_since",
    "loader_accounting",
    "plan_dp_sgd",
    "plan_for_loader",
]

logger = logging.getLogger(__name__)

#: Slack of the step hook's "would this step exceed the grant?" test, relative to the grant at each order: a few
#: ulps, so that a run that spends exactly its plan is never stopped by the rounding of a different summation
#: order, and far below the ledger's own consumption tolerance (32 ulps of the demand at orders of zero capacity,
#: 1e-9 × capacity elsewhere), so that whatever the hook lets through the ledger accepts.
_STOP_SLACK = 8.0 * float(np.finfo(np.float64).eps)

#: Reason the scheduler records when a claim's deadline passes while it waits (``Scheduler._expire``).
_TIMEOUT_REASON = "timeout"


# ------------------------------------------------------------------------------------------------------------
# Errors
# ------------------------------------------------------------------------------------------------------------


class NoGrantError(DpfSchedError):
    """The job's claim was not granted; the job must not train. Base of the two reasons below."""

    def __init__(self, message: str, claim_id: str, record: ClaimRecord | None = None) -> None:
        super().__init__(message)
        self.claim_id = claim_id
        self.record = record


class ClaimRejectedError(NoGrantError):
    """The scheduler rejected the claim (it can never fit, a block was retired, the policy refused it)."""


class GrantTimeoutError(NoGrantError, TimeoutError):
    """The claim was still waiting when the timeout passed (the scheduler expires it at its deadline)."""


class BudgetExhaustedError(DpfSchedError):
    """Raised from the optimizer step that would have taken the job past its grant; that step did not happen.

    The noised gradients of the refused step were discarded, the accountant did not record it and the parameters
    were not updated. The training loop may catch it; :class:`BudgetedTraining` swallows it on exit.
    """

    def __init__(self, message: str, claim_id: str, steps: int) -> None:
        super().__init__(message)
        self.claim_id = claim_id
        self.steps = steps


class SessionClosedError(DpfSchedError):
    """An optimizer step after the budgeted session ended (its grant was committed and released)."""


class BlockAccessError(DpfSchedError, PermissionError):
    """A read of rows that the job was not granted (a block outside the grant, or before/after the grant)."""


class AccountingMismatchError(DpfSchedError):
    """What Opacus records disagrees with what the budget hook predicted or the plan assumed."""


class CommitError(DpfSchedError):
    """The job's spend could not be committed; the claim is left granted (nothing released), never under-charged."""


# ------------------------------------------------------------------------------------------------------------
# Curves of an accountant history
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Segment:
    """``steps`` DP-SGD steps at one noise multiplier and one sample rate: one entry of an Opacus history."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    @classmethod
    def of(cls, entry: Any) -> Segment:
        """A segment from an Opacus history entry ``(noise_multiplier, sample_rate, steps)``."""
        if isinstance(entry, Segment):
            return entry
        try:
            sigma, q, steps = entry
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"a history entry must be (noise_multiplier, sample_rate, steps), got {entry!r}"
            ) from None
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise InvalidParameterError(f"history entry {entry!r}: steps must be a non-negative integer")
        return cls(float(sigma), float(q), int(steps))

    def same_mechanism(self, other: Segment) -> bool:
        """True when both segments run the same mechanism (so that their steps merge, as Opacus merges them)."""
        return self.noise_multiplier == other.noise_multiplier and self.sample_rate == other.sample_rate


def _merge(segments: Sequence[Segment], extra: Segment) -> tuple[Segment, ...]:
    """``segments`` followed by ``extra``, merged into the last one when the mechanism is the same."""
    if segments and segments[-1].same_mechanism(extra):
        last = segments[-1]
        return (*segments[:-1], Segment(last.noise_multiplier, last.sample_rate, last.steps + extra.steps))
    return (*segments, extra)


def history_since(before: Sequence[Any], after: Sequence[Any]) -> tuple[Segment, ...]:
    """The segments an accountant recorded between two snapshots of its ``history``.

    Opacus accountants only ever extend their history: the RDP and PRV accountants add one step to the last
    segment when (σ, q) is unchanged and append a segment otherwise; the GDP accountant keeps one segment. Any
    other change (a reset, a loaded state) cannot be attributed to the job and raises
    :class:`AccountingMismatchError`.
    """
    b = [Segment.of(e) for e in before]
    a = [Segment.of(e) for e in after]
    if not b:
        return tuple(s for s in a if s.steps)
    k = len(b) - 1
    if len(a) < len(b) or a[:k] != b[:k] or not a[k].same_mechanism(b[k]) or a[k].steps < b[k].steps:
        raise AccountingMismatchError("the accountant's history was rewritten during the job; its spend is unknown")
    out = []
    if a[k].steps > b[k].steps:
        out.append(Segment(b[k].noise_multiplier, b[k].sample_rate, a[k].steps - b[k].steps))
    out.extend(s for s in a[len(b) :] if s.steps)
    return tuple(out)


class _StepCurves:
    """Per-step curves on one grid, cached by (σ, q): a training step costs a dictionary look-up, not a series.

    Every curve of this module is computed as ``Σ_segments per_step(σ, q) × steps``, summed in segment order:
    ``subsampled_gaussian_rdp(…, steps)`` is the same product, so plan, hook and commit agree to the last bit
    whenever they see the same segments.
    """

    def __init__(self, grid: AlphaGrid) -> None:
        self.grid = grid
        self._cache: dict[tuple[float, float], np.ndarray[Any, np.dtype[np.float64]]] = {}

    def per_step(self, sigma: float, q: float) -> np.ndarray[Any, np.dtype[np.float64]]:
        key = (sigma, q)
        c = self._cache.get(key)
        if c is None:
            # Mironov, Talwar & Zhang 2019 (arXiv:1908.10530), Sec. 3.3, one step; see dpf_sched.accounting.
            c = subsampled_gaussian_rdp(self.grid.array, sigma, q, 1)
            c.flags.writeable = False
            self._cache[key] = c
        return c

    def total(self, segments: Sequence[Segment]) -> np.ndarray[Any, np.dtype[np.float64]]:
        out = np.zeros(len(self.grid), dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            for s in segments:
                if s.steps:
                    out = out + self.per_step(s.noise_multiplier, s.sample_rate) * s.steps
        return out


def history_rdp(grid: AlphaGrid, history: Sequence[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """RDP of an Opacus accountant history on ``grid``: the sum of its segments' subsampled-Gaussian curves.

    RDP composes additively (Mironov 2017, Prop. 1), so a run with several (σ, q) segments (a noise scheduler,
    a change of batch size) costs the sum of the segments' curves. May hold ``inf`` (σ = 0).
    """
    return _StepCurves(grid).total([Segment.of(e) for e in history])


def _finite_curve(grid: AlphaGrid, values: np.ndarray[Any, np.dtype[np.float64]], what: str) -> RenyiCurve:
    bad = ~np.isfinite(values)
    if bad.any():
        raise InvalidBudgetError(
            f"{what} is infinite at α = {[grid.orders[i] for i in np.flatnonzero(bad)]}; the mechanism gives no "
            "Rényi guarantee there (noise multiplier 0?). Use an α grid without those orders."
        )
    return RenyiCurve(grid, values)


def _renyi(value: Budget) -> RenyiCurve:
    if not isinstance(value, RenyiCurve):
        raise CompositionMismatchError(f"expected a Rényi curve from the budget client, got {type(value).__name__}")
    return value


def history_curve(grid: AlphaGrid, history: Sequence[Any]) -> RenyiCurve:
    """:func:`history_rdp` as a budget value (every order must be finite)."""
    return _finite_curve(grid, history_rdp(grid, history), "the history's curve")


# ------------------------------------------------------------------------------------------------------------
# Planning
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DpSgdPlan:
    """What a DP-SGD job will spend: its segments (one per epoch, merged where σ repeats) and their curve.

    ``sample_rate`` is the per-step rate the accountant will record (``1/len(private loader)`` times the
    accumulated iterations per step); ``noise_multipliers`` holds one σ per epoch.
    """

    grid: AlphaGrid
    sample_rate: float
    steps_per_epoch: int
    noise_multipliers: tuple[float, ...]
    segments: tuple[Segment, ...]
    demand: RenyiCurve

    @property
    def epochs(self) -> int:
        """Number of planned epochs."""
        return len(self.noise_multipliers)

    @property
    def steps(self) -> int:
        """Number of planned optimizer steps."""
        return self.epochs * self.steps_per_epoch

    def epsilon(self, delta: float, conversion: str = "balle") -> float:
        """The (ε, δ) guarantee of the planned run at ``delta`` on the plan's grid."""
        return rdp_to_epsilon(self.grid.array, self.demand.values, delta, conversion)[0]


def _positive_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise InvalidParameterError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _sigma(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if not math.isfinite(x) or x <= 0:
        raise InvalidParameterError(f"{name} must be positive and finite, got {value!r}")
    return x


def plan_dp_sgd(
    grid: AlphaGrid,
    *,
    sample_rate: float,
    steps_per_epoch: int,
    noise_multiplier: float | Sequence[float],
    epochs: int | None = None,
) -> DpSgdPlan:
    """Plan a DP-SGD run from its numbers: ``epochs × steps_per_epoch`` steps at ``sample_rate``.

    Parameters
    ----------
    grid
        The ledger's α grid.
    sample_rate
        Per-step sampling rate as the accountant records it (in (0, 1]).
    steps_per_epoch
        Optimizer steps per epoch.
    noise_multiplier
        One σ for the whole run, or one σ per epoch (a noise schedule, e.g. what an ``opacus.schedulers``
        scheduler stepped once per epoch will set: compute it the way the scheduler does, so the bits agree).
    epochs
        Number of epochs; required with a single σ, and must match the schedule's length otherwise.
    """
    if not isinstance(grid, AlphaGrid):
        raise InvalidParameterError(f"grid must be an AlphaGrid, got {type(grid).__name__}")
    n = _positive_int("steps_per_epoch", steps_per_epoch)
    if isinstance(noise_multiplier, (int, float, np.integer, np.floating)) and not isinstance(noise_multiplier, bool):
        if epochs is None:
            raise InvalidParameterError("epochs is required with a single noise multiplier")
        sigmas = (_sigma("noise_multiplier", noise_multiplier),) * _positive_int("epochs", epochs)
    elif isinstance(noise_multiplier, Sequence) and not isinstance(noise_multiplier, (str, bytes)):
        sigmas = tuple(_sigma(f"noise_multiplier[{i}]", s) for i, s in enumerate(noise_multiplier))
        if not sigmas:
            raise InvalidParameterError("the noise schedule is empty")
        if epochs is not None and _positive_int("epochs", epochs) != len(sigmas):
            raise InvalidParameterError(f"epochs={epochs} but the noise schedule has {len(sigmas)} entries")
    else:
        raise InvalidParameterError(f"noise_multiplier must be a number or a sequence, got {noise_multiplier!r}")
    q = float(sample_rate)
    if not (0.0 < q <= 1.0):
        raise InvalidParameterError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
    segments: tuple[Segment, ...] = ()
    for s in sigmas:
        segments = _merge(segments, Segment(s, q, n))
    demand = _finite_curve(grid, _StepCurves(grid).total(segments), "the planned demand")
    return DpSgdPlan(grid, q, n, sigmas, segments, demand)


def loader_accounting(
    data_loader: DataLoader[Any], *, poisson_sampling: bool = True, accumulation_steps: int = 1
) -> tuple[float, int]:
    """``(sample rate per optimizer step, optimizer steps per epoch)`` as the Opacus accountant will see them.

    ``make_private`` gives the accountant hook ``1 / len(private loader)`` and the hook multiplies it by
    ``optimizer.accumulated_iterations``. With Poisson sampling the private loader's length is that of Opacus's
    ``UniformWithReplacementSampler`` at rate ``1/len(data_loader)``, i.e. ``int(len(data_loader))`` rounded
    through ``1/(1/n)``: one less than ``len(data_loader)`` for some lengths (93 → 92). The sampler is built here
    exactly as ``make_private`` builds it, without reading a row (the data stays locked until the grant).

    ``accumulation_steps`` physical batches per optimizer step (gradient accumulation without Poisson sampling;
    Opacus refuses it with Poisson sampling) charge ``accumulation_steps × rate`` per step; a trailing partial
    group is assumed not to be stepped. A loader already made private is measured as it is.
    """
    k = _positive_int("accumulation_steps", accumulation_steps)
    if isinstance(data_loader, DPDataLoader) or not poisson_sampling:
        batches = len(data_loader)
    else:
        n_rows = len(cast(Sized, data_loader.dataset))  # map-style datasets have a length
        sampler = UniformWithReplacementSampler(num_samples=n_rows, sample_rate=1 / len(data_loader))
        batches = len(sampler)
    if batches < 1:
        raise InvalidParameterError("the data loader yields no batch")
    per_epoch = batches // k
    if per_epoch < 1:
        raise InvalidParameterError(f"accumulation_steps={k} exceeds the {batches} batches of an epoch")
    return (1 / batches) * k, per_epoch


def plan_for_loader(
    grid: AlphaGrid,
    data_loader: DataLoader[Any],
    *,
    epochs: int | None = None,
    noise_multiplier: float | Sequence[float],
    poisson_sampling: bool = True,
    accumulation_steps: int = 1,
) -> DpSgdPlan:
    """Plan a run over ``data_loader`` with the numbers the accountant will record (:func:`loader_accounting`)."""
    q, per_epoch = loader_accounting(
        data_loader, poisson_sampling=poisson_sampling, accumulation_steps=accumulation_steps
    )
    return plan_dp_sgd(grid, sample_rate=q, steps_per_epoch=per_epoch, noise_multiplier=noise_multiplier, epochs=epochs)


def calibrate_for_loader(
    grid: AlphaGrid,
    data_loader: DataLoader[Any],
    *,
    epochs: int,
    target_epsilon: float,
    target_delta: float,
    conversion: str = "balle",
    tol: float = 0.01,
    poisson_sampling: bool = True,
    accumulation_steps: int = 1,
) -> float:
    """Smallest σ (to ``tol``) whose planned run is (``target_epsilon``, ``target_delta``)-DP on ``grid``.

    Uses the library's accountant (:func:`dpf_sched.accounting.calibrate_noise_multiplier`) on the same numbers as
    :func:`plan_for_loader`, so the plan made with the returned σ meets the target on the ledger's grid.
    """
    q, per_epoch = loader_accounting(
        data_loader, poisson_sampling=poisson_sampling, accumulation_steps=accumulation_steps
    )
    steps = _positive_int("epochs", epochs) * per_epoch
    return calibrate_noise_multiplier(target_epsilon, target_delta, q, steps, grid.array, conversion, tol)


# ------------------------------------------------------------------------------------------------------------
# The budget client: where claims go
# ------------------------------------------------------------------------------------------------------------


@runtime_checkable
class BudgetClient(Protocol):
    """What a training job needs from a budget scheduler, in-process or remote.

    Every value crossing it is a core value (:class:`Claim`, :class:`ClaimRecord`, :class:`RenyiCurve`,
    :class:`BlockSelector`), so an HTTP client only has to serialise them. ``wait`` blocks until the claim is no
    longer waiting or ``timeout`` (seconds, or clock units) has passed, and returns the record either way.
    """

    def alpha_grid(self) -> AlphaGrid:
        """The ledger's α grid (demands and consumptions must be on it)."""
        ...

    def select_blocks(self, selector: BlockSelector) -> tuple[str, ...]:
        """The ids of the blocks ``selector`` picks now."""
        ...

    def submit(self, claim: Claim) -> str:
        """Submit a claim; returns its id."""
        ...

    def wait(self, claim_id: str, timeout: float) -> ClaimRecord:
        """Wait until the claim is granted or rejected, or ``timeout`` passes; the claim's record."""
        ...

    def status(self, claim_id: str) -> ClaimRecord:
        """The claim's record now."""
        ...

    def consume(self, claim_id: str, amounts: Mapping[str, Budget] | None = None) -> None:
        """Spend part (per block) or all of a grant."""
        ...

    def release(self, claim_id: str) -> None:
        """Return the unspent rest of a grant and finish the claim."""
        ...


class SchedulerClient:
    """:class:`BudgetClient` over an in-process :class:`~dpf_sched.scheduler.Scheduler` (single-threaded).

    Waiting means stepping the scheduler under its own clock until the claim is decided: on a
    :class:`~dpf_sched.clock.ManualClock` (simulated time) the wait advances the clock from one scheduler event
    (timed unlock, deadline) to the next, as time would pass for a real job; on any other clock it sleeps until
    the next event, at most ``poll_interval`` seconds at a time.
    """

    def __init__(
        self, scheduler: Scheduler, *, poll_interval: float = 0.05, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        if not isinstance(scheduler, Scheduler):
            raise InvalidParameterError(f"SchedulerClient wraps a Scheduler, got {type(scheduler).__name__}")
        if not (math.isfinite(poll_interval) and poll_interval > 0):
            raise InvalidParameterError(f"poll_interval must be positive and finite, got {poll_interval!r}")
        self.scheduler = scheduler
        self.poll_interval = float(poll_interval)
        self._sleep = sleep

    def alpha_grid(self) -> AlphaGrid:
        comp = self.scheduler.ledger.composition
        if not isinstance(comp, RenyiComposition):
            raise CompositionMismatchError(
                f"DP-SGD budgets are Rényi curves; this scheduler's ledger uses {comp.name} composition"
            )
        return comp.grid

    def select_blocks(self, selector: BlockSelector) -> tuple[str, ...]:
        return selector.select(self.scheduler.ledger.blocks())

    def submit(self, claim: Claim) -> str:
        return self.scheduler.submit(claim)

    def wait(self, claim_id: str, timeout: float) -> ClaimRecord:
        t = float(timeout)
        if not (math.isfinite(t) and t >= 0):
            raise InvalidParameterError(f"timeout must be finite and >= 0, got {timeout!r}")
        clock = self.scheduler.clock
        deadline = clock.now() + t
        while True:
            self.scheduler.step()
            record = self.scheduler.status(claim_id)
            now = clock.now()
            if record.state is not ClaimState.WAITING or now >= deadline:
                return record
            wake = self.scheduler.next_wakeup()
            target = deadline if wake is None or wake <= now else min(wake, deadline)
            if isinstance(clock, ManualClock):
                clock.set(target)
            else:
                self._sleep(min(self.poll_interval, target - now))

    def status(self, claim_id: str) -> ClaimRecord:
        return self.scheduler.status(claim_id)

    def consume(self, claim_id: str, amounts: Mapping[str, Budget] | None = None) -> None:
        self.scheduler.consume(claim_id, amounts)

    def release(self, claim_id: str) -> None:
        self.scheduler.release(claim_id)


def _as_client(client: BudgetClient | Scheduler) -> BudgetClient:
    if isinstance(client, Scheduler):
        return SchedulerClient(client)
    if not isinstance(client, BudgetClient):
        raise InvalidParameterError(f"expected a BudgetClient or a Scheduler, got {type(client).__name__}")
    return client


def claim_and_wait(client: BudgetClient, claim: Claim, timeout: float) -> ClaimRecord:
    """Submit ``claim`` and wait up to ``timeout`` for its grant; the granted record, or a typed error.

    Raises
    ------
    ClaimRejectedError
        The scheduler rejected the claim (the record's reason says why).
    GrantTimeoutError
        The claim expired at its deadline, or was still waiting when ``timeout`` passed (then the scheduler
        expires it at its own deadline: give the claim the same timeout, as :class:`BudgetedTraining` does).
    """
    claim_id = client.submit(claim)
    record = client.wait(claim_id, timeout)
    if record.state is ClaimState.GRANTED:
        logger.info("claim %s granted on %d block(s)", claim_id, len(record.claim.blocks))
        return record
    if record.state is ClaimState.WAITING:
        raise GrantTimeoutError(f"claim {claim_id} was not granted within {timeout:g}", claim_id, record)
    if record.state is ClaimState.REJECTED:
        if record.reason == _TIMEOUT_REASON:
            raise GrantTimeoutError(
                f"claim {claim_id} was not granted within its timeout of {timeout:g} and expired", claim_id, record
            )
        reason = record.reason or "no reason given"
        raise ClaimRejectedError(f"claim {claim_id} was rejected: {reason}", claim_id, record)
    raise InvalidStateError(f"claim {claim_id} is already {record.state.value}; a job needs a fresh claim")


# ------------------------------------------------------------------------------------------------------------
# Data: only the rows of granted blocks
# ------------------------------------------------------------------------------------------------------------


class Rows(Protocol):
    """The rows of one block: anything with a length and integer indexing (a list, a ``TensorDataset``)."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int, /) -> Any: ...


class _IndexedRows:
    """The rows of one block inside a bigger dataset, by their positions (a block-id column's view)."""

    def __init__(self, dataset: Rows, indices: Sequence[int]) -> None:
        self._dataset = dataset
        self._indices = tuple(indices)

    def __len__(self) -> int:
        return len(self._indices)

    def __getitem__(self, index: int, /) -> Any:
        return self._dataset[self._indices[index]]


class GrantedDataset(Dataset[Any]):
    """A map-style dataset over the rows of some blocks, readable only while the job holds a grant on all of them.

    It keeps references to the selected blocks' rows only, so rows of any other block cannot be reached
    through it. Its length (needed to plan the demand) is public; reading a row before :meth:`open` with a
    granted claim record, or after :meth:`close`, raises :class:`BlockAccessError`. Rows are numbered block
    after block in the order of :attr:`blocks`.
    """

    def __init__(self, rows_by_block: Mapping[str, Rows], blocks: Sequence[str]) -> None:
        if isinstance(blocks, str) or not blocks:
            raise InvalidParameterError(f"a GrantedDataset needs a non-empty list of block ids, got {blocks!r}")
        ids = tuple(blocks)
        if len(set(ids)) != len(ids):
            raise InvalidParameterError(f"block listed twice: {list(ids)}")
        missing = [b for b in ids if b not in rows_by_block]
        if missing:
            raise InvalidParameterError(f"no rows for the selected blocks {missing}")
        self._blocks = ids
        self._parts: tuple[Rows, ...] = tuple(rows_by_block[b] for b in ids)
        self._ends: list[int] = np.cumsum([len(p) for p in self._parts]).tolist()
        self._claim: str | None = None

    @classmethod
    def from_block_column(cls, dataset: Rows, block_of_row: Sequence[str], blocks: Sequence[str]) -> GrantedDataset:
        """The rows of ``dataset`` whose block id (``block_of_row[i]`` for row ``i``) is one of ``blocks``."""
        if len(block_of_row) != len(dataset):
            raise InvalidParameterError(f"{len(block_of_row)} block ids for a dataset of {len(dataset)} rows")
        wanted = set(blocks)
        positions: dict[str, list[int]] = {b: [] for b in blocks}
        for i, b in enumerate(block_of_row):
            if b in wanted:
                positions[b].append(i)
        return cls({b: _IndexedRows(dataset, positions[b]) for b in blocks}, blocks)

    @property
    def blocks(self) -> tuple[str, ...]:
        """The ids of the blocks whose rows this dataset holds."""
        return self._blocks

    @property
    def is_open(self) -> bool:
        """True while rows may be read (between a granted :meth:`open` and :meth:`close`)."""
        return self._claim is not None

    def rows_per_block(self) -> dict[str, int]:
        """Number of rows of each block."""
        return {b: len(p) for b, p in zip(self._blocks, self._parts, strict=True)}

    def open(self, record: ClaimRecord) -> None:
        """Allow reads: ``record`` must be a granted claim that covers every block of this dataset."""
        if record.state is not ClaimState.GRANTED:
            raise BlockAccessError(f"claim {record.claim.id} is {record.state.value}, not granted; rows stay locked")
        outside = [b for b in self._blocks if b not in record.claim.demand]
        if outside:
            raise BlockAccessError(f"claim {record.claim.id} holds no grant on blocks {outside}")
        self._claim = record.claim.id

    def close(self) -> None:
        """Forbid reads again (the job's grant is over)."""
        self._claim = None

    def rows(self, block_id: str) -> Rows:
        """All rows of one granted block."""
        self._check_open()
        try:
            return self._parts[self._blocks.index(block_id)]
        except ValueError:
            raise BlockAccessError(f"block {block_id!r} was not granted to this job") from None

    def block_of(self, index: int) -> str:
        """The block of row ``index``."""
        return self._blocks[self._locate(index)[0]]

    def _check_open(self) -> None:
        if self._claim is None:
            raise BlockAccessError(
                f"rows of blocks {list(self._blocks)} are locked: the job holds no grant on them (yet, or any more)"
            )

    def _locate(self, index: int) -> tuple[int, int]:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {index} out of range for {n} rows")
        part = bisect.bisect_right(self._ends, i)
        return part, i - (self._ends[part - 1] if part else 0)

    def __len__(self) -> int:
        return self._ends[-1] if self._ends else 0

    def __getitem__(self, index: int) -> Any:
        self._check_open()
        part, offset = self._locate(index)
        return self._parts[part][offset]

    def __repr__(self) -> str:
        state = f"open for {self._claim}" if self._claim else "locked"
        return f"GrantedDataset(blocks={list(self._blocks)}, rows={len(self)}, {state})"


# ------------------------------------------------------------------------------------------------------------
# The step hook
# ------------------------------------------------------------------------------------------------------------


def _discard_noised_gradients(optimizer: Any) -> None:
    """Drop the gradients of a refused step (they hold noise that no accountant recorded)."""
    optimizer.zero_grad(set_to_none=True)
    for p in optimizer.params:
        p.grad = None
        p.summed_grad = None
        p.grad_sample = None


class BudgetHook:
    """A DP optimizer step hook that charges every step against a grant, chained in front of the existing hook.

    Opacus's ``DPOptimizer`` has one step-hook slot, called after noise is added and before the parameters
    change; ``make_private`` fills it with the accountant's hook. :meth:`attach` keeps that hook and calls it
    from this one, so the accountant records every step exactly as before.

    Each call: the step's mechanism is (``optimizer.noise_multiplier``, ``sample_rate ×
    optimizer.accumulated_iterations``), the accountant's own rule; if the job's spend with this step would
    exceed the grant at some order α, the noised gradients are dropped and :class:`BudgetExhaustedError` is
    raised, so the previous hook never records the step and the optimizer never applies it. Otherwise the
    previous hook runs and the spend is re-read from the accountant's history (the ground truth), checked
    against the prediction.
    """

    def __init__(self, *, claim_id: str, grant: RenyiCurve, sample_rate: float, accountant: Any) -> None:
        q = float(sample_rate)
        if not (0.0 < q <= 1.0):
            raise InvalidParameterError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        self.claim_id = claim_id
        self.grant = grant
        self.sample_rate = q
        self.accountant = accountant
        self._curves = _StepCurves(grant.grid)
        self._limit = grant.values * (1.0 + _STOP_SLACK)
        self._start: list[Segment] = [Segment.of(e) for e in accountant.history]
        self._segments: tuple[Segment, ...] = ()
        self._previous: Callable[[Any], None] | None = None
        self._optimizer: Any = None
        self._closed = False
        self.exhausted = False

    def attach(self, optimizer: Any) -> None:
        """Chain this hook in front of ``optimizer``'s current step hook (the accountant's)."""
        if self._optimizer is not None:
            raise InvalidStateError("this budget hook is already attached")
        previous = getattr(optimizer, "step_hook", None)
        if previous is None:
            raise InvalidStateError(
                "the optimizer has no step hook: make it private (PrivacyEngine.make_private) first, so that the "
                "accountant records its steps"
            )
        self._previous = previous
        self._optimizer = optimizer
        optimizer.attach_step_hook(self)

    @property
    def segments(self) -> tuple[Segment, ...]:
        """What the accountant has recorded since the hook was created."""
        return self._segments

    @property
    def steps(self) -> int:
        """Optimizer steps charged so far."""
        return sum(s.steps for s in self._segments)

    def spent(self) -> RenyiCurve:
        """The curve charged so far."""
        return RenyiCurve(self.grant.grid, self._curves.total(self._segments))

    def recorded(self) -> tuple[Segment, ...]:
        """What the accountant's history holds since the hook was created (the job's spend, as segments)."""
        return history_since(self._start, self.accountant.history)

    def committed_curve(self) -> RenyiCurve:
        """The curve of :meth:`recorded`: what the job has spent, the amount committed at the end."""
        return _finite_curve(self.grant.grid, self._curves.total(self.recorded()), "the job's spend")

    def steps_left(self, noise_multiplier: float | None = None, accumulated_iterations: int = 1) -> int:
        """How many more steps fit in the grant at ``noise_multiplier`` (default: the optimizer's current one)."""
        if self._closed or self.exhausted:
            return 0
        if noise_multiplier is None:
            if self._optimizer is None:
                raise InvalidStateError("attach the hook or give a noise multiplier")
            noise_multiplier = float(self._optimizer.noise_multiplier)
        step = Segment(float(noise_multiplier), self.sample_rate * accumulated_iterations, 1)
        per = self._curves.per_step(step.noise_multiplier, step.sample_rate)
        room = self._limit - self._curves.total(self._segments)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(per > 0, room / per, np.inf)
        n = max(0, math.floor(float(np.min(ratio))))
        # The estimate ignores rounding: settle it with the hook's own test.
        while n > 0 and not self._fits(_merge(self._segments, Segment(step.noise_multiplier, step.sample_rate, n))):
            n -= 1
        return n

    def close(self) -> None:
        """Refuse every further step (the session is over)."""
        self._closed = True

    def _fits(self, segments: Sequence[Segment]) -> bool:
        return bool(np.all(self._curves.total(segments) <= self._limit))

    def __call__(self, optimizer: Any) -> None:
        if self._closed:
            _discard_noised_gradients(optimizer)
            raise SessionClosedError(
                f"claim {self.claim_id}: the budgeted session is over; no further private step is allowed"
            )
        step = Segment(float(optimizer.noise_multiplier), self.sample_rate * optimizer.accumulated_iterations, 1)
        predicted = _merge(self._segments, step)
        if self.exhausted or not self._fits(predicted):
            self.exhausted = True
            _discard_noised_gradients(optimizer)
            logger.info("claim %s: step %d would exceed the grant; training stops", self.claim_id, self.steps + 1)
            raise BudgetExhaustedError(
                f"claim {self.claim_id}: step {self.steps + 1} (σ={step.noise_multiplier:g}, "
                f"q={step.sample_rate:g}) would exceed the granted budget; stopped after {self.steps} steps",
                self.claim_id,
                self.steps,
            )
        assert self._previous is not None  # set by attach, the only way to install the hook
        self._previous(optimizer)
        actual = self.recorded()
        if actual != predicted:
            self._segments = actual
            if not self._fits(actual):
                self.exhausted = True
                _discard_noised_gradients(optimizer)
                raise AccountingMismatchError(
                    f"claim {self.claim_id}: the accountant recorded {actual[-1:]} where the budget hook predicted "
                    f"{predicted[-1:]}, beyond the grant; the step was not applied"
                )
            logger.warning(
                "claim %s: the accountant recorded %s, the budget hook predicted %s; following the accountant",
                self.claim_id,
                actual[-1:],
                predicted[-1:],
            )
        self._segments = actual


# ------------------------------------------------------------------------------------------------------------
# Reports
# ------------------------------------------------------------------------------------------------------------


class RunStatus(StrEnum):
    """How a budgeted run ended."""

    COMPLETED = "completed"  # every planned step was taken
    STOPPED = "stopped"  # the loop ended early (fewer steps than planned), without an error
    EXHAUSTED = "exhausted"  # the hook refused a step that would have exceeded the grant
    FAILED = "failed"  # an exception ended the run (its spend was still committed)


def _curve_dict(c: RenyiCurve) -> dict[str, float]:
    return {repr(a): float(v) for a, v in zip(c.grid.orders, c.values.tolist(), strict=True)}


@dataclass(frozen=True)
class RunReport:
    """What a budgeted run was granted, spent and gave back (per block: the claim asks the same on each)."""

    claim_id: str
    status: RunStatus
    blocks: tuple[str, ...]
    accountant: str
    plan: DpSgdPlan
    granted: RenyiCurve
    consumed: RenyiCurve
    released: RenyiCurve
    steps: int
    segments: tuple[Segment, ...]
    waited: float
    error: str | None = None
    released_by_block: Mapping[str, RenyiCurve] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (curves as ``{str(α): value}``)."""
        return {
            "claim_id": self.claim_id,
            "status": self.status.value,
            "blocks": list(self.blocks),
            "accountant": self.accountant,
            "alphas": list(self.granted.grid.orders),
            "granted": _curve_dict(self.granted),
            "consumed": _curve_dict(self.consumed),
            "released": _curve_dict(self.released),
            "steps": self.steps,
            "planned_steps": self.plan.steps,
            "sample_rate": self.plan.sample_rate,
            "noise_multipliers": list(self.plan.noise_multipliers),
            "segments": [[s.noise_multiplier, s.sample_rate, s.steps] for s in self.segments],
            "waited": self.waited,
            "error": self.error,
        }


# ------------------------------------------------------------------------------------------------------------
# The session and the engine
# ------------------------------------------------------------------------------------------------------------


class BudgetedTraining:
    """One budgeted training job: a context manager around claim → grant → train → commit → release.

    Made by :meth:`BudgetedPrivacyEngine.make_private`; nothing happens until it is entered. Entering plans the
    demand, claims it and waits (raising :class:`NoGrantError` subclasses without touching the model, optimizer
    or data), opens the :class:`GrantedDataset`, makes the objects private with Opacus and chains the
    :class:`BudgetHook`. Inside, use :attr:`module`, :attr:`optimizer` and :attr:`data_loader` as Opacus's. On
    exit — normal end, early ``break``, :class:`BudgetExhaustedError` (swallowed) or any other exception
    (re-raised) — the data is locked, the accountant's spend is consumed on every block and the rest released;
    :attr:`report` says what happened. :meth:`start` and :meth:`finish` do the same without a ``with``.
    """

    def __init__(
        self,
        engine: BudgetedPrivacyEngine,
        *,
        claim_id: str,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader[Any],
        epochs: int,
        max_grad_norm: float | list[float],
        noise_multiplier: float | Sequence[float] | None = None,
        target_epsilon: float | None = None,
        target_delta: float | None = None,
        conversion: str = "balle",
        calibration_tol: float = 0.01,
        selector: BlockSelector | None = None,
        timeout: float = 3600.0,
        owner: str | None = None,
        weight: float = 1.0,
        poisson_sampling: bool = True,
        accumulation_steps: int = 1,
        opacus_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        if (noise_multiplier is None) == (target_epsilon is None):
            raise InvalidParameterError("give either noise_multiplier or target_epsilon (with target_delta)")
        if target_epsilon is not None and target_delta is None:
            raise InvalidParameterError("target_epsilon needs target_delta")
        t = float(timeout)
        if not (math.isfinite(t) and t > 0):
            raise InvalidParameterError(f"timeout must be positive and finite, got {timeout!r}")
        self.engine = engine
        self.claim_id = claim_id
        self._raw = (module, optimizer, data_loader)
        self._epochs = _positive_int("epochs", epochs)
        self._max_grad_norm = max_grad_norm
        self._noise = noise_multiplier
        self._target = (target_epsilon, target_delta)
        self._conversion = conversion
        self._tol = calibration_tol
        self._selector = selector
        self._timeout = t
        self._owner = owner
        self._weight = weight
        self._poisson = poisson_sampling
        self._accumulation = accumulation_steps
        self._opacus_kwargs = dict(opacus_kwargs or {})
        self._state = "new"
        self.plan: DpSgdPlan | None = None
        self.record: ClaimRecord | None = None
        self.hook: BudgetHook | None = None
        self.report: RunReport | None = None
        self.module: Any = None
        self.optimizer: Any = None
        self.data_loader: Any = None
        self.criterion: Any = None
        self._dataset: GrantedDataset | None = None
        self._blocks: tuple[str, ...] = ()

    # ----- entering --------------------------------------------------------------------------------------
    def _resolve_blocks(self, client: BudgetClient, dataset: Any) -> tuple[str, ...]:
        if isinstance(dataset, GrantedDataset):
            self._dataset = dataset
            if self._selector is not None:
                chosen = client.select_blocks(self._selector)
                if set(chosen) != set(dataset.blocks):
                    raise InvalidParameterError(
                        f"the selector picks blocks {list(chosen)} but the dataset holds {list(dataset.blocks)}"
                    )
            return dataset.blocks
        if self._selector is None:
            raise InvalidParameterError(
                "name the blocks the job reads: use a GrantedDataset (BudgetedPrivacyEngine.dataset) or a selector"
            )
        logger.warning(
            "claim %s: the data loader's dataset is not a GrantedDataset; reads are not limited to granted blocks",
            self.claim_id,
        )
        return client.select_blocks(self._selector)

    def _make_plan(self, grid: AlphaGrid, loader: DataLoader[Any]) -> DpSgdPlan:
        noise: float | Sequence[float]
        if self._noise is None:
            eps, delta = self._target
            assert eps is not None and delta is not None  # checked in __init__
            noise = calibrate_for_loader(
                grid,
                loader,
                epochs=_positive_int("epochs", self._epochs),
                target_epsilon=eps,
                target_delta=delta,
                conversion=self._conversion,
                tol=self._tol,
                poisson_sampling=self._poisson,
                accumulation_steps=self._accumulation,
            )
            logger.info("claim %s: σ = %.6g meets ε = %g at δ = %g", self.claim_id, noise, eps, delta)
        else:
            noise = self._noise
        return plan_for_loader(
            grid,
            loader,
            epochs=self._epochs,
            noise_multiplier=noise,
            poisson_sampling=self._poisson,
            accumulation_steps=self._accumulation,
        )

    def start(self) -> BudgetedTraining:
        """Plan, claim, wait for the grant, open the data and make the training objects private."""
        if self._state != "new":
            raise InvalidStateError(f"budgeted training {self.claim_id} was already started")
        self._state = "starting"
        client = self.engine.client
        module, optimizer, loader = self._raw
        try:
            self._blocks = self._resolve_blocks(client, loader.dataset)
            plan = self._make_plan(client.alpha_grid(), loader)
            self.plan = plan
            claim = Claim.uniform(
                self.claim_id, self._blocks, plan.demand, timeout=self._timeout, owner=self._owner, weight=self._weight
            )
            self.record = claim_and_wait(client, claim, self._timeout)
        except BaseException:
            self._state = "refused"  # no grant is held: nothing to give back
            raise
        try:
            if self._dataset is not None:
                self._dataset.open(self.record)
            result = self.engine.privacy_engine.make_private(
                module=module,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=plan.noise_multipliers[0],
                max_grad_norm=self._max_grad_norm,
                poisson_sampling=self._poisson,
                **self._opacus_kwargs,
            )
            self.module, self.optimizer, self.data_loader = result[0], result[1], result[-1]
            self.criterion = result[2] if len(result) == 4 else None
            q, per_epoch = loader_accounting(
                self.data_loader, poisson_sampling=self._poisson, accumulation_steps=self._accumulation
            )
            if (q, per_epoch) != (plan.sample_rate, plan.steps_per_epoch):
                raise AccountingMismatchError(
                    f"the private loader gives (q={q!r}, {per_epoch} steps/epoch) but the plan assumed "
                    f"(q={plan.sample_rate!r}, {plan.steps_per_epoch} steps/epoch)"
                )
            self.hook = BudgetHook(
                claim_id=self.claim_id,
                grant=plan.demand,
                sample_rate=1 / len(self.data_loader),
                accountant=self.engine.accountant,
            )
            self.hook.attach(self.optimizer)
        except BaseException:
            # Nothing was trained: give the whole grant back before surfacing the error.
            if self._dataset is not None:
                self._dataset.close()
            self._state = "failed-start"
            client.release(self.claim_id)
            raise
        self._state = "running"
        return self

    def __enter__(self) -> BudgetedTraining:
        return self.start()

    # ----- leaving ---------------------------------------------------------------------------------------
    def steps_left(self) -> int:
        """Steps that still fit in the grant at the optimizer's current noise multiplier."""
        if self.hook is None or self._state != "running":
            return 0
        return self.hook.steps_left()

    def finish(self, error: BaseException | None = None) -> RunReport:
        """Lock the data, commit the accountant's spend, release the rest; the run's report."""
        if self._state != "running":
            raise InvalidStateError(f"budgeted training {self.claim_id} is not running (state {self._state})")
        assert self.hook is not None and self.plan is not None and self.record is not None
        self._state = "finished"
        hook = self.hook
        hook.close()
        if self._dataset is not None:
            self._dataset.close()
        client = self.engine.client
        try:
            segments = hook.recorded()
            consumed = hook.committed_curve()
            if not consumed.is_zero():
                client.consume(self.claim_id, dict.fromkeys(self._blocks, consumed))
        except Exception as exc:
            logger.error("claim %s: could not commit the spend (%s); the grant is kept", self.claim_id, exc)
            raise CommitError(
                f"claim {self.claim_id}: committing the spend failed ({exc}); the claim stays granted so that "
                "nothing spent is ever returned"
            ) from exc
        remaining = {b: _renyi(v) for b, v in client.status(self.claim_id).remaining.items()}
        client.release(self.claim_id)
        steps = sum(s.steps for s in segments)
        ours = isinstance(error, BudgetExhaustedError) and error.claim_id == self.claim_id
        if error is not None and not ours:
            status = RunStatus.FAILED
        elif hook.exhausted:
            status = RunStatus.EXHAUSTED
        elif steps >= self.plan.steps:
            status = RunStatus.COMPLETED
        else:
            status = RunStatus.STOPPED
        granted_at = self.record.granted_at if self.record.granted_at is not None else self.record.claim.arrival
        self.report = RunReport(
            claim_id=self.claim_id,
            status=status,
            blocks=self._blocks,
            accountant=str(self.engine.accountant.mechanism()),
            plan=self.plan,
            granted=self.plan.demand,
            consumed=consumed,
            released=remaining[self._blocks[0]],
            steps=steps,
            segments=segments,
            waited=granted_at - self.record.claim.arrival,
            error=None if error is None or status is RunStatus.EXHAUSTED else f"{type(error).__name__}: {error}",
            released_by_block=remaining,
        )
        logger.info(
            "claim %s %s after %d/%d steps; committed the accountant's spend and released the rest",
            self.claim_id,
            status.value,
            steps,
            self.plan.steps,
        )
        return self.report

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if self._state != "running":
            return False
        self.finish(exc)
        return isinstance(exc, BudgetExhaustedError) and exc.claim_id == self.claim_id

    def __iter__(self) -> Iterator[Any]:
        """Unpack as Opacus's ``make_private`` result: ``module, optimizer, data_loader``."""
        return iter((self.module, self.optimizer, self.data_loader))


class BudgetedPrivacyEngine:
    """An Opacus ``PrivacyEngine`` whose jobs claim their budget from a scheduler before they train.

    Parameters
    ----------
    client
        Where claims go: a :class:`BudgetClient`, or an in-process :class:`~dpf_sched.scheduler.Scheduler`
        (wrapped in a :class:`SchedulerClient`).
    accountant
        Opacus accountant name (``"prv"``, Opacus's default, ``"rdp"`` or ``"gdp"``); the spend committed is
        always the Rényi curve of its history, whichever it is.
    privacy_engine
        An existing Opacus ``PrivacyEngine`` to use instead of a new one.
    secure_mode
        Passed to a new Opacus ``PrivacyEngine``.
    """

    def __init__(
        self,
        client: BudgetClient | Scheduler,
        *,
        accountant: str = "prv",
        privacy_engine: Any = None,
        secure_mode: bool = False,
    ) -> None:
        self.client = _as_client(client)
        if privacy_engine is None:
            privacy_engine = PrivacyEngine(accountant=accountant, secure_mode=secure_mode)
        self.privacy_engine: Any = privacy_engine

    @property
    def accountant(self) -> Any:
        """The Opacus accountant (its ``history`` is what jobs are charged)."""
        return self.privacy_engine.accountant

    def dataset(self, rows_by_block: Mapping[str, Rows], selector: BlockSelector) -> GrantedDataset:
        """A locked :class:`GrantedDataset` over the blocks ``selector`` picks now (by id, attribute, time)."""
        return GrantedDataset(rows_by_block, self.client.select_blocks(selector))

    def dataset_from_column(
        self, dataset: Rows, block_of_row: Sequence[str], selector: BlockSelector
    ) -> GrantedDataset:
        """As :meth:`dataset`, for one dataset with a block-id column (``block_of_row[i]`` is row ``i``'s block)."""
        return GrantedDataset.from_block_column(dataset, block_of_row, self.client.select_blocks(selector))

    def make_private(
        self,
        *,
        claim_id: str,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader[Any],
        noise_multiplier: float | Sequence[float],
        max_grad_norm: float | list[float],
        epochs: int | None = None,
        selector: BlockSelector | None = None,
        timeout: float = 3600.0,
        owner: str | None = None,
        weight: float = 1.0,
        poisson_sampling: bool = True,
        accumulation_steps: int = 1,
        **kwargs: Any,
    ) -> BudgetedTraining:
        """Like Opacus's ``make_private``, with the budget: claim ``epochs`` epochs' worth of budget, then train.

        ``noise_multiplier`` may be a per-epoch schedule (what a noise scheduler stepped once per epoch will set).
        Other keyword arguments go to Opacus's ``make_private``. Use the result as a context manager.
        """
        if epochs is None:
            if not isinstance(noise_multiplier, Sequence):
                raise InvalidParameterError("epochs is required with a single noise multiplier")
            epochs = len(noise_multiplier)
        return BudgetedTraining(
            self,
            claim_id=claim_id,
            module=module,
            optimizer=optimizer,
            data_loader=data_loader,
            epochs=epochs,
            max_grad_norm=max_grad_norm,
            noise_multiplier=noise_multiplier,
            selector=selector,
            timeout=timeout,
            owner=owner,
            weight=weight,
            poisson_sampling=poisson_sampling,
            accumulation_steps=accumulation_steps,
            opacus_kwargs=kwargs,
        )

    def make_private_with_epsilon(
        self,
        *,
        claim_id: str,
        module: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        data_loader: DataLoader[Any],
        target_epsilon: float,
        target_delta: float,
        epochs: int,
        max_grad_norm: float | list[float],
        conversion: str = "balle",
        calibration_tol: float = 0.01,
        selector: BlockSelector | None = None,
        timeout: float = 3600.0,
        owner: str | None = None,
        weight: float = 1.0,
        poisson_sampling: bool = True,
        accumulation_steps: int = 1,
        **kwargs: Any,
    ) -> BudgetedTraining:
        """Like Opacus's ``make_private_with_epsilon``: σ is calibrated by the library's accountant on the ledger's
        α grid so that the planned run is (``target_epsilon``, ``target_delta``)-DP there."""
        return BudgetedTraining(
            self,
            claim_id=claim_id,
            module=module,
            optimizer=optimizer,
            data_loader=data_loader,
            epochs=epochs,
            max_grad_norm=max_grad_norm,
            target_epsilon=target_epsilon,
            target_delta=target_delta,
            conversion=conversion,
            calibration_tol=calibration_tol,
            selector=selector,
            timeout=timeout,
            owner=owner,
            weight=weight,
            poisson_sampling=poisson_sampling,
            accumulation_steps=accumulation_steps,
            opacus_kwargs=kwargs,
        )
