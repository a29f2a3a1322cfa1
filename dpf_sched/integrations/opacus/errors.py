"""The errors of a budgeted DP-SGD job, one class per way a job can be refused or stopped.

They live apart from the code that raises them so that a caller (a training loop, a remote client) can catch them
without reaching into the client, the data, the hook or the engine. All derive from
:class:`~dpf_sched.errors.DpfSchedError`:

- :class:`NoGrantError` and its two reasons, :class:`ClaimRejectedError` and :class:`GrantTimeoutError`: the
  claim was not granted, so the job must not train (raised before any model, optimizer or data is touched);
- :class:`BudgetExhaustedError`: the step that would have exceeded the grant, refused before it happened;
- :class:`SessionClosedError`: a private step after the session ended;
- :class:`BlockAccessError`: a read of rows the job holds no grant on;
- :class:`AccountingMismatchError`: the Opacus accountant disagrees with the plan or the hook's prediction;
- :class:`CommitError`: the spend could not be committed (the claim is kept granted, never under-charged).
"""

from __future__ import annotations

from dpf_sched.errors import DpfSchedError
from dpf_sched.ledger.base import ClaimRecord


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
