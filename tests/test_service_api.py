"""The HTTP service end to end: a real `dpf-sched serve` on loopback (docs/service.md).

Flows (block, claim, long poll, grant, consume with a request id and its retry, release, audit), safe retries
of a create, withdrawal, selectors, and bad input: 422 with the reason, 413 over 1 MiB, structured logs.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from service_support import Server, auth, create_token, start_server


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str, str]]:
    d = tmp_path_factory.mktemp("svc")
    db = f"sqlite:///{d / 'ledger.db'}?synchronous=normal"
    admin = create_token(db, "ops", admin=True)
    alice = create_token(db, "alice")
    server = start_server(db, "drf", log_dir=d)
    try:
        yield server, admin, alice
    finally:
        server.stop()


@pytest.fixture(scope="module")
def renyi(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    d = tmp_path_factory.mktemp("svc_renyi")
    db = f"sqlite:///{d / 'ledger.db'}?synchronous=normal"
    admin = create_token(db, "ops", admin=True, composition="renyi")
    server = start_server(db, "dpf-n", {"N": 1}, log_dir=d)
    try:
        yield server, admin
    finally:
        server.stop()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def block(c: httpx.Client, admin: str, eps: float = 1.0) -> str:
    bid = new_id("b")
    r = c.post("/v1/blocks", json={"id": bid, "budget": {"epsilon": eps}}, headers=auth(admin))
    assert r.status_code == 201, r.text
    return bid


def test_full_flow_with_idempotent_consume(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = block(c, admin)
        r = c.post("/v1/claims", json={"id": "job1", "demand": {"epsilon": 0.5}, "blocks": [bid], "label": "train"},
                   headers=auth(alice))
        assert r.status_code == 201, r.text
        assert r.json()["state"] in ("waiting", "granted") and r.json()["label"] == "train"
        r = c.get("/v1/claims/job1/wait", params={"timeout": 10}, headers=auth(alice))
        out = r.json()
        assert r.status_code == 200 and out["state"] == "granted", out
        assert out["remaining"][bid]["epsilon"] == 0.5 and out["decided_at"] is not None

        body = {"request_id": "consume-1", "amounts": {bid: {"epsilon": 0.2}}}
        first = c.post("/v1/claims/job1/consume", json=body, headers=auth(alice))
        again = c.post("/v1/claims/job1/consume", json=body, headers=auth(alice))
        assert first.status_code == again.status_code == 200
        assert first.json() == again.json()
        assert first.json()["consumed"][bid]["epsilon"] == pytest.approx(0.2)
        b = c.get(f"/v1/blocks/{bid}", headers=auth(admin)).json()
        assert b["consumed"]["epsilon"] == pytest.approx(0.2)  # applied once
        # The same request id for a different request is a conflict.
        other = {"request_id": "consume-1", "amounts": {bid: {"epsilon": 0.1}}}
        assert c.post("/v1/claims/job1/consume", json=other, headers=auth(alice)).status_code == 409

        r1 = c.post("/v1/claims/job1/release", json={"request_id": "rel-1"}, headers=auth(alice))
        r2 = c.post("/v1/claims/job1/release", json={"request_id": "rel-1"}, headers=auth(alice))
        assert r1.status_code == r2.status_code == 200 and r1.json() == r2.json()
        assert r1.json()["state"] == "released"
        b = c.get(f"/v1/blocks/{bid}", headers=auth(admin)).json()
        assert b["allocated"]["epsilon"] == 0.0 and b["unlocked"]["epsilon"] == pytest.approx(0.8)
        # Releasing again with a new request id: the claim is finished.
        r3 = c.post("/v1/claims/job1/release", json={"request_id": "rel-2"}, headers=auth(alice))
        assert r3.status_code == 409 and r3.json()["error"] == "conflict"

        audit = c.get("/v1/ledger/audit", headers=auth(admin))
        assert audit.status_code == 200 and audit.json()["ok"], audit.text
        listed = c.get("/v1/claims", headers=auth(alice)).json()["claims"]
        assert "job1" in [x["id"] for x in listed]


def test_consume_all_finishes_as_consumed_and_wakes_nothing_else(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = block(c, admin)
        cid = new_id("c")
        c.post("/v1/claims", json={"id": cid, "demand": {"epsilon": 0.4}, "blocks": [bid]}, headers=auth(alice))
        assert c.get(f"/v1/claims/{cid}/wait", params={"timeout": 10}, headers=auth(alice)).json()["state"] == "granted"
        r = c.post(f"/v1/claims/{cid}/consume", json={"request_id": new_id("r")}, headers=auth(alice))
        assert r.status_code == 200 and r.json()["state"] == "consumed"


def test_release_wakes_a_waiting_claim(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = block(c, admin)
        a, w = new_id("a"), new_id("w")
        c.post("/v1/claims", json={"id": a, "demand": {"epsilon": 0.7}, "blocks": [bid]}, headers=auth(alice))
        assert c.get(f"/v1/claims/{a}/wait", params={"timeout": 10}, headers=auth(alice)).json()["state"] == "granted"
        c.post("/v1/claims", json={"id": w, "demand": {"epsilon": 0.7}, "blocks": [bid]}, headers=auth(alice))
        start = time.monotonic()
        r = c.get(f"/v1/claims/{w}/wait", params={"timeout": 0.5}, headers=auth(alice))
        assert r.json()["state"] == "waiting" and time.monotonic() - start >= 0.45  # the long poll timed out
        c.post(f"/v1/claims/{a}/release", json={"request_id": new_id("r")}, headers=auth(alice))
        r = c.get(f"/v1/claims/{w}/wait", params={"timeout": 10}, headers=auth(alice))
        assert r.json()["state"] == "granted"


def test_create_retry_same_body_and_conflict(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = block(c, admin)
        body = {"id": new_id("c"), "demand": {"epsilon": 0.1}, "blocks": [bid], "timeout": 100.0}
        r1 = c.post("/v1/claims", json=body, headers=auth(alice))
        r2 = c.post("/v1/claims", json=body, headers=auth(alice))
        assert r1.status_code == 201 and r2.status_code == 200
        assert r2.json()["id"] == body["id"] and r2.json()["arrival"] == r1.json()["arrival"]
        r3 = c.post("/v1/claims", json=body | {"demand": {"epsilon": 0.2}}, headers=auth(alice))
        assert r3.status_code == 409 and r3.json()["error"] == "conflict"
        # No id: the server makes one.
        r4 = c.post("/v1/claims", json={"demand": {"epsilon": 0.1}, "blocks": [bid]}, headers=auth(alice))
        assert r4.status_code == 201 and r4.json()["id"]


def test_withdraw(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = block(c, admin, eps=1.0)
        cid = new_id("c")
        # More than is free but less than the capacity: it waits.
        c.post("/v1/claims", json={"id": new_id("hog"), "demand": {"epsilon": 0.9}, "blocks": [bid]},
               headers=auth(alice))
        time.sleep(0.2)
        r = c.post("/v1/claims", json={"id": cid, "demand": {"epsilon": 0.5}, "blocks": [bid]}, headers=auth(alice))
        assert r.status_code == 201
        r = c.post(f"/v1/claims/{cid}/withdraw", json={}, headers=auth(alice))
        assert r.status_code == 200 and r.json()["state"] == "rejected" and r.json()["reason"] == "withdrawn"
        r = c.post(f"/v1/claims/{cid}/withdraw", json={}, headers=auth(alice))
        assert r.status_code == 409


def test_impossible_claim_is_rejected_at_once(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = block(c, admin, eps=1.0)
        r = c.post("/v1/claims", json={"demand": {"epsilon": 2.0}, "blocks": [bid]}, headers=auth(alice))
        assert r.status_code == 201 and r.json()["state"] == "rejected" and "can ever provide" in r.json()["reason"]


def test_selectors(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        tag = uuid.uuid4().hex[:6]
        ids = []
        for _ in range(3):
            bid = new_id("s")
            r = c.post("/v1/blocks", json={"id": bid, "budget": {"epsilon": 1.0}, "attributes": {"tag": tag}},
                       headers=auth(admin))
            assert r.status_code == 201
            ids.append(bid)
        r = c.post("/v1/blocks/select", json={"selector": {"attributes": {"tag": tag}, "latest": 2}},
                   headers=auth(alice))
        assert r.status_code == 200 and r.json() == {"blocks": ids[1:]}
        r = c.post("/v1/claims", json={"demand": {"epsilon": 0.1}, "selector": {"attributes": {"tag": tag}}},
                   headers=auth(alice))
        assert r.status_code == 201 and r.json()["blocks"] == ids
        r = c.post("/v1/blocks/select", json={"selector": {"attributes": {"tag": "none"}}}, headers=auth(alice))
        assert r.status_code == 422 and "min_blocks" in r.json()["detail"]


def test_ledger_info_and_duplicate_block(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        assert c.get("/v1/ledger", headers=auth(alice)).json() == {"composition": "basic"}
        bid = block(c, admin)
        r = c.post("/v1/blocks", json={"id": bid, "budget": {"epsilon": 1.0}}, headers=auth(admin))
        assert r.status_code == 409 and r.json()["error"] == "conflict"
        assert c.get("/v1/blocks/nope", headers=auth(admin)).status_code == 404
        assert c.get("/healthz").json() == {"status": "ok"}
        assert c.get("/readyz").json() == {"status": "ready", "leader": True}
        spec = c.get("/openapi.json").json()
        assert "/v1/claims/{claim_id}/wait" in spec["paths"]


BAD_CLAIMS = [
    ('{"demand": {"epsilon": NaN}, "blocks": ["B"]}', "NaN"),
    ('{"demand": {"epsilon": Infinity}, "blocks": ["B"]}', "infinite"),
    ('{"demand": {"epsilon": -0.1}, "blocks": ["B"]}', "negative"),
    ('{"demand": {"epsilon": 0.0}, "blocks": ["B"]}', "zero"),
    ('{"demand": {"epsilon": 0.1, "delta": 1.5}, "blocks": ["B"]}', "delta"),
    ('{"demand": {"epsilon": "0.1"}, "blocks": ["B"]}', "demand.epsilon"),
    ('{"demand": {"epsilon": 0.1}, "blocks": ["nope"]}', "unknown blocks"),
    ('{"demand": {"epsilon": 0.1}, "blocks": []}', "no blocks"),
    ('{"demand": {"epsilon": 0.1}, "blocks": ["B", "B"]}', "twice"),
    ('{"demand": {"epsilon": 0.1}}', "blocks"),
    ('{"blocks": ["B"]}', "demand"),
    ('{"demand": {"epsilon": 0.1}, "blocks": ["B"], "timeout": -1}', "timeout"),
    ('{"demand": {"epsilon": 0.1}, "blocks": ["B"], "weight": 0}', "weight"),
    ('{"demand": {"epsilon": 0.1}, "blocks": ["B"], "colour": "red"}', "colour"),
    ('{"demand": {"rdp": [0.1, 0.2]}, "blocks": ["B"]}', "Rényi"),
    ('{"id": "a/b", "demand": {"epsilon": 0.1}, "blocks": ["B"]}', "id"),
    ('{"demands": {"B": {"epsilon": 0.1}}, "blocks": ["C"]}', "exactly the blocks"),
    ("[1, 2]", "body"),
    ("{not json", "JSON"),
]


@pytest.mark.parametrize(("text", "reason"), BAD_CLAIMS)
def test_bad_claims_are_422_with_the_reason(env: tuple[Server, str, str], text: str, reason: str) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = block(c, admin)
        body = text.replace('"B"', json.dumps(bid)).replace('"C"', json.dumps(bid + "x"))
        r = c.post("/v1/claims", content=body, headers=auth(alice) | {"Content-Type": "application/json"})
        assert r.status_code == 422, (text, r.text)
        out = r.json()
        assert out["error"] == "invalid" and reason.lower() in out["detail"].lower(), (text, out)


def test_bad_consume_and_blocks(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = block(c, admin)
        cid = new_id("c")
        c.post("/v1/claims", json={"id": cid, "demand": {"epsilon": 0.3}, "blocks": [bid]}, headers=auth(alice))
        assert c.get(f"/v1/claims/{cid}/wait", params={"timeout": 10}, headers=auth(alice)).json()["state"] == "granted"
        over = {"request_id": new_id("r"), "amounts": {bid: {"epsilon": 0.5}}}
        assert c.post(f"/v1/claims/{cid}/consume", json=over, headers=auth(alice)).status_code == 409
        unknown = {"request_id": new_id("r"), "amounts": {"zzz": {"epsilon": 0.1}}}
        r = c.post(f"/v1/claims/{cid}/consume", json=unknown, headers=auth(alice))
        assert r.status_code == 422 and "zzz" in r.json()["detail"]
        assert c.post(f"/v1/claims/{cid}/consume", json={}, headers=auth(alice)).status_code == 422
        r = c.post("/v1/blocks", json={"id": new_id("b"), "budget": {"epsilon": 0}}, headers=auth(admin))
        assert r.status_code == 422 and "positive" in r.json()["detail"]
        r = c.post("/v1/blocks", json={"id": new_id("b"), "budget": {"epsilon": -1}}, headers=auth(admin))
        assert r.status_code == 422
        r = c.get(f"/v1/claims/{cid}/wait", params={"timeout": "soon"}, headers=auth(alice))
        assert r.status_code == 422 and "timeout" in r.json()["detail"]
        r = c.get(f"/v1/claims/{cid}/wait", params={"timeout": -1}, headers=auth(alice))
        assert r.status_code == 422


def test_renyi_grid_length_and_eps_delta_capacity(renyi: tuple[Server, str]) -> None:
    server, admin = renyi
    with httpx.Client(base_url=server.url, timeout=30) as c:
        info = c.get("/v1/ledger", headers=auth(admin)).json()
        assert info["composition"] == "renyi"
        k = len(info["alphas"])
        r = c.post("/v1/blocks", json={"id": "r1", "budget": {"epsilon": 10.0, "delta": 1e-7}}, headers=auth(admin))
        assert r.status_code == 201 and len(r.json()["capacity"]["rdp"]) == k
        bad = {"demand": {"rdp": [0.1] * (k + 1)}, "blocks": ["r1"]}
        r = c.post("/v1/claims", json=bad, headers=auth(admin))
        assert r.status_code == 422 and "α grid" in r.json()["detail"]
        ok = {"id": "rc", "demand": {"rdp": [0.1] * k}, "blocks": ["r1"]}
        assert c.post("/v1/claims", json=ok, headers=auth(admin)).status_code == 201
        r = c.get("/v1/claims/rc/wait", params={"timeout": 10}, headers=auth(admin))
        assert r.json()["state"] == "granted" and len(r.json()["remaining"]["r1"]["rdp"]) == k


def test_body_over_1_mib_is_413(env: tuple[Server, str, str]) -> None:
    server, _admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        big = json.dumps({"demand": {"epsilon": 0.1}, "blocks": ["x" * (1 << 20)]})
        r = c.post("/v1/claims", content=big, headers=auth(alice) | {"Content-Type": "application/json"})
        assert r.status_code == 413 and r.json()["error"] == "too_large"

        def chunks() -> Iterator[bytes]:  # no Content-Length: streamed
            for _ in range(20):
                yield b" " * (64 * 1024)

        r = c.post("/v1/claims", content=chunks(), headers=auth(alice) | {"Content-Type": "application/json"})
        assert r.status_code == 413


def test_logs_are_json_lines_with_tenant_and_never_the_token(env: tuple[Server, str, str]) -> None:
    server, admin, alice = env
    with httpx.Client(base_url=server.url, timeout=30) as c:
        c.get("/v1/claims", headers=auth(alice))
    time.sleep(0.2)
    lines = [json.loads(x) for x in Path(server.log_path).read_text().splitlines() if x.strip()]
    access = [x for x in lines if x.get("logger") == "dpf_sched.service.access"]
    assert access
    mine = [x for x in access if x["path"] == "/v1/claims" and x["method"] == "GET"]
    assert mine and mine[-1]["tenant"] == "alice" and mine[-1]["status"] == 200 and "latency_ms" in mine[-1]
    text = Path(server.log_path).read_text()
    for token in (admin, alice):
        assert token not in text and token.split(".", 1)[1] not in text
