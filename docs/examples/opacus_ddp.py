"""A budgeted DP-SGD job on several processes (DDP): one claim, charged once per global step by rank 0.

``--world-size N`` processes (``torch.multiprocessing.spawn``, the gloo backend on CPU; NCCL on GPUs works the
same) train one model wrapped in Opacus's ``DPDDP``. Only rank 0 talks to the budget scheduler (an in-process
scheduler over a SQLite ledger here; a ``ServiceClient`` would do the same): it claims the job's demand, charges
each chunk of steps before it runs, and commits; the grant, every charge decision and the commit are broadcast,
so all ranks take, charge and stop at the same global steps. The demand and the charges use the global sample
rate (the global batch over the whole dataset), the rate each rank's accountant records. After the job, the same
plan runs in one process with the same global batch, as the reference::

    python docs/examples/opacus_ddp.py --world-size 2 --json

prints the steps each rank took, what the DDP claim consumed and what the single-process reference consumed
(``consumed`` equals ``reference`` at every α), and the ledger audit. ``--kill-rank R --kill-at-step S`` SIGKILLs
rank R after its step S (the other ranks are then stopped by ``spawn``): the output then has the steps rank 0 let
through, the claim's consumption and the write-ahead bound check instead. Exits 1 when a check fails. Needs the
``opacus`` extra.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpf_sched.accounting import subsampled_gaussian_rdp
from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, RenyiCurve
from dpf_sched.clock import WallClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.integrations.opacus import BudgetedPrivacyEngine, BudgetedTraining, plan_dp_sgd
from dpf_sched.ledger.sql import open_ledger
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

# 2 blocks × 240 rows, global batch 60: q = 1/8, 8 steps per epoch. Opacus's distributed sampler skips a rank's
# empty Poisson batch (that rank would fall out of step with the others): with 480 / world rows per rank an empty
# batch has probability (7/8)^120 ≈ 1e-7 per step at 4 ranks, where 48 rows per block made it 4 %.
ROWS, GLOBAL_BATCH, EPOCHS, SIGMA, CHUNK = 240, 60, 2, 1.0, 3
BLOCKS = ("day-0", "day-1")
GRID = AlphaGrid.default()


def rows() -> dict[str, TensorDataset]:
    g = torch.Generator().manual_seed(7)
    return {b: TensorDataset(torch.randn(ROWS, 8, generator=g), torch.randint(0, 2, (ROWS,), generator=g))
            for b in BLOCKS}  # fmt: skip


def make_job(engine: BudgetedPrivacyEngine, claim_id: str, module: nn.Module) -> BudgetedTraining:
    dataset = engine.dataset(rows(), BlockSelector(ids=BLOCKS))
    return engine.make_private(
        claim_id=claim_id,
        module=module,
        optimizer=torch.optim.SGD(module.parameters(), lr=0.1),
        data_loader=DataLoader(dataset, batch_size=GLOBAL_BATCH),  # the global batch: Opacus splits it by rank
        noise_multiplier=SIGMA,
        max_grad_norm=1.0,
        epochs=EPOCHS,
        charge_every=CHUNK,
        timeout=60.0,
    )


def train(job: BudgetedTraining, after_step: Any = None) -> None:
    criterion = nn.CrossEntropyLoss()
    for _ in range(EPOCHS):
        for x, y in job.data_loader:
            job.optimizer.zero_grad()
            criterion(job.module(x), y).backward()
            job.optimizer.step()
            if after_step is not None:
                after_step(job.steps_taken)


def worker(rank: int, world: int, port: int, db: str, out: str, kill: tuple[int, int] | None) -> None:
    """One rank of the DDP job."""
    from opacus.distributed import DifferentiallyPrivateDistributedDataParallel as DPDDP  # noqa: N817

    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=300))
    client = Scheduler(open_ledger(db, create=False), "fcfs", WallClock()) if rank == 0 else None
    engine = BudgetedPrivacyEngine(client, accountant="rdp")  # distributed: torch.distributed is initialised
    torch.manual_seed(0)
    job = make_job(engine, "ddp-job", DPDDP(nn.Linear(8, 2)))
    steps_file = Path(out) / "rank0.steps"

    def after_step(step: int) -> None:
        if kill is not None and rank == kill[0] and step == kill[1]:
            os.kill(os.getpid(), signal.SIGKILL)

    with job:
        if rank == 0:  # record each step rank 0 lets through the budget hook (before the accountant records it)
            hook = job.hook
            assert hook is not None
            accountant_hook = hook._previous
            fd = os.open(steps_file, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

            def record(optimizer: Any) -> None:
                os.write(fd, b"1\n")
                os.fsync(fd)
                assert accountant_hook is not None
                accountant_hook(optimizer)

            hook._previous = record
        train(job, after_step)
    report = job.report
    assert report is not None
    result = {"rank": rank, "steps": job.steps_taken, "status": report.status.value,
              "history": [list(e) for e in engine.accountant.history]}  # fmt: skip
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def curve_dict(values: Any) -> dict[str, float]:
    return {repr(a): float(v) for a, v in zip(GRID.orders, values, strict=True)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="opacus-example-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    db = f"sqlite:///{work / 'ledger.db'}"
    q = 1 / (2 * ROWS // GLOBAL_BATCH)
    plan = plan_dp_sgd(GRID, sample_rate=q, steps_per_epoch=2 * ROWS // GLOBAL_BATCH, noise_multiplier=SIGMA,
                       epochs=EPOCHS)  # fmt: skip
    led = open_ledger(db, RenyiComposition(GRID, "balle"))
    sched = Scheduler(led, "fcfs", WallClock())
    for b in BLOCKS:
        sched.add_block(Block(b, RenyiCurve(GRID, plan.demand.values * 3), created=0.0))
    led.close()
    kill = (args.kill_rank, args.kill_at_step) if args.kill_rank is not None else None
    killed = False
    try:
        mp.spawn(worker, args=(args.world_size, free_port(), db, str(work), kill), nprocs=args.world_size)
    except mp.ProcessExitedException:
        killed = True
    except Exception:  # another rank failed first, after the kill (its peer vanished)
        if kill is None:
            raise
        killed = True
    led = open_ledger(db, create=False)
    try:
        audit = led.audit()
        ddp = led.claim("ddp-job")
        consumed = np.asarray(ddp.consumed[BLOCKS[0]].values, dtype=float)  # type: ignore[attr-defined]
        out: dict[str, Any] = {"world_size": args.world_size, "audit": {"ok": audit.ok}, "claim_state": ddp.state.value}
    finally:
        led.close()
    if kill is not None:
        recorded = len((work / "rank0.steps").read_bytes().splitlines()) if (work / "rank0.steps").exists() else 0
        charged = [n for n in range(plan.steps + 1)
                   if np.allclose(consumed, subsampled_gaussian_rdp(GRID.array, SIGMA, q, n), rtol=1e-12, atol=0)]
        n = charged[0] if charged else -1
        out.update(killed=killed, killed_rank=args.kill_rank, recorded_steps=recorded, charged_steps=n,
                   chunk=CHUNK, consumed=curve_dict(consumed),
                   within_bound=recorded <= n <= recorded + CHUNK)  # fmt: skip
        out["ok"] = audit.ok and out["within_bound"]
        return out
    ranks = [json.loads((work / f"rank{r}.json").read_text()) for r in range(args.world_size)]
    # The single-process reference: the same plan, the same global batch, one process, its own claim.
    sched = Scheduler(open_ledger(db, create=False), "fcfs", WallClock())
    torch.manual_seed(0)
    reference_job = make_job(BudgetedPrivacyEngine(sched, accountant="rdp", distributed=False), "reference",
                             nn.Linear(8, 2))  # fmt: skip
    with reference_job:
        train(reference_job)
    reference = np.asarray(sched.ledger.claim("reference").consumed[BLOCKS[0]].values, dtype=float)  # type: ignore[attr-defined]
    audit_after = sched.ledger.audit()  # type: ignore[attr-defined]
    out.update(
        ranks=[{"rank": r["rank"], "steps": r["steps"], "status": r["status"]} for r in ranks],
        alphas=list(GRID.orders),
        consumed=curve_dict(consumed),
        reference=curve_dict(reference),
        reference_steps=reference_job.steps_taken,
        equal=bool(np.array_equal(consumed, reference)),
        audit={"ok": audit.ok and audit_after.ok},
    )
    same_steps = len({r["steps"] for r in ranks}) == 1 and ranks[0]["steps"] == reference_job.steps_taken
    out["ok"] = out["equal"] and same_steps and out["audit"]["ok"] and out["claim_state"] == "finished"
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--world-size", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--kill-rank", type=int, help="SIGKILL this rank ...")
    ap.add_argument("--kill-at-step", type=int, default=3, help="... after this global step")
    args = ap.parse_args(argv)
    if args.world_size < 1:
        ap.error("--world-size must be at least 1")
    if args.kill_rank is not None and not 0 <= args.kill_rank < args.world_size:
        ap.error("--kill-rank must be a rank of the job")
    warnings.filterwarnings("ignore")
    out = run(args)
    if args.json:
        print(json.dumps(out))  # noqa: T201
    else:
        print(json.dumps(out, indent=2))  # noqa: T201
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
