"""docs/examples/opacus_train.py runs as documented and its JSON shows an exact account."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("opacus", reason="the Opacus example needs the 'opacus' extra")

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "opacus_train.py"


def run_example(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(EXAMPLE), *args], capture_output=True, text=True, timeout=300, check=False
    )


def close(a: float, b: float, rel: float) -> bool:
    return abs(a - b) <= rel * max(abs(a), abs(b))


def test_the_example_json_account_is_exact() -> None:
    proc = run_example("--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    for key in ("status", "granted", "consumed", "released", "accountant_consumed"):
        assert key in out
    assert out["status"] == "stopped" and out["claim_state"] == "finished"
    assert 0 < out["steps"] < out["planned_steps"]
    alphas = [repr(a) for a in out["alphas"]]
    checked = 0
    for a in alphas:
        consumed, accountant = out["consumed"][a], out["accountant_consumed"][a]
        if accountant is None or not math.isfinite(accountant):
            continue
        checked += 1
        assert close(consumed, accountant, 1e-9), a
        assert close(out["granted"][a], consumed + out["released"][a], 1e-9), a
        assert close(accountant, out["opacus_compute_rdp"][a], 1e-8), a
        assert out["released"][a] > 0  # the early stop gave budget back
    assert checked == len(alphas)
    assert out["competitors"]["big-model"] == "granted" and out["waited"] > 0


def test_the_example_prints_a_summary_and_runs_a_full_plan_with_another_accountant() -> None:
    proc = run_example("--accountant", "rdp", "--stop-after", "0", "--epochs", "2")
    assert proc.returncode == 0, proc.stderr
    assert "job dp-sgd-job: completed" in proc.stdout
    assert "granted vs consumed + released" in proc.stdout
