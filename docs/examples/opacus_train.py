"""Train a small model with DP-SGD under a privacy-budget scheduler, next to other pipelines that compete for it.

Three daily blocks of synthetic user data, each with a global (ε, δ) guarantee kept as a Rényi curve, are
scheduled by DPF-T (each block unlocks its budget over time). Two other pipelines claim budget on the same
blocks; our job claims the budget its DP-SGD run will spend on the two most recent days, waits (in simulated
time) until DPF-T has unlocked enough, trains with Opacus, stops early (``--stop-after``), commits what the
Opacus accountant recorded and releases the rest, which goes back to the pool for the waiting pipeline.

Run ``python docs/examples/opacus_train.py`` for a summary, ``--json`` for one JSON object, ``--device cuda`` on
a GPU. Needs the ``opacus`` extra.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
import warnings
from typing import Any

import numpy as np
import torch
from opacus.accountants.analysis.rdp import compute_rdp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from dpf_sched.accounting import subsampled_gaussian_rdp
from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.integrations.opacus import BudgetedPrivacyEngine
from dpf_sched.ledger import MemoryLedger
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

DELTA = 1e-7
FEATURES = 16


def synthetic_day(rows: int, generator: torch.Generator) -> TensorDataset:
    """One block of rows: features and a label given by a fixed linear rule plus noise."""
    weights = torch.linspace(-1.0, 1.0, FEATURES)
    x = torch.randn(rows, FEATURES, generator=generator)
    y = ((x @ weights + 0.3 * torch.randn(rows, generator=generator)) > 0).long()
    return TensorDataset(x, y)


def curve_dict(grid: AlphaGrid, values: Any) -> dict[str, float | None]:
    """``{str(α): value}`` with non-finite values as ``null`` (JSON has no infinity)."""
    return {repr(a): (float(v) if math.isfinite(v) else None) for a, v in zip(grid.orders, values, strict=True)}


def max_relative_gap(a: Any, b: Any) -> float:
    """Largest ``|a − b| / max(|a|, |b|)`` over the orders where both are finite."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    ok = np.isfinite(a) & np.isfinite(b)
    scale = np.maximum(np.maximum(np.abs(a), np.abs(b)), 1e-300)
    return float(np.max(np.abs(a - b)[ok] / scale[ok], initial=0.0))


def run(device: str, epochs: int, stop_after: int, accountant: str, seed: int) -> dict[str, Any]:
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    grid = AlphaGrid.default()
    clock = ManualClock()
    sched = Scheduler(MemoryLedger(RenyiComposition(grid, "balle")), "dpf-t", clock, T=10.0, tick=1.0)
    capacity = EpsDelta(10.0, DELTA).to_renyi(grid, "balle")
    days = {f"day-{d}": synthetic_day(400, gen) for d in range(3)}
    for d, name in enumerate(days):
        sched.add_block(Block(name, capacity, created=float(d), attributes={"source": "clicks"}))

    # Competing pipelines: a small statistic on every day, and a large job on the latest day that will have
    # to wait for what our job gives back.
    gaussian = RenyiCurve(grid, grid.array / (2 * 4.0**2))  # Gaussian mechanism, σ = 4 (Mironov 2017, Prop. 7)
    sched.submit(Claim("stats", dict.fromkeys(days, gaussian)))
    big = capacity.scale(0.6)
    sched.submit(Claim("big-model", {"day-2": big}))

    engine = BudgetedPrivacyEngine(sched, accountant=accountant)
    data = engine.dataset(days, BlockSelector(attributes={"source": "clicks"}, created_from=1.0))
    loader = DataLoader(data, batch_size=50, generator=gen)
    model = nn.Sequential(nn.Linear(FEATURES, 32), nn.ReLU(), nn.Linear(32, 2)).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    criterion = nn.CrossEntropyLoss()

    started = time.perf_counter()
    job = engine.make_private(
        claim_id="dp-sgd-job",
        module=model,
        optimizer=optimizer,
        data_loader=loader,
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        epochs=epochs,
        timeout=50.0,
        owner="ml-team",
    )
    with job:
        model_p, optimizer_p, train_loader = job
        for epoch in range(epochs):
            if stop_after and epoch >= stop_after:
                break  # early stop: the job is good enough; the unspent budget goes back to the pool
            for x, y in train_loader:
                x, y = x.to(device), y.to(device)
                optimizer_p.zero_grad()
                criterion(model_p(x), y).backward()
                optimizer_p.step()
    train_seconds = time.perf_counter() - started
    report = job.report
    assert report is not None

    # Independent recomputation of the accountant's spend from its history, and Opacus's own numbers.
    history = list(engine.accountant.history)
    ours = np.zeros(len(grid))
    theirs = np.zeros(len(grid))
    for sigma, q, steps in history:
        ours = ours + subsampled_gaussian_rdp(grid.array, sigma, q, steps)
        theirs = theirs + np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(grid.orders)))

    # Time goes on: the waiting pipeline is granted once DPF-T has unlocked enough of what is left.
    while sched.status("big-model").state.value == "waiting" and clock.now() < 30.0:
        wake = sched.next_wakeup()
        clock.set(wake if wake is not None else 30.0)
        sched.step()
    with torch.no_grad():
        x_all = torch.cat([days["day-1"].tensors[0], days["day-2"].tensors[0]]).to(device)
        y_all = torch.cat([days["day-1"].tensors[1], days["day-2"].tensors[1]]).to(device)
        accuracy = float((model_p(x_all).argmax(dim=1) == y_all).float().mean())

    consumed = report.consumed.values
    granted = report.granted.values
    released = report.released.values
    return {
        "status": report.status.value,
        "claim_state": sched.status("dp-sgd-job").state.value,
        "blocks": list(report.blocks),
        "accountant": report.accountant,
        "alphas": list(grid.orders),
        "granted": curve_dict(grid, granted),
        "consumed": curve_dict(grid, consumed),
        "released": curve_dict(grid, released),
        "accountant_consumed": curve_dict(grid, ours),
        "opacus_compute_rdp": curve_dict(grid, theirs),
        "checks": {
            "consumed_vs_accountant_max_rel": max_relative_gap(consumed, ours),
            "granted_vs_consumed_plus_released_max_rel": max_relative_gap(granted, consumed + released),
            "library_vs_opacus_compute_rdp_max_rel": max_relative_gap(ours, theirs),
        },
        "history": [list(h) for h in history],
        "steps": report.steps,
        "planned_steps": report.plan.steps,
        "sample_rate": report.plan.sample_rate,
        "noise_multiplier": report.plan.noise_multipliers[0],
        "epsilon_spent": report.consumed.to_eps_delta(DELTA).epsilon,
        "delta": DELTA,
        "waited": report.waited,
        "clock": clock.now(),
        "competitors": {c: sched.status(c).state.value for c in ("stats", "big-model")},
        "big_model_granted_at": sched.status("big-model").granted_at,
        "accuracy": accuracy,
        "device": device,
        "train_seconds": train_seconds,
    }


