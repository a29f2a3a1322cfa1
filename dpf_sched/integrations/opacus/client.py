"""The budget client: the seam through which a training job claims, waits for, spends and releases budget.

:class:`BudgetClient` is the protocol a job needs from a budget scheduler, in-process or remote; every value that
crosses it is a core value, so a remote (HTTP) client only has to serialise them. :class:`SchedulerClient`
implements it over an in-process :class:`~dpf_sched.scheduler.Scheduler`. :func:`claim_and_wait` submits a claim
and waits for its grant, turning a rejection or an expiry into :class:`ClaimRejectedError` or
:class:`GrantTimeoutError` before the job touches anything. Its code uses neither torch nor opacus.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Protocol, runtime_checkable

from dpf_sched.budget import AlphaGrid, Budget, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.errors import CompositionMismatchError, InvalidParameterError, InvalidStateError
from dpf_sched.integrations.opacus.errors import ClaimRejectedError, GrantTimeoutError
from dpf_sched.ledger.base import ClaimRecord, ClaimState
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

logger = logging.getLogger(__name__)

#: Reason the scheduler records when a claim's deadline passes while it waits (``Scheduler._expire``).
_TIMEOUT_REASON = "timeout"
#: Reason recorded when a waiting claim is withdrawn (``Scheduler.withdraw``, the service's withdraw endpoint).
_WITHDRAWN_REASON = "withdrawn"


@runtime_checkable
class BudgetClient(Protocol):
    """What a training job needs from a budget scheduler, in-process or remote.

    Every value crossing it is a core value (:class:`Claim`, :class:`ClaimRecord`, :class:`RenyiCurve`,
    :class:`BlockSelector`), so an HTTP client only has to serialise them:
    :class:`dpf_sched.client.ServiceClient` implements it over the budget service. ``wait`` blocks until the claim is no
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

    def renew(self, claim_id: str) -> float:
        """Renew the lease of a granted claim (deadline = now + lease); the new deadline (``inf`` without a lease).

        Raises :class:`~dpf_sched.errors.LeaseExpiredError` once the lease lapsed and the claim expired (its
        unspent budget went back to the pool), :class:`~dpf_sched.errors.InvalidStateError` for another claim
        that is not granted. :class:`~dpf_sched.integrations.lease.LeaseRenewer` calls it from a thread.
        """
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

    def renew(self, claim_id: str) -> float:
        return self.scheduler.renew(claim_id)


def _as_client(client: BudgetClient | Scheduler) -> BudgetClient:
    if isinstance(client, Scheduler):
        return SchedulerClient(client)
    if not isinstance(client, BudgetClient):
        raise InvalidParameterError(f"expected a BudgetClient or a Scheduler, got {type(client).__name__}")
    return client


def _renyi(value: Budget) -> RenyiCurve:
    if not isinstance(value, RenyiCurve):
        raise CompositionMismatchError(f"expected a Rényi curve from the budget client, got {type(value).__name__}")
    return value


def _give_up(client: BudgetClient, claim_id: str, record: ClaimRecord) -> ClaimRecord:
    """Withdraw a claim that is still waiting when the job stops waiting, if the client can; its record then.

    A remote scheduler could otherwise grant the claim just after the job gave up, and that grant would stay
    allocated with nobody to release it. A claim decided in the meantime (the withdrawal meets a conflict) is
    returned as it now is, so a grant that came just in time is used rather than lost.
    """
    withdraw = getattr(client, "withdraw", None)
    if not callable(withdraw):
        return record  # in-process: the claim's own deadline (the same timeout) expires it
    try:
        result = withdraw(claim_id)
    except InvalidStateError:
        return client.status(claim_id)
    return result if isinstance(result, ClaimRecord) else client.status(claim_id)


def claim_and_wait(client: BudgetClient, claim: Claim, timeout: float) -> ClaimRecord:
    """Submit ``claim`` and wait up to ``timeout`` for its grant; the granted record, or a typed error.

    If the claim is still waiting when ``timeout`` passes and the client can withdraw claims (the service client
    can), it is withdrawn so that no grant arrives after the job gave up; a grant that won the race is used.

    Raises
    ------
    ClaimRejectedError
        The scheduler rejected the claim (the record's reason says why).
    GrantTimeoutError
        The claim expired at its deadline, or was still waiting when ``timeout`` passed (then it is withdrawn,
        or, in process, the scheduler expires it at its own deadline: give the claim the same timeout, as
        :class:`BudgetedTraining` does).
    """
    claim_id = client.submit(claim)
    record = client.wait(claim_id, timeout)
    if record.state is ClaimState.WAITING:
        record = _give_up(client, claim_id, record)
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
        if record.reason == _WITHDRAWN_REASON:
            raise GrantTimeoutError(
                f"claim {claim_id} was not granted within {timeout:g}; it was withdrawn", claim_id, record
            )
        reason = record.reason or "no reason given"
        raise ClaimRejectedError(f"claim {claim_id} was rejected: {reason}", claim_id, record)
    raise InvalidStateError(f"claim {claim_id} is already {record.state.value}; a job needs a fresh claim")
