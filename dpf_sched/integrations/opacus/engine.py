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
from collections.abc import Callable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any

import numpy as np
import torch
from opacus import PrivacyEngine
from torch.utils.data import DataLoader

from dpf_sched.budget import AlphaGrid, Budget, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.errors import DpfSchedError, InvalidParameterError, InvalidStateError
from dpf_sched.integrations.lease import LeaseRenewer
from dpf_sched.integrations.opacus.client import (
    BudgetClient,
    SchedulerClient,
    _as_client,
    _renyi,
    claim_and_wait,
)
from dpf_sched.integrations.opacus.data import GrantedDataset, Rows
from dpf_sched.integrations.opacus.errors import (
    AccountingMismatchError,
    BudgetExhaustedError,
    ClaimRejectedError,
    CommitError,
    GrantTimeoutError,
    NoGrantError,
)
from dpf_sched.integrations.opacus.history import Segment, _merge, history_curve
from dpf_sched.integrations.opacus.hook import BudgetHook
from dpf_sched.integrations.opacus.plan import (
    DpSgdPlan,
    _positive_int,
    calibrate_for_loader,
    loader_accounting,
    plan_for_loader,
)
from dpf_sched.integrations.opacus.report import RunReport, RunStatus
from dpf_sched.ledger.base import ClaimRecord, ClaimState
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

logger = logging.getLogger(__name__)


def _distributed_world() -> int:
    """The world size of an initialised ``torch.distributed`` process group (1 when there is none)."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


class _Collective:
    """This process's rank in a DDP job and rank 0's broadcast (``torch.distributed.broadcast_object_list``).

    Every call of :meth:`broadcast` is collective: all ranks make the same calls in the same order, which the
    session guarantees by making them at the same points of a lock-step job (start, each chunk, finish).
    """

    def __init__(self) -> None:
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized()):
            raise InvalidStateError("a distributed budgeted job needs an initialised torch.distributed process group")
        self.rank = int(dist.get_rank())
        self.world = int(dist.get_world_size())

    @property
    def leader(self) -> bool:
        """True on rank 0, the only rank that talks to the budget scheduler."""
        return self.rank == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj``, on every rank."""
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


class _Rank0Client:
    """The :class:`BudgetClient` of a DDP job's rank: reads are rank 0's answers, broadcast; writes are rank 0's.

    ``alpha_grid`` and ``select_blocks`` are collective (every rank calls them at the same point); the claim's
    operations are only made by rank 0 (the session sees to it) and refused elsewhere.
    """

    def __init__(self, inner: BudgetClient | None, collective: _Collective) -> None:
        if collective.leader and inner is None:
            raise InvalidParameterError("rank 0 of a distributed job needs a budget client")
        self._inner = inner
        self._coll = collective

    def _shared(self, read: Callable[[BudgetClient], Any]) -> Any:
        outcome: tuple[bool, Any] | None = None
        if self._inner is not None and self._coll.leader:
            try:
                outcome = (True, read(self._inner))
            except DpfSchedError as exc:
                outcome = (False, f"{type(exc).__name__}: {exc}")
        outcome = self._coll.broadcast(outcome)
        assert outcome is not None
        if not outcome[0]:
            raise InvalidStateError(f"rank 0: {outcome[1]}")
        return outcome[1]

    def _leader(self) -> BudgetClient:
        if self._inner is None or not self._coll.leader:
            raise InvalidStateError("only rank 0 of a distributed job talks to the budget scheduler")
        return self._inner

    def alpha_grid(self) -> AlphaGrid:
        grid: AlphaGrid = self._shared(lambda c: c.alpha_grid())
        return grid

    def select_blocks(self, selector: BlockSelector) -> tuple[str, ...]:
        blocks: tuple[str, ...] = self._shared(lambda c: c.select_blocks(selector))
        return blocks

    def submit(self, claim: Claim) -> str:
        return self._leader().submit(claim)

    def wait(self, claim_id: str, timeout: float) -> ClaimRecord:
        return self._leader().wait(claim_id, timeout)

    def status(self, claim_id: str) -> ClaimRecord:
        return self._leader().status(claim_id)

    def consume(self, claim_id: str, amounts: Mapping[str, Budget] | None = None) -> None:
        self._leader().consume(claim_id, amounts)

    def release(self, claim_id: str) -> None:
        self._leader().release(claim_id)

    def renew(self, claim_id: str) -> float:
        return self._leader().renew(claim_id)

    def withdraw(self, claim_id: str) -> Any:
        withdraw = getattr(self._leader(), "withdraw", None)
        if not callable(withdraw):
            raise InvalidStateError("the budget client cannot withdraw claims")
        return withdraw(claim_id)


