"""Damaged ledger databases give a typed error or a listed audit problem, never a traceback (issue 14 finding 4).

A real ledger (blocks, unlocks, grants, partial and full consumptions, a release, a rejection, a retirement) is
damaged in a fresh copy each time, then opened three ways:

* ``open_ledger(url, create=False)`` and, when it opens, ``audit()``;
* ``open_service_ledger(url)``, as ``dpf-sched serve`` opens it;
* ``dpf-sched ledger audit --db URL`` (click's runner, in process): exit 0, 1 (problems listed) or 2 (``error:``).

Each must end in success or a :class:`~dpf_sched.errors.DpfSchedError` (``LedgerStorageError`` for damage), and
the CLI must never let another exception out. The damage:

* the cases of the finding, by hand: a wrong-length budget blob, text in a blob and in a real column, a 3-float
  row, a journal payload whose ``amounts`` is a string, and more (SQLite and PostgreSQL, where the column type
  allows it);
* random column rewrites (a seeded generator of hostile values into a random row and column of every table);
* random byte flips of the SQLite file (1 to 8 flipped bytes anywhere in it), with the witnesses of the
  ``UnicodeDecodeError`` the ``PRAGMA`` used to raise pinned.

The random campaigns have pinned seeds. By default they run ``DPF_SCHED_CORRUPTION_ROUNDS`` (default 500) column
rewrites and as many byte flips on SQLite, 1,000 in all (about 20 s on the 2-core test machine); set the variable
higher for a longer campaign. PostgreSQL runs the hand cases and 100 random column rewrites.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import sqlite3
import struct
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from sql_ledger_support import PG_SKIP, PG_URL, SchemaPool

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.cli import main
from dpf_sched.composition import BasicComposition
from dpf_sched.errors import DpfSchedError
from dpf_sched.ledger.sql import open_ledger

ROUNDS = int(os.environ.get("DPF_SCHED_CORRUPTION_ROUNDS", "500"))

#: Each table's key column (to address one row) and its other columns.
TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "dpf_schema_version": ("version", ("applied_at",)),
    "dpf_meta": ("key", ("value",)),
    "dpf_journal": ("seq", ("op", "payload", "request_id", "recorded_at")),
    "dpf_blocks": (
        "idx",
        ("id", "created", "attributes", "guarantee", "capacity", "locked", "unlocked", "allocated", "consumed",
         "unlocked_fraction", "retired", "seq"),
    ),
    "dpf_claims": (
        "pos",
        ("id", "owner", "arrival", "timeout", "weight", "blocks", "demand", "state", "granted_at", "decided_at",
         "reason", "remaining", "consumed", "seq"),
    ),
}


def build_ledger(url: str) -> None:
    """A small ledger whose journal holds every operation."""
    with open_ledger(url, BasicComposition()) as led:
        led.add_block(Block("b0", EpsDelta(1.0, 1e-6), created=0.0, attributes={"day": 0}))
        led.add_block(Block("b1", EpsDelta(2.0, 1e-6), created=1.0, guarantee=EpsDelta(2.0, 1e-6)))
        led.add_block(Block("b2", EpsDelta(1.0, 1e-6), created=2.0))
        led.unlock_to([0, 1], [1.0, 0.5])
        led.add_claim(Claim("c0", {"b0": EpsDelta(0.5, 1e-7)}, arrival=0.0, owner="alice"))
        led.add_claim(Claim("c1", {"b0": EpsDelta(0.25, 0.0), "b1": EpsDelta(0.5, 0.0)}, arrival=1.0, timeout=9.0))
        led.add_claim(Claim("c2", {"b1": EpsDelta(5.0, 0.0)}, arrival=2.0, weight=2.0))
        led.allocate("c0", 1.0)
        led.allocate("c1", 1.0)
        led.consume("c0", {"b0": EpsDelta(0.125, 0.0)}, 2.0, request_id="r1")
        led.consume("c1", None, 3.0)
        led.release("c0", 4.0, request_id="r2")
        led.reject("c2", 4.0, "does not fit")
        led.retire("b2")
        assert led.audit().ok


def _open_service(url: str) -> Any:
    from dpf_sched.service.app import open_service_ledger

    return open_service_ledger(url)


def check_damaged(url: str, what: str) -> str:
    """Open, audit and open-as-serve a damaged ledger; fail on anything but success or a typed error."""
    outcomes = []
    for name, opener in (("open", lambda: open_ledger(url, create=False)), ("serve", lambda: _open_service(url))):
        try:
            led = opener()
        except DpfSchedError:
            outcomes.append(f"{name}: typed error")
            continue
        except Exception as e:
            raise AssertionError(f"{what}: {name} raised {type(e).__name__}: {e}") from e
        try:
            if name == "open":
                led.audit()
                led.violations()
        except DpfSchedError:
            pass
        except Exception as e:
            raise AssertionError(f"{what}: audit after {name} raised {type(e).__name__}: {e}") from e
        finally:
            led.close()
        outcomes.append(f"{name}: opened")
    res = CliRunner().invoke(main, ["ledger", "audit", "--db", url])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        raise AssertionError(f"{what}: `ledger audit` raised {type(res.exception).__name__}: {res.exception}") from (
            res.exception
        )
    assert res.exit_code in (0, 1, 2), (what, res.exit_code, res.output)
    if res.exit_code == 2:
        assert "error: " in res.output, (what, res.output)
    if res.exit_code == 1:
        assert "problem: " in res.output or "violation: " in res.output, (what, res.output)
    outcomes.append(f"audit rc {res.exit_code}")
    return ", ".join(outcomes)


# ----- the damage ------------------------------------------------------------------------------------------------
def hand_cases() -> list[tuple[str, str, str, int, Any]]:
    """(label, table, column, row number, new value): the finding's cases and their neighbours."""
    f3 = struct.pack("<3d", 0.1, 0.2, 0.3)
    nan_row = struct.pack("<2d", float("nan"), 0.0)
    return [
        ("wrong-length blob", "dpf_blocks", "consumed", 0, b"\x00" * 7),
        ("one byte", "dpf_blocks", "capacity", 1, b"\x00"),
        ("3-float row", "dpf_blocks", "unlocked", 0, f3),
        ("3-float claim row", "dpf_claims", "remaining", 0, f3),
        ("NaN row", "dpf_blocks", "locked", 1, nan_row),
        ("two rows", "dpf_blocks", "allocated", 0, struct.pack("<4d", 0, 0, 0, 0)),
        ("text in blob", "dpf_blocks", "allocated", 0, "abc"),
        ("text in claim blob", "dpf_claims", "demand", 1, "xyz"),
        ("integer in blob", "dpf_claims", "consumed", 0, 5),
        ("text in real", "dpf_blocks", "created", 0, "yesterday"),
        ("text in fraction", "dpf_blocks", "unlocked_fraction", 1, "half"),
        ("blob in real", "dpf_claims", "arrival", 0, b"\x01\x02"),
        ("text in retired", "dpf_blocks", "retired", 2, "yes"),
        ("amounts a string", "dpf_journal", "payload", 10, '{"claim":"c0","amounts":"lots","now":2.0}'),
        ("amounts a list", "dpf_journal", "payload", 10, '{"claim":"c0","amounts":[1,2],"now":2.0}'),
        ("now a string", "dpf_journal", "payload", 8, '{"claim":"c0","now":"noon"}'),
        ("capacity a string", "dpf_journal", "payload", 0, '{"id":"b0","capacity":"big","created":0.0,'
         '"attributes":{},"guarantee":null}'),
        ("payload a list", "dpf_journal", "payload", 3, "[1, 2, 3]"),
        ("payload not JSON", "dpf_journal", "payload", 4, "{not json"),
        ("payload deep", "dpf_journal", "payload", 5, "[" * 100000 + "]" * 100000),
        ("huge number", "dpf_journal", "payload", 6, '{"claim":"c0","now":' + "9" * 400 + "}"),
        ("payload a blob", "dpf_journal", "payload", 2, b"\xff\xfe"),
        ("unknown op", "dpf_journal", "op", 2, "explode"),
        ("op a number", "dpf_journal", "op", 3, 7),
        ("seq text", "dpf_journal", "seq", 4, "five"),
        ("seq gap", "dpf_journal", "seq", 13, 99),
        ("version future", "dpf_schema_version", "version", 0, 99),
        ("composition garbage", "dpf_meta", "value", 1, '["basic"]'),
        ("composition deep", "dpf_meta", "value", 1, "[" * 100000),
        ("application", "dpf_meta", "value", 0, "other"),
        ("block id", "dpf_blocks", "id", 1, "zz"),
        ("claim state", "dpf_claims", "state", 0, "exploded"),
        ("claim reason blob", "dpf_claims", "reason", 2, b"\x00\xff"),
        ("idx text", "dpf_blocks", "idx", 0, "zero"),
    ]


