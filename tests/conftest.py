"""Fixtures shared by several test modules."""

from __future__ import annotations

# `url`: a fresh SQL ledger URL per test (a SQLite file, or a PostgreSQL schema when the server's URL is set).
from sql_ledger_support import url  # noqa: F401
