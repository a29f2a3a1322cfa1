"""Benchmark: where a replay's time goes, by ablation of the scheduler's per-claim work (no parsing).

Usage::

    python simulations/benchmarks/bench_scheduler_core.py --claims 10000 --param N=275

Builds the multi-block microbenchmark in memory (spec/workloads.md), then drives a ``Scheduler`` directly,
three times: (0) submissions only, (1) submissions and one pass per instant, (2) as (1) with each grant
consumed at once — the replay's model. Prints one JSON line of CPU seconds and µs per claim for each.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dpf_sched.block import Block
from dpf_sched.cli import parse_params
from dpf_sched.clock import ManualClock
from dpf_sched.ledger import MemoryLedger
from dpf_sched.policies.base import Verdict
from dpf_sched.scheduler import Scheduler
from dpf_sched.sim.workloads import make_workload


def run(events: list[Any], composition: Any, policy: str, params: dict[str, str], mode: int) -> float:
    clock = ManualClock()
    sched = Scheduler(MemoryLedger(composition), policy, clock, **params)
    t0 = time.process_time()
    for ev in events:
        if isinstance(ev, Block):
            clock.set(ev.created)
            sched.add_block(ev)
        else:
            claim = ev[0]
            clock.set(claim.arrival)
            sched.submit(claim)
        if mode >= 1:
            for out in sched.step():
                if mode >= 2 and out.verdict is Verdict.GRANT:
                    sched.consume(out.claim_id)
    return time.process_time() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--claims", type=int, default=10_000)
    ap.add_argument("--composition", default="basic", choices=["basic", "renyi"])
    ap.add_argument("--policy", default="dpf-n")
    ap.add_argument("--param", action="append", default=[])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rate = 234.5 if args.composition == "renyi" else 12.8
    wl = make_workload("micro-multi", seed=args.seed, composition=args.composition, duration=args.claims / rate)
    events = list(wl.events())
    n = sum(1 for e in events if not isinstance(e, Block))
    comp = wl.header.make_composition()
    params = parse_params(args.param)
    out: dict[str, Any] = {"policy": args.policy, "params": params, "claims": n}
    for mode, name in ((0, "submit_only"), (1, "submit_and_pass"), (2, "submit_pass_consume")):
        secs = run(events, comp, args.policy, params, mode)
        out[f"{name}_cpu_s"] = round(secs, 3)
        out[f"{name}_us_per_claim"] = round(1e6 * secs / n, 1)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
