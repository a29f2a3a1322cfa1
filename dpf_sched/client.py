"""A Python client of the budget service (``dpf-sched serve``): the scheduler's API over HTTP, with core values.

:class:`ServiceClient` speaks the v1 API of ``docs/service.md`` and implements the
:class:`~dpf_sched.integrations.opacus.client.BudgetClient` protocol, so a training job can use a remote service
exactly as it uses an in-process scheduler. Every value that crosses it is a core value: a :class:`Claim` goes
in, a :class:`ClaimRecord` comes back, budgets are :class:`EpsDelta` or :class:`RenyiCurve` on the ledger's own
:class:`AlphaGrid` (fetched once from ``GET /v1/ledger``), blocks are :class:`BlockBudgets` snapshots.

Why the retries are safe
    A network can lose a reply after the server applied the request. Every mutating call therefore carries an
    idempotency key that is fixed once per *logical* call and reused by each of its retries: a claim is created
    under its own id (the server answers a repeat of the same body with the existing claim), and consume and
    release send a ``request_id`` (the server applies a repeated one once and answers as the first time). So a
    call may be retried on connection errors, timeouts and 502/503/504 without charging twice or creating a
    duplicate claim.

Errors
    HTTP errors become the library's typed errors, with the server's ``detail`` in the message: 404 →
    :class:`UnknownClaimError` (or :class:`UnknownBlockError` on block paths), 409 → :class:`InvalidStateError`
    (:class:`DuplicateIdError` when creating a claim or block; :class:`LeaseExpiredError` when the server's code is
    ``lease_expired``: the claim's lease lapsed and it expired), 422 and 413 → :class:`InvalidParameterError`,
    401/403 → :class:`ServiceAuthError`, retries exhausted → :class:`ServiceUnavailableError`, anything else →
    :class:`ServiceError`.

This module needs ``httpx`` (the ``service`` extra); nothing in the core imports it.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType, TracebackType
from typing import Any, NoReturn
from urllib.parse import quote

import numpy as np

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, Budget, Conversion, EpsDelta, RenyiCurve, budget_json
from dpf_sched.claim import Claim
from dpf_sched.errors import (
    AlphaGridMismatchError,
    CompositionMismatchError,
    DuplicateIdError,
    InvalidParameterError,
    InvalidStateError,
    LeaseExpiredError,
    ServiceAuthError,
    ServiceError,
    ServiceUnavailableError,
    UnknownBlockError,
    UnknownClaimError,
)
from dpf_sched.extras import requires_extra
from dpf_sched.ledger.base import BlockBudgets, ClaimRecord, ClaimState
from dpf_sched.selector import BlockSelector

with requires_extra("service"):  # without httpx: MissingExtraError with the pip command, not a traceback
    import httpx

__all__ = ["LedgerInfo", "ServiceAudit", "ServiceClient"]

logger = logging.getLogger(__name__)

#: Statuses that mean "try again later": a proxy or the server could not answer now.
RETRY_STATUSES = frozenset({502, 503, 504})
#: Longest long poll the server grants in one request (``GET /v1/claims/{id}/wait``, docs/service.md).
MAX_POLL = 60.0
#: Claim states the server may report for a finished claim (the ledger's ``finished``, or how it ended).
_FINISHED_NAMES = frozenset({"finished", "consumed", "released"})


@dataclass(frozen=True)
class LedgerInfo:
    """What ``GET /v1/ledger`` says about the service's ledger: its composition and, if Rényi, grid."""

    composition: str
    grid: AlphaGrid | None = None
    conversion: str | None = None


@dataclass(frozen=True)
class ServiceAudit:
    """The service's ledger audit (``GET /v1/ledger/audit``): whether it passed, and every discrepancy."""

    ok: bool
    problems: tuple[str, ...]
    violations: tuple[str, ...]
    raw: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}), compare=False)


@dataclass(frozen=True)
class _Reply:
    """One HTTP answer after retries, and how many attempts it took (> 1: an earlier reply may have been lost)."""

    status: int
    body: Any
    attempts: int


def _positive(name: str, value: float, *, zero_ok: bool = False) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(v) or v < 0 or (v == 0 and not zero_ok):
        raise InvalidParameterError(
            f"{name} must be {'non-negative' if zero_ok else 'positive'} and finite, got {value!r}"
        )
    return v


