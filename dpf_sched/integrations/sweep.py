"""One budget for a hyperparameter sweep: K trials under one claim, every trial charged before it touches data.

Tuning a DP model by training K candidates and keeping the best one spends the privacy loss of *all K* trainings,
not only the winner's: each trial read the data. :class:`BudgetedSweep` makes that the only way to run one. The
sweep holds one granted claim (plan its demand with :meth:`BudgetedSweep.demand`, the sum of the trials' curves);
each trial's privacy loss, a ``DpEvent`` or a :class:`~dpf_sched.budget.RenyiCurve`, is consumed on every block
of the claim *before* the trial may run (:meth:`~BudgetedSweep.charge`, or :meth:`~BudgetedSweep.run`, which
charges and then calls the trial). A trial whose charge exceeds what remains of the claim at some order is
refused with :class:`TrialRefusedError` and nothing is charged. :meth:`~BudgetedSweep.finish` (also on leaving a
``with`` block, even on an error) releases the unspent rest of the claim and returns a :class:`SweepReport` that
lists each trial's charge; the ledger's consumption is exactly their sum.

Choosing the winner is post-processing of the K trained models when it uses data that is not the blocks' (a
public validation set); selecting on the private data itself costs more (Papernot & Steinke 2022, "Hyperparameter
Tuning with Renyi Differential Privacy") and must be charged as a trial of its own.

Works with any ``BudgetClient`` (in-process or the service's); single-threaded: one sweep object per job. Nothing
here imports torch, opacus, httpx or dp-accounting (the latter is imported when a ``DpEvent`` is converted).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar

import numpy as np

from dpf_sched.budget import AlphaGrid, RenyiCurve
from dpf_sched.composition import REL_TOL
from dpf_sched.errors import DpfSchedError, InvalidParameterError, InvalidStateError, OverConsumptionError
from dpf_sched.integrations.charge import Cost, charged_blocks, cost_curve
from dpf_sched.integrations.lease import LeaseRenewer
from dpf_sched.ledger.base import ClaimRecord, ClaimState

if TYPE_CHECKING:  # the protocol's module lives in the opacus package, whose __init__ imports torch
    from dpf_sched.integrations.opacus.client import BudgetClient

__all__ = ["BudgetedSweep", "SweepReport", "TrialCharge", "TrialRefusedError"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")


class TrialRefusedError(DpfSchedError):
    """A trial whose charge would exceed what remains of the sweep's claim; nothing was charged, it must not run.

    ``trial`` is the trial's name, ``charge`` its curve and ``alpha`` the first order where it does not fit.
    """

    def __init__(self, message: str, trial: str, charge: RenyiCurve, alpha: float | None = None) -> None:
        super().__init__(message)
        self.trial = trial
        self.charge = charge
        self.alpha = alpha


@dataclass(frozen=True)
class TrialCharge:
    """One charged trial: its position among the charged trials, its name and the curve consumed on each block."""

    index: int
    name: str
    charge: RenyiCurve


@dataclass(frozen=True)
class SweepReport:
    """What a sweep spent: each charged trial, the refused ones, and the ledger's view at the end.

    ``total`` is the sum of the trial charges (in charge order, as the ledger adds them); ``consumed`` is what the
    ledger says the claim consumed on each block when the sweep finished, equal to ``total`` on every block
    unless a charge failed in doubt (e.g. the service could not be reached, see :meth:`BudgetedSweep.charge`).
    """

    claim_id: str
    blocks: tuple[str, ...]
    granted: Mapping[str, RenyiCurve]
    trials: tuple[TrialCharge, ...]
    refused: tuple[str, ...]
    total: RenyiCurve
    consumed: Mapping[str, RenyiCurve]
    claim_state: str
    released: bool
    in_doubt: tuple[str, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (curves as lists of floats on the grid's orders)."""
        return {
            "claim_id": self.claim_id,
            "blocks": list(self.blocks),
            "alphas": list(self.total.grid.orders),
            "granted": {b: c.values.tolist() for b, c in self.granted.items()},
            "trials": [{"index": t.index, "name": t.name, "charge": t.charge.values.tolist()} for t in self.trials],
            "refused": list(self.refused),
            "in_doubt": list(self.in_doubt),
            "total": self.total.values.tolist(),
            "consumed": {b: c.values.tolist() for b, c in self.consumed.items()},
            "claim_state": self.claim_state,
            "released": self.released,
        }


