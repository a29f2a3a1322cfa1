"""Kill campaign (docs/reliability.md): SIGKILL ledger writers and `dpf-sched serve` mid-operation, reopen, audit,
and check that every acknowledged operation is present.

    python simulations/campaigns/kill.py --backend sqlite|postgres --kills K [--serve-every M] [--seed S]

Each round starts one victim, lets it work for a random moment, and SIGKILLs it:

* a **ledger writer** (every round but every M-th): a child forked from this process that opens the SQL ledger
  and runs random operations (add_block, unlock, add_claim, allocate, consume and release with request ids,
  reject, and batches of several operations in one transaction). Before each operation it logs its *intent*;
  after the operation returned (committed) it logs and fsyncs the *acknowledgement*.
* a **service** (every M-th round): a `dpf-sched serve` process on the same database, with client threads (a
  tenant token each) that create claims, wait for their grants, consume and release them with request ids,
  logging each reply they got as acknowledged.

After the kill the campaign reopens the database (``unopenable`` when that fails), audits it
(:meth:`SqlLedger.audit`: the journal replays to the stored state and every invariant holds; a failure counts as
``half_applied``), checks that every acknowledged operation is present (``lost`` otherwise), and checks that the
operation in flight at the kill was applied whole or not at all (a batch: all its claims or none; a consume: the
claim's consumption is exactly the sum of the consumptions whose request id the ledger holds; ``half_applied``
otherwise). The database is replaced by a fresh one every ``--rotate`` rounds (alternating basic and Rényi
composition) so that reopening stays quick. Exit status 0 when every count is 0, 1 otherwise; ``--json`` prints
the result.

PostgreSQL: ``--postgres-url`` or ``DPF_SCHED_TEST_POSTGRES_URL``; each database is a fresh schema, dropped at the
end (``--keep`` keeps the work directory and the schemas).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition, Composition, RenyiComposition
from dpf_sched.errors import DpfSchedError
from dpf_sched.ledger import ClaimState
from dpf_sched.ledger.sql import SqlLedger, open_ledger

log = logging.getLogger("dpf_sched.campaigns.kill")

ALPHAS = (2.0, 4.0, 8.0)
GRID = AlphaGrid(ALPHAS)
TENANTS = ("t0", "t1")


# ----- the ack log: one JSON object per line, appended by the victim, read by the checker ------------------


class AckLog:
    """An append-only JSON Lines file; :meth:`ack` fsyncs before it returns (an acknowledgement is durable)."""

    def __init__(self, path: Path) -> None:
        self.fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self.lock = threading.Lock()

    def _put(self, obj: Mapping[str, Any], sync: bool) -> None:
        data = (json.dumps(obj) + "\n").encode()
        with self.lock:
            os.write(self.fd, data)
            if sync:
                os.fsync(self.fd)

    def intent(self, obj: Mapping[str, Any]) -> None:
        """What is about to be tried (not durable on a power loss; a SIGKILL keeps it)."""
        self._put({"kind": "intent", **obj}, sync=False)

    def ack(self, obj: Mapping[str, Any]) -> None:
        """What the ledger or the server acknowledged, fsynced."""
        self._put({"kind": "ack", **obj}, sync=True)

    def close(self) -> None:
        os.close(self.fd)


def read_log(path: Path) -> list[dict[str, Any]]:
    """Every complete line of an ack log (a line cut by the kill is ignored: it was never acknowledged)."""
    out: list[dict[str, Any]] = []
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


# ----- budgets -------------------------------------------------------------------------------------------


def budget(renyi: bool, x: float) -> Budget:
    """A demand of size ``x`` (ε = x, or a Rényi curve growing with the order)."""
    if renyi:
        return RenyiCurve(GRID, [x * a / 2.0 for a in ALPHAS])  # type: ignore[arg-type]
    return EpsDelta(x, 0.0)


def capacity(renyi: bool) -> Budget:
    return RenyiCurve(GRID, [50.0, 50.0, 50.0]) if renyi else EpsDelta(50.0, 1e-5)  # type: ignore[arg-type]


def encode(b: Budget) -> list[float]:
    if isinstance(b, EpsDelta):
        return [b.epsilon, b.delta]
    return [float(v) for v in b.values]


def values(b: Budget) -> list[float]:
    return encode(b)


# ----- the ledger writer (a forked child) ------------------------------------------------------------------


def writer(url: str, log_path: Path, prefix: str, seed: int, renyi: bool) -> None:
    """Run random operations on the ledger forever (until SIGKILLed), logging intents and acknowledgements."""
    rng = random.Random(seed)
    acks = AckLog(log_path)
    led = open_ledger(url, create=False)
    blocks: list[str] = []
    granted: list[str] = []
    waiting: list[str] = []
    n = 0

    def fresh(kind: str) -> str:
        nonlocal n
        n += 1
        return f"{prefix}{kind}{n}"

    while True:
        r = rng.random()
        now = time.time()
        if not blocks or r < 0.08:
            bid = fresh("b")
            acks.intent({"op": "add_block", "block": bid})
            led.add_block(Block(bid, capacity(renyi)))
            acks.ack({"op": "add_block", "block": bid})
            acks.intent({"op": "unlock", "block": bid})
            led.unlock_to([led.block_index(bid)], [1.0])
            acks.ack({"op": "unlock", "block": bid})
            blocks.append(bid)
        elif r < 0.35:
            cid = fresh("c")
            picks = rng.sample(blocks, k=min(len(blocks), rng.randint(1, 2)))
            demand = {b: budget(renyi, rng.choice((0.01, 0.05, 0.2))) for b in picks}
            acks.intent({"op": "add_claim", "claim": cid, "demand": {b: encode(d) for b, d in demand.items()}})
            led.add_claim(Claim(cid, demand, arrival=now))
            acks.ack({"op": "add_claim", "claim": cid})
            waiting.append(cid)
        elif r < 0.5 and waiting:
            cid = waiting.pop(rng.randrange(len(waiting)))
            if rng.random() < 0.15:
                acks.intent({"op": "reject", "claim": cid})
                led.reject(cid, now, "kill campaign")
                acks.ack({"op": "reject", "claim": cid})
            else:
                acks.intent({"op": "allocate", "claim": cid})
                try:
                    led.allocate(cid, now)
                except DpfSchedError:  # does not fit any more: refused, nothing changed
                    acks.ack({"op": "refused", "claim": cid})
                    continue
                acks.ack({"op": "allocate", "claim": cid})
                granted.append(cid)
        elif r < 0.75 and granted:
            cid = rng.choice(granted)
            rec = led.claim(cid)
            rid = uuid.uuid4().hex
            amounts = {b: budget(renyi, 0.001) for b in rec.remaining}
            acks.intent(
                {"op": "consume", "claim": cid, "request": rid, "amounts": {b: encode(a) for b, a in amounts.items()}}
            )
            try:
                led.consume(cid, amounts, now, request_id=rid)
            except DpfSchedError:  # nothing left to consume
                acks.ack({"op": "refused", "claim": cid, "request": rid})
                continue
            acks.ack({"op": "consume", "claim": cid, "request": rid})
        elif r < 0.85 and granted:
            cid = granted.pop(rng.randrange(len(granted)))
            rid = uuid.uuid4().hex
            acks.intent({"op": "release", "claim": cid, "request": rid})
            led.release(cid, now, request_id=rid)
            acks.ack({"op": "release", "claim": cid, "request": rid})
        else:
            # A batch: several claims added and granted in one transaction, all or nothing.
            ids = [fresh("c") for _ in range(rng.randint(2, 4))]
            bid = rng.choice(blocks)
            acks.intent({"op": "batch", "claims": ids})
            try:
                with led.batch():
                    for cid in ids:
                        led.add_claim(Claim(cid, {bid: budget(renyi, 0.01)}, arrival=now))
                        led.allocate(cid, now)
            except DpfSchedError:
                acks.ack({"op": "refused", "claims": ids})
                continue
            acks.ack({"op": "batch", "claims": ids})
            granted.extend(ids)


# ----- the service victim ----------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_serve(
    url: str, log_file: Path, env: Mapping[str, str], timeout: float = 300.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start `dpf-sched serve` on ``url`` and wait until it answers /readyz (RuntimeError with its log if not)."""
    import httpx

    offset = log_file.stat().st_size if log_file.exists() else 0

    def tail() -> str:
        with open(log_file, "rb") as f:
            f.seek(offset)
            return f.read().decode(errors="replace")[-3000:]

    port = free_port()
    args = [sys.executable, "-m", "dpf_sched.cli", "serve", "--db", url, "--policy", "fcfs"]
    args += ["--host", "127.0.0.1", "--port", str(port), "--poll", "0.02"]
    with open(log_file, "ab") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, env=dict(env))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"dpf-sched serve exited with {proc.returncode}: {tail()}")
        try:
            if httpx.get(base + "/readyz", timeout=1.0).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    proc.kill()
    proc.wait(timeout=30)
    raise RuntimeError(f"dpf-sched serve did not become ready in {timeout} s: {tail()}")


