"""BudgetedSweep: K trials under one claim, every trial charged before it runs, the over-budget one refused with
nothing charged, the rest released at the end, and the ledger holding exactly the sum of the trial charges."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest

dpa = pytest.importorskip("dp_accounting", reason="DpEvent trials need the 'dp-accounting' extra")
pytest.importorskip("opacus", reason="SchedulerClient lives in the opacus integration package")

from dpf_sched.accounting_events import event_curve  # noqa: E402
from dpf_sched.block import Block  # noqa: E402
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta, RenyiCurve  # noqa: E402
from dpf_sched.claim import Claim  # noqa: E402
from dpf_sched.clock import ManualClock  # noqa: E402
from dpf_sched.composition import RenyiComposition  # noqa: E402
from dpf_sched.errors import InvalidStateError  # noqa: E402
from dpf_sched.integrations.opacus.client import SchedulerClient  # noqa: E402
from dpf_sched.integrations.sweep import BudgetedSweep, TrialRefusedError  # noqa: E402
from dpf_sched.ledger import ClaimState, MemoryLedger  # noqa: E402
from dpf_sched.scheduler import Scheduler  # noqa: E402

GRID = AlphaGrid.default()


def dp_sgd(sigma: float, q: float = 0.02, steps: int = 250) -> object:
    return dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)


# Three trials: two DP-SGD runs (DpEvents) and one described by its curve directly.
TRIALS = [dp_sgd(1.0), dp_sgd(1.5), RenyiCurve(GRID, event_curve(dpa.LaplaceDpEvent(5.0), GRID).values)]


def client_with_claim(demand: RenyiCurve, blocks: int = 2) -> tuple[SchedulerClient, str]:
    sched = Scheduler(MemoryLedger(RenyiComposition(GRID, "balle")), "fcfs", ManualClock())
    capacity = EpsDelta(20.0, 1e-6).to_renyi(GRID, "balle")
    for i in range(blocks):
        sched.add_block(Block(f"b{i}", capacity))
    client = SchedulerClient(sched)
    client.submit(Claim("sweep", dict.fromkeys((f"b{i}" for i in range(blocks)), demand)))
    assert client.wait("sweep", 1.0).state is ClaimState.GRANTED
    return client, "sweep"


def ledger_consumed(client: SchedulerClient, block: str, cid: str = "sweep") -> np.ndarray:
    """The claim's true consumption on ``block`` as the ledger records it (its ``ClaimRecord``, not the block's
    buckets, which book it saturated: docs/ledger.md, "Saturation")."""
    return np.asarray(client.scheduler.ledger.claim(cid).consumed[block].values)  # type: ignore[union-attr]


def assert_saturated(booked: np.ndarray, true: np.ndarray, capacity: np.ndarray) -> None:
    """A block's consumed bucket holds ``min(true, 2 × capacity)`` per order (0 at orders of zero capacity):
    exactly the true value wherever it is below 2 × capacity, and 2 × capacity up to rounding elsewhere."""
    below = true < 2.0 * capacity
    assert np.array_equal(booked[below], true[below])
    np.testing.assert_allclose(booked, np.where(capacity > 0, np.minimum(true, 2.0 * capacity), 0.0), rtol=1e-12)


def assert_blocks_book_saturated(client: SchedulerClient, cid: str = "sweep") -> None:
    """Every block of the (only) claim books that claim's consumption saturated (docs/ledger.md)."""
    ledger = client.scheduler.ledger
    for block in ledger.claim(cid).claim.blocks:
        budgets = ledger.budgets(block)
        assert_saturated(
            np.asarray(budgets.consumed.values),  # type: ignore[union-attr]
            ledger_consumed(client, block, cid),
            np.asarray(budgets.capacity.values),  # type: ignore[union-attr]
        )


def test_every_trial_is_charged_and_the_ledger_holds_exactly_their_sum() -> None:
    demand = BudgetedSweep.demand(TRIALS, GRID)
    client, cid = client_with_claim(demand)
    with BudgetedSweep(client, cid) as sweep:
        for k, cost in enumerate(TRIALS):
            trial = sweep.charge(cost, name=f"t{k}")
            assert trial.index == k and trial.charge == (
                cost if isinstance(cost, RenyiCurve) else event_curve(cost, GRID)
            )
    report = sweep.report
    assert report is not None and report.released and report.claim_state == "finished"
    assert [t.name for t in report.trials] == ["t0", "t1", "t2"] and report.refused == ()
    expected = np.zeros(len(GRID))
    for t in report.trials:
        expected = expected + t.charge.values
    capacity = np.asarray(client.scheduler.ledger.budgets("b0").capacity.values)  # type: ignore[union-attr]
    # The demand is far above the capacity at the high orders and the lowest order has none: the blocks book
    # saturated values there, the true ones elsewhere.
    assert (expected < 2 * capacity).any() and (expected > 2 * capacity).any() and (capacity == 0).any()
    for block in ("b0", "b1"):
        assert np.array_equal(ledger_consumed(client, block), expected)  # exactly, not approximately
        assert np.array_equal(report.consumed[block].values, expected)
        assert client.scheduler.ledger.budgets(block).allocated.is_zero()
    assert_blocks_book_saturated(client)
    assert np.array_equal(report.total.values, expected)
    assert report.to_dict()["trials"][1]["charge"] == report.trials[1].charge.values.tolist()


