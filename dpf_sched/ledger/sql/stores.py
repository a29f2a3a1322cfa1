"""Storage connections of the SQL ledger: SQLite (stdlib) and PostgreSQL (psycopg 3), behind one small seam.

A :class:`Store` runs statements written with ``?`` placeholders, opens *write transactions* that are
serialised across every process using the database (so a write sees every earlier commit and the journal's
``seq`` grows without gaps), and holds the *grant lease*: the right to grant, which one scheduler loop at a time
may hold.

* SQLite: writers are serialised by an OS lock (``flock``) on ``<db>-write.lock`` (``<db>``: the database's real
  path, symlinks resolved, so every path to one file finds the same locks) and then ``BEGIN IMMEDIATE``
  (SQLite's own write lock, with a busy timeout, as the backstop). The kernel wakes a waiting writer at once,
  where SQLite's busy handler sleeps and retries; that keeps the tail latency low with many processes. The
  grant lease is an ``flock`` on ``<db>-grant.lock``, released by the kernel when its holder dies. The database
  runs in WAL mode with ``synchronous=FULL`` by default: each commit is fsynced before it is acknowledged.
* PostgreSQL: a write transaction takes ``pg_advisory_xact_lock`` (released at commit or rollback); the grant
  lease is a session-level ``pg_advisory_lock``, released when the holder's connection ends. Their keys are 64 bits
  of SHA-256 over the lock's purpose and the schema (:func:`advisory_key`).

Driver errors become :class:`~dpf_sched.errors.LedgerStorageError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import sqlite3
import struct
import time
from abc import ABC, abstractmethod
from typing import Any

from dpf_sched.errors import InvalidParameterError, LedgerStorageError

logger = logging.getLogger(__name__)

#: What the two PostgreSQL advisory locks of a ledger are for (hashed with the schema into the lock's key).
_PG_WRITE_LOCK = "write"
_PG_GRANT_LOCK = "grant"
#: Poll period while waiting for the grant lease.
_POLL_S = 0.02
#: What the sqlite3 module raises on a damaged file: its own errors, and ``UnicodeDecodeError`` when SQLite's
#: error message (which quotes the damaged schema text) or a text value is not valid UTF-8.
_SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)


class Store(ABC):
    """One connection to a ledger database (not shared between threads or processes)."""

    dialect: str
    blob: str
    real: str

    @abstractmethod
    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run one statement (``?`` placeholders); return its rows (empty when it returns none)."""

    @abstractmethod
    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        """Run one statement for each parameter tuple."""

    @abstractmethod
    def begin_write(self) -> None:
        """Start a write transaction, waiting for every other writer to finish first."""

    @abstractmethod
    def begin_read(self) -> None:
        """Start a read transaction that sees one consistent snapshot."""

    @abstractmethod
    def commit(self) -> None:
        """Commit (durably) and end the transaction."""

    @abstractmethod
    def rollback(self) -> None:
        """Roll back and end the transaction; never raises."""

    @abstractmethod
    def table_names(self) -> set[str]:
        """Names of the tables the ledger's namespace holds (the file, or the PostgreSQL schema)."""

    @abstractmethod
    def try_grant_lease(self) -> bool:
        """Take the grant lease if nobody holds it; True when this connection holds it now."""

    @abstractmethod
    def release_grant_lease(self) -> None:
        """Give the grant lease back (no-op when not held)."""

    @abstractmethod
    def close(self) -> None:
        """Close the connection (gives the grant lease back)."""

    @abstractmethod
    def describe(self) -> str:
        """Where the ledger lives, for messages."""

    def after_create(self) -> None:  # noqa: B027 - optional hook
        """Called once the schema exists (SQLite switches to WAL here, never on a file it does not own)."""

    def acquire_grant_lease(self, timeout: float | None) -> bool:
        """Take the grant lease, waiting up to ``timeout`` seconds (``None``: forever); False on time-out."""
        deadline = None if timeout is None else time.monotonic() + max(timeout, 0.0)
        while True:
            if self.try_grant_lease():
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)


def advisory_key(purpose: str, schema: str) -> tuple[int, int]:
    """The PostgreSQL advisory-lock key of a ledger's ``purpose`` lock (``"write"``, ``"grant"``) in ``schema``.

    64 bits of SHA-256 over the purpose and the schema name, as the two signed 32-bit halves that the two-key form
    ``pg_advisory_lock(int4, int4)`` takes. Advisory locks are per database, so the schema names the ledger; the
    key used to be ``crc32(schema)`` (31 bits), and distinct schemas collided (``tenant3985819`` and
    ``tenant4420602``): a service on one waited as a follower for ever while the other led. With a
    cryptographic 64-bit key a collision among n ledgers of one database has probability about n²/2⁶⁵.
    """
    digest = hashlib.sha256(f"dpf_sched advisory lock\0{purpose}\0{schema}".encode()).digest()
    hi, lo = struct.unpack(">ii", digest[:8])
    return hi, lo


