"""Shared set-up of the Opacus integration tests: a Rényi scheduler, synthetic blocks, a tiny model, a loop.

Imported only by test modules that have already skipped themselves when opacus is missing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.clock import Clock, ManualClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.ledger import MemoryLedger
from dpf_sched.scheduler import Scheduler

#: Opacus's and torch's advice that does not apply to these tests (secure RNG, experimental GDP, hooks on a model
#: whose inputs need no gradient); applied with ``pytestmark = QUIET`` in each test module.
QUIET = [
    pytest.mark.filterwarnings("ignore:Secure RNG turned off:UserWarning"),
    pytest.mark.filterwarnings("ignore:GDP accounting is experimental:UserWarning"),
    pytest.mark.filterwarnings("ignore:Full backward hook is firing:UserWarning"),
]

GRID = AlphaGrid.default()
FEATURES = 4


def block_rows(rows: int, seed: int, offset: float = 0.0) -> TensorDataset:
    """Rows of one block; the first feature column holds ``offset`` so a row's block can be told from it."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, FEATURES, generator=g)
    x[:, 0] = offset
    y = (x[:, 1] > 0).long()
    return TensorDataset(x, y)


def scheduler(
    policy: str = "fcfs",
    *,
    blocks: int = 3,
    rows: int = 40,
    epsilon: float = 50.0,
    delta: float = 1e-6,
    clock: Clock | None = None,
    **params: Any,
) -> tuple[Scheduler, dict[str, TensorDataset]]:
    """A Rényi scheduler holding ``blocks`` blocks ``b0, b1, ...`` (created at 0, 1, ...; even ones tagged
    ``region=eu``), each of ``rows`` rows and capacity (``epsilon``, ``delta``)."""
    clock = clock if clock is not None else ManualClock()
    sched = Scheduler(MemoryLedger(RenyiComposition(GRID, "balle")), policy, clock, **params)
    capacity = EpsDelta(epsilon, delta).to_renyi(GRID, "balle")
    data = {}
    for i in range(blocks):
        name = f"b{i}"
        region = "eu" if i % 2 == 0 else "us"
        sched.add_block(Block(name, capacity, created=float(i), attributes={"region": region}))
        data[name] = block_rows(rows, seed=i, offset=float(i))
    return sched, data


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Linear(FEATURES, 2)


def sgd(m: nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(m.parameters(), lr=0.1)


def train(
    job: Any,
    epochs: int,
    *,
    loader: Any = None,
    after_step: Callable[[int], None] | None = None,
    after_epoch: Callable[[int], None] | None = None,
) -> int:
    """Standard Opacus loop over ``epochs``; returns the number of ``optimizer.step()`` calls that returned."""
    criterion = nn.CrossEntropyLoss()
    taken = 0
    for epoch in range(epochs):
        for x, y in loader if loader is not None else job.data_loader:
            job.optimizer.zero_grad()
            criterion(job.module(x), y).backward()
            job.optimizer.step()
            taken += 1
            if after_step is not None:
                after_step(taken)
        if after_epoch is not None:
            after_epoch(epoch)
    return taken


def params_of(m: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in m.parameters()]


def same_params(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def rel_gap(a: RenyiCurve | np.ndarray, b: RenyiCurve | np.ndarray) -> float:
    """Largest relative difference over the orders."""
    x = a.values if isinstance(a, RenyiCurve) else np.asarray(a, dtype=float)
    y = b.values if isinstance(b, RenyiCurve) else np.asarray(b, dtype=float)
    scale = np.maximum(np.maximum(np.abs(x), np.abs(y)), 1e-300)
    return float(np.max(np.abs(x - y) / scale))


def assert_block_books_saturated(ledger: Any, block: str, claim_id: str) -> None:
    """``block``'s consumed bucket holds the claim's true consumption (its record) saturated per order:
    ``min(true, 2 × capacity)``, 0 where the capacity is 0 (docs/ledger.md, "Saturation"); bit for bit wherever the
    true value is below 2 × capacity. Only for a block whose sole consumer is that claim."""
    true = np.asarray(ledger.claim(claim_id).consumed[block].values, dtype=float)
    budgets = ledger.budgets(block)
    booked = np.asarray(budgets.consumed.values, dtype=float)
    capacity = np.asarray(budgets.capacity.values, dtype=float)
    below = true < 2.0 * capacity
    assert np.array_equal(booked[below], true[below]), (block, booked, true)
    np.testing.assert_allclose(booked, np.where(capacity > 0, np.minimum(true, 2.0 * capacity), 0.0), rtol=1e-12)
