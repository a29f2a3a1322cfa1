"""Checkpoint and resume of a budgeted job: SIGKILL after a checkpoint, resume, finish, and pay exactly once.

``docs/examples/opacus_resume.py`` trains 3 of 5 epochs in a forked child, checkpoints (model + the session's
``state_dict``), dies by SIGKILL; a new session resumes from the checkpoint and finishes. The total consumed must
equal an uninterrupted run's (relative 1e-12), the accountants' ε must be equal and the audit must pass: with the
in-process scheduler on a SQLite ledger and through ``dpf-sched serve``. In-process tests cover the rules the
example does not reach: chunks charged after the checkpoint by the lost process, a bad or mismatched state.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")

from opacus_helpers import GRID, QUIET, model, scheduler, sgd, train
from torch.utils.data import DataLoader

from dpf_sched.errors import InvalidParameterError, InvalidStateError
from dpf_sched.integrations.opacus import AccountingMismatchError, BudgetedPrivacyEngine, RunStatus
from dpf_sched.integrations.opacus.history import Segment, _StepCurves
from dpf_sched.ledger import ClaimState
from dpf_sched.selector import BlockSelector

pytestmark = QUIET
EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "opacus_resume.py"
SIGMA = 1.0


def run_example(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(EXAMPLE), *args, "--json"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out: dict[str, Any] = json.loads(proc.stdout)
    return out


def check_exact(out: dict[str, Any], claims: int) -> None:
    assert out["killed"] and out["ok"]
    assert len(out["claims"]) == claims and out["steps"] == out["planned_steps"] == 20
    for a in map(repr, out["alphas"]):
        assert abs(out["consumed"][a] - out["expected"][a]) <= 1e-12 * out["expected"][a], a
    assert out["max_rel_gap"] <= 1e-12
    assert out["epsilon_resumed"] == out["epsilon_reference"]


def test_resume_continues_the_granted_claim_and_pays_exactly_once() -> None:
    out = run_example()
    check_exact(out, claims=1)
    assert out["max_rel_gap"] == 0.0  # the same chunks, the same bits
    assert out["audit"] == {"ok": True}
    assert "no new claim" in out["notes"][0]


def test_resume_after_the_claim_ended_claims_only_the_remaining_steps() -> None:
    out = run_example("--release-before-resume")
    check_exact(out, claims=2)
    assert out["claims"][1] == "resumable-job-resume1"
    assert "8 remaining planned steps" in out["notes"][0]
    assert out["audit"] == {"ok": True}


@pytest.mark.parametrize("release", [False, True])
def test_resume_through_the_service(tmp_path: Path, release: bool) -> None:
    service_support = pytest.importorskip("service_support", reason="needs tests/service_support.py")
    pytest.importorskip("dpf_sched.service.app", reason="needs the HTTP service (dpf_sched.service)")
    from dpf_sched.block import Block
    from dpf_sched.budget import EpsDelta
    from dpf_sched.client import ServiceClient

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    admin = service_support.create_token(db, "ops", admin=True, composition="renyi")
    token = service_support.create_token(db, "team-a")
    with service_support.running_server(db, "fcfs", log_dir=tmp_path) as server:
        with ServiceClient(server.url, admin) as client:
            grid = client.alpha_grid()
            client.add_block(Block("day-0", EpsDelta(100.0, 1e-6).to_renyi(grid, "balle")))
        args = ["--service", server.url, "--token", token, "--blocks", "day-0"]
        out = run_example(*args, *(["--release-before-resume"] if release else []))
        with ServiceClient(server.url, admin) as client:
            audit = client.audit()
            block = client.block("day-0")
    check_exact(out, claims=2 if release else 1)
    assert audit.ok, audit.raw
    assert block.allocated.is_zero()  # type: ignore[union-attr]


# ----- in process -------------------------------------------------------------------------------------------
def make_job(sched: Any, data: Any, seed: int = 0, **kwargs: Any) -> Any:
    engine = BudgetedPrivacyEngine(sched, accountant="rdp")
    loader = DataLoader(engine.dataset(data, BlockSelector(ids=("b0", "b1"))), batch_size=8)
    m = model(seed)
    kwargs.setdefault("epochs", 3)
    return engine.make_private(
        claim_id="job", module=m, optimizer=sgd(m), data_loader=loader, noise_multiplier=SIGMA, max_grad_norm=1.0,
        **kwargs,
    )  # fmt: skip


def test_chunks_charged_after_the_checkpoint_stay_spent_and_are_reported() -> None:
    sched, data = scheduler()
    first = make_job(sched, data)
    first.start()
    train(first, 1)
    state = first.state_dict()  # after epoch 1 (10 steps, one chunk)
    train(first, 1)  # the lost process goes on: epoch 2 is charged, then it "dies" (never finishes)
    lost = sched.ledger.claim("job").consumed["b0"].values.copy()
    resumed = make_job(sched, data)
    resumed.load_state_dict(state)
    with resumed:
        assert resumed.steps_taken == 10
        train(resumed, 2)
    report = resumed.report
    # The lost chunk used a third of the grant: the resumed job is stopped after 10 more steps (20 in all,
    # 30 charged: the 10 before the checkpoint, the 10 lost, the 10 after), never over the grant.
    assert report.status is RunStatus.EXHAUSTED and resumed.steps_taken == 20
    q = report.plan.sample_rate
    curves = _StepCurves(GRID)
    np.testing.assert_allclose(report.consumed.values, curves.total([Segment(SIGMA, q, 30)]), rtol=1e-12)
    assert np.all(report.consumed.values >= lost)
    assert np.all(report.consumed.values <= report.granted.values * (1 + 1e-12))
    assert any("after the checkpoint" in n for n in report.notes)
    assert sched.status("job").state is ClaimState.FINISHED


def test_steps_charged_ahead_of_a_mid_chunk_checkpoint_are_forfeited_not_reused() -> None:
    sched, data = scheduler()
    first = make_job(sched, data)
    first.start()
    train(first, 1)
    # Take 3 steps of epoch 2 (its chunk of 10 is charged), then checkpoint mid-chunk.
    it = iter(first.data_loader)
    for _ in range(3):
        x, y = next(it)
        first.optimizer.zero_grad()
        torch.nn.functional.cross_entropy(first.module(x), y).backward()
        first.optimizer.step()
    state = first.state_dict()
    assert state["hook"]["ahead"] == 7 and state["steps_taken"] == 13
    resumed = make_job(sched, data)
    resumed.load_state_dict(state)
    with resumed:
        pass
    report = resumed.report
    # The resumed job took no step but the chunk charged before the checkpoint stays spent (20 steps' worth).
    q = report.plan.sample_rate
    np.testing.assert_array_equal(report.consumed.values, _StepCurves(GRID).total([Segment(SIGMA, q, 20)]))
    assert any("forfeited" in n for n in report.notes)


def test_a_bad_or_foreign_state_is_refused_before_anything_happens() -> None:
    sched, data = scheduler()
    job = make_job(sched, data)
    with pytest.raises(InvalidParameterError):
        job.load_state_dict({"version": 1, "claim_id": "job"})
    with pytest.raises(InvalidParameterError):
        job.load_state_dict({"version": 7})
    first = make_job(sched, data)
    first.start()
    train(first, 1)
    state = first.state_dict()
    other = make_job(sched, data, epochs=4)  # a different plan
    other.load_state_dict(state)
    with pytest.raises(AccountingMismatchError):
        other.start()
    assert sched.ledger.claim("job").state is ClaimState.GRANTED  # the first job's claim is untouched
    with pytest.raises(InvalidStateError):
        first.load_state_dict(state)  # already started
    hostile = [
        {**state, "hook": {**state["hook"], "charged": "garbage"}},
        {**state, "hook": {**state["hook"], "ahead": -1}},
        {**state, "hook": {**state["hook"], "consumed": ["x"]}},
        {**state, "steps_taken": -5},
        {**state, "blocks": []},
        {**state, "accountant": {"history": [[1.0, 0.1]], "mechanism": "rdp"}},
        {**state, "plan": None},
    ]
    for bad in hostile:
        with pytest.raises(InvalidParameterError):
            make_job(sched, data).load_state_dict(bad)
    # A state of another grid, or of another accountant, is refused at the start, before anything is claimed.
    for bad in (
        {**state, "hook": {**state["hook"], "consumed": [0.0, 1.0]}},
        {**state, "accountant": {**state["accountant"], "mechanism": "prv"}},
    ):
        job = make_job(sched, data)
        job.load_state_dict(bad)
        with pytest.raises(AccountingMismatchError):
            job.start()
    assert set(sched.states()) == {"job"}  # no other claim was made ...
    assert sched.ledger.claim("job").state is ClaimState.GRANTED  # ... and the checkpoint's claim is untouched
