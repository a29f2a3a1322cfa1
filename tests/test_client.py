"""The service client: core values in and out, safe retries, typed errors, and the BudgetClient protocol.

The first part runs offline against ``service_fake.FakeService`` (the contract's shapes over an in-process
scheduler, as an ``httpx.MockTransport``): serialisation, the retry and backoff rules, and the error mapping. The
second part runs the same client against a real ``dpf-sched serve`` process (``service_support``), including a
lost reply injected between the client and the server: the consumption must be applied exactly once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from service_fake import GRID, FakeService

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.client import ServiceClient
from dpf_sched.errors import (
    AlphaGridMismatchError,
    CompositionMismatchError,
    DpfSchedError,
    DuplicateIdError,
    InvalidParameterError,
    InvalidStateError,
    ServiceAuthError,
    ServiceError,
    ServiceUnavailableError,
    UnknownBlockError,
    UnknownClaimError,
)
from dpf_sched.ledger import ClaimState
from dpf_sched.selector import BlockSelector

CAPACITY = EpsDelta(10.0, 1e-6).to_renyi(GRID, "balle")


class Sleeps:
    """A fake ``sleep`` that records the pauses instead of waiting."""

    def __init__(self) -> None:
        self.pauses: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)


class LoseFirstReply(httpx.BaseTransport):
    """Forwards every request; for the first ``lose`` requests matching ``path_suffix``, drops the reply (the server
    has applied the request) and raises ``ReadTimeout`` as a client whose network failed would see."""

    def __init__(self, inner: httpx.BaseTransport, path_suffix: str, lose: int = 1) -> None:
        self.inner = inner
        self.suffix = path_suffix
        self.lose = lose
        self.seen: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.url.path.endswith(self.suffix):
            self.seen.append(request)
            if self.lose > 0:
                self.lose -= 1
                response.read()
                response.close()
                raise httpx.ReadTimeout("reply lost (injected)", request=request)
        return response


class Scripted(httpx.BaseTransport):
    """Answers from a list of responses or exceptions, one per request, recording the requests."""

    def __init__(self, *answers: httpx.Response | Exception) -> None:
        self.answers = list(answers)
        self.requests: list[httpx.Request] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def fake_client(fake: FakeService, token: str = "admin-token", **kw: Any) -> ServiceClient:
    kw.setdefault("sleep", Sleeps())
    return ServiceClient("http://budget.test", token, transport=kw.pop("transport", fake.transport()), **kw)


@pytest.fixture
def fake() -> Iterator[FakeService]:
    svc = FakeService()
    with fake_client(svc) as admin:
        for i in range(2):
            admin.add_block(Block(f"b{i}", CAPACITY, attributes={"region": "eu" if i == 0 else "us"}))
    yield svc


# ----- offline: values, lifecycle -------------------------------------------------------------------------------
def test_lifecycle_with_core_values(fake: FakeService) -> None:
    with fake_client(fake, "tenant-token") as client:
        from dpf_sched.integrations.opacus.client import BudgetClient

        assert isinstance(client, BudgetClient)
        assert client.alpha_grid() == GRID
        assert client.select_blocks(BlockSelector(attributes={"region": "eu"})) == ("b0",)
        demand = CAPACITY.scale(0.25)
        cid = client.submit(Claim("job-1", {"b0": demand, "b1": demand}, timeout=30.0), label="nightly")
        assert cid == "job-1"
        record = client.wait(cid, 5.0)
        assert record.state is ClaimState.GRANTED
        assert record.claim.demand == {"b0": demand, "b1": demand}
        assert record.granted_at == record.decided_at is not None
        assert record.remaining["b0"] == demand
        part = demand.scale(0.5)
        client.consume(cid, {"b0": part})
        after = client.status(cid)
        assert after.consumed["b0"] == part
        assert np.allclose(after.remaining["b0"].values, (demand - part).values)
        client.release(cid)
        done = client.status(cid)
        assert done.state is ClaimState.FINISHED
        assert [r.claim.id for r in client.claims()] == ["job-1"]
    with fake_client(fake) as admin:
        b0 = admin.block("b0")
        assert b0.consumed == part
        assert b0.unlocked_fraction == pytest.approx(1.0)
        assert {b.block.id for b in admin.blocks()} == {"b0", "b1"}
        assert admin.audit().ok


def test_values_off_the_ledger_grid_or_composition_are_refused_before_sending(fake: FakeService) -> None:
    with fake_client(fake, "tenant-token") as client:
        other = RenyiCurve(AlphaGrid((2.0, 4.0, 8.0, 32.0)), np.ones(4))
        n = len(fake.calls)
        with pytest.raises(AlphaGridMismatchError):
            client.submit(Claim("x", {"b0": other}))
        with pytest.raises(CompositionMismatchError):
            client.submit(Claim("y", {"b0": EpsDelta(1.0)}))
        assert all(c[1] != "/v1/claims" for c in fake.calls[n:])


# ----- offline: safe retries --------------------------------------------------------------------------------
def test_a_lost_consume_reply_is_retried_with_the_same_request_id_and_applied_once(fake: FakeService) -> None:
    lossy = LoseFirstReply(fake.transport(), "/consume")
    with fake_client(fake, "tenant-token", transport=lossy) as client:
        demand = CAPACITY.scale(0.2)
        cid = client.submit(Claim("c", {"b0": demand}))
        client.consume(cid, {"b0": demand.scale(0.5)})
        assert len(lossy.seen) == 2  # the first try reached the server, its reply was lost
        ids = {json.loads(r.content)["request_id"] for r in lossy.seen}
        assert len(ids) == 1 and "" not in ids
        assert client.status(cid).consumed["b0"] == demand.scale(0.5)  # once, not twice
        consumes = [c for c in fake.calls if c[1].endswith("/consume")]
        assert len(consumes) == 2


def test_a_lost_submit_reply_returns_the_existing_claim_not_a_duplicate(fake: FakeService) -> None:
    lossy = LoseFirstReply(fake.transport(), "/v1/claims")
    with fake_client(fake, "tenant-token", transport=lossy) as client:
        cid = client.submit(Claim("once", {"b1": CAPACITY.scale(0.1)}))
        assert cid == "once" and len(lossy.seen) == 2
        assert [r.claim.id for r in client.claims()] == ["once"]
        with pytest.raises(DuplicateIdError, match="another body"):
            client.submit(Claim("once", {"b1": CAPACITY.scale(0.2)}))


def claim_json(state: str, reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """A ClaimOut of claim ``c`` on block ``b`` (fake grid), in ``state``."""
    return {
        "id": "c", "state": state, "blocks": ["b"], "demand": {"b": {"rdp": [1.0, 1, 1, 1]}}, "arrival": 1.0,
        "decided_at": None if state == "waiting" else 2.0, "reason": reason, "remaining": {}, "consumed": {},
        "weight": 1.0, "label": None, **extra,
    }  # fmt: skip


LEDGER = {"composition": "renyi", "alphas": list(GRID.orders), "conversion": "balle"}


def test_a_lost_withdraw_reply_returns_the_withdrawn_record() -> None:
    conflict = httpx.Response(409, json={"error": "conflict", "detail": "claim c is rejected, not waiting"})
    transport = Scripted(
        httpx.ReadTimeout("lost"), conflict, httpx.Response(200, json=claim_json("rejected", "withdrawn")),
        httpx.Response(200, json=LEDGER),
    )  # fmt: skip
    client = ServiceClient("http://x", "t", transport=transport, sleep=Sleeps())
    record = client.withdraw("c")
    assert record.state is ClaimState.REJECTED and record.reason == "withdrawn"
    # A claim that was granted, not withdrawn by us: the conflict stands.
    transport = Scripted(conflict, httpx.Response(200, json=claim_json("granted")), httpx.Response(200, json=LEDGER))
    client = ServiceClient("http://x", "t", transport=transport, sleep=Sleeps())
    with pytest.raises(InvalidStateError, match="not waiting"):
        client.withdraw("c")


def test_backoff_doubles_with_jitter_up_to_the_cap_and_honours_retry_after() -> None:
    sleeps = Sleeps()
    busy = httpx.Response(503, json={"error": "unavailable", "detail": "ledger busy"})
    ok = httpx.Response(200, json={"composition": "basic"})
    transport = Scripted(
        httpx.ConnectError("refused"), busy, httpx.ReadTimeout("slow"), busy, busy,
        httpx.Response(503, headers={"Retry-After": "0.7"}, json={"error": "unavailable", "detail": "x"}), ok,
    )  # fmt: skip
    client = ServiceClient("http://x", "t", transport=transport, retries=6, backoff=0.1, max_backoff=1.0, sleep=sleeps)
    assert client.ledger().composition == "basic"
    assert len(transport.requests) == 7
    p = sleeps.pauses
    assert len(p) == 6
    for i, pause in enumerate(p[:5]):
        full = min(1.0, 0.1 * 2**i)
        assert full / 2 <= pause <= full
    assert p[5] == 0.7


def test_exhausted_retries_raise_service_unavailable_with_the_last_cause() -> None:
    transport = Scripted(*[httpx.ConnectError("connection refused")] * 3)
    client = ServiceClient("http://x", "t", transport=transport, retries=2, sleep=Sleeps())
    with pytest.raises(ServiceUnavailableError, match=r"3 tries.*connection refused") as info:
        client.ledger()
    assert isinstance(info.value, DpfSchedError)
    transport = Scripted(*[httpx.Response(502, text="bad gateway")] * 2)
    client = ServiceClient("http://x", "t", transport=transport, retries=1, sleep=Sleeps())
    with pytest.raises(ServiceUnavailableError, match="HTTP 502") as info:
        client.ledger()
    assert info.value.status == 502


def test_errors_that_retrying_cannot_fix_are_not_retried() -> None:
    for status, kind in [(401, ServiceAuthError), (403, ServiceAuthError), (404, UnknownClaimError),
                         (409, InvalidStateError), (422, InvalidParameterError), (413, InvalidParameterError),
                         (500, ServiceError)]:  # fmt: skip
        transport = Scripted(httpx.Response(status, json={"error": "e", "detail": f"reason {status}"}))
        client = ServiceClient("http://x", "t", transport=transport, sleep=Sleeps())
        with pytest.raises(kind, match=f"reason {status}"):
            client.status("c")
        assert len(transport.requests) == 1


def test_error_mapping_against_the_fake(fake: FakeService) -> None:
    with fake_client(fake, "tenant-token") as client:
        with pytest.raises(UnknownClaimError, match="nope"):
            client.status("nope")
        with pytest.raises(ServiceAuthError, match="admin only"):
            client.blocks()
        with pytest.raises(InvalidParameterError):
            client.submit(Claim("big", {"b0": CAPACITY.scale(0.1)}, timeout=5.0))
            client.consume("big", {"b0": CAPACITY})  # more than the grant
    with fake_client(fake) as admin, pytest.raises(UnknownBlockError):
        admin.block("b9")
    with (
        ServiceClient("http://budget.test", "wrong", transport=fake.transport()) as stranger,
        pytest.raises(ServiceAuthError, match="unknown token"),
    ):
        stranger.alpha_grid()


def test_wait_long_polls_in_slices_of_at_most_a_minute() -> None:
    waiting = claim_json("waiting")
    granted = claim_json("granted", remaining={"b": {"rdp": [1.0, 1, 1, 1]}})
    transport = Scripted(
        httpx.Response(200, json=waiting), httpx.Response(200, json=LEDGER), httpx.Response(200, json=waiting),
        httpx.Response(200, json=granted),
    )  # fmt: skip
    client = ServiceClient("http://x", "t", transport=transport, sleep=Sleeps())
    record = client.wait("c", 1000.0)
    assert record.state is ClaimState.GRANTED and record.granted_at == 2.0
    polls = [r for r in transport.requests if r.url.path.endswith("/wait")]
    assert len(polls) == 3
    assert all(0 < float(r.url.params["timeout"]) <= 60 for r in polls)
    assert all(r.extensions["timeout"]["read"] > float(r.url.params["timeout"]) for r in polls)


def test_bad_arguments_are_refused_at_once() -> None:
    with pytest.raises(InvalidParameterError):
        ServiceClient("http://x", "two words")
    with pytest.raises(InvalidParameterError):
        ServiceClient("http://x", "t", retries=-1)
    with pytest.raises(InvalidParameterError):
        ServiceClient("http://x", "t", timeout=math.nan)
    client = ServiceClient("http://x", "t", transport=Scripted())
    with pytest.raises(InvalidParameterError):
        client.wait("c", -1.0)


# ----- offline: claim_and_wait withdraws a claim it gave up on ---------------------------------------------------
class Withdrawing:
    """A BudgetClient over an in-process scheduler that also withdraws, as the service client does."""

    def __init__(self, inner: Any, *, grant_before_withdraw: bool = False) -> None:
        self.inner = inner
        self.grant_first = grant_before_withdraw
        self.withdrawn: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def withdraw(self, claim_id: str) -> Any:
        if self.grant_first:  # the scheduler granted it just before the withdrawal arrived
            ledger = self.inner.scheduler.ledger
            ledger.unlock_to([0], [1.0])
            ledger.allocate(claim_id, 0.0)
            raise InvalidStateError(f"claim {claim_id} is granted, not waiting")
        self.withdrawn.append(claim_id)
        self.inner.scheduler.withdraw(claim_id)
        return self.inner.status(claim_id)


def test_claim_and_wait_withdraws_a_claim_still_waiting_at_the_timeout() -> None:
    pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")
    from dpf_sched.clock import ManualClock
    from dpf_sched.composition import RenyiComposition
    from dpf_sched.integrations.opacus import GrantTimeoutError, SchedulerClient, claim_and_wait
    from dpf_sched.ledger import MemoryLedger
    from dpf_sched.scheduler import Scheduler

    def waiting_client(**kw: Any) -> Withdrawing:
        sched = Scheduler(MemoryLedger(RenyiComposition(GRID, "balle")), "dpf-n", ManualClock(), N=1000)
        sched.add_block(Block("b0", CAPACITY))
        return Withdrawing(SchedulerClient(sched), **kw)

    client = waiting_client()
    with pytest.raises(GrantTimeoutError, match="withdrawn"):
        claim_and_wait(client, Claim("slow", {"b0": CAPACITY.scale(0.5)}, timeout=50.0), 1.0)
    assert client.withdrawn == ["slow"]
    record = client.inner.status("slow")
    assert record.state is ClaimState.REJECTED and record.reason == "withdrawn"
    # A grant that wins the race against the withdrawal is used, not lost.
    client = waiting_client(grant_before_withdraw=True)
    granted = claim_and_wait(client, Claim("lucky", {"b0": CAPACITY.scale(0.5)}, timeout=50.0), 1.0)
    assert granted.state is ClaimState.GRANTED


# ----- against the real server ------------------------------------------------------------------------------
def _service_support() -> Any:
    pytest.importorskip("dpf_sched.service.app", reason="needs the HTTP service (dpf_sched.service)")
    return pytest.importorskip("service_support", reason="needs tests/service_support.py")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, str, str]]:
    """One Rényi ledger served under FCFS: (url, admin token, tenant token, other tenant's token)."""
    support = _service_support()
    tmp = tmp_path_factory.mktemp("live")
    db = f"sqlite:///{tmp / 'ledger.db'}"
    admin = support.create_token(db, "ops", admin=True, composition="renyi")
    ml, other = support.create_token(db, "ml"), support.create_token(db, "other")
    with support.running_server(db, "fcfs", log_dir=tmp) as server:
        yield server.url, admin, ml, other


def test_live_lifecycle_with_core_values(live: tuple[str, str, str, str]) -> None:
    url, admin_token, ml_token, _ = live
    with ServiceClient(url, admin_token) as admin, ServiceClient(url, ml_token) as client:
        grid = client.alpha_grid()
        guarantee = EpsDelta(10.0, 1e-6)
        conversion = admin.ledger().conversion
        assert conversion is not None
        capacity = guarantee.to_renyi(grid, conversion)
        created = admin.add_block(Block("life-0", capacity, attributes={"kind": "life"}, guarantee=guarantee))
        assert created.capacity == capacity and created.block.attributes == {"kind": "life"}
        assert admin.add_block(Block("life-0", capacity, attributes={"kind": "life"})).capacity == capacity
        admin.add_block(Block("life-1", capacity, attributes={"kind": "life"}))
        assert client.select_blocks(BlockSelector(attributes={"kind": "life"})) == ("life-0", "life-1")
        from dpf_sched.integrations.opacus.client import BudgetClient

        assert isinstance(client, BudgetClient)
        demand = capacity.scale(0.25)
        cid = client.submit(Claim("life-job", {"life-0": demand, "life-1": demand}, timeout=30.0), label="nightly")
        record = client.wait(cid, 10.0)
        assert record.state is ClaimState.GRANTED and record.granted_at is not None
        assert record.claim.demand == {"life-0": demand, "life-1": demand}
        assert client.submit(Claim("life-job", {"life-0": demand, "life-1": demand}, timeout=30.0), label="nightly")
        part = demand.scale(0.5)
        client.consume(cid, {"life-0": part})
        after = client.status(cid)
        assert after.consumed["life-0"] == part  # exact: floats cross JSON unchanged
        client.release(cid)
        done = client.status(cid)
        assert done.state is ClaimState.FINISHED and done.consumed["life-0"] == part
        assert "life-job" in {r.claim.id for r in client.claims()}
        b0 = admin.block("life-0")
        assert b0.consumed == part and b0.allocated.is_zero()
        assert b0.unlocked_fraction == pytest.approx(1.0)
        assert {"life-0", "life-1"} <= {b.block.id for b in admin.blocks()}
        assert admin.audit().ok


def test_live_lost_consume_reply_is_applied_exactly_once(live: tuple[str, str, str, str]) -> None:
    url, admin_token, ml_token, _ = live
    with ServiceClient(url, admin_token) as admin:
        grid = admin.alpha_grid()
        capacity = RenyiCurve(grid, np.full(len(grid), 4.0))
        admin.add_block(Block("lost-0", capacity))
    lossy = LoseFirstReply(httpx.HTTPTransport(), "/consume", lose=2)
    with ServiceClient(url, ml_token, transport=lossy, sleep=Sleeps()) as client:
        demand = capacity.scale(0.5)
        cid = client.submit(Claim("lost-job", {"lost-0": demand}))
        assert client.wait(cid, 10.0).state is ClaimState.GRANTED
        part = demand.scale(0.25)
        client.consume(cid, {"lost-0": part})  # two replies lost, the third try is answered
        assert len(lossy.seen) == 3
        assert len({json.loads(r.content)["request_id"] for r in lossy.seen}) == 1
        assert client.status(cid).consumed["lost-0"] == part  # applied once, not three times
        client.consume(cid, {"lost-0": part})  # a new logical call: a new request id, applied again
        assert client.status(cid).consumed["lost-0"] == part.scale(2.0)
        client.release(cid)
    with ServiceClient(url, admin_token) as admin:
        assert admin.block("lost-0").consumed == part.scale(2.0)


def test_live_lost_submit_reply_does_not_duplicate_the_claim(live: tuple[str, str, str, str]) -> None:
    url, admin_token, ml_token, _ = live
    with ServiceClient(url, admin_token) as admin:
        grid = admin.alpha_grid()
        admin.add_block(Block("dup-0", RenyiCurve(grid, np.full(len(grid), 4.0))))
    lossy = LoseFirstReply(httpx.HTTPTransport(), "/v1/claims")
    with ServiceClient(url, ml_token, transport=lossy, sleep=Sleeps()) as client:
        demand = RenyiCurve(grid, np.full(len(grid), 1.0))
        cid = client.submit(Claim("dup-job", {"dup-0": demand}))
        assert len(lossy.seen) == 2
        assert [r.claim.id for r in client.claims()].count(cid) == 1
        with pytest.raises(DuplicateIdError):
            client.submit(Claim("dup-job", {"dup-0": demand.scale(2.0)}))


def test_live_error_mapping(live: tuple[str, str, str, str]) -> None:
    url, admin_token, ml_token, other_token = live
    with ServiceClient(url, admin_token) as admin:
        grid = admin.alpha_grid()
        admin.add_block(Block("err-0", RenyiCurve(grid, np.full(len(grid), 4.0))))
        with pytest.raises(UnknownBlockError):
            admin.block("no-such-block")
    with ServiceClient(url, ml_token) as client, ServiceClient(url, other_token) as other:
        demand = RenyiCurve(grid, np.full(len(grid), 1.0))
        cid = client.submit(Claim("err-job", {"err-0": demand}))
        assert client.wait(cid, 10.0).state is ClaimState.GRANTED
        with pytest.raises(UnknownClaimError, match="err-job"):
            other.status(cid)  # another tenant's claim looks unknown
        with pytest.raises(UnknownClaimError):
            client.status("never-submitted")
        with pytest.raises(ServiceAuthError, match="403"):
            client.blocks()
        with pytest.raises((InvalidParameterError, InvalidStateError)):
            client.consume(cid, {"err-0": demand.scale(2.0)})  # more than the grant
        with pytest.raises((InvalidParameterError, InvalidStateError)):
            client.consume(cid, {"not-mine": demand})
        with pytest.raises(InvalidStateError):
            client.withdraw(cid)  # granted, not waiting
        client.release(cid)
        with pytest.raises(InvalidStateError):
            client.consume(cid, {"err-0": demand.scale(0.1)})  # finished
        rejected = client.submit_record(Claim("err-huge", {"err-0": demand.scale(10.0)}))
        assert rejected.state is ClaimState.REJECTED and rejected.reason
    with ServiceClient(url, "dpf_nope.secret", retries=0) as stranger, pytest.raises(ServiceAuthError, match="401"):
        stranger.alpha_grid()
    with (
        ServiceClient("http://127.0.0.1:9", ml_token, retries=2, sleep=Sleeps()) as nowhere,
        pytest.raises(ServiceUnavailableError, match="3 tries"),
    ):
        nowhere.status("x")
