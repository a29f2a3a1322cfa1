"""docs/examples/budgeted_sweep.py: K DP-SGD trials under one claim, in process and through ``dpf-sched serve``; every
trial that ran was charged, the ones beyond the claim were refused and never ran, the ledger holds exactly the sum
of the trial charges."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("dp_accounting", reason="the example needs the 'dp-accounting' extra")

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "budgeted_sweep.py"
SMALL = ["--rows", "500", "--batch-size", "50", "--steps", "30"]


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("budgeted_sweep", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.main(["--in-process", "--json", *SMALL, *args])
    return code, json.loads(capsys.readouterr().out)


def check_sum(out: dict[str, Any]) -> None:
    total = np.zeros(len(out["alphas"]))
    for trial in out["trials"]:
        total = total + np.asarray(trial["charge"])
    assert np.array_equal(out["ledger_consumed"], total)  # every trial, in charge order, exactly
    assert np.array_equal(out["total"], total)


def test_every_trial_of_the_sweep_is_charged(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("opacus", reason="SchedulerClient lives in the opacus integration package")
    code, out = run_in_process(capsys)
    assert code == 0 and out["claim_state"] == "finished" and out["refused"] == []
    assert len(out["trials"]) == 4 and out["winner"] in {t["name"] for t in out["trials"]}
    check_sum(out)
    np.testing.assert_allclose(out["ledger_consumed"], out["granted"], rtol=1e-12)  # it claimed what it spent


def test_trials_beyond_the_claim_are_refused_and_never_run(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("opacus", reason="SchedulerClient lives in the opacus integration package")
    code, out = run_in_process(capsys, "--claim-trials", "2", "--sigmas", "1.0", "1.0001")
    assert code == 0 and out["claim_state"] == "finished"
    # Trials 0 and 1 were claimed; trial 2 (σ = 1) has the same curve as trial 0 but nothing is left for it;
    # trial 3 neither. Only the charged trials trained (have an accuracy).
    assert [t["name"] for t in out["trials"]] == ["lr=0.5,sigma=1", "lr=0.5,sigma=1.0001"]
    assert out["refused"] == ["lr=2,sigma=1", "lr=2,sigma=1.0001"]
    check_sum(out)


def test_the_sweep_runs_against_the_service(tmp_path: Path) -> None:
    service_support = pytest.importorskip("service_support", reason="needs tests/service_support.py (the server)")
    pytest.importorskip("dpf_sched.service.app", reason="needs the HTTP service (dpf_sched.service)")
    from dpf_sched.client import ServiceClient

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    admin = service_support.create_token(db, "ops", admin=True, composition="renyi")
    with service_support.running_server(db, "fcfs", log_dir=tmp_path) as server:
        proc = subprocess.run(
            [sys.executable, str(EXAMPLE), "--service", server.url, "--token", admin, "--create-block", "10,1e-6",
             "--claim-trials", "3", "--json", *SMALL],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, f"{proc.stderr}\n{server.log()[-3000:]}"
        out = json.loads(proc.stdout)
        with ServiceClient(server.url, admin) as client:
            block = client.block("day-0")
            record = client.status(out["claim_id"])
            audit = client.audit()
    assert len(out["trials"]) == 3 and len(out["refused"]) == 1 and out["claim_state"] == "finished"
    check_sum(out)
    # The claim's record holds the true sum, exactly; the block books it saturated at 2 × its capacity per order
    # (docs/ledger.md, "Saturation"): exactly the true value below that, 2 × capacity above, 0 where it has none.
    true = np.asarray(out["ledger_consumed"])
    np.testing.assert_array_equal(record.consumed["day-0"].values, true)  # type: ignore[union-attr]
    booked, capacity = np.asarray(block.consumed.values), np.asarray(block.capacity.values)  # type: ignore[union-attr]
    below = true < 2.0 * capacity
    assert below.any() and (~below).any()  # both kinds of order are exercised
    np.testing.assert_array_equal(booked[below], true[below])
    np.testing.assert_allclose(booked, np.where(capacity > 0, np.minimum(true, 2.0 * capacity), 0.0), rtol=1e-12)
    assert block.allocated.is_zero()
    assert audit.ok, audit.raw
