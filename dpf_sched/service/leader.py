"""The service's scheduling loop: one per process, and at most one per ledger granting at a time.

Every `dpf-sched serve` process runs a :class:`LeaderLoop` thread. It tries to take the ledger's grant lease
(an ``flock`` on SQLite, a session-level ``pg_advisory_lock`` on PostgreSQL); the process that holds it is the
*leader* and runs a :class:`~dpf_sched.scheduler.Scheduler` on its own ledger connection with its own clock
(:class:`LeaderClock`: monotonic time anchored on the wall clock at takeover).
The others retry every ``lease_retry`` seconds. The lease dies with its holder (the kernel drops the ``flock``
of a killed process, PostgreSQL the advisory lock of a dead connection), so a SIGKILLed leader is replaced.

A new leader builds its scheduler from the ledger alone (nothing is handed over):

1. every block, in creation order: the unlocker's creation rule (``on_block``; UnlockAll → 1.0);
2. every claim ever submitted, in submission order: the unlocker's arrival rule (DPF-N counts arrivals per
   block), whatever the claim's state — unlocks only raise fractions, so re-applying what the previous leader
   already applied changes nothing;
3. every waiting claim, in submission order, enqueued with its original arrival and deadline (``adopt``);
4. every granted claim with a lease: its lease is watched from the deadline stored in the ledger (the grant time
   + lease, or the last renewal, which every API process writes to the ledger's lease table), so a lease granted
   by the previous leader still expires, and a renewed one does not (``adopt_lease``).

Then, each poll, it adopts what other processes wrote, learned from the journal entries its ledger replays
(:attr:`SqlLedger.observer`): new blocks (``adopt_block``), new claims (``adopt``), releases, expiries and unlocks
(their blocks are marked dirty), rejections (withdrawals: ``drop``); then it runs one :meth:`Scheduler.step` (timed
unlocks, expiry of granted claims whose lease lapsed, rejection of waiting claims past their deadline, one pass).
Grants are ledger transactions that re-check that the claim waits and fits, so a grant can never be duplicated,
even if two loops believed they were leaders.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from dpf_sched.clock import Clock
from dpf_sched.composition import BoolArray
from dpf_sched.errors import DpfSchedError, GrantLeaseError, InvalidStateError, UnknownClaimError
from dpf_sched.ledger.base import ClaimState, FloatArray, IntArray
from dpf_sched.ledger.sql import SqlLedger, open_store
from dpf_sched.policies.base import Decision
from dpf_sched.queue import QueuedClaim
from dpf_sched.scheduler import Outcome, Scheduler

logger = logging.getLogger(__name__)

#: Default seconds of silence after which PostgreSQL ends the scheduling loop's session (see ``idle_bound``).
LEADER_IDLE_BOUND = 10.0


class LeaderClock:
    """The scheduling loop's clock: monotonic time anchored on the wall clock when the loop takes the lease.

    Expiring a claim and a timed unlock cannot be undone, so the leader must not act on a wall-clock step: a step
    forward of its host's clock would expire waiting claims and unlock budget early. ``CLOCK_MONOTONIC`` is
    slewed by NTP (it keeps real time's rate) but never stepped, so while a loop leads, steps of the wall clock
    change nothing. The wall clock is read once per takeover (:meth:`anchor`), and the time given never goes
    back. Claim arrivals and block creation times are still stamped by the API processes' wall clocks: hosts run
    NTP, and a step there only moves that one stamp (see docs/service.md, failure modes).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._epoch = time.time()
        self._mono = time.monotonic()
        self._last = -math.inf

    def anchor(self) -> None:
        """Re-read the wall clock (at a takeover), never going back from a time already given."""
        with self._lock:
            self._epoch = max(time.time(), self._last)
            self._mono = time.monotonic()

    def now(self) -> float:
        with self._lock:
            self._last = max(self._last, self._epoch + (time.monotonic() - self._mono))
            return self._last


class LeaderLedger(SqlLedger):
    """The leader's ledger: a rejection of a claim that left the waiting state elsewhere (withdrawn by its owner
    through another connection) is skipped instead of failing the whole pass; the transaction refused it and
    nothing changed. (A refused *grant* is the scheduler's business: :meth:`LeaderScheduler._refused`.)"""

    def reject(self, claim_id: str, now: float, reason: str) -> None:
        try:
            super().reject(claim_id, now, reason)
        except InvalidStateError:
            if self.state(claim_id) is ClaimState.WAITING:
                raise
            logger.info("claim %s left the waiting state elsewhere; not rejected (%s)", claim_id, reason)


class LeaderScheduler(Scheduler):
    """The leader's scheduler: the decisions of one pass are applied in one ledger transaction
    (:meth:`SqlLedger.batch`): one journal entry per grant or rejection, as always, but one commit (one fsync)
    for all of them. Nobody learns of a grant before that commit (the API reads committed rows only, and waiters
    are woken after the step); a storage failure rolls the whole pass back and the loop steps down. Expiries of
    leases due at the same step share one transaction the same way."""

    def __init__(self, ledger: SqlLedger, policy: str, clock: Clock, **params: Any) -> None:
        super().__init__(ledger, policy, clock, **params)
        self._sql = ledger

    def possible(self, idx: IntArray, demand: FloatArray) -> BoolArray:
        """Here a claim is "never" possible only beyond the capacity, not beyond capacity − consumed: whether a
        tenant's claim is rejected at once must not depend on what other tenants consumed (docs/service.md, what
        a tenant may learn). A claim that others' consumption made impossible waits, like one that does not fit
        yet, until its timeout, its withdrawal or its block's retirement."""
        comp = self.ledger.composition
        cap = self.ledger.capacity[idx]
        return comp.possible(demand, np.zeros_like(cap), cap)

    def _apply(self, decisions: list[Decision], now: float) -> list[Outcome]:
        if len(decisions) < 2:
            return super()._apply(decisions, now)
        with self._sql.batch():
            return super()._apply(decisions, now)

    def _expire_leases(self, now: float) -> list[str]:
        # Two or more leases due (e.g. the lapses of a leaderless interval): one transaction, one fsync, as for a
        # pass. An expiry refused in it (the claim was renewed or finished meanwhile) leaves the others in place.
        heap = self._leases
        if len(heap) < 2 or min(heap[1:3])[0] > now:
            return super()._expire_leases(now)
        with self._sql.batch():
            return super()._expire_leases(now)

    def _refused(self, q: QueuedClaim, d: Decision, error: DpfSchedError) -> bool:
        """A grant (or rejection) the ledger refused because another process changed the claim or its blocks
        since the pass read them: withdrawn (it left the waiting state), a block retired, budget gone. It is one
        decision's outcome, not the pass's: nothing was written for it, the pass's other decisions stand (the
        batch keeps them), and the claim's blocks are marked dirty so the next pass offers what the policy had
        set aside for it to the claims behind it. A claim that still waits stays queued (a retired block's
        claims are then rejected by the next step)."""
        state = self.ledger.state(q.id)
        logger.info("decision %s on claim %s refused (%s); claim is %s", d.verdict.value, q.id, error, state.value)
        self._dirty.update(int(i) for i in q.idx)
        if state is not ClaimState.WAITING:
            self._forget(q)
        return True


class LeaderLoop:
    """The scheduling loop of one process (a thread): takes the grant lease when free, then schedules.

    Parameters
    ----------
    url
        The ledger URL.
    policy
        Registered policy name; ``params`` its parameters (strings are parsed by the policy).
    poll
        Seconds between two scheduling steps of the leader.
    lease_retry
        Seconds between two attempts of a follower to take the lease.
    on_change
        Called (from this thread) after a step that changed something, so waiters can look again.
    idle_bound
        PostgreSQL ends this loop's session once it has been idle this many seconds (at least 4 × ``poll`` and
        4 × ``lease_retry``): a stopped (SIGSTOP) or partitioned leader thus loses the lease within about this
        bound (plus the keepalive bound when partitioned), and its grants are fenced because each is a
        transaction on that same session.
    """

    def __init__(
        self,
        url: str,
        policy: str,
        params: Mapping[str, Any],
        *,
        poll: float = 0.05,
        lease_retry: float = 0.5,
        on_change: Callable[[], None] | None = None,
        idle_bound: float = LEADER_IDLE_BOUND,
    ) -> None:
        self.url = url
        self.idle_bound = max(idle_bound, 4.0 * poll, 4.0 * lease_retry)
        self.policy = policy
        self.params = dict(params)
        self.poll = poll
        self.lease_retry = lease_retry
        self.on_change = on_change
        self.clock = LeaderClock()
        self._stop = threading.Event()
        self._nudge = threading.Event()
        self._thread: threading.Thread | None = None
        self._leader = threading.Event()
        self._ledger: LeaderLedger | None = None
        self._sched: Scheduler | None = None
        self._events: list[tuple[int, str, Mapping[str, Any]]] = []
        self._high = 0
        self.error: str | None = None

    @property
    def is_leader(self) -> bool:
        """True while this process holds the grant lease and schedules."""
        return self._leader.is_set()

    def start(self) -> None:
        """Start the loop thread."""
        self._thread = threading.Thread(target=self._run, name="dpf-sched-leader", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Run the next step now instead of at the next poll (this process wrote a claim, a release or a block).

        Only the poll interval is saved: a follower's loop ignores it (it is not scheduling), and writes of other
        processes are still picked up at the leader's next poll.
        """
        self._nudge.set()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and give the lease back."""
        self._stop.set()
        self._nudge.set()
        if self._thread is not None:
            self._thread.join(timeout)

    # ----- the loop -----------------------------------------------------------------------------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                if self._sched is None and not self._try_lead():
                    self._stop.wait(self.lease_retry)
                    continue
                changed = self._tick()
                if changed and self.on_change is not None:
                    self.on_change()
                self._nudge.wait(self.poll)
                self._nudge.clear()
            except Exception as e:  # a storage failure: step down, reconnect and try again
                logger.error("scheduler loop failed (%s: %s); stepping down", type(e).__name__, e)
                self.error = f"{type(e).__name__}: {e}"
                self._step_down()
                self._stop.wait(self.lease_retry)
        self._step_down()

    def _step_down(self) -> None:
        self._leader.clear()
        self._sched = None
        led, self._ledger = self._ledger, None
        if led is not None:
            try:
                led.close()  # also gives the lease back
            except Exception as e:  # pragma: no cover - closing a broken connection
                logger.warning("closing the leader's ledger failed: %s", e)

    def _observe(self, seq: int, op: str, payload: Mapping[str, Any]) -> None:
        if seq > self._high:
            self._high = seq
            self._events.append((seq, op, payload))

    def _try_lead(self) -> bool:
        if self._ledger is None:
            store = open_store(self.url, create=False)
            try:
                store.bound_idle(self.idle_bound)
            except BaseException:
                store.close()
                raise
            self._ledger = LeaderLedger(store, create=False, grant_timeout=0.0)
        led = self._ledger
        try:
            led.hold_grant_lease(0.0)
        except GrantLeaseError:
            return False
        # We hold the lease: build the scheduler from the ledger alone.
        self.clock.anchor()
        sched = LeaderScheduler(led, self.policy, self.clock, **self.params)
        led.observer = self._observe
        waiting = []
        leases = 0
        # One consistent snapshot: the scheduler is built inside one write transaction, so no other process can
        # commit while it is (every journal write takes the write lock). What this build read is exactly the
        # journal up to ``_high``; what others commit later reaches the first tick through the observer, once.
        # (Reading the journal length and then the claims outside it counted a claim committed in between twice.)
        with led.batch():
            self._high = led.journal_length
            self._events = []
            for block in list(led.blocks()):
                sched.adopt_block(block.id)
            for cid in list(led.claim_ids()):
                record = led.claim(cid)
                sched.replay_arrival(record)
                if record.state is ClaimState.WAITING:
                    waiting.append(record)
                elif record.state is ClaimState.GRANTED and record.lease_deadline is not None:
                    leases += sched.adopt_lease(cid)
            for record in waiting:
                sched.adopt(record, arrival_unlock=False)
        self._sched = sched
        self.error = None
        self._leader.set()
        logger.info(
            "took the grant lease on %s: policy %s, %d blocks, %d waiting claims and %d claim leases adopted",
            led.describe(),
            sched.policy.describe(),
            led.n_blocks,
            len(waiting),
            leases,
        )
        return True

    def _tick(self) -> bool:
        led, sched = self._ledger, self._sched
        assert led is not None and sched is not None
        led.journal_length  # noqa: B018 - catch up: the observer collects what others wrote
        events, self._events = self._events, []
        for _, op, payload in events:
            self._adopt(sched, led, op, payload)
        before = led.journal_length
        sched.step()
        return bool(events) or led.journal_length != before

    def _adopt(self, sched: Scheduler, led: SqlLedger, op: str, p: Mapping[str, Any]) -> None:
        try:
            if op == "add_block":
                sched.adopt_block(str(p["id"]))
            elif op == "add_claim":
                record = led.claim(str(p["id"]))
                if record.state is ClaimState.WAITING:
                    sched.adopt(record)
                else:  # rejected at once by its submitter (impossible demand): its arrival still counts
                    sched.replay_arrival(record)
            elif op == "reject":
                sched.drop(str(p["claim"]))
            elif op == "allocate":  # granted by another loop (an earlier leader's last pass): watch its lease
                sched.drop(str(p["claim"]))
                sched.adopt_lease(str(p["claim"]))
            elif op in ("release", "expire"):
                sched.mark_dirty(list(led.claim(str(p["claim"])).claim.blocks))
            elif op == "unlock":
                blocks = list(led.blocks())
                sched.mark_dirty([blocks[int(i)].id for i in p["idx"]])
            elif op == "retire":
                sched.mark_dirty([str(p["block"])])
        except (InvalidStateError, UnknownClaimError) as e:
            # The claim moved on since the entry (e.g. withdrawn right after it was submitted): nothing to adopt.
            logger.debug("adopting %s: %s", op, e)
        except DpfSchedError:
            raise
