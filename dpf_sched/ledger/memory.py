"""In-memory ledger on dense numpy arrays (blocks × columns); the simulator's backend.

Per block it keeps capacity and the four buckets locked / unlocked / allocated / consumed as rows of float64
arrays that grow by doubling. Per claim it keeps the validated demand rows, what remains of the grant, and what
was consumed. Every operation validates first and writes after, so a refused operation changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, TypeVar, cast

import numpy as np
from numpy.typing import NDArray

from dpf_sched.block import Block, check_time
from dpf_sched.budget import Budget
from dpf_sched.claim import Claim
from dpf_sched.composition import REL_TOL, BasicComposition, Composition, check_capacity
from dpf_sched.errors import (
    DuplicateIdError,
    InsufficientBudgetError,
    InvalidBudgetError,
    InvalidParameterError,
    InvalidStateError,
    LeaseExpiredError,
    OverConsumptionError,
    UnknownBlockError,
    UnknownClaimError,
)
from dpf_sched.ledger.base import (
    BlockBudgets,
    ClaimRecord,
    ClaimState,
    ClaimStatus,
    FloatArray,
    IntArray,
    InvariantViolation,
    Ledger,
    request_fingerprint,
)

_Fingerprint = tuple[str, str, tuple[tuple[str, bytes], ...] | None]


@dataclass
class _ClaimEntry:
    """Mutable per-claim bookkeeping, private to the ledger."""

    claim: Claim
    idx: IntArray
    demand: FloatArray
    remaining: FloatArray
    consumed: FloatArray
    #: Σ of the amounts the caller's consumptions reported, before clipping (what bounds the rounding slack
    #: over the whole grant). Not stored in the SQL tables: the journal's replay rebuilds it.
    reported: FloatArray
    #: What the blocks' buckets hold for this claim: the remainder and the consumption *saturated* at
    #: ``_SATURATION × capacity`` per order (docs/ledger.md, "Saturation"). Equal to ``remaining`` and
    #: ``consumed`` wherever those stay within it, which is always under basic composition.
    booked_remaining: FloatArray
    booked_consumed: FloatArray
    #: The grant as booked at allocation (the demand, or what was unlocked when the demand exceeded it by less
    #: than the tolerance); zero before the grant.
    granted: FloatArray
    state: ClaimState = ClaimState.WAITING
    granted_at: float | None = None
    decided_at: float | None = None
    reason: str | None = None
    lease_deadline: float | None = None


def _check_row(rows: FloatArray, what: str, composition: Composition) -> None:
    """Budget rows reaching the ledger must be finite and ≥ 0, and a basic row's δ below 1, whatever built them
    (defence in depth: an ``EpsDelta`` forged past its validation must not reach the buckets, defect D2)."""
    if not np.isfinite(rows).all() or (rows < 0).any():
        raise InvalidBudgetError(f"{what} holds a negative or non-finite value: {np.asarray(rows).tolist()}")
    if isinstance(composition, BasicComposition) and (np.asarray(rows)[..., 1] >= 1.0).any():
        raise InvalidBudgetError(f"{what} holds a δ ≥ 1: {np.asarray(rows).tolist()}")


#: Rounding slack, relative to the demand, at columns of zero capacity: a few dozen ulps, enough for the
#: rounding of a handful of partial consumptions adding back up to the demand, and nothing more.
_ZERO_CAP_SLACK = 32 * float(np.finfo(np.float64).eps)


def _claim_tolerance(cap: FloatArray, demand: FloatArray) -> FloatArray:
    """Rounding slack of a claim's total consumption: ``REL_TOL × capacity`` per column, and at columns of zero
    capacity (unusable Rényi orders, which still carry the demand) a few ulps of the demand."""
    return np.asarray(np.where(cap > 0, cap * REL_TOL, demand * _ZERO_CAP_SLACK), dtype=np.float64)


#: A claim's booking at an order is capped at this multiple of the block's capacity there (docs/ledger.md,
#: "Saturation"): any amount above 1 × capacity makes an order dead whatever it is, so booking more changes no
#: decision, while booking huge values would make the buckets' rounding scale with the demand (defect D1).
_SATURATION = 2.0


def _saturation(cap: FloatArray) -> FloatArray:
    """Per column, the most a claim books in a block's buckets: ``_SATURATION × capacity``."""
    return np.asarray(cap * _SATURATION, dtype=np.float64)


