"""Claim leases through the HTTP service (real `dpf-sched serve` processes; docs/service.md, "Leases").

* the API: a claim gets the server's default lease (300 s) or the one its body names; ``renew`` moves the
  deadline; another tenant's claim answers exactly like an unknown one; bad leases are 422;
* a job process SIGKILLed after consuming part of its grant: its unspent budget is back in the unlocked pool
  within lease + one pass, and the claim waiting for it is granted; a job that keeps renewing is never expired;
* leader failover: a lease granted by the killed leader still expires under the new one, a renewed one does not.

Short leases (1–2 s) keep them fast. SQLite always; PostgreSQL too when DPF_SCHED_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import Server, auth, create_token, start_server, wait_for
from sql_ledger_support import PG_SKIP, drop_schemas, new_schema_name, pg_url

from dpf_sched.client import ServiceClient
from dpf_sched.errors import LeaseExpiredError
from dpf_sched.integrations.lease import LeaseRenewer
from dpf_sched.ledger.sql import open_ledger

LEASE = 1.5
#: Slack on top of lease + one pass for a loaded CI machine (two cores shared by many processes).
SLACK = 2.0


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=PG_SKIP)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    name = new_schema_name("dpf_lease")
    try:
        yield pg_url(name)
    finally:
        drop_schemas([name])


def claim(c: httpx.Client, token: str, cid: str) -> dict[str, object]:
    r = c.get(f"/v1/claims/{cid}", headers=auth(token))
    assert r.status_code == 200, r.text
    return dict(r.json())


def wait_state(c: httpx.Client, token: str, cid: str, state: str, timeout: float) -> float:
    """Poll until the claim is in ``state``; the monotonic time when it was seen so."""
    wait_for(lambda: claim(c, token, cid)["state"] == state, timeout=timeout, interval=0.02)
    return time.monotonic()


def create(c: httpx.Client, token: str, body: dict[str, object]) -> dict[str, object]:
    r = c.post("/v1/claims", json=body, headers=auth(token))
    assert r.status_code == 201, r.text
    return dict(r.json())


# ----- the API ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str, str]]:
    d = tmp_path_factory.mktemp("svc_leases")
    db = f"sqlite:///{d / 'ledger.db'}?synchronous=normal"
    admin = create_token(db, "ops", admin=True)
    alice = create_token(db, "alice")
    bob = create_token(db, "bob")
    s = start_server(db, "dpf-n", {"N": 1}, log_dir=d)  # the default --lease: 300 s
    try:
        yield s, admin, alice, bob
    finally:
        s.stop()


def test_default_and_requested_leases_and_renew(server: tuple[Server, str, str, str]) -> None:
    s, admin, alice, bob = server
    with httpx.Client(base_url=s.url, timeout=30) as c:
        assert c.post("/v1/blocks", json={"id": "api", "budget": {"epsilon": 1.0}}, headers=auth(admin)).is_success
        out = create(c, alice, {"id": "dflt", "demand": {"epsilon": 0.1}, "blocks": ["api"]})
        assert out["lease"] == 300.0
        got = c.get("/v1/claims/dflt/wait", params={"timeout": 10}, headers=auth(alice)).json()
        assert got["state"] == "granted" and got["lease_deadline"] == pytest.approx(got["granted_at"] + 300.0)
        create(c, alice, {"id": "short", "demand": {"epsilon": 0.1}, "blocks": ["api"], "lease": 30.0})
        got = c.get("/v1/claims/short/wait", params={"timeout": 10}, headers=auth(alice)).json()
        assert got["lease"] == 30.0 and got["lease_deadline"] == pytest.approx(got["granted_at"] + 30.0)
        time.sleep(0.05)
        before = time.time()
        r = c.post("/v1/claims/short/renew", headers=auth(alice))
        assert r.status_code == 200, r.text
        assert r.json()["lease_deadline"] >= before + 30.0 > got["lease_deadline"]
        assert c.post("/v1/claims/short/renew", json={}, headers=auth(alice)).status_code == 200
        # Another tenant's claim answers exactly like an unknown one.
        theirs = c.post("/v1/claims/short/renew", headers=auth(bob))
        unknown = c.post("/v1/claims/no-such-claim/renew", headers=auth(bob))
        assert theirs.status_code == unknown.status_code == 404
        assert theirs.content == unknown.content
        assert c.post("/v1/claims/short/renew", headers={"Authorization": "Bearer nope"}).status_code == 401
        # A claim that is not granted cannot be renewed: 409.
        create(c, alice, {"id": "toolarge", "demand": {"epsilon": 0.9}, "blocks": ["api"]})
        assert claim(c, alice, "toolarge")["state"] == "waiting"
        r = c.post("/v1/claims/toolarge/renew", headers=auth(alice))
        assert r.status_code == 409 and r.json()["error"] == "conflict"
        c.post("/v1/claims/toolarge/withdraw", headers=auth(alice))
        r = c.post("/v1/claims/short/renew", json={"extra": 1}, headers=auth(alice))
        assert r.status_code == 422
        assert "/v1/claims/{claim_id}/renew" in c.get("/openapi.json").json()["paths"]


@pytest.mark.parametrize("lease", ["0", "-1.0", '"10"', "true", "1e400", "NaN", "[]"])
def test_bad_lease_is_422(server: tuple[Server, str, str, str], lease: str) -> None:
    s, _, alice, _ = server
    with httpx.Client(base_url=s.url, timeout=30) as c:
        body = '{"demand": {"epsilon": 0.1}, "blocks": ["api"], "lease": ' + lease + "}"
        headers = {**auth(alice), "Content-Type": "application/json"}
        r = c.post("/v1/claims", content=body.encode(), headers=headers)
        assert r.status_code == 422, r.text
        assert r.json()["error"] == "invalid"


# ----- a job that dies, a job that renews ---------------------------------------------------------------------
JOB = textwrap.dedent(
    """
    import sys, time
    from dpf_sched.budget import EpsDelta
    from dpf_sched.claim import Claim
    from dpf_sched.client import ServiceClient

    url, token, lease = sys.argv[1], sys.argv[2], float(sys.argv[3])
    with ServiceClient(url, token) as client:
        cid = client.submit(Claim("job", {"b": EpsDelta(0.6, 0.0)}, lease=lease))
        assert client.wait(cid, 30.0).state.value == "granted"
        client.consume(cid, {"b": EpsDelta(0.2, 0.0)})  # charged before the data is used
        print("consumed", flush=True)
        while True:  # "training": renew every lease/3
            client.renew(cid)
            time.sleep(lease / 3)
    """
)


def test_sigkilled_job_gives_its_budget_back_and_a_renewing_job_keeps_it(db: str, tmp_path: Path) -> None:
    admin = create_token(db, "ops", admin=True)
    alice = create_token(db, "alice")
    server = start_server(db, "dpf-n", {"N": 1}, log_dir=tmp_path)
    job: subprocess.Popen[str] | None = None
    try:
        with httpx.Client(base_url=server.url, timeout=30) as c, ServiceClient(server.url, alice) as client:
            assert c.post("/v1/blocks", json={"id": "b", "budget": {"epsilon": 1.0}}, headers=auth(admin)).is_success
            job = subprocess.Popen(
                [sys.executable, "-c", JOB, server.url, alice, str(LEASE)], stdout=subprocess.PIPE, text=True
            )
            assert job.stdout is not None and job.stdout.readline().strip() == "consumed"
            # A claim that only fits once the job's grant is back: it waits.
            create(c, alice, {"id": "next", "demand": {"epsilon": 0.6}, "blocks": ["b"]})
            # The job renews: it outlives two lease lengths, and the waiting claim stays waiting.
            time.sleep(2 * LEASE)
            assert claim(c, alice, "job")["state"] == "granted" and claim(c, alice, "next")["state"] == "waiting"
            job.kill()
            killed = time.monotonic()
            job.wait(30)
            expired = wait_state(c, alice, "job", "expired", LEASE + SLACK + 5)
            assert expired - killed <= LEASE + SLACK, f"expired {expired - killed:.2f} s after the kill"
            wait_state(c, alice, "next", "granted", 10)
            record = client.status("job")
            assert record.consumed["b"].epsilon == pytest.approx(0.2)  # type: ignore[union-attr]
            with pytest.raises(LeaseExpiredError):
                client.renew("job")
            with pytest.raises(LeaseExpiredError):
                client.consume("job", {"b": record.claim.demand["b"].scale(0.01)})  # type: ignore[union-attr]
            b = c.get("/v1/blocks/b", headers=auth(admin)).json()
            assert b["consumed"]["epsilon"] == pytest.approx(0.2)
            assert b["allocated"]["epsilon"] == pytest.approx(0.6)
            assert b["unlocked"]["epsilon"] == pytest.approx(0.2)
            # A job renewing with LeaseRenewer (a thread) is never expired, through several lease lengths.
            c.post("/v1/claims/next/release", json={"request_id": "r"}, headers=auth(alice))
            create(c, alice, {"id": "live", "demand": {"epsilon": 0.5}, "blocks": ["b"], "lease": LEASE})
            wait_state(c, alice, "live", "granted", 10)
            with LeaseRenewer(client, "live", LEASE) as renewer:
                time.sleep(3 * LEASE)
                assert claim(c, alice, "live")["state"] == "granted" and renewer.lost is None
            assert renewer.renewals >= 5
            wait_state(c, alice, "live", "expired", LEASE + SLACK + 5)  # and it lapses once renewing stops
            audit = c.get("/v1/ledger/audit", headers=auth(admin)).json()
            assert audit["ok"], audit
    finally:
        if job is not None and job.poll() is None:
            job.kill()
            job.wait(30)
        server.kill()
    with open_ledger(db, create=False) as led:
        assert led.audit().ok


# ----- leader failover ----------------------------------------------------------------------------------------
def test_failover_keeps_leases(db: str, tmp_path: Path) -> None:
    """Both claims granted by the first leader; it is SIGKILLed. Under the new leader the claim nobody renews
    expires, the one renewed through the surviving process stays granted, then expires when renewals stop."""
    admin = create_token(db, "ops", admin=True)
    alice = create_token(db, "alice")
    opts = {"extra": ["--lease-retry", "0.1", "--lease", str(LEASE)], "log_dir": tmp_path}
    first = start_server(db, "fcfs", **opts)  # type: ignore[arg-type]
    servers = [first]
    try:
        assert first.wait_leader(30)
        second = start_server(db, "fcfs", **opts)  # type: ignore[arg-type]
        servers.append(second)
        with httpx.Client(base_url=second.url, timeout=30) as c, ServiceClient(second.url, alice) as client:
            assert c.post("/v1/blocks", json={"id": "b", "budget": {"epsilon": 1.0}}, headers=auth(admin)).is_success
            for cid in ("kept", "dropped"):
                assert create(c, alice, {"id": cid, "demand": {"epsilon": 0.3}, "blocks": ["b"]})["lease"] == LEASE
                wait_state(c, alice, cid, "granted", 10)
            with LeaseRenewer(client, "kept", LEASE) as renewer:
                first.kill()
                killed = time.monotonic()
                assert claim(c, alice, "dropped")["state"] == "granted"  # the old leader did not expire it
                assert second.wait_leader(30), second.log()[-3000:]
                expired = wait_state(c, alice, "dropped", "expired", LEASE + SLACK + 10)
                assert expired - killed <= LEASE + SLACK + 1.0, f"expired {expired - killed:.2f} s after the kill"
                time.sleep(2 * LEASE)
                assert claim(c, alice, "kept")["state"] == "granted" and renewer.lost is None
            wait_state(c, alice, "kept", "expired", LEASE + SLACK + 5)
            b = c.get("/v1/blocks/b", headers=auth(admin)).json()
            assert b["allocated"]["epsilon"] == 0.0 and b["unlocked"]["epsilon"] == pytest.approx(1.0)
            audit = c.get("/v1/ledger/audit", headers=auth(admin)).json()
            assert audit["ok"], audit
    finally:
        for s in servers:
            if s.alive:
                s.kill()
    with open_ledger(db, create=False) as led:
        assert led.audit().ok


@pytest.mark.parametrize("value", ["nan", "-1", "inf", "abc"])
def test_serve_refuses_a_bad_default_lease(tmp_path: Path, value: str) -> None:
    from click.testing import CliRunner

    from dpf_sched.cli import main

    db = tmp_path / "l.db"
    result = CliRunner().invoke(main, ["serve", "--db", f"sqlite:///{db}", "--policy", "fcfs", "--lease", value])
    assert result.exit_code == 2 and "--lease" in result.output
    assert not db.exists()  # refused before anything was opened