def summary(out: dict[str, Any]) -> str:
    c = out["checks"]
    lines = [
        f"job dp-sgd-job: {out['status']} ({out['steps']}/{out['planned_steps']} steps, q={out['sample_rate']:.4g}, "
        f"σ={out['noise_multiplier']:g}, accountant {out['accountant']}) on {', '.join(out['blocks'])}",
        f"  waited {out['waited']:g} time units for DPF-T to unlock enough; trained in {out['train_seconds']:.2f} s "
        f"on {out['device']}, accuracy {out['accuracy']:.3f}",
        f"  spent ε = {out['epsilon_spent']:.4f} at δ = {out['delta']:g} per block; claim is {out['claim_state']}",
        f"  consumed vs the accountant's history: max relative gap {c['consumed_vs_accountant_max_rel']:.2e}",
        f"  granted vs consumed + released: max relative gap {c['granted_vs_consumed_plus_released_max_rel']:.2e}",
        f"  library vs opacus compute_rdp: max relative gap {c['library_vs_opacus_compute_rdp_max_rel']:.2e}",
        "  competitors: "
        + ", ".join(f"{k} {v}" for k, v in out["competitors"].items())
        + f" (big-model granted at t={out['big_model_granted_at']})",
        f"  {'α':>6} {'granted':>12} {'consumed':>12} {'released':>12}",
    ]
    for a in out["alphas"]:
        k = repr(a)
        lines.append(f"  {a:>6g} {out['granted'][k]:>12.6g} {out['consumed'][k]:>12.6g} {out['released'][k]:>12.6g}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs planned and claimed")
    parser.add_argument("--stop-after", type=int, default=2, help="stop early after this many epochs (0: never)")
    parser.add_argument("--accountant", default="prv", choices=["prv", "rdp", "gdp"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("--device cuda asked for, but torch sees no CUDA device")
    warnings.filterwarnings("ignore", module="opacus")
    warnings.filterwarnings("ignore", message=".*Full backward hook.*")
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    out = run(args.device, args.epochs, args.stop_after, args.accountant, args.seed)
    print(json.dumps(out, allow_nan=False) if args.json else summary(out))  # noqa: T201
    c = out["checks"]
    ok = c["consumed_vs_accountant_max_rel"] <= 1e-9 and c["granted_vs_consumed_plus_released_max_rel"] <= 1e-9
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
