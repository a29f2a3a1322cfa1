"""The HTTP application (FastAPI): routes of docs/service.md, authentication, error mapping, limits, logs.

Blocking ledger calls run in the thread pool, under one lock per process around the API's ledger connection
(:class:`SqlLedger` objects are not thread-safe). The scheduling loop has its own connection and thread
(:mod:`dpf_sched.service.leader`). Long polls wait on an :class:`asyncio.Event` that a background task sets
whenever the journal grows (one cheap query per ``wait_poll`` for all waiters), never blocking the event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any, TypeVar

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.clock import WallClock
from dpf_sched.composition import Composition, RenyiComposition
from dpf_sched.errors import (
    AlphaGridMismatchError,
    CompositionMismatchError,
    DpfSchedError,
    DuplicateIdError,
    GrantLeaseError,
    InsufficientBudgetError,
    InvalidBudgetError,
    InvalidParameterError,
    InvalidStateError,
    LeaseExpiredError,
    LedgerStorageError,
    OverConsumptionError,
    StorageTimeoutError,
    UnknownBlockError,
    UnknownClaimError,
)
from dpf_sched.ledger.base import ClaimRecord, ClaimState
from dpf_sched.ledger.sql import SqlLedger, composition_descriptor, open_store
from dpf_sched.ledger.sql.schema import TABLES
from dpf_sched.ledger.sql.stores import Store
from dpf_sched.service.leader import LeaderLoop
from dpf_sched.service.models import (
    MAX_JSON_DEPTH,
    BlockCreate,
    BlockIds,
    BlockList,
    BlockOut,
    ClaimCreate,
    ClaimList,
    ClaimOut,
    ConsumeRequest,
    ErrorOut,
    Health,
    Ready,
    ReleaseRequest,
    RenewRequest,
    SelectRequest,
    WithdrawRequest,
    block_out,
    budget_value,
    claim_out,
    fingerprint,
    selector_value,
)
from dpf_sched.service.tables import ClaimMeta, Principal, ServiceTables, TokenCache, reserve_claim_meta

logger = logging.getLogger(__name__)
access_log = logging.getLogger("dpf_sched.service.access")

T = TypeVar("T")

#: Largest request body accepted (bytes); larger → 413.
MAX_BODY = 1 << 20
#: Longest long poll (seconds) and its default.
MAX_WAIT = 60.0
DEFAULT_WAIT = 30.0
#: Most claim labels remembered (then the memo starts afresh).
_LABEL_CACHE = 100_000
#: Seconds a token found live is trusted without a new lookup: the bound on how late a revocation takes effect.
TOKEN_TTL = 1.0
#: Default lease (seconds) of a claim created through the API (`dpf-sched serve --lease`; docs/service.md).
DEFAULT_LEASE = 300.0


@dataclass(frozen=True)
class ServiceConfig:
    """How one `dpf-sched serve` process runs.

    ``composition`` creates the ledger when the database holds none (``None``: basic); ``run_leader=False``
    serves the API without ever scheduling (tests, read replicas). ``lease`` is the lease of a claim whose
    create request names none (``None``: such claims get no lease).
    """

    db: str
    policy: str = "fcfs"
    params: Mapping[str, Any] = field(default_factory=dict)
    poll: float = 0.05
    lease_retry: float = 0.5
    wait_poll: float = 0.025
    max_body: int = MAX_BODY
    composition: Composition | None = None
    run_leader: bool = True
    token_ttl: float = TOKEN_TTL
    lease: float | None = DEFAULT_LEASE


# ----- errors: one place maps the library's typed errors to HTTP ------------------------------------------------
class ApiError(Exception):
    """An error reply: HTTP status, contract code and a human-readable reason."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


#: (error class, status, code), first match wins.
ERROR_MAP: tuple[tuple[type[DpfSchedError], int, str], ...] = (
    (UnknownClaimError, 404, "not_found"),
    (LeaseExpiredError, 409, "lease_expired"),
    (DuplicateIdError, 409, "conflict"),
    (InvalidStateError, 409, "conflict"),
    (OverConsumptionError, 409, "conflict"),
    (InsufficientBudgetError, 409, "conflict"),
    (GrantLeaseError, 503, "unavailable"),
    (LedgerStorageError, 503, "unavailable"),
    (UnknownBlockError, 422, "invalid"),
    (InvalidBudgetError, 422, "invalid"),
    (AlphaGridMismatchError, 422, "invalid"),
    (CompositionMismatchError, 422, "invalid"),
    (InvalidParameterError, 422, "invalid"),
    (DpfSchedError, 422, "invalid"),
)

