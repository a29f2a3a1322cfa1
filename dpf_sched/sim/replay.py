"""Event-driven replay of a trace under one policy, with the simulated clock.

The replay feeds the trace's events into an :class:`~dpf_sched.sim.events.EventLoop` one at a time (the trace
is streamed, never loaded whole), runs one scheduling pass per instant after all of that instant's blocks and
arrivals, and wakes the scheduler for timed unlocks and expiries between arrivals. Claims finish instantly: a
granted claim consumes its whole grant at once (the OSDI'21 microbenchmarks' model). The run ends at the
header's (or caller's) ``end`` time, or when nothing is left to happen.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import Composition, RenyiComposition
from dpf_sched.errors import DpfSchedError, InvalidParameterError, TraceFormatError
from dpf_sched.ledger.base import ClaimState, Ledger
from dpf_sched.ledger.memory import MemoryLedger
from dpf_sched.policies.base import Policy, Verdict
from dpf_sched.policies.registry import create_policy
from dpf_sched.scheduler import Outcome, Scheduler
from dpf_sched.sim.engine import REASONS, EngineResult, simulate, supports
from dpf_sched.sim.events import EventLoop, Priority
from dpf_sched.sim.table import SimInput, tables_from_trace, trace_from_tables
from dpf_sched.sim.trace import BlockEvent, ClaimEvent, Trace, TraceEvent, read_trace

Observer = Callable[[Scheduler, list[Outcome]], None]
#: Builds the ledger an online replay runs on from the trace's composition (default: a MemoryLedger).
LedgerFactory = Callable[[Composition], Ledger]
FloatArray = NDArray[np.float64]

STATUS = {
    ClaimState.WAITING: "waiting",
    ClaimState.GRANTED: "granted",
    ClaimState.FINISHED: "granted",
    ClaimState.EXPIRED: "granted",
    ClaimState.REJECTED: "rejected",
}


@dataclass(frozen=True, slots=True)
class ClaimOutcome:
    """How one claim of a replay ended."""

    id: str
    status: str
    arrival: float
    granted_at: float | None
    reason: str | None
    n_blocks: int
    label: str | None
    owner: str | None


#: Status names by code (the columnar result keeps small integer codes).
STATUS_NAMES = ("waiting", "granted", "rejected")


@dataclass
class BlockBuckets:
    """Final per-block budget of a replay: ids, α grid (Rényi) and one row per block for each bucket."""

    ids: tuple[str, ...]
    alphas: tuple[float, ...] | None
    capacity: FloatArray
    locked: FloatArray
    unlocked: FloatArray
    allocated: FloatArray
    consumed: FloatArray


@dataclass
class ReplayResult:
    """The outcome of one replay, kept as columns (one entry per claim, in arrival order).

    ``status`` holds codes into :data:`STATUS_NAMES`; ``granted_at`` is NaN for claims never granted.
    :attr:`claims` gives the same as a list of :class:`ClaimOutcome` values. ``passes`` and ``pass_seconds``
    are the number of scheduler steps of an online (``"scheduler"`` engine) replay and the process CPU time
    spent in them (the cost of scheduling itself, without trace parsing); the batch engine has no passes
    (0 and NaN).
    """

    policy: str
    params: dict[str, Any]
    composition: str
    end_time: float
    engine: str
    ids: Sequence[str]
    status: NDArray[np.int8]
    arrival: FloatArray
    granted_at: FloatArray
    reasons: Sequence[str | None]
    n_blocks: NDArray[np.int64]
    labels: Sequence[str | None]
    owners: Sequence[str | None]
    blocks: BlockBuckets
    ptr: NDArray[np.int64]
    block_of_row: NDArray[np.int64]
    passes: int = 0
    pass_seconds: float = math.nan

    def claim_blocks(self, k: int) -> tuple[str, ...]:
        """The ids of the blocks the ``k``-th claim asked for."""
        ids = self.blocks.ids
        return tuple(ids[b] for b in self.block_of_row[self.ptr[k] : self.ptr[k + 1]].tolist())

    @property
    def counts(self) -> dict[str, int]:
        """Number of claims granted, rejected and waiting at the end."""
        c = np.bincount(self.status, minlength=3)
        return {"granted": int(c[1]), "rejected": int(c[2]), "waiting": int(c[0])}

    @property
    def claims(self) -> list[ClaimOutcome]:
        """Per-claim outcomes as values."""
        names = STATUS_NAMES
        out = []
        for k, cid in enumerate(self.ids):
            g = float(self.granted_at[k])
            out.append(
                ClaimOutcome(
                    id=cid,
                    status=names[int(self.status[k])],
                    arrival=float(self.arrival[k]),
                    granted_at=None if math.isnan(g) else g,
                    reason=self.reasons[k],
                    n_blocks=int(self.n_blocks[k]),
                    label=self.labels[k],
                    owner=self.owners[k],
                )
            )
        return out

    def blocks_json(self) -> list[dict[str, Any]]:
        """Per-block capacity and buckets, as plain numbers (basic: ε and δ; Rényi: one list per bucket)."""
        bk = self.blocks
        arrays = {
            "capacity": bk.capacity,
            "locked": bk.locked,
            "unlocked": bk.unlocked,
            "allocated": bk.allocated,
            "consumed": bk.consumed,
        }
        renyi = self.composition == "renyi"
        lists = {name: arr.tolist() for name, arr in arrays.items()}
        out = []
        for i, bid in enumerate(bk.ids):
            row: dict[str, Any] = {"id": bid}
            for name, values in lists.items():
                if renyi:
                    row[name] = values[i]
                else:
                    row[name] = {"epsilon": values[i][0], "delta": values[i][1]}
            if renyi:
                row["alphas"] = list(bk.alphas or ())
            out.append(row)
        return out

    def to_json(self, include_blocks: bool = True) -> dict[str, Any]:
        """The ``--json`` document of ``dpf-sched simulate``."""
        names = STATUS_NAMES
        status = self.status.tolist()
        arrival = self.arrival.tolist()
        granted = self.granted_at.tolist()
        claims = []
        for k, cid in enumerate(self.ids):
            g = granted[k]
            item: dict[str, Any] = {
                "id": cid,
                "status": names[status[k]],
                "arrival": arrival[k],
                "granted_at": None if g != g else g,
            }
            if self.reasons[k]:
                item["reason"] = self.reasons[k]
            claims.append(item)
        doc: dict[str, Any] = {
            "policy": self.policy,
            "params": self.params,
            "composition": self.composition,
            "end_time": self.end_time,
            **self.counts,
            "claims": claims,
        }
        if include_blocks:
            doc["blocks"] = self.blocks_json()
        return doc


class _Replay:
    """One replay's mutable state (kept out of the module functions)."""

    def __init__(
        self,
        trace: Trace,
        policy: Policy,
        end: float | None,
        observer: Observer | None = None,
        ledger: LedgerFactory | None = None,
    ) -> None:
        self.observer = observer
        self.trace = trace
        self.end = end
        comp = trace.header.make_composition()
        self.ledger: Ledger = MemoryLedger(comp) if ledger is None else ledger(comp)
        self.clock = ManualClock()
        self.scheduler = Scheduler(self.ledger, policy, self.clock)
        self.loop = EventLoop()
        self.events: Iterator[TraceEvent] = iter(trace.events)
        self.pass_at = -math.inf
        self.wake_at: float | None = None
        self.labels: dict[str, str | None] = {}
        self.claims: dict[str, Claim] = {}
        self.last_time = 0.0
        self.passes = 0
        self.pass_seconds = 0.0

    def feed(self) -> None:
        ev = next(self.events, None)
        if ev is None or (self.end is not None and ev.time > self.end):
            return
        prio = Priority.BLOCK if isinstance(ev, BlockEvent) else Priority.ARRIVAL
        self.loop.schedule(ev.time, prio, lambda: self.handle(ev))

    def handle(self, ev: TraceEvent) -> None:
        try:
            self.clock.set(ev.time)
            self.last_time = ev.time
            if isinstance(ev, BlockEvent):
                self.scheduler.add_block(ev.block)
            else:
                self.submit(ev)
        except TraceFormatError:
            raise
        except DpfSchedError as e:
            raise TraceFormatError(str(e), ev.line) from e
        self.request_pass(ev.time)
        self.feed()

    def submit(self, ev: ClaimEvent) -> None:
        if ev.claim is not None:
            claim = ev.claim
        else:
            assert ev.selector is not None and ev.demand is not None
            blocks = ev.selector.select(self.ledger.blocks())
            claim = Claim.uniform(ev.claim_id, blocks, ev.demand, arrival=ev.time, **dict(ev.fields or {}))
        self.labels[claim.id] = ev.label
        self.claims[claim.id] = claim
        self.scheduler.submit(claim)

    def request_pass(self, t: float) -> None:
        if self.pass_at != t:
            self.pass_at = t
            self.loop.schedule(t, Priority.PASS, self.do_pass)

    def do_pass(self) -> None:
        t = self.loop.now
        self.clock.set(t)
        before = self.ledger.unlocked_fraction.copy() if self.end is None else None
        started = time.process_time()
        outcomes = self.scheduler.step()
        self.pass_seconds += time.process_time() - started
        self.passes += 1
        # Without an end time, a run ends at its last change: an event, a decision or an unlock step (a
        # wake-up that changes nothing, such as the deadline of a claim granted since, does not count).
        if outcomes or (before is not None and bool((self.ledger.unlocked_fraction[: before.shape[0]] > before).any())):
            self.last_time = t
        for out in outcomes:
            if out.verdict is Verdict.GRANT:
                self.scheduler.consume(out.claim_id)
        if self.observer is not None:
            self.observer(self.scheduler, outcomes)
        w = self.scheduler.next_wakeup()
        if w is not None and w != self.wake_at and (self.end is None or w <= self.end):
            self.wake_at = w
            self.loop.schedule(w, Priority.WAKEUP, lambda: self.request_pass(w))

    def run(self) -> ReplayResult:
        self.feed()
        self.loop.run(until=self.end if self.end is not None else math.inf)
        end_time = self.end if self.end is not None else self.last_time
        led = self.ledger
        comp = led.composition
        ids: list[str] = []
        status: list[int] = []
        arrival: list[float] = []
        granted_at: list[float] = []
        reasons: list[str | None] = []
        n_blocks: list[int] = []
        owners: list[str | None] = []
        rows: list[int] = []
        for cid in led.claim_ids():
            st = led.status(cid)
            claim = self.claims[cid]
            ids.append(cid)
            status.append(STATUS_NAMES.index(STATUS[st.state]))
            arrival.append(claim.arrival)
            granted_at.append(math.nan if st.granted_at is None else st.granted_at)
            reasons.append(st.reason)
            n_blocks.append(len(claim.blocks))
            owners.append(claim.owner)
            rows.extend(led.block_index(b) for b in claim.blocks)
        policy = self.scheduler.policy
        buckets = BlockBuckets(
            tuple(b.id for b in led.blocks()),
            tuple(comp.grid.orders) if isinstance(comp, RenyiComposition) else None,
            led.capacity.copy(),
            led.locked.copy(),
            led.unlocked.copy(),
            led.allocated.copy(),
            led.consumed.copy(),
        )
        return ReplayResult(
            policy.name,
            dict(policy.config),
            self.trace.header.composition,
            end_time,
            "scheduler",
            ids,
            np.asarray(status, dtype=np.int8),
            np.asarray(arrival, dtype=np.float64),
            np.asarray(granted_at, dtype=np.float64),
            reasons,
            np.asarray(n_blocks, dtype=np.int64),
            [self.labels.get(c) for c in ids],
            owners,
            buckets,
            np.concatenate(([0], np.cumsum(n_blocks))).astype(np.int64),
            np.asarray(rows, dtype=np.int64),
            self.passes,
            self.pass_seconds,
        )


