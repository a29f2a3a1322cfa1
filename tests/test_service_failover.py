"""Two `dpf-sched serve` processes on one ledger: exactly one schedules; SIGKILL it while claims wait and the other
takes over, adopts what was written anywhere, rebuilds DPF-N's arrival counts, enforces deadlines and grants;
no grant is lost or duplicated and the audit passes. Runs on SQLite and, when DPF_SCHED_TEST_POSTGRES_URL is
set, on PostgreSQL (a fresh schema per test, dropped afterwards)."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import Server, auth, create_token, start_server, wait_for
from sql_ledger_support import PG_SKIP, drop_schemas, new_schema_name, pg_url

from dpf_sched.ledger.sql import open_ledger, open_store


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=PG_SKIP)])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    name = new_schema_name("dpf_svc")
    try:
        yield pg_url(name)
    finally:
        drop_schemas([name])


def journal(db: str) -> list[tuple[str, dict[str, object]]]:
    store = open_store(db, create=False)
    try:
        rows = store.execute("SELECT op, payload FROM dpf_journal ORDER BY seq")
    finally:
        store.close()
    return [(str(op), json.loads(p)) for op, p in rows]


def state(c: httpx.Client, token: str, cid: str) -> str:
    return str(c.get(f"/v1/claims/{cid}", headers=auth(token)).json()["state"])


def test_sigkill_the_leader_while_claims_wait(db: str, tmp_path: Path) -> None:
    admin = create_token(db, "ops", admin=True)
    alice = create_token(db, "alice")
    opts = {"params": {"N": 4}, "extra": ["--lease-retry", "0.1"], "log_dir": tmp_path}
    first = start_server(db, "dpf-n", **opts)  # type: ignore[arg-type]
    servers: list[Server] = [first]
    try:
        assert first.wait_leader(30)
        second = start_server(db, "dpf-n", **opts)  # type: ignore[arg-type]
        servers.append(second)
        assert second.ready() == {"status": "ready", "leader": False}
        with httpx.Client(base_url=second.url, timeout=30) as c:
            # Everything goes through the follower: the leader adopts what another process wrote.
            r = c.post("/v1/blocks", json={"id": "b", "budget": {"epsilon": 1.0}}, headers=auth(admin))
            assert r.status_code == 201
            for cid in ("c1", "c2"):
                r = c.post("/v1/claims", json={"id": cid, "demand": {"epsilon": 0.3}, "blocks": ["b"]},
                           headers=auth(alice))
                assert r.status_code == 201, r.text
            # A claim that can never fit before its deadline: the leader must expire it, whoever leads then.
            c.post("/v1/claims", json={"id": "late", "demand": {"epsilon": 0.9}, "blocks": ["b"], "timeout": 1.5},
                   headers=auth(alice))
            # Two arrivals + the late one = 3 → 3/4 unlocked: c1 granted (0.3), c2 too (0.3), 0.15 free.
            r = c.get("/v1/claims/c2/wait", params={"timeout": 20}, headers=auth(alice))
            assert r.json()["state"] == "granted", r.text
            c.post("/v1/claims", json={"id": "c3", "demand": {"epsilon": 0.3}, "blocks": ["b"]}, headers=auth(alice))
            # 4th arrival → fully unlocked: 0.4 free → c3 granted, 0.1 free.
            assert c.get("/v1/claims/c3/wait", params={"timeout": 20}, headers=auth(alice)).json()["state"] == "granted"
            c.post("/v1/claims", json={"id": "w1", "demand": {"epsilon": 0.3}, "blocks": ["b"]}, headers=auth(alice))
            c.post("/v1/claims", json={"id": "w2", "demand": {"epsilon": 0.05}, "blocks": ["b"]}, headers=auth(alice))
            assert c.get("/v1/claims/w2/wait", params={"timeout": 20}, headers=auth(alice)).json()["state"] == "granted"
            assert state(c, alice, "w1") == "waiting"
            # Block n: two arrivals before the kill (1/2 unlocked), two after. The new leader must count from 2.
            c.post("/v1/blocks", json={"id": "n", "budget": {"epsilon": 1.0}}, headers=auth(admin))
            for cid in ("n1", "n2"):
                c.post("/v1/claims", json={"id": cid, "demand": {"epsilon": 0.1}, "blocks": ["n"]}, headers=auth(alice))
                assert c.get(f"/v1/claims/{cid}/wait", params={"timeout": 20}, headers=auth(alice)).json()["state"] == (
                    "granted"
                )
            assert c.get("/v1/blocks/n", headers=auth(admin)).json()["locked"]["epsilon"] == pytest.approx(0.5)

            first.kill()  # SIGKILL: the lease dies with the process (flock) or its connection (advisory lock)
            assert second.wait_leader(30), second.log()[-3000:]

            # Written while (or right after) nobody led: adopted by the new leader.
            c.post("/v1/claims", json={"id": "w3", "demand": {"epsilon": 0.05}, "blocks": ["b"]}, headers=auth(alice))
            assert c.get("/v1/claims/w3/wait", params={"timeout": 20}, headers=auth(alice)).json()["state"] == "granted"
            assert state(c, alice, "w1") == "waiting"  # 0.1 - 0.05 = 0.05 free: still does not fit
            # A release through the new leader's API frees budget: the waiting claim from before the kill is granted.
            c.post("/v1/claims/c1/release", json={"request_id": "r1"}, headers=auth(alice))
            assert c.get("/v1/claims/w1/wait", params={"timeout": 20}, headers=auth(alice)).json()["state"] == "granted"
            for cid in ("n3", "n4"):
                c.post("/v1/claims", json={"id": cid, "demand": {"epsilon": 0.1}, "blocks": ["n"]}, headers=auth(alice))
                assert c.get(f"/v1/claims/{cid}/wait", params={"timeout": 20}, headers=auth(alice)).json()["state"] == (
                    "granted"
                )
            assert c.get("/v1/blocks/n", headers=auth(admin)).json()["locked"]["epsilon"] == 0.0  # 4 of N=4
            late = c.get("/v1/claims/late/wait", params={"timeout": 20}, headers=auth(alice)).json()
            assert late["state"] == "rejected" and late["reason"] == "timeout"
            audit = c.get("/v1/ledger/audit", headers=auth(admin)).json()
            assert audit["ok"], audit
    finally:
        for s in servers:
            if s.alive:
                s.kill()
    grants = Counter(str(p["claim"]) for op, p in journal(db) if op == "allocate")
    assert set(grants.values()) == {1}
    assert set(grants) == {f"alice/{x}" for x in ("c1", "c2", "c3", "w1", "w2", "w3", "n1", "n2", "n3", "n4")}
    with open_ledger(db, create=False) as led:
        assert led.audit().ok


def test_repeated_failover_loses_and_duplicates_nothing(db: str, tmp_path: Path) -> None:
    """Kill whichever process leads, three times, while a stream of claims arrives through the survivors."""
    admin = create_token(db, "ops", admin=True)
    alice = create_token(db, "alice")
    opts = {"extra": ["--lease-retry", "0.1"], "log_dir": tmp_path}
    servers = [start_server(db, "fcfs", **opts) for _ in range(2)]  # type: ignore[arg-type]
    submitted: list[str] = []
    try:
        wait_for(lambda: any(s.ready() and s.ready()["leader"] for s in servers))  # type: ignore[index]
        with httpx.Client(timeout=30) as c:
            url = servers[0].url
            r = c.post(url + "/v1/blocks", json={"id": "b", "budget": {"epsilon": 100.0}}, headers=auth(admin))
            assert r.status_code == 201
            for rnd in range(3):
                leader = next(s for s in servers if s.alive and (s.ready() or {}).get("leader"))
                follower = next(s for s in servers if s is not leader and s.alive)
                for k in range(5):
                    cid = f"r{rnd}-{k}"
                    r = c.post(follower.url + "/v1/claims", json={"id": cid, "demand": {"epsilon": 1.0},
                                                                 "blocks": ["b"]}, headers=auth(alice))
                    assert r.status_code == 201
                    submitted.append(cid)
                leader.kill()
                servers.remove(leader)
                servers.append(start_server(db, "fcfs", **opts))  # type: ignore[arg-type]
                assert follower.wait_leader(30)
            for cid in submitted:
                r = c.get(f"{servers[0].url}/v1/claims/{cid}/wait", params={"timeout": 20}, headers=auth(alice))
                assert r.json()["state"] == "granted", r.text
    finally:
        for s in servers:
            if s.alive:
                s.kill()
    grants = Counter(str(p["claim"]) for op, p in journal(db) if op == "allocate")
    assert grants == Counter({f"alice/{cid}": 1 for cid in submitted})
    with open_ledger(db, create=False) as led:
        assert led.audit().ok
