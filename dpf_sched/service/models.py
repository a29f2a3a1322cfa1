"""Request and reply bodies of the HTTP API (docs/service.md, "API contract"), and their conversion to and from
the core values.

The pydantic models check shapes and JSON types (strict numbers: ``"0.5"`` or ``true`` is not a number); the
values themselves (finite, non-negative, grid length, positive capacity) are checked by the core constructors
(:class:`~dpf_sched.budget.EpsDelta`, :class:`~dpf_sched.budget.RenyiCurve`, :class:`~dpf_sched.claim.Claim`,
:class:`~dpf_sched.selector.BlockSelector`), whose typed errors the service maps to 422 in one place.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictInt, StrictStr
from pydantic_core import to_json

from dpf_sched.budget import Budget, EpsDelta, RenyiCurve, budget_json
from dpf_sched.composition import Composition, RenyiComposition
from dpf_sched.errors import InvalidBudgetError, InvalidParameterError
from dpf_sched.ledger.base import BlockBudgets, ClaimRecord, ClaimState
from dpf_sched.selector import BlockSelector

Number = Annotated[float, Field(strict=True)]

#: Deepest nesting of a free-form JSON field (block and selector ``attributes``): the object itself is level 1.
MAX_JSON_DEPTH = 32
#: Largest free-form JSON field, as compact UTF-8 JSON (bytes).
MAX_JSON_BYTES = 64 * 1024


def check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    """A free-form JSON object the server can store and serialise back, or ValueError (a 422) saying why.

    Nesting at most :data:`MAX_JSON_DEPTH` levels, at most :data:`MAX_JSON_BYTES` bytes as compact JSON, finite
    numbers only, text that is valid Unicode (no lone surrogates: they cannot be written as UTF-8). Walked
    without recursion, so a hostile depth costs a loop, never a ``RecursionError``; then serialised once by the
    same encoder that writes the replies, so what is accepted is exactly what can be answered later.
    """
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict | list):
            if depth > MAX_JSON_DEPTH:
                raise ValueError(f"nests deeper than {MAX_JSON_DEPTH} levels")
            if isinstance(v, dict):
                for k in v:
                    if not isinstance(k, str):  # pragma: no cover - JSON keys are strings
                        raise ValueError("object keys must be strings")
                    _check_text(k)
                stack.extend((x, depth + 1) for x in v.values())
            else:
                stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, str):
            _check_text(v)
        elif isinstance(v, float):
            if not math.isfinite(v):
                raise ValueError(f"numbers must be finite, got {v}")
        elif not (v is None or isinstance(v, bool | int)):  # pragma: no cover - JSON parses to these types
            raise ValueError(f"not a JSON value: {type(v).__name__}")
    try:
        size = len(to_json(value))
    except ValueError as e:  # pragma: no cover - every case above is refused first
        raise ValueError(f"cannot be serialised: {e}") from None
    if size > MAX_JSON_BYTES:
        raise ValueError(f"is {size} bytes as JSON, more than {MAX_JSON_BYTES}")
    return value


def _check_text(s: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode (no lone surrogates)") from None


#: A free-form JSON object field, bounded by :func:`check_json_object`.
JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_object)]
Ident = Annotated[str, Field(strict=True, min_length=1, max_length=200, pattern=r"^[^/\s\x00-\x1f\x7f]+$")]
RequestId = Annotated[str, Field(strict=True, min_length=1, max_length=200)]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BudgetIn(_Body):
    """A budget: ``{"epsilon": e, "delta"?: d}`` or ``{"rdp": [ε(α₁), …]}`` on the ledger's α grid."""

    epsilon: Number | None = None
    delta: Number | None = None
    rdp: list[Number] | None = Field(default=None, max_length=1024)