def service_client(
    base: str,
    token: str,
    acks: AckLog,
    tenant: str,
    prefix: str,
    blocks: Sequence[str],
    killed: threading.Event,
    errors: list[str],
    renyi: bool,
) -> None:
    """Create, wait, consume, release in a loop; log each acknowledged reply (ledger ids: ``tenant/id``)."""
    from dpf_sched.client import ServiceClient

    n = 0
    with ServiceClient(base, token, retries=0, timeout=5.0) as client:
        while True:
            n += 1
            cid = f"{prefix}{tenant}c{n}"
            try:
                bid = blocks[n % len(blocks)]
                acks.intent({"op": "svc_create", "claim": f"{tenant}/{cid}"})
                client.submit(Claim(cid, {bid: budget(renyi, 0.01)}))
                acks.ack({"op": "add_claim", "claim": f"{tenant}/{cid}"})
                rec = client.wait(cid, timeout=2.0)
                if rec.state is not ClaimState.GRANTED:
                    continue
                acks.ack({"op": "allocate", "claim": f"{tenant}/{cid}"})
                rid = uuid.uuid4().hex
                amount = budget(renyi, 0.004)
                acks.intent(
                    {
                        "op": "consume",
                        "claim": f"{tenant}/{cid}",
                        "request": f"{tenant}/{rid}",
                        "amounts": {bid: encode(amount)},
                    }
                )
                client.consume(cid, {bid: amount}, request_id=rid)
                acks.ack({"op": "consume", "claim": f"{tenant}/{cid}", "request": f"{tenant}/{rid}"})
                rid = uuid.uuid4().hex
                acks.intent({"op": "release", "claim": f"{tenant}/{cid}", "request": f"{tenant}/{rid}"})
                client.release(cid, request_id=rid)
                acks.ack({"op": "release", "claim": f"{tenant}/{cid}", "request": f"{tenant}/{rid}"})
            except Exception as e:  # the server died under us: stop (what was acknowledged is logged)
                if not killed.is_set():
                    errors.append(f"{tenant}: {type(e).__name__}: {e}")
                return