class ServiceClient:
    """A synchronous client of the budget service, implementing the ``BudgetClient`` protocol.

    Parameters
    ----------
    base_url
        The service's root, e.g. ``http://budget.internal:8080``.
    token
        A bearer token (``dpf-sched tokens create``); it names the tenant, whose claims this client sees.
    timeout
        Seconds each request may take (connect, read, write), beyond the long-poll time of :meth:`wait`.
    retries
        How many times a failed request (connection error, timeout, 502/503/504) is tried again before
        :class:`ServiceUnavailableError`; 0 disables retries.
    backoff
        The first pause between tries, doubled after each (with jitter, capped at ``max_backoff``); a
        ``Retry-After`` header, if smaller than the cap, is honoured instead.
    max_backoff
        The longest pause between two tries.
    transport
        An httpx transport to use instead of the network (tests inject faults or a fake server with it).
    sleep
        The pause function (tests replace it to check the backoff without waiting).

    The client is safe to share between threads (httpx's pool is). Close it, or use it as a context manager.
    """

    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        timeout: float = 30.0,
        retries: int = 5,
        backoff: float = 0.1,
        max_backoff: float = 5.0,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not isinstance(base_url, str) or not base_url:
            raise InvalidParameterError(f"base_url must be a non-empty URL, got {base_url!r}")
        if not isinstance(token, str) or not token or any(c.isspace() for c in token):
            raise InvalidParameterError("token must be a non-empty string without whitespace")
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise InvalidParameterError(f"retries must be a non-negative integer, got {retries!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = _positive("timeout", timeout)
        self.retries = retries
        self.backoff = _positive("backoff", backoff, zero_ok=True)
        self.max_backoff = _positive("max_backoff", max_backoff, zero_ok=True)
        self._sleep = sleep
        self._http = httpx.Client(
            base_url=self.base_url,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=self.timeout,
            transport=transport,
        )
        self._info: LedgerInfo | None = None
        #: How many times a request was tried again so far (a statistic; approximate under threads).
        self.retried = 0

    # ----- lifetime ------------------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> ServiceClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServiceClient({self.base_url!r})"

    # ----- transport, retries and errors ---------------------------------------------------------------------
    def _pause(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before try ``attempt + 1``: exponential with jitter, or the server's Retry-After."""
        cap = self.max_backoff
        if retry_after is not None and math.isfinite(retry_after) and retry_after >= 0:
            return min(retry_after, cap)
        base = min(cap, self.backoff * (2.0**attempt))
        return base * random.uniform(0.5, 1.0)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        read_timeout: float | None = None,
        not_found: type[Exception] = UnknownClaimError,
        conflict: type[Exception] = InvalidStateError,
    ) -> _Reply:
        """Send one logical request, retrying transport failures and 502/503/504; the decoded reply or an error.

        The request (body included) is the same on every try: callers put their idempotency keys in it first.
        """
        timeout = self.timeout if read_timeout is None else read_timeout + self.timeout
        last = "no attempt made"
        last_response: httpx.Response | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                self.retried += 1
                pause = self._pause(attempt - 1, None if last_response is None else _retry_after(last_response))
                logger.debug("%s %s: %s; retry %d/%d in %.3f s", method, path, last, attempt, self.retries, pause)
                if pause > 0:
                    self._sleep(pause)
            last_response = None
            try:
                response = self._http.request(method, path, json=json, params=params, timeout=timeout)
            except httpx.TransportError as exc:  # connect/read/write errors and timeouts, protocol errors
                last = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
                continue
            if response.status_code in RETRY_STATUSES:
                last_response = response
                last = f"HTTP {response.status_code} ({_detail(response)})"
                continue
            if response.status_code >= 400:
                _raise_for(method, path, response, not_found=not_found, conflict=conflict)
            body = response.json() if response.content else None
            return _Reply(response.status_code, body, attempt + 1)
        raise ServiceUnavailableError(
            f"{method} {self.base_url}{path}: the service did not answer after {self.retries + 1} tries; last: {last}",
            status=last_response.status_code if last_response is not None else None,
            detail=last,
        )

    # ----- the ledger ----------------------------------------------------------------------------------------
    def ledger(self) -> LedgerInfo:
        """The ledger's composition and α grid (fetched once, then cached: they never change)."""
        if self._info is None:
            body = self._request("GET", "/v1/ledger").body
            comp = body.get("composition")
            if comp == "renyi":
                self._info = LedgerInfo("renyi", AlphaGrid(tuple(body["alphas"])), body.get("conversion"))
            elif comp == "basic":
                self._info = LedgerInfo("basic")
            else:
                raise ServiceError(f"GET /v1/ledger: unknown composition {comp!r}")
        return self._info

    def alpha_grid(self) -> AlphaGrid:
        """The ledger's α grid; :class:`CompositionMismatchError` on a basic-composition ledger."""
        grid = self.ledger().grid
        if grid is None:
            raise CompositionMismatchError("the service's ledger uses basic composition: it has no α grid")
        return grid

    def ready(self) -> bool:
        """True when the service answers ``/readyz`` with 200 (its ledger answers); no retries."""
        try:
            return self._http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    # ----- claims ------------------------------------------------------------------------------------------
    def select_blocks(self, selector: BlockSelector) -> tuple[str, ...]:
        """The ids of the blocks ``selector`` picks now (resolved by the server)."""
        body = self._request(
            "POST", "/v1/blocks/select", json={"selector": selector_json(selector)}, not_found=UnknownBlockError
        ).body
        return tuple(str(b) for b in body["blocks"])

    def submit(self, claim: Claim, *, label: str | None = None) -> str:
        """Submit ``claim`` under its own id; returns the id.

        The claim's demand, weight, timeout and lease are sent (its arrival is the server's clock, its owner the
        token's tenant; without a lease of its own it gets the server's default lease, 300 s unless
        configured). Resubmitting the same claim returns the existing one, which is what makes a retry safe; the same
        id with another demand raises :class:`DuplicateIdError`.
        """
        return self.submit_record(claim, label=label).claim.id

    def submit_record(self, claim: Claim, *, label: str | None = None) -> ClaimRecord:
        """As :meth:`submit`, returning the claim's record as the server created it (waiting or rejected)."""
        if not isinstance(claim, Claim):
            raise InvalidParameterError(f"submit takes a Claim, got {type(claim).__name__}")
        body: dict[str, Any] = {
            "id": claim.id,
            "demands": {b: self._budget_out(v) for b, v in claim.demand.items()},
            "weight": claim.weight,
        }
        if claim.timeout is not None:
            body["timeout"] = claim.timeout
        if claim.lease is not None:
            body["lease"] = claim.lease
        if label is not None:
            body["label"] = label
        reply = self._request("POST", "/v1/claims", json=body, conflict=DuplicateIdError)
        return self._record(reply.body)

    def status(self, claim_id: str) -> ClaimRecord:
        """The claim's record now."""
        return self._record(self._request("GET", f"/v1/claims/{_seg(claim_id)}").body)

    def claims(self) -> list[ClaimRecord]:
        """Every claim of this client's tenant."""
        body = self._request("GET", "/v1/claims").body
        return [self._record(c) for c in body["claims"]]

    def wait(self, claim_id: str, timeout: float) -> ClaimRecord:
        """Wait up to ``timeout`` seconds until the claim is no longer waiting; its record either way.

        Long polls ``GET /v1/claims/{id}/wait`` (at most 60 s per request, so longer waits loop); the server
        answers as soon as the claim is decided, so no time is lost to polling intervals.
        """
        t = _positive("timeout", timeout, zero_ok=True)
        path = f"/v1/claims/{_seg(claim_id)}"
        deadline = time.monotonic() + t
        record = self._record(self._request("GET", path).body) if t == 0 else None
        while record is None or record.state is ClaimState.WAITING:
            left = deadline - time.monotonic()
            if left <= 0 and record is not None:
                break
            poll = min(max(left, 0.0), MAX_POLL)
            reply = self._request("GET", f"{path}/wait", params={"timeout": f"{poll:.3f}"}, read_timeout=poll)
            record = self._record(reply.body)
        return record

    def consume(
        self, claim_id: str, amounts: Mapping[str, Budget] | None = None, *, request_id: str | None = None
    ) -> None:
        """Spend ``amounts`` (per block) of the claim's grant, or all of it (``None``, which finishes the claim).

        Applied exactly once however often the request is retried: it carries ``request_id`` (a fresh one per
        call unless given).
        """
        self.consume_record(claim_id, amounts, request_id=request_id)

    def consume_record(
        self, claim_id: str, amounts: Mapping[str, Budget] | None = None, *, request_id: str | None = None
    ) -> ClaimRecord:
        """As :meth:`consume`, returning the claim's record after the consumption (the server's reply)."""
        body: dict[str, Any] = {"request_id": _request_id(request_id)}
        if amounts is not None:
            if not isinstance(amounts, Mapping) or not amounts:
                raise InvalidParameterError(f"amounts must be a non-empty mapping block → budget, got {amounts!r}")
            body["amounts"] = {str(b): self._budget_out(v) for b, v in amounts.items()}
        reply = self._request("POST", f"/v1/claims/{_seg(claim_id)}/consume", json=body)
        return self._record(reply.body)

    def release(self, claim_id: str, *, request_id: str | None = None) -> None:
        """Return the unspent rest of the grant and finish the claim (applied once, as :meth:`consume`)."""
        self.release_record(claim_id, request_id=request_id)

    def release_record(self, claim_id: str, *, request_id: str | None = None) -> ClaimRecord:
        """As :meth:`release`, returning the finished claim's record."""
        body = {"request_id": _request_id(request_id)}
        return self._record(self._request("POST", f"/v1/claims/{_seg(claim_id)}/release", json=body).body)

    def renew(self, claim_id: str) -> float:
        """Renew the lease of a granted claim; the new deadline (server wall-clock seconds; ``inf`` without a lease).

        Raises :class:`LeaseExpiredError` when the lease already lapsed and the claim expired, and
        :class:`InvalidStateError` for another claim that is not granted. A renewal is idempotent in effect
        (each one moves the deadline to now + lease), so retries are safe.
        """
        deadline = self.renew_record(claim_id).lease_deadline
        return math.inf if deadline is None else deadline

    def renew_record(self, claim_id: str) -> ClaimRecord:
        """As :meth:`renew`, returning the claim's record after the renewal."""
        return self._record(self._request("POST", f"/v1/claims/{_seg(claim_id)}/renew", json={}).body)

    def withdraw(self, claim_id: str) -> ClaimRecord:
        """Withdraw a waiting claim (it becomes rejected, reason ``withdrawn``); its record.

        A claim that is no longer waiting raises :class:`InvalidStateError`, except one that is already withdrawn:
        its record is returned, so that a retry whose first try withdrew the claim (and lost the reply) succeeds.
        """
        path = f"/v1/claims/{_seg(claim_id)}"
        try:
            return self._record(self._request("POST", f"{path}/withdraw", json={}).body)
        except InvalidStateError:
            record = self.status(claim_id)
            if record.state is ClaimState.REJECTED and record.reason == "withdrawn":
                return record
            raise

    # ----- administration (admin token) ----------------------------------------------------------------------
    def add_block(self, block: Block) -> BlockBudgets:
        """Create ``block`` (fully locked, as the ledger adds every block); its budgets. Admin only.

        A Rényi block whose capacity is its (ε, δ) guarantee converted as the ledger converts is sent as that
        guarantee, so the server keeps it; any other capacity is sent as it is. A retry after a lost reply that
        meets the block already created (409) returns it if it is the same block.
        """
        if not isinstance(block, Block):
            raise InvalidParameterError(f"add_block takes a Block, got {type(block).__name__}")
        body: dict[str, Any] = {"id": block.id, "budget": self._capacity_out(block)}
        if block.attributes:
            body["attributes"] = dict(block.attributes)
        try:
            reply = self._request(
                "POST", "/v1/blocks", json=body, not_found=UnknownBlockError, conflict=DuplicateIdError
            )
        except DuplicateIdError:
            existing = self.block(block.id)
            if existing.capacity == block.capacity and dict(existing.block.attributes) == dict(block.attributes):
                return existing  # what an earlier, lost try created
            raise
        return self._block(reply.body)

    def blocks(self) -> list[BlockBudgets]:
        """Every block with its budgets. Admin only."""
        body = self._request("GET", "/v1/blocks", not_found=UnknownBlockError).body
        return [self._block(b) for b in body["blocks"]]

    def block(self, block_id: str) -> BlockBudgets:
        """One block with its budgets; :class:`UnknownBlockError` if absent. Admin only."""
        return self._block(self._request("GET", f"/v1/blocks/{_seg(block_id)}", not_found=UnknownBlockError).body)

    def audit(self) -> ServiceAudit:
        """The ledger's audit (journal replay and invariants). Admin only."""
        body = self._request("GET", "/v1/ledger/audit").body
        return ServiceAudit(
            ok=bool(body.get("ok")),
            problems=tuple(str(p) for p in body.get("problems", ())),
            violations=tuple(str(v) for v in body.get("violations", ())),
            raw=MappingProxyType(dict(body)),
        )

    # ----- values in and out ---------------------------------------------------------------------------------
    def _budget_out(self, value: Budget) -> dict[str, Any]:
        info = self.ledger()
        if isinstance(value, RenyiCurve):
            if info.grid is None:
                raise CompositionMismatchError("the service's ledger uses basic composition; got a Rényi curve")
            if value.grid != info.grid:
                raise AlphaGridMismatchError(
                    f"curve is on α grid {value.grid.orders}, the service's ledger grid is {info.grid.orders}"
                )
            return budget_json(value)
        if isinstance(value, EpsDelta):
            if info.grid is not None:
                raise CompositionMismatchError(
                    "the service's ledger uses Rényi composition: demands and amounts must be Rényi curves"
                )
            return budget_json(value)
        raise InvalidParameterError(f"not a budget: {value!r}")

    def _capacity_out(self, block: Block) -> dict[str, Any]:
        info = self.ledger()
        g = block.guarantee
        if isinstance(block.capacity, RenyiCurve) and g is not None and info.grid is not None and info.conversion:
            try:
                same = g.to_renyi(info.grid, Conversion.parse(info.conversion)) == block.capacity
            except (ValueError, InvalidParameterError):
                same = False
            if same:
                return {"epsilon": g.epsilon, "delta": g.delta}
        return self._budget_out(block.capacity)

    def _budget_in(self, obj: Any) -> Budget:
        if not isinstance(obj, Mapping):
            raise ServiceError(f"the service sent a budget that is not an object: {obj!r}")
        if "rdp" in obj:
            grid = self.alpha_grid()
            return RenyiCurve(grid, np.asarray(obj["rdp"], dtype=np.float64))
        return EpsDelta(float(obj["epsilon"]), float(obj.get("delta", 0.0) or 0.0))

    def _record(self, obj: Any) -> ClaimRecord:
        try:
            blocks = [str(b) for b in obj["blocks"]]
            raw_demand = obj["demand"]
            demand = {b: self._budget_in(raw_demand[b]) for b in blocks}
            name = str(obj["state"])
            state = ClaimState.FINISHED if name in _FINISHED_NAMES else ClaimState(name)
            decided = _opt_float(obj.get("decided_at"))
            granted = _opt_float(obj["granted_at"]) if "granted_at" in obj else (decided if state.was_granted else None)
            timeout = _opt_float(obj.get("timeout"))
            lease = _opt_float(obj.get("lease"))
            claim = Claim(
                str(obj["id"]),
                demand,
                arrival=float(obj["arrival"]),
                timeout=timeout if timeout is not None and timeout > 0 else None,
                owner=obj.get("owner"),
                weight=float(obj.get("weight", 1.0)),
                lease=lease,
            )
            lease_deadline = _opt_float(obj.get("lease_deadline"))
            remaining = {str(b): self._budget_in(v) for b, v in (obj.get("remaining") or {}).items()}
            consumed = {str(b): self._budget_in(v) for b, v in (obj.get("consumed") or {}).items()}
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ServiceError):
                raise
            raise ServiceError(f"the service sent a claim this client cannot read ({exc!r}): {obj!r}") from exc
        return ClaimRecord(
            claim=claim,
            state=state,
            granted_at=granted,
            decided_at=decided,
            reason=obj.get("reason"),
            remaining=MappingProxyType(remaining),
            consumed=MappingProxyType(consumed),
            lease_deadline=lease_deadline,
        )

    def _block(self, obj: Any) -> BlockBudgets:
        try:
            capacity = self._budget_in(obj["capacity"])
            guarantee = obj.get("guarantee")
            block = Block(
                str(obj["id"]),
                capacity,
                created=float(obj.get("created", 0.0)),
                attributes=obj.get("attributes") or {},
                guarantee=EpsDelta(float(guarantee["epsilon"]), float(guarantee["delta"])) if guarantee else None,
            )
            locked = self._budget_in(obj["locked"])
            if "unlocked_fraction" in obj:
                fraction = float(obj["unlocked_fraction"])
            else:
                fraction = _unlocked_fraction(capacity, locked)
            return BlockBudgets(
                block=block,
                capacity=capacity,
                locked=locked,
                unlocked=self._budget_in(obj["unlocked"]),
                allocated=self._budget_in(obj["allocated"]),
                consumed=self._budget_in(obj["consumed"]),
                unlocked_fraction=fraction,
                retired=bool(obj.get("retired", False)),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ServiceError(f"the service sent a block this client cannot read ({exc!r}): {obj!r}") from exc


# ----- helpers ---------------------------------------------------------------------------------------------------
def selector_json(selector: BlockSelector) -> dict[str, Any]:
    """The contract's JSON form of a :class:`BlockSelector` (the trace format's field names)."""
    if not isinstance(selector, BlockSelector):
        raise InvalidParameterError(f"expected a BlockSelector, got {type(selector).__name__}")
    out: dict[str, Any] = {}
    if selector.ids is not None:
        out["ids"] = list(selector.ids)
    if selector.attributes:
        out["attributes"] = dict(selector.attributes)
    if selector.created_from is not None:
        out["from"] = selector.created_from
    if selector.created_until is not None:
        out["until"] = selector.created_until
    if selector.latest is not None:
        out["latest"] = selector.latest
    if selector.min_blocks != 1:
        out["min_blocks"] = selector.min_blocks
    return out


def _request_id(given: str | None) -> str:
    if given is None:
        return uuid.uuid4().hex
    if not isinstance(given, str) or not given:
        raise InvalidParameterError(f"request_id must be a non-empty string, got {given!r}")
    return given


def _seg(ident: str) -> str:
    """An id as one URL path segment (``/`` and other reserved characters escaped)."""
    if not isinstance(ident, str) or not ident:
        raise InvalidParameterError(f"id must be a non-empty string, got {ident!r}")
    return quote(ident, safe="")


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _unlocked_fraction(capacity: Budget, locked: Budget) -> float:
    """1 − locked / capacity, read off the largest coordinate (the unlock rule scales every coordinate alike)."""
    if isinstance(capacity, EpsDelta) and isinstance(locked, EpsDelta):
        return 1.0 - locked.epsilon / capacity.epsilon
    if isinstance(capacity, RenyiCurve) and isinstance(locked, RenyiCurve):
        i = int(capacity.values.argmax())
        return 1.0 - float(locked.values[i] / capacity.values[i])
    return math.nan


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200] or response.reason_phrase
    if isinstance(body, Mapping):
        return str(body.get("detail") or body.get("error") or body)
    return str(body)


def _code(response: httpx.Response) -> str | None:
    """The contract's error code of an error reply (``{"error": code, ...}``), if it has one."""
    try:
        body = response.json()
    except ValueError:
        return None
    return str(body.get("error")) if isinstance(body, Mapping) else None


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


def _raise_for(
    method: str,
    path: str,
    response: httpx.Response,
    *,
    not_found: type[Exception],
    conflict: type[Exception],
) -> NoReturn:
    status = response.status_code
    detail = _detail(response)
    message = f"{method} {path}: {detail} (HTTP {status})"
    if status in (401, 403):
        raise ServiceAuthError(message, status, detail)
    if status == 404:
        raise not_found(message)
    if status == 409:
        if _code(response) == "lease_expired":
            raise LeaseExpiredError(message)
        raise conflict(message)
    if status in (413, 422, 400):
        raise InvalidParameterError(message)
    raise ServiceError(message, status, detail)