class SelectorIn(_Body):
    """A block selector (as in the trace format); every field optional, all must hold."""

    ids: list[StrictStr] | None = Field(default=None, max_length=10000)
    attributes: JsonObject | None = None
    from_: Number | None = Field(default=None, alias="from")
    until: Number | None = None
    latest: StrictInt | None = None
    min_blocks: StrictInt | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class BlockCreate(_Body):
    """``POST /v1/blocks``."""

    id: Ident
    budget: BudgetIn
    attributes: JsonObject | None = None


class SelectRequest(_Body):
    """``POST /v1/blocks/select``."""

    selector: SelectorIn


class ClaimCreate(_Body):
    """``POST /v1/claims``: a uniform ``demand`` on ``blocks`` or a ``selector``, or per-block ``demands``."""

    id: Ident | None = None
    demand: BudgetIn | None = None
    demands: dict[str, BudgetIn] | None = Field(default=None, max_length=10000)
    blocks: list[StrictStr] | None = Field(default=None, max_length=10000)
    selector: SelectorIn | None = None
    weight: Number | None = None
    timeout: Number | None = None
    lease: Number | None = None
    label: Annotated[str, Field(strict=True, max_length=200)] | None = None


class ConsumeRequest(_Body):
    """``POST /v1/claims/{id}/consume``: no ``amounts`` spends the whole grant."""

    request_id: RequestId
    amounts: dict[str, BudgetIn] | None = Field(default=None, max_length=10000)


class ReleaseRequest(_Body):
    """``POST /v1/claims/{id}/release``."""

    request_id: RequestId


class WithdrawRequest(_Body):
    """``POST /v1/claims/{id}/withdraw`` (an empty object)."""


class RenewRequest(_Body):
    """``POST /v1/claims/{id}/renew`` (an empty object; the body may be omitted)."""


class ClaimOut(BaseModel):
    """A claim as its owner sees it."""

    id: str
    state: str
    blocks: list[str]
    demand: dict[str, dict[str, Any]]
    arrival: float
    decided_at: float | None
    granted_at: float | None = None
    reason: str | None
    remaining: dict[str, dict[str, Any]]
    consumed: dict[str, dict[str, Any]]
    weight: float
    label: str | None
    lease: float | None = None
    lease_deadline: float | None = None


class ClaimList(BaseModel):
    """``GET /v1/claims``."""

    claims: list[ClaimOut]


class BlockOut(BaseModel):
    """A block's budgets (admin only)."""

    id: str
    created: float
    capacity: dict[str, Any]
    locked: dict[str, Any]
    unlocked: dict[str, Any]
    allocated: dict[str, Any]
    consumed: dict[str, Any]
    retired: bool
    attributes: dict[str, Any]


class BlockList(BaseModel):
    """``GET /v1/blocks``."""

    blocks: list[BlockOut]


class BlockIds(BaseModel):
    """``POST /v1/blocks/select``."""

    blocks: list[str]


class ErrorOut(BaseModel):
    """Every error reply."""

    error: str
    detail: str


class Health(BaseModel):
    """``GET /healthz``."""

    status: str


class Ready(BaseModel):
    """``GET /readyz``."""

    status: str
    leader: bool


