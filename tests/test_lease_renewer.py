"""Renewing leases from the client side: ``ServiceClient.renew`` / ``SchedulerClient.renew`` and the
``LeaseRenewer`` thread (offline, against the in-process fake of the service and scripted clients)."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from service_fake import FakeService
from test_client import CAPACITY, fake_client

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import (
    InvalidParameterError,
    InvalidStateError,
    LeaseExpiredError,
    ServiceUnavailableError,
    UnknownClaimError,
)
from dpf_sched.integrations.lease import LeaseRenewer
from dpf_sched.integrations.opacus.client import BudgetClient, SchedulerClient
from dpf_sched.ledger import ClaimState, MemoryLedger
from dpf_sched.scheduler import Scheduler


def _fake_with_blocks() -> FakeService:
    svc = FakeService()
    with fake_client(svc) as admin:
        admin.add_block(Block("b0", CAPACITY))
    return svc


def test_service_client_renews_and_reports_expiry() -> None:
    """renew returns the new deadline; after an expiry renew and consume raise LeaseExpiredError and the record
    says EXPIRED with the deadline that lapsed."""
    svc = _fake_with_blocks()
    with fake_client(svc, "tenant-token") as client:
        assert isinstance(client, BudgetClient)
        cid = client.submit(Claim("job", {"b0": CAPACITY.scale(0.5)}, lease=10.0))
        record = client.wait(cid, 5.0)
        assert record.state is ClaimState.GRANTED
        assert record.claim.lease == 10.0 and record.lease_deadline == 10.0
        sent = [body for m, path, body in svc.calls if m == "POST" and path == "/v1/claims"]
        assert sent[-1]["lease"] == 10.0
        svc.clock.set(4.0)
        assert client.renew(cid) == 14.0
        svc.clock.set(14.0)
        svc.sched.step()
        record = client.status(cid)
        assert record.state is ClaimState.EXPIRED and record.lease_deadline == 14.0
        with pytest.raises(LeaseExpiredError):
            client.renew(cid)
        with pytest.raises(LeaseExpiredError):
            client.consume(cid, {"b0": CAPACITY.scale(0.1)})
        with pytest.raises(UnknownClaimError):
            client.renew("nobody")


def test_scheduler_client_renews() -> None:
    clock = ManualClock()
    sched = Scheduler(MemoryLedger(BasicComposition()), "fcfs", clock)
    sched.add_block(Block("b", EpsDelta(1.0, 1e-6)))
    client = SchedulerClient(sched)
    assert isinstance(client, BudgetClient)
    sched.submit(Claim.uniform("c", ["b"], EpsDelta(0.5, 0.0), lease=3.0))
    sched.step()
    clock.set(2.0)
    assert client.renew("c") == 5.0


class Scripted:
    """A client whose renew answers from a script (a deadline or an exception per call), then keeps the last."""

    def __init__(self, *answers: float | Exception) -> None:
        self.answers = list(answers)
        self.calls = 0
        self.lock = threading.Lock()

    def renew(self, claim_id: str) -> float:
        with self.lock:
            self.calls += 1
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_renewer_renews_every_third_of_the_lease_until_closed() -> None:
    client = Scripted(1.0)
    renewer = LeaseRenewer(client, "c", lease=0.15)
    assert renewer.interval == pytest.approx(0.05)
    with renewer:
        _wait(lambda: client.calls >= 4)
        assert renewer.alive and renewer.lost is None and renewer.deadline == 1.0
    assert not renewer.alive
    calls = client.calls
    time.sleep(0.15)
    assert client.calls == calls  # nothing after close


def test_renewer_stops_on_an_expired_claim_and_says_why() -> None:
    lost: list[Exception] = []
    expired = LeaseExpiredError("claim c expired")
    client = Scripted(5.0, expired)
    with LeaseRenewer(client, "c", lease=0.06, on_lost=lost.append) as renewer:
        _wait(lambda: not renewer.alive)
        assert renewer.lost is expired and lost == [expired] and renewer.renewals == 1
    calls = client.calls
    time.sleep(0.1)
    assert client.calls == calls == 2


@pytest.mark.parametrize("gone", [UnknownClaimError("no such claim"), InvalidStateError("claim c is finished")])
def test_renewer_stops_on_an_unknown_or_finished_claim(gone: Exception) -> None:
    with LeaseRenewer(Scripted(gone), "c", lease=0.06) as renewer:
        _wait(lambda: not renewer.alive)
        assert renewer.lost is gone and renewer.renewals == 0


def test_renewer_keeps_trying_through_transient_failures() -> None:
    client = Scripted(ServiceUnavailableError("503"), ConnectionError("reset"), 7.0)
    with LeaseRenewer(client, "c", lease=0.06) as renewer:
        _wait(lambda: renewer.renewals >= 2)
        assert renewer.lost is None and renewer.deadline == 7.0


def test_renewer_keeps_a_service_claim_alive() -> None:
    """Over the service client (fake server): renewals move the claim's deadline."""
    svc = _fake_with_blocks()
    with fake_client(svc, "tenant-token") as client:
        cid = client.submit(Claim("job", {"b0": CAPACITY.scale(0.5)}, lease=0.3))
        client.wait(cid, 5.0)
        svc.clock.set(100.0)
        with LeaseRenewer(client, cid, lease=0.3) as renewer:
            _wait(lambda: renewer.renewals >= 1)
        assert client.status(cid).lease_deadline == pytest.approx(100.3)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lease": 0.0}, "lease"),
        ({"lease": float("nan")}, "lease"),
        ({"lease": True}, "lease"),
        ({"lease": 3.0, "interval": 3.0}, "interval"),
        ({"lease": 3.0, "interval": -1.0}, "interval"),
    ],
)
def test_renewer_refuses_bad_parameters(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        LeaseRenewer(Scripted(1.0), "c", **kwargs)


def test_renewer_needs_a_client_that_renews() -> None:
    with pytest.raises(InvalidParameterError, match="renew"):
        LeaseRenewer(object(), "c", lease=3.0)  # type: ignore[arg-type]
    renewer = LeaseRenewer(Scripted(1.0), "c", lease=3.0).start()
    with pytest.raises(InvalidStateError):
        renewer.start()
    renewer.close()
