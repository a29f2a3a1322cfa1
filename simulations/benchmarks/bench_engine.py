"""Benchmark: the batch simulator on the paper's settings and on a scaling grid (issue 3).

Usage::

    python simulations/benchmarks/bench_engine.py targets            # Fig. 8, Fig. 16 and 1,000,000 claims
    python simulations/benchmarks/bench_engine.py scaling            # time vs claims, blocks and α orders
    python simulations/benchmarks/bench_engine.py grid               # Fig. 8: every N of the grid, DPF-N and DPF-T
    python simulations/benchmarks/bench_engine.py profile --setting fig8   # where the time goes (cProfile)
    python simulations/benchmarks/bench_engine.py one --setting million     # one setting, with its peak memory

Each setting builds its workload in memory as arrays (``Workload.table()``, no JSON), then times
``dpf_sched.sim.engine.simulate`` alone, on one core, as process CPU time (steadier than wall time on a shared
machine), best of ``--repeat`` runs. ``one`` runs a setting in a fresh process and reports the process's peak
resident memory (``ru_maxrss``) for the whole run: building the workload and simulating it. Prints one JSON
line per measurement.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import resource
import subprocess
import sys
import time
from dataclasses import replace
from typing import Any

import numpy as np

from dpf_sched.composition import RenyiComposition
from dpf_sched.budget import AlphaGrid
from dpf_sched.policies import create_policy
from dpf_sched.sim.engine import simulate
from dpf_sched.sim.table import SimInput, tables_from_trace
from dpf_sched.sim.trace import Trace
from dpf_sched.sim.workloads import make_workload


def workload_input(name: str, **params: Any) -> tuple[SimInput, float]:
    """The workload as arrays, and its mean inter-arrival time."""
    wl = make_workload(name, **params)
    table = getattr(wl, "table", None)
    inp = table() if table is not None else tables_from_trace(Trace(wl.header, wl.events()), wl.header.end)
    return inp, wl.mean_interarrival


def dpf_t(n: int, mean_interarrival: float) -> dict[str, Any]:
    """DPF-T with the artifact's conventions: T = N × mean inter-arrival, tick = half of it (spec)."""
    return {"T": n * mean_interarrival, "tick": mean_interarrival / 2, "unlock": "artifact"}


def setting(name: str) -> tuple[SimInput, str, dict[str, Any], str]:
    """(input, policy, params, description) of a named setting."""
    if name == "fig8":
        inp, _ = workload_input("micro-multi", seed=0, composition="basic")
        return inp, "dpf-n", {"N": 275}, "Fig. 8: multi-block basic, DPF-N N=275"
    if name == "fig8-t":
        inp, mi = workload_input("micro-multi", seed=0, composition="basic")
        return inp, "dpf-t", dpf_t(275, mi), "Fig. 8: multi-block basic, DPF-T N=275"
    if name == "fig16":
        inp, _ = workload_input("micro-single", seed=0, composition="renyi")
        return inp, "dpf-n", {"N": 14514}, "Fig. 16: single-block Rényi, DPF-N N=14514"
    if name == "million":
        inp, mi = workload_input("micro-multi", seed=0, composition="renyi", duration=1_000_000 / 234.5)
        return inp, "dpf-t", dpf_t(14514, mi), "1,000,000 claims, multi-block Rényi, DPF-T N=14514"
    raise SystemExit(f"unknown setting {name!r}")


def timed(inp: SimInput, policy: str, params: dict[str, Any], repeat: int) -> tuple[float, int]:
    best, granted = float("inf"), 0
    for _ in range(repeat):
        pol = create_policy(policy, **params)
        c0 = time.process_time()
        res = simulate(inp, pol)
        best = min(best, time.process_time() - c0)
        assert res is not None
        granted = int((res.status == 1).sum())
    return best, granted


def emit(**row: Any) -> None:
    print(json.dumps(row), flush=True)


def run_one(name: str, repeat: int) -> None:
    c0 = time.process_time()
    inp, policy, params, what = setting(name)
    build = time.process_time() - c0
    cpu, granted = timed(inp, policy, params, repeat)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    emit(
        setting=name,
        what=what,
        claims=len(inp.claims),
        blocks=len(inp.blocks),
        orders=int(inp.blocks.capacity.shape[1]),
        build_cpu_s=round(build, 3),
        simulate_cpu_s=round(cpu, 3),
        us_per_claim=round(cpu / max(len(inp.claims), 1) * 1e6, 1),
        granted=granted,
        peak_rss_mb=round(peak_mb, 1),
    )


