"""Scheduler behaviour: timeouts, consume/release, selectors, retirement, unlocking schedules, round robin."""

from __future__ import annotations

import numpy as np
import pytest

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock, WallClock
from dpf_sched.composition import BasicComposition, RenyiComposition
from dpf_sched.errors import InvalidStateError, OverConsumptionError, UnknownClaimError
from dpf_sched.ledger import ClaimState, MemoryLedger
from dpf_sched.policies.round_robin import water_fill
from dpf_sched.policies.unlocking import UnlockOverTime
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector


def basic(policy: str = "dpf-n", **params):
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    return Scheduler(ledger, policy, clock, **params), ledger, clock


def test_timeout_rejects_a_waiting_claim() -> None:
    sched, _ledger, clock = basic("dpf-n", N=10)
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("c", {"b": EpsDelta(0.5)}, timeout=5.0))
    sched.step()
    assert sched.next_wakeup() == 5.0
    clock.set(5.0)
    sched.step()
    rec = sched.status("c")
    assert rec.state is ClaimState.REJECTED and rec.reason == "timeout"
    assert sched.next_wakeup() is None


def test_never_satisfiable_claim_is_rejected_at_once() -> None:
    sched, _ledger, _clock = basic("dpf-n", N=10)
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("big", {"b": EpsDelta(1.5)}))
    assert sched.status("big").state is ClaimState.REJECTED
    assert "can ever provide" in (sched.status("big").reason or "")


def test_partial_consume_then_release_returns_the_rest() -> None:
    sched, ledger, _clock = basic("fcfs")
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("a", {"b": EpsDelta(0.8)}))
    sched.step()
    sched.consume("a", {"b": EpsDelta(0.3)})
    with pytest.raises(OverConsumptionError):
        sched.consume("a", {"b": EpsDelta(0.6)})
    sched.release("a")
    assert ledger.budgets("b").consumed == EpsDelta(0.3)
    assert ledger.budgets("b").unlocked.epsilon == pytest.approx(0.7)
    with pytest.raises(InvalidStateError):
        sched.consume("a")
    assert ledger.violations() == []


def test_release_wakes_a_waiting_claim_under_drf() -> None:
    sched, ledger, clock = basic("drf")
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("a", {"b": EpsDelta(0.8)}))
    sched.submit(Claim("w", {"b": EpsDelta(0.5)}))
    assert [o.claim_id for o in sched.step()] == ["w"]  # smaller share first
    assert sched.status("a").state is ClaimState.WAITING
    clock.set(1)
    sched.consume("w", {"b": EpsDelta(0.1)})
    sched.release("w")
    assert [o.claim_id for o in sched.step()] == ["a"]
    assert ledger.violations() == []


def test_selector_by_attribute_time_and_latest() -> None:
    sched, ledger, clock = basic("fcfs")
    for i in range(5):
        clock.set(float(i))
        sched.add_block(Block(f"d{i}", EpsDelta(1.0), created=float(i), attributes={"src": "a" if i % 2 else "b"}))
    assert BlockSelector(attributes={"src": "a"}).select(ledger.blocks()) == ("d1", "d3")
    assert BlockSelector(created_from=1, created_until=3).select(ledger.blocks()) == ("d1", "d2")
    assert BlockSelector(latest=2).select(ledger.blocks()) == ("d3", "d4")
    sched.submit_request("c", BlockSelector(attributes={"src": "b"}, latest=2), EpsDelta(0.2))
    assert sched.status("c").claim.blocks == ("d2", "d4")


def test_retired_block_rejects_its_waiting_claims() -> None:
    sched, _ledger, _clock = basic("dpf-n", N=10)
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("c", {"b": EpsDelta(0.5)}))
    sched.step()
    sched.retire_block("b")
    sched.step()
    assert sched.status("c").state is ClaimState.REJECTED
    assert sched.status("c").reason == "block retired"


def test_dpf_t_paper_unlock_schedule() -> None:
    sched, ledger, clock = basic("dpf-t", T=10.0, tick=1.0)
    clock.set(0.5)
    sched.add_block(Block("b", EpsDelta(1.0), created=0.5))
    assert ledger.unlocked_fraction[0] == 0.0
    fractions = []
    while (w := sched.next_wakeup()) is not None:
        clock.set(w)
        sched.step()
        fractions.append((w, float(ledger.unlocked_fraction[0])))
    assert fractions[0] == (1.0, pytest.approx(0.05))
    assert fractions[-1] == (11.0, 1.0)
    assert ledger.unlocked[0, 0] == 1.0 and ledger.locked[0, 0] == 0.0


def test_dpf_t_artifact_unlock_schedule() -> None:
    unl = UnlockOverTime(T=4.0, tick=1.0, mode="artifact")
    assert unl.K == 5
    sched, ledger, clock = basic("dpf-t", T=4.0, tick=1.0, unlock="artifact")
    sched.add_block(Block("b", EpsDelta(1.0)))
    seen = [float(ledger.unlocked_fraction[0])]
    while (w := sched.next_wakeup()) is not None:
        clock.set(w)
        sched.step()
        seen.append(float(ledger.unlocked_fraction[0]))
    assert seen == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0])


