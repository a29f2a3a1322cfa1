"""The SQL ledger's schema: one set of tables for SQLite and PostgreSQL, its version, and forward migrations.

Tables (``{blob}`` is ``BLOB`` on SQLite and ``BYTEA`` on PostgreSQL, ``{real}`` an IEEE float64 column):

* ``dpf_schema_version`` — one row per applied schema version; the highest is the database's version.
* ``dpf_meta`` — key/value: the application tag (a database without it is foreign) and the composition.
* ``dpf_journal`` — the append-only journal: ``seq`` 1, 2, 3, … without gaps, the operation, its arguments as
  JSON (floats written with ``repr``, which round-trips float64 exactly), and the optional client request id
  (unique: a retried request is applied once).
* ``dpf_blocks`` / ``dpf_claims`` — the current state, derivable from the journal; budget rows are stored as
  little-endian float64 bytes (exact), written in the same transaction as the journal entry that changed them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: The schema version this library writes and reads.
SCHEMA_VERSION = 1
#: The ``dpf_meta`` application tag that marks a database as a dpf_sched ledger.
APPLICATION = "dpf_sched-ledger"
#: Every table of the schema.
TABLES = ("dpf_schema_version", "dpf_meta", "dpf_journal", "dpf_blocks", "dpf_claims")

_DDL = (
    "CREATE TABLE dpf_schema_version (version INTEGER NOT NULL PRIMARY KEY, applied_at {real} NOT NULL)",
    "CREATE TABLE dpf_meta (key TEXT NOT NULL PRIMARY KEY, value TEXT NOT NULL)",
    """CREATE TABLE dpf_journal (
        seq BIGINT NOT NULL PRIMARY KEY,
        op TEXT NOT NULL,
        payload TEXT NOT NULL,
        request_id TEXT UNIQUE,
        recorded_at {real} NOT NULL
    )""",
    """CREATE TABLE dpf_blocks (
        idx BIGINT NOT NULL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        created {real} NOT NULL,
        attributes TEXT NOT NULL,
        guarantee TEXT,
        capacity {blob} NOT NULL,
        locked {blob} NOT NULL,
        unlocked {blob} NOT NULL,
        allocated {blob} NOT NULL,
        consumed {blob} NOT NULL,
        unlocked_fraction {real} NOT NULL,
        retired INTEGER NOT NULL,
        seq BIGINT NOT NULL
    )""",
    """CREATE TABLE dpf_claims (
        pos BIGINT NOT NULL PRIMARY KEY,
        id TEXT NOT NULL UNIQUE,
        owner TEXT,
        arrival {real} NOT NULL,
        timeout {real},
        weight {real} NOT NULL,
        blocks TEXT NOT NULL,
        demand {blob} NOT NULL,
        state TEXT NOT NULL,
        granted_at {real},
        decided_at {real},
        reason TEXT,
        remaining {blob} NOT NULL,
        consumed {blob} NOT NULL,
        seq BIGINT NOT NULL
    )""",
)


def ddl(blob: str, real: str) -> list[str]:
    """The CREATE statements of the current schema for one dialect's binary and float64 type names."""
    return [s.format(blob=blob, real=real) for s in _DDL]


class Executor(Protocol):
    """What a migration step needs: run one statement inside the migrating transaction."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` with ``?`` placeholders; return the rows (empty for statements without results)."""


#: Forward migrations: ``MIGRATIONS[v]`` turns a version-``v`` database into version ``v + 1``, inside the one
#: transaction that also records the new version. Empty while there is only version 1; a change of schema adds
#: its step here and raises :data:`SCHEMA_VERSION`.
MIGRATIONS: dict[int, Callable[[Executor], None]] = {}
