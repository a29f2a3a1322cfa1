"""The ledger interface: operations, claim states, snapshots and the invariant check.

Every operation either applies completely or raises a typed error and changes nothing (invariant 5). The
operations and the buckets they move budget between::

    unlock_to   locked    → unlocked        (per block, a cumulative fraction of the capacity)
    allocate    unlocked  → allocated       (one claim, atomically on all of its blocks)
    consume     allocated → consumed        (part or all of a grant)
    release     allocated → unlocked        (what a finished claim did not consume)
    expire      allocated → unlocked        (what a claim whose lease lapsed did not consume)
    reject      a waiting claim leaves without budget
    retire      a block stops serving new claims and grants
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
from numpy.typing import NDArray

from dpf_sched.block import Block
from dpf_sched.budget import Budget
from dpf_sched.claim import Claim
from dpf_sched.composition import Composition

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]


class ClaimState(StrEnum):
    """Life cycle of a claim: WAITING → GRANTED → FINISHED | EXPIRED, or WAITING → REJECTED.

    EXPIRED: the claim's lease lapsed without a renewal and a scheduler pass returned its unconsumed remainder
    to the unlocked pool (what it consumed stays consumed).
    """

    WAITING = "waiting"
    GRANTED = "granted"
    REJECTED = "rejected"
    FINISHED = "finished"
    EXPIRED = "expired"

    @property
    def was_granted(self) -> bool:
        """True for claims that received their grant (whether or not they have finished or expired)."""
        return self in (ClaimState.GRANTED, ClaimState.FINISHED, ClaimState.EXPIRED)


@dataclass(frozen=True)
class BlockBudgets:
    """A snapshot of one block's four buckets (they sum to ``capacity``)."""

    block: Block
    capacity: Budget
    locked: Budget
    unlocked: Budget
    allocated: Budget
    consumed: Budget
    unlocked_fraction: float
    retired: bool


@dataclass(frozen=True)
class ClaimRecord:
    """A snapshot of one claim as the ledger holds it."""

    claim: Claim
    state: ClaimState
    granted_at: float | None
    decided_at: float | None
    reason: str | None
    remaining: Mapping[str, Budget]
    consumed: Mapping[str, Budget]
    #: When a granted claim with a lease expires unless renewed (``None`` without a lease or before the grant);
    #: for an expired claim, the deadline that lapsed.
    lease_deadline: float | None = None


@dataclass(frozen=True, slots=True)
class ClaimStatus:
    """The light part of a claim's record: state, decision times and reason."""

    state: ClaimState
    granted_at: float | None
    decided_at: float | None
    reason: str | None


def request_fingerprint(
    op: str, claim_id: str, amounts: Mapping[str, FloatArray] | None
) -> tuple[str, str, tuple[tuple[str, bytes], ...] | None]:
    """What identifies an idempotent request: the operation, the claim and the exact amounts (float64 bytes).

    A retry carries the same fingerprint; the same request id with another fingerprint is a client bug.
    """
    if amounts is None:
        return (op, claim_id, None)
    rows = tuple(sorted((b, np.asarray(r, dtype="<f8").tobytes()) for b, r in amounts.items()))
    return (op, claim_id, rows)


@dataclass(frozen=True)
class InvariantViolation:
    """One broken invariant: which (number as in DESIGN.md), where, and what was seen."""

    invariant: int
    where: str
    detail: str

    def __str__(self) -> str:
        return f"invariant {self.invariant} at {self.where}: {self.detail}"


