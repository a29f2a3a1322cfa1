"""Budgeted DP-SGD end to end: plan = spend, early stop, rejection, timeout, exhaustion, crash, accumulation,
BatchMemoryManager, noise schedulers, every accountant."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")

import torch
from opacus.accountants.analysis.rdp import compute_rdp
from opacus.schedulers import ExponentialNoise, LambdaNoise, StepNoise
from opacus.utils.batch_memory_manager import BatchMemoryManager
from opacus_helpers import (
    GRID,
    QUIET,
    assert_block_books_saturated,
    model,
    params_of,
    rel_gap,
    same_params,
    scheduler,
    sgd,
    train,
)
from torch import nn
from torch.utils.data import DataLoader

from dpf_sched.accounting import subsampled_gaussian_rdp
from dpf_sched.budget import RenyiCurve
from dpf_sched.clock import WallClock
from dpf_sched.integrations.opacus import (
    BlockAccessError,
    BudgetedPrivacyEngine,
    BudgetExhaustedError,
    ClaimRejectedError,
    GrantTimeoutError,
    RunStatus,
    SchedulerClient,
    SessionClosedError,
    plan_dp_sgd,
)
from dpf_sched.ledger import ClaimState
from dpf_sched.selector import BlockSelector

SIGMA = 1.0

pytestmark = QUIET


def curve(sigma: float, q: float, steps: int) -> np.ndarray:
    return subsampled_gaussian_rdp(GRID.array, sigma, q, steps)


def job_on(sched, data, *, accountant="rdp", selector=None, batch_size=8, **kwargs):
    engine = BudgetedPrivacyEngine(sched, accountant=accountant)
    dataset = engine.dataset(data, selector or BlockSelector(ids=("b0", "b1")))
    loader = DataLoader(dataset, batch_size=batch_size)
    m = model()
    kwargs.setdefault("noise_multiplier", SIGMA)
    kwargs.setdefault("max_grad_norm", 1.0)
    kwargs.setdefault("claim_id", "job")
    return engine, dataset, m, engine.make_private(module=m, optimizer=sgd(m), data_loader=loader, **kwargs)


@pytest.mark.parametrize("accountant", ["prv", "rdp", "gdp"])
def test_full_run_spends_exactly_the_plan_with_every_accountant(accountant: str) -> None:
    # 2 blocks × 186 rows, batch 4 → 93 batches; the private loader has 92 and the accountant charges 1/92.
    sched, data = scheduler(rows=186)
    engine, _, _, job = job_on(sched, data, accountant=accountant, batch_size=4, epochs=2)
    with job:
        assert len(job.data_loader) == 92
        taken = train(job, 2)
    report = job.report
    assert report is not None and report.status is RunStatus.COMPLETED
    assert taken == report.steps == report.plan.steps == 184
    assert engine.accountant.history == [(SIGMA, 1 / 92, 184)]
    assert report.plan.sample_rate == 1 / 92 != job.data_loader.sample_rate
    # The plan equals the accountant's spend (relative 1e-9; in fact bit for bit), which is what was consumed.
    spent = curve(SIGMA, 1 / 92, 184)
    assert rel_gap(report.plan.demand, spent) <= 1e-9
    assert rel_gap(report.consumed, spent) <= 1e-9
    assert np.all(report.released.values <= 1e-12 * report.granted.values)
    # ... and agrees with Opacus's own analysis.
    opacus_rdp = compute_rdp(q=1 / 92, noise_multiplier=SIGMA, steps=184, orders=list(GRID.orders))
    assert rel_gap(report.consumed, np.asarray(opacus_rdp)) <= 1e-8
    rec = sched.status("job")
    assert rec.state is ClaimState.FINISHED
    for b in ("b0", "b1"):
        assert rel_gap(sched.ledger.claim("job").consumed[b], spent) <= 1e-9
        assert_block_books_saturated(sched.ledger, b, "job")
        assert not np.any(sched.ledger.budgets(b).allocated.values)
    assert sched.ledger.violations() == []


def test_early_stop_releases_exactly_the_unspent_part() -> None:
    sched, data = scheduler()
    ledger = sched.ledger
    row = ledger.block_index("b0")  # raw rows: a Rényi ledger's unlocked bucket may be negative at some orders
    _, _, _, job = job_on(sched, data, epochs=3)
    with job:
        unlocked_during = ledger.unlocked[row].copy()
        train(job, 1)  # the loop stops after one of three epochs
    report = job.report
    assert report is not None and report.status is RunStatus.STOPPED
    per_epoch = report.plan.steps_per_epoch
    assert report.steps == per_epoch == 10
    spent = curve(SIGMA, report.plan.sample_rate, per_epoch)
    assert rel_gap(report.consumed, spent) <= 1e-9
    unspent = report.granted.values - spent
    assert rel_gap(report.released, unspent) <= 1e-12
    assert rel_gap(report.granted, report.consumed.values + report.released.values) <= 1e-12
    # The claim's record holds the true consumption; the block books the grant and the consumption saturated at
    # 2 × capacity per order, nothing where the capacity is 0 (docs/ledger.md, "Saturation"), so the release gave
    # the unlocked pool back the saturated grant less the saturated consumption.
    true = np.asarray(ledger.claim("job").consumed["b0"].values)
    assert rel_gap(true, spent) <= 1e-9
    assert_block_books_saturated(ledger, "b0", "job")
    cap = np.asarray(ledger.capacity[row])
    sat = 2.0 * cap
    assert (report.granted.values > sat).any() and (report.granted.values < sat).any()  # both kinds of order
    booked_unspent = np.where(cap > 0, np.minimum(report.granted.values, sat) - np.minimum(true, sat), 0.0)
    gained = ledger.unlocked[row] - unlocked_during
    np.testing.assert_allclose(gained, booked_unspent, rtol=1e-9, atol=1e-12 * cap.max())
    assert not np.any(ledger.allocated[row])
    assert ledger.violations() == []
    assert sched.status("job").state is ClaimState.FINISHED


def test_a_rejected_job_never_takes_a_step_nor_reads_a_row() -> None:
    sched, data = scheduler(epsilon=0.2)  # the demand can never fit: rejected at once
    engine, dataset, m, job = job_on(sched, data, epochs=3)
    before = params_of(m)
    with pytest.raises(ClaimRejectedError) as err, job:
        pytest.fail("the body of a rejected job must not run")
    assert "can ever provide" in str(err.value) and err.value.claim_id == "job"
    assert engine.accountant.history == []
    assert job.optimizer is None and job.module is None and job.data_loader is None
    assert same_params(before, params_of(m))
    assert not hasattr(next(m.parameters()), "grad_sample")  # Opacus never wrapped the model
    with pytest.raises(BlockAccessError):
        dataset[0]
    assert sched.status("job").state is ClaimState.REJECTED
    assert sched.ledger.violations() == []


def test_a_claim_that_is_never_granted_times_out_in_simulated_time() -> None:
    sched, data = scheduler("dpf-n", N=1000)  # each arrival unlocks 1/1000: never enough
    _, dataset, _, job = job_on(sched, data, epochs=3, timeout=25.0)
    with pytest.raises(GrantTimeoutError) as err, job:
        pytest.fail("unreachable")
    assert isinstance(err.value, TimeoutError)
    assert sched.clock.now() == 25.0  # the wait advanced the manual clock to the claim's deadline
    rec = sched.status("job")
    assert rec.state is ClaimState.REJECTED and rec.reason == "timeout"
    with pytest.raises(BlockAccessError):
        dataset[0]


def test_a_claim_times_out_on_the_wall_clock() -> None:
    sched, data = scheduler("dpf-n", N=1000, clock=WallClock())
    engine = BudgetedPrivacyEngine(SchedulerClient(sched, poll_interval=0.01))
    dataset = engine.dataset(data, BlockSelector(ids=("b0",)))
    m = model()
    job = engine.make_private(
        claim_id="job",
        module=m,
        optimizer=sgd(m),
        data_loader=DataLoader(dataset, batch_size=8),
        noise_multiplier=SIGMA,
        max_grad_norm=1.0,
        epochs=1,
        timeout=0.15,
    )
    with pytest.raises(GrantTimeoutError), job:
        pass
    assert sched.status("job").state is ClaimState.REJECTED


def test_the_hook_stops_before_the_grant_is_exceeded_and_the_stop_is_clean() -> None:
    sched, data = scheduler()
    engine, _, _, job = job_on(sched, data, epochs=1)
    seen: dict[str, object] = {}

    def before_each_step(_: int) -> None:
        seen["params"] = params_of(job.module)

    with job:
        plan_steps = job.plan.steps
        assert job.steps_left() == plan_steps
        train(job, 3, after_step=before_each_step)  # tries to run three epochs on a one-epoch grant
        pytest.fail("the step past the grant must raise")
    report = job.report
    assert report is not None and report.status is RunStatus.EXHAUSTED
    assert report.steps == plan_steps
    assert engine.accountant.history == [(SIGMA, report.plan.sample_rate, plan_steps)]  # refused step unrecorded
    assert same_params(seen["params"], params_of(job.module))  # ... and not applied
    assert all(p.grad is None and getattr(p, "summed_grad", None) is None for p in job.module.parameters())
    assert rel_gap(report.consumed, report.granted) <= 1e-12
    assert np.all(report.consumed.values <= report.granted.values * (1 + 1e-12))
    # After the session, the optimizer takes no more private steps.
    x, y = data["b0"][:4]
    job.optimizer.zero_grad()
    nn.CrossEntropyLoss()(job.module(x), y).backward()
    with pytest.raises(SessionClosedError):
        job.optimizer.step()
    assert engine.accountant.history == [(SIGMA, report.plan.sample_rate, plan_steps)]


def test_the_loop_can_catch_the_stop_itself() -> None:
    sched, data = scheduler()
    _, _, _, job = job_on(sched, data, epochs=1)
    job.start()
    try:
        train(job, 5)
    except BudgetExhaustedError as stop:
        assert stop.steps == job.plan.steps
        assert job.steps_left() == 0
    report = job.finish()
    assert report.status is RunStatus.EXHAUSTED
    assert report.steps == job.plan.steps


def test_a_crash_mid_training_keeps_the_chunk_charged_ahead() -> None:
    sched, data = scheduler()
    _, _, _, job = job_on(sched, data, epochs=3)

    def crash(step: int) -> None:
        if step == 7:
            raise RuntimeError("worker lost")

    with pytest.raises(RuntimeError, match="worker lost"), job:
        train(job, 3, after_step=crash)
    report = job.report
    assert report is not None and report.status is RunStatus.FAILED and "worker lost" in (report.error or "")
    assert report.steps == 7
    spent = curve(SIGMA, report.plan.sample_rate, 7)
    assert report.spent is not None and rel_gap(report.spent, spent) <= 1e-9
    # Write-ahead: the epoch's chunk (10 steps) was charged before its first step; its 3 unused steps stay
    # spent (consumption is forever), so the ledger holds one chunk, no more than one chunk above the spend.
    chunk = curve(SIGMA, report.plan.sample_rate, report.plan.steps_per_epoch)
    assert report.charged_steps == report.plan.steps_per_epoch == 10
    assert rel_gap(report.consumed, chunk) <= 1e-12
    assert rel_gap(sched.ledger.claim("job").consumed["b1"], chunk) <= 1e-12
    assert_block_books_saturated(sched.ledger, "b1", "job")
    assert rel_gap(report.released, report.granted.values - chunk) <= 1e-12
    assert sched.status("job").state is ClaimState.FINISHED
    assert sched.ledger.violations() == []


def test_batch_memory_manager_charges_once_per_logical_batch() -> None:
    sched, data = scheduler(rows=100)
    engine, _, _, job = job_on(sched, data, epochs=2, batch_size=50)  # q = 1/4, logical batches of ~50
    charged = []
    with job:
        hook = job.hook
        for _ in range(2):
            with BatchMemoryManager(
                data_loader=job.data_loader, max_physical_batch_size=8, optimizer=job.optimizer
            ) as physical:
                train(job, 1, loader=physical, after_step=lambda _: charged.append(hook.steps))
    report = job.report
    assert report is not None and report.status is RunStatus.COMPLETED
    assert len(charged) > 2 * 4  # many physical batches ...
    assert report.steps == 2 * 4 == charged[-1]  # ... charged once per logical batch
    assert engine.accountant.history == [(SIGMA, 0.25, 8)]
    assert rel_gap(report.consumed, report.plan.demand) <= 1e-9


def test_gradient_accumulation_charges_the_accumulated_rate_once_per_step() -> None:
    sched, data = scheduler(rows=60)
    engine, _, _, job = job_on(
        sched, data, epochs=2, batch_size=10, poisson_sampling=False, accumulation_steps=3
    )  # 12 batches of 10 rows; 3 per optimizer step → 4 steps per epoch at q = 3/12
    criterion = nn.CrossEntropyLoss()
    with job:
        assert job.plan.sample_rate == (1 / 12) * 3 and job.plan.steps_per_epoch == 4
        for _ in range(2):
            for i, (x, y) in enumerate(job.data_loader):
                criterion(job.module(x), y).backward()
                if (i + 1) % 3 == 0:
                    assert job.optimizer.accumulated_iterations == 3
                    job.optimizer.step()
                    job.optimizer.zero_grad()
    report = job.report
    assert report is not None and report.status is RunStatus.COMPLETED and report.steps == 8
    assert engine.accountant.history == [(SIGMA, (1 / 12) * 3, 8)]
    assert rel_gap(report.consumed, curve(SIGMA, 0.25, 8)) <= 1e-9
    assert rel_gap(report.consumed, report.plan.demand) <= 1e-9


def _exponential(opt):
    return ExponentialNoise(opt, gamma=0.8)


def _step(opt):
    return StepNoise(opt, step_size=2, gamma=0.5)


def _lambda(opt):
    return LambdaNoise(opt, noise_lambda=lambda epoch: 1.0 + 0.5 * epoch)


@pytest.mark.parametrize(
    ("make", "schedule"),
    [
        (_exponential, [2.0, 2.0 * 0.8, 2.0 * 0.8 * 0.8]),
        (_step, [2.0, 2.0, 0.5 * 2.0]),
        (_lambda, [2.0 * 1.0, 2.0 * 1.5, 2.0 * 2.0]),
    ],
    ids=["exponential", "step", "lambda"],
)
def test_noise_schedulers_are_charged_segment_by_segment(make, schedule) -> None:
    sched, data = scheduler()
    engine, _, _, job = job_on(sched, data, noise_multiplier=schedule)
    with job:
        noise = make(job.optimizer)
        train(job, 3, after_epoch=lambda _: noise.step())
    report = job.report
    assert report is not None and report.status is RunStatus.COMPLETED
    q, n = report.plan.sample_rate, report.plan.steps_per_epoch
    expected = sum((curve(s, q, n) for s in schedule), start=np.zeros(len(GRID)))
    recorded = sum(
        (
            np.asarray(compute_rdp(q=q_, noise_multiplier=s, steps=k, orders=list(GRID.orders)))
            for s, q_, k in engine.accountant.history
        ),
        start=np.zeros(len(GRID)),
    )
    assert [h[0] for h in engine.accountant.history] == list(dict.fromkeys(schedule))
    assert rel_gap(report.plan.demand, expected) <= 1e-9
    assert rel_gap(report.consumed, expected) <= 1e-9
    assert rel_gap(report.consumed, recorded) <= 1e-8


def test_a_noise_scheduler_that_lowers_noise_beyond_the_plan_is_stopped() -> None:
    sched, data = scheduler()
    engine, _, _, job = job_on(sched, data, epochs=3, noise_multiplier=2.0)  # planned at a constant σ = 2
    with job:
        noise = ExponentialNoise(job.optimizer, gamma=0.9)
        train(job, 3, after_epoch=lambda _: noise.step())
    report = job.report
    assert report is not None and report.status is RunStatus.EXHAUSTED
    assert report.steps < report.plan.steps
    assert np.all(report.consumed.values <= report.granted.values)
    history = engine.accountant.history
    assert [h[0] for h in history] == [2.0, 2.0 * 0.9]  # a full epoch at σ = 2, part of one at σ = 1.8
    assert history[1][2] < report.plan.steps_per_epoch
    assert rel_gap(report.consumed, sum(curve(s, q, k) for s, q, k in history)) <= 1e-9


def test_make_private_with_epsilon_calibrates_with_the_library_accountant() -> None:
    sched, data = scheduler()
    engine = BudgetedPrivacyEngine(sched, accountant="rdp")
    dataset = engine.dataset(data, BlockSelector(attributes={"region": "eu"}))
    m = model()
    job = engine.make_private_with_epsilon(
        claim_id="eps-job",
        module=m,
        optimizer=sgd(m),
        data_loader=DataLoader(dataset, batch_size=8),
        target_epsilon=2.0,
        target_delta=1e-5,
        epochs=2,
        max_grad_norm=1.0,
    )
    with job:
        train(job, 2)
    report = job.report
    assert report is not None and report.status is RunStatus.COMPLETED
    assert report.blocks == ("b0", "b2")
    sigma = report.plan.noise_multipliers[0]
    assert job.optimizer.noise_multiplier == sigma
    assert report.plan.epsilon(1e-5) <= 2.0
    looser = plan_dp_sgd(
        GRID,
        sample_rate=report.plan.sample_rate,
        steps_per_epoch=report.plan.steps_per_epoch,
        noise_multiplier=sigma - 0.01,
        epochs=2,
    )
    assert looser.epsilon(1e-5) > 2.0
    assert rel_gap(report.consumed, report.plan.demand) <= 1e-9
    assert isinstance(report.consumed, RenyiCurve)


def test_a_failure_after_the_grant_but_before_training_gives_the_grant_back() -> None:
    sched, data = scheduler()
    engine, _, _, job = job_on(sched, data, epochs=1, clipping="no-such-clipping")
    with pytest.raises(Exception, match="clipping"), job:
        pytest.fail("unreachable")
    rec = sched.status("job")
    assert rec.state is ClaimState.FINISHED
    assert not any(np.any(c.values) for c in rec.consumed.values())
    assert not np.any(sched.ledger.budgets("b0").allocated.values)
    assert engine.accountant.history == []


def test_the_job_object_unpacks_like_make_private() -> None:
    sched, data = scheduler()
    _, _, _, job = job_on(sched, data, epochs=1)
    with job:
        module, optimizer, loader = job
        assert module is job.module and optimizer is job.optimizer and loader is job.data_loader
        assert isinstance(module, torch.nn.Module)
    assert job.report is not None and job.report.status is RunStatus.STOPPED and job.report.steps == 0
    assert rel_gap(job.report.released, job.report.granted) <= 1e-12
