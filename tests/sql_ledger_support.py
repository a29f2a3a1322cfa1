"""Shared helpers of the SQL ledger tests: ledger URLs for SQLite (temporary files) and PostgreSQL (a fresh schema
per test run, dropped at the end), and the skip reason when no PostgreSQL server is configured."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_ENV = "DPF_SCHED_TEST_POSTGRES_URL"
PG_URL = os.environ.get(PG_ENV)
PG_SKIP = pytest.mark.skipif(
    not PG_URL, reason=f"{PG_ENV} is unset: no PostgreSQL server to test against (.ci/run sets it)"
)


def pg_url(schema: str) -> str:
    """The test server's URL with ``schema`` selected."""
    assert PG_URL
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}"


def new_schema_name(prefix: str = "dpf_test") -> str:
    """A schema name no other run uses."""
    return f"{prefix}_{os.getpid()}_{uuid.uuid4().hex[:10]}"


def drop_schemas(names: list[str]) -> None:
    """Drop the schemas a test created (best effort)."""
    if not PG_URL or not names:
        return
    import psycopg

    with psycopg.connect(PG_URL, autocommit=True) as conn:
        for name in names:
            conn.execute(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')


class SchemaPool:
    """Hands out fresh PostgreSQL schema URLs and drops them all at the end."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def url(self) -> str:
        name = new_schema_name()
        self.names.append(name)
        return pg_url(name)

    def close(self) -> None:
        drop_schemas(self.names)


def schema_pool() -> Iterator[SchemaPool]:
    pool = SchemaPool()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=PG_SKIP)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh ledger URL per test: a SQLite file, or a PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'ledger.db'}"
        return
    pool = SchemaPool()
    try:
        yield pool.url()
    finally:
        pool.close()
