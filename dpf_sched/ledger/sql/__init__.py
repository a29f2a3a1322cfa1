"""Durable SQL ledgers: SQLite (embedded default, one file) and PostgreSQL (many processes on many hosts).

Open one by URL with :func:`open_ledger`:

* ``sqlite:///relative/path.db``, ``sqlite:////absolute/path.db``, ``sqlite:///:memory:``, or a plain file path;
  query options ``synchronous=full|normal`` and ``lock_timeout=SECONDS`` (bound on a wait for another writer);
* ``postgresql://user@host:port/dbname?schema=NAME`` (``postgres://`` too); ``schema`` selects the PostgreSQL
  schema holding the tables (default ``public``); ``lock_timeout``, ``idle_in_transaction_timeout`` and
  ``statement_timeout`` (seconds) bound the session's waits; every other parameter goes to libpq.

See ``docs/ledger.md`` for the schema, transactions, durability, locking, idempotency, audit and migration.
"""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

from dpf_sched.composition import Composition
from dpf_sched.errors import InvalidParameterError
from dpf_sched.ledger.sql.ledger import (
    AuditReport,
    SqlLedger,
    apply_entry,
    composition_descriptor,
    composition_from_descriptor,
    eps_delta_of,
)
from dpf_sched.ledger.sql.schema import SCHEMA_VERSION
from dpf_sched.ledger.sql.stores import LOCK_TIMEOUT, PostgresStore, SqliteStore, Store

#: PostgreSQL URL options that bound the waits of a session (seconds; see :class:`PostgresStore`).
_PG_BOUNDS = ("lock_timeout", "idle_in_transaction_timeout", "statement_timeout")


def _seconds_option(url: str, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise InvalidParameterError(f"URL option {name} must be a number of seconds > 0, got {text!r} in {url!r}")
    return value


def open_store(url: str, *, create: bool = True) -> Store:
    """The store a ledger URL names (see the module docstring)."""
    if not isinstance(url, str) or not url:
        raise InvalidParameterError(f"ledger URL must be a non-empty string, got {url!r}")
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("postgresql", "postgres"):
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        schema = query.pop("schema", None)
        # quote, not urlencode's default quote_plus: libpq reads "+" as a plus sign, not a space (options=-c a=b).
        bounds = {k: _seconds_option(url, k, query.pop(k)) for k in _PG_BOUNDS if k in query}
        conninfo = urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urlencode(query, quote_via=quote), parts.fragment)
        )
        return PostgresStore(conninfo, schema=schema, create=create, **bounds)
    if scheme == "sqlite":
        path = parts.path[1:] if parts.path.startswith("/") else parts.path
        if parts.netloc:
            raise InvalidParameterError(f"a sqlite URL has no host: use sqlite:///path, got {url!r}")
        if not path:
            raise InvalidParameterError(f"sqlite URL without a path: {url!r}")
        query = dict(parse_qsl(parts.query))
        unknown = set(query) - {"synchronous", "lock_timeout"}
        if unknown:
            raise InvalidParameterError(f"unknown sqlite URL options {sorted(unknown)} in {url!r}")
        wait = _seconds_option(url, "lock_timeout", query["lock_timeout"]) if "lock_timeout" in query else LOCK_TIMEOUT
        return SqliteStore(path, create=create, synchronous=query.get("synchronous", "full"), busy_timeout=wait)
    if scheme and len(scheme) > 1:  # "C:" is a Windows drive, not a scheme
        raise InvalidParameterError(f"unsupported ledger URL scheme {parts.scheme!r} in {url!r}: use sqlite/postgresql")
    return SqliteStore(url, create=create)


def open_ledger(
    url: str,
    composition: Composition | None = None,
    *,
    create: bool = True,
    grant_timeout: float | None = 0.0,
    replay: bool = True,
) -> SqlLedger:
    """Open (or, with ``create`` and a ``composition``, create) the SQL ledger at ``url``.

    ``replay=False`` defers the journal's replay (see :class:`SqlLedger`): the audit opens a ledger that way.
    """
    return SqlLedger(
        open_store(url, create=create), composition, create=create, grant_timeout=grant_timeout, replay=replay
    )


__all__ = [
    "SCHEMA_VERSION",
    "AuditReport",
    "PostgresStore",
    "SqlLedger",
    "SqliteStore",
    "Store",
    "apply_entry",
    "composition_descriptor",
    "composition_from_descriptor",
    "eps_delta_of",
    "open_ledger",
    "open_store",
]
