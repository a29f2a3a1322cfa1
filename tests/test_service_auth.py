"""The service's authorisation matrix: every endpoint × no / malformed / wrong / revoked / tenant / admin token ×
own / other tenant's / unknown object; no reply tells another tenant's claim from an unknown one."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from service_support import Server, auth, create_token, revoke_token, run_cli, start_server, token_id


@dataclass
class World:
    server: Server
    admin: str
    alice: str
    bob: str
    revoked: str
    wrong: str
    block: str
    alice_claim: str
    bob_claim: str


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    d = tmp_path_factory.mktemp("auth")
    db = f"sqlite:///{d / 'ledger.db'}?synchronous=normal"
    admin = create_token(db, "ops", admin=True)
    alice = create_token(db, "alice")
    bob = create_token(db, "bob")
    revoked = create_token(db, "alice")
    revoke_token(db, revoked)
    # A well-formed token whose id exists but whose secret is wrong.
    wrong = alice.split(".", 1)[0] + "." + "A" * 43
    server = start_server(db, "drf", log_dir=d)
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = "blk"
        r = c.post("/v1/blocks", json={"id": bid, "budget": {"epsilon": 1.0}}, headers=auth(admin))
        assert r.status_code == 201
        # A hog holds most of the block so that the claims below keep waiting (withdraw stays possible).
        c.post("/v1/claims", json={"id": "hog", "demand": {"epsilon": 0.95}, "blocks": [bid]}, headers=auth(admin))
        for tok in (alice, bob):
            r = c.post("/v1/claims", json={"id": "same-id", "demand": {"epsilon": 0.5}, "blocks": [bid]},
                       headers=auth(tok))
            assert r.status_code == 201, r.text  # ids are per tenant: both may use "same-id"
    try:
        yield World(server, admin, alice, bob, revoked, wrong, bid, "same-id", "same-id")
    finally:
        server.stop()


def test_tokens_cli_lists_without_secrets(world: World) -> None:
    out = run_cli("tokens", "list", "--db", world.server.db, "--json").stdout
    for tok in (world.admin, world.alice, world.bob, world.revoked):
        assert token_id(tok) in out
        assert tok.split(".", 1)[1] not in out
    assert '"revoked_at": null' in out and out.count('"role": "admin"') == 1


# (method, path, body, admin only)
COLLECTION = [
    ("GET", "/v1/ledger", None, False),
    ("GET", "/v1/ledger/audit", None, True),
    ("POST", "/v1/blocks", "NEWBLOCK", True),
    ("GET", "/v1/blocks", None, True),
    ("GET", "/v1/blocks/blk", None, True),
    ("POST", "/v1/blocks/select", {"selector": {}}, False),
    ("POST", "/v1/claims", {"demand": {"epsilon": 0.01}, "blocks": ["blk"]}, False),
    ("GET", "/v1/claims", None, False),
]
CLAIM = [
    ("GET", "/v1/claims/{id}", None),
    ("GET", "/v1/claims/{id}/wait?timeout=0", None),
    ("POST", "/v1/claims/{id}/consume", {"request_id": "REQ"}),
    ("POST", "/v1/claims/{id}/release", {"request_id": "REQ"}),
    ("POST", "/v1/claims/{id}/withdraw", {}),
]
ALL = [(m, p, b) for m, p, b, _ in COLLECTION] + [(m, p.replace("{id}", "same-id"), b) for m, p, b in CLAIM]


def call(c: httpx.Client, method: str, path: str, body: object, headers: dict[str, str]) -> httpx.Response:
    if body == "NEWBLOCK":
        body = {"id": f"b-{uuid.uuid4().hex[:8]}", "budget": {"epsilon": 1.0}}
    elif isinstance(body, dict) and body.get("request_id") == "REQ":
        body = {"request_id": uuid.uuid4().hex}
    return c.request(method, path, json=body, headers=headers)


@pytest.mark.parametrize(("method", "path", "body"), ALL)
@pytest.mark.parametrize("who", ["none", "basic", "malformed", "wrong", "revoked", "unknown-id"])
def test_no_valid_token_is_401(world: World, method: str, path: str, body: object, who: str) -> None:
    headers = {
        "none": {},
        "basic": {"Authorization": "Basic YWxpY2U6c2VjcmV0"},
        "malformed": auth("not-a-token"),
        "wrong": auth(world.wrong),
        "revoked": auth(world.revoked),
        "unknown-id": auth("dpf_000000000000." + "B" * 43),
    }[who]
    with httpx.Client(base_url=world.server.url, timeout=30) as c:
        r = call(c, method, path, body, headers)
    assert r.status_code == 401, (who, method, path, r.text)
    assert r.json()["error"] == "unauthenticated"
    assert r.headers.get("www-authenticate", "").lower().startswith("bearer")


@pytest.mark.parametrize(("method", "path", "body", "admin_only"), COLLECTION)
def test_collection_endpoints_by_role(world: World, method: str, path: str, body: object, admin_only: bool) -> None:
    with httpx.Client(base_url=world.server.url, timeout=30) as c:
        as_tenant = call(c, method, path, body, auth(world.alice))
        as_admin = call(c, method, path, body, auth(world.admin))
    if admin_only:
        assert as_tenant.status_code == 403 and as_tenant.json()["error"] == "forbidden"
    else:
        assert as_tenant.status_code in (200, 201), as_tenant.text
    assert as_admin.status_code in (200, 201), as_admin.text


@pytest.mark.parametrize(("method", "path", "body"), CLAIM)
def test_claim_endpoints_own_other_unknown(world: World, method: str, path: str, body: object) -> None:
    with httpx.Client(base_url=world.server.url, timeout=30) as c:
        unknown = call(c, method, path.replace("{id}", "no-such-claim"), body, auth(world.bob))
        # Bob has a claim "same-id" of his own; carol-like access: admin (tenant "ops") has none by that id.
        other_admin = call(c, method, path.replace("{id}", "same-id"), body, auth(world.admin))
        other_tenant = call(c, method, path.replace("{id}", "hog"), body, auth(world.alice))
        own = call(c, method, path.replace("{id}", "same-id"), body, auth(world.alice))
    assert unknown.status_code == 404
    for r in (other_admin, other_tenant):
        assert r.status_code == 404, r.text
        assert r.content == unknown.content  # byte for byte: nothing tells them apart
        assert r.headers.get("content-length") == unknown.headers.get("content-length")
    # The owner reaches its claim: a reply, or a state conflict (consume/release of a waiting claim).
    assert own.status_code in (200, 409), own.text


def test_lists_show_only_own_claims(world: World) -> None:
    with httpx.Client(base_url=world.server.url, timeout=30) as c:
        alice = c.get("/v1/claims", headers=auth(world.alice)).json()["claims"]
        admin = c.get("/v1/claims", headers=auth(world.admin)).json()["claims"]
    assert "hog" not in [x["id"] for x in alice]
    assert "hog" in [x["id"] for x in admin] and "same-id" not in [x["id"] for x in admin]


def test_withdraw_by_another_tenant_changes_nothing(world: World) -> None:
    with httpx.Client(base_url=world.server.url, timeout=30) as c:
        before = c.get("/v1/claims/hog", headers=auth(world.admin)).json()
        r = c.post("/v1/claims/hog/withdraw", json={}, headers=auth(world.bob))
        after = c.get("/v1/claims/hog", headers=auth(world.admin)).json()
    assert r.status_code == 404 and before == after


def test_revocation_takes_effect_at_once(world: World, tmp_path: object) -> None:
    tok = create_token(world.server.db, "dave")
    with httpx.Client(base_url=world.server.url, timeout=30) as c:
        assert c.get("/v1/claims", headers=auth(tok)).status_code == 200
        revoke_token(world.server.db, tok)
        assert c.get("/v1/claims", headers=auth(tok)).status_code == 401


def test_bad_tenant_names_are_refused() -> None:
    proc = run_cli("tokens", "create", "--db", "sqlite:///unused.db", "--tenant", "a/b", check=False)
    assert proc.returncode == 2 and "tenant" in proc.stderr and not proc.stdout
