"""Benchmark of the durable SQL ledgers: consumptions (and grants) per second, p50 / p99 latency.

Each client process opens its own ledger connection and consumes a tiny piece of its own pre-granted claim,
again and again, each call with a request id (one transaction: catch up with the journal, check, write the rows,
append the journal entry, commit durably). Grants are measured with one granter (only one scheduler loop may
hold the grant lease) allocating pre-submitted claims.

    python simulations/benchmarks/bench_ledger.py                       # SQLite in a temporary directory
    python simulations/benchmarks/bench_ledger.py --postgres postgresql://postgres@127.0.0.1:5432/test
    python simulations/benchmarks/bench_ledger.py --ops 2000 --procs 1,8 --json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import numpy as np

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition
from dpf_sched.ledger.sql import open_ledger

N_BLOCKS = 8


def setup(url: str, n_procs: int) -> None:
    with open_ledger(url, BasicComposition()) as led:
        for b in range(N_BLOCKS):
            led.add_block(Block(f"b{b}", EpsDelta(1e6, 1e-6)))
        led.unlock_to(list(range(N_BLOCKS)), [1.0] * N_BLOCKS)
        for p in range(n_procs):
            led.add_claim(Claim(f"p{p}", {f"b{p % N_BLOCKS}": EpsDelta(1e4, 0.0)}))
            led.allocate(f"p{p}", 0.0)


def consumer(url: str, p: int, ops: int, start: Any, out: Any) -> None:
    piece = {f"b{p % N_BLOCKS}": EpsDelta(1e-3, 0.0)}
    lat = np.empty(ops)
    with open_ledger(url) as led:
        led.consume(f"p{p}", piece, request_id=f"warm-{p}")  # catch up with the journal before timing
        start.wait()
        t0 = time.perf_counter()
        for i in range(ops):
            a = time.perf_counter()
            led.consume(f"p{p}", piece, request_id=f"{p}-{i}")
            lat[i] = time.perf_counter() - a
        t1 = time.perf_counter()
    out.put((t0, t1, lat.tolist()))


def bench_consume(url: str, n_procs: int, ops: int) -> dict[str, Any]:
    setup(url, n_procs)
    ctx = mp.get_context("fork")
    start = ctx.Barrier(n_procs)
    out = ctx.Queue()
    procs = [ctx.Process(target=consumer, args=(url, p, ops, start, out)) for p in range(n_procs)]
    for pr in procs:
        pr.start()
    res = [out.get(timeout=600) for _ in procs]
    for pr in procs:
        pr.join()
    wall = max(r[1] for r in res) - min(r[0] for r in res)
    lat = np.concatenate([np.array(r[2]) for r in res]) * 1e3
    with open_ledger(url) as led:
        assert led.audit().ok
    return {
        "op": "consume",
        "procs": n_procs,
        "ops": int(lat.size),
        "per_s": lat.size / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def bench_grant(url: str, ops: int) -> dict[str, Any]:
    with open_ledger(url, BasicComposition()) as led:
        for b in range(N_BLOCKS):
            led.add_block(Block(f"b{b}", EpsDelta(1e6, 1e-6)))
        led.unlock_to(list(range(N_BLOCKS)), [1.0] * N_BLOCKS)
        for i in range(ops):
            led.add_claim(Claim(f"c{i}", {f"b{i % N_BLOCKS}": EpsDelta(1e-3, 0.0)}))
        lat = np.empty(ops)
        t0 = time.perf_counter()
        for i in range(ops):
            a = time.perf_counter()
            led.allocate(f"c{i}", 0.0)
            lat[i] = time.perf_counter() - a
        wall = time.perf_counter() - t0
    lat *= 1e3
    return {
        "op": "grant",
        "procs": 1,
        "ops": ops,
        "per_s": ops / wall,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ops", type=int, default=2000, help="consumptions per process")
    ap.add_argument("--procs", default="1,8", help="comma-separated client process counts")
    ap.add_argument("--postgres", default=os.environ.get("DPF_SCHED_TEST_POSTGRES_URL"), help="PostgreSQL URL")
    ap.add_argument("--synchronous", default="full", choices=["full", "normal"], help="SQLite durability")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    tmp = tempfile.mkdtemp(prefix="bench_ledger_")
    backends = [("sqlite", lambda tag: f"sqlite:///{tmp}/{tag}.db?synchronous={args.synchronous}")]
    schemas: list[str] = []
    if args.postgres:

        def pg(tag: str) -> str:
            name = f"bench_{tag}_{uuid.uuid4().hex[:8]}"
            schemas.append(name)
            return f"{args.postgres}{'&' if '?' in args.postgres else '?'}schema={name}"

        backends.append(("postgresql", pg))
    try:
        for name, make in backends:
            for n in [int(x) for x in args.procs.split(",")]:
                rows.append({"backend": name, **bench_consume(make(f"c{n}"), n, args.ops)})
            rows.append({"backend": name, **bench_grant(make("g"), args.ops)})
    finally:
        if schemas:
            import psycopg

            with psycopg.connect(args.postgres, autocommit=True) as conn:
                for s in schemas:
                    conn.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
    if args.json:
        sys.stdout.write(json.dumps(rows) + "\n")
    else:
        sys.stdout.write(
            f"{'backend':<11} {'op':<8} {'procs':>5} {'ops':>7} {'ops/s':>9} {'p50 ms':>8} {'p99 ms':>8}\n"
        )
        for r in rows:
            sys.stdout.write(
                f"{r['backend']:<11} {r['op']:<8} {r['procs']:>5} {r['ops']:>7} {r['per_s']:>9.0f} "
                f"{r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
