"""The scheduler: ties a ledger, a policy and a clock; the single entry point for blocks, claims and time.

It owns the waiting queue, the set of blocks that gained unlocked budget since the last pass ("dirty"), the
claims that arrived since then, the waiting claims' deadlines and the granted claims' lease deadlines. One
:meth:`Scheduler.step` is one instant of the model: time-driven unlocks due now, expiry of granted claims whose
lease lapsed (their unconsumed remainder returns to the unlocked pool), rejection of waiting claims whose deadline
has come, then one scheduling pass whose decisions are applied through the ledger (which checks the invariants
again). The same code runs under the simulator's :class:`~dpf_sched.clock.ManualClock` and under the wall clock.
"""

from __future__ import annotations

import heapq
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from dpf_sched.block import Block
from dpf_sched.budget import Budget
from dpf_sched.claim import Claim
from dpf_sched.clock import Clock, ManualClock
from dpf_sched.composition import BoolArray
from dpf_sched.errors import (
    DpfSchedError,
    InsufficientBudgetError,
    InvalidParameterError,
    InvalidStateError,
    UnknownBlockError,
)
from dpf_sched.ledger.base import ClaimRecord, ClaimState, FloatArray, IntArray, Ledger
from dpf_sched.policies.base import Decision, PassContext, Policy, Unlock, Verdict
from dpf_sched.policies.registry import create_policy
from dpf_sched.queue import ClaimQueue, QueuedClaim
from dpf_sched.selector import BlockSelector

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Outcome:
    """A decision the scheduler applied: which claim, granted or rejected, and why."""

    claim_id: str
    verdict: Verdict
    reason: str = ""


def share_key(shares: np.ndarray[Any, np.dtype[np.float64]]) -> tuple[float, ...]:
    """Per-block shares in descending order with trailing zeros dropped (the lexicographic tie-break key)."""
    s = sorted(shares.tolist(), reverse=True)
    while s and s[-1] == 0.0:
        s.pop()
    return tuple(s)


