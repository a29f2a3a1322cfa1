"""Checkpoint, crash and resume a budgeted DP-SGD job: the resumed job pays exactly what an uninterrupted one pays.

A child process (forked) claims the budget of a 5-epoch DP-SGD job, trains 3 epochs, saves a checkpoint (the model,
and the session's :meth:`BudgetedTraining.state_dict` with plain ``torch.save``) and is then killed with SIGKILL,
as a preempted job would be. A new session loads the checkpoint: its claim is still granted, so it continues the
same claim (no second claim, nothing charged twice) and trains the last 2 epochs. An uninterrupted job of the same
plan runs beside it for reference. The script prints what the resumed claim consumed, what the uninterrupted one
consumed (``expected``), the accountants' ε, and the ledger audit::

    python docs/examples/opacus_resume.py --json
    python docs/examples/opacus_resume.py --release-before-resume --json   # the claim ended: claim the rest

With ``--release-before-resume`` the claim is finished before the resume (as an expired lease would end it): the
resumed session then claims only the 2 remaining epochs under ``<claim>-resume1`` and says so in its notes.
``--service URL --token T`` runs the jobs through a ``dpf-sched serve`` (its blocks ``--blocks`` must exist);
otherwise a SQLite ledger in a temporary directory (``--db`` to choose it) is used with the in-process scheduler.
The script exits 1 if consumed ≠ expected beyond 1e-12 (relative), if the ε differ, or if the audit fails.
Needs the ``opacus`` extra (and ``service`` with ``--service``); Unix (``os.fork``).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta
from dpf_sched.clock import WallClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.integrations.opacus import BudgetedPrivacyEngine, BudgetedTraining
from dpf_sched.selector import BlockSelector

ROWS, BATCH, EPOCHS, CHECKPOINT_AFTER, SIGMA, DELTA = 64, 16, 5, 3, 1.0, 1e-5


def open_client(args: argparse.Namespace) -> Any:
    """The budget client of one process: the service's, or a scheduler over the SQLite ledger."""
    if args.service:
        from dpf_sched.client import ServiceClient

        return ServiceClient(args.service, args.token)
    from dpf_sched.ledger.sql import open_ledger
    from dpf_sched.scheduler import Scheduler

    return Scheduler(open_ledger(args.db, create=False), "fcfs", WallClock())


def make_job(client: Any, args: argparse.Namespace, claim_id: str, model: nn.Module) -> BudgetedTraining:
    engine = BudgetedPrivacyEngine(client, accountant="rdp")
    g = torch.Generator().manual_seed(1)
    rows = {b: TensorDataset(torch.randn(ROWS, 8, generator=g), torch.randint(0, 2, (ROWS,), generator=g))
            for b in args.blocks}  # fmt: skip
    dataset = engine.dataset(rows, BlockSelector(ids=tuple(args.blocks)))
    return engine.make_private(
        claim_id=claim_id,
        module=model,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        data_loader=DataLoader(dataset, batch_size=BATCH),
        noise_multiplier=SIGMA,
        max_grad_norm=1.0,
        epochs=EPOCHS,
        timeout=60.0,
    )


def train_epochs(job: BudgetedTraining, epochs: int) -> None:
    criterion = nn.CrossEntropyLoss()
    for _ in range(epochs):
        for x, y in job.data_loader:
            job.optimizer.zero_grad()
            criterion(job.module(x), y).backward()
            job.optimizer.step()


def first_life(args: argparse.Namespace, checkpoint: Path) -> None:
    """The child: train 3 epochs, checkpoint, die by SIGKILL (never returns)."""
    torch.manual_seed(0)
    model = nn.Linear(8, 2)
    job = make_job(open_client(args), args, args.claim_id, model)
    job.start()
    train_epochs(job, CHECKPOINT_AFTER)
    torch.save({"model": model.state_dict(), "budget": job.state_dict()}, checkpoint)
    os.kill(os.getpid(), signal.SIGKILL)


def curve_dict(grid_orders: Any, values: Any) -> dict[str, float]:
    return {repr(a): float(v) for a, v in zip(grid_orders, values, strict=True)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Run the scenario in a temporary directory, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="opacus-example-") as tmp:
        return _run(args, Path(tmp))


