"""The step hook: every DP-SGD step is charged against the grant before it happens.

:class:`BudgetHook` is chained in front of the Opacus optimizer's existing step hook (the accountant's), so the
accountant records every step exactly as before. For each real step it adds the step's curve (σ,
``sample_rate × accumulated_iterations``) to what the job has spent; if that would exceed the grant at any α it
discards the noised gradients and raises :class:`BudgetExhaustedError` *before* the accountant records the step
and before the parameters change. After the accountant's hook has run, it follows the accountant's history (the
ground truth of the spend, committed at the end). It reads the optimizer by duck typing.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dpf_sched.budget import RenyiCurve
from dpf_sched.errors import InvalidParameterError, InvalidStateError
from dpf_sched.integrations.opacus.errors import AccountingMismatchError, BudgetExhaustedError, SessionClosedError
from dpf_sched.integrations.opacus.history import Segment, _finite_curve, _merge, _StepCurves, history_since

logger = logging.getLogger(__name__)

#: Slack of the step hook's "would this step exceed the grant?" test, relative to the grant at each order: a few
#: ulps, so that a run that spends exactly its plan is never stopped by the rounding of a different summation
#: order, and far below the ledger's own consumption tolerance (32 ulps of the demand at orders of zero capacity,
#: 1e-9 × capacity elsewhere), so that whatever the hook lets through the ledger accepts.
_STOP_SLACK = 8.0 * float(np.finfo(np.float64).eps)


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