_A = TypeVar("_A", bound=NDArray[Any])


def _frozen(a: _A) -> _A:
    """An immutable copy of ``a``: an array over a ``bytes`` object.

    A view of a writable array (or a copy that owns its memory) can be made writable again by anyone holding it
    (``v.flags.writeable = True``), and writes through a view reach the ledger's own state. An array whose memory
    is a ``bytes`` object cannot: numpy refuses the WRITEABLE flag because the buffer itself is read-only, and
    there is no writable array behind it to reach through ``.base``. So what the ledger hands out can never
    change what it checks (DESIGN.md, invariant 7).
    """
    return cast(_A, np.frombuffer(np.ascontiguousarray(a).tobytes(), dtype=a.dtype).reshape(a.shape))


class MemoryLedger(Ledger):
    """Numpy ledger. ``composition`` fixes the columns (basic (ε, δ) or one per α order)."""

    def __init__(self, composition: Composition, initial_blocks: int = 64) -> None:
        self.composition = composition
        k = composition.width
        cap = max(1, int(initial_blocks))
        self._n = 0
        self._cap = np.zeros((cap, k))
        self._locked = np.zeros((cap, k))
        self._unlocked = np.zeros((cap, k))
        self._allocated = np.zeros((cap, k))
        self._consumed = np.zeros((cap, k))
        self._fraction = np.zeros(cap)
        self._created = np.zeros(cap)
        self._retired = np.zeros(cap, dtype=bool)
        self._retired_ids: set[int] = set()
        self._zeros: dict[tuple[int, ...], FloatArray] = {}  # shared read-only zero rows of each shape
        self._blocks: list[Block] = []
        self._block_index: dict[str, int] = {}
        self._claims: dict[str, _ClaimEntry] = {}
        self._views: dict[str, NDArray[np.generic]] = {}  # immutable copies handed out, dropped when stale
        self._requests: dict[str, _Fingerprint] = {}  # applied request ids (idempotent consume / release)

    def _view(self, name: str) -> NDArray[np.generic]:
        """The immutable copy of the first n rows of ``_<name>`` that the read-only properties return.

        Built on first use after a change (an operation drops the copies of the arrays it wrote), so a policy
        pass that reads an array many times copies it once. The ledger's checks read only its private arrays,
        which nothing outside this class can reach through the public interface.
        """
        v = self._views.get(name)
        if v is None:
            v = self._views[name] = _frozen(getattr(self, f"_{name}")[: self._n])
        return v

    def _changed(self, *names: str) -> None:
        """Drop the published copies of the arrays an operation wrote (all of them when none is named)."""
        if not names:
            self._views.clear()
            return
        for name in names:
            self._views.pop(name, None)

    # ----- growth -------------------------------------------------------------------------------------------
    def _grow(self) -> None:
        new = 2 * self._cap.shape[0]
        for name in ("_cap", "_locked", "_unlocked", "_allocated", "_consumed"):
            old = getattr(self, name)
            arr = np.zeros((new, old.shape[1]))
            arr[: self._n] = old[: self._n]
            setattr(self, name, arr)
        for name in ("_fraction", "_created", "_retired"):
            old = getattr(self, name)
            arr1 = np.zeros(new, dtype=old.dtype)
            arr1[: self._n] = old[: self._n]
            setattr(self, name, arr1)

    # ----- blocks -------------------------------------------------------------------------------------------
    def add_block(self, block: Block) -> int:
        if not isinstance(block, Block):
            raise InvalidParameterError(f"add_block takes a Block, got {type(block).__name__}")
        if block.id in self._block_index:
            raise DuplicateIdError(f"block {block.id} already exists")
        row = self.composition.row(block.capacity)
        _check_row(row, f"block {block.id}: capacity", self.composition)
        check_capacity(self.composition, row, f"block {block.id}")
        if self._n == self._cap.shape[0]:
            self._grow()
        i = self._n
        self._cap[i] = row
        self._locked[i] = row
        self._created[i] = block.created
        self._blocks.append(block)
        self._block_index[block.id] = i
        self._n += 1
        self._changed()
        return i

    def unlock_to(self, block_indices: Sequence[int] | IntArray, fractions: Sequence[float] | FloatArray) -> IntArray:
        raw = np.asarray(block_indices)
        if raw.size and raw.dtype.kind not in "iu":
            raise InvalidParameterError(f"unlock block indices must be integers, got {block_indices!r}")
        idx = raw.astype(np.int64, copy=False).reshape(-1)
        try:
            f = np.asarray(fractions, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise InvalidParameterError(f"unlock fractions must be numbers, got {fractions!r}") from None
        if f.shape[0] == 1 and idx.shape[0] != 1:
            f = np.full(idx.shape[0], f[0])
        if idx.shape != f.shape:
            raise InvalidParameterError(f"{idx.shape[0]} blocks but {f.shape[0]} unlock fractions")
        if idx.size == 0:
            return idx
        # Validation on Python scalars: these arrays are short (a claim's blocks), where numpy calls cost more.
        ids = idx.tolist()
        n = self._n
        if min(ids) < 0 or max(ids) >= n:
            bad = [i for i in ids if not 0 <= i < n]
            raise UnknownBlockError(f"unlock names block index {bad[0]}, outside 0..{n - 1}")
        fl = f.tolist()
        if not all(0.0 <= x < math.inf for x in fl):  # also refuses NaN
            raise InvalidParameterError(f"unlock fractions must be finite and ≥ 0, got {fl}")
        if len(set(ids)) != len(ids):
            raise InvalidParameterError("unlock names a block twice")
        old = self._fraction[idx]
        target = np.minimum(f, 1.0)
        grow = target > old
        if not grow.all():
            idx, target = idx[grow], target[grow]
            if idx.size == 0:
                return idx
        locked = self._locked[idx]
        # Locked budget is (1 − fraction) × capacity, exactly 0 once fully unlocked; never more than before.
        new_locked = self._cap[idx] * (1.0 - target)[:, None]
        np.minimum(new_locked, locked, out=new_locked)
        if target.max() >= 1.0:
            new_locked[target >= 1.0] = 0.0
        self._changed("locked", "unlocked", "fraction")
        self._unlocked[idx] += locked - new_locked
        self._locked[idx] = new_locked
        self._fraction[idx] = target
        return _frozen(idx)

    def retire(self, block_id: str) -> None:
        i = self.block_index(block_id)
        self._changed("retired")
        self._retired[i] = True
        self._retired_ids.add(i)

    def block(self, block_id: str) -> Block:
        return self._blocks[self.block_index(block_id)]

    def blocks(self) -> Iterator[Block]:
        return iter(list(self._blocks))

    def block_index(self, block_id: str) -> int:
        try:
            return self._block_index[block_id]
        except (KeyError, TypeError):
            raise UnknownBlockError(f"unknown block {block_id!r}") from None

    def budgets(self, block_id: str) -> BlockBudgets:
        i = self.block_index(block_id)
        v = self.composition.value
        return BlockBudgets(
            block=self._blocks[i],
            capacity=v(self._cap[i]),
            locked=v(self._locked[i]),
            unlocked=v(self._unlocked[i]),
            allocated=v(self._allocated[i]),
            consumed=v(self._consumed[i]),
            unlocked_fraction=float(self._fraction[i]),
            retired=bool(self._retired[i]),
        )

    # ----- read-only arrays ---------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return self._n

    @property
    def capacity(self) -> FloatArray:
        return self._view("cap")  # type: ignore[return-value]

    @property
    def locked(self) -> FloatArray:
        """(n_blocks, width) locked budget, read-only."""
        return self._view("locked")  # type: ignore[return-value]

    @property
    def unlocked(self) -> FloatArray:
        return self._view("unlocked")  # type: ignore[return-value]

    @property
    def allocated(self) -> FloatArray:
        """(n_blocks, width) allocated budget, read-only."""
        return self._view("allocated")  # type: ignore[return-value]

    @property
    def consumed(self) -> FloatArray:
        return self._view("consumed")  # type: ignore[return-value]

    @property
    def unlocked_fraction(self) -> FloatArray:
        return self._view("fraction")  # type: ignore[return-value]

    @property
    def created(self) -> FloatArray:
        return self._view("created")  # type: ignore[return-value]

    @property
    def retired_mask(self) -> NDArray[np.bool_]:
        return self._view("retired")  # type: ignore[return-value]

    # ----- claims -------------------------------------------------------------------------------------------
    def _entry(self, claim_id: str) -> _ClaimEntry:
        try:
            return self._claims[claim_id]
        except (KeyError, TypeError):
            raise UnknownClaimError(f"unknown claim {claim_id!r}") from None

    def add_claim(self, claim: Claim) -> tuple[IntArray, FloatArray]:
        if not isinstance(claim, Claim):
            raise InvalidParameterError(f"add_claim takes a Claim, got {type(claim).__name__}")
        if claim.id in self._claims:
            raise DuplicateIdError(f"claim {claim.id} already exists")
        index = self._block_index
        try:
            idx = np.array([index[b] for b in claim.blocks], dtype=np.int64)
        except KeyError:
            missing = [b for b in claim.blocks if b not in index]
            raise UnknownBlockError(f"claim {claim.id} asks for unknown blocks {missing}") from None
        if self._retired_ids and not self._retired_ids.isdisjoint(idx.tolist()):
            retired = [claim.blocks[k] for k in np.flatnonzero(self._retired[idx])]
            raise InvalidStateError(f"claim {claim.id} asks for retired blocks {retired}")
        rows: dict[int, FloatArray] = {}  # a uniform claim repeats one budget object: convert it once
        row = self.composition.row
        demand = np.array(
            [rows.get(id(v)) if id(v) in rows else rows.setdefault(id(v), row(v)) for v in claim.demand.values()]
        )
        _check_row(demand, f"claim {claim.id}: demand", self.composition)
        # Both are returned to the caller and kept as the claim's own rows: immutable, so the caller cannot
        # change what a later allocate moves or where.
        idx, demand = _frozen(idx), _frozen(demand)
        self._claims[claim.id] = _ClaimEntry(
            claim=claim,
            idx=idx,
            demand=demand,
            remaining=self._zero(demand.shape),
            consumed=self._zero(demand.shape),
            reported=self._zero(demand.shape),
            booked_remaining=self._zero(demand.shape),
            booked_consumed=self._zero(demand.shape),
            granted=self._zero(demand.shape),
        )
        return idx, demand

    def _zero(self, shape: tuple[int, ...]) -> FloatArray:
        """A shared read-only zero array (bookkeeping arrays are replaced, never written in place)."""
        z = self._zeros.get(shape)
        if z is None:
            z = self._zeros[shape] = _frozen(np.zeros(shape))
        return z

    def allocate(self, claim_id: str, now: float) -> None:
        e = self._entry(claim_id)
        now = check_time("time", now)
        if e.state is not ClaimState.WAITING:
            raise InvalidStateError(f"claim {claim_id} is {e.state.value}; only a waiting claim can be granted")
        idx = e.idx
        if self._retired_ids and not self._retired_ids.isdisjoint(idx.tolist()):
            raise InvalidStateError(f"claim {claim_id} asks for a retired block")
        unlocked = self._unlocked[idx]
        ok = self.composition.fits(e.demand, unlocked, self._cap[idx])
        if not ok.all():
            bad = e.claim.blocks[int(np.argmin(ok))]
            raise InsufficientBudgetError(f"claim {claim_id} does not fit in the unlocked budget of block {bad}")
        grant = e.demand
        over = grant > unlocked
        if over.any():
            # Clip, don't overshoot (docs/ledger.md, "The tolerance"): where the demand is over the unlocked
            # budget by no more than the tolerance, the grant is exactly what is unlocked, so the grant never
            # takes the block past its capacity. (Where it is over by more, a Rényi order that does not fit,
            # the whole demand is set aside there as spec/dpf.md says; the claim fits at another order.)
            clip = over & (unlocked >= 0) & (grant <= unlocked + self.composition.tolerance(self._cap[idx]))
            grant = np.where(clip, unlocked, grant)
        # The blocks book the grant saturated at 2 × capacity (docs/ledger.md, "Saturation"): a Rényi order where
        # the demand is far above the capacity is dead either way, and booking the full demand there would make
        # the buckets' rounding scale with the demand and create or lose budget (defect D1).
        booked = np.minimum(grant, _saturation(self._cap[idx]))
        self._changed("unlocked", "allocated")
        self._unlocked[idx] -= booked
        self._allocated[idx] += booked
        e.remaining = grant.copy()
        e.granted = grant.copy()
        e.booked_remaining = booked
        e.booked_consumed = self._zero(booked.shape)
        e.state = ClaimState.GRANTED
        e.granted_at = e.decided_at = now
        if e.claim.lease is not None:
            e.lease_deadline = now + e.claim.lease

    def reject(self, claim_id: str, now: float, reason: str) -> None:
        e = self._entry(claim_id)
        now = check_time("time", now)
        if e.state is not ClaimState.WAITING:
            raise InvalidStateError(f"claim {claim_id} is {e.state.value}; only a waiting claim can be rejected")
        e.state = ClaimState.REJECTED
        e.decided_at = now
        e.reason = str(reason)

    def _require_granted(self, e: _ClaimEntry, op: str) -> None:
        if e.state is ClaimState.EXPIRED:
            raise LeaseExpiredError(
                f"claim {e.claim.id} expired (its lease lapsed at {e.lease_deadline}); cannot {op}"
            )
        if e.state is ClaimState.FINISHED:
            raise InvalidStateError(f"claim {e.claim.id} is finished; cannot {op} again")
        if e.state is not ClaimState.GRANTED:
            raise InvalidStateError(f"claim {e.claim.id} is {e.state.value}; only a granted claim can {op}")

    # ----- idempotent requests ------------------------------------------------------------------------------
    def _fingerprint(self, op: str, claim_id: str, amounts: Mapping[str, Budget] | None) -> _Fingerprint:
        rows = None if amounts is None else {b: self.composition.row(v) for b, v in amounts.items()}
        return request_fingerprint(op, claim_id, rows)

    def _already_applied(
        self, request_id: str | None, op: str, claim_id: str, amounts: Mapping[str, Budget] | None
    ) -> bool:
        """True when ``request_id`` was applied before with the same request (a retry: do nothing again)."""
        if request_id is None:
            return False
        if not isinstance(request_id, str) or not request_id:
            raise InvalidParameterError(f"request id must be a non-empty string, got {request_id!r}")
        seen = self._requests.get(request_id)
        if seen is None:
            return False
        if seen != self._fingerprint(op, claim_id, amounts):
            raise InvalidParameterError(f"request id {request_id!r} was already used for a different request")
        return True

    def has_request(self, request_id: str) -> bool:
        """True when a consume or release with this request id has been applied."""
        return request_id in self._requests

    def consume(
        self,
        claim_id: str,
        amounts: Mapping[str, Budget] | None = None,
        now: float = 0.0,
        *,
        request_id: str | None = None,
    ) -> None:
        if self._already_applied(request_id, "consume", claim_id, amounts):
            return
        self._consume(claim_id, amounts, now)
        if request_id is not None:
            self._requests[request_id] = self._fingerprint("consume", claim_id, amounts)

    def _consume(self, claim_id: str, amounts: Mapping[str, Budget] | None, now: float) -> None:
        e = self._entry(claim_id)
        check_time("time", now)
        self._require_granted(e, "consume")
        idx = e.idx
        if amounts is None:  # spend the whole rest of the grant: nothing to validate
            self._changed("allocated", "consumed")
            self._allocated[idx] -= e.booked_remaining
            self._consumed[idx] += e.booked_remaining
            e.booked_consumed = e.booked_consumed + e.booked_remaining
            e.booked_remaining = self._zero(e.remaining.shape)
            e.consumed = np.minimum(e.consumed + e.remaining, e.demand)
            e.reported = e.reported + e.remaining
            e.remaining = self._zero(e.remaining.shape)
            e.state = ClaimState.FINISHED
            return
        else:
            if not isinstance(amounts, Mapping) or not amounts:
                raise InvalidParameterError(f"consume amounts must map block ids to budgets, got {amounts!r}")
            pos = {b: k for k, b in enumerate(e.claim.blocks)}
            amt = np.zeros_like(e.remaining)
            for b, budget in amounts.items():
                if b not in pos:
                    raise UnknownBlockError(f"claim {claim_id} holds no grant on block {b!r}")
                amt[pos[b]] = self.composition.row(budget)
        _check_row(amt, f"claim {claim_id}: consumption", self.composition)
        # A consumption may exceed what remains of the grant by rounding only: at most the tolerance over the
        # rest and over the whole grant (the sum of what the caller reported, not per call); beyond that it is
        # refused. Within it, the ledger books exactly the rest (clip, don't overshoot: docs/ledger.md), so
        # neither the claim's consumption nor the block's ever exceeds the grant or the capacity.
        # The tolerance is scaled by capacity and demand: at Rényi orders of zero capacity a demand is still
        # carried, and its pieces must add back up to it despite rounding.
        tol = _claim_tolerance(self._cap[idx], e.demand)
        over = (amt > e.remaining + tol) | (e.reported + amt > e.demand + tol)
        if over.any():
            k, col = np.argwhere(over)[0]
            raise OverConsumptionError(
                f"claim {claim_id} consumes {amt[k, col]:.12g} on block {e.claim.blocks[k]} (column {col}) "
                f"but only {e.remaining[k, col]:.12g} of its grant remains"
            )
        # Where the caller's running total stays within the grant as booked, its amount is booked as given, so a
        # job that charges the differences of its own running totals ends with exactly that total on the ledger
        # (bit for bit: docs/opacus.md); the rest of the grant, accumulated by subtraction, may then be an ulp
        # short, and it is floored at zero rather than booked below it. Elsewhere (within the tolerance) the rest
        # is booked.
        within = e.reported + amt <= e.granted
        booked = np.where(within, amt, np.minimum(amt, e.remaining))
        remaining = np.maximum(e.remaining - booked, 0.0)
        consumed = np.minimum(e.consumed + booked, e.demand)
        # What moves in the blocks' buckets (docs/ledger.md, "Saturation"): exactly ``booked`` while the claim's
        # consumption stays below the saturation and was not saturated before; otherwise what takes the booked
        # consumption to min(consumed, saturation); all that is booked once nothing of the grant remains.
        sat = _saturation(self._cap[idx])
        exact = (consumed < sat) & (e.booked_consumed == e.consumed)
        move = np.where(exact, booked, np.minimum(consumed, sat) - e.booked_consumed)
        move = np.maximum(move, 0.0)
        # Out of allocated: never more than is booked there (an ulp of rounding goes to consumed, erring toward
        # privacy), and all of it once nothing of the grant remains.
        take = np.minimum(move, e.booked_remaining)
        take = np.where(remaining <= 0, e.booked_remaining, take)
        self._changed("allocated", "consumed")
        self._allocated[idx] -= take
        self._consumed[idx] += move
        e.booked_remaining = e.booked_remaining - take
        e.booked_consumed = e.booked_consumed + move
        e.remaining = remaining
        e.consumed = consumed
        e.reported = e.reported + amt

    def release(self, claim_id: str, now: float = 0.0, *, request_id: str | None = None) -> None:
        if self._already_applied(request_id, "release", claim_id, None):
            return
        e = self._entry(claim_id)
        check_time("time", now)
        self._require_granted(e, "release")
        self._return_rest(e, ClaimState.FINISHED)
        if request_id is not None:
            self._requests[request_id] = ("release", claim_id, None)

    def _return_rest(self, e: _ClaimEntry, state: ClaimState) -> None:
        """End a granted claim in ``state`` (finished or expired): what is booked of its unspent rest goes back to
        the unlocked pool; what it consumed stays consumed."""
        idx = e.idx
        self._changed("allocated", "unlocked")
        self._allocated[idx] -= e.booked_remaining
        self._unlocked[idx] += e.booked_remaining
        e.booked_remaining = e.remaining = self._zero(e.remaining.shape)
        e.state = state

    # ----- leases ------------------------------------------------------------------------------------------
    def renew(self, claim_id: str, now: float) -> float:
        e = self._entry(claim_id)
        now = check_time("time", now)
        self._require_granted(e, "renew")
        lease = e.claim.lease
        if lease is None:
            return math.inf
        assert e.lease_deadline is not None
        # Never earlier than it was: a renewal stamped by a host whose clock lags must not shorten the lease.
        e.lease_deadline = max(e.lease_deadline, now + lease)
        return e.lease_deadline

    def lease_deadline(self, claim_id: str) -> float | None:
        return self._entry(claim_id).lease_deadline

    def expire(self, claim_id: str, now: float, *, deadline: float | None = None) -> None:
        """As :meth:`Ledger.expire`. ``deadline`` is the deadline that lapsed as a durable ledger stored it (the
        SQL ledger keeps renewals outside its journal, and journals the deadline with the expiry): it must be
        finite, no earlier than the deadline this ledger knows (grant time + lease, or its last renewal), and
        ≤ ``now``."""
        e = self._entry(claim_id)
        now = check_time("time", now)
        self._require_granted(e, "expire")
        if e.claim.lease is None or e.lease_deadline is None:
            raise InvalidStateError(f"claim {claim_id} has no lease; it cannot expire")
        d = e.lease_deadline
        if deadline is not None:
            given = check_time("lease deadline", deadline)
            if given < d:
                raise InvalidStateError(
                    f"claim {claim_id}: expiry deadline {given} is earlier than its lease allows ({d})"
                )
            d = given
        if now < d:
            raise InvalidStateError(f"claim {claim_id}: its lease runs until {d}, not expired at {now}")
        self._return_rest(e, ClaimState.EXPIRED)
        e.lease_deadline = d
        e.reason = "lease expired"

    def state(self, claim_id: str) -> ClaimState:
        return self._entry(claim_id).state

    def status(self, claim_id: str) -> ClaimStatus:
        e = self._entry(claim_id)
        return ClaimStatus(e.state, e.granted_at, e.decided_at, e.reason)

    def claim(self, claim_id: str) -> ClaimRecord:
        e = self._entry(claim_id)
        v = self.composition.value
        return ClaimRecord(
            claim=e.claim,
            state=e.state,
            granted_at=e.granted_at,
            decided_at=e.decided_at,
            reason=e.reason,
            remaining=MappingProxyType({b: v(e.remaining[k]) for k, b in enumerate(e.claim.blocks)}),
            consumed=MappingProxyType({b: v(e.consumed[k]) for k, b in enumerate(e.claim.blocks)}),
            lease_deadline=e.lease_deadline,
        )

    def claim_ids(self) -> Iterator[str]:
        return iter(list(self._claims))

    # ----- audit -------------------------------------------------------------------------------------------
    def violations(self) -> list[InvariantViolation]:
        n = self._n
        out: list[InvariantViolation] = []
        if n == 0:
            return out
        cap = self._cap[:n]
        L, U, A, C = self._locked[:n], self._unlocked[:n], self._allocated[:n], self._consumed[:n]
        names = [b.id for b in self._blocks]
        # Claim-level bookkeeping, summed per block: what granted claims still hold, what they consumed, and
        # the demand that ever flowed through each block.
        alloc = np.zeros_like(A)
        cons = np.zeros_like(C)
        through = np.zeros_like(C)
        for cid, e in self._claims.items():
            if e.state in (ClaimState.WAITING, ClaimState.REJECTED):
                if e.remaining.any() or e.consumed.any():
                    out.append(InvariantViolation(3, f"claim {cid}", "holds budget without a grant"))
                continue
            if e.state in (ClaimState.FINISHED, ClaimState.EXPIRED) and e.remaining.any():
                out.append(InvariantViolation(4, f"claim {cid}", f"{e.state.value} but still holds budget"))
            # The blocks hold the claims' booked (saturated) amounts, so those are what must add up.
            np.add.at(alloc, e.idx, e.booked_remaining)
            np.add.at(cons, e.idx, e.booked_consumed)
            np.add.at(through, e.idx, e.booked_remaining + e.booked_consumed)
            if (e.booked_remaining + e.booked_consumed > _saturation(cap[e.idx]) * (1 + 1e-12)).any():
                out.append(InvariantViolation(3, f"claim {cid}", "books more than 2 × capacity"))
            if (e.consumed > e.demand + _claim_tolerance(cap[e.idx], e.demand)).any():
                out.append(InvariantViolation(4, f"claim {cid}", "consumed more than granted"))
        # Rounding error scales with the magnitudes summed (unusable Rényi orders have capacity 0 but carry
        # demands), so the audit's tolerance does too; it is far below any budget that matters.
        tol = 1e-9 * (cap + np.abs(L) + np.abs(U) + np.abs(A) + np.abs(C) + through) + 1e-300
        bad = np.abs(L + U + A + C - cap) > tol
        for i in np.flatnonzero(bad.any(axis=1)):
            out.append(InvariantViolation(1, f"block {names[i]}", "locked+unlocked+allocated+consumed ≠ capacity"))
        for name, arr in (("locked", L), ("allocated", A), ("consumed", C)):
            for i in np.flatnonzero((arr < -tol).any(axis=1)):
                out.append(InvariantViolation(1, f"block {names[i]}", f"{name} is negative"))
        within = self.composition.within(A + C, cap)
        for i in np.flatnonzero(~within):
            out.append(InvariantViolation(2, f"block {names[i]}", "allocated+consumed exceeds the capacity"))
        for i in np.flatnonzero((np.abs(alloc - A) > tol).any(axis=1)):
            out.append(InvariantViolation(3, f"block {names[i]}", "allocated ≠ sum of granted claims' remainders"))
        for i in np.flatnonzero((np.abs(cons - C) > tol).any(axis=1)):
            out.append(InvariantViolation(4, f"block {names[i]}", "consumed ≠ sum of claims' consumption"))
        # Element by element: a sum over blocks could overflow where every value is finite.
        for i in np.flatnonzero(~np.isfinite(U).all(axis=1)):
            out.append(InvariantViolation(1, f"block {names[i]}", "non-finite unlocked budget"))
        return out
