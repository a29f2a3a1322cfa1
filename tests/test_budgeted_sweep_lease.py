"""A sweep under a leased claim keeps it alive: in process it renews with each charge, remotely from a
LeaseRenewer thread; without renewals the same claim expires between two trials."""

from __future__ import annotations

import time
from typing import Any

import pytest

pytest.importorskip("opacus", reason="SchedulerClient lives in the opacus integration package")

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.errors import InvalidStateError
from dpf_sched.integrations.opacus.client import SchedulerClient
from dpf_sched.integrations.sweep import BudgetedSweep
from dpf_sched.ledger import ClaimState, MemoryLedger
from dpf_sched.scheduler import Scheduler

GRID = AlphaGrid.default()
CAPACITY = EpsDelta(20.0, 1e-6).to_renyi(GRID, "balle")


def leased_client(lease: float) -> tuple[SchedulerClient, ManualClock]:
    clock = ManualClock()
    sched = Scheduler(MemoryLedger(RenyiComposition(GRID, "balle")), "fcfs", clock)
    sched.add_block(Block("b0", CAPACITY))
    client = SchedulerClient(sched)
    client.submit(Claim("sweep", {"b0": CAPACITY.scale(0.5)}, lease=lease))
    assert client.wait("sweep", 1.0).state is ClaimState.GRANTED
    return client, clock


def trial() -> RenyiCurve:
    return CAPACITY.scale(0.05)  # type: ignore[return-value]


def test_in_process_sweep_renews_with_each_charge() -> None:
    client, clock = leased_client(lease=1.0)
    sweep = BudgetedSweep(client, "sweep")
    for _ in range(5):
        clock.set(clock.now() + 0.9)  # each trial takes most of a lease
        client.scheduler.step()
        sweep.charge(trial())
    assert client.status("sweep").state is ClaimState.GRANTED
    report = sweep.finish()
    assert report.released and len(report.trials) == 5


def test_without_renewals_the_same_claim_expires() -> None:
    client, clock = leased_client(lease=1.0)
    sweep = BudgetedSweep(client, "sweep")
    sweep._renew_inline = False  # what the sweep did before it renewed
    sweep.charge(trial())
    clock.set(clock.now() + 1.5)
    client.scheduler.step()
    assert client.status("sweep").state is ClaimState.EXPIRED
    with pytest.raises(InvalidStateError):
        sweep.charge(trial())


class RemoteLike:
    """A client without ``scheduler`` (as a ServiceClient): the sweep renews from a thread."""

    def __init__(self, inner: SchedulerClient) -> None:
        self.inner = inner
        self.renewals = 0

    def __getattr__(self, name: str) -> Any:
        if name == "scheduler":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def renew(self, claim_id: str) -> float:
        self.renewals += 1
        return self.inner.renew(claim_id)


def test_remote_sweep_renews_from_a_thread() -> None:
    inner, _clock = leased_client(lease=0.3)
    client = RemoteLike(inner)
    sweep = BudgetedSweep(client, "sweep")  # type: ignore[arg-type]
    deadline = time.monotonic() + 5.0
    while client.renewals < 2 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert client.renewals >= 2
    sweep.finish()
    n = client.renewals
    time.sleep(0.3)
    assert client.renewals == n  # the renewer stops with the sweep