def test_many_trials_sum_exactly() -> None:
    costs = [dp_sgd(0.8 + 0.05 * k, q=0.01 + 0.001 * k, steps=100 + 7 * k) for k in range(25)]
    client, cid = client_with_claim(BudgetedSweep.demand(costs, GRID).scale(1.01), blocks=1)
    sweep = BudgetedSweep(client, cid)
    for cost in costs:
        sweep.charge(cost)
    report = sweep.finish()
    assert len(report.trials) == 25 and report.trials[24].name == "trial-24"
    assert np.array_equal(ledger_consumed(client, "b0"), report.total.values)
    assert_blocks_book_saturated(client)
    assert sweep.finish() is report  # once


def test_a_trial_over_the_claim_is_refused_and_nothing_is_charged() -> None:
    client, cid = client_with_claim(BudgetedSweep.demand(TRIALS[:2], GRID))
    sweep = BudgetedSweep(client, cid)
    sweep.charge(TRIALS[0], "a")
    before = {b: ledger_consumed(client, b) for b in ("b0", "b1")}
    remaining = sweep.remaining()
    ran: list[str] = []

    def train_big() -> None:
        ran.append("big")

    big = dp_sgd(0.5)
    assert not sweep.can_afford(big)
    with pytest.raises(TrialRefusedError, match=r"'train_big'.*not charged and must not run") as err:
        sweep.run(big, train_big)
    assert ran == []  # the trial never ran
    assert err.value.trial == "train_big" and err.value.alpha in GRID.orders
    assert err.value.charge == event_curve(big, GRID)
    with pytest.raises(TrialRefusedError) as err2:
        sweep.charge(big, "big")
    assert err2.value.trial == "big"
    for b in ("b0", "b1"):
        assert np.array_equal(ledger_consumed(client, b), before[b])
    assert all(sweep.remaining()[b] == remaining[b] for b in remaining)
    assert sweep.can_afford(TRIALS[1])
    sweep.charge(TRIALS[1], "b")  # what was claimed for it is still there
    report = sweep.finish()
    assert [t.name for t in report.trials] == ["a", "b"] and report.refused == ("train_big", "big")
    assert np.array_equal(ledger_consumed(client, "b0"), report.total.values)
    assert_blocks_book_saturated(client)


def test_run_charges_before_the_trial_reads_anything() -> None:
    client, cid = client_with_claim(BudgetedSweep.demand(TRIALS, GRID))
    sweep = BudgetedSweep(client, cid, blocks=["b1"])

    def train(seed: int) -> float:
        # Inside the trial its charge is already in the ledger.
        assert np.array_equal(ledger_consumed(client, "b1"), event_curve(TRIALS[0], GRID).values)
        assert_blocks_book_saturated(client)
        return 0.5 + seed

    assert sweep.run(TRIALS[0], train, seed=1) == 1.5
    report = sweep.finish()
    assert report.trials[0].name == "train" and report.blocks == ("b1",)
    assert not ledger_consumed(client, "b0").any()  # only the named block was charged
    assert_blocks_book_saturated(client)


def test_leaving_with_an_error_still_releases_the_rest() -> None:
    client, cid = client_with_claim(BudgetedSweep.demand(TRIALS, GRID))
    with pytest.raises(RuntimeError, match="diverged"), BudgetedSweep(client, cid) as sweep:
        sweep.charge(TRIALS[0])
        raise RuntimeError("diverged")
    assert client.status(cid).state is ClaimState.FINISHED
    assert np.array_equal(ledger_consumed(client, "b0"), event_curve(TRIALS[0], GRID).values)
    assert_blocks_book_saturated(client)
    with pytest.raises(InvalidStateError, match="finished"):
        sweep.charge(TRIALS[1])


def test_a_sweep_needs_a_granted_claim() -> None:
    client, cid = client_with_claim(BudgetedSweep.demand(TRIALS, GRID))
    client.release(cid)
    with pytest.raises(InvalidStateError, match="not granted"):
        BudgetedSweep(client, cid)


class Interloper(SchedulerClient):
    """A client through which someone else spends on the same claim between the sweep's check and its charge."""

    def __init__(self, inner: SchedulerClient, steal: RenyiCurve) -> None:
        super().__init__(inner.scheduler)
        self.steal: RenyiCurve | None = steal

    def consume(self, claim_id: str, amounts: Mapping[str, Budget] | None = None) -> None:
        if self.steal is not None:
            steal, self.steal = self.steal, None
            super().consume(claim_id, dict.fromkeys(self.scheduler.status(claim_id).claim.blocks, steal))
        super().consume(claim_id, amounts)


def test_a_charge_that_loses_a_race_is_refused_by_the_ledger_and_charges_nothing() -> None:
    demand = BudgetedSweep.demand(TRIALS[:2], GRID)
    inner, cid = client_with_claim(demand)
    client = Interloper(inner, event_curve(TRIALS[1], GRID))
    sweep = BudgetedSweep(client, cid)
    sweep.charge(TRIALS[1], "first")  # the interloper takes the other trial's share first
    stolen = ledger_consumed(client, "b0")
    with pytest.raises(TrialRefusedError):
        sweep.charge(TRIALS[0], "second")
    assert np.array_equal(ledger_consumed(client, "b0"), stolen)
    assert_blocks_book_saturated(client)
    report = sweep.finish()
    assert report.refused == ("second",) and len(report.trials) == 1
