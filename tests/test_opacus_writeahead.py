"""Write-ahead charging: every step is consumed on the ledger before it runs, in chunks, exactly.

The invariant (docs/opacus.md, "Write-ahead charging"): at every instant, whatever kills the job, the claim's
consumption on the ledger is at least the curve of the steps the model has taken and at most that plus one chunk;
a job that runs every step it charged has consumed the accountant's curve bit for bit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")

from opacus_helpers import (
    GRID,
    QUIET,
    assert_block_books_saturated,
    model,
    params_of,
    same_params,
    scheduler,
    sgd,
    train,
)
from torch.utils.data import DataLoader

from dpf_sched.integrations.opacus import BudgetedPrivacyEngine, RunStatus, SchedulerClient
from dpf_sched.integrations.opacus.history import Segment, _StepCurves
from dpf_sched.ledger.sql import open_ledger
from dpf_sched.selector import BlockSelector

pytestmark = QUIET
SIGMA = 1.0
WORKER = Path(__file__).resolve().parent / "opacus_kill_worker.py"
#: Kills of the SIGKILL campaign (the issue asks for at least 50); raise it with DPF_SCHED_OPACUS_KILLS.
KILLS = int(os.environ.get("DPF_SCHED_OPACUS_KILLS", "50"))


def curve_of(sigma: float, q: float, steps: int) -> np.ndarray:
    """The curve of ``steps`` steps, computed exactly as the hook and the commit compute it."""
    return _StepCurves(GRID).total([Segment(sigma, q, steps)])


def make_job(sched: Any, data: Any, client: Any = None, **kwargs: Any) -> Any:
    engine = BudgetedPrivacyEngine(client if client is not None else sched, accountant="rdp")
    loader = DataLoader(engine.dataset(data, BlockSelector(ids=("b0", "b1"))), batch_size=8)
    m = model()
    return engine, m, engine.make_private(
        claim_id="job", module=m, optimizer=sgd(m), data_loader=loader, noise_multiplier=SIGMA, max_grad_norm=1.0,
        **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("charge_every", [None, 1, 3, 7])
def test_every_step_is_consumed_before_it_runs_and_a_full_run_ends_bit_for_bit(charge_every: int | None) -> None:
    sched, data = scheduler()
    engine, _, job = make_job(sched, data, epochs=3, charge_every=charge_every)
    seen: list[tuple[int, np.ndarray]] = []
    with job:
        accountant_hook = job.hook._previous

        def spy(optimizer: Any) -> None:  # runs once the step has passed the budget hook, before it is applied
            seen.append((len(seen) + 1, sched.ledger.claim("job").consumed["b0"].values.copy()))
            accountant_hook(optimizer)

        job.hook._previous = spy
        train(job, 3)
    report = job.report
    q, n, k = report.plan.sample_rate, report.plan.steps, charge_every or report.plan.steps_per_epoch
    assert report.status is RunStatus.COMPLETED and report.steps == n == 30
    for step, consumed in seen:
        # Consumed before the step is applied: at least its curve, at most one chunk more.
        assert np.all(consumed >= curve_of(SIGMA, q, step))
        assert np.all(consumed <= curve_of(SIGMA, q, min(step + k - 1, n)))
        assert np.all(consumed == curve_of(SIGMA, q, min(-(-step // k) * k, n)))  # whole chunks, exactly
    # A job that ran every step it charged holds the accountant's curve, bit for bit, on every block.
    history = curve_of(*engine.accountant.history[0])
    assert report.spent is not None and np.array_equal(report.spent.values, history)
    assert np.array_equal(report.consumed.values, history)
    for b in ("b0", "b1"):
        assert np.array_equal(sched.ledger.claim("job").consumed[b].values, history)
        assert_block_books_saturated(sched.ledger, b, "job")  # the block: min(history, 2 × capacity) per order
    assert report.charged_steps == n


def test_a_break_inside_a_chunk_leaves_that_chunk_spent_and_no_more() -> None:
    sched, data = scheduler()
    _, _, job = make_job(sched, data, epochs=3, charge_every=4)
    with job:
        for i, (x, y) in enumerate(job.data_loader):
            if i == 6:
                break
            job.optimizer.zero_grad()
            torch.nn.functional.cross_entropy(job.module(x), y).backward()
            job.optimizer.step()
    report = job.report
    q = report.plan.sample_rate
    assert report.status is RunStatus.STOPPED and report.steps == 6 and report.charged_steps == 8
    assert np.array_equal(report.consumed.values, curve_of(SIGMA, q, 8))
    assert np.array_equal(report.spent.values, curve_of(SIGMA, q, 6))
    # The rest of the grant was released: consumed + released == granted.
    np.testing.assert_allclose(report.consumed.values + report.released.values, report.granted.values, rtol=1e-12)


class FailingConsume(SchedulerClient):
    """A client whose ``n``-th consumption fails (the network went away)."""

    def __init__(self, sched: Any, fail_at: int) -> None:
        super().__init__(sched)
        self.calls = 0
        self.fail_at = fail_at

    def consume(self, claim_id: str, amounts: Any = None) -> None:
        self.calls += 1
        if self.calls == self.fail_at:
            raise ConnectionError("budget service unreachable")
        super().consume(claim_id, amounts)


def test_a_chunk_that_cannot_be_charged_is_never_run() -> None:
    sched, data = scheduler()
    client = FailingConsume(sched, fail_at=2)  # the second chunk's charge fails
    engine, _, job = make_job(sched, data, client=client, epochs=3, charge_every=4)
    with pytest.raises(ConnectionError), job:
        train(job, 3)
    # Steps 1-4 ran (first chunk); step 5 needed the second chunk, whose charge failed: it never ran.
    assert engine.accountant.history == [(SIGMA, job.report.plan.sample_rate, 4)]
    assert job.report.status is RunStatus.FAILED and job.report.steps == 4
    assert np.array_equal(job.report.consumed.values, curve_of(SIGMA, job.report.plan.sample_rate, 4))


def test_the_failed_step_leaves_the_parameters_untouched() -> None:
    sched, data = scheduler()
    client = FailingConsume(sched, fail_at=2)
    _, m, job = make_job(sched, data, client=client, epochs=3, charge_every=4)
    snapshots: list[Any] = []
    with pytest.raises(ConnectionError), job:
        train(job, 3, after_step=lambda s: snapshots.append(params_of(m)))
    assert len(snapshots) == 4 and same_params(snapshots[-1], params_of(m))


def test_sigkill_at_any_step_never_leaves_a_step_uncharged(tmp_path: Path) -> None:
    """SIGKILL a budgeted job ``KILLS`` times at pinned steps (seeded), on one SQLite ledger: after every kill the
    audit passes and ``curve(steps taken) <= consumed <= curve(steps taken) + one chunk``, exactly."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (os.environ.get("PYTHONPATH"), ".") if p)}
    proc = subprocess.run(
        [sys.executable, str(WORKER), "--dir", str(tmp_path), "--kills", str(KILLS), "--seed", "20261203"],
        capture_output=True, text=True, timeout=600, env=env, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    chunk, total = out["chunk"], out["total"]
    q = 1 / 10
    curves = [curve_of(SIGMA, q, n) for n in range(total + 1)]
    mid_chunk = killed_mid_run = 0
    assert len(out["kills"]) == KILLS
    for k in out["kills"]:
        assert k["audit_ok"], k["audit"]
        steps = k["steps"]
        if k["consumed"] is None:  # killed before its claim existed
            assert steps == 0
            continue
        consumed = np.asarray(k["consumed"])
        charged = [n for n in range(total + 1) if np.array_equal(consumed, curves[n])]
        assert charged, f"{k['claim']}: consumed is not the curve of a whole number of steps"
        n = charged[0]
        assert steps <= n <= steps + chunk, (k["claim"], steps, n)  # the write-ahead bound
        assert n % chunk == 0 or n == total  # charged in whole chunks
        assert np.all(consumed >= curves[steps]) and np.all(consumed <= curves[min(steps + chunk, total)])
        killed_mid_run += k["killed"] and 0 < steps < total
        mid_chunk += n > steps
    assert killed_mid_run >= KILLS // 2 and mid_chunk >= 1
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}", create=False)
    try:
        assert ledger.audit().ok
    finally:
        ledger.close()


