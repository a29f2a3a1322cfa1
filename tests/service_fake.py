"""A tiny in-memory stand-in for the budget service (docs/service.md, v1), as an ``httpx.MockTransport``.

It serves the contract's shapes from an in-process :class:`Scheduler` on a Rényi :class:`MemoryLedger` under
FCFS, so the client's serialisation, retries and error mapping can be tested offline, fast and
deterministically. It is a test double, not a second server: one tenant per token, no persistence, and ``wait``
answers at once (FCFS decides on arrival). ``calls`` records every request seen, for the tests' assertions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote

import httpx

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta, RenyiCurve, budget_json
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import RenyiComposition
from dpf_sched.errors import (
    DpfSchedError,
    InvalidStateError,
    LeaseExpiredError,
    UnknownBlockError,
    UnknownClaimError,
)
from dpf_sched.ledger import ClaimRecord, ClaimState, MemoryLedger
from dpf_sched.scheduler import Scheduler
from dpf_sched.selector import BlockSelector

GRID = AlphaGrid((2.0, 4.0, 8.0, 16.0))


def error(status: int, code: str, detail: str) -> httpx.Response:
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    return httpx.Response(status, json={"error": code, "detail": detail}, headers=headers)


@dataclass
class FakeService:
    """The contract over one scheduler; ``tokens`` maps a token to ``(tenant, admin)``."""

    tokens: dict[str, tuple[str, bool]] = field(
        default_factory=lambda: {"admin-token": ("ops", True), "tenant-token": ("ml", False)}
    )
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    bodies: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, str | None] = field(default_factory=dict)
    #: The lease of a claim created without one (the real service's ``--lease``; ``None`` here by default).
    default_lease: float | None = None

    def __post_init__(self) -> None:
        self.clock = ManualClock()
        self.sched = Scheduler(MemoryLedger(RenyiComposition(GRID, "balle")), "fcfs", self.clock)

    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handle)

    # ----- the contract -----------------------------------------------------------------------------------
    def handle(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content) if request.content else None
        path = unquote(request.url.path)
        self.calls.append((request.method, path, body))
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token not in self.tokens:
            return error(401, "unauthenticated", "unknown token")
        tenant, admin = self.tokens[token]
        parts = path.strip("/").split("/")
        try:
            return self.route(request, parts, body, tenant, admin)
        except (UnknownClaimError, UnknownBlockError) as exc:
            return error(404, "not_found", str(exc))
        except LeaseExpiredError as exc:
            return error(409, "lease_expired", str(exc))
        except InvalidStateError as exc:
            return error(409, "conflict", str(exc))
        except DpfSchedError as exc:
            return error(422, "invalid", str(exc))

    def route(self, request: httpx.Request, parts: list[str], body: Any, tenant: str, admin: bool) -> httpx.Response:
        m = request.method
        if parts == ["v1", "ledger"]:
            info = {"composition": "renyi", "alphas": list(GRID.orders), "conversion": "balle"}
            return httpx.Response(200, json=info)
        admin_path = parts[:2] == ["v1", "ledger"] or (parts[:2] == ["v1", "blocks"] and parts[2:] != ["select"])
        if admin_path and not admin:
            return error(403, "forbidden", "admin only")
        if parts == ["v1", "ledger", "audit"]:
            v = [str(x) for x in self.sched.ledger.violations()]
            return httpx.Response(200, json={"ok": not v, "problems": [], "violations": v})
        if parts == ["v1", "blocks"] and m == "POST":
            bid = body["id"]
            if any(b.id == bid for b in self.sched.ledger.blocks()):
                return error(409, "conflict", f"block {bid} exists")
            self.sched.add_block(Block(bid, self.budget(body["budget"]), attributes=body.get("attributes") or {}))
            return httpx.Response(201, json=self.block_out(bid))
        if parts == ["v1", "blocks"]:
            return httpx.Response(200, json={"blocks": [self.block_out(b.id) for b in self.sched.ledger.blocks()]})
        if parts == ["v1", "blocks", "select"]:
            s = body["selector"]
            sel = BlockSelector(ids=s.get("ids"), attributes=s.get("attributes") or {}, latest=s.get("latest"))
            return httpx.Response(200, json={"blocks": list(sel.select(self.sched.ledger.blocks()))})
        if parts[:2] == ["v1", "blocks"]:
            self.sched.ledger.block_index(parts[2])
            return httpx.Response(200, json=self.block_out(parts[2]))
        if parts == ["v1", "claims"] and m == "POST":
            return self.create(body, tenant)
        if parts == ["v1", "claims"]:
            mine = [c for c in self.sched.ledger.claim_ids() if c.startswith(f"{tenant}/")]
            return httpx.Response(200, json={"claims": [self.claim_out(c) for c in mine]})
        if parts[:2] == ["v1", "claims"] and len(parts) >= 3:
            full = f"{tenant}/{parts[2]}"
            self.sched.status(full)  # 404 for another tenant's claim or an unknown one
            action = parts[3] if len(parts) > 3 else None
            if action is None or action == "wait":
                self.sched.step()
                return httpx.Response(200, json=self.claim_out(full))
            now = self.clock.now()
            if action == "consume":
                amounts = body.get("amounts")
                parsed = None if amounts is None else {b: self.budget(v) for b, v in amounts.items()}
                self.sched.ledger.consume(full, parsed, now, request_id=body["request_id"])
            elif action == "release":
                self.sched.ledger.release(full, now, request_id=body["request_id"])
            elif action == "withdraw":
                self.sched.withdraw(full)
            elif action == "renew":
                self.sched.renew(full)
            return httpx.Response(200, json=self.claim_out(full))
        return error(404, "not_found", f"no route {m} {'/'.join(parts)}")

    def create(self, body: dict[str, Any], tenant: str) -> httpx.Response:
        cid = body["id"]
        full = f"{tenant}/{cid}"
        if full in self.bodies:
            if self.bodies[full] != body:
                return error(409, "conflict", f"claim {cid} exists with another body")
            return httpx.Response(200, json=self.claim_out(full))
        demand = {b: self.budget(v) for b, v in body["demands"].items()}
        claim = Claim(
            full,
            demand,
            timeout=body.get("timeout"),
            owner=tenant,
            weight=body.get("weight", 1.0),
            lease=body.get("lease", self.default_lease),
        )
        self.sched.submit(claim)
        self.sched.step()
        self.bodies[full] = body
        self.labels[full] = body.get("label")
        return httpx.Response(201, json=self.claim_out(full))

    # ----- values -----------------------------------------------------------------------------------------
    def budget(self, obj: dict[str, Any]) -> Budget:
        if "rdp" in obj:
            return RenyiCurve(GRID, obj["rdp"])
        return EpsDelta(obj["epsilon"], obj.get("delta", 0.0)).to_renyi(GRID, "balle")

    def claim_out(self, full: str) -> dict[str, Any]:
        r: ClaimRecord = self.sched.status(full)
        state = r.state.value
        if r.state is ClaimState.FINISHED:
            state = "consumed" if all(v.is_zero() for v in r.remaining.values()) else "released"
        return {
            "id": full.split("/", 1)[1],
            "state": state,
            "blocks": list(r.claim.blocks),
            "demand": {b: budget_json(v) for b, v in r.claim.demand.items()},
            "arrival": r.claim.arrival,
            "decided_at": r.decided_at,
            "reason": r.reason,
            "remaining": {b: budget_json(v) for b, v in r.remaining.items()},
            "consumed": {b: budget_json(v) for b, v in r.consumed.items()},
            "weight": r.claim.weight,
            "label": self.labels.get(full),
            "lease": r.claim.lease,
            "lease_deadline": r.lease_deadline,
        }

    def block_out(self, bid: str) -> dict[str, Any]:
        bb = self.sched.ledger.budgets(bid)
        return {
            "id": bid,
            "created": bb.block.created,
            "capacity": budget_json(bb.capacity),
            "locked": budget_json(bb.locked),
            "unlocked": budget_json(bb.unlocked),
            "allocated": budget_json(bb.allocated),
            "consumed": budget_json(bb.consumed),
            "retired": bb.retired,
            "attributes": dict(bb.block.attributes),
        }
