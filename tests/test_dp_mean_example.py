"""docs/examples/dp_mean_service.py budgets a non-Opacus job (a DP mean and histogram in NumPy) end to end: through a
``dpf-sched serve`` subprocess, and through the in-process SchedulerClient. The ledger ends holding exactly the
charges of what was released, nothing stays allocated, and the audit passes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

pytest.importorskip("dp_accounting", reason="the example needs the 'dp-accounting' extra")

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "dp_mean_service.py"


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dp_mean_service", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_in_process(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = load_example().main(["--in-process", "--json", *args])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_the_example_runs_in_process_and_charges_each_release_before_it(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("opacus", reason="SchedulerClient lives in the opacus integration package")
    code, out = run_in_process(capsys)
    assert code == 0 and out["claim_state"] == "finished"
    mean, hist = np.asarray(out["charged"]["mean"]), np.asarray(out["charged"]["histogram"])
    assert np.array_equal(out["ledger_consumed"], mean + hist)
    assert np.array_equal(out["demand"], mean + hist)  # it claimed exactly what it planned to release
    # σ = 4 on the sum and on the count: the mean's curve is α(1/32 + 1/32) = α/16.
    assert out["charged"]["mean"] == [a / 16 for a in out["alphas"]]
    assert set(out["released"]) == {"mean", "histogram"} and len(out["released"]["histogram"]) == 8
    assert 15.0 < out["released"]["mean"] < 35.0  # the true mean of the synthetic rows is about 24

    code, out = run_in_process(capsys, "--skip-histogram")
    assert code == 0 and set(out["released"]) == {"mean"} and out["claim_state"] == "finished"
    assert np.array_equal(out["ledger_consumed"], out["charged"]["mean"])  # the histogram's share was released


def test_a_claim_that_cannot_be_granted_releases_nothing_and_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("opacus", reason="SchedulerClient lives in the opacus integration package")
    code, out = run_in_process(capsys, "--create-block", "0.2,1e-6")
    assert code == 3 and out["granted"] is False and out["claim_state"] == "rejected"
    assert "released" not in out


def test_the_example_runs_against_the_service(tmp_path: Path) -> None:
    service_support = pytest.importorskip("service_support", reason="needs tests/service_support.py (the server)")
    pytest.importorskip("dpf_sched.service.app", reason="needs the HTTP service (dpf_sched.service)")
    from dpf_sched.client import ServiceClient

    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    admin = service_support.create_token(db, "ops", admin=True, composition="renyi")
    outs = []
    with service_support.running_server(db, "fcfs", log_dir=tmp_path) as server:
        for claim_id, extra in (("stats-1", []), ("stats-2", ["--skip-histogram"])):
            proc = subprocess.run(
                [sys.executable, str(EXAMPLE), "--service", server.url, "--token", admin, "--create-block",
                 "10,1e-6", "--block", "day-0", "--claim-id", claim_id, "--json", *extra],
                capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert proc.returncode == 0, f"{proc.stderr}\n{server.log()[-3000:]}"
            outs.append(json.loads(proc.stdout))
        with ServiceClient(server.url, admin) as client:
            block = client.block("day-0")
            audit = client.audit()
            states = {c.claim.id: c.state.value for c in client.claims()}
            records = {out["claim_id"]: client.status(out["claim_id"]) for out in outs}
    assert states == {"stats-1": "finished", "stats-2": "finished"}
    capacity = np.asarray(block.capacity.values)  # type: ignore[union-attr]
    total = np.zeros(len(outs[0]["alphas"]))
    saturated = np.zeros(len(outs[0]["alphas"]))
    below = np.ones(len(outs[0]["alphas"]), dtype=bool)
    for out in outs:
        charges = list(out["charged"].values())
        true = np.asarray(out["ledger_consumed"])
        assert np.array_equal(true, sum(np.asarray(c) for c in charges))
        # The claim's record holds its true consumption, exactly.
        np.testing.assert_array_equal(records[out["claim_id"]].consumed["day-0"].values, true)  # type: ignore[union-attr]
        for charge in charges:
            total = total + np.asarray(charge)
        saturated = saturated + np.where(capacity > 0, np.minimum(true, 2.0 * capacity), 0.0)
        below &= true < 2.0 * capacity
    assert set(outs[1]["charged"]) == {"mean"}
    # The block books each claim saturated at 2 × its capacity per order, nothing where it has none
    # (docs/ledger.md, "Saturation"): the charges' sum exactly where every claim stays below that.
    booked = np.asarray(block.consumed.values)  # type: ignore[union-attr]
    assert below.any() and (capacity == 0).any()
    np.testing.assert_array_equal(booked[below], total[below])
    np.testing.assert_allclose(booked, saturated, rtol=1e-12)
    assert block.allocated.is_zero()
    assert audit.ok, audit.raw


@pytest.mark.parametrize(
    "args", [["--create-block", "abc"], ["--create-block", "1,2"], ["--rows", "-3"], ["--service", "http://x"]]
)
def test_bad_arguments_are_usage_errors(args: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        load_example().main(["--in-process", *args] if args[0] != "--service" else args)
    assert exit_.value.code == 2 and "error:" in capsys.readouterr().err


def test_an_invalid_mechanism_is_an_error_before_anything_is_claimed(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("opacus", reason="SchedulerClient lives in the opacus integration package")
    assert load_example().main(["--in-process", "--sigma-sum", "0"]) == 2
    assert "GaussianDpEvent.noise_multiplier" in capsys.readouterr().err