class Scheduler:
    """Schedules claims on a ledger with a policy.

    Parameters
    ----------
    ledger
        The budget state (any :class:`~dpf_sched.ledger.Ledger` backend).
    policy
        A :class:`~dpf_sched.policies.Policy` instance, or a registered policy name.
    clock
        Time source; a :class:`ManualClock` at 0 by default.
    policy_params
        Parameters when ``policy`` is a name.
    """

    def __init__(
        self,
        ledger: Ledger,
        policy: Policy | str,
        clock: Clock | None = None,
        **policy_params: Any,
    ) -> None:
        if isinstance(policy, str):
            policy = create_policy(policy, **policy_params)
        elif policy_params:
            raise InvalidParameterError("policy parameters are only accepted with a policy name")
        if not isinstance(policy, Policy):
            raise InvalidParameterError(f"policy must be a Policy or a name, got {type(policy).__name__}")
        policy.attach(ledger)
        self.ledger = ledger
        self.policy = policy
        self.clock: Clock = clock if clock is not None else ManualClock()
        self.queue = ClaimQueue(ledger.composition.width)
        self._dirty: set[int] = set()
        self._arrivals: list[QueuedClaim] = []
        self._deadlines: list[tuple[float, int]] = []
        # (lease deadline, claim id) of granted claims with a lease. An entry may be stale (the claim was renewed,
        # finished or expired since): when it comes due, the ledger's current deadline and state decide.
        self._leases: list[tuple[float, str]] = []
        self._seq = 0
        self._handles: dict[str, int] = {}  # id → handle of the claims waiting in the queue
        self._last = -math.inf
        self._next_unlock: float | None = None

    # ----- time -------------------------------------------------------------------------------------------
    def _now(self) -> float:
        t = float(self.clock.now())
        if not math.isfinite(t):
            raise InvalidParameterError(f"clock returned a non-finite time {t}")
        if t < self._last:
            raise InvalidParameterError(f"clock went backwards: {t} < {self._last}")
        self._last = t
        return t

    def _apply_unlock(self, unlock: Unlock | None) -> None:
        if unlock is None or unlock.blocks.size == 0:
            return
        self._dirty.update(self.ledger.unlock_to(unlock.blocks, unlock.fractions).tolist())

    def _refresh_next_unlock(self, now: float) -> None:
        self._next_unlock = self.policy.unlocker.next_time(now, self.ledger)

    def next_wakeup(self) -> float | None:
        """The next time at which something happens without a new event (a timed unlock or an expiry)."""
        times = []
        if self._next_unlock is not None:
            times.append(self._next_unlock)
        while self._deadlines and self._deadlines[0][1] not in self.queue:
            heapq.heappop(self._deadlines)
        if self._deadlines:
            times.append(self._deadlines[0][0])
        if self._leases:
            times.append(self._leases[0][0])
        return min(times) if times else None

    # ----- blocks -----------------------------------------------------------------------------------------
    def add_block(self, block: Block) -> None:
        """Add a block (fully locked, then unlocked as the policy says at creation)."""
        now = self._now()
        idx = self.ledger.add_block(block)
        frac = self.policy.unlocker.on_block(idx, block.created, self.ledger)
        if frac > 0:
            self._apply_unlock(Unlock(np.array([idx], dtype=np.int64), np.array([frac])))
        # Keep a timed unlock that is already due (a block created exactly at a tick must not skip that tick).
        nxt = self.policy.unlocker.next_time(now, self.ledger)
        if self._next_unlock is None or (nxt is not None and nxt < self._next_unlock):
            self._next_unlock = nxt

    def retire_block(self, block_id: str) -> None:
        """Retire a block; claims waiting on it are rejected at the next step."""
        self.ledger.retire(block_id)
        self._dirty.add(self.ledger.block_index(block_id))

    # ----- claims -----------------------------------------------------------------------------------------
    def submit(self, claim: Claim) -> str:
        """Submit a claim; its arrival is stamped with the clock's time. Returns the claim id.

        A claim whose demand exceeds what its blocks could ever provide (capacity minus what is consumed) is
        rejected at once ("never"); any other claim waits for a pass.
        """
        if not isinstance(claim, Claim):
            raise InvalidParameterError(f"submit takes a Claim, got {type(claim).__name__}")
        now = self._now()
        if claim.arrival != now:
            claim = replace(claim, arrival=now)
        idx, demand = self.ledger.add_claim(claim)
        q = self._queued(claim, idx, demand)
        self._apply_unlock(self.policy.unlocker.on_arrival(q, self.ledger))
        possible = self.possible(idx, demand)
        if not bool(possible.all()):
            bad = claim.blocks[int(np.argmin(possible))]
            self.ledger.reject(claim.id, now, f"demand exceeds what block {bad} can ever provide")
            return claim.id
        self.queue.add(q)
        self._handles[claim.id] = q.handle
        self._arrivals.append(q)
        if math.isfinite(q.deadline):
            heapq.heappush(self._deadlines, (q.deadline, q.handle))
        return claim.id

    # ----- adopting state written elsewhere (the HTTP service's scheduler loop) --------------------------
    def adopt_block(self, block_id: str) -> None:
        """Take over a block that is already in the ledger (created by another process or an earlier loop).

        Applies the unlocker's creation rule (:meth:`Unlocker.on_block`) as :meth:`add_block` does. Unlocks only
        ever raise a block's fraction, so adopting a block twice, or one that was unlocked before, is harmless.
        """
        idx = self.ledger.block_index(block_id)
        now = self._now()
        frac = self.policy.unlocker.on_block(idx, float(self.ledger.created[idx]), self.ledger)
        if frac > 0:
            self._apply_unlock(Unlock(np.array([idx], dtype=np.int64), np.array([frac])))
        self._dirty.add(idx)
        nxt = self.policy.unlocker.next_time(now, self.ledger)
        if self._next_unlock is None or (nxt is not None and nxt < self._next_unlock):
            self._next_unlock = nxt

    def _queued(self, claim: Claim, idx: np.ndarray[Any, Any], demand: np.ndarray[Any, Any]) -> QueuedClaim:
        handle = self._seq
        self._seq += 1
        cap = self.ledger.capacity[idx]
        return QueuedClaim(
            handle=handle,
            id=claim.id,
            arrival=claim.arrival,
            seq=handle,
            deadline=claim.deadline,
            weight=claim.weight,
            owner=claim.owner,
            idx=idx,
            demand=demand,
            shares=share_key(self.ledger.composition.shares(demand, cap)),
        )

    def _rows(self, claim: Claim) -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
        idx = np.array([self.ledger.block_index(b) for b in claim.blocks], dtype=np.int64)
        row = self.ledger.composition.row
        return idx, np.stack([row(claim.demand[b]) for b in claim.blocks])

    def replay_arrival(self, record: ClaimRecord) -> None:
        """Apply the unlocker's arrival rule for a claim already in the ledger, whatever its state.

        A new scheduler loop replays every claim ever submitted, in submission order, so that an arrival-driven
        unlocker (DPF-N counts arrivals per block) is rebuilt; unlocks only raise fractions, so what was
        already unlocked stays as it is.
        """
        idx, demand = self._rows(record.claim)
        q = self._queued(record.claim, idx, demand)
        self._apply_unlock(self.policy.unlocker.on_arrival(q, self.ledger))

    def adopt(self, record: ClaimRecord, *, arrival_unlock: bool = True) -> bool:
        """Enqueue a claim that is already in the ledger (submitted elsewhere) with its original arrival.

        ``arrival_unlock`` applies the unlocker's arrival rule first, as :meth:`submit` does (pass ``False``
        when :meth:`replay_arrival` already counted it). A claim whose demand its blocks can never provide is
        rejected as in :meth:`submit`. Its deadline counts from its original arrival. Returns True when the
        claim now waits in the queue, False when it was already there or was rejected as impossible; a claim
        that is not waiting raises :class:`~dpf_sched.errors.InvalidStateError`.
        """
        claim = record.claim
        if claim.id in self._handles:
            return False
        state = self.ledger.state(claim.id)
        if state is not ClaimState.WAITING:
            raise InvalidStateError(f"claim {claim.id} is {state.value}: only a waiting claim can be adopted")
        now = self._now()
        idx, demand = self._rows(claim)
        q = self._queued(claim, idx, demand)
        if arrival_unlock:
            self._apply_unlock(self.policy.unlocker.on_arrival(q, self.ledger))
        possible = self.possible(idx, demand)
        if not bool(possible.all()):
            bad = claim.blocks[int(np.argmin(possible))]
            self.ledger.reject(claim.id, now, f"demand exceeds what block {bad} can ever provide")
            return False
        self.queue.add(q)
        self._handles[claim.id] = q.handle
        self._arrivals.append(q)
        if math.isfinite(q.deadline):
            heapq.heappush(self._deadlines, (q.deadline, q.handle))
        return True

    def possible(self, idx: IntArray, demand: FloatArray) -> BoolArray:
        """Per block of a claim (rows ``idx``, ``demand``): could its demand there ever be provided?

        False rows make :meth:`submit` and :meth:`adopt` reject the claim at once ("never") instead of queueing
        it. Here: within capacity − consumed (consumption never decreases). The HTTP service's leader narrows
        this to the capacity alone (docs/service.md, what a tenant may learn), so that the answer does not
        depend on what others consumed.
        """
        return self.ledger.composition.possible(demand, self.ledger.consumed[idx], self.ledger.capacity[idx])
    def adopt_lease(self, claim_id: str) -> bool:
        """Watch the lease of a claim granted elsewhere (by an earlier scheduler loop on the same ledger).

        A new leader calls it for every granted claim when it takes over: the lease length and deadline
        (renewals included) are in the ledger, so leases survive a change of leader. Returns True when the
        claim is granted with a lease and is now watched.
        """
        if self.ledger.state(claim_id) is not ClaimState.GRANTED:
            return False
        deadline = self.ledger.lease_deadline(claim_id)
        if deadline is None:
            return False
        heapq.heappush(self._leases, (deadline, claim_id))
        return True

    def renew(self, claim_id: str) -> float:
        """Renew a granted claim's lease: its deadline becomes now + lease. Returns the new deadline.

        ``inf`` for a granted claim without a lease. An expired claim raises
        :class:`~dpf_sched.errors.LeaseExpiredError`, any other claim that is not granted
        :class:`~dpf_sched.errors.InvalidStateError`. A claim whose deadline passed but that no pass has expired
        yet is still granted, and the renewal keeps it.
        """
        return self.ledger.renew(claim_id, self._now())

    def drop(self, claim_id: str) -> bool:
        """Forget a waiting claim that left the waiting state elsewhere (withdrawn or rejected by another
        process); the ledger is not written. Returns True when it was in the queue."""
        handle = self._handles.pop(claim_id, None)
        if handle is None:
            return False
        if handle in self.queue:
            self.queue.remove(handle)
        self.policy.forget(handle)
        return True

    def mark_dirty(self, block_ids: Sequence[str]) -> None:
        """Blocks that gained unlocked budget outside this scheduler (a release or unlock written elsewhere):
        the next pass re-examines the claims waiting on them."""
        self._dirty.update(self.ledger.block_index(b) for b in block_ids)

    def waiting_ids(self) -> list[str]:
        """Ids of the claims in the queue."""
        return list(self._handles)

    def submit_request(
        self,
        claim_id: str,
        selector: BlockSelector,
        demand: Budget,
        **claim_fields: Any,
    ) -> str:
        """Submit a claim for ``demand`` on every block the ``selector`` picks among the current blocks."""
        blocks = selector.select(self.ledger.blocks())
        return self.submit(Claim.uniform(claim_id, blocks, demand, **claim_fields))

    def consume(self, claim_id: str, amounts: Mapping[str, Budget] | None = None) -> None:
        """Spend part of a grant (``amounts`` per block) or all of it (``None``, which finishes the claim)."""
        self.ledger.consume(claim_id, amounts, self._now())

    def withdraw(self, claim_id: str, reason: str = "withdrawn") -> None:
        """Withdraw a waiting claim (its owner gave up waiting): it is rejected now and can never be granted.

        Only a waiting claim can be withdrawn; a granted one is released instead (:meth:`release`).
        Raises :class:`~dpf_sched.errors.UnknownClaimError` or :class:`~dpf_sched.errors.InvalidStateError`.
        """
        state = self.ledger.state(claim_id)
        handle = self._handles.get(claim_id)
        if state is not ClaimState.WAITING or handle is None:
            raise InvalidStateError(
                f"claim {claim_id} is {state.value}, not waiting: only a waiting claim can be withdrawn"
            )
        self.ledger.reject(claim_id, self._now(), reason)
        self.queue.remove(handle)
        self.policy.forget(handle)
        del self._handles[claim_id]

    def release(self, claim_id: str) -> None:
        """Return the unspent rest of a grant to the unlocked pool and finish the claim."""
        record = self.ledger.claim(claim_id)
        self.ledger.release(claim_id, self._now())
        if any(not b.is_zero() for b in record.remaining.values()):
            self._dirty.update(self.ledger.block_index(b) for b in record.claim.blocks)

    def status(self, claim_id: str) -> ClaimRecord:
        """A snapshot of a claim (state, grant time, what remains and what was consumed)."""
        return self.ledger.claim(claim_id)

    # ----- passes -----------------------------------------------------------------------------------------
    def _expire_leases(self, now: float) -> list[str]:
        """Expire the granted claims whose lease deadline is ≤ ``now``; their ids.

        A due entry is checked against the ledger first: a claim that finished or expired is forgotten, one that
        was renewed (by this process or, on a SQL ledger, any other) goes back into the heap at its new deadline.
        """
        out: list[str] = []
        while self._leases and self._leases[0][0] <= now:
            _, cid = heapq.heappop(self._leases)
            if self.ledger.state(cid) is not ClaimState.GRANTED:
                continue
            deadline = self.ledger.lease_deadline(cid)
            if deadline is None:
                continue
            if deadline > now:
                heapq.heappush(self._leases, (deadline, cid))
                continue
            try:
                self.ledger.expire(cid, now)
            except InvalidStateError:
                # Renewed, released or finished elsewhere between the check and the expiry's transaction.
                if self.ledger.state(cid) is ClaimState.GRANTED:
                    again = self.ledger.lease_deadline(cid)
                    if again is not None and again > now:
                        heapq.heappush(self._leases, (again, cid))
                continue
            except BaseException:
                heapq.heappush(self._leases, (deadline, cid))  # a storage failure: the lease is still watched
                raise
            record_blocks = self.ledger.claim(cid).claim.blocks
            self._dirty.update(self.ledger.block_index(b) for b in record_blocks)
            logger.info("claim %s expired: its lease lapsed at %s", cid, deadline)
            out.append(cid)
        return out

    def _expire(self, now: float) -> list[Decision]:
        out = []
        while self._deadlines and self._deadlines[0][0] <= now:
            _, h = heapq.heappop(self._deadlines)
            if h in self.queue:
                out.append(Decision(h, Verdict.REJECT, "timeout"))
        return out

    def _reject_retired(self) -> list[Decision]:
        if not self._dirty:
            return []
        retired = self.ledger.retired_mask
        if not retired.any():
            return []
        out = []
        for b in list(self._dirty):
            if b < retired.shape[0] and retired[b]:
                for h in self.queue.waiting_on(b).tolist():
                    out.append(Decision(h, Verdict.REJECT, "block retired"))
        return out

    def _apply(self, decisions: list[Decision], now: float) -> list[Outcome]:
        out: list[Outcome] = []
        for d in decisions:
            if d.handle not in self.queue:
                continue
            q = self.queue.get(d.handle)
            try:
                if d.verdict is Verdict.GRANT:
                    self.ledger.allocate(q.id, now)
                    lease_deadline = self.ledger.lease_deadline(q.id)
                    if lease_deadline is not None:
                        heapq.heappush(self._leases, (lease_deadline, q.id))
                elif d.verdict is Verdict.REJECT:
                    self.ledger.reject(q.id, now, d.reason or "rejected by policy")
                else:
                    continue
            except (InvalidStateError, InsufficientBudgetError, UnknownBlockError) as e:
                if not self._refused(q, d, e):
                    raise
                continue
            self.queue.remove(d.handle)
            self._handles.pop(q.id, None)
            self.policy.forget(d.handle)
            out.append(Outcome(q.id, d.verdict, d.reason))
        return out

    def _refused(self, q: QueuedClaim, d: Decision, error: DpfSchedError) -> bool:
        """The ledger refused decision ``d`` on claim ``q`` (nothing was written). Return True to carry on with
        the pass's other decisions, False to raise ``error``.

        Here every refusal raises: with one scheduler per ledger a refusal is a bug. A scheduler that shares
        its ledger with other writers (the service's loop) overrides this.
        """
        return False

    def _forget(self, q: QueuedClaim) -> None:
        """Take a claim out of the queue without writing anything (it left the waiting state elsewhere)."""
        if q.handle in self.queue:
            self.queue.remove(q.handle)
        self._handles.pop(q.id, None)
        self.policy.forget(q.handle)

    def step(self) -> list[Outcome]:
        """One instant at the clock's time: due unlocks, lapsed leases, expiries, then one pass. Returns the
        decisions applied (grants and rejections; expired leases are logged and show in the claims' states)."""
        now = self._now()
        if self._next_unlock is not None and self._next_unlock <= now:
            self._apply_unlock(self.policy.unlocker.at_time(now, self.ledger))
            self._refresh_next_unlock(now)
        if self._leases and self._leases[0][0] <= now:
            self._expire_leases(now)
        applied = self._apply(self._expire(now) + self._reject_retired(), now)
        if self._dirty or self._arrivals:
            ctx = PassContext(
                now=now,
                ledger=self.ledger,
                queue=self.queue,
                dirty=np.array(sorted(self._dirty), dtype=np.int64),
                arrivals=self._arrivals,
            )
            decisions = self.policy.schedule(ctx)
            self._dirty = set()
            self._arrivals = []
            applied.extend(self._apply(decisions, now))
        return applied

    def states(self) -> dict[str, ClaimState]:
        """Every claim's state, by id."""
        return {cid: self.ledger.state(cid) for cid in self.ledger.claim_ids()}
