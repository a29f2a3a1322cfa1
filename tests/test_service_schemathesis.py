"""Schemathesis against the service's own OpenAPI description: every operation, generated inputs (valid and
invalid), with an admin token; no reply may be a server error. A bounded number of examples keeps it short."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from service_support import Server, auth, create_token, start_server

SERVER: dict[str, Any] = {}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    d = tmp_path_factory.mktemp("fuzz")
    db = f"sqlite:///{d / 'ledger.db'}?synchronous=normal"
    token = create_token(db, "ops", admin=True)
    srv = start_server(db, "dpf-n", {"N": 3}, log_dir=d)
    with httpx.Client(base_url=srv.url, timeout=30) as c:
        c.post("/v1/blocks", json={"id": "b0", "budget": {"epsilon": 1.0}}, headers=auth(token))
        c.post("/v1/claims", json={"id": "c0", "demand": {"epsilon": 0.1}, "blocks": ["b0"]}, headers=auth(token))
    SERVER["token"] = token
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api_schema(server: Server) -> Any:
    return schemathesis.openapi.from_url(server.url + "/openapi.json")


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
def test_no_server_errors(case: Any, server: Server) -> None:
    if case.path.endswith("/wait") and isinstance(case.query, dict):
        # Long polls may legally last a minute; keep the fuzzing fast (invalid values are still sent as is).
        t = case.query.get("timeout")
        if isinstance(t, (int, float)) and not isinstance(t, bool) and t > 0.05:
            case.query["timeout"] = 0.05
    response = case.call(base_url=server.url, headers=auth(SERVER["token"]), timeout=30)
    assert response.status_code < 500, (case.method, case.path, case.body, response.text)
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error", "detail"}, body


def test_audit_after_fuzzing(server: Server) -> None:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        r = c.get("/v1/ledger/audit", headers=auth(SERVER["token"]))
    assert r.status_code == 200 and r.json()["ok"], r.text
