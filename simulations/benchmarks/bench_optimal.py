"""Benchmark: the packing optimum (dpf_sched.packing.solve_packing) on offline packing-mix instances (issue 8).

Usage::

    python simulations/benchmarks/bench_optimal.py                                  # 20 blocks x 400 claims, seed 0
    python simulations/benchmarks/bench_optimal.py --blocks 10 --claims 200 --seeds 0,1,2,3,4
    python simulations/benchmarks/bench_optimal.py --formulation bigm --time-limit 60

Each instance is ``make_workload("packing-mix", seed=s, blocks=B, claims=C)`` (offline: every claim against the
full capacity of every block), solved once with the given time limit. Prints one JSON line per instance: the
wall-clock and process CPU seconds, the status (``optimal`` or ``time_limit``), the objective (claims granted),
the proven bound, the relative gap, and the size of the largest MILP.
"""

from __future__ import annotations

import argparse
import json
import time

from dpf_sched.packing import FORMULATIONS, solve_packing_csr
from dpf_sched.sim.workloads import make_workload


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=20)
    ap.add_argument("--claims", type=int, default=400)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--time-limit", type=float, default=60.0)
    ap.add_argument("--formulation", choices=FORMULATIONS, default="hull")
    ap.add_argument("--alpha-spread", type=float, default=1.0)
    args = ap.parse_args()
    for seed in (int(s) for s in args.seeds.split(",")):
        inp = make_workload(
            "packing-mix", seed=seed, blocks=args.blocks, claims=args.claims, alpha_spread=args.alpha_spread
        ).table()
        c = inp.claims
        wall, cpu = time.perf_counter(), time.process_time()
        res = solve_packing_csr(
            c.ptr,
            c.block,
            c.demand,
            inp.blocks.capacity,
            inp.composition,
            time_limit=args.time_limit,
            formulation=args.formulation,
        )
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        big = max(res.components, key=lambda r: r.n_variables)
        out = {
            "blocks": args.blocks,
            "claims": args.claims,
            "seed": seed,
            "formulation": args.formulation,
            "time_limit_s": args.time_limit,
            "wall_s": round(wall, 2),
            "cpu_s": round(cpu, 2),
            "status": res.status.value,
            "proven": res.proven,
            "objective": res.objective,
            "bound": round(res.bound, 4),
            "gap": round(res.gap, 4),
            "components": len(res.components),
            "largest_milp": {"variables": big.n_variables, "rows": big.n_rows, "claims": len(big.claims)},
        }
        print(json.dumps(out), flush=True)  # noqa: T201 - a benchmark script reports on stdout


if __name__ == "__main__":
    main()