_HTTP_CODES = {401: "unauthenticated", 403: "forbidden", 404: "not_found", 405: "method_not_allowed", 409: "conflict"}
_HTTP_CODES |= {413: "too_large", 422: "invalid", 503: "unavailable"}


def map_error(e: DpfSchedError) -> ApiError:
    """The reply of a library error."""
    for cls, status, code in ERROR_MAP:
        if isinstance(e, cls):
            return ApiError(status, code, str(e))
    return ApiError(422, "invalid", str(e))  # pragma: no cover - DpfSchedError is the last entry


#: Seconds a 503 asks the client to wait before retrying (``Retry-After``): the ledger is reconnecting, or a
#: bounded wait for a lock ran out.
RETRY_AFTER = 1
#: Seconds a request waits for the process's ledger lock (held by a request that waits on the database, itself
#: bounded) before it answers 503.
API_LOCK_TIMEOUT = 15.0


def _reply(err: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if err.status == 401 else None
    # A reason may quote the caller's input (a key of a rejected body): text that is not valid Unicode (a lone
    # surrogate from a JSON escape) is shown escaped, or the reply itself could not be encoded.
    detail = err.detail.encode("utf-8", "backslashreplace").decode("utf-8")
    if err.status == 503:
        headers = {"Retry-After": str(RETRY_AFTER)}
    return JSONResponse({"error": err.code, "detail": detail}, status_code=err.status, headers=headers)


def _unparsable(cause: BaseException | None) -> str:
    """The reason of a body the JSON parser gave up on (a plain syntax error is FastAPI's 422 already)."""
    if isinstance(cause, RecursionError):
        return f"the body nests too deeply to parse (free-form fields allow {MAX_JSON_DEPTH} levels)"
    if isinstance(cause, UnicodeDecodeError):
        return "the body is not UTF-8 text"
    if cause is not None:
        return f"the body is not JSON this server accepts: {cause}"
    return "the body could not be parsed"  # pragma: no cover - FastAPI always chains the cause


def _not_found(public_id: str) -> ApiError:
    # The same reply for an unknown claim and another tenant's: it must not tell them apart.
    # The detail does not echo the id, so the two replies are byte for byte identical.
    return ApiError(404, "not_found", "no such claim")


# ----- ASGI middleware --------------------------------------------------------------------------------------
class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413, whether announced by Content-Length or streamed."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = ApiError(413, "too_large", f"request body over {self.limit} bytes")
        for k, v in scope.get("headers", []):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = 0
                if n > self.limit:
                    await _reply(too_large)(scope, receive, send)
                    return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            msg = await receive()
            if msg["type"] != "http.request":
                break
            body = msg.get("body", b"")
            size += len(body)
            if size > self.limit:
                await _reply(too_large)(scope, receive, send)
                return
            chunks.append(body)
            more = bool(msg.get("more_body", False))
        whole = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": whole, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class AccessLog:
    """One JSON log line per request: method, path, status, latency, tenant (never the token)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        start = time.perf_counter()
        status = [500]

        async def send_status(msg: Message) -> None:
            if msg["type"] == "http.response.start":
                status[0] = int(msg["status"])
            await send(msg)

        try:
            await self.app(scope, receive, send_status)
        finally:
            access_log.info(
                "%s %s %d",
                scope.get("method"),
                scope.get("path"),
                status[0],
                extra={
                    "method": scope.get("method"),
                    "path": scope.get("path"),
                    "status": status[0],
                    "latency_ms": round((time.perf_counter() - start) * 1000.0, 3),
                    "tenant": state.get("tenant"),
                },
            )


# ----- the service object -----------------------------------------------------------------------------------
def open_service_ledger(url: str, composition: Composition | None = None) -> SqlLedger:
    """Open the ledger at ``url``, creating it (with ``composition``, default basic) when the database has none."""
    from dpf_sched.composition import BasicComposition

    store = open_store(url, create=True)
    try:
        empty = not (store.table_names() & set(TABLES))
    except BaseException:
        store.close()
        raise
    if composition is None and empty:
        composition = BasicComposition()
    return SqlLedger(store, composition, create=True)


class ChangeFeed:
    """An :class:`asyncio.Event` replaced each time the journal grows; long polls wait on the current one."""

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.seq = -1

    def notify(self) -> None:
        """Wake every waiter (they look at their claim again)."""
        event, self.event = self.event, asyncio.Event()
        event.set()


class _TimedLock:
    """The process's ledger lock, but a request waits for it at most ``timeout`` seconds and then gets
    :class:`~dpf_sched.errors.StorageTimeoutError` (503) instead of queueing forever behind a stalled one."""

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self.timeout = timeout

    def __enter__(self) -> None:
        if not self._lock.acquire(timeout=self.timeout):
            raise StorageTimeoutError(
                f"the ledger connection of this process stayed busy for over {self.timeout:g} s; try again"
            )

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


class Service:
    """Everything one process serves with: the API's ledger connection (under a lock), the service tables,
    the scheduling loop and the change feed."""

    def __init__(self, config: ServiceConfig) -> None:
        self.config = config
        self.ledger = open_service_ledger(config.db, config.composition)
        self.composition = self.ledger.composition
        self.lock = _TimedLock(API_LOCK_TIMEOUT)
        self.clock = WallClock()
        try:
            self.tables = ServiceTables(open_store(config.db, create=False))
        except BaseException:
            self.ledger.close()
            raise
        self.tokens = TokenCache(config.token_ttl)
        self._labels: dict[str, str | None] = {}
        self.leader: LeaderLoop | None = None
        if config.run_leader:
            # Fail early on a bad policy name or parameter (the loop would only log it).
            from dpf_sched.policies.registry import create_policy

            create_policy(config.policy, **dict(config.params)).attach(self.ledger)
            self.leader = LeaderLoop(
                config.db, config.policy, config.params, poll=config.poll, lease_retry=config.lease_retry
            )
        self.feed: ChangeFeed | None = None

    @property
    def is_leader(self) -> bool:
        """True while this process's loop holds the grant lease."""
        return self.leader is not None and self.leader.is_leader

    def call(self, fn: Callable[[SqlLedger], T]) -> T:
        """Run ``fn`` on the API's ledger under the process's ledger lock (from a worker thread)."""
        with self.lock:
            return fn(self.ledger)

    def now(self) -> float:
        """Wall-clock time (never backwards)."""
        return self.clock.now()

    def close(self) -> None:
        """Stop the loop and close the connections."""
        if self.leader is not None:
            self.leader.stop()
        with self.lock:
            self.ledger.close()
        self.tables.close()

    # ----- claims (blocking; run in a worker thread) ---------------------------------------------------------
    def claim_of(self, p: Principal, public_id: str) -> tuple[ClaimRecord, str | None]:
        """The caller's claim ``public_id`` and its label; 404 when it is not the caller's or does not exist."""
        lid = f"{p.tenant}/{public_id}"
        try:
            record = self.call(lambda led: led.claim(lid))
        except UnknownClaimError:
            raise _not_found(public_id) from None
        return record, self.label(lid)

    def label(self, lid: str) -> str | None:
        """The label of an API-created claim (its metadata row never changes once committed, so a row found is
        remembered and later replies need no query)."""
        if lid in self._labels:
            return self._labels[lid]
        meta = self.tables.claim_meta(lid)
        if meta is None:
            return None
        if len(self._labels) >= _LABEL_CACHE:
            self._labels.clear()
        self._labels[lid] = meta.label
        return meta.label

    def out(self, p: Principal, public_id: str) -> ClaimOut:
        """The caller's claim as a reply."""
        record, label = self.claim_of(p, public_id)
        return claim_out(public_id, record, self.composition, label)

    def build_claim(self, p: Principal, lid: str, body: ClaimCreate, led: SqlLedger) -> Claim:
        """The core claim a create request asks for (values validated by the core)."""
        comp = self.composition
        fields: dict[str, Any] = {"arrival": self.now(), "owner": p.tenant}
        if body.timeout is not None:
            fields["timeout"] = body.timeout
        if body.weight is not None:
            fields["weight"] = body.weight
        lease = body.lease if body.lease is not None else self.config.lease
        if lease is not None:
            fields["lease"] = lease
        if (body.demand is None) == (body.demands is None):
            raise InvalidParameterError("a claim needs exactly one of 'demand' (with blocks or selector) or 'demands'")
        if body.demands is not None:
            if body.selector is not None:
                raise InvalidParameterError("'demands' names its blocks: give no 'selector'")
            if not body.demands:
                raise InvalidParameterError("'demands' must name at least one block")
            if body.blocks is not None and sorted(body.blocks) != sorted(body.demands):
                raise InvalidParameterError("with 'demands', 'blocks' must list exactly the blocks of 'demands'")
            order = body.blocks if body.blocks is not None else list(body.demands)
            demand = {b: budget_value(body.demands[b], comp, f"demand on block {b}") for b in order}
            return Claim(lid, demand, **fields)
        assert body.demand is not None
        value = budget_value(body.demand, comp, "demand")
        if (body.blocks is None) == (body.selector is None):
            raise InvalidParameterError("a uniform 'demand' needs exactly one of 'blocks' or 'selector'")
        if body.selector is not None:
            blocks = list(selector_value(body.selector).select(led.blocks()))
        else:
            assert body.blocks is not None
            blocks = list(body.blocks)
        return Claim.uniform(lid, blocks, value, **fields)

    def nudge(self) -> None:
        """Wake this process's scheduling loop after a write that may allow a grant (see :meth:`LeaderLoop.nudge`)."""
        if self.leader is not None:
            self.leader.nudge()

    def create_claim(self, p: Principal, body: ClaimCreate) -> tuple[int, ClaimOut]:
        """Create a claim (201), or answer a retried create with the existing claim (200); 409 on reuse."""
        public_id = body.id if body.id is not None else uuid.uuid4().hex
        lid = f"{p.tenant}/{public_id}"
        fp = fingerprint(body.model_dump(mode="json", by_alias=True, exclude_unset=True))
        conflict = ApiError(409, "conflict", f"claim id {public_id!r} was already used for a different request")
        if body.id is not None:
            # The ledger first, then the metadata: both commit in one transaction, so a claim the ledger shows
            # has its metadata row visible to any later read. (The other order raced: a concurrent identical
            # create committing between the two reads looked like a claim without metadata, i.e. a conflict.)
            with self.lock:
                try:
                    self.ledger.claim(lid)
                    exists = True
                except UnknownClaimError:
                    exists = False
            if exists:
                meta = self.tables.claim_meta(lid)
                if meta is None or meta.fingerprint != fp:
                    raise conflict
                return 200, self.out(p, public_id)
        new_meta = ClaimMeta(lid, p.tenant, body.label, fp)

        def reserve(store: Store) -> None:
            # Inside the ledger's transaction that adds the claim: the metadata row and the claim commit together
            # (one transaction, one fsync), or neither does.
            if reserve_claim_meta(store, new_meta).fingerprint != fp:
                raise conflict

        with self.lock:
            led = self.ledger
            try:
                claim = self.build_claim(p, lid, body, led)
                idx, demand = led.add_claim(claim, before=reserve)
            except DuplicateIdError:
                created = False
            else:
                created = True
                # Rejected at once only beyond a block's capacity, never because of what others consumed: the
                # answer a tenant gets must not measure capacity − consumed (docs/service.md, what a tenant may
                # learn). The leader's scheduler applies the same rule (LeaderScheduler.possible).
                comp = self.composition
                cap = led.capacity[idx]
                possible = comp.possible(demand, np.zeros_like(cap), cap)
                if not bool(possible.all()):
                    bad = claim.blocks[int(possible.argmin())]
                    with contextlib.suppress(InvalidStateError):
                        led.reject(lid, self.now(), f"demand exceeds what block {bad} can ever provide")
        if not created:
            # The id exists in the ledger (a concurrent create won the race): the same request → its claim.
            stored = self.tables.claim_meta(lid)
            if stored is None or stored.fingerprint != fp:
                raise conflict
        if created:
            self.nudge()
        return (201 if created else 200), self.out(p, public_id)

    def list_claims(self, p: Principal) -> ClaimList:
        """The caller's claims, in submission order."""
        prefix = f"{p.tenant}/"
        with self.lock:
            records = [self.ledger.claim(c) for c in self.ledger.claim_ids() if c.startswith(prefix)]
        labels = self.tables.labels(p.tenant)
        comp = self.composition
        return ClaimList(
            claims=[claim_out(r.claim.id[len(prefix) :], r, comp, labels.get(r.claim.id)) for r in records]
        )

    def consume(self, p: Principal, public_id: str, body: ConsumeRequest) -> ClaimOut:
        """Spend part or all of the caller's grant, once per request id."""
        comp = self.composition
        amounts = (
            None
            if body.amounts is None
            else {b: budget_value(v, comp, f"amount on block {b}") for b, v in body.amounts.items()}
        )
        self._once(
            p, public_id, body.request_id, lambda led, lid, rid: led.consume(lid, amounts, self.now(), request_id=rid)
        )
        return self.out(p, public_id)

    def release(self, p: Principal, public_id: str, body: ReleaseRequest) -> ClaimOut:
        """Return the rest of the caller's grant, once per request id."""
        self._once(p, public_id, body.request_id, lambda led, lid, rid: led.release(lid, self.now(), request_id=rid))
        self.nudge()  # returned budget may let a waiting claim fit
        return self.out(p, public_id)

    def _once(self, p: Principal, public_id: str, request_id: str, op: Callable[[SqlLedger, str, str], None]) -> None:
        """Apply ``op(ledger, ledger claim id, ledger request id)`` to the caller's claim, once per request id.

        Another tenant's or an unknown claim is 404; a request id the ledger already recorded for another
        operation is 409 (the ledger refuses its reuse), while a retry of the same operation is a no-op there.
        Whether the id was used is asked *after* the refusal, of the state the refused transaction saw: asked
        before, a use committed by another process in between made the same reuse a 422 (issue 19).
        """
        lid = f"{p.tenant}/{public_id}"
        rid = f"{p.tenant}/{request_id}"
        with self.lock:
            led = self.ledger
            try:
                led.state(lid)
            except UnknownClaimError:
                raise _not_found(public_id) from None
            try:
                op(led, lid, rid)
            except InvalidParameterError as e:
                if led.has_request(rid):
                    raise ApiError(409, "conflict", f"request id {request_id!r} was used elsewhere") from e
                raise

    def renew(self, p: Principal, public_id: str) -> ClaimOut:
        """Renew the lease of the caller's granted claim (deadline = now + lease); 409 when it is not granted
        (``lease_expired`` when its lease already lapsed). Not journaled: one short durable write."""
        lid = f"{p.tenant}/{public_id}"
        with self.lock:
            try:
                self.ledger.renew(lid, self.now())
            except UnknownClaimError:
                raise _not_found(public_id) from None
        return self.out(p, public_id)

    def withdraw(self, p: Principal, public_id: str) -> ClaimOut:
        """Withdraw the caller's waiting claim (rejected, reason ``withdrawn``); 409 when it is not waiting."""
        lid = f"{p.tenant}/{public_id}"
        with self.lock:
            led = self.ledger
            try:
                state = led.state(lid)
            except UnknownClaimError:
                raise _not_found(public_id) from None
            if state is not ClaimState.WAITING:
                raise ApiError(409, "conflict", f"claim {public_id!r} is {state.value}, not waiting")
            led.reject(lid, self.now(), "withdrawn")
        return self.out(p, public_id)

    # ----- blocks ---------------------------------------------------------------------------------------------
    def create_block(self, body: BlockCreate) -> BlockOut:
        """Add a block created now (admin)."""
        comp = self.composition
        capacity = budget_value(body.budget, comp, f"block {body.id}: budget", capacity=True)
        guarantee = None
        if isinstance(comp, RenyiComposition) and body.budget.rdp is None:
            guarantee = EpsDelta(body.budget.epsilon or 0.0, body.budget.delta or 0.0)
        with self.lock:
            block = Block(body.id, capacity, created=self.now(), attributes=body.attributes or {}, guarantee=guarantee)
            self.ledger.add_block(block)
            out = block_out(self.ledger.budgets(block.id))
        self.nudge()
        return out

    def block(self, block_id: str) -> BlockOut:
        """One block's budgets (admin); 404 when unknown."""
        with self.lock:
            try:
                return block_out(self.ledger.budgets(block_id))
            except UnknownBlockError:
                raise ApiError(404, "not_found", f"no block {block_id!r}") from None

    def blocks(self) -> BlockList:
        """Every block's budgets (admin)."""
        with self.lock:
            led = self.ledger
            return BlockList(blocks=[block_out(led.budgets(b.id)) for b in led.blocks()])

    def select(self, body: SelectRequest) -> BlockIds:
        """The ids a selector picks among the current blocks."""
        sel = selector_value(body.selector)
        with self.lock:
            return BlockIds(blocks=list(sel.select(self.ledger.blocks())))

    def ledger_info(self) -> dict[str, Any]:
        """The ledger's composition as the contract describes it."""
        desc = composition_descriptor(self.composition)
        if desc["kind"] == "renyi":
            return {"composition": "renyi", "alphas": desc["orders"], "conversion": desc["conversion"]}
        return {"composition": "basic"}


# ----- the application --------------------------------------------------------------------------------------
_ERRORS: dict[int | str, dict[str, Any]] = {
    s: {"model": ErrorOut, "description": d}
    for s, d in (
        (401, "no, malformed, unknown or revoked token"),
        (403, "a tenant token on an admin endpoint"),
        (413, "request body over 1 MiB"),
        (422, "invalid input; the detail says why"),
        (503, "the ledger does not answer"),
    )
}
_CLAIM_ERRORS = _ERRORS | {404: {"model": ErrorOut, "description": "unknown claim (or another tenant's)"}}
_STATE_ERRORS = _CLAIM_ERRORS | {409: {"model": ErrorOut, "description": "the claim's state does not allow it"}}


_bearer = HTTPBearer(auto_error=False, description="dpf_<id>.<secret> (dpf-sched tokens create)")


async def principal(
    request: Request, cred: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> Principal:
    """The verified caller of a ``/v1`` request (401 without a live token). Never logs the token."""
    if cred is None or cred.scheme.lower() != "bearer" or not cred.credentials:
        raise ApiError(401, "unauthenticated", "a bearer token is required")
    svc: Service = request.app.state.service
    token = cred.credentials
    p = svc.tokens.get(token)  # a live token seen less than token_ttl seconds ago: no lookup, no thread
    if p is None:
        started = time.monotonic()
        p = await run_in_threadpool(lambda: svc.tables.verify(token))
        if p is None:
            raise ApiError(401, "unauthenticated", "invalid or revoked token")
        svc.tokens.put(token, p, started)
    request.state.tenant = p.tenant
    return p


Auth = Annotated[Principal, Depends(principal)]


async def admin(p: Auth) -> Principal:
    """The caller, who must hold an admin token (403 otherwise)."""
    if not p.admin:
        raise ApiError(403, "forbidden", "this endpoint needs an admin token")
    return p


Admin = Annotated[Principal, Depends(admin)]


def create_app(config: ServiceConfig) -> FastAPI:
    """The ASGI application of one `dpf-sched serve` process (opens the ledger now; the loop starts with the app)."""
    svc = Service(config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        feed = svc.feed = ChangeFeed()
        loop = asyncio.get_running_loop()
        if svc.leader is not None:

            def poke() -> None:
                loop.call_soon_threadsafe(feed.notify)

            svc.leader.on_change = poke
            svc.leader.start()
        task = asyncio.create_task(_watch(svc, feed))
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await run_in_threadpool(svc.close)

    app = FastAPI(
        title="dpf_sched budget service",
        version="1",
        description="Privacy-budget scheduling over HTTP (docs/service.md).",
        lifespan=lifespan,
    )
    app.state.service = svc
    async def blocking(fn: Callable[[], T]) -> T:
        return await run_in_threadpool(fn)

    # ----- error handlers -----------------------------------------------------------------------------------
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return _reply(e)

    @app.exception_handler(DpfSchedError)
    async def _lib_error(request: Request, e: DpfSchedError) -> JSONResponse:
        return _reply(map_error(e))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        reasons = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ()))
            reasons.append(f"{where}: {err.get('msg')}")
        return _reply(ApiError(422, "invalid", "; ".join(reasons) or "invalid request"))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 400:  # FastAPI's "error parsing the body": any JSON the parser gave up on is a 422
            return _reply(ApiError(422, "invalid", _unparsable(e.__cause__)))
        code = _HTTP_CODES.get(e.status_code, "invalid" if e.status_code < 500 else "unavailable")
        return _reply(ApiError(e.status_code, code, str(e.detail)))

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"error": "internal", "detail": f"{type(e).__name__}"}, status_code=500)

    # ----- health --------------------------------------------------------------------------------------------
    @app.get("/healthz", response_model=Health, tags=["health"])
    async def healthz() -> Health:
        """The process is alive."""
        return Health(status="ok")

    @app.get("/readyz", response_model=Ready, responses={503: {"model": ErrorOut}}, tags=["health"])
    async def readyz() -> Ready:
        """Ready when the ledger answers; ``leader`` says whether this process holds the grant lease."""
        try:
            await blocking(svc.tables.max_seq)
        except DpfSchedError as e:
            raise ApiError(503, "unavailable", f"the ledger does not answer: {e}") from e
        return Ready(status="ready", leader=svc.is_leader)

    # ----- ledger ----------------------------------------------------------------------------------------------
    @app.get("/v1/ledger", tags=["ledger"], responses=_ERRORS)
    async def ledger_info(p: Auth) -> dict[str, Any]:
        """The ledger's composition (and α grid)."""
        return svc.ledger_info()

    @app.get("/v1/ledger/audit", tags=["ledger"], responses=_ERRORS)
    async def ledger_audit(p: Admin) -> dict[str, Any]:
        """Replay the journal and check every invariant (200 whether ok or not)."""
        return await blocking(lambda: svc.call(lambda led: led.audit().to_dict()))

    # ----- blocks ----------------------------------------------------------------------------------------------
    @app.post("/v1/blocks", status_code=201, response_model=BlockOut, tags=["blocks"], responses=_STATE_ERRORS)
    async def create_block(body: BlockCreate, p: Admin) -> BlockOut:
        """Create a block now (existing id → 409)."""
        return await blocking(lambda: svc.create_block(body))

    @app.get("/v1/blocks", response_model=BlockList, tags=["blocks"], responses=_ERRORS)
    async def list_blocks(p: Admin) -> BlockList:
        """Every block with its budgets."""
        return await blocking(svc.blocks)

    @app.post("/v1/blocks/select", response_model=BlockIds, tags=["blocks"], responses=_ERRORS)
    async def select_blocks(body: SelectRequest, p: Auth) -> BlockIds:
        """The ids of the blocks a selector picks now."""
        return await blocking(lambda: svc.select(body))

    @app.get("/v1/blocks/{block_id}", response_model=BlockOut, tags=["blocks"], responses=_CLAIM_ERRORS)
    async def get_block(block_id: str, p: Admin) -> BlockOut:
        """One block with its budgets."""
        return await blocking(lambda: svc.block(block_id))

    # ----- claims ----------------------------------------------------------------------------------------------
    @app.post(
        "/v1/claims",
        status_code=201,
        response_model=ClaimOut,
        tags=["claims"],
        responses=_STATE_ERRORS | {200: {"model": ClaimOut, "description": "a retried create"}},
    )
    async def create_claim(body: ClaimCreate, p: Auth) -> Any:
        """Submit a claim (201); the same id and body again → 200 with the existing claim; other body → 409."""
        status, out = await blocking(lambda: svc.create_claim(p, body))
        return JSONResponse(out.model_dump(mode="json"), status_code=status)

    @app.get("/v1/claims", response_model=ClaimList, tags=["claims"], responses=_ERRORS)
    async def list_claims(p: Auth) -> ClaimList:
        """The caller's claims."""
        return await blocking(lambda: svc.list_claims(p))

    @app.get("/v1/claims/{claim_id}", response_model=ClaimOut, tags=["claims"], responses=_CLAIM_ERRORS)
    async def get_claim(claim_id: str, p: Auth) -> ClaimOut:
        """One of the caller's claims."""
        return await blocking(lambda: svc.out(p, claim_id))

    @app.get("/v1/claims/{claim_id}/wait", response_model=ClaimOut, tags=["claims"], responses=_CLAIM_ERRORS)
    async def wait_claim(
        claim_id: str,
        p: Auth,
        timeout: Annotated[float, Query(description="seconds (at most 60)")] = DEFAULT_WAIT,
    ) -> ClaimOut:
        """Long poll: the claim as soon as it is no longer waiting, or when ``timeout`` passes."""
        if not math.isfinite(timeout) or timeout < 0:
            raise ApiError(422, "invalid", f"timeout must be a finite number ≥ 0, got {timeout}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(timeout, MAX_WAIT)
        while True:
            feed = svc.feed
            event = feed.event if feed is not None else None
            out = await blocking(lambda: svc.out(p, claim_id))
            left = deadline - loop.time()
            if out.state != ClaimState.WAITING.value or left <= 0:
                return out
            with contextlib.suppress(TimeoutError):
                if event is not None:
                    await asyncio.wait_for(event.wait(), min(left, 0.5))
                else:  # pragma: no cover - outside the lifespan
                    await asyncio.sleep(min(left, config.wait_poll))

    @app.post("/v1/claims/{claim_id}/consume", response_model=ClaimOut, tags=["claims"], responses=_STATE_ERRORS)
    async def consume_claim(claim_id: str, body: ConsumeRequest, p: Auth) -> ClaimOut:
        """Spend part (``amounts``) or all of the grant; the same request id again → the same reply, applied once."""
        return await blocking(lambda: svc.consume(p, claim_id, body))

    @app.post("/v1/claims/{claim_id}/release", response_model=ClaimOut, tags=["claims"], responses=_STATE_ERRORS)
    async def release_claim(claim_id: str, body: ReleaseRequest, p: Auth) -> ClaimOut:
        """Return the unspent rest of the grant and finish the claim; idempotent per request id."""
        return await blocking(lambda: svc.release(p, claim_id, body))

    @app.post("/v1/claims/{claim_id}/renew", response_model=ClaimOut, tags=["claims"], responses=_STATE_ERRORS)
    async def renew_claim(claim_id: str, p: Auth, body: RenewRequest | None = None) -> ClaimOut:
        """Renew the lease of a granted claim: its deadline becomes now + lease. Not granted → 409
        (``lease_expired`` once the lease lapsed and the scheduler returned the rest of the grant)."""
        return await blocking(lambda: svc.renew(p, claim_id))

    @app.post("/v1/claims/{claim_id}/withdraw", response_model=ClaimOut, tags=["claims"], responses=_STATE_ERRORS)
    async def withdraw_claim(claim_id: str, p: Auth, body: WithdrawRequest | None = None) -> ClaimOut:
        """Withdraw a waiting claim (rejected, reason ``withdrawn``); not waiting → 409."""
        return await blocking(lambda: svc.withdraw(p, claim_id))

    app.add_middleware(BodyLimit, limit=config.max_body)
    app.add_middleware(AccessLog)  # outermost: it sees every reply, 413s included
    return app


async def _watch(svc: Service, feed: ChangeFeed) -> None:
    """Wake the long polls whenever the journal grows (one cheap query per ``wait_poll``)."""
    failing = False
    while True:
        try:
            seq = await run_in_threadpool(svc.tables.max_seq)
            if failing:
                logger.warning("change feed: the ledger answers again")
                failing = False
            if seq != feed.seq:
                feed.seq = seq
                feed.notify()
        except DpfSchedError as e:
            if not failing:  # once per outage, not every poll (the connection reconnects with backoff)
                logger.warning("change feed: %s", e)
            failing = True
        await asyncio.sleep(svc.config.wait_poll)

