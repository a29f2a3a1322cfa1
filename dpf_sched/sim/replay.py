"""Event-driven replay of a trace under one policy, with the simulated clock.

The replay feeds the trace's events into an :class:`~dpf_sched.sim.events.EventLoop` one at a time (the trace
is streamed, never loaded whole), runs one scheduling pass per instant after all of that instant's blocks and
arrivals, and wakes the scheduler for timed unlocks and expiries between arrivals. Claims finish instantly: a
granted claim consumes its whole grant at once (the OSDI'21 microbenchmarks' model). The run ends at the
header's (or caller's) ``end`` time, or when nothing is left to happen.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.errors import DpfSchedError, InvalidParameterError, TraceFormatError
from dpf_sched.ledger.base import ClaimState
from dpf_sched.ledger.memory import MemoryLedger
from dpf_sched.policies.base import Policy, Verdict
from dpf_sched.policies.registry import create_policy
from dpf_sched.scheduler import Outcome, Scheduler
from dpf_sched.sim.events import EventLoop, Priority
from dpf_sched.sim.trace import BlockEvent, ClaimEvent, Trace, TraceEvent, read_trace

Observer = Callable[[Scheduler, list[Outcome]], None]

STATUS = {
    ClaimState.WAITING: "waiting",
    ClaimState.GRANTED: "granted",
    ClaimState.FINISHED: "granted",
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


@dataclass
class ReplayResult:
    """The outcome of one replay: per-claim results and the final ledger."""

    policy: str
    params: dict[str, Any]
    composition: str
    end_time: float
    claims: list[ClaimOutcome]
    ledger: MemoryLedger
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = {"granted": 0, "rejected": 0, "waiting": 0}
            for c in self.claims:
                self.counts[c.status] += 1

    def blocks_json(self) -> list[dict[str, Any]]:
        """Per-block capacity and buckets, as plain numbers (basic: ε and δ; Rényi: one list per bucket)."""
        led = self.ledger
        out = []
        arrays = {
            "capacity": led.capacity,
            "locked": led.locked,
            "unlocked": led.unlocked,
            "allocated": led.allocated,
            "consumed": led.consumed,
        }
        renyi = self.composition == "renyi"
        for i, block in enumerate(led.blocks()):
            row: dict[str, Any] = {"id": block.id}
            for name, arr in arrays.items():
                if renyi:
                    row[name] = [float(x) for x in arr[i]]
                else:
                    row[name] = {"epsilon": float(arr[i, 0]), "delta": float(arr[i, 1])}
            if renyi:
                row["alphas"] = list(led.composition.grid.orders)  # type: ignore[attr-defined]
            out.append(row)
        return out

    def to_json(self, include_blocks: bool = True) -> dict[str, Any]:
        """The ``--json`` document of ``dpf-sched simulate``."""
        doc: dict[str, Any] = {
            "policy": self.policy,
            "params": self.params,
            "composition": self.composition,
            "end_time": self.end_time,
            **self.counts,
            "claims": [
                {
                    "id": c.id,
                    "status": c.status,
                    "arrival": c.arrival,
                    "granted_at": c.granted_at,
                    **({"reason": c.reason} if c.reason else {}),
                }
                for c in self.claims
            ],
        }
        if include_blocks:
            doc["blocks"] = self.blocks_json()
        return doc


class _Replay:
    """One replay's mutable state (kept out of the module functions)."""

    def __init__(self, trace: Trace, policy: Policy, end: float | None, observer: Observer | None = None) -> None:
        self.observer = observer
        self.trace = trace
        self.end = end
        self.ledger = MemoryLedger(trace.header.make_composition())
        self.clock = ManualClock()
        self.scheduler = Scheduler(self.ledger, policy, self.clock)
        self.loop = EventLoop()
        self.events: Iterator[TraceEvent] = iter(trace.events)
        self.pass_at = -math.inf
        self.wake_at: float | None = None
        self.labels: dict[str, str | None] = {}
        self.claims: dict[str, Claim] = {}
        self.last_time = 0.0

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
        self.last_time = t
        outcomes = self.scheduler.step()
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
        outcomes = []
        for cid in led.claim_ids():
            st = led.status(cid)
            claim = self.claims[cid]
            outcomes.append(
                ClaimOutcome(
                    id=cid,
                    status=STATUS[st.state],
                    arrival=claim.arrival,
                    granted_at=st.granted_at,
                    reason=st.reason,
                    n_blocks=len(claim.blocks),
                    label=self.labels.get(cid),
                    owner=claim.owner,
                )
            )
        policy = self.scheduler.policy
        return ReplayResult(policy.name, dict(policy.config), self.trace.header.composition, end_time, outcomes, led)


def replay(
    trace: Trace | str | Path | IO[str],
    policy: Policy | str,
    params: dict[str, Any] | None = None,
    *,
    end: float | None = None,
    observer: Observer | None = None,
) -> ReplayResult:
    """Replay ``trace`` (a :class:`Trace` or a path/file to read) under ``policy``.

    ``end`` overrides the header's end time; events after it are ignored and waiting claims stay waiting.
    ``observer`` is called after every pass with the scheduler and the outcomes it applied (tests use it to
    check the ledger's invariants after every event).
    Malformed input raises :class:`TraceFormatError` naming the line.
    """
    if not isinstance(trace, Trace):
        trace = read_trace(trace)
    if isinstance(policy, str):
        policy = create_policy(policy, **(params or {}))
    elif params:
        raise InvalidParameterError("params are only accepted with a policy name")
    if end is not None and (not math.isfinite(end) or end < 0):
        raise InvalidParameterError(f"end time must be finite and ≥ 0, got {end}")
    stop = end if end is not None else trace.header.end
    return _Replay(trace, policy, stop, observer).run()