def _batch_result(inp: SimInput, policy: Policy, res: EngineResult) -> ReplayResult:
    """A :class:`ReplayResult` from the batch engine's arrays."""
    claims = inp.claims
    comp = inp.composition
    G = inp.blocks.capacity
    f = res.fraction[:, None]
    reasons = [REASONS[r] or None for r in res.reason.tolist()]
    buckets = BlockBuckets(
        inp.blocks.ids,
        tuple(comp.grid.orders) if isinstance(comp, RenyiComposition) else None,
        G.copy(),
        (1.0 - f) * G,
        f * G - res.consumed,
        np.zeros_like(G),
        res.consumed.copy(),
    )
    return ReplayResult(
        policy.name,
        dict(policy.config),
        inp.header.composition,
        res.end_time,
        "batch",
        claims.ids,
        res.status,
        claims.arrival,
        res.granted_at,
        reasons,
        claims.n_blocks,
        claims.labels,
        claims.owners,
        buckets,
        claims.ptr,
        claims.block,
    )


ENGINES = ("auto", "batch", "scheduler")


def replay(
    trace: Trace | str | Path | IO[str],
    policy: Policy | str,
    params: dict[str, Any] | None = None,
    *,
    end: float | None = None,
    observer: Observer | None = None,
    engine: str = "auto",
    ledger: LedgerFactory | None = None,
) -> ReplayResult:
    """Replay ``trace`` (a :class:`Trace` or a path/file to read) under ``policy``.

    ``end`` overrides the header's end time; events after it are ignored and waiting claims stay waiting.
    ``observer`` is called after every pass with the scheduler and the outcomes it applied (tests use it to
    check the ledger's invariants after every event).
    ``engine``: ``"batch"`` runs the batch simulator (:mod:`dpf_sched.sim.engine`), ``"scheduler"`` drives the
    online :class:`Scheduler` pass by pass, ``"auto"`` (default) takes the batch simulator when the policy
    supports it and no observer is given. Both give the same grants and final statuses.
    ``ledger`` builds the ledger from the trace's composition (a SQL ledger records the run: its journal and
    final state); it needs the online scheduler, so it is refused with ``engine="batch"`` and makes ``"auto"``
    take the scheduler.
    Malformed input raises :class:`TraceFormatError` naming the line.
    """
    if engine not in ENGINES:
        raise InvalidParameterError(f"engine must be one of {ENGINES}, got {engine!r}")
    if ledger is not None and engine == "batch":
        raise InvalidParameterError("a ledger factory needs the online scheduler: use engine='scheduler' or 'auto'")
    if not isinstance(trace, Trace):
        trace = read_trace(trace)
    if isinstance(policy, str):
        policy = create_policy(policy, **(params or {}))
    elif params:
        raise InvalidParameterError("params are only accepted with a policy name")
    if end is not None and (not math.isfinite(end) or end < 0):
        raise InvalidParameterError(f"end time must be finite and ≥ 0, got {end}")
    stop = end if end is not None else trace.header.end
    batch = supports(policy) and observer is None and ledger is None
    if engine == "batch" and not batch:
        why = "an observer needs the online scheduler" if observer is not None else "it has no batch plan"
        raise InvalidParameterError(f"policy {policy.describe()} cannot run in the batch engine: {why}")
    if engine == "scheduler" or not batch:
        return _Replay(trace, policy, stop, observer, ledger).run()
    inp = tables_from_trace(trace, stop)
    result = simulate(inp, policy)
    assert result is not None
    return _batch_result(inp, policy, result)


def replay_input(
    inp: SimInput,
    policy: Policy | str,
    params: dict[str, Any] | None = None,
    *,
    engine: str = "auto",
) -> ReplayResult:
    """Replay a run already in columnar form (:class:`~dpf_sched.sim.table.SimInput`), as built by workload
    generators, with the same engine choice and results as :func:`replay` on the equivalent trace."""
    if engine not in ENGINES:
        raise InvalidParameterError(f"engine must be one of {ENGINES}, got {engine!r}")
    if isinstance(policy, str):
        policy = create_policy(policy, **(params or {}))
    elif params:
        raise InvalidParameterError("params are only accepted with a policy name")
    batch = supports(policy)
    if engine == "batch" and not batch:
        raise InvalidParameterError(f"policy {policy.describe()} cannot run in the batch engine: it has no batch plan")
    if engine == "scheduler" or not batch:
        return _Replay(trace_from_tables(inp), policy, inp.end, None).run()
    result = simulate(inp, policy)
    assert result is not None
    return _batch_result(inp, policy, result)
