"""A DDP budgeted job (gloo on CPU, ``torch.multiprocessing.spawn``): one claim, charged once per global step.

Runs ``docs/examples/opacus_ddp.py``: with 2 and 4 processes the DDP claim consumes exactly (bit for bit) what
the same plan consumes in one process with the same global batch, every rank takes the same number of steps, and
the audit passes. A SIGKILL of any rank leaves the ledger consistent: the audit passes and the claim's
consumption is within the write-ahead bound of the steps rank 0 let through.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")
dist = pytest.importorskip("torch.distributed")
if not dist.is_available() or not dist.is_gloo_available():
    pytest.skip("needs torch.distributed with the gloo backend", allow_module_level=True)

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "opacus_ddp.py"


def run_example(*args: str) -> dict[str, Any]:
    proc = subprocess.run([sys.executable, str(EXAMPLE), *args, "--json"], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


@pytest.mark.parametrize("world", [2, 4])
def test_a_ddp_job_is_charged_exactly_like_one_process_with_the_same_global_batch(world: int) -> None:
    out = run_example("--world-size", str(world))
    assert out["ok"] and out["equal"]
    assert out["consumed"] == out["reference"]  # every α, bit for bit
    assert [r["rank"] for r in out["ranks"]] == list(range(world))
    assert {r["steps"] for r in out["ranks"]} == {out["reference_steps"]} == {16}
    assert {r["status"] for r in out["ranks"]} == {"completed"}
    assert out["audit"]["ok"] and out["claim_state"] == "finished"


@pytest.mark.parametrize("rank", [0, 1])
def test_a_sigkilled_rank_leaves_the_ledger_consistent(rank: int) -> None:
    out = run_example("--world-size", "2", "--kill-rank", str(rank), "--kill-at-step", "4")
    assert out["killed"] and out["killed_rank"] == rank
    assert out["audit"]["ok"]
    assert out["recorded_steps"] >= 4  # rank 0 let at least 4 steps through ...
    assert out["charged_steps"] >= out["recorded_steps"]  # ... and every one of them was charged first
    assert out["charged_steps"] <= out["recorded_steps"] + out["chunk"]
    assert out["within_bound"] and out["ok"]