# ----- the checks ------------------------------------------------------------------------------------------


@dataclass
class Result:
    """Counts of one campaign (``lost``, ``half_applied`` and ``unopenable`` must be 0)."""

    backend: str
    kills: int = 0
    writer_kills: int = 0
    serve_kills: int = 0
    acknowledged: int = 0
    lost: int = 0
    half_applied: int = 0
    unopenable: int = 0
    #: `dpf-sched serve` did not start on the database (exited, or not ready in time): counted apart, with its
    #: log in ``failures``; whether the database itself opens is what ``unopenable`` says.
    serve_start_failures: int = 0
    databases: int = 0
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.half_applied == 0 and self.unopenable == 0 and self.serve_start_failures == 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok}


def close(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b, strict=True))


def check(url: str, entries: list[dict[str, Any]], result: Result, where: str) -> None:
    """Reopen, audit, and check every acknowledged operation and the operation in flight (see the module doc)."""
    try:
        led = open_ledger(url, create=False)
    except Exception as e:
        result.unopenable += 1
        result.failures.append(f"{where}: unopenable: {type(e).__name__}: {e}")
        return
    try:
        _check_open(led, entries, result, where)
    finally:
        led.close()


def _check_open(led: SqlLedger, entries: list[dict[str, Any]], result: Result, where: str) -> None:
    report = led.audit()
    if not report.ok:
        result.half_applied += 1
        result.failures.append(f"{where}: audit: {report.to_dict()}")
    claims = set(led.claim_ids())
    blocks = {b.id for b in led.blocks()}

    def lost(what: str) -> None:
        result.lost += 1
        result.failures.append(f"{where}: lost {what}")

    for e in entries:
        if e["kind"] != "ack":
            continue
        op = e["op"]
        if op == "add_block" and e["block"] not in blocks:
            lost(f"block {e['block']}")
        elif op == "unlock" and led.budgets(e["block"]).unlocked_fraction < 1.0:
            lost(f"unlock of {e['block']}")
        elif op == "add_claim" and e["claim"] not in claims:
            lost(f"claim {e['claim']}")
        elif op == "allocate" and (e["claim"] not in claims or not led.state(e["claim"]).was_granted):
            lost(f"grant of {e['claim']}")
        elif op == "reject" and (e["claim"] not in claims or led.state(e["claim"]) is not ClaimState.REJECTED):
            lost(f"rejection of {e['claim']}")
        elif op in ("consume", "release") and not led.has_request(e["request"]):
            lost(f"{op} {e['request']} of {e['claim']}")
        elif op == "release" and led.state(e["claim"]) is not ClaimState.FINISHED:
            lost(f"release of {e['claim']} (state {led.state(e['claim'])})")
        elif op == "batch" and not all(c in claims and led.state(c).was_granted for c in e["claims"]):
            lost(f"batch {e['claims']}")
    # Whole or nothing: every batch ever tried (acknowledged or cut by the kill) is all present or all absent,
    # and every claim's consumption is exactly the sum of its consumptions whose request id the ledger holds.
    spent: dict[str, dict[str, list[float]]] = {}
    for e in entries:
        if e["kind"] != "intent":
            continue
        if e["op"] == "batch":
            present = [c in claims for c in e["claims"]]
            if any(present) and not all(present):
                result.half_applied += 1
                result.failures.append(f"{where}: half-applied batch {e['claims']}: {present}")
        elif e["op"] == "consume" and led.has_request(e["request"]):
            per = spent.setdefault(e["claim"], {})
            for b, row in e["amounts"].items():
                per[b] = [x + y for x, y in zip(per.get(b, [0.0] * len(row)), row, strict=True)]
    for cid, per in spent.items():
        rec = led.claim(cid)
        for b, row in per.items():
            got = values(rec.consumed[b])
            if not close(got, row):
                result.half_applied += 1
                result.failures.append(f"{where}: claim {cid} consumed {got} on {b}, its applied requests sum {row}")