def hostile_value(rng: random.Random) -> Any:
    """One value from a seeded generator of what a damaged column may hold."""
    k = rng.randrange(12)
    if k == 0:
        return bytes(rng.randrange(256) for _ in range(rng.randrange(0, 40)))
    if k == 1:
        return struct.pack("<d", rng.choice([0.0, 1.0, -1.0, 1e308]))  # one float where a row of two belongs
    if k == 2:
        n = rng.choice([1, 2, 3, 4])
        return struct.pack(f"<{n}d", *(rng.choice([0.0, -1.0, 1e308, float("inf"), float("nan"), 0.5])
                                       for _ in range(n)))
    if k == 3:
        return rng.choice(["", "abc", "1.5", "nan", "[]", "{}", "null", '{"claim": 1}', "é\x00"])
    if k == 4:
        return rng.choice([0, -1, 1, 2**62, 7])
    if k == 5:
        return rng.choice([0.0, -0.0, 1e308, -1e308, float("nan"), float("inf"), 1e-320])
    if k == 6:
        return '{"id":' + rng.choice(['"b0"', "1", "null", "[]"]) + ',"claim":"c0","amounts":' + rng.choice(
            ['"x"', "[]", "{}", '{"b0":"x"}', '{"b0":[1]}', '{"b0":[1,2,3]}', '{"zz":[0,0]}', "null"]
        ) + ',"now":' + rng.choice(["0", '"t"', "null", "-1", "1e999"]) + "}"
    if k == 7:
        return rng.choice(["waiting", "granted", "finished", "rejected", "GRANTED", ""])
    if k == 8:
        return rng.choice(['["b0"]', '["b9"]', "[]", '"b0"', "[1]"])
    if k == 9:
        return b"\x00" * rng.choice([8, 16, 24, 32])
    if k == 10:
        return rng.choice(["allocate", "consume", "release", "add_block", "unlock", "nope"])
    return None


