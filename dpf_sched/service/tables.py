"""The service's own tables in the ledger database: API tokens and per-claim request metadata.

They live beside the ledger's tables (same SQLite file or PostgreSQL schema) but are not part of the ledger's
schema: the ledger's journal, audit and migrations never look at them, and they are created idempotently
(``CREATE TABLE IF NOT EXISTS`` inside a write transaction, so concurrent first starts do not race) by the first
`dpf-sched serve` or `dpf-sched tokens` that opens the database.

* ``dpf_service_tokens`` — one row per token: id, tenant, role, the SHA-256 of its secret (never the secret),
  creation and revocation times.
* ``dpf_service_claims`` — one row per claim created through the API: the ledger id, the tenant, the label and
  the fingerprint of the creating request (a retried create with the same id is recognised by it).

A token is ``dpf_<id>.<secret>``: ``id`` is 12 hex digits (public: it names the token in `tokens list` and
`tokens revoke`), ``secret`` 32 random bytes (URL-safe base64). Only ``sha256(secret)`` is stored, and the check
compares digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from dpf_sched.errors import InvalidParameterError, LedgerStorageError
from dpf_sched.ledger.sql.schema import TABLES
from dpf_sched.ledger.sql.stores import Store

TOKEN_TABLE = "dpf_service_tokens"
CLAIM_TABLE = "dpf_service_claims"
SERVICE_TABLES = (TOKEN_TABLE, CLAIM_TABLE)

_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {TOKEN_TABLE} (
        id TEXT NOT NULL PRIMARY KEY,
        tenant TEXT NOT NULL,
        role TEXT NOT NULL,
        secret_sha256 TEXT NOT NULL,
        created_at {{real}} NOT NULL,
        revoked_at {{real}}
    )""",
    f"""CREATE TABLE IF NOT EXISTS {CLAIM_TABLE} (
        id TEXT NOT NULL PRIMARY KEY,
        tenant TEXT NOT NULL,
        label TEXT,
        fingerprint TEXT NOT NULL,
        created_at {{real}} NOT NULL
    )""",
    f"CREATE INDEX IF NOT EXISTS {CLAIM_TABLE}_tenant ON {CLAIM_TABLE} (tenant)",
)

#: Tenant names: they prefix ledger claim ids (``<tenant>/<id>``), so no ``/``; short and printable.
#: Both are used with ``fullmatch`` only: ``$`` in ``re.match`` also matches before a trailing newline, which let
#: ``"alice\n"`` pass as a second tenant "alice".
TENANT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_TOKEN_RE = re.compile(r"dpf_([0-9a-f]{12})\.([A-Za-z0-9_-]{20,128})")
#: A digest every failed lookup is compared against, so an unknown id costs the same as a wrong secret.
_DUMMY = hashlib.sha256(b"dpf_sched: no such token").hexdigest()


class Role(StrEnum):
    """What a token may do: ``tenant`` (its own claims) or ``admin`` (also blocks and the audit)."""

    TENANT = "tenant"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """Who a verified token speaks for."""

    token_id: str
    tenant: str
    role: Role

    @property
    def admin(self) -> bool:
        """True for an admin token."""
        return self.role is Role.ADMIN


@dataclass(frozen=True)
class TokenInfo:
    """A token as `tokens list` shows it (never the secret)."""

    id: str
    tenant: str
    role: Role
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True)
class ClaimMeta:
    """What the service stores about a claim beside the ledger: its tenant, label and creating request."""

    ledger_id: str
    tenant: str
    label: str | None
    fingerprint: str


