"""Typed errors raised by dpf_sched.

Every public entry point validates its input and raises one of these, naming the bad value, *before* it changes
any state. They form one hierarchy so that callers can catch ``DpfSchedError`` for "anything this library
refused", or a narrower class for one reason. Subclasses also derive from the matching built-in (``ValueError``,
``KeyError``) so that generic code keeps working.
"""

from __future__ import annotations


class DpfSchedError(Exception):
    """Base class of every error that dpf_sched raises on purpose."""


class InvalidBudgetError(DpfSchedError, ValueError):
    """A budget value is NaN, infinite, negative, zero where positive is required, or otherwise malformed."""


class InvalidParameterError(DpfSchedError, ValueError):
    """A parameter (mechanism, policy, workload, conversion) is out of its domain."""


class AlphaGridMismatchError(DpfSchedError, ValueError):
    """Two Rényi curves (or a curve and a ledger) live on different α grids; we never interpolate silently."""


class CompositionMismatchError(DpfSchedError, ValueError):
    """A basic (ε, δ) value was used where a Rényi curve is required, or the other way round."""


class UnknownBlockError(DpfSchedError, KeyError):
    """A block id that the ledger does not hold."""

    def __str__(self) -> str:  # KeyError quotes its argument; keep the message readable.
        return str(self.args[0]) if self.args else "unknown block"


class UnknownClaimError(DpfSchedError, KeyError):
    """A claim id that the ledger does not hold."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "unknown claim"


class DuplicateIdError(DpfSchedError, ValueError):
    """A block or claim id that is already taken."""


class InsufficientBudgetError(DpfSchedError):
    """An allocation or unlock would break the no-overspend or conservation invariant."""


class InvalidStateError(DpfSchedError):
    """An operation that the claim's current state does not allow (double grant, consume after release, ...)."""


class LeaseExpiredError(InvalidStateError):
    """The claim's lease lapsed and the scheduler expired it: its unconsumed remainder went back to the pool.

    Raised by renew, consume and release on an expired claim; the holder must stop using the claim's data
    (whatever it charged before the expiry stays charged) and claim again if it wants to go on.
    """


class OverConsumptionError(DpfSchedError):
    """A consumption larger than what remains of the claim's grant."""


class UnknownPolicyError(DpfSchedError, LookupError):
    """No policy is registered under that name."""


class TraceFormatError(DpfSchedError, ValueError):
    """A malformed trace file; the message names the line number."""

    def __init__(self, message: str, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


class LedgerStorageError(DpfSchedError):
    """A durable ledger's storage failed or is unusable (not a ledger, corrupted, connection lost).

    The operation that met it changed nothing that was acknowledged: its transaction was rolled back.
    """


class StorageTimeoutError(LedgerStorageError):
    """A ledger write waited longer than its bound for another writer (stalled, or holding its transaction too
    long) and gave up; nothing was written. Retry later (the HTTP service answers 503 with ``Retry-After``)."""


class SchemaVersionError(LedgerStorageError):
    """A ledger database whose schema version this library cannot use (written by a newer version)."""


class GrantLeaseError(DpfSchedError):
    """Another scheduler loop holds the right to grant on this ledger (only one may grant at a time)."""


class ServiceError(DpfSchedError):
    """The budget service answered in a way that no more specific error describes (an unexpected status code).

    ``status`` is the HTTP status (``None`` when no reply came back) and ``detail`` the server's reason.
    """

    def __init__(self, message: str, status: int | None = None, detail: str | None = None) -> None:
        self.status = status
        self.detail = detail
        super().__init__(message)


class ServiceAuthError(ServiceError):
    """The budget service refused the token: missing, unknown or revoked (401), or not allowed here (403)."""


class ServiceUnavailableError(ServiceError):
    """The budget service could not be reached, or kept answering 502/503/504, after every retry."""