def _rows(conn: Any, table: str, key: str) -> list[Any]:
    return [r[0] for r in conn.execute(f"SELECT {key} FROM {table} ORDER BY {key}").fetchall()]


def rewrite_sqlite(path: Path, table: str, column: str, row: int, value: Any) -> bool:
    key = TABLES[table][0]
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous=OFF")  # a scratch copy: no fsync needed
        keys = _rows(conn, table, key)
        if not keys:
            return False
        conn.execute(f"UPDATE {table} SET {column} = ? WHERE {key} = ?", (value, keys[row % len(keys)]))
        return True
    except sqlite3.Error:  # a NOT NULL or UNIQUE constraint refused the damage
        return False
    finally:
        conn.close()


# ----- SQLite -------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "ledger.db"
    build_ledger(f"sqlite:///{path}")
    assert not Path(str(path) + "-wal").exists() or Path(str(path) + "-wal").stat().st_size == 0
    return path


@pytest.fixture
def fresh_copy(pristine: Path, tmp_path: Path) -> Iterator[Callable[[], Path]]:
    def copy() -> Path:
        for p in tmp_path.glob("copy.db*"):
            p.unlink()
        dst = tmp_path / "copy.db"
        shutil.copyfile(pristine, dst)
        return dst

    yield copy


@pytest.mark.parametrize("case", hand_cases(), ids=lambda c: c[0])
def test_hand_damage_sqlite(case: tuple[str, str, str, int, Any], fresh_copy: Callable[[], Path]) -> None:
    label, table, column, row, value = case
    path = fresh_copy()
    assert rewrite_sqlite(path, table, column, row, value), f"{label}: the rewrite did not apply"
    check_damaged(f"sqlite:///{path}", label)


def test_finding_cases_are_reported_by_the_audit(fresh_copy: Callable[[], Path]) -> None:
    """The finding's wrong-length blob: the audit lists it as a problem (exit 1), naming block and column."""
    path = fresh_copy()
    assert rewrite_sqlite(path, "dpf_blocks", "consumed", 0, b"\x00" * 7)
    res = CliRunner().invoke(main, ["ledger", "audit", "--db", f"sqlite:///{path}"])
    assert res.exit_code == 1, res.output
    assert "stored block 'b0': consumed is 7 bytes, not a whole number of rows of 2 float64" in res.output