# ----- conversion ---------------------------------------------------------------------------------------------
def budget_value(b: BudgetIn, comp: Composition, what: str, *, capacity: bool = False) -> Budget:
    """The core budget a :class:`BudgetIn` denotes on a ledger of composition ``comp``.

    Basic ledgers take ``epsilon`` (+ ``delta``). Rényi ledgers take ``rdp`` on their grid; a block capacity
    may also be given as an (ε, δ) guarantee (converted as in the core). Raises the core's typed errors.
    """
    if b.rdp is not None:
        if b.epsilon is not None or b.delta is not None:
            raise InvalidBudgetError(f"{what}: give either epsilon/delta or rdp, not both")
        if not isinstance(comp, RenyiComposition):
            raise InvalidBudgetError(f"{what}: an rdp curve needs a Rényi ledger; this ledger is basic: give epsilon")
        if len(b.rdp) != len(comp.grid):
            raise InvalidBudgetError(
                f"{what}: rdp has {len(b.rdp)} values but the ledger's α grid has {len(comp.grid)} orders"
            )
        curve = RenyiCurve(comp.grid, np.asarray(b.rdp, dtype=np.float64))
        if capacity and not bool(np.any(np.asarray(curve.values) > 0)):
            raise InvalidBudgetError(f"{what}: a capacity must be positive at some order")
        return curve
    if b.epsilon is None:
        raise InvalidBudgetError(f"{what}: a budget needs epsilon (and optionally delta) or rdp")
    ed = EpsDelta(b.epsilon, 0.0 if b.delta is None else b.delta)
    if isinstance(comp, RenyiComposition):
        if not capacity:
            raise InvalidBudgetError(f"{what}: this ledger is Rényi: give the demand as an rdp curve")
        if ed.delta <= 0:
            raise InvalidBudgetError(f"{what}: an (ε, δ) capacity on a Rényi ledger needs delta > 0")
        return ed.to_renyi(comp.grid, comp.conversion)
    if capacity and ed.epsilon <= 0:
        raise InvalidBudgetError(f"{what}: capacity epsilon must be positive, got {ed.epsilon}")
    return ed


def selector_value(s: SelectorIn) -> BlockSelector:
    """The core :class:`BlockSelector` of a :class:`SelectorIn` (validated by the core)."""
    for name, v in (("from", s.from_), ("until", s.until)):
        if v is not None and not math.isfinite(v):
            raise InvalidParameterError(f"selector {name} must be finite, got {v}")
    return BlockSelector(
        ids=None if s.ids is None else tuple(s.ids),
        attributes=s.attributes or {},
        created_from=s.from_,
        created_until=s.until,
        latest=s.latest,
        min_blocks=1 if s.min_blocks is None else s.min_blocks,
    )


def public_state(record: ClaimRecord, comp: Composition) -> str:
    """The API's claim state: the ledger's, with a finished claim named by what happened to its grant.

    ``consumed`` when the whole grant was spent, ``released`` when some of it went back to the pool.
    """
    if record.state is not ClaimState.FINISHED:
        return record.state.value
    for b in record.claim.blocks:
        spent = comp.row(record.consumed[b])
        want = comp.row(record.claim.demand[b])
        if bool((spent < want - 1e-9 * np.maximum(want, 1e-300)).any()):
            return "released"
    return "consumed"


def claim_out(public_id: str, record: ClaimRecord, comp: Composition, label: str | None) -> ClaimOut:
    """The :class:`ClaimOut` of a ledger record, under the id its tenant uses."""
    c = record.claim
    return ClaimOut(
        id=public_id,
        state=public_state(record, comp),
        blocks=list(c.blocks),
        demand={b: budget_json(c.demand[b]) for b in c.blocks},
        arrival=c.arrival,
        decided_at=record.decided_at,
        granted_at=record.granted_at,
        reason=record.reason,
        remaining={b: budget_json(v) for b, v in record.remaining.items()},
        consumed={b: budget_json(v) for b, v in record.consumed.items()},
        weight=c.weight,
        label=label,
        lease=c.lease,
        lease_deadline=record.lease_deadline,
    )


def block_out(bb: BlockBudgets) -> BlockOut:
    """The :class:`BlockOut` of a block's snapshot."""
    return BlockOut(
        id=bb.block.id,
        created=bb.block.created,
        capacity=budget_json(bb.capacity),
        locked=budget_json(bb.locked),
        unlocked=budget_json(bb.unlocked),
        allocated=budget_json(bb.allocated),
        consumed=budget_json(bb.consumed),
        retired=bb.retired,
        attributes=dict(bb.block.attributes),
    )


def fingerprint(body: Mapping[str, Any]) -> str:
    """A digest of a request body (canonical JSON), to recognise a retried create."""
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), allow_nan=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()