def check_tenant(name: str) -> str:
    """A valid tenant name (letters, digits, ``_.-``; at most 64; no ``/``), or InvalidParameterError."""
    if not isinstance(name, str) or not TENANT_RE.fullmatch(name):
        raise InvalidParameterError(
            f"tenant must be 1-64 letters, digits, '_', '.' or '-' starting with a letter or digit, got {name!r}"
        )
    return name


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class TokenCache:
    """Positive token lookups of the last ``ttl`` seconds, keyed by the SHA-256 of the whole token.

    Only live tokens are cached (a malformed, unknown, wrong or revoked token is looked up again every time), and
    an entry is trusted for at most ``ttl`` seconds after the lookup that found it live: a token revoked in the
    database (by any process) is refused by every process within ``ttl`` seconds. ``ttl <= 0`` disables the
    cache. The secret itself is never kept, only its digest (a dictionary key). Thread-safe enough for its use:
    the event loop reads and writes it, single dictionary operations are atomic.
    """

    def __init__(self, ttl: float = 1.0, max_size: int = 4096) -> None:
        self.ttl = float(ttl)
        self.max_size = int(max_size)
        self._entries: dict[bytes, tuple[float, Principal]] = {}

    @staticmethod
    def key(token: str) -> bytes:
        """The cache key of a token (a digest: the token is not kept)."""
        return hashlib.sha256(token.encode()).digest()

    def get(self, token: str) -> Principal | None:
        """The principal of ``token`` if it was found live less than ``ttl`` seconds ago, else None."""
        if self.ttl <= 0:
            return None
        k = self.key(token)
        hit = self._entries.get(k)
        if hit is None:
            return None
        if time.monotonic() >= hit[0]:
            self._entries.pop(k, None)
            return None
        return hit[1]

    def put(self, token: str, principal: Principal, looked_up_at: float) -> None:
        """Remember a live token found by a lookup that started at ``looked_up_at`` (``time.monotonic()``)."""
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_size:
            now = time.monotonic()
            for k in [k for k, (expiry, _) in self._entries.items() if expiry <= now]:
                self._entries.pop(k, None)
            if len(self._entries) >= self.max_size:
                self._entries.clear()
        self._entries[self.key(token)] = (looked_up_at + self.ttl, principal)

    def clear(self) -> None:
        """Forget every entry."""
        self._entries.clear()


def reserve_claim_meta(store: Store, meta: ClaimMeta) -> ClaimMeta:
    """Record a claim's metadata through ``store``, inside the caller's write transaction, unless a row exists;
    return the row that is stored now (the existing one, which may have another fingerprint)."""
    rows = store.execute(f"SELECT id, tenant, label, fingerprint FROM {CLAIM_TABLE} WHERE id = ?", (meta.ledger_id,))
    if rows:
        r = rows[0]
        return ClaimMeta(str(r[0]), str(r[1]), None if r[2] is None else str(r[2]), str(r[3]))
    store.execute(
        f"INSERT INTO {CLAIM_TABLE} (id, tenant, label, fingerprint, created_at) VALUES (?, ?, ?, ?, ?)",
        (meta.ledger_id, meta.tenant, meta.label, meta.fingerprint, time.time()),
    )
    return meta


