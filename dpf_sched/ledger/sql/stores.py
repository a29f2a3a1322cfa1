"""Storage connections of the SQL ledger: SQLite (stdlib) and PostgreSQL (psycopg 3), behind one small seam.

A :class:`Store` runs statements written with ``?`` placeholders, opens *write transactions* that are
serialised across every process using the database (so a write sees every earlier commit and the journal's
``seq`` grows without gaps), and holds the *grant lease*: the right to grant, which one scheduler loop at a time
may hold.

* SQLite: writers are serialised by an OS lock (``flock``) on ``<db>-write.lock`` (``<db>``: the database's real
  path, symlinks resolved, so every path to one file finds the same locks) and then ``BEGIN IMMEDIATE``
  (SQLite's own write lock, with a busy timeout, as the backstop). A waiting writer waits in the kernel's queue
  (woken at once on release) for at most ``busy_timeout``. The grant lease is an ``flock`` on
  ``<db>-grant.lock``, released by the kernel when its holder dies. The database runs in WAL mode with
  ``synchronous=FULL`` by default: each commit is fsynced before it is acknowledged.
* PostgreSQL: a write transaction takes ``pg_advisory_xact_lock`` (released at commit or rollback); the grant
  lease is a session-level ``pg_advisory_lock``, released when the holder's connection ends. Their keys are 64 bits
  of SHA-256 over the lock's purpose and the schema (:func:`advisory_key`). Every transaction
  states its isolation level (writes READ COMMITTED, reads REPEATABLE READ), whatever the server's default. Each
  session bounds its waits (``lock_timeout``, ``statement_timeout``) and is ended by the server when it idles
  inside a transaction (``idle_in_transaction_session_timeout``: a stalled writer cannot hold the write lock
  longer) or when its peer stops answering TCP keepalives. A lost connection is reopened, with backoff, by the
  next call outside a transaction (never inside one: that transaction is gone and its caller sees the error).

Every wait is bounded: a write that cannot get the write lock in time raises
:class:`~dpf_sched.errors.StorageTimeoutError`. Driver errors become :class:`~dpf_sched.errors.LedgerStorageError`.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import math
import os
import random
import sqlite3
import struct
import threading
import time
from abc import ABC, abstractmethod
from typing import Any

from dpf_sched.errors import InvalidParameterError, LedgerStorageError, StorageTimeoutError

logger = logging.getLogger(__name__)

#: What the two PostgreSQL advisory locks of a ledger are for (hashed with the schema into the lock's key).
_PG_WRITE_LOCK = "write"
_PG_GRANT_LOCK = "grant"
#: Poll period while waiting for the grant lease.
_POLL_S = 0.02
#: What the sqlite3 module raises on a damaged file: its own errors, and ``UnicodeDecodeError`` when SQLite's
#: error message (which quotes the damaged schema text) or a text value is not valid UTF-8.
_SQLITE_ERRORS = (sqlite3.Error, UnicodeDecodeError)
#: Default bound (seconds) on a wait for another writer's lock, both dialects: under the client's 30 s timeout.
LOCK_TIMEOUT = 10.0
#: PostgreSQL session bounds (seconds): a session idle inside a transaction longer than this is ended by the
#: server (its locks go with it); no statement runs longer than ``STATEMENT_TIMEOUT``.
IDLE_IN_TRANSACTION_TIMEOUT = 5.0
STATEMENT_TIMEOUT = 30.0
#: TCP keepalives on both ends of a PostgreSQL connection: a silent peer is declared dead after about
#: idle + interval × count seconds (10 + 5 × 3 = 25 s), which ends its session and frees its locks and lease.
KEEPALIVE_IDLE = 10
KEEPALIVE_INTERVAL = 5
KEEPALIVE_COUNT = 3
#: Seconds to wait for a new PostgreSQL connection.
CONNECT_TIMEOUT = 5
#: Reconnection backoff after a lost PostgreSQL connection: first retry at once, then doubling up to the cap.
RECONNECT_BACKOFF = 0.1
RECONNECT_BACKOFF_MAX = 5.0


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

    def bound_idle(self, seconds: float) -> None:  # noqa: B027 - optional hook
        """Ask the database to end this session when it idles longer than ``seconds`` (PostgreSQL only: SQLite's
        locks belong to the process, which the kernel alone can end)."""

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

    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool:
        """Take the lock; without ``blocking`` try once, otherwise wait up to ``timeout`` seconds (``None``:
        forever). False when it was not taken."""
        if self.fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            if blocking and timeout is None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            else:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            if not blocking:
                return False
            assert timeout is not None
            got = self._wait(timeout)
            if got is None:
                return False
            fd = got
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return True

    def _wait(self, timeout: float) -> int | None:
        """A blocking ``flock`` with a time limit: the descriptor holding the lock, or None after ``timeout``.

        A blocking ``flock`` cannot time out, and polling the non-blocking one would let a writer that re-locks
        at once starve the sleeping pollers; so a helper thread waits in the kernel's queue (woken at once on
        release, as before) on its own descriptor. If the caller gave up first, the helper unlocks and closes
        the descriptor as soon as it gets the lock (a stalled holder leaves one blocked helper per timed-out
        wait until it is resumed or killed).
        """
        got: list[int] = []
        gate = threading.Lock()
        cancelled = [False]
        done = threading.Event()

        def run() -> None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                done.set()
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:
                os.close(fd)
                done.set()
                return
            with gate:
                if cancelled[0]:
                    os.close(fd)  # closing the only descriptor of its open file releases the lock
                    return
                got.append(fd)
            done.set()

        threading.Thread(target=run, name="dpf-sched-flock-wait", daemon=True).start()
        done.wait(max(timeout, 0.0))
        with gate:
            if got:
                return got[0]
            cancelled[0] = True
            return None

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
        The bound (seconds) on a writer's wait for the side-file write lock, and on SQLite's own wait for its
        write lock (a backstop: the side-file lock orders writers first). A write that waits longer raises
        :class:`~dpf_sched.errors.StorageTimeoutError`.
    """

    dialect = "sqlite"
    blob = "BLOB"
    real = "REAL"

    def __init__(
        self, path: str, *, create: bool = True, synchronous: str = "full", busy_timeout: float = LOCK_TIMEOUT
    ) -> None:
        sync = str(synchronous).lower()
        if sync not in ("full", "normal"):
            raise InvalidParameterError(f"synchronous must be 'full' or 'normal', got {synchronous!r}")
        if not (isinstance(busy_timeout, int | float) and math.isfinite(busy_timeout) and busy_timeout > 0):
            raise InvalidParameterError(f"lock timeout must be a finite number of seconds > 0, got {busy_timeout!r}")
        self.busy_timeout = float(busy_timeout)
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
        if self._write_lock is not None and not self._write_lock.acquire(timeout=self.busy_timeout):
            raise StorageTimeoutError(
                f"{self.describe()}: another writer held the write lock for over {self.busy_timeout:g} s "
                "(stalled or stopped?); nothing was written"
            )
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException as e:
            if self._write_lock is not None:
                self._write_lock.release()
            if isinstance(e, sqlite3.OperationalError) and "locked" in str(e):
                raise StorageTimeoutError(f"{self.describe()}: the database stayed locked: {e}") from e
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
        A libpq connection string or ``postgresql://`` URL (without the ``schema`` parameter). Keepalive and
        ``connect_timeout`` parameters it names win over this class's defaults.
    schema
        The schema holding the ledger's tables; created when ``create`` and missing.
    create
        Create the schema when it does not exist (safe when several processes do it at once).
    lock_timeout
        Bound (seconds) on a wait for a lock (the write lock held by another writer):
        :class:`~dpf_sched.errors.StorageTimeoutError` after it.
    idle_in_transaction_timeout
        The server ends a session of this store that sits idle inside a transaction longer than this (a stalled
        or stopped writer), which frees the write lock for the others.
    statement_timeout
        Bound (seconds) on any one statement.

    A lost connection (server restart, failover, ``pg_terminate_backend``, an idle timeout) is reopened by the
    next call made outside a transaction: at once the first time, then with a backoff doubling from
    :data:`RECONNECT_BACKOFF` to :data:`RECONNECT_BACKOFF_MAX` seconds; a call in the backoff window raises
    :class:`~dpf_sched.errors.LedgerStorageError` at once. A transaction whose connection was lost is never
    continued on a new one: its statements fail until the caller rolls it back. The grant lease dies with the
    old session.
    """

    dialect = "postgresql"
    blob = "BYTEA"
    real = "DOUBLE PRECISION"

    def __init__(
        self,
        conninfo: str,
        *,
        schema: str | None = None,
        create: bool = True,
        lock_timeout: float = LOCK_TIMEOUT,
        idle_in_transaction_timeout: float = IDLE_IN_TRANSACTION_TIMEOUT,
        statement_timeout: float = STATEMENT_TIMEOUT,
    ) -> None:
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
        self.timeouts = {
            "lock_timeout": _seconds("lock_timeout", lock_timeout),
            "idle_in_transaction_session_timeout": _seconds("idle_in_transaction_timeout", idle_in_transaction_timeout),
            "statement_timeout": _seconds("statement_timeout", statement_timeout),
        }
        #: End this session when it idles (outside a transaction too) longer than this many seconds (None: never);
        #: the scheduling loop sets it so that a stopped leader loses its lease (see :meth:`bound_idle`).
        self.idle_session_timeout: float | None = None
        self._grant_held = False
        self._in_tx = False
        self._backoff = 0.0
        self._retry_at = 0.0
        try:
            self.conn = self._connect()
            if create:
                self._create_schema()
        except psycopg.Error as e:
            raise LedgerStorageError(f"cannot connect to PostgreSQL ledger {self.describe()}: {e}") from e

    def _connect(self) -> Any:
        """A new session with this store's settings: its schema, READ COMMITTED by default, bounded waits, and
        TCP keepalives on both ends (the client's unless the connection string sets them)."""
        psycopg = self._psycopg
        given = psycopg.conninfo.conninfo_to_dict(self.conninfo)
        defaults: dict[str, Any] = {
            "connect_timeout": CONNECT_TIMEOUT,
            "keepalives": 1,
            "keepalives_idle": KEEPALIVE_IDLE,
            "keepalives_interval": KEEPALIVE_INTERVAL,
            "keepalives_count": KEEPALIVE_COUNT,
        }
        extra = {k: v for k, v in defaults.items() if k not in given}
        conn = psycopg.connect(self.conninfo, autocommit=True, **extra)
        try:
            settings = [
                f'SET search_path TO "{self.schema}"',
                # Every transaction names its level too; this covers the single statements outside them.
                "SET default_transaction_isolation TO 'read committed'",
                *(f"SET {name} TO {int(v * 1000)}" for name, v in self.timeouts.items()),
                f"SET tcp_keepalives_idle TO {KEEPALIVE_IDLE}",
                f"SET tcp_keepalives_interval TO {KEEPALIVE_INTERVAL}",
                f"SET tcp_keepalives_count TO {KEEPALIVE_COUNT}",
            ]
            if self.idle_session_timeout is not None:
                settings.append(f"SET idle_session_timeout TO {int(self.idle_session_timeout * 1000)}")
            conn.execute("; ".join(settings))
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self) -> None:
        # CREATE SCHEMA IF NOT EXISTS is not safe against itself: two sessions that both find the schema missing
        # both insert it, and the later one fails on pg_namespace's unique index once the first commits. That
        # failure means the schema now exists, which is what was asked for.
        errors = self._psycopg.errors
        try:
            self.conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self.schema}"')
        except (errors.UniqueViolation, errors.DuplicateSchema):
            logger.debug("schema %s was created concurrently", self.schema)

    def bound_idle(self, seconds: float) -> None:
        """Have the server end this session once it has been idle ``seconds`` (now and after a reconnect).

        The scheduling loop runs at least every poll period, so only a stopped or partitioned leader idles that
        long: its session, and with it the grant lease, ends, and another process can take over.
        """
        if self.conn.info.server_version < 140000:
            logger.warning("PostgreSQL before 14 has no idle_session_timeout: a stopped leader keeps its lease")
            return
        self.idle_session_timeout = _seconds("idle session timeout", seconds)
        self.execute(f"SET idle_session_timeout TO {int(seconds * 1000)}")

    def describe(self) -> str:
        return f"postgresql (schema {self.schema})"

    def _sql(self, sql: str) -> str:
        return sql.replace("?", "%s")

    def _lost(self) -> bool:
        return bool(self.conn.closed or self.conn.broken)

    def _live(self) -> None:
        """Reopen a lost connection (outside a transaction only), with backoff between failed attempts."""
        if not self._lost():
            return
        self._grant_held = False
        if self._in_tx:
            raise LedgerStorageError(f"{self.describe()}: connection lost inside a transaction; it was rolled back")
        now = time.monotonic()
        if now < self._retry_at:
            raise LedgerStorageError(
                f"{self.describe()}: connection lost; reconnecting in {self._retry_at - now:.2f} s"
            )
        try:
            self.conn = self._connect()
        except self._psycopg.Error as e:
            self._backoff = min(max(self._backoff * 2.0, RECONNECT_BACKOFF), RECONNECT_BACKOFF_MAX)
            self._retry_at = time.monotonic() + self._backoff * random.uniform(0.5, 1.0)
            raise LedgerStorageError(f"{self.describe()}: connection lost; reconnecting failed: {e}") from e
        self._backoff = 0.0
        logger.warning("reconnected to PostgreSQL ledger %s", self.describe())

    def _fail(self, e: Exception, what: str) -> LedgerStorageError:
        errors = self._psycopg.errors
        if self._lost():
            self._grant_held = False
            return LedgerStorageError(f"{self.describe()}: connection lost during {what}: {e}")
        if isinstance(e, errors.LockNotAvailable | errors.QueryCanceled):
            return StorageTimeoutError(f"{self.describe()}: {what} timed out (bounded wait): {e}")
        return LedgerStorageError(f"{self.describe()}: {what} failed: {e}")

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        self._live()
        try:
            cur = self.conn.execute(self._sql(sql), params, prepare=True)
            return cur.fetchall() if cur.description is not None else []
        except self._psycopg.Error as e:
            raise self._fail(e, "a statement") from e

    def executemany(self, sql: str, rows: list[tuple[Any, ...]]) -> None:
        self._live()
        try:
            with self.conn.cursor() as cur:
                cur.executemany(self._sql(sql), rows)
        except self._psycopg.Error as e:
            raise self._fail(e, "a statement") from e

    def begin_write(self) -> None:
        # The level is stated, never inherited: under a REPEATABLE READ default the snapshot would be taken by the
        # lock statement *before* it waits, and the catch-up would miss the previous writer's commit.
        self.execute("BEGIN ISOLATION LEVEL READ COMMITTED READ WRITE")
        self._in_tx = True
        try:
            self.execute("SELECT pg_advisory_xact_lock(?, ?)", self._write_key)
        except BaseException:
            self.rollback()
            raise

    def begin_read(self) -> None:
        self.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        self._in_tx = True

    def commit(self) -> None:
        try:
            self.conn.execute("COMMIT")
        except self._psycopg.Error as e:
            raise self._fail(e, "commit") from e
        finally:
            self._in_tx = False

    def rollback(self) -> None:
        try:
            if not self._lost():
                self.conn.execute("ROLLBACK")
        except self._psycopg.Error as e:
            logger.warning("rollback on %s failed: %s", self.describe(), e)
        finally:
            self._in_tx = False

    def table_names(self) -> set[str]:
        rows = self.execute("SELECT table_name FROM information_schema.tables WHERE table_schema = ?", (self.schema,))
        return {str(r[0]) for r in rows}

    def try_grant_lease(self) -> bool:
        if self._grant_held and not self._lost():
            return True
        rows = self.execute("SELECT pg_try_advisory_lock(?, ?)", self._grant_key)
        self._grant_held = bool(rows[0][0])
        return self._grant_held

    def release_grant_lease(self) -> None:
        if self._grant_held and not self._lost():
            with contextlib.suppress(LedgerStorageError):
                self.execute("SELECT pg_advisory_unlock(?, ?)", self._grant_key)
        self._grant_held = False

    def close(self) -> None:
        self._grant_held = False
        self._in_tx = False
        with contextlib.suppress(Exception):
            self.conn.close()


def _seconds(name: str, value: float) -> float:
    if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
        raise InvalidParameterError(f"{name} must be a finite number of seconds > 0, got {value!r}")
    return float(value)
