"""The SQL ledger's schema: one set of tables for SQLite and PostgreSQL, its version, and forward migrations.

Tables (``{blob}`` is ``BLOB`` on SQLite and ``BYTEA`` on PostgreSQL, ``{real}`` an IEEE float64 column):

* ``dpf_schema_version`` — one row per applied schema version; the highest is the database's version.
* ``dpf_meta`` — key/value: the application tag (a database without it is foreign) and the composition.
* ``dpf_journal`` — the append-only journal: ``seq`` 1, 2, 3, … without gaps, the operation, its arguments as
  JSON (floats written with ``repr``, which round-trips float64 exactly), and the optional client request id
  (unique: a retried request is applied once).
* ``dpf_blocks`` / ``dpf_claims`` — the current state, derivable from the journal; budget rows are stored as
  little-endian float64 bytes (exact), written in the same transaction as the journal entry that changed them.
* ``dpf_leases`` — one row per granted claim that has a lease: its length, its current deadline and the time of
  its last renewal. Written with the ``allocate`` and ``expire`` journal entries, and updated in place (without
  a journal entry) by each renewal: renewals move no budget, and journaling one every lease/3 seconds per job
  would make them most of the journal (docs/ledger.md, "Leases"). Added in schema version 2.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

#: The schema version this library writes and reads.
SCHEMA_VERSION = 2
#: The ``dpf_meta`` application tag that marks a database as a dpf_sched ledger.
APPLICATION = "dpf_sched-ledger"
#: Every table of the schema.
TABLES = ("dpf_schema_version", "dpf_meta", "dpf_journal", "dpf_blocks", "dpf_claims", "dpf_leases")

_LEASES = """CREATE TABLE dpf_leases (
        id TEXT NOT NULL PRIMARY KEY,
        lease {real} NOT NULL,
        deadline {real} NOT NULL,
        renewed_at {real} NOT NULL
    )"""

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
    _LEASES,
)


def ddl(blob: str, real: str) -> list[str]:
    """The CREATE statements of the current schema for one dialect's binary and float64 type names."""
    return [s.format(blob=blob, real=real) for s in _DDL]


class Executor(Protocol):
    """What a migration step needs: run one statement inside the migrating transaction."""

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run ``sql`` with ``?`` placeholders; return the rows (empty for statements without results)."""


def _v1_to_v2(ex: Executor) -> None:
    """Schema 2 adds the lease table (a version-1 ledger has no claim with a lease, so it starts empty).

    ``DOUBLE PRECISION`` is an IEEE float64 on PostgreSQL and has REAL affinity on SQLite.
    """
    ex.execute(_LEASES.format(real="DOUBLE PRECISION"))


#: Forward migrations: ``MIGRATIONS[v]`` turns a version-``v`` database into version ``v + 1``, inside the one
#: transaction that also records the new version; a change of schema adds its step here and raises
#: :data:`SCHEMA_VERSION`.
MIGRATIONS: dict[int, Callable[[Executor], None]] = {1: _v1_to_v2}
