"""Benchmark of the budget service over HTTP: claims per second, p50 / p99 latency of claim → grant and of consume.

Starts ``dpf-sched serve`` (FCFS, one ledger per run) as a subprocess, creates eight large blocks, then runs
``--clients`` concurrent clients (threads, one :class:`~dpf_sched.client.ServiceClient` each, one tenant's token)
that each run their share of ``--claims`` claim lifecycles: submit a claim on one block, wait for the grant (long
poll), consume part of it, release the rest. Claim → grant is the time from sending the submit to holding the
granted record; consume is one consume call (one durable ledger transaction behind it). Claims per second counts
finished lifecycles over the run's wall time; server CPU per claim is the server process's user + system CPU time
during the run divided by the lifecycles (steadier than throughput on a shared machine). The clients run in this
process, beside the server on the same machine, so the numbers include both sides' CPU.

    python simulations/benchmarks/bench_service.py                    # SQLite in a temporary directory
    python simulations/benchmarks/bench_service.py --postgres postgresql://postgres@127.0.0.1:5432/test
    python simulations/benchmarks/bench_service.py --clients 10,100 --claims 400 --json
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.client import ServiceClient
from dpf_sched.ledger import ClaimState

N_BLOCKS = 8
CLI = [sys.executable, "-c", "from dpf_sched.cli import main; main()"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def token(db: str, tenant: str, admin: bool = False) -> str:
    args = [*CLI, "tokens", "create", "--db", db, "--tenant", tenant, *(["--admin"] if admin else [])]
    return subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()


def serve(db: str, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    args = [*CLI, "serve", "--db", db, "--policy", "fcfs", "--host", "127.0.0.1", "--port", str(port)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dpf-sched serve exited: {log.read_text()}")
        try:
            if httpx.get(url + "/readyz", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"dpf-sched serve did not become ready: {log.read_text()}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``; NaN elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return float("nan")


def client_loop(url: str, tok: str, name: str, n: int, grant_ms: list[float], consume_ms: list[float]) -> None:
    with ServiceClient(url, tok, retries=10, timeout=60.0) as client:
        for i in range(n):
            block = f"b{(int(name[1:]) + i) % N_BLOCKS}"
            t0 = time.perf_counter()
            cid = client.submit(Claim(f"{name}-{i}", {block: EpsDelta(1.0)}, timeout=120.0))
            record = client.wait(cid, 120.0)
            t1 = time.perf_counter()
            if record.state is not ClaimState.GRANTED:
                raise RuntimeError(f"claim {cid} was not granted: {record.state} {record.reason}")
            client.consume(cid, {block: EpsDelta(0.5)}, request_id=uuid.uuid4().hex)
            t2 = time.perf_counter()
            client.release(cid)
            grant_ms.append((t1 - t0) * 1e3)
            consume_ms.append((t2 - t1) * 1e3)


def bench(db: str, clients: int, claims: int, log: Path) -> dict[str, Any]:
    admin = token(db, "ops", admin=True)
    tenant = token(db, "bench")  # one tenant: every client its own ServiceClient and claim ids, one token
    proc, url = serve(db, log)
    try:
        with ServiceClient(url, admin) as client:
            for b in range(N_BLOCKS):
                client.add_block(Block(f"b{b}", EpsDelta(1e6, 1e-6)))
        per = max(1, claims // clients)
        grant_ms: list[float] = []
        consume_ms: list[float] = []
        threads = [
            threading.Thread(target=client_loop, args=(url, tenant, f"c{k}", per, grant_ms, consume_ms))
            for k in range(clients)
        ]
        cpu0 = cpu_seconds(proc.pid)
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        server_cpu = cpu_seconds(proc.pid) - cpu0
        with ServiceClient(url, admin) as client:
            audit_ok = client.audit().ok
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    done = len(consume_ms)
    if done != per * clients:
        raise RuntimeError(f"only {done} of {per * clients} claim lifecycles finished (see {log})")
    return {
        "clients": clients,
        "claims": done,
        "claims_per_s": done / wall,
        "grant_p50_ms": float(np.percentile(grant_ms, 50)),
        "grant_p99_ms": float(np.percentile(grant_ms, 99)),
        "consume_p50_ms": float(np.percentile(consume_ms, 50)),
        "consume_p99_ms": float(np.percentile(consume_ms, 99)),
        "server_cpu_ms_per_claim": server_cpu / done * 1e3 if done else float("nan"),
        "audit_ok": audit_ok,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", default="10,100", help="comma-separated numbers of concurrent clients")
    ap.add_argument("--claims", type=int, default=400, help="claim lifecycles per run (split among the clients)")
    ap.add_argument("--postgres", default=os.environ.get("DPF_SCHED_TEST_POSTGRES_URL"), help="PostgreSQL URL")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_service_"))
    backends = [("sqlite", lambda tag: f"sqlite:///{tmp}/{tag}.db")]
    schemas: list[str] = []
    if args.postgres:

        def pg(tag: str) -> str:
            name = f"bench_service_{tag}_{uuid.uuid4().hex[:8]}"
            schemas.append(name)
            return f"{args.postgres}{'&' if '?' in args.postgres else '?'}schema={name}"

        backends.append(("postgresql", pg))
    rows: list[dict[str, Any]] = []
    try:
        for name, make in backends:
            for n in [int(x) for x in args.clients.split(",")]:
                rows.append({"backend": name, **bench(make(f"c{n}"), n, args.claims, tmp / f"{name}-{n}.log")})
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
            f"{'backend':<11} {'clients':>7} {'claims':>6} {'claims/s':>9} {'grant p50':>10} {'grant p99':>10} "
            f"{'consume p50':>12} {'consume p99':>12} {'srv CPU/claim':>14} {'audit':>6}\n"
        )
        for r in rows:
            sys.stdout.write(
                f"{r['backend']:<11} {r['clients']:>7} {r['claims']:>6} {r['claims_per_s']:>9.1f} "
                f"{r['grant_p50_ms']:>8.1f}ms {r['grant_p99_ms']:>8.1f}ms {r['consume_p50_ms']:>10.1f}ms "
                f"{r['consume_p99_ms']:>10.1f}ms {r['server_cpu_ms_per_claim']:>12.2f}ms "
                f"{'ok' if r['audit_ok'] else 'FAIL':>6}\n"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