# ----- the campaign ----------------------------------------------------------------------------------------


class Databases:
    """Fresh ledger databases: SQLite files in the work directory, or PostgreSQL schemas (dropped at the end)."""

    def __init__(self, backend: str, work: Path, pg_url: str | None) -> None:
        self.backend, self.work, self.pg_url = backend, work, pg_url
        self.schemas: list[str] = []

    def new(self, k: int) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{self.work / f'ledger{k}.db'}"
        assert self.pg_url
        name = f"dpf_kill_{os.getpid()}_{uuid.uuid4().hex[:8]}"
        self.schemas.append(name)
        sep = "&" if "?" in self.pg_url else "?"
        return f"{self.pg_url}{sep}schema={name}"

    def drop(self) -> None:
        if not self.schemas or not self.pg_url:
            return
        import psycopg

        with psycopg.connect(self.pg_url, autocommit=True) as conn:
            for name in self.schemas:
                conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


def _create(url: str, renyi: bool) -> dict[str, str]:
    """Create the ledger and one token per tenant (for the service rounds)."""
    from dpf_sched.ledger.sql import open_store
    from dpf_sched.service.tables import Role, ServiceTables

    comp: Composition = RenyiComposition(GRID) if renyi else BasicComposition()
    open_ledger(url, comp).close()
    tables = ServiceTables(open_store(url))
    try:
        tokens = {t: tables.create_token(t)[1] for t in TENANTS}
        tokens["admin"] = tables.create_token("ops", Role.ADMIN)[1]
    finally:
        tables.close()
    return tokens


def _writer_round(url: str, logp: Path, k: int, rng: random.Random, renyi: bool) -> None:
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            writer(url, logp, f"k{k}", rng.randrange(2**31), renyi)
        except BaseException:
            logging.exception("writer failed")
            code = 3
        os._exit(code)
    time.sleep(rng.uniform(0.3, 1.2))  # opening takes a moment; then a random point mid-operation
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    if not os.WIFSIGNALED(status):
        raise RuntimeError(f"the writer exited by itself (status {status}) before the kill; see the log")


