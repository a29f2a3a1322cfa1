"""The budget client seam: the in-process adapter waits under the scheduler's clock; any client plugs in."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")

from opacus_helpers import GRID, QUIET, model, scheduler, sgd, train
from torch.utils.data import DataLoader

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import CompositionMismatchError, DuplicateIdError
from dpf_sched.integrations.opacus import (
    BudgetClient,
    BudgetedPrivacyEngine,
    ClaimRejectedError,
    GrantTimeoutError,
    NoGrantError,
    RunStatus,
    SchedulerClient,
    claim_and_wait,
)
from dpf_sched.ledger import ClaimRecord, ClaimState, MemoryLedger
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

pytestmark = QUIET


class FakeClock:
    """A clock that only a fake sleep moves (the wall-clock path of the adapter, without waiting)."""

    def __init__(self) -> None:
        self.t = 0.0
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        assert dt > 0
        self.sleeps.append(dt)
        self.t += dt


def test_waiting_advances_a_manual_clock_to_the_dpf_t_tick_that_grants() -> None:
    sched, _ = scheduler("dpf-t", blocks=1, T=10.0, tick=1.0)
    client = SchedulerClient(sched)
    assert isinstance(client, BudgetClient)
    capacity = sched.ledger.budgets("b0").capacity
    record = claim_and_wait(client, Claim("c", {"b0": capacity.scale(0.35)}, timeout=100.0), 100.0)
    assert record.state is ClaimState.GRANTED
    assert record.granted_at == 4.0 == sched.clock.now()  # 40 % unlocked at t = 4 (created at 0, T = 10)


def test_waiting_on_another_clock_sleeps_until_the_next_event_in_small_steps() -> None:
    clock = FakeClock()
    sched, _ = scheduler("dpf-t", blocks=1, clock=clock, T=10.0, tick=1.0)
    client = SchedulerClient(sched, poll_interval=0.4, sleep=clock.sleep)
    capacity = sched.ledger.budgets("b0").capacity
    record = claim_and_wait(client, Claim("c", {"b0": capacity.scale(0.25)}, timeout=100.0), 100.0)
    assert record.state is ClaimState.GRANTED and record.granted_at == pytest.approx(3.0)
    assert max(clock.sleeps) <= 0.4


def test_rejection_and_timeout_are_distinct_typed_errors() -> None:
    sched, _ = scheduler("dpf-n", blocks=1, N=1000)
    client = SchedulerClient(sched)
    capacity = sched.ledger.budgets("b0").capacity
    with pytest.raises(ClaimRejectedError, match="can ever provide") as rejected:
        claim_and_wait(client, Claim("too-big", {"b0": capacity.scale(2.0)}, timeout=5.0), 5.0)
    assert rejected.value.record is not None and rejected.value.record.state is ClaimState.REJECTED
    with pytest.raises(GrantTimeoutError) as late:
        claim_and_wait(client, Claim("slow", {"b0": capacity.scale(0.5)}, timeout=5.0), 5.0)
    assert isinstance(late.value, NoGrantError) and late.value.claim_id == "slow"
    assert sched.clock.now() == 5.0
    with pytest.raises(DuplicateIdError):
        client.submit(Claim("slow", {"b0": capacity.scale(0.5)}))  # ids are not reused
    # A client-side timeout shorter than the claim's own: still waiting, reported as a timeout.
    with pytest.raises(GrantTimeoutError, match="within 1"):
        claim_and_wait(client, Claim("patient", {"b0": capacity.scale(0.5)}, timeout=50.0), 1.0)
    assert sched.status("patient").state is ClaimState.WAITING


def test_a_basic_composition_ledger_is_refused() -> None:
    sched = Scheduler(MemoryLedger(BasicComposition()), "fcfs")
    sched.add_block(Block("b", EpsDelta(1.0, 1e-6)))
    with pytest.raises(CompositionMismatchError, match="Rényi"):
        SchedulerClient(sched).alpha_grid()


class RecordingClient:
    """Any BudgetClient (here: the adapter) seen from outside, as a remote client would be."""

    def __init__(self, inner: BudgetClient) -> None:
        self.inner = inner
        self.calls: list[str] = []

    def alpha_grid(self) -> AlphaGrid:
        self.calls.append("alpha_grid")
        return self.inner.alpha_grid()

    def select_blocks(self, selector: BlockSelector) -> tuple[str, ...]:
        self.calls.append("select_blocks")
        return self.inner.select_blocks(selector)

    def submit(self, claim: Claim) -> str:
        self.calls.append("submit")
        return self.inner.submit(claim)

    def wait(self, claim_id: str, timeout: float) -> ClaimRecord:
        self.calls.append("wait")
        return self.inner.wait(claim_id, timeout)

    def status(self, claim_id: str) -> ClaimRecord:
        self.calls.append("status")
        return self.inner.status(claim_id)

    def consume(self, claim_id: str, amounts: Mapping[str, Budget] | None = None) -> None:
        self.calls.append("consume")
        self.inner.consume(claim_id, amounts)

    def release(self, claim_id: str) -> None:
        self.calls.append("release")
        self.inner.release(claim_id)

    def renew(self, claim_id: str) -> float:
        self.calls.append("renew")
        return self.inner.renew(claim_id)


def test_any_budget_client_plugs_in() -> None:
    sched, data = scheduler(blocks=2)
    client = RecordingClient(SchedulerClient(sched))
    assert isinstance(client, BudgetClient)
    engine = BudgetedPrivacyEngine(client, accountant="rdp")
    dataset = engine.dataset(data, BlockSelector(ids=("b0", "b1")))
    m = model()
    job = engine.make_private(
        claim_id="remote-job",
        module=m,
        optimizer=sgd(m),
        data_loader=DataLoader(dataset, batch_size=8),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        epochs=1,
    )
    with job:
        train(job, 1)
    assert job.report is not None and job.report.status is RunStatus.COMPLETED
    assert client.calls == ["select_blocks", "alpha_grid", "submit", "wait", "consume", "status", "release"]
    assert job.report.granted.grid == GRID
