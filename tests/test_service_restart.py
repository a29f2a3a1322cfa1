"""Crash and restart under load: the server is SIGKILLed while client processes run claims, then restarted on
the same database and port; the clients retry through the outage and nothing acknowledged is lost.

Each client records every consumption the server acknowledged, ``(claim, request_id, amounts)``. After the run,
each claim's consumption in the ledger is the sum of its acknowledged consumptions (a consumption whose reply was
lost in the crash is applied once at most, because its retry carries the same request id), no block is overspent,
nothing stays allocated, and the ledger's audit (journal replay and invariants) passes. SQLite always; PostgreSQL
when ``DPF_SCHED_TEST_POSTGRES_URL`` is set.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

service_support = pytest.importorskip("service_support", reason="needs tests/service_support.py (the server)")
pytest.importorskip("dpf_sched.service.app", reason="needs the HTTP service (dpf_sched.service)")

from service_load_support import check_ledger, collect, start_workers  # noqa: E402
from sql_ledger_support import PG_SKIP, SchemaPool  # noqa: E402

from dpf_sched.block import Block  # noqa: E402
from dpf_sched.budget import EpsDelta  # noqa: E402
from dpf_sched.client import ServiceClient  # noqa: E402

BLOCKS = ["b0", "b1", "b2"]
TENANTS = ["t0", "t1", "t2"]
CLAIMS_PER_PROCESS = 40
#: Enough retries to ride out a restart (about 20 s of tries with pauses capped at 0.5 s).
CLIENT = {"retries": 40, "backoff": 0.05, "max_backoff": 0.5, "timeout": 10.0}


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=PG_SKIP)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    pool = SchemaPool()
    try:
        yield pool.url()
    finally:
        pool.close()


def acknowledged_so_far(url: str, tokens: dict[str, str]) -> int:
    """How many claims the tenants hold now (a sign that the load is under way)."""
    total = 0
    for tok in tokens.values():
        with ServiceClient(url, tok, retries=0) as client:
            total += len(client.claims())
    return total


def test_sigkill_and_restart_mid_load_loses_nothing(db: str, tmp_path: Path) -> None:
    admin = service_support.create_token(db, "ops", admin=True)
    tokens = {t: service_support.create_token(db, t) for t in TENANTS}
    server = service_support.start_server(db, "fcfs", log_dir=tmp_path)
    try:
        with ServiceClient(server.url, admin) as client:
            for b in BLOCKS:
                client.add_block(Block(b, EpsDelta(40.0, 1e-6)))
        results, procs = start_workers(server.url, tokens, CLAIMS_PER_PROCESS, BLOCKS, CLIENT)
        url = server.url
        at_kill = service_support.wait_for(
            lambda: n if (n := acknowledged_so_far(url, tokens)) >= 15 else 0, timeout=60.0, interval=0.1
        )
        server.kill()  # SIGKILL mid-load: requests in flight lose their replies
        assert not server.alive
        time.sleep(0.5)  # the clients meet a dead port for a while
        server = service_support.start_server(db, "fcfs", port=server.port, log_dir=tmp_path)
        out = collect(results, procs, timeout=240.0)
        assert at_kill < len(TENANTS) * CLAIMS_PER_PROCESS  # the crash came mid-load
        assert sum(r.gave_up for r in out) == 0, "a client gave up during the outage"
        assert sum(r.retried for r in out) > 0  # ... and the clients did retry through it
        assert sum(len(r.acked) for r in out) > 0
        check_ledger(server.url, admin, tokens, out, BLOCKS)
        with ServiceClient(server.url, admin) as client:
            assert all(client.block(b).allocated.is_zero() for b in BLOCKS)
    finally:
        if server.alive:
            server.stop()
