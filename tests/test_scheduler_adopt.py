"""Scheduler.adopt and friends: a new scheduler loop takes over a ledger that another one (or another process)
wrote, as the HTTP service's leader does after a failover (docs/service.md)."""

from __future__ import annotations

import pytest

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import InvalidStateError
from dpf_sched.ledger import ClaimState, MemoryLedger
from dpf_sched.scheduler import Scheduler


def take_over(ledger: MemoryLedger, policy: str, clock: ManualClock, **params: object) -> Scheduler:
    """What the service's leader does on taking the lease: blocks, every arrival, then the waiting claims."""
    sched = Scheduler(ledger, policy, clock, **params)
    for block in list(ledger.blocks()):
        sched.adopt_block(block.id)
    waiting = []
    for cid in list(ledger.claim_ids()):
        record = ledger.claim(cid)
        sched.replay_arrival(record)
        if record.state is ClaimState.WAITING:
            waiting.append(record)
    for record in waiting:
        assert sched.adopt(record, arrival_unlock=False)
    return sched


def test_new_loop_rebuilds_dpf_n_arrival_counts_and_keeps_arrivals() -> None:
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    old = Scheduler(ledger, "dpf-n", clock, N=4)
    old.add_block(Block("b", EpsDelta(1.0)))
    clock.set(1.0)
    old.submit(Claim("c1", {"b": EpsDelta(0.25)}))
    old.step()
    clock.set(2.0)
    old.submit(Claim("c2", {"b": EpsDelta(0.75)}, timeout=10.0))
    old.step()
    assert ledger.state("c1") is ClaimState.GRANTED and ledger.state("c2") is ClaimState.WAITING
    assert ledger.unlocked_fraction[0] == pytest.approx(0.5)

    # The old loop dies; a new one takes over the same ledger.
    clock.set(3.0)
    new = take_over(ledger, "dpf-n", clock, N=4)
    assert ledger.unlocked_fraction[0] == pytest.approx(0.5)  # replaying arrivals unlocks nothing new
    assert new.waiting_ids() == ["c2"]
    queued = next(iter(new.queue))
    assert queued.arrival == 2.0 and queued.deadline == 12.0  # the original arrival and deadline
    # Two more arrivals: without the rebuilt counts they would unlock 1/4 and 2/4, not 3/4 and 4/4.
    new.submit(Claim("c3", {"b": EpsDelta(0.25)}))
    assert ledger.unlocked_fraction[0] == pytest.approx(0.75)
    new.submit(Claim("c4", {"b": EpsDelta(0.01)}))
    assert ledger.unlocked_fraction[0] == pytest.approx(1.0)
    new.step()
    assert ledger.state("c3") is ClaimState.GRANTED
    assert not ledger.violations()


def test_adopted_claim_expires_at_its_original_deadline() -> None:
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    old = Scheduler(ledger, "dpf-n", clock, N=100)
    old.add_block(Block("b", EpsDelta(1.0)))
    old.submit(Claim("c", {"b": EpsDelta(0.5)}, timeout=5.0))
    old.step()
    clock.set(6.0)
    new = take_over(ledger, "dpf-n", clock, N=100)
    new.step()
    assert ledger.status("c").state is ClaimState.REJECTED and ledger.status("c").reason == "timeout"


def test_adopt_block_applies_the_creation_unlock() -> None:
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    ledger.add_block(Block("b", EpsDelta(1.0)))  # written by "another process": fully locked
    ledger.add_claim(Claim("c", {"b": EpsDelta(0.5)}))
    sched = Scheduler(ledger, "fcfs", clock)
    sched.adopt_block("b")
    assert ledger.unlocked_fraction[0] == 1.0
    assert sched.adopt(ledger.claim("c"))
    assert not sched.adopt(ledger.claim("c"))  # already queued: idempotent
    sched.step()
    assert ledger.state("c") is ClaimState.GRANTED
    with pytest.raises(InvalidStateError):
        sched.adopt(ledger.claim("c"))


def test_drop_and_mark_dirty() -> None:
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    sched = Scheduler(ledger, "drf", clock)
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("a", {"b": EpsDelta(0.6)}))
    sched.step()
    sched.submit(Claim("w", {"b": EpsDelta(0.6)}))
    sched.step()
    assert sched.waiting_ids() == ["w"]
    # Another process releases "a": the ledger changes behind the scheduler's back.
    ledger.release("a", 1.0)
    sched.mark_dirty(["b"])
    sched.step()
    assert ledger.state("w") is ClaimState.GRANTED
    sched.submit(Claim("x", {"b": EpsDelta(0.6)}))
    ledger.reject("x", 2.0, "withdrawn")  # withdrawn through another connection
    assert sched.drop("x") and not sched.drop("x")
    assert sched.step() == []


def test_impossible_adopted_claim_is_rejected() -> None:
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    ledger.add_block(Block("b", EpsDelta(1.0)))
    ledger.add_claim(Claim("c", {"b": EpsDelta(2.0)}))
    sched = Scheduler(ledger, "fcfs", clock)
    sched.adopt_block("b")
    assert not sched.adopt(ledger.claim("c"))
    assert ledger.state("c") is ClaimState.REJECTED
