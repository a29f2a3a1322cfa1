"""The budgeted privacy engine and its training session: the life of one budgeted DP-SGD job.

:class:`BudgetedPrivacyEngine` reads like Opacus's ``PrivacyEngine``: its ``make_private`` and
``make_private_with_epsilon`` return a :class:`BudgetedTraining`, the context manager that ties the other modules
of this package together. Entering it plans the demand (:mod:`~dpf_sched.integrations.opacus.plan`), claims it and
waits for the grant (:mod:`~dpf_sched.integrations.opacus.client`), opens the
:class:`~dpf_sched.integrations.opacus.data.GrantedDataset`, makes the objects private with Opacus and chains the
:class:`~dpf_sched.integrations.opacus.hook.BudgetHook`; leaving it, whatever the reason, commits the accountant's
spend, releases the rest and writes the :class:`~dpf_sched.integrations.opacus.report.RunReport`. The two classes
live together because each needs the other: the engine makes sessions, a session uses its engine's client,
Opacus engine and accountant.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from dpf_sched.budget import AlphaGrid
from dpf_sched.claim import Claim
from dpf_sched.errors import InvalidParameterError, InvalidStateError
from dpf_sched.integrations.opacus.client import BudgetClient, _as_client, _renyi, claim_and_wait
from dpf_sched.integrations.opacus.data import GrantedDataset, Rows
from dpf_sched.integrations.opacus.errors import AccountingMismatchError, BudgetExhaustedError, CommitError
from dpf_sched.integrations.opacus.hook import BudgetHook
from dpf_sched.integrations.opacus.plan import (
    DpSgdPlan,
    _positive_int,
    calibrate_for_loader,
    loader_accounting,
    plan_for_loader,
)
from dpf_sched.integrations.opacus.report import RunReport, RunStatus
from dpf_sched.ledger.base import ClaimRecord
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

logger = logging.getLogger(__name__)


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
