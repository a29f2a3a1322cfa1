"""Service input and identity hardening (issue 14, section 2): each test here failed on the code before its fix.

* concurrent identical creates all answer 200/201 with the one claim (finding 2);
* free-form JSON fields are bounded in depth and size, and nothing unserialisable is committed (finding 3);
* identifiers (tenant names, tokens) are validated by full matches: no trailing newline (finding 8);
* the SQLite grant lease is keyed on the database file, not on the path string (finding 6);
* the PostgreSQL advisory-lock key of a schema does not collide with another schema's (finding 7);
* whether a tenant's claim is rejected at once does not depend on others' consumption (finding 9);
* a reused request id is 409 whichever process applied it first (issue 19).
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from service_support import Server, auth, create_token, run_cli, start_server
from sql_ledger_support import PG_SKIP, PG_URL, SchemaPool, drop_schemas, pg_url

from dpf_sched.errors import InvalidParameterError, LedgerStorageError
from dpf_sched.ledger.sql import open_ledger, open_store
from dpf_sched.ledger.sql.stores import PostgresStore, SqliteStore, advisory_key
from dpf_sched.service.app import ApiError, Service, ServiceConfig
from dpf_sched.service.models import BlockCreate, ClaimCreate, ConsumeRequest
from dpf_sched.service.tables import Principal, Role, ServiceTables, check_tenant


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgresql", marks=PG_SKIP)])
def served(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Server, str, str]]:
    """A `dpf-sched serve` on SQLite or a fresh PostgreSQL schema, with an admin and a tenant token."""
    d = tmp_path_factory.mktemp("hard")
    pool = SchemaPool()
    db = f"sqlite:///{d / 'ledger.db'}?synchronous=normal" if request.param == "sqlite" else pool.url()
    try:
        admin = create_token(db, "ops", admin=True)
        alice = create_token(db, "alice")
        server = start_server(db, "fcfs", log_dir=d)
        try:
            yield server, admin, alice
        finally:
            server.stop()
    finally:
        pool.close()


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def make_block(c: httpx.Client, admin: str, eps: float = 1.0, **extra: object) -> str:
    bid = new_id("b")
    r = c.post("/v1/blocks", json={"id": bid, "budget": {"epsilon": eps}, **extra}, headers=auth(admin))
    assert r.status_code == 201, r.text
    return bid


# ----- finding 2: concurrent identical creates ---------------------------------------------------------------
def test_concurrent_identical_creates_all_get_the_claim(served: tuple[Server, str, str]) -> None:
    """Many identical POSTs at once, many rounds: exactly one 201 per round, every other answer 200 with the
    same claim; the same id with another body still gets 409."""
    server, admin, alice = served
    rounds, width = 25, 6
    statuses: list[int] = []
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = make_block(c, admin, eps=1000.0)
    clients = [httpx.Client(base_url=server.url, timeout=30) for _ in range(width)]
    try:
        for _ in range(rounds):
            body = {"id": new_id("dup"), "demand": {"epsilon": 0.001}, "blocks": [bid], "label": "x"}
            barrier = threading.Barrier(width)
            replies: list[httpx.Response | None] = [None] * width

            def post(i: int, body: dict[str, object] = body, barrier: threading.Barrier = barrier,
                     replies: list[httpx.Response | None] = replies) -> None:
                barrier.wait()
                replies[i] = clients[i].post("/v1/claims", json=body, headers=auth(alice))

            threads = [threading.Thread(target=post, args=(i,)) for i in range(width)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            got = [r.status_code for r in replies if r is not None]
            statuses += got
            assert len(got) == width
            assert sorted(got) == [200] * (width - 1) + [201], [r.text for r in replies if r is not None]
            ids = {r.json()["id"] for r in replies if r is not None}
            arrivals = {r.json()["arrival"] for r in replies if r is not None}
            assert ids == {body["id"]} and len(arrivals) == 1
        with httpx.Client(base_url=server.url, timeout=30) as c:
            other = body | {"demand": {"epsilon": 0.002}}
            r = c.post("/v1/claims", json=other, headers=auth(alice))
            assert r.status_code == 409 and r.json()["error"] == "conflict"
    finally:
        for cl in clients:
            cl.close()
    assert statuses.count(201) == rounds


# ----- finding 3: free-form JSON is bounded ------------------------------------------------------------------
def nested(depth: int) -> str:
    """A JSON object ``{"a": [[...]]}`` whose nesting (the object included) is ``depth`` levels."""
    return '{"a":' + "[" * (depth - 1) + "]" * (depth - 1) + "}"


def post_text(c: httpx.Client, path: str, text: str, token: str) -> httpx.Response:
    # surrogatepass: a JSON escape such as \\ud800 is sent as the client wrote it.
    return c.post(path, content=text.encode("utf-8", "surrogatepass"),
                  headers=auth(token) | {"Content-Type": "application/json"})


@pytest.mark.parametrize("depth", [33, 256, 950, 3000])
def test_deep_free_form_json_is_422_and_listings_stay_200(served: tuple[Server, str, str], depth: int) -> None:
    server, admin, alice = served
    with httpx.Client(base_url=server.url, timeout=30) as c:
        bid = make_block(c, admin)
        deep = nested(depth)
        attempts = [
            ("/v1/claims", f'{{"demand":{{"epsilon":0.1}},"selector":{{"attributes":{deep}}}}}', alice),
            ("/v1/blocks/select", f'{{"selector":{{"attributes":{deep}}}}}', alice),
            ("/v1/blocks", f'{{"id":"{new_id("d")}","budget":{{"epsilon":1}},"attributes":{deep}}}', admin),
        ]
        for path, text, token in attempts:
            r = post_text(c, path, text, token)
            assert r.status_code == 422, (path, depth, r.text)
            assert r.json()["error"] == "invalid" and "nest" in r.json()["detail"], r.text
        assert c.get("/v1/blocks", headers=auth(admin)).status_code == 200
        assert c.get(f"/v1/blocks/{bid}", headers=auth(admin)).status_code == 200
        assert c.get("/v1/claims", headers=auth(alice)).status_code == 200


def test_free_form_json_limits_and_what_fits(served: tuple[Server, str, str]) -> None:
    """32 levels fit; non-finite numbers, lone surrogates and fields over 64 KiB are 422; nothing is committed."""
    server, admin, alice = served
    with httpx.Client(base_url=server.url, timeout=30) as c:
        ok = new_id("ok")
        r = post_text(c, "/v1/blocks", f'{{"id":"{ok}","budget":{{"epsilon":1}},"attributes":{nested(32)}}}', admin)
        assert r.status_code == 201, r.text
        bad = {
            "NaN": "finite",
            "-Infinity": "finite",
            '"\\ud800"': "surrogate",
            '{"\\udfff": 1}': "surrogate",
            '"' + "x" * (64 * 1024) + '"': "bytes",
        }
        names = []
        for value, reason in bad.items():
            name = new_id("bad")
            names.append(name)
            r = post_text(c, "/v1/blocks", f'{{"id":"{name}","budget":{{"epsilon":1}},"attributes":{{"a":{value}}}}}',
                          admin)
            assert r.status_code == 422 and reason in r.json()["detail"], (value[:20], r.text)
            claim = f'{{"demand":{{"epsilon":0.1}},"selector":{{"attributes":{{"a":{value}}}}}}}'
            r = post_text(c, "/v1/claims", claim, alice)
            assert r.status_code == 422 and reason in r.json()["detail"], (value[:20], r.text)
        r = post_text(c, "/v1/blocks", '{"id":"x","budget":{"epsilon":1},"attributes":{"a":' + "9" * 5000 + "}}", admin)
        assert r.status_code == 422, r.text
        listed = c.get("/v1/blocks", headers=auth(admin))
        assert listed.status_code == 200
        ids = {b["id"] for b in listed.json()["blocks"]}
        assert ok in ids and not ids & set(names)
        assert c.get(f"/v1/blocks/{ok}", headers=auth(admin)).json()["attributes"] == json.loads(nested(32))


# ----- finding 8: identifiers are full matches ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["alice\n"])
def test_tenant_with_a_newline_is_refused_by_the_cli(tmp_path: Path, name: str) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    create_token(db, "alice")
    proc = run_cli("tokens", "create", "--db", db, "--tenant", name, check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "tenant" in proc.stderr, proc.stderr
    assert not proc.stdout
    listed = json.loads(run_cli("tokens", "list", "--db", db, "--json").stdout)
    assert [t["tenant"] for t in listed] == ["alice"]


def test_identifiers_with_a_trailing_newline_are_refused_by_the_api(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'ledger.db'}"
    token = create_token(db, "alice")
    tables = ServiceTables(open_store(db, create=False))
    try:
        assert tables.verify(token) is not None
        assert tables.verify(token + "\n") is None  # the same secret plus a newline is not the token
        with pytest.raises(InvalidParameterError, match="tenant"):
            tables.create_token("alice\n")
        with pytest.raises(InvalidParameterError):
            check_tenant("bob\n")
        assert [t.tenant for t in tables.list_tokens()] == ["alice"]
    finally:
        tables.close()


# ----- finding 6: the SQLite grant lease is keyed on the file ------------------------------------------------
def test_sqlite_lease_is_keyed_on_the_file_not_the_path(tmp_path: Path) -> None:
    (tmp_path / "dbs").mkdir()
    (tmp_path / "links").mkdir()
    real = tmp_path / "dbs" / "a.db"
    SqliteStore(str(real)).close()
    link = tmp_path / "links" / "b.db"
    os.symlink(real, link)
    aliases = [str(link), str(tmp_path / "links" / ".." / "dbs" / "a.db"), os.path.relpath(real)]
    first = SqliteStore(str(real))
    others = [SqliteStore(p) for p in aliases]
    try:
        assert first.try_grant_lease()
        assert [s.try_grant_lease() for s in others] == [False] * len(aliases)
        first.release_grant_lease()
        assert others[0].try_grant_lease() and not first.try_grant_lease()
    finally:
        for s in [first, *others]:
            s.close()


def test_sqlite_ledger_with_hard_links_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "a.db"
    SqliteStore(str(real)).close()
    os.link(real, tmp_path / "b.db")
    for p in (real, tmp_path / "b.db"):
        with pytest.raises(LedgerStorageError, match="hard links"):
            SqliteStore(str(p))


def test_two_servers_on_a_symlinked_sqlite_ledger_have_one_leader(tmp_path: Path) -> None:
    (tmp_path / "dbs").mkdir()
    (tmp_path / "links").mkdir()
    os.symlink(tmp_path / "dbs" / "a.db", tmp_path / "links" / "b.db")
    db_a = f"sqlite:///{tmp_path / 'dbs' / 'a.db'}"
    db_b = f"sqlite:///{tmp_path / 'links' / 'b.db'}"
    extra = ["--lease-retry", "0.1"]  # serve creates the ledger (the first is ready before the second starts)
    with start_server(db_a, "fcfs", extra=extra, log_dir=tmp_path) as a, \
            start_server(db_b, "fcfs", extra=extra, log_dir=tmp_path) as b:
        assert a.wait_leader(30) or b.wait_leader(30)
        time.sleep(1.0)  # ten lease retries of the follower
        leaders = [s.ready() for s in (a, b)]
        assert [x is not None and x["leader"] for x in leaders].count(True) == 1, leaders


# ----- finding 7: PostgreSQL advisory-lock keys do not collide -----------------------------------------------
#: Schemas whose old lock key ``crc32(name) & 0x7FFFFFFF`` is the same (the issue's pair, and one pinned for a
#: test that creates its schemas: the names are this test's own, found once by a birthday search).
CRC_PAIR = ("tenant3985819", "tenant4420602")
CRC_PAIR_OWN = ("dpf_crc_witness_18ad9899f3f2", "dpf_crc_witness_b50aefa43e57")


@pytest.mark.parametrize("pair", [CRC_PAIR, CRC_PAIR_OWN])
def test_the_witnesses_collide_under_crc32(pair: tuple[str, str]) -> None:
    a, b = (zlib.crc32(x.encode()) & 0x7FFFFFFF for x in pair)
    assert a == b  # the witness is real: the old key could not tell these schemas apart
    assert advisory_key("grant", pair[0]) != advisory_key("grant", pair[1])
    assert advisory_key("grant", pair[0]) != advisory_key("write", pair[0])


@PG_SKIP
def test_colliding_schemas_hold_their_own_locks() -> None:
    """Both schemas' grant leases and write locks are held at once (no schema is created: locks need none)."""
    assert PG_URL
    a, b = (PostgresStore(PG_URL, schema=s, create=False) for s in CRC_PAIR)
    other = PostgresStore(PG_URL, schema=CRC_PAIR[0], create=False)
    try:
        assert a.try_grant_lease() and b.try_grant_lease()
        assert not other.try_grant_lease()  # the same schema still excludes
        a.begin_write()
        done = threading.Event()

        def write_b() -> None:
            b.begin_write()
            done.set()

        t = threading.Thread(target=write_b)
        t.start()
        try:
            assert done.wait(10.0), "a write on one schema waited for a write on another"
        finally:
            a.rollback()
            t.join(30)
            b.rollback()
    finally:
        for s in (a, b, other):
            s.close()


