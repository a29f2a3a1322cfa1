"""The SQL ledger: every operation one transaction and one journal entry; state derivable from the journal.

:class:`SqlLedger` keeps an in-memory mirror (a :class:`~dpf_sched.ledger.memory.MemoryLedger`) that is the
replay of the journal up to the last entry it has seen; the policies read the mirror's arrays. A mutating
operation, in one write transaction (serialised across processes by the store):

1. catches the mirror up with the journal entries other processes committed since (so the invariants are
   checked against the *current* database state),
2. applies the operation to the mirror, which validates it and refuses it with a typed error without changing
   anything (the transaction is then rolled back),
3. writes the changed block and claim rows and appends the journal entry (``seq`` = previous + 1),
4. commits; only then does the call return. A failure after step 2 rolls back and throws the mirror away (it is
   rebuilt from the journal at the next access), so memory never runs ahead of what is durable.

:meth:`SqlLedger.audit` replays the whole journal from scratch and compares it with the stored state and the
invariants. Reads catch the mirror up first (one cheap query when nothing is new).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from dpf_sched.block import Block, check_time
from dpf_sched.budget import AlphaGrid, Budget, EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition, Composition, RenyiComposition
from dpf_sched.errors import (
    CompositionMismatchError,
    DpfSchedError,
    GrantLeaseError,
    InvalidParameterError,
    InvalidStateError,
    LedgerStorageError,
    SchemaVersionError,
)
from dpf_sched.ledger.base import (
    BlockBudgets,
    ClaimRecord,
    ClaimState,
    ClaimStatus,
    FloatArray,
    IntArray,
    InvariantViolation,
    Ledger,
)
from dpf_sched.ledger.memory import MemoryLedger
from dpf_sched.ledger.sql.schema import APPLICATION, MIGRATIONS, SCHEMA_VERSION, TABLES, ddl
from dpf_sched.ledger.sql.stores import Store

logger = logging.getLogger(__name__)

T = TypeVar("T")


# ----- encoding -----------------------------------------------------------------------------------------------
def to_blob(row: NDArray[Any]) -> bytes:
    """A budget row (or rows) as little-endian float64 bytes: exact."""
    return np.ascontiguousarray(row, dtype="<f8").tobytes()


def from_blob(data: Any, width: int, what: str = "a budget row") -> FloatArray:
    """The rows stored by :func:`to_blob`, shape (n, width).

    A stored value that is not bytes (text or a number written into the column) or whose length is not a whole
    number of rows raises :class:`~dpf_sched.errors.LedgerStorageError` naming ``what``.
    """
    if isinstance(data, memoryview):
        data = data.tobytes()
    if not isinstance(data, (bytes, bytearray)):
        raise LedgerStorageError(f"{what} is not a budget row: the column holds {type(data).__name__} {data!r:.60}")
    if len(data) % (8 * width):
        raise LedgerStorageError(f"{what} is {len(data)} bytes, not a whole number of rows of {width} float64")
    return np.frombuffer(bytes(data), dtype="<f8").astype(np.float64).reshape(-1, width)


def _real(value: Any, what: str) -> float:
    """A stored REAL / DOUBLE PRECISION value; anything else (text, bytes written into it) is a storage error."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise LedgerStorageError(f"{what} is not a number: the column holds {type(value).__name__} {value!r:.60}")
    return float(value)


def _integer(value: Any, what: str) -> int:
    """A stored integer column (seq, idx, version); anything else is a storage error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise LedgerStorageError(f"{what} is not an integer: the column holds {type(value).__name__} {value!r:.60}")
    return value


def decode_payload(payload: Any) -> dict[str, Any]:
    """A journal entry's payload: a JSON object (text). Anything else raises ``LedgerStorageError``."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        raise LedgerStorageError(f"the payload is binary, not JSON text ({bytes(payload)!r:.60})")
    if not isinstance(payload, str):
        raise LedgerStorageError(f"the payload is {type(payload).__name__}, not JSON text")
    try:
        entry = json.loads(payload)
    except (ValueError, RecursionError) as e:
        raise LedgerStorageError(f"the payload is not valid JSON: {e}") from None
    if not isinstance(entry, dict):
        raise LedgerStorageError(f"the payload is a JSON {type(entry).__name__}, not an object")
    return entry


def replay_entry(mem: MemoryLedger, seq: int, op: Any, payload: Any) -> dict[str, Any]:
    """Decode and apply journal entry ``seq`` to ``mem``; return its payload.

    Any failure is a :class:`~dpf_sched.errors.LedgerStorageError` that names the entry. The entry is data
    read from storage, which a bug, a disk or a person may have damaged in any way (a string where a list of
    numbers belongs, a number too large for a float, nesting too deep for the parser), so every ``Exception``
    the decoding or the application raises means "this entry does not replay", never a traceback.
    """
    try:
        entry = decode_payload(payload)
        if not isinstance(op, str):
            raise LedgerStorageError(f"the operation is {type(op).__name__}, not text")
        apply_entry(mem, op, entry)
    except Exception as e:
        raise LedgerStorageError(f"journal entry {seq} ({op!r:.40}) does not replay: {e}") from e
    return entry


def composition_descriptor(comp: Composition) -> dict[str, Any]:
    """A JSON-able description of a composition, stored in ``dpf_meta``."""
    if isinstance(comp, RenyiComposition):
        return {"kind": "renyi", "orders": list(comp.grid.orders), "conversion": comp.conversion.value}
    if isinstance(comp, BasicComposition):
        return {"kind": "basic"}
    raise InvalidParameterError(f"a SQL ledger stores basic or Rényi compositions, got {type(comp).__name__}")