def test_random_column_rewrites_sqlite(fresh_copy: Callable[[], Path]) -> None:
    rng = random.Random(20261203)
    names = sorted(TABLES)
    applied = 0
    for i in range(ROUNDS):
        path = fresh_copy()
        table = rng.choice(names)
        key, cols = TABLES[table]
        column = rng.choice((key, *cols))
        value, row = hostile_value(rng), rng.randrange(16)
        if rewrite_sqlite(path, table, column, row, value):
            applied += 1
            check_damaged(f"sqlite:///{path}", f"round {i}: {table}.{column}[{row}] = {value!r:.80}")
    assert applied >= ROUNDS // 2


#: Byte flips of the pristine file that made ``PRAGMA synchronous`` raise ``UnicodeDecodeError`` (a flipped
#: high bit in the schema text on page 1, which SQLite quotes in its error message): found by 3,000 single-bit
#: flips with ``random.Random(1)`` on the code before the fix; (offset, xor mask) pairs.
UNICODE_WITNESSES: list[list[tuple[int, int]]] = [[(3698, 128)], [(3361, 128)]]


def _flip(path: Path, flips: list[tuple[int, int]]) -> None:
    data = bytearray(path.read_bytes())
    for off, mask in flips:
        data[off % len(data)] ^= mask
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("flips", UNICODE_WITNESSES, ids=str)
def test_pinned_byte_flip_witnesses(flips: list[tuple[int, int]], fresh_copy: Callable[[], Path]) -> None:
    path = fresh_copy()
    _flip(path, flips)
    conn = sqlite3.connect(path)
    try:  # the witness still does what it was pinned for: the driver itself raises UnicodeDecodeError
        with pytest.raises(UnicodeDecodeError):
            conn.execute("PRAGMA synchronous=FULL")
    finally:
        conn.close()
    assert check_damaged(f"sqlite:///{path}", f"flips {flips}").startswith("open: typed error")


def test_random_byte_flips_sqlite(fresh_copy: Callable[[], Path], pristine: Path) -> None:
    rng = random.Random(14_4)
    size = pristine.stat().st_size
    for i in range(ROUNDS):
        path = fresh_copy()
        flips = [(rng.randrange(size), 1 << rng.randrange(8) if rng.random() < 0.7 else rng.randrange(1, 256))
                 for _ in range(rng.randint(1, 8))]
        _flip(path, flips)
        check_damaged(f"sqlite:///{path}", f"round {i}: flips {flips}")


# ----- PostgreSQL ---------------------------------------------------------------------------------------------
@contextlib.contextmanager
def damaged_pg(url: str, table: str, column: str, row: int, value: Any) -> Iterator[bool]:
    """Damage one cell of the ledger at ``url`` for the ``with`` body, then put the old value back.

    Yields False when PostgreSQL refuses the damage (the column's type or a constraint). The row is addressed by
    its ``ctid``, so a rewritten key column is restored too.
    """
    import psycopg

    assert PG_URL
    schema = url.rsplit("schema=", 1)[1]
    key = TABLES[table][0]
    with psycopg.connect(PG_URL, autocommit=True) as conn:
        rows = conn.execute(f'SELECT ctid, {column} FROM "{schema}".{table} ORDER BY {key}').fetchall()
        ctid, old = rows[row % len(rows)]
        try:
            (new_ctid,) = conn.execute(
                f'UPDATE "{schema}".{table} SET {column} = %s WHERE ctid = %s RETURNING ctid', (value, ctid)
            ).fetchone() or (None,)
        except psycopg.Error:
            yield False
            return
        try:
            yield True
        finally:
            conn.execute(f'UPDATE "{schema}".{table} SET {column} = %s WHERE ctid = %s', (old, new_ctid))


@PG_SKIP
def test_hand_and_random_damage_postgres() -> None:
    rng = random.Random(19)
    names = sorted(TABLES)
    cases = list(hand_cases())
    for _ in range(100):
        table = rng.choice(names)
        key, cols = TABLES[table]
        cases.append(("random", table, rng.choice((key, *cols)), rng.randrange(16), hostile_value(rng)))
    pool = SchemaPool()
    try:
        url = pool.url()
        build_ledger(url)
        applied = 0
        for label, table, column, row, value in cases:
            with damaged_pg(url, table, column, row, value) as ok:
                if ok:
                    applied += 1
                    check_damaged(url, f"{label}: {table}.{column}[{row}] = {value!r:.80}")
        assert applied >= 40, applied
        with open_ledger(url, create=False) as led:
            assert led.audit().ok  # every damage was undone: the cases were independent
    finally:
        pool.close()
