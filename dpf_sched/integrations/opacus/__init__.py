"""Budgeted DP-SGD with Opacus: a training job claims, waits for, consumes and releases privacy budget.

This package is the optional ``opacus`` extra: it is the only place of the library that imports torch and opacus,
and nothing in the core imports it (``import dpf_sched`` and ``import dpf_sched.integrations`` load neither).
The life of a job (``docs/opacus.md`` explains the design):

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
4. **Charge every step, before it runs.** :class:`BudgetHook` is chained in front of the optimizer's existing step
   hook (the accountant's): for each real step it adds the step's curve (σ, ``sample_rate ×
   accumulated_iterations``) to what the job has spent, and if that would exceed the grant at any α it zeroes the
   noised gradients and raises :class:`BudgetExhaustedError` *before* the accountant records the step and before
   the parameters change. Steps are charged on the ledger ahead of time, in chunks (``charge_every`` steps,
   default one epoch): a chunk's exact curve is consumed on every block before its first step runs, so a job
   killed at any instant has consumed at least what it used and at most one chunk more (write-ahead charging).
5. **Reconcile and release.** On exit, whatever the reason, the claim is made to hold at least the curve of the
   accountant's own ``history`` (``(noise_multiplier, sample_rate, steps)`` segments; any accountant: PRV, RDP,
   GDP) — exactly that curve, bit for bit, when the job ran every step it charged — and the rest of the grant is
   released. ``state_dict`` / ``load_state_dict`` checkpoint and resume a job on the same claim; under DDP only
   rank 0 talks to the scheduler and broadcasts every decision.

:class:`BudgetedPrivacyEngine` ties these together in an API that reads like Opacus's ``PrivacyEngine``.

One module per concept; import from this package, which re-exports the public API:

- :mod:`~dpf_sched.integrations.opacus.errors`: the errors of a job (no grant, exhausted, closed, access,
  accounting mismatch, commit);
- :mod:`~dpf_sched.integrations.opacus.history`: accountant histories as :class:`Segment` values and their Rényi
  curves, with the per-step curve cache that plan, hook and commit share;
- :mod:`~dpf_sched.integrations.opacus.plan`: :class:`DpSgdPlan` and the planning and calibration functions;
- :mod:`~dpf_sched.integrations.opacus.client`: the :class:`BudgetClient` protocol, :class:`SchedulerClient` and
  :func:`claim_and_wait`;
- :mod:`~dpf_sched.integrations.opacus.data`: :class:`GrantedDataset`, the rows of granted blocks only;
- :mod:`~dpf_sched.integrations.opacus.hook`: :class:`BudgetHook`, the per-step charge;
- :mod:`~dpf_sched.integrations.opacus.report`: :class:`RunStatus` and :class:`RunReport`;
- :mod:`~dpf_sched.integrations.opacus.engine`: :class:`BudgetedPrivacyEngine` and its session,
  :class:`BudgetedTraining`.
"""

from dpf_sched.integrations.opacus import _extra as _extra  # first: checks torch and opacus are there
from dpf_sched.integrations.opacus.client import BudgetClient, SchedulerClient, claim_and_wait
from dpf_sched.integrations.opacus.data import GrantedDataset, Rows
from dpf_sched.integrations.opacus.engine import BudgetedPrivacyEngine, BudgetedTraining
from dpf_sched.integrations.opacus.errors import (
    AccountingMismatchError,
    BlockAccessError,
    BudgetExhaustedError,
    ClaimRejectedError,
    CommitError,
    GrantTimeoutError,
    NoGrantError,
    SessionClosedError,
)
from dpf_sched.integrations.opacus.history import Segment, history_curve, history_rdp, history_since
from dpf_sched.integrations.opacus.hook import BudgetHook
from dpf_sched.integrations.opacus.plan import (
    DpSgdPlan,
    calibrate_for_loader,
    loader_accounting,
    plan_dp_sgd,
    plan_for_loader,
)
from dpf_sched.integrations.opacus.report import RunReport, RunStatus

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
    "Rows",
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