def composition_from_descriptor(desc: Mapping[str, Any]) -> Composition:
    """The composition a descriptor names."""
    if desc.get("kind") == "basic":
        return BasicComposition()
    if desc.get("kind") == "renyi":
        return RenyiComposition(AlphaGrid(tuple(float(a) for a in desc["orders"])), desc.get("conversion", "classic"))
    raise LedgerStorageError(f"unknown composition in the ledger's metadata: {desc!r}")


def _dumps(obj: Any) -> str:
    # allow_nan=False: only validated (finite) values are ever journaled.
    return json.dumps(obj, separators=(",", ":"), allow_nan=False, sort_keys=True)


def apply_entry(mem: MemoryLedger, op: str, payload: Mapping[str, Any]) -> None:
    """Apply one journal entry to a memory ledger (the replay of the journal is a sequence of these)."""
    comp = mem.composition
    value = comp.value
    if op == "add_block":
        g = payload["guarantee"]
        mem.add_block(
            Block(
                payload["id"],
                value(np.array(payload["capacity"], dtype=np.float64)),
                created=payload["created"],
                attributes=payload["attributes"],
                guarantee=None if g is None else EpsDelta(g[0], g[1]),
            )
        )
    elif op == "unlock":
        mem.unlock_to(np.array(payload["idx"], dtype=np.int64), np.array(payload["fractions"], dtype=np.float64))
    elif op == "retire":
        mem.retire(payload["block"])
    elif op == "add_claim":
        demand = {
            b: value(np.array(r, dtype=np.float64)) for b, r in zip(payload["blocks"], payload["demand"], strict=True)
        }
        mem.add_claim(
            Claim(
                payload["id"],
                demand,
                arrival=payload["arrival"],
                timeout=payload["timeout"],
                owner=payload["owner"],
                weight=payload["weight"],
                lease=payload.get("lease"),
            )
        )
    elif op == "allocate":
        mem.allocate(payload["claim"], payload["now"])
    elif op == "reject":
        mem.reject(payload["claim"], payload["now"], payload["reason"])
    elif op == "consume":
        amounts = payload["amounts"]
        mem.consume(
            payload["claim"],
            None if amounts is None else {b: value(np.array(r, dtype=np.float64)) for b, r in amounts.items()},
            payload["now"],
            request_id=payload.get("request_id"),
        )
    elif op == "release":
        mem.release(payload["claim"], payload["now"], request_id=payload.get("request_id"))
    elif op == "expire":
        # The deadline that lapsed (renewals are not journaled): the replay checks that it is no earlier than
        # the grant time + lease and no later than the expiry's time.
        mem.expire(payload["claim"], payload["now"], deadline=payload["deadline"])
    else:
        raise LedgerStorageError(f"unknown journal operation {op!r}")


#: The budget columns of ``dpf_blocks``, in the order the audit reads them.
_BUCKETS = ("capacity", "locked", "unlocked", "allocated", "consumed")


@dataclass(frozen=True)
class _StoredBlock:
    """One ``dpf_blocks`` row, decoded and type-checked (the audit's view of the stored state)."""

    idx: int
    id: str
    created: float
    rows: tuple[FloatArray, ...]  # capacity, locked, unlocked, allocated, consumed (one row each)
    fraction: float
    retired: int


@dataclass(frozen=True)
class AuditReport:
    """The result of :meth:`SqlLedger.audit`: what was checked and every discrepancy found."""

    where: str
    schema_version: int
    journal_entries: int
    blocks: int
    claims: int
    problems: tuple[str, ...]
    violations: tuple[InvariantViolation, ...]

    @property
    def ok(self) -> bool:
        """True when the journal replays, matches the stored state, and no invariant is broken."""
        return not self.problems and not self.violations

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "where": self.where,
            "ok": self.ok,
            "schema_version": self.schema_version,
            "journal_entries": self.journal_entries,
            "blocks": self.blocks,
            "claims": self.claims,
            "problems": list(self.problems),
            "violations": [str(v) for v in self.violations],
        }