class _FileLock:
    """An exclusive ``flock`` on a side file; the kernel releases it when the process dies."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self, blocking: bool = True) -> bool:
        if self.fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            fd, self.fd = self.fd, None
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)


class SqliteStore(Store):
    """A SQLite database file (or ``:memory:``).

    Parameters
    ----------
    path
        The database file, or ``":memory:"`` (one connection only: no locking, no durability).
    create
        Create the file when it does not exist; otherwise a missing file is an error.
    synchronous
        ``"full"`` (default: every commit fsyncs the WAL before it returns, so an acknowledged operation
        survives a power loss) or ``"normal"`` (survives a crash of the process, not of the machine).
    busy_timeout
        Seconds SQLite itself waits for its write lock (a backstop: the side-file lock orders writers first).
    """

    dialect = "sqlite"
    blob = "BLOB"
    real = "REAL"

    def __init__(
        self, path: str, *, create: bool = True, synchronous: str = "full", busy_timeout: float = 60.0
    ) -> None:
        sync = str(synchronous).lower()
        if sync not in ("full", "normal"):
            raise InvalidParameterError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        self.path = str(path)
        self.memory = self.path == ":memory:"
        if not self.memory and not create and not os.path.exists(self.path):
            raise LedgerStorageError(f"no ledger database at {self.path}")
        if not self.memory and os.path.isdir(self.path):
            raise LedgerStorageError(f"{self.path} is a directory, not a ledger database")
        try:
            # check_same_thread=False: the HTTP service uses one connection from several worker threads, one
            # at a time under its own lock (the sqlite3 module is built thread-safe); nothing else changes.
            self.conn = sqlite3.connect(
                self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
            self.conn.execute(f"PRAGMA synchronous={sync.upper()}")
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            with contextlib.suppress(Exception):
                self.conn.close()
            raise LedgerStorageError(
                f"{self.path} is not a usable SQLite database (corrupted or not a database file): {e}"
            ) from e
        except sqlite3.Error as e:
            raise LedgerStorageError(f"cannot open SQLite database {self.path}: {e}") from e
        base = None if self.memory else self._lock_base()
        self._write_lock = None if base is None else _FileLock(base + "-write.lock")
        self._grant_lock = None if base is None else _FileLock(base + "-grant.lock")
        self._in_tx = False

    def _lock_base(self) -> str:
        """Where the lock side files live: beside the database *file*, whatever path reached it.

        The locks must be keyed on the file, not on the string that named it: a symlink, a relative path or
        ``dir/../db`` naming the same database must find the same locks, or two processes could both hold the
        grant lease (two leaders). The real path (symlinks resolved) names the file; an alias of its directory
        (a bind mount) reaches the same side files anyway. A file with several hard links has no single name,
        so it is refused: SQLite itself does not support it (its journal files are named after the path used,
        see "How To Corrupt An SQLite Database File", multiple links to the same file).
        """
        real = os.path.realpath(self.path)
        try:
            links = os.stat(real).st_nlink
        except OSError as e:
            self.conn.close()
            raise LedgerStorageError(f"cannot stat SQLite database {self.path}: {e}") from e
        if links > 1:
            self.conn.close()
            raise LedgerStorageError(
                f"{self.path} has {links} hard links: a SQLite ledger must have exactly one (SQLite does not support "
                "hard-linked databases, and the locks that allow a single leader are keyed on the file's name); "
                "use a symbolic link or copy the file"
            )
        return real

    def describe(self) -> str:
        return f"sqlite:///{self.path}"

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            return self.conn.execute(sql, params).fetchall()
        except _SQLITE_ERRORS as e:
            raise LedgerStorageError(f"{self.describe()}: {e}") from e

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            self.conn.executemany(sql, rows)
        except _SQLITE_ERRORS as e:
            raise LedgerStorageError(f"{self.describe()}: {e}") from e

    def begin_write(self) -> None:
        if self._write_lock is not None:
            self._write_lock.acquire()
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException as e:
            if self._write_lock is not None:
                self._write_lock.release()
            if isinstance(e, _SQLITE_ERRORS):
                raise LedgerStorageError(f"{self.describe()}: cannot start a write transaction: {e}") from e
            raise
        self._in_tx = True

    def begin_read(self) -> None:
        self.execute("BEGIN")
        self._in_tx = True

    def commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except _SQLITE_ERRORS as e:
            raise LedgerStorageError(f"{self.describe()}: commit failed: {e}") from e
        finally:
            self._end()

    def rollback(self) -> None:
        try:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
        except _SQLITE_ERRORS as e:
            logger.warning("rollback on %s failed: %s", self.describe(), e)
        finally:
            self._end()

    def _end(self) -> None:
        self._in_tx = False
        if self._write_lock is not None:
            self._write_lock.release()
            # flock is not fair: a writer that re-locks at once would win again and again while the others
            # starve. Yielding the CPU after each write lets a woken waiter run first (it bounds the tail).
            os.sched_yield()

    def table_names(self) -> set[str]:
        try:
            rows = self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall()
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:
            raise LedgerStorageError(
                f"{self.path} is not a usable SQLite database (corrupted or not a database file): {e}"
            ) from e
        return {str(r[0]) for r in rows}

    def after_create(self) -> None:
        if self.memory:
            return
        mode = self.execute("PRAGMA journal_mode=WAL")
        if not mode or str(mode[0][0]).lower() != "wal":
            raise LedgerStorageError(f"{self.path}: cannot switch the database to WAL mode (got {mode})")

    def try_grant_lease(self) -> bool:
        return True if self._grant_lock is None else self._grant_lock.acquire(blocking=False)

    def release_grant_lease(self) -> None:
        if self._grant_lock is not None:
            self._grant_lock.release()

    def close(self) -> None:
        self.release_grant_lease()
        if self._write_lock is not None:
            self._write_lock.release()
        with contextlib.suppress(sqlite3.Error):
            self.conn.close()


class PostgresStore(Store):
    """A PostgreSQL database; the ledger's tables live in ``schema`` (default: the connection's ``public``).

    Parameters
    ----------
    conninfo
        A libpq connection string or ``postgresql://`` URL (without the ``schema`` parameter).
    schema
        The schema holding the ledger's tables; created when ``create`` and missing.
    create
        Create the schema when it does not exist.
    """

    dialect = "postgresql"
    blob = "BYTEA"
    real = "DOUBLE PRECISION"

    def __init__(self, conninfo: str, *, schema: str | None = None, create: bool = True) -> None:
        try:
            import psycopg
        except ImportError as e:  # pragma: no cover - depends on the extra
            raise LedgerStorageError("the PostgreSQL ledger needs psycopg 3: pip install 'dpf-sched[postgres]'") from e
        self._psycopg = psycopg
        self.conninfo = conninfo
        self.schema = schema or "public"
        if not self.schema.replace("_", "").isalnum() or not self.schema[0].isalpha():
            raise InvalidParameterError(f"schema name must be a plain identifier, got {self.schema!r}")
        self._write_key = advisory_key(_PG_WRITE_LOCK, self.schema)
        self._grant_key = advisory_key(_PG_GRANT_LOCK, self.schema)
        try:
            self.conn = psycopg.connect(conninfo, autocommit=True)
            if create:
                self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
            self.conn.execute(f'SET search_path TO "{self.schema}"')
        except psycopg.Error as e:
            raise LedgerStorageError(f"cannot connect to PostgreSQL ledger {self.describe()}: {e}") from e
        self._grant_held = False

    def describe(self) -> str:
        return f"postgresql (schema {self.schema})"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _fail(self, e: Exception, what: str) -> LedgerStorageError:
        if self.conn.closed or self.conn.broken:
            self._grant_held = False
            return LedgerStorageError(f"{self.describe()}: connection lost during {what}: {e}")
        return LedgerStorageError(f"{self.describe()}: {what} failed: {e}")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        try:
            cur = self.conn.execute(self._sql(sql), params, prepare=True)
            return cur.fetchall() if cur.description is not None else []
        except self._psycopg.Error as e:
            raise self._fail(e, "a statement") from e

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        try:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        except self._psycopg.Error as e:
            raise self._fail(e, "a statement") from e

    def begin_write(self) -> None:
        self.execute("BEGIN")
        try:
            self.execute("SELECT pg_advisory_xact_lock(?, ?)", self._write_key)
        except BaseException:
            self.rollback()
            raise

    def begin_read(self) -> None:
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")

    def commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except self._psycopg.Error as e:
            raise self._fail(e, "commit") from e

    def rollback(self) -> None:
        try:
            if not self.conn.closed and not self.conn.broken:
                self.conn.execute("ROLLBACK")
        except self._psycopg.Error as e:
            logger.warning("rollback on %s failed: %s", self.describe(), e)

    def table_names(self) -> set[str]:
        rows = self.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", (self.schema,))
        return {str(r[0]) for r in rows}

    def try_grant_lease(self) -> bool:
        if self._grant_held:
            return True
        rows = self.execute("SELECT pg_try_advisory_lock(?, ?)", self._grant_key)
        self._grant_held = bool(rows[0][0])
        return self._grant_held

    def release_grant_lease(self) -> None:
        if self._grant_held and not self.conn.closed and not self.conn.broken:
            with contextlib.suppress(LedgerStorageError):
                self.execute("SELECT pg_advisory_unlock(?, ?)", self._grant_key)
        self._grant_held = False

    def close(self) -> None:
        self._grant_held = False
        with contextlib.suppress(Exception):
            self.conn.close()
