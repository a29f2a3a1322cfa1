"""Benchmark: one DPack pass over many waiting claims (issue 8's target: 5,000 claims × 50 blocks × 12 orders
in under 100 ms).

Usage::

    python simulations/benchmarks/bench_dpack.py [--claims 5000] [--blocks 50] [--repeat 5] [--k 1 10]

Builds, in memory, ``--blocks`` Rényi blocks (ε_G = 10, δ_G = 1e-7, classic conversion, the library's default
grid of 12 orders) and ``--claims`` claims on 1–5 consecutive blocks each, whose demands are Laplace, Gaussian and
subsampled-Gaussian curves (different best orders), scaled so that a claim's dominant share is uniform in
[0.5 %, 5 %]. Claims are submitted to a :class:`~dpf_sched.scheduler.Scheduler` without running a pass, then one
pass (``policy.schedule`` on every waiting claim, every block marked as having gained budget) is timed, in
process CPU time, ``--repeat`` times; the median is printed (a pass does not change the ledger or the policy, so
the repeats are the same pass). Two states:

* ``offline`` — ``dpack`` (``unlocking=all``): every block fully unlocked, the pass grants hundreds of claims;
* ``online`` — ``dpack`` with ``unlocking=arrival, N=2000``: each arrival unlocked 1/2000 of its blocks, so a
  pass sees a mostly locked budget and many waiting claims that do not fit (the steady state of a service).

Also times the basic-composition pass (ε only) and DPF-Pack's pass on the online state. Prints one JSON line
per configuration.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import numpy as np

from dpf_sched.accounting import gaussian_rdp, laplace_rdp, subsampled_gaussian_rdp
from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve, epsdelta_to_rdp_capacity
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition, Composition, RenyiComposition
from dpf_sched.ledger import MemoryLedger
from dpf_sched.policies.base import PassContext
from dpf_sched.scheduler import Scheduler


def templates(alphas: np.ndarray[Any, np.dtype[np.float64]]) -> list[np.ndarray[Any, np.dtype[np.float64]]]:
    """Unscaled demand curves of three mechanism families (their best orders differ)."""
    return [
        laplace_rdp(alphas, 1.0),
        laplace_rdp(alphas, 5.0),
        gaussian_rdp(alphas, 1.0),
        gaussian_rdp(alphas, 3.0),
        subsampled_gaussian_rdp(alphas, 1.0, 0.01, 1000),
        subsampled_gaussian_rdp(alphas, 0.8, 0.05, 200),
    ]


def build(n_claims: int, n_blocks: int, renyi: bool, policy: str, params: dict[str, Any], seed: int) -> Scheduler:
    """A scheduler holding ``n_claims`` waiting claims (no pass run yet)."""
    rng = np.random.default_rng(seed)
    grid = AlphaGrid.default()
    comp: Composition = RenyiComposition(grid) if renyi else BasicComposition()
    sched = Scheduler(MemoryLedger(comp, initial_blocks=n_blocks), policy, **params)
    cap = epsdelta_to_rdp_capacity(10.0, 1e-7, grid.array, "classic")
    usable = cap > 0
    for j in range(n_blocks):
        capacity = RenyiCurve(grid, cap) if renyi else EpsDelta(10.0, 1e-7)
        sched.add_block(Block(f"b{j}", capacity))
    shapes = templates(grid.array)
    for i in range(n_claims):
        share = rng.uniform(0.005, 0.05)
        width = int(rng.integers(1, 6))
        first = int(rng.integers(0, n_blocks - width + 1))
        blocks = [f"b{j}" for j in range(first, first + width)]
        if renyi:
            t = shapes[int(rng.integers(len(shapes)))]
            curve = t * (share / float((t[usable] / cap[usable]).min()))
            demand: RenyiCurve | EpsDelta = RenyiCurve(grid, curve)
        else:
            demand = EpsDelta(10.0 * share, 1e-7 * share)
        sched.submit(Claim.uniform(f"c{i}", blocks, demand))
    return sched


def time_pass(sched: Scheduler, repeat: int) -> tuple[float, int]:
    """Median CPU seconds of one pass over every waiting claim, and how many claims it grants."""
    ctx = PassContext(
        now=0.0,
        ledger=sched.ledger,
        queue=sched.queue,
        dirty=np.arange(sched.ledger.n_blocks, dtype=np.int64),
        arrivals=[],
    )
    times = []
    grants = 0
    for _ in range(repeat):
        t0 = time.process_time()
        grants = len(sched.policy.schedule(ctx))
        times.append(time.process_time() - t0)
    return statistics.median(times), grants


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=int, default=5000)
    ap.add_argument("--blocks", type=int, default=50)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--k", type=int, nargs="+", default=[1, 10])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    configs: list[tuple[str, str, bool, dict[str, Any]]] = []
    for k in args.k:
        configs.append(("offline", "dpack", True, {"k": k}))
        configs.append(("online", "dpack", True, {"k": k, "unlocking": "arrival", "N": 2000}))
    configs.append(("offline", "dpack", False, {"k": 1}))
    configs.append(("online", "dpf-pack", True, {"k": 1, "N": 2000}))
    for state, policy, renyi, params in configs:
        sched = build(args.claims, args.blocks, renyi, policy, params, args.seed)
        secs, grants = time_pass(sched, args.repeat)
        out = {
            "state": state,
            "policy": policy,
            "params": params,
            "composition": "renyi" if renyi else "basic",
            "claims": len(sched.queue),
            "blocks": args.blocks,
            "orders": sched.ledger.composition.width if renyi else 1,
            "grants": grants,
            "pass_cpu_ms": round(1e3 * secs, 1),
        }
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