@PG_SKIP
def test_services_on_colliding_schemas_both_lead(tmp_path: Path) -> None:
    drop_schemas(list(CRC_PAIR_OWN))  # this test's own names: a crashed earlier run may have left them
    try:
        urls = [pg_url(s) for s in CRC_PAIR_OWN]  # serve creates each schema's ledger
        extra = ["--lease-retry", "0.1"]
        with start_server(urls[0], "fcfs", extra=extra, log_dir=tmp_path) as a:
            assert a.wait_leader(30)
            with start_server(urls[1], "fcfs", extra=extra, log_dir=tmp_path) as b:
                assert b.wait_leader(30), b.log()[-2000:]
                assert a.ready() == {"status": "ready", "leader": True}
    finally:
        drop_schemas(list(CRC_PAIR_OWN))


# ----- finding 9: what a tenant may learn about a block ------------------------------------------------------
def test_rejections_do_not_measure_what_others_consumed(tmp_path: Path) -> None:
    """The issue's probe: capacity 10, 0.6 consumed by someone else, 5 held by a grant. A tenant's demands of
    9.4 and 9.4001 (either side of capacity − consumed, beyond the tolerance) get the same answer, and keep
    getting it after the leader's passes; only a demand beyond the capacity is rejected at once, with a reason
    without numbers."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}?synchronous=normal"
    admin = create_token(db, "ops", admin=True)
    alice = create_token(db, "alice")
    with start_server(db, "drf", log_dir=tmp_path) as server, \
            httpx.Client(base_url=server.url, timeout=30) as c:
        bid = make_block(c, admin, eps=10.0)
        for cid, eps in (("spent", 0.6), ("held", 5.0)):
            r = c.post("/v1/claims", json={"id": cid, "demand": {"epsilon": eps}, "blocks": [bid]},
                       headers=auth(admin))
            assert r.status_code == 201
            r = c.get(f"/v1/claims/{cid}/wait", params={"timeout": 10}, headers=auth(admin))
            assert r.json()["state"] == "granted", r.text
        r = c.post("/v1/claims/spent/consume", json={"request_id": "all"}, headers=auth(admin))
        assert r.status_code == 200
        assert c.get(f"/v1/blocks/{bid}", headers=auth(admin)).json()["consumed"]["epsilon"] == pytest.approx(0.6)

        def probe(eps: float) -> dict[str, dict[str, Any]]:
            r = c.post("/v1/claims", json={"demand": {"epsilon": eps}, "blocks": [bid]}, headers=auth(alice))
            assert r.status_code == 201, r.text
            cid = r.json()["id"]
            first = {k: r.json()[k] for k in ("state", "reason", "decided_at", "remaining", "consumed")}
            time.sleep(0.5)  # many leader passes (poll 0.02 s): the leader must not tell them apart either
            r = c.get(f"/v1/claims/{cid}", headers=auth(alice))
            later = {k: r.json()[k] for k in ("state", "reason", "decided_at", "remaining", "consumed")}
            return {"first": first, "later": later}

        inside, beyond = probe(9.4), probe(9.4001)
        assert inside == beyond, (inside, beyond)
        assert inside["first"]["state"] == inside["later"]["state"] == "waiting"
        assert inside["later"]["reason"] is None
        # Beyond the capacity (public: the block's guarantee): rejected at once, no amount in the reason.
        r = c.post("/v1/claims", json={"demand": {"epsilon": 10.000001}, "blocks": [bid]}, headers=auth(alice))
        assert r.status_code == 201 and r.json()["state"] == "rejected"
        assert r.json()["reason"] == f"demand exceeds what block {bid} can ever provide"
        # A tenant sees no budget of a block anywhere.
        assert c.get(f"/v1/blocks/{bid}", headers=auth(alice)).status_code == 403
        assert c.get("/v1/blocks", headers=auth(alice)).status_code == 403
        r = c.post("/v1/blocks/select", json={"selector": {"ids": [bid]}}, headers=auth(alice))
        assert r.json() == {"blocks": [bid]}


# ----- issue 19: a reused request id gets one answer, whoever applied it first ------------------------------
def test_reused_request_id_is_409_even_when_another_process_applied_it_in_between(tmp_path: Path) -> None:
    """Two service processes (two Service objects on one ledger). B has checked the claim when A commits a
    consume with a request id, then B applies its own, different consume with that id: 409, as when A's came
    earlier (it was 422: B had looked the request id up before A's commit)."""
    db = f"sqlite:///{tmp_path / 'ledger.db'}?synchronous=normal"
    a, b = (Service(ServiceConfig(db=db, run_leader=False)) for _ in range(2))
    try:
        alice = Principal("t1", "alice", Role.TENANT)
        a.create_block(BlockCreate.model_validate({"id": "B", "budget": {"epsilon": 1.0}}))
        a.create_claim(alice, ClaimCreate.model_validate({"id": "c", "demand": {"epsilon": 0.5}, "blocks": ["B"]}))
        with open_ledger(db) as granter:
            granter.unlock_to([0], [1.0])
            granter.allocate("alice/c", 1.0)
        first = ConsumeRequest.model_validate({"request_id": "r1", "amounts": {"B": {"epsilon": 0.1}}})
        other = ConsumeRequest.model_validate({"request_id": "r1", "amounts": {"B": {"epsilon": 0.2}}})
        real = b.ledger.consume
        calls = []

        def a_commits_first(*args: Any, **kwargs: Any) -> None:
            if not calls:  # A's consume with the same request id commits just before B's transaction
                calls.append(1)
                a.consume(alice, "c", first)
            real(*args, **kwargs)

        b.ledger.consume = a_commits_first  # type: ignore[method-assign]
        with pytest.raises(ApiError) as raced:
            b.consume(alice, "c", other)
        b.ledger.consume = real  # type: ignore[method-assign]
        with pytest.raises(ApiError) as plain:
            b.consume(alice, "c", other)
        assert raced.value.status == plain.value.status == 409
        assert raced.value.detail == plain.value.detail
        assert b.out(alice, "c").consumed["B"]["epsilon"] == pytest.approx(0.1)  # applied once
    finally:
        a.close()
        b.close()
