"""The job reads only rows of blocks it was granted, and only while the grant lasts."""

from __future__ import annotations

import logging

import pytest

pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")

import torch
from opacus_helpers import QUIET, model, scheduler, sgd, train
from torch.utils.data import ConcatDataset, DataLoader

from dpf_sched.claim import Claim
from dpf_sched.errors import InvalidParameterError
from dpf_sched.integrations.opacus import (
    BlockAccessError,
    BudgetedPrivacyEngine,
    GrantedDataset,
    RunStatus,
)
from dpf_sched.selector import BlockSelector

pytestmark = QUIET


def offsets(rows) -> set[float]:
    """The block numbers of some rows (helpers put a row's block number in its first feature)."""
    return {float(v) for v in rows}


@pytest.mark.parametrize(
    ("selector", "blocks"),
    [
        (BlockSelector(ids=("b3", "b1")), ("b3", "b1")),
        (BlockSelector(attributes={"region": "eu"}), ("b0", "b2")),
        (BlockSelector(created_from=1.0, created_until=3.0), ("b1", "b2")),
        (BlockSelector(latest=1), ("b3",)),
    ],
    ids=["ids", "attribute", "time-range", "latest"],
)
def test_the_job_claims_and_reads_exactly_the_selected_blocks(selector: BlockSelector, blocks) -> None:
    sched, data = scheduler(blocks=4, rows=20)
    engine = BudgetedPrivacyEngine(sched, accountant="rdp")
    dataset = engine.dataset(data, selector)
    assert dataset.blocks == blocks and len(dataset) == 20 * len(blocks)
    with pytest.raises(BlockAccessError, match="locked"):
        dataset[0]
    m = model()
    job = engine.make_private(
        claim_id="job",
        module=m,
        optimizer=sgd(m),
        data_loader=DataLoader(dataset, batch_size=5),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        epochs=1,
    )
    seen: set[float] = set()
    with job:
        assert sched.status("job").claim.blocks == blocks
        for x, _ in job.data_loader:
            seen |= offsets(x[:, 0])
        read_all = offsets(torch.stack([dataset[i][0] for i in range(len(dataset))])[:, 0])
        for b in data:
            if b in blocks:
                assert len(dataset.rows(b)) == 20
            else:
                with pytest.raises(BlockAccessError, match="not granted"):
                    dataset.rows(b)
    wanted = {float(b[1:]) for b in blocks}
    assert seen <= wanted and read_all == wanted
    with pytest.raises(BlockAccessError):
        dataset[0]  # locked again once the job has finished
    assert job.report is not None and job.report.blocks == blocks


def test_a_block_id_column_restricts_a_single_dataset() -> None:
    sched, data = scheduler(blocks=3, rows=10)
    whole = ConcatDataset([data["b0"], data["b1"], data["b2"]])
    column = ["b0"] * 10 + ["b1"] * 10 + ["b2"] * 10
    engine = BudgetedPrivacyEngine(sched, accountant="rdp")
    dataset = engine.dataset_from_column(whole, column, BlockSelector(ids=("b2", "b0")))
    assert len(dataset) == 20 and dataset.rows_per_block() == {"b2": 10, "b0": 10}
    sched.submit(Claim.uniform("c", ["b0", "b2"], sched.ledger.budgets("b0").capacity.scale(0.01)))
    sched.step()
    dataset.open(sched.status("c"))
    assert offsets(torch.stack([dataset[i][0] for i in range(len(dataset))])[:, 0]) == {0.0, 2.0}
    assert dataset.block_of(0) == "b2" and dataset.block_of(-1) == "b0"
    with pytest.raises(IndexError):
        dataset[20]
    with pytest.raises(InvalidParameterError):
        GrantedDataset.from_block_column(whole, column[:-1], ["b0"])


def test_a_grant_must_cover_every_block_and_be_live() -> None:
    sched, data = scheduler(blocks=3, rows=10)
    small = sched.ledger.budgets("b0").capacity.scale(0.01)
    dataset = GrantedDataset(data, ["b0", "b1"])
    sched.submit(Claim.uniform("only-b0", ["b0"], small))
    sched.submit(Claim.uniform("waiting", ["b0", "b1"], small.scale(1000.0)))
    sched.step()
    with pytest.raises(BlockAccessError, match="no grant on blocks"):
        dataset.open(sched.status("only-b0"))
    with pytest.raises(BlockAccessError, match="not granted"):
        dataset.open(sched.status("waiting"))
    assert not dataset.is_open
    with pytest.raises(InvalidParameterError, match="no rows"):
        GrantedDataset(data, ["b0", "b9"])
    with pytest.raises(InvalidParameterError):
        GrantedDataset(data, ["b0", "b0"])


def test_the_blocks_must_be_named(caplog: pytest.LogCaptureFixture) -> None:
    sched, data = scheduler(blocks=2, rows=10)
    engine = BudgetedPrivacyEngine(sched, accountant="rdp")
    plain = DataLoader(ConcatDataset([data["b0"], data["b1"]]), batch_size=5)
    m = model()
    job = engine.make_private(
        claim_id="j1",
        module=m,
        optimizer=sgd(m),
        data_loader=plain,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        epochs=1,
    )
    with pytest.raises(InvalidParameterError, match="name the blocks"), job:
        pass
    # With a selector a plain dataset is accepted, with a warning that reads are not limited.
    m = model()
    job = engine.make_private(
        claim_id="j2",
        module=m,
        optimizer=sgd(m),
        data_loader=plain,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        epochs=1,
        selector=BlockSelector(ids=("b0", "b1")),
    )
    with caplog.at_level(logging.WARNING, logger="dpf_sched.integrations.opacus"), job:
        train(job, 1)
    assert "not a GrantedDataset" in caplog.text
    assert job.report is not None and job.report.status is RunStatus.COMPLETED
    # A selector that disagrees with the dataset's blocks is an error.
    granted = engine.dataset(data, BlockSelector(ids=("b0",)))
    m = model()
    job = engine.make_private(
        claim_id="j3",
        module=m,
        optimizer=sgd(m),
        data_loader=DataLoader(granted, batch_size=5),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        epochs=1,
        selector=BlockSelector(ids=("b1",)),
    )
    with pytest.raises(InvalidParameterError, match="selector picks"), job:
        pass


def test_rows_of_other_blocks_are_not_even_held() -> None:
    _, data = scheduler(blocks=3, rows=10)
    dataset = GrantedDataset(data, ["b1"])
    held = [v for v in vars(dataset).values() if isinstance(v, tuple)]
    assert not any(data["b0"] in h or data["b2"] in h for h in held)
    assert "locked" in repr(dataset)
