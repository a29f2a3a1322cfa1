"""Charge a privacy loss, described as a dp-accounting ``DpEvent`` or a Rényi curve, against a granted claim.

This is the framework-neutral path of the integrations: a job that is not an Opacus job (JAX, TF Privacy, a DP
mean in NumPy) claims budget through any :class:`~dpf_sched.integrations.opacus.client.BudgetClient` (the
in-process ``SchedulerClient`` or the service's ``ServiceClient``), and before it uses the data it charges the
privacy loss of what it is about to release: :func:`charge_event` converts the event to a curve on the ledger's α
grid (:func:`dpf_sched.accounting_events.event_curve`, our own accounting) and consumes it on every block of the
claim (or the ones named). Charge *before* use: a job that dies after the charge has overpaid at most what it
did not release, never the other way round (the claim life cycle of ``DESIGN.md``).

The consumption is one ledger operation over all the blocks: it is applied on every block or on none (a refusal,
e.g. more than the grant's remainder, raises the ledger's typed error and charges nothing). Nothing here imports
torch, opacus or httpx; the ``BudgetClient`` protocol is only named in annotations.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dpf_sched.accounting_events import event_curve
from dpf_sched.budget import AlphaGrid, RenyiCurve
from dpf_sched.errors import AlphaGridMismatchError, InvalidParameterError, InvalidStateError
from dpf_sched.ledger.base import ClaimRecord, ClaimState

if TYPE_CHECKING:  # the protocol's module lives in the opacus package, whose __init__ imports torch
    from dpf_sched.integrations.opacus.client import BudgetClient

__all__ = ["Cost", "charge_curve", "charge_event", "cost_curve"]

logger = logging.getLogger(__name__)

#: A privacy loss to charge: a Rényi curve on the ledger's grid, or a dp-accounting ``DpEvent`` (typed loosely:
#: dp-accounting is an optional extra without type information).
Cost = RenyiCurve | object


def cost_curve(cost: Cost, grid: AlphaGrid) -> RenyiCurve:
    """The Rényi curve of ``cost`` on ``grid``: a :class:`RenyiCurve` as it is (its grid must be ``grid``), a
    ``DpEvent`` converted by our own accounting.

    Raises
    ------
    AlphaGridMismatchError
        A curve on another grid.
    InvalidParameterError
        Neither a curve nor a ``DpEvent`` (or an event with an invalid parameter; its subclass
        :class:`~dpf_sched.accounting_events.UnsupportedDpEventError` for an event type without a curve).
    DpAccountingMissingError
        A value that is not a curve while the ``dp-accounting`` extra is not installed.
    """
    if isinstance(cost, RenyiCurve):
        if cost.grid != grid:
            raise AlphaGridMismatchError(f"the cost's α grid {cost.grid.orders} is not the ledger's {grid.orders}")
        return cost
    return event_curve(cost, grid)


def charged_blocks(record: ClaimRecord, blocks: Sequence[str] | None) -> tuple[str, ...]:
    """The blocks to charge: all of the claim's, or the named ones (each held by the claim, none twice)."""
    held = tuple(record.claim.blocks)
    if blocks is None:
        return held
    if isinstance(blocks, str) or not isinstance(blocks, Sequence):
        raise InvalidParameterError(f"blocks must be a sequence of block ids, got {blocks!r}")
    chosen = tuple(blocks)
    if not chosen:
        raise InvalidParameterError("blocks must name at least one block (None charges every block of the claim)")
    if len(set(chosen)) != len(chosen):
        raise InvalidParameterError(f"blocks names a block twice: {list(chosen)}")
    unknown = [b for b in chosen if b not in held]
    if unknown:
        raise InvalidParameterError(f"claim {record.claim.id} holds no grant on block(s) {unknown}")
    return chosen


def charge_curve(
    client: BudgetClient, claim_id: str, curve: RenyiCurve, blocks: Sequence[str] | None = None
) -> RenyiCurve:
    """Consume ``curve`` on every block of the granted claim ``claim_id`` (or on ``blocks``); returns ``curve``.

    Raises
    ------
    InvalidStateError
        The claim is not granted (waiting, rejected, finished, expired).
    AlphaGridMismatchError
        ``curve`` is not on the ledger's grid.
    InvalidParameterError
        ``blocks`` is empty, repeats a block or names a block the claim does not hold.
    OverConsumptionError
        (in process; over HTTP an :class:`InvalidStateError`, the service's 409) the charge exceeds what remains
        of the grant at some order. Nothing is charged then.
    """
    grid = client.alpha_grid()
    charge = cost_curve(curve, grid)
    record = client.status(claim_id)
    if record.state is not ClaimState.GRANTED:
        raise InvalidStateError(f"claim {claim_id} is {record.state.value}, not granted: nothing can be charged")
    chosen = charged_blocks(record, blocks)
    client.consume(claim_id, dict.fromkeys(chosen, charge))
    logger.info("charged claim %s on %d block(s)", claim_id, len(chosen))
    return charge


def charge_event(client: BudgetClient, claim_id: str, event: object, blocks: Sequence[str] | None = None) -> RenyiCurve:
    """Charge the privacy loss of a dp-accounting ``DpEvent`` against the granted claim ``claim_id``.

    The event becomes a Rényi curve on the ledger's α grid (:func:`~dpf_sched.accounting_events.event_curve`),
    which is consumed on every block of the claim, or on ``blocks``; the curve is returned. Call it *before* the
    data is used or anything derived from it is released.

    Raises the errors of :func:`charge_curve`, and
    :class:`~dpf_sched.accounting_events.UnsupportedDpEventError` (an event type without a curve, named in the
    message), :class:`InvalidParameterError` (not a ``DpEvent``, a parameter out of range) or
    :class:`~dpf_sched.accounting_events.DpAccountingMissingError` (the extra is absent) before anything is
    charged.
    """
    if isinstance(event, RenyiCurve):
        raise InvalidParameterError("charge_event takes a DpEvent; charge a RenyiCurve with charge_curve")
    return charge_curve(client, claim_id, event_curve(event, client.alpha_grid()), blocks)
