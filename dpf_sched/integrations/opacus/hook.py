"""The step hook: every DP-SGD step is charged against the grant, and on the ledger, before it happens.

:class:`BudgetHook` is chained in front of the Opacus optimizer's existing step hook (the accountant's), so the
accountant records every step exactly as before. For each real step it adds the step's curve (σ,
``sample_rate × accumulated_iterations``) to what the job has spent; if that would exceed the grant at any α it
discards the noised gradients and raises :class:`BudgetExhaustedError` *before* the accountant records the step
and before the parameters change. After the accountant's hook has run, it follows the accountant's history (the
ground truth of the spend, reconciled at the end). It reads the optimizer by duck typing.

**Write-ahead charging.** Given a ``charge`` callable (the session's: consume on every block of the claim), the
hook charges steps in chunks of ``charge_every`` *before* they run: when a step finds no charged step left ahead
of it, the next chunk's exact curve is consumed on the ledger first, and only if that succeeds does the step go
on. So at every instant, whatever kills the process, the ledger holds at least the curve of every step the model
has taken and at most that plus one chunk (docs/opacus.md, "Write-ahead charging"). Each chunk is charged as the
difference between two *cumulative* targets, ``total(charged segments)``, nudged by ulps
(:func:`_exact_increment`) so that the claim's consumed row, which the ledger accumulates by float addition,
equals the cumulative target bit for bit: a job that runs every step it charged has consumed exactly the curve of
the accountant's history, as computed by the commit.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from dpf_sched.budget import RenyiCurve
from dpf_sched.errors import InvalidParameterError, InvalidStateError
from dpf_sched.integrations.opacus.errors import (
    AccountingMismatchError,
    BudgetExhaustedError,
    CommitError,
    SessionClosedError,
)
from dpf_sched.integrations.opacus.history import Segment, _finite_curve, _merge, _StepCurves, history_since

logger = logging.getLogger(__name__)

#: Slack of the step hook's "would this step exceed the grant?" test, relative to the grant at each order: a few
#: ulps, so that a run that spends exactly its plan is never stopped by the rounding of a different summation
#: order, and far below the ledger's own consumption tolerance (32 ulps of the demand at orders of zero capacity,
#: 1e-9 × capacity elsewhere), so that whatever the hook lets through the ledger accepts.
_STOP_SLACK = 8.0 * float(np.finfo(np.float64).eps)


def _exact_increment(
    current: np.ndarray[Any, np.dtype[np.float64]], target: np.ndarray[Any, np.dtype[np.float64]]
) -> np.ndarray[Any, np.dtype[np.float64]]:
    """The increment ``d >= 0`` for which ``current + d`` (float64, as the ledger adds) equals ``target``.

    ``target - current`` is exact when ``current >= target / 2`` (Sterbenz's lemma), and then
    ``current + d == target`` exactly: the case of every chunk after the first of a run at one σ (and the first
    chunk adds to 0). Otherwise the rounded difference is nudged one ulp at a time; if no ``d`` reaches the target
    (it can happen: when every sum is a tie that rounds to even and the target is odd), ``d`` errs upward by the
    least amount, so the ledger holds at least the target, never less. Where ``target < current`` (nothing is
    owed) the increment is 0.
    """
    d = np.maximum(target - current, 0.0)
    owed = target > current
    for _ in range(16):
        s = current + d
        low = owed & (s < target)
        high = owed & (s > target) & (d > 0)
        if not (low.any() or high.any()):
            break
        d = np.where(low, np.nextafter(d, np.inf), d)
        d = np.where(high, np.nextafter(d, -np.inf), d)
    while np.any(owed & (current + d < target)):  # never under-charge
        d = np.where(owed & (current + d < target), np.nextafter(d, np.inf), d)
    return d


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
    raised, so the previous hook never records the step and the optimizer never applies it. With ``charge``, a
    step that has no charged step ahead of it first charges the next chunk (``charge_every`` steps, fewer where
    the grant ends) through ``charge``; if that raises, the step is refused the same way and the hook closes.
    Otherwise the previous hook runs and the spend is re-read from the accountant's history (the ground truth),
    checked against the prediction.

    Parameters
    ----------
    charge
        Called with the increment of each chunk (a :class:`RenyiCurve` on the grant's grid) before the chunk's
        steps run; it must consume that much on every block of the claim. ``None``: nothing is charged ahead
        (the spend is only counted against the grant).
    charge_every
        Steps per chunk (default 1 when ``charge`` is given).
    consumed
        What the claim has already consumed on the ledger (a resumed job): chunk increments are computed from it.
    charged, ahead
        A resumed job's charged segments and the number of charged steps not yet taken (from :meth:`state`).
    """

    def __init__(
        self,
        *,
        claim_id: str,
        grant: RenyiCurve,
        sample_rate: float,
        accountant: Any,
        charge: Callable[[RenyiCurve], None] | None = None,
        charge_every: int | None = None,
        consumed: RenyiCurve | None = None,
        charged: Sequence[Segment] = (),
        ahead: int = 0,
        start: Sequence[Any] | None = None,
        sync: Callable[[Any], Any] | None = None,
        leader: bool = True,
    ) -> None:
        q = float(sample_rate)
        if not (0.0 < q <= 1.0):
            raise InvalidParameterError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        every = 1 if charge_every is None else charge_every
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise InvalidParameterError(f"charge_every must be a positive integer, got {charge_every!r}")
        if isinstance(ahead, bool) or not isinstance(ahead, int) or ahead < 0 or (ahead and not charged):
            raise InvalidParameterError(f"ahead must be a non-negative integer within the charged steps, got {ahead!r}")
        self.claim_id = claim_id
        self.grant = grant
        self.sample_rate = q
        self.accountant = accountant
        self.charge_every = every
        self._charge = charge
        self._curves = _StepCurves(grant.grid)
        self._limit = grant.values * (1.0 + _STOP_SLACK)
        source = accountant.history if start is None else start
        self._start: list[Segment] = [Segment.of(e) for e in source]
        self._segments: tuple[Segment, ...] = history_since(self._start, accountant.history)
        self._charged: tuple[Segment, ...] = tuple(Segment.of(c) for c in charged)
        self._ahead = ahead
        zero = np.zeros(len(grant.grid), dtype=np.float64)
        self._consumed = zero if consumed is None else np.array(consumed.values, dtype=np.float64)
        # What the claim holds beyond the curve of the charged segments (a resumed job's lost chunks).
        base = self._curves.total(self._charged)
        self._extra = np.maximum(self._consumed - base, 0.0) if self._charged or consumed is not None else zero
        self._previous: Callable[[Any], None] | None = None
        self._optimizer: Any = None
        self._closed = False
        self.exhausted = False
        self.charge_failed: BaseException | None = None
        # Distributed (DDP) jobs: ``sync(obj)`` returns rank 0's ``obj`` on every rank (a broadcast). Only the
        # leader charges; every chunk decision (its size, or the failure of its charge) is the leader's.
        self._sync = sync
        self._leader = leader

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
        """Optimizer steps taken so far (recorded by the accountant)."""
        return sum(s.steps for s in self._segments)

    @property
    def charged_segments(self) -> tuple[Segment, ...]:
        """The steps charged ahead on the ledger (taken, forfeited or still ahead), as merged segments."""
        return self._charged

    @property
    def charged_steps(self) -> int:
        """Steps charged on the ledger so far (taken or not)."""
        return sum(s.steps for s in self._charged)

    @property
    def ahead(self) -> int:
        """Charged steps not yet taken, at the last charged mechanism."""
        return self._ahead

    def consumed(self) -> RenyiCurve:
        """What the claim has consumed on the ledger through this hook (the charged chunks), bit for bit."""
        return RenyiCurve(self.grant.grid, self._consumed.copy())

    def spent(self) -> RenyiCurve:
        """The curve of the steps taken so far."""
        return RenyiCurve(self.grant.grid, self._curves.total(self._segments))

    def recorded(self) -> tuple[Segment, ...]:
        """What the accountant's history holds since the hook was created (the job's spend, as segments)."""
        return history_since(self._start, self.accountant.history)

    def committed_curve(self) -> RenyiCurve:
        """The curve of :meth:`recorded`: what the job's steps have spent."""
        return _finite_curve(self.grant.grid, self._curves.total(self.recorded()), "the job's spend")

    def reconcile(self) -> RenyiCurve:
        """The increment still owed so that the claim holds at least the accountant's curve (usually zero).

        Chunks are charged ahead, so the accountant's curve is normally already covered: a job that ran every
        step it charged holds exactly that curve, one that stopped inside a chunk holds more (the unused steps
        stay spent: consumption is forever). Only steps the accountant recorded beyond the hook's prediction can
        be owed. The caller consumes the increment and then calls :meth:`settled` with it.
        """
        owed = self._curves.total(self.recorded()) + self._extra
        return RenyiCurve(self.grant.grid, _exact_increment(self._consumed, owed))

    def resync(self, consumed: RenyiCurve) -> None:
        """Take the ledger's word for what the claim has consumed (after a charge whose outcome is unknown)."""
        values = np.array(consumed.values, dtype=np.float64)
        self._extra = np.maximum(values - self._curves.total(self._charged), self._extra)
        self._consumed = values

    def settled(self, increment: RenyiCurve) -> None:
        """Record that ``increment`` was consumed on the ledger."""
        self._consumed = self._consumed + increment.values

    def state(self) -> dict[str, Any]:
        """The hook's charge state as plain Python values (for a checkpoint)."""
        return {
            "start": [[s.noise_multiplier, s.sample_rate, s.steps] for s in self._start],
            "charged": [[s.noise_multiplier, s.sample_rate, s.steps] for s in self._charged],
            "ahead": self._ahead,
            "charge_every": self.charge_every,
            "consumed": self._consumed.tolist(),
        }

    def _room(self, segments: Sequence[Segment], step: Segment, charged: bool = False) -> int:
        """How many steps of ``step``'s mechanism fit in the grant after ``segments`` (``charged``: segments are
        the charged ones, and what the claim holds beyond them, a resumed job's lost chunks, counts too)."""
        extra = self._extra if charged else 0.0
        per = self._curves.per_step(step.noise_multiplier, step.sample_rate)
        room = self._limit - self._curves.total(segments) - extra
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(per > 0, room / per, np.inf)
        cap = float(np.min(ratio))
        n = max(0, math.floor(min(cap, 2.0**53)))
        # The estimate ignores rounding: settle it with the hook's own test.
        while n > 0 and not self._fits(_merge(segments, Segment(step.noise_multiplier, step.sample_rate, n)), extra):
            n -= 1
        return n

    def steps_left(self, noise_multiplier: float | None = None, accumulated_iterations: int = 1) -> int:
        """How many more steps fit in the grant at ``noise_multiplier`` (default: the optimizer's current one)."""
        if self._closed or self.exhausted:
            return 0
        if noise_multiplier is None:
            if self._optimizer is None:
                raise InvalidStateError("attach the hook or give a noise multiplier")
            noise_multiplier = float(self._optimizer.noise_multiplier)
        step = Segment(float(noise_multiplier), self.sample_rate * accumulated_iterations, 1)
        if self._charge is None:
            return self._room(self._segments, step)
        ahead = self._ahead if self._charged and self._charged[-1].same_mechanism(step) else 0
        return ahead + self._room(self._charged, step, charged=True)

    def close(self) -> None:
        """Refuse every further step (the session is over)."""
        self._closed = True

    def _fits(self, segments: Sequence[Segment], extra: Any = 0.0) -> bool:
        return bool(np.all(self._curves.total(segments) + extra <= self._limit))

    def _refuse(self, optimizer: Any, step: Segment) -> None:
        self.exhausted = True
        _discard_noised_gradients(optimizer)
        logger.info("claim %s: step %d would exceed the grant; training stops", self.claim_id, self.steps + 1)
        raise BudgetExhaustedError(
            f"claim {self.claim_id}: step {self.steps + 1} (σ={step.noise_multiplier:g}, "
            f"q={step.sample_rate:g}) would exceed the granted budget; stopped after {self.steps} steps",
            self.claim_id,
            self.steps,
        )

    def _charge_ahead(self, optimizer: Any, step: Segment) -> None:
        """Make sure ``step`` is charged on the ledger before it runs: charge the next chunk if none is ahead."""
        assert self._charge is not None
        if self._ahead and self._charged[-1].same_mechanism(step):
            return
        if self._ahead:
            # The mechanism changed inside a chunk: its unused steps stay charged (forfeited), never refunded.
            logger.warning(
                "claim %s: the mechanism changed with %d charged steps unused; they stay spent",
                self.claim_id,
                self._ahead,
            )
            self._ahead = 0
        failure: BaseException | None = None
        if self._leader:
            k = min(self.charge_every, self._room(self._charged, step, charged=True))
            error = None
            if k >= 1:
                increment = self._increment(step, k)
                try:
                    assert self._charge is not None
                    self._charge(RenyiCurve(self.grant.grid, increment))
                except BaseException as exc:
                    failure, error = exc, f"{type(exc).__name__}: {exc}"
            if self._sync is not None:
                self._sync((k, error))
        else:
            assert self._sync is not None
            k, error = self._sync(None)
            if error is not None:
                failure = CommitError(f"claim {self.claim_id}: rank 0 could not charge the next steps ({error})")
        if k < 1:
            self._refuse(optimizer, step)
        if failure is not None:
            # The charge may or may not have landed: stop here rather than risk an uncharged step.
            self.charge_failed = failure
            self._closed = True
            _discard_noised_gradients(optimizer)
            logger.error("claim %s: charging the next %d steps failed (%s); training stops", self.claim_id, k, failure)
            raise failure
        increment = self._increment(step, k)
        charged = _merge(self._charged, Segment(step.noise_multiplier, step.sample_rate, k))
        self._consumed = self._consumed + increment
        self._charged = charged
        self._ahead = k
        logger.debug("claim %s: charged %d steps ahead (%d charged in all)", self.claim_id, k, self.charged_steps)

    def _increment(self, step: Segment, k: int) -> np.ndarray[Any, np.dtype[np.float64]]:
        """The exact increment that brings the claim to the cumulative target of ``k`` more ``step`` steps."""
        charged = _merge(self._charged, Segment(step.noise_multiplier, step.sample_rate, k))
        return _exact_increment(self._consumed, self._curves.total(charged) + self._extra)

    def __call__(self, optimizer: Any) -> None:
        if self._closed:
            _discard_noised_gradients(optimizer)
            raise SessionClosedError(
                f"claim {self.claim_id}: the budgeted session is over; no further private step is allowed"
            )
        step = Segment(float(optimizer.noise_multiplier), self.sample_rate * optimizer.accumulated_iterations, 1)
        predicted = _merge(self._segments, step)
        if self.exhausted or not self._fits(predicted):
            self._refuse(optimizer, step)
        if self._charge is not None:
            self._charge_ahead(optimizer, step)
        assert self._previous is not None  # set by attach, the only way to install the hook
        self._previous(optimizer)
        actual = self.recorded()
        if self._charge is not None:
            self._ahead = max(0, self._ahead - 1)
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