def _lease_of(record: ClaimRecord) -> float | None:
    """The claim's lease in seconds (``Claim.lease``; None: no lease)."""
    lease = record.claim.lease
    return None if lease is None else float(lease)


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
        charge_every: int | None = None,
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
        self._charge_every = None if charge_every is None else _positive_int("charge_every", charge_every)
        self._resume: dict[str, Any] | None = None
        self._renewal: LeaseRenewer | None = None
        self._renew_inline: Callable[[str], Any] | None = None
        self._steps_before = 0  # steps taken under earlier claims (a job resumed under a new claim)
        self._resumes = 0
        self.notes: list[str] = []
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
        """Plan, claim (or continue a checkpoint's claim), wait for the grant, open the data, make it all private."""
        if self._state != "new":
            raise InvalidStateError(f"budgeted training {self.claim_id} was already started")
        self._state = "starting"
        client = self.engine.client
        module, optimizer, loader = self._raw
        continued = False
        try:
            self._blocks = self._resolve_blocks(client, loader.dataset)
            plan = self._make_plan(client.alpha_grid(), loader)
            self.plan = plan
            coll = self.engine.collective
            continued = self._claim(client, plan) if coll is None else self._claim_on_rank0(coll, client, plan)
        except BaseException:
            self._state = "refused"  # no grant is held by this session: nothing to give back
            raise
        record = self.record
        assert record is not None
        try:
            if self._dataset is not None:
                self._dataset.open(record)
            result = self.engine.privacy_engine.make_private(
                module=module,
                optimizer=optimizer,
                data_loader=loader,
                noise_multiplier=plan.noise_multipliers[self._epochs_done()],
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
            self.hook = self._make_hook(client, record, continued)
            self.hook.attach(self.optimizer)
            self._start_renewal(client, record, continued)
        except BaseException:
            # Nothing was trained in this session: give the rest of the grant back before surfacing the error.
            if self._dataset is not None:
                self._dataset.close()
            self._state = "failed-start"
            if self.engine.collective is None or self.engine.collective.leader:
                client.release(self.claim_id)
            raise
        self._state = "running"
        return self

    def _start_renewal(self, client: BudgetClient, record: ClaimRecord, continued: bool) -> None:
        """Keep a leased claim alive while the job runs (rank 0 only; nothing without a lease or ``renew``)."""
        lease = _lease_of(record)
        renew = getattr(client, "renew", None)
        leader = self.engine.collective is None or self.engine.collective.leader
        if lease is None or not callable(renew) or not leader:
            return
        if continued:
            renew(self.claim_id)  # a resumed claim's lease may be about to run out
        if isinstance(client, SchedulerClient):
            # An in-process scheduler is single-threaded: renew on the training thread, with each chunk charge.
            self._renew_inline = renew
            return
        # A failed renewal is retried by the renewer; a lost lease is safe (write-ahead charging: the scheduler
        # returns only the unconsumed rest), and the job's next chunk charge is refused.
        self._renewal = LeaseRenewer(client, self.claim_id, lease, renew_now=False).start()

    def _claim(self, client: BudgetClient, plan: DpSgdPlan) -> bool:
        """Continue the checkpoint's claim (True) or claim and wait for a new grant (False); sets :attr:`record`."""
        continued = self._resume_claim(client, plan) if self._resume is not None else False
        if not continued:
            demand = plan.demand if self._resume is None else self._remaining_demand(plan)
            claim = Claim.uniform(
                self.claim_id, self._blocks, demand, timeout=self._timeout, owner=self._owner, weight=self._weight
            )
            self.record = claim_and_wait(client, claim, self._timeout)
        return continued

    def _claim_on_rank0(self, coll: _Collective, client: BudgetClient, plan: DpSgdPlan) -> bool:
        """A DDP job's claim: rank 0 claims and waits, every rank receives the grant (or the refusal)."""
        if self._resume is not None:
            raise InvalidParameterError("resuming a distributed (DDP) job from a checkpoint is not supported yet")
        outcome: tuple[Any, ...] | None = None
        failure: BaseException | None = None
        if coll.leader:
            try:
                self._claim(client, plan)
                rec = self.record
                assert rec is not None
                # Plain values only (a record holds read-only mapping views, which do not pickle).
                outcome = ("granted", self.claim_id, _renyi(rec.claim.demand[self._blocks[0]]), rec.claim.arrival,
                           rec.claim.timeout, rec.granted_at, rec.decided_at)  # fmt: skip
            except DpfSchedError as exc:
                failure = exc
                outcome = ("refused", type(exc).__name__, str(exc), self.claim_id)
        outcome = coll.broadcast(outcome)
        assert outcome is not None
        if failure is not None:
            raise failure
        if outcome[0] == "refused":
            _, name, message, claim_id = outcome
            kind = {"ClaimRejectedError": ClaimRejectedError, "GrantTimeoutError": GrantTimeoutError}.get(name)
            if kind is not None:
                raise kind(f"rank 0: {message}", claim_id)
            raise NoGrantError(f"rank 0 could not claim the budget: {name}: {message}", claim_id)
        _, self.claim_id, demand, arrival, timeout, granted_at, decided_at = outcome
        if not coll.leader:
            claim = Claim.uniform(self.claim_id, self._blocks, demand, arrival=arrival, timeout=timeout,
                                  owner=self._owner, weight=self._weight)  # fmt: skip
            self.record = ClaimRecord(claim, ClaimState.GRANTED, granted_at, decided_at, None, {}, {})
        return False

    # ----- write-ahead charging, checkpoint and resume -------------------------------------------------------
    def _charge(self, increment: RenyiCurve) -> None:
        """Consume ``increment`` on every block of the claim (one chunk, before its steps run)."""
        if self._renew_inline is not None:
            self._renew_inline(self.claim_id)
        if not increment.is_zero():
            self.engine.client.consume(self.claim_id, dict.fromkeys(self._blocks, increment))

    def _make_hook(self, client: BudgetClient, record: ClaimRecord, continued: bool) -> BudgetHook:
        plan = self.plan
        assert plan is not None
        grant = _renyi(record.claim.demand[self._blocks[0]])
        every = self._charge_every if self._charge_every is not None else plan.steps_per_epoch
        common: dict[str, Any] = {
            "claim_id": self.claim_id,
            "grant": grant,
            "sample_rate": 1 / len(self.data_loader),
            "accountant": self.engine.accountant,
            "charge": self._charge,
            "charge_every": every,
        }
        coll = self.engine.collective
        if coll is not None:
            common["sync"] = coll.broadcast
            common["leader"] = coll.leader
        if not continued:
            return BudgetHook(**common)
        saved = self._resume
        assert saved is not None
        hook_state = saved["hook"]
        ledger_consumed = _renyi(record.consumed[self._blocks[0]])
        charged = [Segment.of(c) for c in hook_state["charged"]]
        hook = BudgetHook(
            **common,
            consumed=ledger_consumed,
            charged=charged,
            ahead=0,  # steps charged ahead of the checkpoint may have run in the lost process: never reused
            start=hook_state["start"],
        )
        if int(hook_state["ahead"]):
            self.notes.append(
                f"{hook_state['ahead']} step(s) charged ahead of the checkpoint are forfeited (they may have run "
                "before the crash)"
            )
        known = np.asarray(hook_state["consumed"], dtype=np.float64)
        if np.any(ledger_consumed.values > known):
            self.notes.append(
                "the claim consumed more after the checkpoint than the checkpoint knows (chunks charged by the lost "
                "process); that budget stays spent"
            )
        return hook

    def _epochs_done(self) -> int:
        """Whole epochs the job had taken when its checkpoint was saved (0 for a fresh job)."""
        if self._resume is None or self.plan is None:
            return 0
        return min(int(self._resume["steps_taken"]) // self.plan.steps_per_epoch, self.plan.epochs - 1)

    def _resume_claim(self, client: BudgetClient, plan: DpSgdPlan) -> bool:
        """Restore the accountant from the checkpoint; continue its claim if still granted (True), else False."""
        saved = self._resume
        assert saved is not None
        if list(saved["blocks"]) != list(self._blocks):
            raise InvalidParameterError(
                f"the checkpoint's job read blocks {saved['blocks']}, this one reads {list(self._blocks)}"
            )
        sp = saved["plan"]
        if (sp["sample_rate"], sp["steps_per_epoch"], list(sp["noise_multipliers"])) != (
            plan.sample_rate,
            plan.steps_per_epoch,
            list(plan.noise_multipliers),
        ):
            raise AccountingMismatchError(
                f"the checkpoint was planned as {sp}, this job plans (q={plan.sample_rate!r}, "
                f"{plan.steps_per_epoch} steps/epoch, σ={list(plan.noise_multipliers)})"
            )
        if len(saved["hook"]["consumed"]) != len(plan.grid):
            raise AccountingMismatchError("the checkpoint's consumption is not on this ledger's α grid")
        acc = saved["accountant"]
        try:
            self.engine.accountant.load_state_dict({"history": list(acc["history"]), "mechanism": acc["mechanism"]})
        except ValueError as exc:  # Opacus refuses another accountant's state
            raise AccountingMismatchError(f"the checkpoint's accountant state does not fit: {exc}") from None
        previous = str(saved["claim_id"])
        record: ClaimRecord | None
        try:
            record = client.status(previous)
        except DpfSchedError as exc:
            record = None
            why = f"could not be read ({exc})"
        else:
            why = record.state.value
        if record is not None and record.state is ClaimState.GRANTED:
            self.claim_id = previous
            self.record = record
            self.notes.append(f"resumed claim {previous} (still granted); no new claim")
            logger.info("claim %s: resumed from a checkpoint after %d steps", previous, saved["steps_taken"])
            return True
        self._steps_before = int(saved["steps_taken"])
        n = int(saved.get("resumes", 0)) + 1
        self.claim_id = f"{self.claim_id}-resume{n}"
        self._resumes = n
        self.notes.append(
            f"claim {previous} is {why}: claimed {self.claim_id} for the {plan.steps - self._steps_before} "
            "remaining planned steps"
        )
        logger.warning("%s", self.notes[-1])
        return False

    def _remaining_demand(self, plan: DpSgdPlan) -> RenyiCurve:
        """The curve of the planned steps after the checkpoint's (what a new claim for the rest asks)."""
        skip = self._steps_before
        rest: tuple[Segment, ...] = ()
        for seg in plan.segments:
            k = seg.steps - min(skip, seg.steps)
            skip -= seg.steps - k
            if k:
                rest = _merge(rest, Segment(seg.noise_multiplier, seg.sample_rate, k))
        if not rest:
            raise InvalidStateError(f"the checkpoint's job already took all {plan.steps} planned steps")
        return history_curve(plan.grid, rest)

    def state_dict(self) -> dict[str, Any]:
        """The session's budget state as plain values, to ``torch.save`` beside the model checkpoint.

        Holds the claim id, the blocks, the plan's numbers, the steps taken and charged, the hook's charge state
        and the accountant's ``state_dict``. Save it at a chunk boundary (by default the end of an epoch): steps
        charged ahead of a checkpoint are forfeited on resume, since the lost process may have run them.
        """
        if self._state != "running" or self.hook is None or self.plan is None:
            raise InvalidStateError(f"budgeted training {self.claim_id} is not running (state {self._state})")
        acc = self.engine.accountant.state_dict()
        hook = self.hook
        taken = self._steps_before + hook.steps
        return {
            "version": 1,
            "claim_id": self.claim_id,
            "blocks": list(self._blocks),
            "plan": {
                "sample_rate": self.plan.sample_rate,
                "steps_per_epoch": self.plan.steps_per_epoch,
                "noise_multipliers": list(self.plan.noise_multipliers),
            },
            "steps_taken": taken,
            "steps_charged": hook.charged_steps,
            "resumes": self._resumes,
            "hook": hook.state(),
            "accountant": {"history": [list(e) for e in acc["history"]], "mechanism": str(acc["mechanism"])},
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Resume from :meth:`state_dict` when the session starts (call before :meth:`start`/``with``).

        The claim is continued when it is still granted (no new claim, nothing charged twice); otherwise a new
        claim (``<claim_id>-resumeN``) asks for the remaining planned steps only. :attr:`notes` (and the report)
        say which.
        """
        if self._state != "new":
            raise InvalidStateError("load_state_dict must come before the session starts")
        try:
            if int(state["version"]) != 1:
                raise InvalidParameterError(f"unknown budgeted-training state version {state['version']!r}")
            checked: dict[str, Any] = {
                "claim_id": str(state["claim_id"]),
                "blocks": [str(b) for b in state["blocks"]],
                "plan": dict(state["plan"]),
                "steps_taken": int(state["steps_taken"]),
                "steps_charged": int(state["steps_charged"]),
                "resumes": int(state.get("resumes", 0)),
                "hook": dict(state["hook"]),
                "accountant": dict(state["accountant"]),
            }
            hook = checked["hook"]
            hook["start"] = [Segment.of(e) for e in hook["start"]]
            hook["charged"] = [Segment.of(e) for e in hook["charged"]]
            hook["ahead"] = int(hook["ahead"])
            hook["consumed"] = [float(v) for v in hook["consumed"]]
            plan = checked["plan"]
            plan["sample_rate"] = float(plan["sample_rate"])
            plan["steps_per_epoch"] = int(plan["steps_per_epoch"])
            plan["noise_multipliers"] = [float(v) for v in plan["noise_multipliers"]]
            history = [Segment.of(e) for e in checked["accountant"]["history"]]
            checked["accountant"]["history"] = [(e.noise_multiplier, e.sample_rate, e.steps) for e in history]
            checked["accountant"]["mechanism"] = str(checked["accountant"]["mechanism"])
            counts = (checked["steps_taken"], checked["steps_charged"], checked["resumes"], hook["ahead"])
            if min(counts) < 0 or not checked["blocks"]:
                raise ValueError("negative counts or no blocks")
        except (KeyError, TypeError, ValueError, InvalidParameterError) as exc:
            raise InvalidParameterError(f"not a budgeted-training state: {exc!r}") from None
        self._resume = checked

    def __enter__(self) -> BudgetedTraining:
        return self.start()

    @property
    def steps_taken(self) -> int:
        """Steps the job has taken, across a checkpoint and resume (the checkpoint's count before the start)."""
        if self.hook is None:
            return 0 if self._resume is None else int(self._resume["steps_taken"])
        return self._steps_before + self.hook.steps

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
        if self._renewal is not None:
            self._renewal.close()
        if self._dataset is not None:
            self._dataset.close()
        client = self.engine.client
        segments = hook.recorded()
        spent = hook.committed_curve()
        coll = self.engine.collective
        if coll is None:
            consumed, remaining = self._commit(client, hook)
        else:
            outcome: tuple[Any, ...] | None = None
            failure: BaseException | None = None
            if coll.leader:
                try:
                    outcome = ("ok", *self._commit(client, hook))
                except CommitError as exc:
                    failure, outcome = exc, ("error", str(exc))
            outcome = coll.broadcast(outcome)  # every rank reports what rank 0 committed
            assert outcome is not None
            if failure is not None:
                raise failure
            if outcome[0] == "error":
                raise CommitError(f"rank 0: {outcome[1]}")
            _, consumed, remaining = outcome
        steps = sum(s.steps for s in segments)
        total_steps = self._steps_before + steps
        ours = isinstance(error, BudgetExhaustedError) and error.claim_id == self.claim_id
        if error is not None and not ours:
            status = RunStatus.FAILED
        elif hook.exhausted:
            status = RunStatus.EXHAUSTED
        elif total_steps >= self.plan.steps:
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
            granted=_renyi(self.record.claim.demand[self._blocks[0]]),
            consumed=consumed,
            spent=spent,
            charged_steps=hook.charged_steps,
            notes=tuple(self.notes),
            released=remaining[self._blocks[0]],
            steps=steps,
            segments=segments,
            waited=granted_at - self.record.claim.arrival,
            error=None if error is None or status is RunStatus.EXHAUSTED else f"{type(error).__name__}: {error}",
            released_by_block=remaining,
        )
        logger.info(
            "claim %s %s after %d/%d steps (%d charged ahead); released the rest",
            self.claim_id,
            status.value,
            total_steps,
            self.plan.steps,
            hook.charged_steps,
        )
        return self.report

    def _commit(self, client: BudgetClient, hook: BudgetHook) -> tuple[RenyiCurve, dict[str, RenyiCurve]]:
        """Reconcile with the accountant, release the rest: what the claim consumed, and what each block got back."""
        try:
            if hook.charge_failed is not None:
                # The failed chunk charge may or may not have landed: the ledger says what the claim holds.
                hook.resync(_renyi(client.status(self.claim_id).consumed[self._blocks[0]]))
            owed = hook.reconcile()
            if not owed.is_zero():
                client.consume(self.claim_id, dict.fromkeys(self._blocks, owed))
                hook.settled(owed)
            consumed = hook.consumed()
        except Exception as exc:
            logger.error("claim %s: could not commit the spend (%s); the grant is kept", self.claim_id, exc)
            raise CommitError(
                f"claim {self.claim_id}: committing the spend failed ({exc}); the claim stays granted so that "
                "nothing spent is ever returned"
            ) from exc
        remaining = {b: _renyi(v) for b, v in client.status(self.claim_id).remaining.items()}
        client.release(self.claim_id)
        return consumed, remaining

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
    distributed
        A DDP job (default: when ``torch.distributed`` is initialised with more than one process). Then only
        rank 0 talks to the budget scheduler (``client`` is required there and ignored elsewhere): it claims,
        charges every chunk and commits, and broadcasts the grant, every charge decision and the commit, so
        every rank takes, charges and stops at the same global steps. Charged once per global step at the
        global sample rate (what each rank's accountant records under ``DPDDP``).
    """

    def __init__(
        self,
        client: BudgetClient | Scheduler | None,
        *,
        accountant: str = "prv",
        privacy_engine: Any = None,
        secure_mode: bool = False,
        distributed: bool | None = None,
    ) -> None:
        if distributed is None:
            distributed = _distributed_world() > 1
        self.collective: _Collective | None = _Collective() if distributed else None
        if self.collective is None:
            self.client: BudgetClient = _as_client(client)  # type: ignore[arg-type]
        else:
            leader_client = _as_client(client) if self.collective.leader else None  # type: ignore[arg-type]
            self.client = _Rank0Client(leader_client, self.collective)
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
        charge_every: int | None = None,
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
            charge_every=charge_every,
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
        charge_every: int | None = None,
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
            charge_every=charge_every,
        )
