"""Two Opacus training jobs, in two processes, share one block's budget through one ``dpf-sched serve``.

Each job runs ``docs/examples/opacus_service_train.py`` as its own tenant: it plans its DP-SGD demand on the
service's α grid, claims it on block ``day-0``, waits for the grant, trains two of its three planned epochs
(stopping early) and consumes what its Opacus accountant recorded, releasing the rest. The block's capacity is
sized so that each job's demand is 55 % of it, under DPF-N with N = 2: the first job is granted when the second
arrives and unlocks the rest, and the second waits until the first gives back the unspent third of its grant. At
the end the block's consumption is the sum of what the two accountants spent, within the capacity at every α;
nothing stays allocated and the audit passes. Small on purpose (200 rows, 12 planned steps): < 60 s on a CPU.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")
service_support = pytest.importorskip("service_support", reason="needs tests/service_support.py (the server)")
pytest.importorskip("dpf_sched.service.app", reason="needs the HTTP service (dpf_sched.service)")

from dpf_sched.accounting import subsampled_gaussian_rdp  # noqa: E402
from dpf_sched.block import Block  # noqa: E402
from dpf_sched.budget import RenyiCurve  # noqa: E402
from dpf_sched.client import ServiceClient  # noqa: E402

EXAMPLE = Path(__file__).resolve().parents[1] / "docs" / "examples" / "opacus_service_train.py"
ROWS, BATCH, EPOCHS, STOP_AFTER, SIGMA = 200, 50, 3, 2, 1.0
SHARE = 0.55  # each job's demand as a fraction of the block's capacity: both together do not fit


def test_two_training_processes_share_one_block_without_overspending(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    admin = service_support.create_token(db, "ops", admin=True, composition="renyi")
    tokens = {t: service_support.create_token(db, t) for t in ("team-a", "team-b")}
    with service_support.running_server(db, "dpf-n", params={"N": 2}, log_dir=tmp_path) as server:
        with ServiceClient(server.url, admin) as client:
            grid = client.alpha_grid()
            q = 1 / (ROWS // BATCH)
            demand = RenyiCurve(grid, subsampled_gaussian_rdp(grid.array, SIGMA, q, EPOCHS * (ROWS // BATCH)))
            capacity = demand.scale(1 / SHARE)
            client.add_block(Block("day-0", capacity))
        args = ["--service", server.url, "--blocks", "day-0", "--rows", str(ROWS), "--batch-size", str(BATCH),
                "--epochs", str(EPOCHS), "--stop-after", str(STOP_AFTER), "--noise", str(SIGMA),
                "--timeout", "120", "--accountant", "rdp", "--json"]  # fmt: skip
        jobs = {
            tenant: subprocess.Popen(
                [sys.executable, str(EXAMPLE), *args, "--token", tok, "--claim-id", "dp-sgd-job", "--seed", str(k)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k, (tenant, tok) in enumerate(tokens.items())
        }
        outs: dict[str, dict[str, Any]] = {}
        for tenant, proc in jobs.items():
            stdout, stderr = proc.communicate(timeout=150)
            assert proc.returncode == 0, f"{tenant}: exit {proc.returncode}\n{stderr}\n{server.log()[-3000:]}"
            outs[tenant] = json.loads(stdout)
        with ServiceClient(server.url, admin) as client:
            block = client.block("day-0")
            audit = client.audit()
    total = np.zeros(len(grid))
    for tenant, out in outs.items():
        assert out["status"] == "stopped" and out["steps"] == STOP_AFTER * (ROWS // BATCH), (tenant, out)
        assert out["claim_state"] == "finished"
        np.testing.assert_allclose(out["granted"], demand.values, rtol=1e-9)
        # Each job paid exactly what its accountant spent: the ledger holds the accountant's curve.
        np.testing.assert_allclose(out["ledger_consumed"]["day-0"], out["accountant_consumed"], rtol=1e-9)
        assert out["checks"]["consumed_vs_accountant_max_rel"] <= 1e-9
        total += np.asarray(out["ledger_consumed"]["day-0"])
    # DPF-N (N = 2) unlocks the block in halves, one per arrival: the first grant needed both arrivals, and the
    # second came in a later pass, once the first job had given back the unspent third of its grant.
    first, second = sorted(outs.values(), key=lambda o: o["granted_at"])
    assert first["granted_at"] >= max(o["arrival"] for o in outs.values())
    assert second["granted_at"] > first["granted_at"]
    np.testing.assert_allclose(block.consumed.values, total, rtol=1e-9)  # type: ignore[union-attr]
    assert np.all(block.consumed.values <= capacity.values * (1 + 1e-9))  # type: ignore[union-attr]
    assert block.allocated.is_zero()
    assert audit.ok, audit.raw