class ServiceTables:
    """Access to the service's tables through one store connection (thread-safe: one lock per object).

    Parameters
    ----------
    store
        An open connection to the ledger database; this object owns it (:meth:`close`).
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._lock = threading.Lock()
        self.ensure()

    def ensure(self) -> None:
        """Create the tables when missing (idempotent; serialised with every other writer)."""
        st = self._store
        with self._lock:
            if not st.table_names() & set(TABLES):
                raise LedgerStorageError(f"{st.describe()} holds no ledger: create it first (dpf-sched ledger init)")
            st.begin_write()
            try:
                for stmt in _DDL:
                    st.execute(stmt.format(real=st.real))
                st.commit()
            except BaseException:
                st.rollback()
                raise

    def _write(self, sql: str, params: tuple[object, ...]) -> None:
        st = self._store
        st.begin_write()
        try:
            st.execute(sql, params)
            st.commit()
        except BaseException:
            st.rollback()
            raise

    # ----- tokens -------------------------------------------------------------------------------------------
    def create_token(self, tenant: str, role: Role = Role.TENANT) -> tuple[str, str]:
        """Create a token for ``tenant``; return ``(token_id, token)``. The token is shown only here."""
        check_tenant(tenant)
        token_id = secrets.token_hex(6)
        secret = secrets.token_urlsafe(32)
        with self._lock:
            self._write(
                f"INSERT INTO {TOKEN_TABLE} (id, tenant, role, secret_sha256, created_at, revoked_at) "
                "VALUES (?, ?, ?, ?, ?, NULL)",
                (token_id, tenant, Role(role).value, _digest(secret), time.time()),
            )
        return token_id, f"dpf_{token_id}.{secret}"

    def revoke_token(self, token_id: str) -> bool:
        """Revoke a token by id; False when no live token has that id."""
        tid = token_id.removeprefix("dpf_").split(".", 1)[0]
        with self._lock:
            rows = self._store.execute(f"SELECT revoked_at FROM {TOKEN_TABLE} WHERE id = ?", (tid,))
            if not rows or rows[0][0] is not None:
                return False
            self._write(f"UPDATE {TOKEN_TABLE} SET revoked_at = ? WHERE id = ?", (time.time(), tid))
        return True

    def list_tokens(self) -> list[TokenInfo]:
        """Every token (live and revoked), oldest first, without secrets."""
        with self._lock:
            rows = self._store.execute(
                f"SELECT id, tenant, role, created_at, revoked_at FROM {TOKEN_TABLE} ORDER BY created_at, id"
            )
        return [
            TokenInfo(str(r[0]), str(r[1]), Role(str(r[2])), float(r[3]), None if r[4] is None else float(r[4]))
            for r in rows
        ]

    def verify(self, token: str) -> Principal | None:
        """The principal of a live token, or None (malformed, unknown, wrong secret or revoked)."""
        m = _TOKEN_RE.fullmatch(token) if isinstance(token, str) else None
        if m is None:
            hmac.compare_digest(_DUMMY, _DUMMY)
            return None
        tid, secret = m.group(1), m.group(2)
        with self._lock:
            rows = self._store.execute(
                f"SELECT tenant, role, secret_sha256, revoked_at FROM {TOKEN_TABLE} WHERE id = ?", (tid,)
            )
        stored = str(rows[0][2]) if rows else _DUMMY
        ok = hmac.compare_digest(_digest(secret), stored)
        if not rows or not ok or rows[0][3] is not None:
            return None
        return Principal(tid, str(rows[0][0]), Role(str(rows[0][1])))

    # ----- claim metadata -----------------------------------------------------------------------------------
    def claim_meta(self, ledger_id: str) -> ClaimMeta | None:
        """The metadata of a claim created through the API, or None."""
        with self._lock:
            rows = self._store.execute(
                f"SELECT id, tenant, label, fingerprint FROM {CLAIM_TABLE} WHERE id = ?", (ledger_id,)
            )
        if not rows:
            return None
        r = rows[0]
        return ClaimMeta(str(r[0]), str(r[1]), None if r[2] is None else str(r[2]), str(r[3]))

    def put_claim_meta(self, meta: ClaimMeta) -> ClaimMeta:
        """Record a claim's metadata unless a row exists already; return the row that is stored now."""
        with self._lock:
            st = self._store
            st.begin_write()
            try:
                rows = st.execute(
                    f"SELECT id, tenant, label, fingerprint FROM {CLAIM_TABLE} WHERE id = ?", (meta.ledger_id,)
                )
                if rows:
                    st.rollback()
                    r = rows[0]
                    return ClaimMeta(str(r[0]), str(r[1]), None if r[2] is None else str(r[2]), str(r[3]))
                st.execute(
                    f"INSERT INTO {CLAIM_TABLE} (id, tenant, label, fingerprint, created_at) VALUES (?, ?, ?, ?, ?)",
                    (meta.ledger_id, meta.tenant, meta.label, meta.fingerprint, time.time()),
                )
                st.commit()
            except BaseException:
                st.rollback()
                raise
        return meta

    def forget_claim_meta(self, ledger_id: str, fingerprint: str) -> None:
        """Drop the metadata row of a create that failed (so the id stays free for another request)."""
        with self._lock:
            self._write(f"DELETE FROM {CLAIM_TABLE} WHERE id = ? AND fingerprint = ?", (ledger_id, fingerprint))

    def max_seq(self) -> int:
        """The ledger journal's last sequence number (0 when empty): one cheap query, for change detection."""
        with self._lock:
            rows = self._store.execute("SELECT MAX(seq) FROM dpf_journal")
        return int(rows[0][0]) if rows and rows[0][0] is not None else 0

    def labels(self, tenant: str) -> Mapping[str, str | None]:
        """Ledger id → label of every claim of ``tenant`` created through the API."""
        with self._lock:
            rows = self._store.execute(f"SELECT id, label FROM {CLAIM_TABLE} WHERE tenant = ?", (tenant,))
        return {str(r[0]): None if r[1] is None else str(r[1]) for r in rows}

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._store.close()
