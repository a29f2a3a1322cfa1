"""charge_event / charge_curve: a DpEvent's curve is consumed on the claim's blocks, all or nothing, before use."""

from __future__ import annotations

import numpy as np
import pytest

dpa = pytest.importorskip("dp_accounting", reason="the DpEvent path needs the 'dp-accounting' extra")
pytest.importorskip("opacus", reason="SchedulerClient lives in the opacus integration package")

from opacus_helpers import assert_block_books_saturated  # noqa: E402

from dpf_sched.accounting_events import UnsupportedDpEventError, event_curve  # noqa: E402
from dpf_sched.block import Block  # noqa: E402
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve  # noqa: E402
from dpf_sched.claim import Claim  # noqa: E402
from dpf_sched.clock import ManualClock  # noqa: E402
from dpf_sched.composition import RenyiComposition  # noqa: E402
from dpf_sched.errors import (  # noqa: E402
    AlphaGridMismatchError,
    InvalidParameterError,
    InvalidStateError,
    OverConsumptionError,
)
from dpf_sched.integrations.charge import charge_curve, charge_event  # noqa: E402
from dpf_sched.integrations.opacus.client import SchedulerClient  # noqa: E402
from dpf_sched.ledger import ClaimState, MemoryLedger  # noqa: E402
from dpf_sched.scheduler import Scheduler  # noqa: E402

GRID = AlphaGrid.default()
EVENT = dpa.ComposedDpEvent(
    [dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.1)), 200), dpa.LaplaceDpEvent(20.0)]
)


def granted(blocks: int = 2, share: float = 3.0) -> tuple[SchedulerClient, str, RenyiCurve]:
    """A client over a FCFS scheduler whose claim ``job`` is granted ``share`` × EVENT's curve on every block."""
    sched = Scheduler(MemoryLedger(RenyiComposition(GRID, "balle")), "fcfs", ManualClock())
    capacity = EpsDelta(10.0, 1e-6).to_renyi(GRID, "balle")
    for i in range(blocks):
        sched.add_block(Block(f"b{i}", capacity))
    client = SchedulerClient(sched)
    demand = event_curve(EVENT, GRID).scale(share)
    client.submit(Claim("job", dict.fromkeys((f"b{i}" for i in range(blocks)), demand)))
    assert client.wait("job", 1.0).state is ClaimState.GRANTED
    return client, "job", demand


def consumed(client: SchedulerClient, claim_id: str) -> dict[str, np.ndarray]:
    record = client.status(claim_id)
    return {b: np.asarray(v.values) for b, v in record.consumed.items()}  # type: ignore[union-attr]


def test_an_event_is_charged_on_every_block_of_the_claim() -> None:
    client, cid, _ = granted()
    charged = charge_event(client, cid, EVENT)
    assert charged == event_curve(EVENT, GRID)
    for block, values in consumed(client, cid).items():
        assert np.array_equal(values, charged.values), block
        assert_block_books_saturated(client.scheduler.ledger, block, cid)  # the block books it saturated
    charge_event(client, cid, EVENT)
    assert all(np.array_equal(v, (charged + charged).values) for v in consumed(client, cid).values())


def test_an_event_can_be_charged_on_some_blocks_only() -> None:
    client, cid, _ = granted(blocks=3)
    charge_event(client, cid, dpa.GaussianDpEvent(8.0), blocks=["b1"])
    got = consumed(client, cid)
    assert not got["b0"].any() and not got["b2"].any()
    assert np.array_equal(got["b1"], event_curve(dpa.GaussianDpEvent(8.0), GRID).values)
    for bad in ([], ["b1", "b1"], ["b9"], "b1"):
        with pytest.raises(InvalidParameterError):
            charge_event(client, cid, dpa.GaussianDpEvent(8.0), blocks=bad)  # type: ignore[arg-type]
    assert np.array_equal(consumed(client, cid)["b1"], got["b1"])


def test_a_charge_beyond_the_grant_is_refused_and_charges_nothing() -> None:
    client, cid, _ = granted(share=1.5)
    charge_event(client, cid, EVENT)
    before = consumed(client, cid)
    with pytest.raises(OverConsumptionError):
        charge_event(client, cid, EVENT)  # 2 × the event's curve > 1.5 × it
    assert all(np.array_equal(consumed(client, cid)[b], before[b]) for b in before)
    assert client.status(cid).state is ClaimState.GRANTED


def test_nothing_is_charged_for_an_unsupported_event_or_a_claim_that_is_not_granted() -> None:
    client, cid, _ = granted()
    with pytest.raises(UnsupportedDpEventError, match="NonPrivateDpEvent"):
        charge_event(client, cid, dpa.ComposedDpEvent([dpa.GaussianDpEvent(1.0), dpa.NonPrivateDpEvent()]))
    assert not any(v.any() for v in consumed(client, cid).values())
    with pytest.raises(InvalidParameterError, match="charge_curve"):
        charge_event(client, cid, RenyiCurve.constant(GRID, 0.1))
    client.release(cid)
    with pytest.raises(InvalidStateError, match="not granted"):
        charge_event(client, cid, EVENT)


def test_a_curve_must_be_on_the_ledgers_grid() -> None:
    client, cid, _ = granted()
    other = RenyiCurve.constant(AlphaGrid((2.0, 4.0)), 0.1)
    with pytest.raises(AlphaGridMismatchError):
        charge_curve(client, cid, other)
    curve = RenyiCurve.constant(GRID, 0.01)
    assert charge_curve(client, cid, curve) is curve