class SqlLedger(Ledger):
    """A durable ledger on a :class:`~dpf_sched.ledger.sql.stores.Store` (SQLite or PostgreSQL).

    Parameters
    ----------
    store
        The open connection; the ledger owns it (:meth:`close` closes it).
    composition
        Required to create a new ledger; for an existing one it is read from the database (and, when given,
        must be the same).
    create
        Create the schema in an empty database; otherwise an empty database is an error.
    grant_timeout
        Seconds :meth:`allocate` waits for the grant lease held by another scheduler loop before it raises
        :class:`~dpf_sched.errors.GrantLeaseError` (``None``: wait forever).
    replay
        Replay the journal now (default), so that a journal entry that does not replay is reported at once as a
        :class:`~dpf_sched.errors.LedgerStorageError` naming it. ``False`` defers the replay to the first
        operation; :meth:`audit` never needs it, so ``dpf-sched ledger audit`` can list a broken entry as a
        problem instead of failing to open.

    One object per thread. Operations return only after their transaction has committed.
    """

    def __init__(
        self,
        store: Store,
        composition: Composition | None = None,
        *,
        create: bool = True,
        grant_timeout: float | None = 0.0,
        replay: bool = True,
    ) -> None:
        self._store = store
        self.grant_timeout = grant_timeout
        self._before_commit: Callable[[], None] | None = None  # test hook: runs inside the write transaction
        #: Called with (seq, op, payload) for every journal entry the mirror replays from the database, that is
        #: every entry this object did not write itself (other processes' operations, or the whole journal when
        #: the mirror is rebuilt: compare ``seq`` with the last one seen). The HTTP service's scheduler loop uses
        #: it to adopt claims, blocks and releases written elsewhere. It runs inside the read or write that
        #: caught up, so it must be quick and must not touch the ledger.
        self.observer: Callable[[int, str, Mapping[str, Any]], None] | None = None
        try:
            self.composition = self._open_schema(composition, create)
        except BaseException:
            store.close()
            raise
        self._mem = MemoryLedger(self.composition)
        self._seq = 0
        self._stale = False
        self._batch_depth = 0
        self._batch_failed = False
        self._batch_wrote = False
        if replay:
            try:
                self._sync()
            except BaseException:
                store.close()
                raise

    # ----- schema -------------------------------------------------------------------------------------------
    def _open_schema(self, composition: Composition | None, create: bool) -> Composition:
        st = self._store
        tables = st.table_names()
        ours = set(TABLES)
        if not tables & ours:
            if tables:
                raise LedgerStorageError(
                    f"{st.describe()} is a foreign database: it holds tables {sorted(tables)} but no dpf_sched ledger"
                )
            if not create:
                raise LedgerStorageError(f"{st.describe()} holds no ledger (create one with `dpf-sched ledger init`)")
            if composition is None:
                raise InvalidParameterError(f"{st.describe()} is empty: a composition is needed to create a ledger")
            self._create(composition)
            tables = st.table_names()
        if "dpf_meta" not in tables or "dpf_schema_version" not in tables:
            raise LedgerStorageError(
                f"{st.describe()}: not a dpf_sched ledger or an incomplete one (tables {sorted(tables)})"
            )
        meta = dict(self._meta())
        if meta.get("application") != APPLICATION:
            raise LedgerStorageError(f"{st.describe()} is a foreign database (application {meta.get('application')!r})")
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{st.describe()} has schema version {version}, newer than this library's {SCHEMA_VERSION}: "
                "upgrade dpf_sched to open it"
            )
        if version < SCHEMA_VERSION:
            self._migrate(version)
        missing = ours - st.table_names()
        if missing:
            raise LedgerStorageError(f"{st.describe()}: the ledger is missing tables {sorted(missing)}")
        try:
            stored = composition_from_descriptor(json.loads(meta["composition"]))
        except Exception as e:  # stored data, damaged in any way: a storage error, never a traceback
            raise LedgerStorageError(f"{st.describe()}: unreadable composition in the ledger's metadata: {e}") from e
        if composition is not None and composition_descriptor(composition) != composition_descriptor(stored):
            raise CompositionMismatchError(
                f"{st.describe()} is a {composition_descriptor(stored)} ledger, "
                f"not {composition_descriptor(composition)}"
            )
        return stored

    def _meta(self) -> list[tuple[Any, ...]]:
        return self._store.execute("SELECT key, value FROM dpf_meta")

    def schema_version(self) -> int:
        """The database's schema version (the highest recorded)."""
        rows = self._store.execute("SELECT MAX(version) FROM dpf_schema_version")
        if not rows or rows[0][0] is None:
            raise LedgerStorageError(f"{self._store.describe()}: the schema version table is empty")
        return _integer(rows[0][0], f"{self._store.describe()}: the schema version")

    def _create(self, composition: Composition) -> None:
        st = self._store
        desc = composition_descriptor(composition)
        st.begin_write()
        try:
            if not st.table_names() & set(TABLES):  # another process may have created it meanwhile
                for stmt in ddl(st.blob, st.real):
                    st.execute(stmt)
                st.execute(
                    "INSERT INTO dpf_schema_version (version, applied_at) VALUES (?, ?)", (SCHEMA_VERSION, time.time())
                )
                st.executemany(
                    "INSERT INTO dpf_meta (key, value) VALUES (?, ?)",
                    [("application", APPLICATION), ("composition", _dumps(desc)), ("created_at", repr(time.time()))],
                )
            st.commit()
        except BaseException:
            st.rollback()
            raise
        st.after_create()
        logger.info("created ledger %s (%s)", st.describe(), desc)

    def _migrate(self, version: int) -> None:
        """Run the forward migrations from ``version`` to :data:`SCHEMA_VERSION` in one transaction."""
        st = self._store
        st.begin_write()
        try:
            current = self.schema_version()
            for v in range(current, SCHEMA_VERSION):
                step = MIGRATIONS.get(v)
                if step is None:
                    raise SchemaVersionError(f"{st.describe()}: no migration from schema version {v} to {v + 1}")
                step(st)
                st.execute("INSERT INTO dpf_schema_version (version, applied_at) VALUES (?, ?)", (v + 1, time.time()))
                logger.info("migrated ledger %s to schema version %d", st.describe(), v + 1)
            st.commit()
        except BaseException:
            st.rollback()
            raise

    # ----- the mirror ---------------------------------------------------------------------------------------
    def _reset(self) -> None:
        self._mem = MemoryLedger(self.composition)
        self._seq = 0
        self._stale = False

    def _catch_up(self) -> None:
        """Apply the journal entries committed since the mirror's last one."""
        if self._stale:
            self._reset()
        rows = self._store.execute("SELECT seq, op, payload FROM dpf_journal WHERE seq > ? ORDER BY seq", (self._seq,))
        for seq, op, payload in rows:
            try:
                n = _integer(seq, f"the sequence number of the journal entry after {self._seq}")
                if n != self._seq + 1:
                    raise LedgerStorageError(f"journal gap: entry {n} follows {self._seq}")
                entry = replay_entry(self._mem, n, op, payload)
            except LedgerStorageError as e:
                self._stale = True
                raise LedgerStorageError(f"{self._store.describe()}: {e}") from e
            except BaseException:
                # Interrupted inside the replay (KeyboardInterrupt, MemoryError): the entry may be half applied.
                self._stale = True
                raise
            self._seq = n
            if self.observer is not None:
                self.observer(self._seq, str(op), entry)

    def _sync(self) -> MemoryLedger:
        self._catch_up()
        return self._mem

    def _write(
        self,
        run: Callable[[MemoryLedger], T],
        record: Callable[[T], tuple[str, dict[str, Any], str | None] | None],
        before: Callable[[Store], None] | None = None,
    ) -> T:
        """One write transaction: catch up, ``before``, ``run`` on the mirror, ``record`` the rows and journal, commit.

        ``record`` writes the changed rows (it may return ``None`` when nothing changed) and returns the
        journal entry (operation, payload, request id). Inside :meth:`batch` the transaction is the batch's: the
        operation is written but commits with the batch.
        """
        st = self._store
        in_batch = self._batch_depth > 0
        if in_batch:
            if self._batch_failed:
                raise LedgerStorageError(f"{st.describe()}: an earlier write of this batch failed; it was rolled back")
        else:
            st.begin_write()
        changed = False
        try:
            if not in_batch:
                self._catch_up()  # a batch caught up when it began and holds the write lock since
            if before is not None:
                before(st)
            try:
                result = run(self._mem)  # validates; a refusal (a typed error) changes nothing
            except DpfSchedError:
                raise
            except BaseException:
                # Interrupted inside the mirror's update (KeyboardInterrupt, MemoryError, a bug): part of it may
                # be written, so the mirror is thrown away below and rebuilt from the journal; no row is ever
                # written from a half-updated mirror.
                changed = True
                raise
            changed = True
            entry = record(result)
            if entry is None:
                if not in_batch:
                    st.rollback()
                return result
            op, payload, request_id = entry
            seq = self._seq + 1
            st.execute(
                "INSERT INTO dpf_journal (seq, op, payload, request_id, recorded_at) VALUES (?, ?, ?, ?, ?)",
                (seq, op, _dumps(payload), request_id, time.time()),
            )
            if not in_batch:
                if self._before_commit is not None:
                    self._before_commit()
                st.commit()
        except BaseException:
            if not in_batch:
                st.rollback()
                if changed:
                    self._stale = True  # the mirror ran ahead of what is durable: rebuild it from the journal
            elif changed or before is not None:
                # Part of this operation may be written: the whole batch goes (rolled back at once, so nothing
                # after this can commit by mistake), and the mirror is rebuilt from the journal.
                st.rollback()
                self._batch_failed = True
                self._stale = True
            # else: refused by the mirror before anything was written; the batch's earlier operations stand.
            raise
        self._seq = seq
        if in_batch:
            self._batch_wrote = True
        return result

    @contextlib.contextmanager
    def batch(self) -> Iterator[None]:
        """Run the write operations of the ``with`` body in **one** transaction, committed when the body ends.

        Each operation still validates against the mirror, writes its rows and appends its own journal entry
        (one entry per operation, ``seq`` consecutive), exactly as alone; only the commit (and its fsync) is
        shared. Nothing is visible to other connections, and nothing may be acknowledged, before the ``with``
        exits without error. An operation the mirror refuses raises and leaves the batch's earlier operations
        in place; a storage failure rolls the whole batch back (later operations in it raise, and so does the
        exit). An exception out of the body rolls the batch back. The write lock is held for the whole body, so
        keep it short (the scheduler loop applies one pass's decisions in it). Batches do not nest (an inner
        ``batch()`` joins the outer one).
        """
        if self._batch_depth > 0:
            yield
            return
        st = self._store
        st.begin_write()
        self._batch_depth = 1
        self._batch_failed = False
        self._batch_wrote = False
        try:
            self._catch_up()
            yield
            if self._batch_failed:
                raise LedgerStorageError(f"{st.describe()}: a write of this batch failed; the batch was rolled back")
            if self._batch_wrote:
                if self._before_commit is not None:
                    self._before_commit()
                st.commit()
            else:
                st.rollback()
        except BaseException:
            st.rollback()
            if self._batch_wrote:
                self._stale = True  # the mirror holds writes that were not committed: rebuild it
            raise
        finally:
            self._batch_depth = 0
            self._batch_failed = False
            self._batch_wrote = False

    # ----- row writers --------------------------------------------------------------------------------------
    def _block_state(self, i: int) -> tuple[Any, ...]:
        m = self._mem
        return (
            to_blob(m.locked[i]),
            to_blob(m.unlocked[i]),
            to_blob(m.allocated[i]),
            to_blob(m.consumed[i]),
            float(m.unlocked_fraction[i]),
            int(bool(m.retired_mask[i])),
        )

    def _put_blocks(self, indices: Sequence[int]) -> None:
        seq = self._seq + 1
        self._store.executemany(
            "UPDATE dpf_blocks SET locked = ?, unlocked = ?, allocated = ?, consumed = ?, unlocked_fraction = ?, "
            "retired = ?, seq = ? WHERE idx = ?",
            [(*self._block_state(i), seq, i) for i in sorted(set(indices))],
        )

    def _put_claim(self, claim_id: str) -> None:
        e = self._mem._entry(claim_id)
        self._store.execute(
            "UPDATE dpf_claims SET state = ?, granted_at = ?, decided_at = ?, reason = ?, remaining = ?, consumed = ?, "
            "seq = ? WHERE id = ?",
            (
                e.state.value,
                e.granted_at,
                e.decided_at,
                e.reason,
                to_blob(e.remaining),
                to_blob(e.consumed),
                self._seq + 1,
                claim_id,
            ),
        )

    def _put_claim_and_blocks(self, claim_id: str) -> None:
        self._put_claim(claim_id)
        self._put_blocks([int(i) for i in self._mem._entry(claim_id).idx])

    # ----- blocks -------------------------------------------------------------------------------------------
    def add_block(self, block: Block) -> int:
        attributes: dict[str, Any] = {}
        if isinstance(block, Block):
            try:
                attributes = json.loads(_dumps(dict(block.attributes)))
            except (TypeError, ValueError) as e:
                raise InvalidParameterError(f"block {block.id}: attributes must be JSON values: {e}") from None

        def record(i: int) -> tuple[str, dict[str, Any], None]:
            row = self._mem.capacity[i]
            g = block.guarantee
            self._store.execute(
                "INSERT INTO dpf_blocks (idx, id, created, attributes, guarantee, capacity, locked, unlocked, "
                "allocated, consumed, unlocked_fraction, retired, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    i,
                    block.id,
                    block.created,
                    _dumps(attributes),
                    None if g is None else _dumps([g.epsilon, g.delta]),
                    to_blob(row),
                    *self._block_state(i)[:5],
                    0,
                    self._seq + 1,
                ),
            )
            payload = {
                "id": block.id,
                "capacity": row.tolist(),
                "created": block.created,
                "attributes": attributes,
                "guarantee": None if g is None else [g.epsilon, g.delta],
            }
            return "add_block", payload, None

        return self._write(lambda m: m.add_block(block), record)

    def unlock_to(self, block_indices: Sequence[int] | IntArray, fractions: Sequence[float] | FloatArray) -> IntArray:
        def record(grew: IntArray) -> tuple[str, dict[str, Any], None] | None:
            if grew.size == 0:
                return None
            self._put_blocks(grew.tolist())
            fr = self._mem.unlocked_fraction[grew]
            # The blocks that grew and their new cumulative fractions: replaying this call gives the same rows.
            return "unlock", {"idx": grew.tolist(), "fractions": fr.tolist()}, None

        return self._write(lambda m: m.unlock_to(block_indices, fractions), record)

    def retire(self, block_id: str) -> None:
        was: list[bool] = []

        def run(m: MemoryLedger) -> None:
            i = m.block_index(block_id)
            was.append(bool(m.retired_mask[i]))
            m.retire(block_id)

        def record(_: None) -> tuple[str, dict[str, Any], None] | None:
            if was[0]:
                return None
            self._put_blocks([self._mem.block_index(block_id)])
            return "retire", {"block": block_id}, None

        self._write(run, record)

    def block(self, block_id: str) -> Block:
        return self._sync().block(block_id)

    def blocks(self) -> Iterator[Block]:
        return self._sync().blocks()

    def block_index(self, block_id: str) -> int:
        return self._sync().block_index(block_id)

    def budgets(self, block_id: str) -> BlockBudgets:
        return self._sync().budgets(block_id)

    # ----- read-only arrays ---------------------------------------------------------------------------------
    @property
    def n_blocks(self) -> int:
        return self._sync().n_blocks

    @property
    def capacity(self) -> FloatArray:
        return self._sync().capacity

    @property
    def locked(self) -> FloatArray:
        """(n_blocks, width) locked budget, read-only."""
        return self._sync().locked

    @property
    def unlocked(self) -> FloatArray:
        return self._sync().unlocked

    @property
    def allocated(self) -> FloatArray:
        """(n_blocks, width) allocated budget, read-only."""
        return self._sync().allocated

    @property
    def consumed(self) -> FloatArray:
        return self._sync().consumed

    @property
    def unlocked_fraction(self) -> FloatArray:
        return self._sync().unlocked_fraction

    @property
    def created(self) -> FloatArray:
        return self._sync().created

    @property
    def retired_mask(self) -> NDArray[np.bool_]:
        return self._sync().retired_mask

    # ----- claims -------------------------------------------------------------------------------------------
    def add_claim(
        self, claim: Claim, *, before: Callable[[Store], None] | None = None
    ) -> tuple[IntArray, FloatArray]:
        """Add a waiting claim (one transaction, one journal entry).

        ``before``, when given, runs inside the same write transaction, after the catch-up and before the claim
        is validated: it may write rows of its own (outside the ledger's tables: the HTTP service records the
        claim's request metadata there, so both commit or neither) or raise to refuse (nothing is written).
        """

        def record(result: tuple[IntArray, FloatArray]) -> tuple[str, dict[str, Any], None]:
            _, demand = result
            pos = self._seq + 1
            self._store.execute(
                "INSERT INTO dpf_claims (pos, id, owner, arrival, timeout, weight, blocks, demand, state, granted_at, "
                "decided_at, reason, remaining, consumed, seq) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    pos,
                    claim.id,
                    claim.owner,
                    claim.arrival,
                    claim.timeout,
                    claim.weight,
                    _dumps(list(claim.blocks)),
                    to_blob(demand),
                    ClaimState.WAITING.value,
                    None,
                    None,
                    None,
                    to_blob(np.zeros_like(demand)),
                    to_blob(np.zeros_like(demand)),
                    pos,
                ),
            )
            payload = {
                "id": claim.id,
                "blocks": list(claim.blocks),
                "demand": demand.tolist(),
                "arrival": claim.arrival,
                "timeout": claim.timeout,
                "owner": claim.owner,
                "weight": claim.weight,
            }
            if claim.lease is not None:
                payload["lease"] = claim.lease
            return "add_claim", payload, None

        return self._write(lambda m: m.add_claim(claim), record, before)

    def hold_grant_lease(self, timeout: float | None = None) -> None:
        """Take the right to grant (one scheduler loop at a time); wait up to ``timeout`` seconds.

        Raises :class:`~dpf_sched.errors.GrantLeaseError` when another loop keeps it. :meth:`allocate` takes
        the lease on its first call (waiting ``grant_timeout``); it is held until :meth:`close`.
        """
        t = self.grant_timeout if timeout is None else timeout
        if not self._store.acquire_grant_lease(t):
            raise GrantLeaseError(
                f"another scheduler loop holds the right to grant on {self._store.describe()} "
                f"(waited {t if t is not None else 'forever'} s); only one may grant at a time"
            )

    def release_grant_lease(self) -> None:
        """Give the right to grant back."""
        self._store.release_grant_lease()

    def allocate(self, claim_id: str, now: float) -> None:
        self.hold_grant_lease()

        def record(_: None) -> tuple[str, dict[str, Any], None]:
            self._put_claim_and_blocks(claim_id)
            e = self._mem._entry(claim_id)
            if e.claim.lease is not None and e.lease_deadline is not None:
                self._store.execute(
                    "INSERT INTO dpf_leases (id, lease, deadline, renewed_at) VALUES (?, ?, ?, ?)",
                    (claim_id, e.claim.lease, e.lease_deadline, e.granted_at),
                )
            return "allocate", {"claim": claim_id, "now": float(now)}, None

        self._write(lambda m: m.allocate(claim_id, now), record)

    def reject(self, claim_id: str, now: float, reason: str) -> None:
        def record(_: None) -> tuple[str, dict[str, Any], None]:
            self._put_claim(claim_id)
            return "reject", {"claim": claim_id, "now": float(now), "reason": str(reason)}, None

        self._write(lambda m: m.reject(claim_id, now, reason), record)

    def consume(
        self,
        claim_id: str,
        amounts: Mapping[str, Budget] | None = None,
        now: float = 0.0,
        *,
        request_id: str | None = None,
    ) -> None:
        retry: list[bool] = []

        def run(m: MemoryLedger) -> None:
            retry.append(request_id is not None and m.has_request(request_id))
            m.consume(claim_id, amounts, now, request_id=request_id)  # a retry: checked, then no effect

        def record(_: None) -> tuple[str, dict[str, Any], str | None] | None:
            if retry[0]:
                return None
            self._put_claim_and_blocks(claim_id)
            row = self.composition.row
            rows = None if amounts is None else {b: row(v).tolist() for b, v in amounts.items()}
            payload = {"claim": claim_id, "amounts": rows, "now": float(now), "request_id": request_id}
            return "consume", payload, request_id

        self._write(run, record)

    def release(self, claim_id: str, now: float = 0.0, *, request_id: str | None = None) -> None:
        retry: list[bool] = []

        def run(m: MemoryLedger) -> None:
            retry.append(request_id is not None and m.has_request(request_id))
            m.release(claim_id, now, request_id=request_id)

        def record(_: None) -> tuple[str, dict[str, Any], str | None] | None:
            if retry[0]:
                return None
            self._put_claim_and_blocks(claim_id)
            return "release", {"claim": claim_id, "now": float(now), "request_id": request_id}, request_id

        self._write(run, record)

    # ----- leases -------------------------------------------------------------------------------------------
    def _stored_deadline(self, claim_id: str) -> float:
        rows = self._store.execute("SELECT deadline FROM dpf_leases WHERE id = ?", (claim_id,))
        if not rows or rows[0][0] is None:
            raise LedgerStorageError(f"{self._store.describe()}: granted claim {claim_id} has a lease but no lease row")
        return float(rows[0][0])

    def renew(self, claim_id: str, now: float) -> float:
        """As :meth:`Ledger.renew`: one short write transaction that updates the claim's row of ``dpf_leases``.

        Not journaled (a renewal moves no budget; see docs/ledger.md, "Leases"), but committed (durably) before
        it returns, so a scheduler loop of another process, or a new leader, sees it.
        """
        st = self._store
        in_batch = self._batch_depth > 0
        if not in_batch:
            st.begin_write()
        try:
            if not in_batch:
                self._catch_up()
            m = self._mem
            e = m._entry(claim_id)  # an unknown claim first, as the memory ledger checks
            now = check_time("time", now)
            m._require_granted(e, "renew")
            lease = e.claim.lease
            if lease is None:
                if not in_batch:
                    st.rollback()
                return math.inf
            deadline = max(self._stored_deadline(claim_id), now + lease)
            st.execute("UPDATE dpf_leases SET deadline = ?, renewed_at = ? WHERE id = ?", (deadline, now, claim_id))
            if not in_batch:
                st.commit()
        except BaseException:
            if not in_batch:
                st.rollback()
            raise
        return deadline

    def lease_deadline(self, claim_id: str) -> float | None:
        """The claim's lease deadline as stored now (renewals by any process included)."""
        m = self._sync()
        e = m._entry(claim_id)
        if e.claim.lease is None or not e.state.was_granted:
            return None
        return self._stored_deadline(claim_id)

    def expire(self, claim_id: str, now: float) -> None:
        """As :meth:`Ledger.expire`; one transaction and one journal entry that records the deadline that lapsed.

        The deadline is read inside the write transaction, so a renewal committed before it wins (the claim is
        then not expired: :class:`~dpf_sched.errors.InvalidStateError`), and one after it finds the claim expired.
        """
        lapsed: list[float] = []

        def run(m: MemoryLedger) -> None:
            e = m._entry(claim_id)  # an unknown claim first, as the memory ledger checks
            check_time("time", now)
            m._require_granted(e, "expire")
            if e.claim.lease is None:
                raise InvalidStateError(f"claim {claim_id} has no lease; it cannot expire")
            lapsed.append(self._stored_deadline(claim_id))
            m.expire(claim_id, now, deadline=lapsed[0])

        def record(_: None) -> tuple[str, dict[str, Any], None]:
            self._put_claim_and_blocks(claim_id)
            self._store.execute("UPDATE dpf_leases SET deadline = ? WHERE id = ?", (lapsed[0], claim_id))
            return "expire", {"claim": claim_id, "now": float(now), "deadline": lapsed[0]}, None

        self._write(run, record)

    def has_request(self, request_id: str) -> bool:
        """True when a consume or release with this request id is in the ledger (committed)."""
        return self._sync().has_request(request_id)

    def state(self, claim_id: str) -> ClaimState:
        return self._sync().state(claim_id)

    def status(self, claim_id: str) -> ClaimStatus:
        return self._sync().status(claim_id)

    def claim(self, claim_id: str) -> ClaimRecord:
        record = self._sync().claim(claim_id)
        if record.lease_deadline is not None:  # the mirror knows the journal's deadline, not later renewals
            record = replace(record, lease_deadline=self._stored_deadline(claim_id))
        return record

    def claim_ids(self) -> Iterator[str]:
        return self._sync().claim_ids()

    # ----- audit --------------------------------------------------------------------------------------------
    def violations(self) -> list[InvariantViolation]:
        return self._sync().violations()

    @property
    def journal_length(self) -> int:
        """Number of journal entries the mirror has applied (after catching up)."""
        self._sync()
        return self._seq

    def audit(self) -> AuditReport:
        """Replay the whole journal from scratch; compare with the stored state and check every invariant.

        Read in one consistent snapshot. Problems are reported, never repaired. A damaged database (a journal
        entry that does not replay, a row whose columns hold the wrong type or a budget of the wrong length) is
        reported as problems, never raised; only a database that cannot be read at all raises
        :class:`~dpf_sched.errors.LedgerStorageError`.
        """
        st = self._store
        problems: list[str] = []
        st.begin_read()
        try:
            version = self.schema_version()
            journal = st.execute("SELECT seq, op, payload FROM dpf_journal ORDER BY seq")
            blocks = st.execute(
                "SELECT idx, id, created, capacity, locked, unlocked, allocated, consumed, unlocked_fraction, retired "
                "FROM dpf_blocks ORDER BY idx"
            )
            claims = st.execute(
                "SELECT pos, id, state, granted_at, decided_at, reason, demand, remaining, consumed "
                "FROM dpf_claims ORDER BY pos"
            )
            leases = st.execute("SELECT id, lease, deadline FROM dpf_leases ORDER BY id")
        finally:
            st.rollback()
        if version != SCHEMA_VERSION:
            problems.append(f"schema version {version}, expected {SCHEMA_VERSION}")
        mem = MemoryLedger(self.composition)
        for k, (seq, op, payload) in enumerate(journal, start=1):
            try:
                n = _integer(seq, f"the sequence number of journal entry #{k}")
                if n != k:
                    raise LedgerStorageError(f"journal entry {n} where {k} was expected (gap or reordering)")
                replay_entry(mem, n, op, payload)
            except LedgerStorageError as e:
                problems.append(str(e))
                problems.append(f"the replay stopped at journal entry {k}: later entries are not checked")
                break
        parsed, bad = self._parse_blocks(blocks)
        problems.extend(bad)
        problems.extend(self._compare_blocks(mem, parsed))
        problems.extend(self._compare_claims(mem, claims))
        problems.extend(self._compare_leases(mem, leases))
        violations = list(mem.violations()) + self._stored_violations(parsed, _throughput(mem))
        return AuditReport(
            where=st.describe(),
            schema_version=version,
            journal_entries=len(journal),
            blocks=len(blocks),
            claims=len(claims),
            problems=tuple(problems),
            violations=tuple(violations),
        )

    def _parse_blocks(self, rows: list[tuple[Any, ...]]) -> tuple[list[_StoredBlock | None], list[str]]:
        """The stored block rows, decoded; ``None`` (and a problem) for each row that cannot be decoded."""
        w = self.composition.width
        out: list[_StoredBlock | None] = []
        problems: list[str] = []
        for r in rows:
            where = f"stored block {r[1]!r:.60}"
            try:
                rows5 = [from_blob(r[k], w, f"{where}: {name}") for k, name in enumerate(_BUCKETS, start=3)]
                for name, arr in zip(_BUCKETS, rows5, strict=True):
                    if arr.shape != (1, w):
                        raise LedgerStorageError(f"{where}: {name} holds {arr.shape[0]} rows, not one")
                out.append(
                    _StoredBlock(
                        idx=_integer(r[0], f"{where}: idx"),
                        id=str(r[1]),
                        created=_real(r[2], f"{where}: created"),
                        rows=tuple(a[0] for a in rows5),
                        fraction=_real(r[8], f"{where}: unlocked_fraction"),
                        retired=_integer(r[9], f"{where}: retired"),
                    )
                )
            except LedgerStorageError as e:
                problems.append(str(e))
                out.append(None)
        return out, problems

    def _compare_blocks(self, mem: MemoryLedger, rows: list[_StoredBlock | None]) -> list[str]:
        out: list[str] = []
        ids = [b.id for b in mem.blocks()]
        stored = [r for r in rows if r is not None]
        if len(stored) < len(rows):
            return ["stored blocks could not all be decoded: their comparison with the journal is skipped"]
        if [r.id for r in stored] != ids or [r.idx for r in stored] != list(range(len(ids))):
            return [f"stored blocks {[r.id for r in stored]} ≠ journal's blocks {ids}"]
        arrays = {
            "capacity": mem.capacity,
            "locked": mem.locked,
            "unlocked": mem.unlocked,
            "allocated": mem.allocated,
            "consumed": mem.consumed,
        }
        for r in stored:
            i, bid = r.idx, r.id
            if r.created != float(mem.created[i]):
                out.append(f"block {bid}: stored creation time {r.created} ≠ journal's {mem.created[i]}")
            for name, row in zip(arrays, r.rows, strict=True):
                if not np.array_equal(row, arrays[name][i]):
                    out.append(f"block {bid}: stored {name} {row.tolist()} ≠ journal's {arrays[name][i].tolist()}")
            if r.fraction != float(mem.unlocked_fraction[i]):
                out.append(f"block {bid}: stored unlocked fraction {r.fraction} ≠ journal's {mem.unlocked_fraction[i]}")
            if bool(r.retired) != bool(mem.retired_mask[i]):
                out.append(f"block {bid}: stored retired={bool(r.retired)} ≠ journal's {bool(mem.retired_mask[i])}")
        return out

    def _compare_claims(self, mem: MemoryLedger, rows: list[tuple[Any, ...]]) -> list[str]:
        w = self.composition.width
        out: list[str] = []
        ids = list(mem.claim_ids())
        if [str(r[1]) for r in rows] != ids:
            return [f"stored claims ({len(rows)}) ≠ journal's claims ({len(ids)})"]
        for r in rows:
            cid = str(r[1])
            e = mem._entry(cid)
            seen = (r[2], r[3], r[4], r[5])
            want = (e.state.value, e.granted_at, e.decided_at, e.reason)
            if seen != want:
                shown = f"{seen!r:.200}"
                out.append(f"claim {cid}: stored (state, granted_at, decided_at, reason) {shown} ≠ journal's {want}")
            for k, name, arr in ((6, "demand", e.demand), (7, "remaining", e.remaining), (8, "consumed", e.consumed)):
                try:
                    stored = from_blob(r[k], w, f"claim {cid}: stored {name}")
                except LedgerStorageError as err:
                    out.append(str(err))
                    continue
                if stored.shape != arr.shape or not np.array_equal(stored, arr):
                    out.append(f"claim {cid}: stored {name} {stored.tolist()} ≠ journal's {np.asarray(arr).tolist()}")
        return out

    def _compare_leases(self, mem: MemoryLedger, rows: list[tuple[Any, ...]]) -> list[str]:
        """Every granted claim with a lease has a row with its lease; the stored deadline is no earlier than the
        journal's (grant time + lease: renewals only move it later), and an expired claim's is the one its
        expiry journaled."""
        out: list[str] = []
        stored = {str(r[0]): (r[1], r[2]) for r in rows}
        for cid in mem.claim_ids():
            e = mem._entry(cid)
            if e.claim.lease is None or not e.state.was_granted:
                continue
            row = stored.pop(cid, None)
            if row is None:
                out.append(f"claim {cid}: granted with a lease of {e.claim.lease} but has no lease row")
                continue
            lease, deadline = row
            if lease is None or float(lease) != e.claim.lease:
                out.append(f"claim {cid}: stored lease {lease} ≠ journal's {e.claim.lease}")
            want = e.lease_deadline
            assert want is not None
            if deadline is None or not math.isfinite(float(deadline)):
                out.append(f"claim {cid}: stored lease deadline {deadline} is not a time")
            elif e.state is ClaimState.EXPIRED and float(deadline) != want:
                out.append(f"claim {cid}: stored lease deadline {deadline} ≠ the one its expiry journaled ({want})")
            elif float(deadline) < want:
                out.append(f"claim {cid}: stored lease deadline {deadline} is earlier than its grant allows ({want})")
        for cid in stored:
            out.append(f"lease row for claim {cid}, which is not a granted claim with a lease in the journal")
        return out

    def _stored_violations(
        self, rows: list[_StoredBlock | None], through: np.ndarray[Any, Any]
    ) -> list[InvariantViolation]:
        """Invariants 1 and 2 on the stored rows themselves (independently of the journal).

        ``through`` is the demand that ever flowed through each block (granted claims): rounding error grows
        with it, not with what the buckets hold now, so the tolerance does too (as in ``MemoryLedger``).
        """
        out: list[InvariantViolation] = []
        for i, r in enumerate(rows):
            if r is None:
                out.append(InvariantViolation(1, f"stored block #{i}", "malformed budget rows"))
                continue
            cap, L, U, A, C = r.rows
            flow = through[i] if i < through.shape[0] else 0.0
            if not all(np.isfinite(x).all() for x in r.rows):
                out.append(InvariantViolation(1, f"stored block {r.id}", "a budget row holds NaN or infinity"))
                continue
            tol = 1e-9 * (cap + np.abs(L) + np.abs(U) + np.abs(A) + np.abs(C) + flow) + 1e-300
            if (np.abs(L + U + A + C - cap) > tol).any():
                out.append(
                    InvariantViolation(1, f"stored block {r.id}", "locked+unlocked+allocated+consumed ≠ capacity")
                )
            if not bool(self.composition.within((A + C)[None, :], cap[None, :])[0]):
                out.append(InvariantViolation(2, f"stored block {r.id}", "allocated+consumed exceeds the capacity"))
        return out

    # ----- life cycle ---------------------------------------------------------------------------------------
    def describe(self) -> str:
        """Where the ledger lives."""
        return self._store.describe()

    def close(self) -> None:
        """Close the connection (and give the grant lease back)."""
        self._store.close()

    def __enter__(self) -> SqlLedger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def eps_delta_of(budget: Budget, delta: float) -> EpsDelta | None:
    """The (ε, δ) guarantee of a Rényi budget at ``delta`` (``None`` when it gives none), for reports."""
    from dpf_sched.budget import RenyiCurve

    if not isinstance(budget, RenyiCurve):
        return budget if isinstance(budget, EpsDelta) else None
    try:
        eps = budget.to_eps_delta(delta)
    except DpfSchedError:
        return None
    return eps if math.isfinite(eps.epsilon) else None


def _throughput(mem: MemoryLedger) -> np.ndarray[Any, Any]:
    """Per block, what every claim ever granted on it booked there (its grant saturated at 2 × capacity,
    docs/ledger.md "Saturation"): the flow that rounding error scales with."""
    through = np.zeros_like(mem.capacity)
    for cid in mem.claim_ids():
        e = mem._entry(cid)
        if e.state not in (ClaimState.WAITING, ClaimState.REJECTED):
            np.add.at(through, e.idx, e.booked_remaining + e.booked_consumed)
    return through