def test_dpf_n_unlocks_exactly_the_capacity_after_n_arrivals() -> None:
    sched, ledger, _clock = basic("dpf-n", N=3)
    sched.add_block(Block("b", EpsDelta(1.0)))
    for i in range(5):
        sched.submit(Claim(f"c{i}", {"b": EpsDelta(1 / 3)}))
    assert ledger.unlocked_fraction[0] == 1.0 and ledger.locked[0, 0] == 0.0
    granted = [o.claim_id for o in sched.step()]
    assert granted == ["c0", "c1", "c2"]  # three fair shares of exactly 1/3 fit despite rounding
    assert ledger.violations() == []


def test_renyi_grant_uses_some_order_per_block() -> None:
    grid = AlphaGrid((2.0, 8.0))
    ledger = MemoryLedger(RenyiComposition(grid))
    sched = Scheduler(ledger, "drf", ManualClock())
    sched.add_block(Block("b", RenyiCurve(grid, [1.0, 1.0])))
    # Fits only at α=8 the first time; the second claim fits at neither afterwards.
    sched.submit(Claim("x", {"b": RenyiCurve(grid, [1.5, 0.6])}))
    sched.submit(Claim("y", {"b": RenyiCurve(grid, [0.5, 0.5])}))
    granted = [o.claim_id for o in sched.step()]
    assert granted == ["y"]  # y has the smaller dominant share (max over orders 0.5 < 1.5)
    assert ledger.violations() == []
    assert np.allclose(ledger.unlocked[0], [0.5, 0.5])


def test_water_fill_is_max_min_fair() -> None:
    need = np.array([0.1, 0.5, 1.0])
    assert np.allclose(water_fill(need, 2.0), need)
    got = water_fill(need, 0.7)
    assert np.isclose(got.sum(), 0.7)
    assert np.allclose(got, [0.1, 0.3, 0.3])


def test_round_robin_loses_budget_poured_into_expired_claims() -> None:
    sched, ledger, clock = basic("rr-n", N=2)
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("a", {"b": EpsDelta(0.9)}, timeout=1.0))
    sched.step()  # 0.5 unlocked, all poured into a
    clock.set(1.0)
    sched.step()  # a expires; its 0.5 is lost to RR
    sched.submit(Claim("b2", {"b": EpsDelta(0.4)}))
    sched.step()  # 0.5 more unlocked → poured into b2 (needs 0.4) → granted
    assert sched.status("a").state is ClaimState.REJECTED
    assert sched.status("b2").state is ClaimState.GRANTED
    clock.set(2.0)
    sched.submit(Claim("c", {"b": EpsDelta(0.5)}))
    sched.step()
    # Unlocked is 0.6 in the ledger, but RR lost 0.5 of it with a: c (0.5) cannot be served.
    assert ledger.unlocked[0, 0] == pytest.approx(0.6)
    assert sched.status("c").state is ClaimState.WAITING


def test_wall_clock_scheduler_runs() -> None:
    ledger = MemoryLedger(BasicComposition())
    sched = Scheduler(ledger, "fcfs", WallClock())
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("c", {"b": EpsDelta(0.1)}))
    assert [o.claim_id for o in sched.step()] == ["c"]
    assert sched.status("c").claim.arrival > 1e9


def test_withdraw_rejects_a_waiting_claim_and_it_never_runs() -> None:
    sched, ledger, _clock = basic("dpf-n", N=10)
    sched.add_block(Block("b", EpsDelta(1.0)))
    sched.submit(Claim("w", {"b": EpsDelta(0.5)}))
    sched.step()
    assert sched.status("w").state is ClaimState.WAITING
    before = ledger.unlocked.copy()
    sched.withdraw("w")
    rec = sched.status("w")
    assert rec.state is ClaimState.REJECTED and rec.reason == "withdrawn"
    for i in range(12):  # enough arrivals to unlock everything: the withdrawn claim is never granted
        sched.submit(Claim(f"c{i}", {"b": EpsDelta(0.01)}))
        sched.step()
    assert sched.status("w").state is ClaimState.REJECTED
    assert (ledger.unlocked >= before - 1e-12).all()
    with pytest.raises(InvalidStateError):
        sched.withdraw("w")
    with pytest.raises(InvalidStateError):
        sched.withdraw("c0")  # granted: release it instead
    with pytest.raises(UnknownClaimError):
        sched.withdraw("nope")


def test_wall_clock_never_goes_backwards(monkeypatch: pytest.MonkeyPatch) -> None:
    import dpf_sched.clock as clock_mod

    readings = iter([100.0, 99.0, 101.0])  # the system clock is stepped back once (NTP)
    monkeypatch.setattr(clock_mod.time, "time", lambda: next(readings))
    clock = WallClock()
    assert [clock.now(), clock.now(), clock.now()] == [100.0, 100.0, 101.0]