def _run(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if not args.service:
        from dpf_sched.ledger.sql import open_ledger
        from dpf_sched.scheduler import Scheduler

        args.db = args.db or f"sqlite:///{workdir / 'ledger.db'}"
        grid = AlphaGrid.default()
        led = open_ledger(args.db, RenyiComposition(grid, "balle"))
        sched = Scheduler(led, "fcfs", WallClock())
        for b in args.blocks:
            sched.add_block(Block(b, EpsDelta(100.0, 1e-6).to_renyi(grid, "balle"), created=0.0))
        led.close()
    checkpoint = workdir / "checkpoint.pt"
    pid = os.fork()
    if pid == 0:  # the first life of the job
        try:
            first_life(args, checkpoint)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not killed or not checkpoint.exists():
        raise SystemExit(f"error: the first life did not checkpoint and die by SIGKILL (status {status})")

    client = open_client(args)
    if args.release_before_resume:
        client.release(args.claim_id)  # the claim ends while the job is down (an expired lease would do this)
    saved = torch.load(checkpoint, weights_only=True)
    model = nn.Linear(8, 2)
    model.load_state_dict(saved["model"])
    job = make_job(client, args, args.claim_id, model)
    job.load_state_dict(saved["budget"])
    with job:
        assert job.plan is not None
        train_epochs(job, EPOCHS - job.steps_taken // job.plan.steps_per_epoch)
    resumed = job.report
    assert resumed is not None
    resumed_eps = job.engine.accountant.get_epsilon(DELTA)

    torch.manual_seed(0)
    reference_job = make_job(client, args, f"{args.claim_id}-reference", nn.Linear(8, 2))
    with reference_job:
        train_epochs(reference_job, EPOCHS)
    reference = reference_job.report
    assert reference is not None
    reference_eps = reference_job.engine.accountant.get_epsilon(DELTA)

    claims = [args.claim_id] + ([resumed.claim_id] if resumed.claim_id != args.claim_id else [])
    b0 = args.blocks[0]
    consumed = sum(np.asarray(client.status(c).consumed[b0].values, dtype=float) for c in claims)
    expected = np.asarray(client.status(reference.claim_id).consumed[b0].values, dtype=float)
    gap = float(np.max(np.abs(consumed - expected) / np.maximum(np.abs(expected), 1e-300)))
    if args.service:
        audit: dict[str, Any] | None = None
    else:
        from dpf_sched.ledger.sql import open_ledger

        led = open_ledger(args.db, create=False)
        try:
            audit = {"ok": led.audit().ok}
        finally:
            led.close()
    orders = resumed.granted.grid.orders
    return {
        "killed": killed,
        "claims": claims,
        "notes": list(resumed.notes),
        "steps": job.steps_taken,
        "planned_steps": resumed.plan.steps,
        "alphas": list(orders),
        "consumed": curve_dict(orders, consumed),
        "expected": curve_dict(orders, expected),
        "max_rel_gap": gap,
        "epsilon_resumed": resumed_eps,
        "epsilon_reference": reference_eps,
        "audit": audit,
        "ok": gap <= 1e-12 and resumed_eps == reference_eps and (audit is None or audit["ok"]),
    }


def summary(out: dict[str, Any]) -> str:
    lines = [f"claims {out['claims']}: {out['steps']}/{out['planned_steps']} steps after a SIGKILL and a resume"]
    lines += [f"  note: {note}" for note in out["notes"]]
    lines.append(f"  consumed vs uninterrupted run: max relative gap {out['max_rel_gap']:.3g}")
    eps = (out["epsilon_resumed"], out["epsilon_reference"])
    lines.append(f"  ε at δ={DELTA:g}: resumed {eps[0]:.6g}, uninterrupted {eps[1]:.6g}")
    lines.append(f"  audit: {out['audit']}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--service", help="budget service URL (default: a local SQLite ledger)")
    ap.add_argument("--token", help="bearer token for --service")
    ap.add_argument("--db", help="SQLite ledger URL for the local mode (default: a temporary file)")
    ap.add_argument("--blocks", default="day-0", type=lambda s: [b for b in s.split(",") if b])
    ap.add_argument("--claim-id", default="resumable-job")
    ap.add_argument("--release-before-resume", action="store_true", help="end the claim while the job is down")
    args = ap.parse_args(argv)
    if args.service and not args.token:
        ap.error("--service needs --token")
    warnings.filterwarnings("ignore")
    torch.set_num_threads(1)
    out = run(args)
    print(json.dumps(out) if args.json else summary(out))  # noqa: T201
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