def _serve_round(
    url: str, logp: Path, k: int, rng: random.Random, renyi: bool, tokens: dict[str, str], work: Path
) -> None:
    from dpf_sched.client import ServiceClient

    env = dict(os.environ)
    proc, base = start_serve(url, work / "serve.log", env)
    acks = AckLog(logp)
    killed = threading.Event()
    errors: list[str] = []
    try:
        with ServiceClient(base, tokens["admin"], retries=0) as admin:
            bid = f"k{k}sb"
            acks.intent({"op": "add_block", "block": bid})
            admin.add_block(Block(bid, capacity(renyi)))
            acks.ack({"op": "add_block", "block": bid})
            blocks = [b.block.id for b in admin.blocks() if not b.retired]
        threads = [
            threading.Thread(
                target=service_client,
                args=(base, tokens[t], acks, t, f"k{k}", blocks, killed, errors, renyi),
                daemon=True,
            )
            for t in TENANTS
        ]
        for t in threads:
            t.start()
        time.sleep(rng.uniform(0.2, 1.5))
        killed.set()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        for t in threads:
            t.join(timeout=30)
        if errors:
            raise RuntimeError(f"service clients failed before the kill: {errors}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
        acks.close()


def run_campaign(
    backend: str,
    kills: int,
    *,
    serve_every: int = 10,
    rotate: int = 20,
    seed: int = 0,
    work: Path | None = None,
    pg_url: str | None = None,
) -> Result:
    """Run ``kills`` rounds (see the module docstring) and return the counts."""
    if backend not in ("sqlite", "postgres"):
        raise ValueError(f"backend must be sqlite or postgres, got {backend!r}")
    if backend == "postgres" and not pg_url:
        raise ValueError("the postgres backend needs --postgres-url or DPF_SCHED_TEST_POSTGRES_URL")
    rng = random.Random(seed)
    own_work = work is None
    work = Path(tempfile.mkdtemp(prefix="dpf-kill-")) if work is None else work
    work.mkdir(parents=True, exist_ok=True)
    dbs = Databases(backend, work, pg_url)
    result = Result(backend)
    start = time.monotonic()
    url = ""
    logp = work / "acks0.jsonl"
    tokens: dict[str, str] = {}
    renyi = False
    db_acks: dict[int, int] = {}
    try:
        for k in range(kills):
            if k % rotate == 0:
                result.databases += 1
                renyi = result.databases % 2 == 0
                url = dbs.new(result.databases)
                logp = work / f"acks{result.databases}.jsonl"
                tokens = _create(url, renyi)
            if serve_every and k % serve_every == serve_every - 1:
                try:
                    _serve_round(url, logp, k, rng, renyi, tokens, work)
                    result.serve_kills += 1
                except RuntimeError as e:
                    result.serve_start_failures += 1
                    result.failures.append(f"round {k} ({backend}, db {result.databases}): {e}")
                    log.error("round %d: %s", k, e)
            else:
                _writer_round(url, logp, k, rng, renyi)
                result.writer_kills += 1
            result.kills = result.writer_kills + result.serve_kills
            entries = read_log(logp)
            check(url, entries, result, f"round {k} ({backend}, db {result.databases})")
            db_acks[result.databases] = sum(e["kind"] == "ack" for e in entries)
            result.acknowledged = sum(db_acks.values())
            if k % 50 == 49 or not result.ok:
                log.warning(
                    "round %d: %s",
                    k + 1,
                    {x: getattr(result, x) for x in ("acknowledged", "lost", "half_applied", "unopenable")},
                )
    finally:
        result.seconds = round(time.monotonic() - start, 1)
        dbs.drop()
        if own_work and result.ok:
            shutil.rmtree(work, ignore_errors=True)
        elif not result.ok:
            log.warning("kept the work directory %s", work)
    return result


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("sqlite", "postgres"), required=True)
    ap.add_argument("--kills", type=int, required=True, help="rounds, one SIGKILL each")
    ap.add_argument("--serve-every", type=int, default=10, help="every M-th kill is of a `dpf-sched serve` (0: none)")
    ap.add_argument("--rotate", type=int, default=20, help="a fresh database every R rounds")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--postgres-url", default=os.environ.get("DPF_SCHED_TEST_POSTGRES_URL"))
    ap.add_argument("--work-dir", type=Path, default=None, help="keep the databases and logs here")
    ap.add_argument("--json", action="store_true", help="print the result as one JSON object")
    args = ap.parse_args(argv)
    if args.kills < 1 or args.rotate < 1 or args.serve_every < 0:
        ap.error("--kills and --rotate must be positive, --serve-every non-negative")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    res = run_campaign(
        args.backend,
        args.kills,
        serve_every=args.serve_every,
        rotate=args.rotate,
        seed=args.seed,
        work=args.work_dir,
        pg_url=args.postgres_url,
    )
    if args.json:
        sys.stdout.write(json.dumps(res.to_json()) + "\n")
    else:
        sys.stdout.write(
            f"{res.backend}: {res.kills} kills ({res.writer_kills} writers, {res.serve_kills} services) on "
            f"{res.databases} databases, {res.acknowledged} acknowledged operations checked: {res.lost} lost, "
            f"{res.half_applied} half-applied, {res.unopenable} unopenable ({res.seconds} s)\n"
        )
        for f in res.failures[:20]:
            sys.stdout.write(f"  {f}\n")
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
