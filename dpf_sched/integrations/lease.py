"""Keep a claim's lease alive from a background thread while a job uses its grant.

A claim created through the budget service carries a lease (300 s by default): unless its holder renews it, the
scheduler expires it and returns the unspent rest of the grant to the pool, so a job that dies (SIGKILL, lost
node) does not keep its budget forever. A live job renews with :class:`LeaseRenewer`, a daemon thread that calls
``client.renew(claim_id)`` every ``lease / 3`` seconds (so two renewals in a row may fail, e.g. during a leader
failover, before the lease lapses). It stops when closed, and stops renewing, logs and records why
(:attr:`LeaseRenewer.lost`) when the claim is gone: expired (:class:`~dpf_sched.errors.LeaseExpiredError`),
unknown, or no longer granted (finished). Transient failures (the service unreachable, a 503) are logged and
retried at the next period. The job checks :attr:`LeaseRenewer.lost` (or passes ``on_lost``) before it uses
more data: after an expiry its grant is gone, and only what it charged before stays charged (write-ahead
charging is what makes that safe).

This module uses neither torch nor opacus; any object with a ``renew(claim_id) -> float`` method will do (the
:class:`~dpf_sched.integrations.opacus.client.BudgetClient` protocol has one).
"""

from __future__ import annotations

import logging
import math
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Protocol

from dpf_sched.errors import InvalidParameterError, InvalidStateError, UnknownClaimError

logger = logging.getLogger(__name__)


class Renewing(Protocol):
    """What the renewer needs from a budget client."""

    def renew(self, claim_id: str) -> float:
        """Renew the claim's lease; the new deadline."""
        ...


class LeaseRenewer:
    """A daemon thread that renews ``claim_id``'s lease every ``interval`` seconds until :meth:`close`.

    Parameters
    ----------
    client
        Anything with ``renew(claim_id) -> float`` (a :class:`~dpf_sched.client.ServiceClient`, a
        :class:`~dpf_sched.integrations.opacus.client.SchedulerClient`).
    claim_id
        The granted claim.
    lease
        The claim's lease length (seconds); the period is ``lease / 3`` unless ``interval`` is given.
    interval
        Seconds between two renewals (positive, finite, less than ``lease``).
    on_lost
        Called once, from the renewer's thread, with the error that ended the claim (expired, unknown, not
        granted any more); it must be quick and must not raise.
    renew_now
        Renew once as soon as the thread starts (default), which covers the time between the grant and the
        start of the renewer.

    Use it as a context manager, or call :meth:`start` and :meth:`close`. A ``SchedulerClient`` over a scheduler
    that another thread steps is not thread-safe: use the renewer with a remote client, or renew from the thread
    that steps the scheduler.
    """

    def __init__(
        self,
        client: Renewing,
        claim_id: str,
        lease: float,
        *,
        interval: float | None = None,
        on_lost: Callable[[Exception], None] | None = None,
        renew_now: bool = True,
    ) -> None:
        if not callable(getattr(client, "renew", None)):
            raise InvalidParameterError(f"the client {type(client).__name__} has no renew method")
        if not isinstance(claim_id, str) or not claim_id:
            raise InvalidParameterError(f"claim_id must be a non-empty string, got {claim_id!r}")
        if isinstance(lease, bool) or not isinstance(lease, (int, float)) or not math.isfinite(lease) or lease <= 0:
            raise InvalidParameterError(f"lease must be a positive finite number of seconds, got {lease!r}")
        period = lease / 3.0 if interval is None else interval
        if isinstance(period, bool) or not isinstance(period, (int, float)) or not 0 < period < lease:
            raise InvalidParameterError(f"interval must be positive and shorter than the lease {lease}, got {period!r}")
        self.client = client
        self.claim_id = claim_id
        self.lease = float(lease)
        self.interval = float(period)
        self.on_lost = on_lost
        self.renew_now = renew_now
        #: The deadline the last successful renewal returned (``None`` before the first).
        self.deadline: float | None = None
        #: How many renewals succeeded.
        self.renewals = 0
        #: The error that ended the claim (expired, unknown, not granted), or ``None`` while it lives.
        self.lost: Exception | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def alive(self) -> bool:
        """True while the thread runs (started, not closed, claim not lost)."""
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> LeaseRenewer:
        """Start the thread (once); returns ``self``."""
        if self._thread is not None:
            raise InvalidStateError(f"the lease renewer of claim {self.claim_id} was already started")
        self._thread = threading.Thread(target=self._run, name=f"dpf-sched-lease-{self.claim_id}", daemon=True)
        self._thread.start()
        return self

    def close(self, timeout: float | None = 10.0) -> None:
        """Stop renewing and wait for the thread (at most ``timeout`` seconds: a renewal in flight finishes)."""
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout)

    def __enter__(self) -> LeaseRenewer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ----- the thread ---------------------------------------------------------------------------------------
    def _run(self) -> None:
        if not self.renew_now and self._stop.wait(self.interval):
            return
        while not self._stop.is_set():
            if not self._renew_once():
                return
            if self._stop.wait(self.interval):
                return

    def _renew_once(self) -> bool:
        """One renewal; False when the claim is gone and renewing must stop."""
        try:
            self.deadline = float(self.client.renew(self.claim_id))
            self.renewals += 1
            return True
        except (InvalidStateError, UnknownClaimError) as e:  # LeaseExpiredError is an InvalidStateError
            self.lost = e
            logger.error("claim %s: lease not renewed, renewing stops: %s", self.claim_id, e)
            if self.on_lost is not None:
                try:
                    self.on_lost(e)
                except Exception:  # a callback bug must not kill the thread silently
                    logger.exception("claim %s: the on_lost callback failed", self.claim_id)
            return False
        except Exception as e:  # transient (network, 503, a leader failover): try again next period
            logger.warning("claim %s: lease renewal failed (%s: %s); retrying", self.claim_id, type(e).__name__, e)
            return True