def targets(repeat: int) -> None:
    for name in ("fig8", "fig8-t", "fig16", "million"):
        # A fresh process per setting, so that the peak memory is the setting's own.
        args = [sys.executable, __file__, "one", "--setting", name, "--repeat", str(repeat if name != "million" else 1)]
        subprocess.run(args, check=True)


def subset_orders(inp: SimInput, keep: int) -> SimInput:
    """The same run on ``keep`` α orders of its grid (the usable ones first), to see how time grows with orders."""
    comp = inp.composition
    assert isinstance(comp, RenyiComposition)
    usable = np.flatnonzero((inp.blocks.capacity > 0).all(axis=0))
    others = np.setdiff1d(np.arange(len(comp.grid)), usable)
    cols = np.sort(np.concatenate([usable, others])[:keep])
    grid = AlphaGrid(tuple(np.asarray(comp.grid.orders)[cols].tolist()))
    blocks = replace(inp.blocks, capacity=np.ascontiguousarray(inp.blocks.capacity[:, cols]))
    claims = replace(inp.claims, demand=np.ascontiguousarray(inp.claims.demand[:, cols]))
    return replace(inp, composition=RenyiComposition(grid, comp.conversion), blocks=blocks, claims=claims)


def scaling(repeat: int) -> None:
    # Claims: the multi-block Rényi DPF-T setting of the million-claim target, at growing durations.
    for n in (10_000, 100_000, 300_000):
        inp, mi = workload_input("micro-multi", seed=0, composition="renyi", duration=n / 234.5)
        cpu, granted = timed(inp, "dpf-t", dpf_t(14514, mi), repeat)
        emit(axis="claims", claims=len(inp.claims), blocks=len(inp.blocks), orders=15, simulate_cpu_s=round(cpu, 3),
             us_per_claim=round(cpu / len(inp.claims) * 1e6, 1), granted=granted)
    # Blocks: the same 30,000 claims spread over more blocks (a new block every 10, 2 and 0.5 s).
    for interval in (10.0, 2.0, 0.5):
        inp, mi = workload_input("micro-multi", seed=0, composition="renyi", duration=30_000 / 234.5,
                                 block_interval=interval)
        cpu, granted = timed(inp, "dpf-t", dpf_t(14514, mi), repeat)
        emit(axis="blocks", claims=len(inp.claims), blocks=len(inp.blocks), orders=15, simulate_cpu_s=round(cpu, 3),
             us_per_claim=round(cpu / len(inp.claims) * 1e6, 1), granted=granted)
    # α orders: the same 30,000 claims on 4, 8 and all 15 orders of the grid.
    base, mi = workload_input("micro-multi", seed=0, composition="renyi", duration=30_000 / 234.5)
    for keep in (4, 8, 15):
        inp = subset_orders(base, keep)
        cpu, granted = timed(inp, "dpf-t", dpf_t(14514, mi), repeat)
        emit(axis="orders", claims=len(inp.claims), blocks=len(inp.blocks), orders=keep, simulate_cpu_s=round(cpu, 3),
             us_per_claim=round(cpu / len(inp.claims) * 1e6, 1), granted=granted)


#: The Fig. 8 N grid (spec/workloads.md, multi block, basic).
FIG8_N = (1, 10, 50, 75, 100, 125, 175, 210, 275, 325, 375, 750, 1125, 1500, 3000, 6000, 10000)


def grid(repeat: int) -> None:
    """Every N of the Fig. 8 grid, DPF-N and DPF-T: the slowest point bounds a whole sweep."""
    inp, mi = workload_input("micro-multi", seed=0, composition="basic")
    for n in FIG8_N:
        for policy, params in (("dpf-n", {"N": n}), ("dpf-t", dpf_t(n, mi))):
            cpu, granted = timed(inp, policy, params, repeat)
            emit(setting="fig8-grid", policy=policy, N=n, claims=len(inp.claims), simulate_cpu_s=round(cpu, 3),
                 granted=granted)


def profile(name: str) -> None:
    inp, policy, params, what = setting(name)
    pol = create_policy(policy, **params)
    prof = cProfile.Profile()
    prof.enable()
    simulate(inp, pol)
    prof.disable()
    print(what)
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["targets", "scaling", "grid", "profile", "one"])
    ap.add_argument("--setting", default="fig8", choices=["fig8", "fig8-t", "fig16", "million"])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    if args.what == "targets":
        targets(args.repeat)
    elif args.what == "scaling":
        scaling(max(1, args.repeat // 2))
    elif args.what == "grid":
        grid(args.repeat)
    elif args.what == "profile":
        profile(args.setting)
    else:
        run_one(args.setting, args.repeat)


if __name__ == "__main__":
    main()
