"""Load: several client processes run claims against one ``dpf-sched serve``; afterwards nothing is lost.

Four processes (one tenant each) run 25 claims each through :class:`~dpf_sched.client.ServiceClient`: submit on
one or two of four shared blocks, wait for the grant, consume part of it twice, release the rest. Blocks are
sized so that some claims are refused (FCFS rejects what does not fit at arrival). Afterwards the audit passes, no
block is overspent, nothing stays allocated, and every acknowledged consumption is in the ledger exactly once.
"""

from __future__ import annotations

from pathlib import Path

import pytest

service_support = pytest.importorskip("service_support", reason="needs tests/service_support.py (the server)")
pytest.importorskip("dpf_sched.service.app", reason="needs the HTTP service (dpf_sched.service)")

from service_load_support import check_ledger, run_workers  # noqa: E402

from dpf_sched.block import Block  # noqa: E402
from dpf_sched.budget import EpsDelta  # noqa: E402
from dpf_sched.client import ServiceClient  # noqa: E402

BLOCKS = ["b0", "b1", "b2", "b3"]
TENANTS = ["t0", "t1", "t2", "t3"]
CLAIMS_PER_PROCESS = 25


def test_four_client_processes_share_the_blocks_without_losing_a_consumption(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    admin = service_support.create_token(db, "ops", admin=True)
    tokens = {t: service_support.create_token(db, t) for t in TENANTS}
    with service_support.running_server(db, "fcfs", log_dir=tmp_path) as server:
        with ServiceClient(server.url, admin) as client:
            for b in BLOCKS:
                client.add_block(Block(b, EpsDelta(20.0, 1e-6)))
        results = run_workers(server.url, tokens, CLAIMS_PER_PROCESS, BLOCKS, {"retries": 10, "backoff": 0.05})
        assert sum(r.gave_up for r in results) == 0
        outcomes = {k: sum(r.outcomes.get(k, 0) for r in results) for k in ("granted", "rejected")}
        assert outcomes["granted"] >= 20 and sum(outcomes.values()) == len(TENANTS) * CLAIMS_PER_PROCESS
        assert sum(len(r.acked) for r in results) == 2 * outcomes["granted"]
        check_ledger(server.url, admin, tokens, results, BLOCKS)
        with ServiceClient(server.url, admin) as client:
            assert all(client.block(b).allocated.is_zero() for b in BLOCKS)
