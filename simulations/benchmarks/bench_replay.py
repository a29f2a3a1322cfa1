"""Benchmark: replay a large multi-block trace from a file with ``dpf-sched``'s replay (issue 2).

Usage::

    python simulations/benchmarks/bench_replay.py --claims 100000 --policy dpf-n --param N=275

Generates the multi-block microbenchmark (spec/workloads.md) stretched to the requested number of claims,
writes it as JSON Lines to a temporary file, then times, on one core: parsing alone, and the full replay
(parse + schedule) as ``dpf-sched simulate`` runs it, in wall-clock and CPU seconds (the CPU time is the
steadier number on a shared machine). Prints one JSON line of results.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

from dpf_sched.cli import parse_params
from dpf_sched.sim.replay import replay
from dpf_sched.sim.trace import read_trace, write_trace
from dpf_sched.sim.workloads import make_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=int, default=100_000)
    ap.add_argument("--composition", default="basic", choices=["basic", "renyi"])
    ap.add_argument("--policy", default="dpf-n")
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--engine", default="auto", choices=["auto", "batch", "scheduler"])
    args = ap.parse_args()
    rate = 234.5 if args.composition == "renyi" else 12.8
    wl = make_workload("micro-multi", seed=args.seed, composition=args.composition, duration=args.claims / rate)
    fd, path = tempfile.mkstemp(suffix=".jsonl")
    try:
        with os.fdopen(fd, "w") as fh:
            lines = write_trace(fh, wl.header, wl.events())
        t0 = time.perf_counter()
        n_events = sum(1 for _ in read_trace(path).events)
        parse_s = time.perf_counter() - t0
        best = float("inf")
        best_cpu = float("inf")
        result = None
        for _ in range(args.repeat):
            t0, c0 = time.perf_counter(), time.process_time()
            result = replay(path, args.policy, parse_params(args.param), engine=args.engine)
            best = min(best, time.perf_counter() - t0)
            best_cpu = min(best_cpu, time.process_time() - c0)
        assert result is not None
        n_claims = sum(result.counts.values())
        print(
            json.dumps(
                {
                    "policy": args.policy,
                    "params": parse_params(args.param),
                    "composition": args.composition,
                    "claims": n_claims,
                    "blocks": len(result.blocks.ids),
                    "engine": result.engine,
                    "trace_lines": lines,
                    "events": n_events,
                    "parse_s": round(parse_s, 3),
                    "replay_s": round(best, 3),
                    "replay_cpu_s": round(best_cpu, 3),
                    "us_per_claim": round(1e6 * best / max(n_claims, 1), 1),
                    **result.counts,
                    "python": sys.version.split()[0],
                }
            )
        )
    finally:
        os.unlink(path)


if __name__ == "__main__":
    main()
