"""Load generators of the service tests: client processes that run claims through ``ServiceClient`` and record
every acknowledged consumption, and the check that the ledger holds each of them exactly once.

Each worker process (one tenant) runs ``n`` claims: submit on one or two of the blocks, wait for the decision,
consume part of the grant twice (each with its own request id), release the rest. It records what the server
acknowledged, ``(claim, request_id, {block: ε})``, and what it could not get acknowledged after every retry.
:func:`check_ledger` then compares those records with the ledger: per claim, the ledger's consumption is the sum
of the acknowledged consumptions (plus, possibly, unacknowledged ones that the server applied before its reply was
lost); per block, the ledger's consumed is the sum over its claims and never exceeds the capacity; the audit passes.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import traceback
import uuid
from dataclasses import dataclass, field
from typing import Any

from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.client import ServiceClient
from dpf_sched.errors import ServiceUnavailableError
from dpf_sched.ledger import ClaimState

REL = 1e-9


@dataclass
class WorkerResult:
    """What one worker saw: acknowledged and unacknowledged consumptions, claim outcomes, and any crash."""

    tenant: str
    acked: list[tuple[str, str, dict[str, float]]] = field(default_factory=list)
    unacked: list[tuple[str, str, dict[str, float]]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    gave_up: int = 0
    retried: int = 0
    error: str | None = None


def worker(
    url: str,
    token: str,
    tenant: str,
    n: int,
    blocks: list[str],
    seed: int,
    results: Any,
    client_kw: dict[str, Any],
) -> None:
    """Run ``n`` claims as ``tenant`` and put a :class:`WorkerResult` on ``results``."""
    out = WorkerResult(tenant)
    rng = random.Random(seed)
    try:
        with ServiceClient(url, token, **client_kw) as client:
            for i in range(n):
                cid = f"{tenant}-c{i}"
                chosen = rng.sample(blocks, k=rng.randint(1, 2))
                demand = EpsDelta(1.0)
                try:
                    client.submit(Claim(cid, dict.fromkeys(chosen, demand), timeout=60.0))
                    record = client.wait(cid, 60.0)
                except ServiceUnavailableError:
                    out.gave_up += 1
                    continue
                out.outcomes[record.state.value] = out.outcomes.get(record.state.value, 0) + 1
                if record.state is not ClaimState.GRANTED:
                    continue
                for _ in range(2):
                    amounts = {b: rng.choice([0.125, 0.25, 0.375]) for b in chosen}
                    rid = uuid.uuid4().hex
                    try:
                        client.consume(cid, {b: EpsDelta(e) for b, e in amounts.items()}, request_id=rid)
                    except ServiceUnavailableError:
                        out.unacked.append((cid, rid, amounts))
                        out.gave_up += 1
                        continue
                    out.acked.append((cid, rid, amounts))
                try:
                    client.release(cid)
                except ServiceUnavailableError:
                    out.gave_up += 1
            out.retried = client.retried
    except Exception:
        out.error = traceback.format_exc()
    results.put(out)


def run_workers(
    url: str, tokens: dict[str, str], n: int, blocks: list[str], client_kw: dict[str, Any], timeout: float = 240.0
) -> list[WorkerResult]:
    """Run one worker process per tenant and return their results once all are done."""
    results, procs = start_workers(url, tokens, n, blocks, client_kw)
    return collect(results, procs, timeout)


def start_workers(
    url: str, tokens: dict[str, str], n: int, blocks: list[str], client_kw: dict[str, Any]
) -> tuple[Any, list[Any]]:
    """As :func:`run_workers`, without waiting: the queue and the processes (collect with :func:`collect`)."""
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    procs = [
        ctx.Process(target=worker, args=(url, tok, tenant, n, blocks, 1000 + k, results, client_kw), daemon=True)
        for k, (tenant, tok) in enumerate(tokens.items())
    ]
    for p in procs:
        p.start()
    return results, procs


def collect(results: Any, procs: list[Any], timeout: float = 240.0) -> list[WorkerResult]:
    """Wait for every worker's result (``queue.Empty`` after ``timeout``); fails on a worker's crash."""
    out: list[WorkerResult] = [results.get(timeout=timeout) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert all(r.error is None for r in out), "\n".join(r.error for r in out if r.error)
    return out


def check_ledger(url: str, admin: str, tokens: dict[str, str], results: list[WorkerResult], blocks: list[str]) -> None:
    """Every acknowledged consumption is in the ledger, once; no overspend; nothing left allocated; audit ok."""
    per_block_ledger = dict.fromkeys(blocks, 0.0)
    per_block_acked = dict.fromkeys(blocks, 0.0)
    for r in results:
        with ServiceClient(url, tokens[r.tenant], retries=20) as client:
            records = {rec.claim.id: rec for rec in client.claims()}
        acked: dict[str, dict[str, float]] = {}
        for cid, _, amounts in r.acked:
            for b, e in amounts.items():
                acked.setdefault(cid, {}).setdefault(b, 0.0)
                acked[cid][b] += e
                per_block_acked[b] += e
        maybe: dict[str, list[dict[str, float]]] = {}
        for cid, _, amounts in r.unacked:
            maybe.setdefault(cid, []).append(amounts)
        for cid, rec in records.items():
            got = {b: v.epsilon for b, v in rec.consumed.items()}  # type: ignore[union-attr]
            for b, e in got.items():
                per_block_ledger[b] += e
            want = acked.get(cid, {})
            for b in rec.claim.blocks:
                have, need = got.get(b, 0.0), want.get(b, 0.0)
                extra = sum(a.get(b, 0.0) for a in maybe.get(cid, []))
                assert need * (1 - REL) - 1e-12 <= have <= (need + extra) * (1 + REL) + 1e-12, (
                    f"claim {r.tenant}/{cid} block {b}: ledger consumed {have}, acknowledged {need} (+{extra} unacked)"
                )
        missing = set(acked) - set(records)
        assert not missing, f"acknowledged claims missing from the ledger: {sorted(missing)}"
    with ServiceClient(url, admin, retries=20) as client:
        for b in blocks:
            bb = client.block(b)
            consumed = bb.consumed.epsilon  # type: ignore[union-attr]
            assert abs(consumed - per_block_ledger[b]) <= REL * max(1.0, consumed), (b, consumed, per_block_ledger[b])
            assert consumed >= per_block_acked[b] * (1 - REL) - 1e-12, (b, consumed, per_block_acked[b])
            assert consumed + bb.allocated.epsilon <= bb.capacity.epsilon * (1 + REL)  # type: ignore[union-attr]
        audit = client.audit()
        assert audit.ok, audit.raw