def _renyi(record: ClaimRecord, field_name: str, mapping: Mapping[str, object], block: str) -> RenyiCurve:
    value = mapping[block]
    if not isinstance(value, RenyiCurve):
        raise InvalidStateError(
            f"claim {record.claim.id}: its {field_name} on block {block} is not a Rényi curve (the sweep needs a "
            f"Rényi ledger)"
        )
    return value


class BudgetedSweep:
    """K trials under one granted claim; each trial is charged (on every block, or on ``blocks``) before it runs.

    Parameters
    ----------
    client : BudgetClient
        The budget scheduler, in process (``SchedulerClient``) or remote (``ServiceClient``).
    claim_id : str
        A claim that is granted now (claim it with a demand of :meth:`demand` of the planned trials).
    blocks : sequence of str, optional
        Charge these blocks of the claim only (default: all of them).

    Raises
    ------
    InvalidStateError
        The claim is not granted, or the ledger is not a Rényi one.
    """

    def __init__(self, client: BudgetClient, claim_id: str, *, blocks: Sequence[str] | None = None) -> None:
        self.client = client
        self.claim_id = claim_id
        self.grid: AlphaGrid = client.alpha_grid()
        record = client.status(claim_id)
        if record.state is not ClaimState.GRANTED:
            raise InvalidStateError(f"claim {claim_id} is {record.state.value}, not granted: a sweep needs a grant")
        self.blocks = charged_blocks(record, blocks)
        self.granted = MappingProxyType({b: _renyi(record, "grant", record.claim.demand, b) for b in self.blocks})
        self._trials: list[TrialCharge] = []
        self._refused: list[str] = []
        self._in_doubt: list[str] = []
        self._total = RenyiCurve(self.grid, np.zeros(len(self.grid)))
        self._report: SweepReport | None = None
        # A leased claim (the service's default) must outlive the sweep's longest trial: a remote client renews
        # from a LeaseRenewer thread; an in-process scheduler is single-threaded, so it is renewed with each charge.
        self._renewer: LeaseRenewer | None = None
        self._renew_inline = False
        lease, renew = record.claim.lease, getattr(client, "renew", None)
        if lease is not None and callable(renew):
            if getattr(client, "scheduler", None) is not None:
                self._renew_inline = True
            else:
                self._renewer = LeaseRenewer(client, claim_id, lease, renew_now=False).start()

    # ----- planning --------------------------------------------------------------------------------------------
    @staticmethod
    def demand(costs: Iterable[Cost], grid: AlphaGrid) -> RenyiCurve:
        """The demand that covers every trial of ``costs`` (their curves' sum), to claim on each block."""
        total = RenyiCurve(grid, np.zeros(len(grid)))
        for cost in costs:
            total = total + cost_curve(cost, grid)
        return total

    # ----- trials ----------------------------------------------------------------------------------------------
    @property
    def trials(self) -> tuple[TrialCharge, ...]:
        """The trials charged so far, in order."""
        return tuple(self._trials)

    @property
    def total(self) -> RenyiCurve:
        """The sum of the trial charges so far (per block)."""
        return self._total

    @property
    def finished(self) -> bool:
        """True once :meth:`finish` ran: no further trial can be charged."""
        return self._report is not None

    def remaining(self) -> dict[str, RenyiCurve]:
        """What remains of the claim's grant on each of the sweep's blocks, as the ledger says now."""
        record = self.client.status(self.claim_id)
        return {b: _renyi(record, "remaining", record.remaining, b) for b in self.blocks}

    def _misfit(self, charge: RenyiCurve, record: ClaimRecord) -> tuple[str, float] | None:
        """The first (block, α) where ``charge`` exceeds the grant's remainder (with the ledger's rounding slack,
        ``REL_TOL`` × the grant: never more than the ledger itself accepts), or None when it fits everywhere."""
        for b in self.blocks:
            rem = _renyi(record, "remaining", record.remaining, b).values
            slack = self.granted[b].values * REL_TOL
            over = np.flatnonzero(charge.values > rem + slack)
            if over.size:
                return b, float(self.grid.orders[int(over[0])])
        return None

    def can_afford(self, cost: Cost) -> bool:
        """True when a trial of this cost would be charged now (it fits what remains on every block)."""
        charge = cost_curve(cost, self.grid)
        record = self.client.status(self.claim_id)
        return record.state is ClaimState.GRANTED and self._misfit(charge, record) is None

    def charge(self, cost: Cost, name: str | None = None) -> TrialCharge:
        """Charge one trial's privacy loss on every block of the sweep; the trial may use the data only afterwards.

        Raises
        ------
        TrialRefusedError
            The charge exceeds what remains of the claim at some order (nothing was charged; do not run it).
        InvalidStateError
            The sweep has finished, or the claim is no longer granted (e.g. its lease expired).
        InvalidParameterError, UnsupportedDpEventError, AlphaGridMismatchError
            The cost is not a valid ``DpEvent`` or curve on the ledger's grid (nothing was charged).

        Any other error of the client (the service unreachable after its retries) leaves the charge in doubt: the
        trial must not run; it is listed in the report's ``in_doubt`` and the report's ``consumed`` says what the
        ledger holds.
        """
        if self._report is not None:
            raise InvalidStateError(f"the sweep on claim {self.claim_id} has finished; no trial can be charged")
        label = f"trial-{len(self._trials) + len(self._refused)}" if name is None else str(name)
        charge = cost_curve(cost, self.grid)
        if self._renew_inline:
            with contextlib.suppress(InvalidStateError):  # not granted any more: the check below says so
                self.client.renew(self.claim_id)
        record = self.client.status(self.claim_id)
        if record.state is not ClaimState.GRANTED:
            raise InvalidStateError(
                f"claim {self.claim_id} is {record.state.value}, not granted: trial {label!r} cannot be charged"
            )
        misfit = self._misfit(charge, record)
        if misfit is not None:
            self._refused.append(label)
            block, alpha = misfit
            raise TrialRefusedError(
                f"trial {label!r} would exceed what remains of claim {self.claim_id} on block {block} at α={alpha:g}; "
                f"it was not charged and must not run",
                label,
                charge,
                alpha,
            )
        try:
            self.client.consume(self.claim_id, dict.fromkeys(self.blocks, charge))
        except OverConsumptionError as exc:  # someone else consumed on this claim meanwhile: still nothing charged
            self._refused.append(label)
            raise TrialRefusedError(
                f"trial {label!r} would exceed what remains of claim {self.claim_id}: {exc}", label, charge
            ) from exc
        except (InvalidStateError, InvalidParameterError):
            raise  # refused by the ledger before anything changed
        except Exception:
            self._in_doubt.append(label)
            raise
        trial = TrialCharge(len(self._trials), label, charge)
        self._trials.append(trial)
        self._total = self._total + charge
        logger.info("sweep on claim %s charged trial %r", self.claim_id, label)
        return trial

    def run(self, cost: Cost, trial: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Charge ``cost``, then call ``trial(*args, **kwargs)`` and return its result (named after the callable).

        The charge stands whatever the trial does afterwards: once it may read the data, its privacy is spent.
        Raises :class:`TrialRefusedError` (and does not call the trial) when the charge does not fit.
        """
        self.charge(cost, getattr(trial, "__name__", None))
        return trial(*args, **kwargs)

    # ----- the end -----------------------------------------------------------------------------------------------
    def finish(self) -> SweepReport:
        """Release the unspent rest of the claim (once) and report each trial's charge; later calls return the same
        report. If the claim is no longer granted (already released, expired), nothing is released."""
        if self._report is not None:
            return self._report
        if self._renewer is not None:
            self._renewer.close()
        record = self.client.status(self.claim_id)
        released = False
        if record.state is ClaimState.GRANTED:
            self.client.release(self.claim_id)
            released = True
            record = self.client.status(self.claim_id)
        self._report = SweepReport(
            claim_id=self.claim_id,
            blocks=self.blocks,
            granted=self.granted,
            trials=tuple(self._trials),
            refused=tuple(self._refused),
            total=self._total,
            consumed=MappingProxyType({b: _renyi(record, "consumption", record.consumed, b) for b in self.blocks}),
            claim_state=record.state.value,
            released=released,
            in_doubt=tuple(self._in_doubt),
        )
        logger.info(
            "sweep on claim %s finished: %d trial(s) charged, %d refused", self.claim_id, len(self._trials),
            len(self._refused),
        )  # fmt: skip
        return self._report

    @property
    def report(self) -> SweepReport | None:
        """The report, once the sweep has finished."""
        return self._report

    def __enter__(self) -> BudgetedSweep:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None:
            self.finish()
            return
        try:  # the sweep failed: still give back what it did not spend, but never hide the original error
            self.finish()
        except Exception:
            logger.exception("sweep on claim %s: releasing the rest after a failure failed too", self.claim_id)