class Delegating:
    """A remote-like BudgetClient (not a SchedulerClient) with ``renew``: the lease interface, counted."""

    def __init__(self, sched: Any) -> None:
        self._inner = SchedulerClient(sched)
        self.renewed: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def alpha_grid(self) -> Any:
        return self._inner.alpha_grid()

    def select_blocks(self, selector: Any) -> Any:
        return self._inner.select_blocks(selector)

    def submit(self, claim: Any) -> str:
        return self._inner.submit(claim)

    def wait(self, claim_id: str, timeout: float) -> Any:
        return self._inner.wait(claim_id, timeout)

    def status(self, claim_id: str) -> Any:
        return self._inner.status(claim_id)

    def consume(self, claim_id: str, amounts: Any = None) -> None:
        self._inner.consume(claim_id, amounts)

    def release(self, claim_id: str) -> None:
        self._inner.release(claim_id)

    def renew(self, claim_id: str) -> float:
        self.renewed.append(claim_id)
        return 0.0


def test_a_leased_claim_is_renewed_from_a_thread_while_the_job_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the core gives claims a lease (``Claim.lease``, the lease interface), the session renews it."""
    import time

    from dpf_sched.integrations.opacus import engine as engine_mod

    monkeypatch.setattr(engine_mod, "_lease_of", lambda record: 0.09)  # renew every 0.03 s
    sched, data = scheduler()
    client = Delegating(sched)
    _, _, job = make_job(sched, data, client=client, epochs=1)
    with job:
        train(job, 1, after_step=lambda s: time.sleep(0.02))
    renewals = len(client.renewed)
    assert renewals >= 2 and set(client.renewed) == {"job"}
    time.sleep(0.1)
    assert len(client.renewed) == renewals  # stopped with the session


def test_an_in_process_leased_claim_is_renewed_with_each_chunk(monkeypatch: pytest.MonkeyPatch) -> None:
    from dpf_sched.integrations.opacus import engine as engine_mod

    class Renewing(SchedulerClient):
        renewed = 0

        def renew(self, claim_id: str) -> float:
            type(self).renewed += 1
            return 0.0

    monkeypatch.setattr(engine_mod, "_lease_of", lambda record: 300.0)
    sched, data = scheduler()
    _, _, job = make_job(sched, data, client=Renewing(sched), epochs=3, charge_every=4)
    with job:
        train(job, 3)
    assert Renewing.renewed == 8  # ceil(30 / 4) chunks, one renewal each, on the training thread


def test_the_exact_increment_lands_the_ledger_sum_on_the_target() -> None:
    from dpf_sched.integrations.opacus.hook import _exact_increment

    rng = np.random.default_rng(20261203)  # pinned draws: a fixed set of cases, not a search
    current = np.concatenate([rng.random(2000) * 10.0 ** rng.integers(-12, 4, 2000), [0.0, 0.1, 1e-300, 3.0]])
    target = current + np.concatenate([rng.random(2000) * 10.0 ** rng.integers(-15, 4, 2000), [0.3, 0.2, 1.0, 0.0]])
    d = _exact_increment(current, target)
    assert np.all(d >= 0)
    assert np.array_equal(current + d, target)
    # Where the target is at most twice the current sum (every chunk after the first of a run at one σ), the
    # difference is exact (Sterbenz) and so is the sum, whatever the values.
    x = rng.random(5000) * 10.0 ** rng.integers(-8, 8, 5000)
    y = x * (1 + rng.random(5000))
    assert np.array_equal(x + _exact_increment(x, y), y)
    # Pinned witness where no increment gives the target exactly (every sum is a tie rounded to even, the
    # target is odd): the plain difference overshoots by an ulp, and the increment errs upward by at most one
    # ulp, never below (the ledger never holds less than the target).
    c, t = np.array([0.0005270788797256867]), np.array([0.017857187817437194])
    assert c + (t - c) != t
    d = _exact_increment(c, t)
    assert (c + d)[0] >= t[0] and (c + d)[0] == np.nextafter(t[0], np.inf)
    # Nothing owed: nothing charged.
    assert np.array_equal(_exact_increment(np.array([2.0, 5.0]), np.array([1.0, 5.0])), np.zeros(2))