class Ledger(ABC):
    """Backend-independent ledger interface. Implementations must keep the invariants of DESIGN.md.

    Blocks are addressed by id in the public operations; the dense index of a block (its row in the arrays
    the read-only view exposes) is stable for the ledger's lifetime. Those arrays, and every array an operation
    returns, are immutable snapshots that no caller can make writable (DESIGN.md, invariant 7): read the property
    again after an operation to see its effect.
    """

    composition: Composition

    # ----- blocks -------------------------------------------------------------------------------------------
    @abstractmethod
    def add_block(self, block: Block) -> int:
        """Add a fully locked block; return its dense index."""

    @abstractmethod
    def unlock_to(self, block_indices: Sequence[int] | IntArray, fractions: Sequence[float] | FloatArray) -> IntArray:
        """Raise each block's cumulative unlocked fraction to ``fraction`` (capped at 1, never lowered).

        Returns the indices of the blocks whose unlocked fraction grew (their unlocked budget grew with it,
        by however little).
        """

    @abstractmethod
    def retire(self, block_id: str) -> None:
        """Stop a block from taking new claims or grants; its buckets stay as they are."""

    @abstractmethod
    def block(self, block_id: str) -> Block:
        """The block value stored under ``block_id``."""

    @abstractmethod
    def blocks(self) -> Iterator[Block]:
        """All blocks in index order."""

    @abstractmethod
    def block_index(self, block_id: str) -> int:
        """Dense index of a block; :class:`UnknownBlockError` if absent."""

    @abstractmethod
    def budgets(self, block_id: str) -> BlockBudgets:
        """A snapshot of one block's buckets."""

    # ----- read-only arrays (the policies' view) ----------------------------------------------------------
    @property
    @abstractmethod
    def n_blocks(self) -> int:
        """Number of blocks."""

    @property
    @abstractmethod
    def capacity(self) -> FloatArray:
        """(n_blocks, width) capacities, read-only."""

    @property
    @abstractmethod
    def locked(self) -> FloatArray:
        """(n_blocks, width) locked budget, read-only."""

    @property
    @abstractmethod
    def unlocked(self) -> FloatArray:
        """(n_blocks, width) unlocked budget, read-only."""

    @property
    @abstractmethod
    def allocated(self) -> FloatArray:
        """(n_blocks, width) allocated budget, read-only."""

    @property
    @abstractmethod
    def consumed(self) -> FloatArray:
        """(n_blocks, width) consumed budget, read-only."""

    @property
    @abstractmethod
    def unlocked_fraction(self) -> FloatArray:
        """(n_blocks,) cumulative fraction of each capacity ever unlocked, read-only."""

    @property
    @abstractmethod
    def created(self) -> FloatArray:
        """(n_blocks,) block creation times, read-only."""

    @property
    @abstractmethod
    def retired_mask(self) -> NDArray[np.bool_]:
        """(n_blocks,) True for retired blocks, read-only."""

    # ----- claims -------------------------------------------------------------------------------------------
    @abstractmethod
    def add_claim(self, claim: Claim) -> tuple[IntArray, FloatArray]:
        """Register a waiting claim; return its block indices and demand rows (validated)."""

    @abstractmethod
    def allocate(self, claim_id: str, now: float) -> None:
        """Grant a waiting claim its whole demand on every block at once, or raise and change nothing."""

    @abstractmethod
    def reject(self, claim_id: str, now: float, reason: str) -> None:
        """Close a waiting claim without budget."""

    @abstractmethod
    def consume(
        self,
        claim_id: str,
        amounts: Mapping[str, Budget] | None = None,
        now: float = 0.0,
        *,
        request_id: str | None = None,
    ) -> None:
        """Spend part (``amounts`` per block) or all (``None``, which also finishes the claim) of a grant.

        ``request_id`` (client-chosen, unique per request) makes a retry safe: a request id the ledger has
        already applied returns without a second effect; reusing it for a different request raises
        :class:`~dpf_sched.errors.InvalidParameterError`.
        """

    @abstractmethod
    def release(self, claim_id: str, now: float = 0.0, *, request_id: str | None = None) -> None:
        """Return the unconsumed rest of a grant to the unlocked pool and finish the claim.

        ``request_id`` makes a retry safe, as for :meth:`consume`.
        """

    @abstractmethod
    def renew(self, claim_id: str, now: float) -> float:
        """Move a granted claim's lease deadline to ``now + lease`` (never earlier than it was); the new deadline.

        A granted claim without a lease returns ``inf`` (it never expires). An expired claim raises
        :class:`~dpf_sched.errors.LeaseExpiredError`, any other non-granted one
        :class:`~dpf_sched.errors.InvalidStateError`. A renewal moves no budget.
        """

    @abstractmethod
    def lease_deadline(self, claim_id: str) -> float | None:
        """The claim's current lease deadline (renewals included), ``None`` without a lease or before a grant."""

    @abstractmethod
    def expire(self, claim_id: str, now: float) -> None:
        """End a granted claim whose lease deadline is ≤ ``now``: its unconsumed remainder returns to the unlocked
        pool and it becomes EXPIRED. A claim without a lease, or whose deadline is still ahead (it was renewed),
        raises :class:`~dpf_sched.errors.InvalidStateError` and changes nothing."""

    @abstractmethod
    def state(self, claim_id: str) -> ClaimState:
        """The claim's state."""

    @abstractmethod
    def status(self, claim_id: str) -> ClaimStatus:
        """State, decision times and reason of a claim (cheaper than :meth:`claim`)."""

    @abstractmethod
    def claim(self, claim_id: str) -> ClaimRecord:
        """A snapshot of the claim."""

    @abstractmethod
    def claim_ids(self) -> Iterator[str]:
        """All claim ids in submission order."""

    # ----- audit -------------------------------------------------------------------------------------------
    @abstractmethod
    def violations(self) -> list[InvariantViolation]:
        """Every broken invariant (empty when the ledger is sound)."""
