"""Kill driver of the write-ahead charging test: fork budgeted training jobs on one SQLite ledger, SIGKILL each.

Run as a script by ``tests/test_opacus_writeahead.py``. It imports torch and opacus once, then for each kill
forks a child that claims ``job-<i>`` on the ledger and trains a tiny model (``EPOCHS × STEPS`` steps, chunks of
``CHUNK`` steps). The child appends ``<k>`` to its steps file, fsynced, from inside the optimizer step just
before the accountant records step ``k`` (so after the step has passed the budget hook, charge included, and
before its parameter update): a step missing from the file was never let through. The parent waits until the
file holds the pinned number of steps for this kill, SIGKILLs the child (the signal lands wherever the child is:
mid step, mid charge, mid SQLite commit), reaps it, audits the ledger and records what it saw. Forking from one
warm process makes a kill cost a fraction of a second instead of an interpreter start.

Output: one JSON object on stdout (``kills``: per kill the claim, the target, the steps recorded, the claim's
consumed row on the ledger, the audit's verdict).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, RenyiCurve
from dpf_sched.clock import WallClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.integrations.opacus import BudgetedPrivacyEngine, plan_dp_sgd
from dpf_sched.ledger.sql import open_ledger
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

ROWS, BATCH, EPOCHS, CHUNK, SIGMA = 40, 8, 3, 3, 1.0
BLOCKS = ("b0", "b1")
GRID = AlphaGrid.default()


def plan() -> Any:
    """The plan every job makes (the private loader over 2 × 40 rows in batches of 8 has 10 batches)."""
    return plan_dp_sgd(GRID, sample_rate=1 / 10, steps_per_epoch=10, noise_multiplier=SIGMA, epochs=EPOCHS)


def child(url: str, claim_id: str, steps_file: Path) -> None:
    """One budgeted job; never returns (SIGKILLed, or ``os._exit``)."""
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    sched = Scheduler(open_ledger(url, create=False), "fcfs", WallClock())
    engine = BudgetedPrivacyEngine(sched, accountant="rdp")
    g = torch.Generator().manual_seed(0)
    rows = {
        b: TensorDataset(torch.randn(ROWS, 4, generator=g), torch.randint(0, 2, (ROWS,), generator=g)) for b in BLOCKS
    }
    dataset = engine.dataset(rows, BlockSelector(ids=BLOCKS))
    torch.manual_seed(0)
    model = nn.Linear(4, 2)
    job = engine.make_private(
        claim_id=claim_id,
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(dataset, batch_size=BATCH),
        noise_multiplier=SIGMA,
        max_grad_norm=1.0,
        epochs=EPOCHS,
        charge_every=CHUNK,
        timeout=30.0,
    )
    fd = os.open(steps_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    with job:
        hook = job.hook
        assert hook is not None
        accountant_hook = hook._previous  # the accountant's hook: reached only by steps the budget let through
        assert accountant_hook is not None
        taken = 0

        def record_then_account(optimizer: Any) -> None:
            nonlocal taken
            taken += 1
            os.write(fd, f"{taken}\n".encode())
            os.fsync(fd)
            accountant_hook(optimizer)

        hook._previous = record_then_account
        criterion = nn.CrossEntropyLoss()
        for _ in range(EPOCHS):
            for x, y in job.data_loader:
                job.optimizer.zero_grad()
                criterion(job.module(x), y).backward()
                job.optimizer.step()
    os._exit(0)


def warm_up() -> None:
    """Import what a job's first step imports lazily (torch._dynamo on the first optimizer, ...), once."""
    from opacus import PrivacyEngine

    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    model = nn.Linear(4, 2)
    data = DataLoader(TensorDataset(torch.randn(16, 4), torch.randint(0, 2, (16,))), batch_size=8)
    m, opt, loader = PrivacyEngine(accountant="rdp").make_private(
        module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), data_loader=data,
        noise_multiplier=1.0, max_grad_norm=1.0,
    )  # fmt: skip
    for x, y in loader:
        opt.zero_grad()
        nn.CrossEntropyLoss()(m(x), y).backward()
        opt.step()


def steps_in(path: Path) -> int:
    try:
        return len(path.read_bytes().splitlines())
    except FileNotFoundError:
        return 0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--kills", type=int, default=50)
    ap.add_argument("--seed", type=int, default=20261203)
    args = ap.parse_args()
    url = f"sqlite:///{args.dir / 'ledger.db'}"
    p = plan()
    ledger = open_ledger(url, RenyiComposition(GRID, "balle"))
    capacity = RenyiCurve(GRID, p.demand.values * (args.kills + 2))
    sched = Scheduler(ledger, "fcfs", WallClock())
    for b in BLOCKS:
        sched.add_block(Block(b, capacity, created=0.0))
    ledger.close()
    warm_up()
    rng = random.Random(args.seed)
    total = p.steps
    kills: list[dict[str, Any]] = []
    for i in range(args.kills):
        # Targets: anywhere in the run, with every chunk boundary (a charge in flight) hit on purpose.
        target = (i % (total // CHUNK + 1)) * CHUNK if i % 3 == 0 else rng.randint(0, total)
        claim_id = f"job-{i}"
        steps_file = args.dir / f"{claim_id}.steps"
        pid = os.fork()
        if pid == 0:
            try:
                child(url, claim_id, steps_file)
            finally:
                os._exit(3)
        deadline = time.monotonic() + 60
        while steps_in(steps_file) < target and time.monotonic() < deadline:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.0005)
        delay = rng.random() * 0.004  # land the signal anywhere in the next step or charge
        time.sleep(delay)
        with contextlib.suppress(ProcessLookupError):  # it may have finished already
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        led = open_ledger(url, create=False)
        try:
            audit = led.audit()
            try:
                rec = led.claim(claim_id)
            except Exception:  # the child died before submitting its claim
                consumed: list[float] | None = None
                state = None
            else:
                consumed = np.asarray(rec.consumed[BLOCKS[0]].values, dtype=float).tolist()  # type: ignore[attr-defined]
                other = np.asarray(rec.consumed[BLOCKS[1]].values, dtype=float).tolist()  # type: ignore[attr-defined]
                assert other == consumed, "the blocks of one claim were charged differently"
                state = rec.state.value
        finally:
            led.close()
        kills.append(
            {
                "claim": claim_id,
                "target": target,
                "killed": killed,
                "exit": status,
                "steps": steps_in(steps_file),
                "state": state,
                "consumed": consumed,
                "audit_ok": audit.ok,
                "audit": audit.to_dict() if not audit.ok else None,
            }
        )
    json.dump({"kills": kills, "chunk": CHUNK, "total": total}, sys.stdout)


if __name__ == "__main__":
    main()
