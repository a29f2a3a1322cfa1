"""SQL ledger storage: bad files, schema versions and migration, dropped connections, idempotent requests, exact
curves, and the `dpf-sched ledger` / `simulate --ledger` commands (audit passes on a recorded simulation and
fails on a ledger tampered with by hand)."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from sql_ledger_support import PG_URL

import dpf_sched.ledger.sql.ledger as sql_ledger_mod
from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.cli import main
from dpf_sched.composition import BasicComposition, RenyiComposition
from dpf_sched.errors import (
    CompositionMismatchError,
    InvalidParameterError,
    LedgerStorageError,
    SchemaVersionError,
)
from dpf_sched.ledger import ClaimState, MemoryLedger
from dpf_sched.ledger.sql import open_ledger
from dpf_sched.ledger.sql.schema import MIGRATIONS, SCHEMA_VERSION


def _ledger_with_grant(url: str) -> None:
    with open_ledger(url, BasicComposition()) as led:
        led.add_block(Block("b", EpsDelta(1.0, 1e-6)))
        led.unlock_to([0], [1.0])
        led.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}))
        led.allocate("c", 0.0)


# ----- bad files ------------------------------------------------------------------------------------------------
def test_garbage_file_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "junk.db"
    data = b"this is not a database at all" * 100
    path.write_bytes(data)
    with pytest.raises(LedgerStorageError, match="not a usable SQLite database"):
        open_ledger(str(path), BasicComposition())
    assert path.read_bytes() == data


def test_corrupted_ledger_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    _ledger_with_grant(f"sqlite:///{path}")
    data = bytearray(path.read_bytes())
    data[:16] = b"garbage garbage!"  # the SQLite header
    path.write_bytes(bytes(data))
    with pytest.raises(LedgerStorageError):
        open_ledger(f"sqlite:///{path}")
    assert path.read_bytes() == bytes(data)


def test_foreign_sqlite_database_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(LedgerStorageError, match="foreign database"):
        open_ledger(f"sqlite:///{path}", BasicComposition())
    assert path.read_bytes() == before


def test_missing_and_empty_ledgers(tmp_path: Path) -> None:
    with pytest.raises(LedgerStorageError, match="no ledger database"):
        open_ledger(f"sqlite:///{tmp_path / 'none.db'}", create=False)
    with pytest.raises(InvalidParameterError, match="composition is needed"):
        open_ledger(f"sqlite:///{tmp_path / 'new.db'}")
    with pytest.raises(InvalidParameterError, match="scheme"):
        open_ledger("mysql://x/y")


def test_composition_must_match(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    _ledger_with_grant(url)
    with pytest.raises(CompositionMismatchError):
        open_ledger(url, RenyiComposition(AlphaGrid((2.0, 4.0))))


# ----- schema versions ------------------------------------------------------------------------------------------
def test_schema_from_the_future_is_refused_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "l.db"
    _ledger_with_grant(f"sqlite:///{path}")
    con = sqlite3.connect(path)
    con.execute("INSERT INTO dpf_schema_version VALUES (99, 0.0)")
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(SchemaVersionError, match="schema version 99"):
        open_ledger(f"sqlite:///{path}")
    assert path.read_bytes() == before


def test_migrate_forward_hook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    _ledger_with_grant(url)
    # Pretend the library moved to the next schema; without a migration step, opening is refused and changes
    # nothing.
    nxt = SCHEMA_VERSION + 1
    monkeypatch.setattr(sql_ledger_mod, "SCHEMA_VERSION", nxt)
    with pytest.raises(SchemaVersionError, match="no migration"):
        open_ledger(url)
    ran: list[int] = []

    def step(ex: object) -> None:
        ran.append(1)
        ex.execute("CREATE TABLE dpf_extra (x INTEGER)")  # type: ignore[attr-defined]

    monkeypatch.setitem(MIGRATIONS, SCHEMA_VERSION, step)
    with open_ledger(url) as led:
        assert ran == [1] and led.schema_version() == nxt
        assert led.audit().ok
        assert led.state("c") is ClaimState.GRANTED
    with open_ledger(url) as led:  # already migrated: the step does not run again
        assert ran == [1]


# ----- dropped connections ------------------------------------------------------------------------------------
def test_connection_dropped_mid_transaction_changes_nothing(url: str) -> None:
    _ledger_with_grant(url)
    led = open_ledger(url)
    store = led._store

    def drop() -> None:
        if store.dialect == "sqlite":
            store.conn.close()  # type: ignore[attr-defined]
        else:
            import psycopg

            assert PG_URL
            pid = store.conn.info.backend_pid  # type: ignore[attr-defined]
            with psycopg.connect(PG_URL, autocommit=True) as admin:
                admin.execute("SELECT pg_terminate_backend(%s)", (pid,))

    led._before_commit = drop
    with pytest.raises(LedgerStorageError):
        led.consume("c", {"b": EpsDelta(0.25, 0.0)}, 1.0, request_id="r1")
    led.close()
    with open_ledger(url) as again:
        assert not again.has_request("r1")
        assert float(np.asarray(again.consumed)[0, 0]) == 0.0
        assert again.audit().ok
        again.consume("c", {"b": EpsDelta(0.25, 0.0)}, 1.0, request_id="r1")  # the client's retry now applies
        assert float(np.asarray(again.consumed)[0, 0]) == 0.25


# ----- idempotency ------------------------------------------------------------------------------------------------
def test_request_ids_apply_once_across_reopen(url: str) -> None:
    _ledger_with_grant(url)
    with open_ledger(url) as led:
        led.consume("c", {"b": EpsDelta(0.125, 0.0)}, 1.0, request_id="r1")
        led.consume("c", {"b": EpsDelta(0.125, 0.0)}, 2.0, request_id="r1")
        with pytest.raises(InvalidParameterError, match="different request"):
            led.consume("c", {"b": EpsDelta(0.25, 0.0)}, 2.0, request_id="r1")
    with open_ledger(url) as led:  # a retry after the client (or the server) restarted
        led.consume("c", {"b": EpsDelta(0.125, 0.0)}, 3.0, request_id="r1")
        assert float(np.asarray(led.consumed)[0, 0]) == 0.125
        led.release("c", 4.0, request_id="rel")
        led.release("c", 5.0, request_id="rel")  # the claim is finished; the retry is still a success
        assert led.state("c") is ClaimState.FINISHED
        assert led.audit().ok


def test_memory_ledger_request_ids() -> None:
    led = MemoryLedger(BasicComposition())
    led.add_block(Block("b", EpsDelta(1.0, 0.0)))
    led.unlock_to([0], [1.0])
    led.add_claim(Claim("c", {"b": EpsDelta(0.5, 0.0)}))
    led.allocate("c", 0.0)
    for _ in range(3):
        led.consume("c", {"b": EpsDelta(0.1, 0.0)}, request_id="x")
    assert float(led.consumed[0, 0]) == pytest.approx(0.1)
    with pytest.raises(InvalidParameterError):
        led.release("c", request_id="x")
    led.consume("c", request_id="all")
    led.consume("c", request_id="all")
    assert led.state("c") is ClaimState.FINISHED


# ----- exact curves ---------------------------------------------------------------------------------------------
def test_renyi_curves_round_trip_exactly(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'r.db'}"
    grid = AlphaGrid((1.5, 2.0, 4.0, 8.0, 32.0))
    cap = EpsDelta(10.0 / 3.0, 1e-7).to_renyi(grid)
    demand = RenyiCurve(grid, np.array([0.1, 1 / 7, np.pi / 10, np.e / 10, 2**-40]))
    with open_ledger(url, RenyiComposition(grid)) as led:
        led.add_block(Block("b", cap, guarantee=EpsDelta(10.0 / 3.0, 1e-7)))
        led.unlock_to([0], [1 / 3])
        led.add_claim(Claim("c", {"b": demand}))
        want = {k: np.asarray(getattr(led, k)).tobytes() for k in ("capacity", "locked", "unlocked")}
    with open_ledger(url) as led:
        for k, v in want.items():
            assert np.asarray(getattr(led, k)).tobytes() == v
        assert led.composition.row(led.claim("c").claim.demand["b"]).tobytes() == demand.values.tobytes()
        assert led.block("b").guarantee == EpsDelta(10.0 / 3.0, 1e-7)


# ----- CLI ------------------------------------------------------------------------------------------------------
def test_cli_simulate_records_and_audit_detects_tampering(tmp_path: Path) -> None:
    runner = CliRunner()
    trace = tmp_path / "t.jsonl"
    res = runner.invoke(main, ["trace", "--workload", "micro-single", "--seed", "1"])
    assert res.exit_code == 0, res.output
    trace.write_text(res.stdout)
    db = tmp_path / "run.db"
    url = f"sqlite:///{db}"
    res = runner.invoke(main, ["simulate", "--trace", str(trace), "--policy", "dpf-n", "--ledger", url, "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    counts = {k: doc[k] for k in ("granted", "rejected", "waiting")}
    res = runner.invoke(main, ["ledger", "audit", "--db", url, "--json"])
    assert res.exit_code == 0, res.output
    report = json.loads(res.stdout)
    assert report["ok"] and report["claims"] == sum(counts.values())
    res = runner.invoke(main, ["ledger", "show", "--db", url, "--json"])
    assert res.exit_code == 0, res.output
    shown = json.loads(res.stdout)
    assert shown["claims"]["finished"] == counts["granted"]
    # Recording into a non-empty ledger is refused.
    res = runner.invoke(main, ["simulate", "--trace", str(trace), "--policy", "dpf-n", "--ledger", url])
    assert res.exit_code == 2 and "not empty" in res.output
    # Tamper by hand: give back some consumed budget in the stored state.
    con = sqlite3.connect(db)
    con.execute("UPDATE dpf_blocks SET consumed = ? WHERE idx = 0", (np.zeros(2).tobytes(),))
    con.commit()
    con.close()
    res = runner.invoke(main, ["ledger", "audit", "--db", url])
    assert res.exit_code == 1, res.output
    assert "FAILED" in res.output and "stored consumed" in res.output


def test_cli_audit_detects_a_tampered_journal(tmp_path: Path) -> None:
    db = tmp_path / "l.db"
    _ledger_with_grant(f"sqlite:///{db}")
    con = sqlite3.connect(db)
    con.execute("UPDATE dpf_journal SET payload = replace(payload, '0.5', '0.25') WHERE op = 'add_claim'")
    con.commit()
    con.close()
    res = CliRunner().invoke(main, ["ledger", "audit", "--db", str(db), "--json"])
    assert res.exit_code == 1
    assert not json.loads(res.stdout)["ok"]


def test_cli_init_and_show_renyi(tmp_path: Path) -> None:
    runner = CliRunner()
    url = f"sqlite:///{tmp_path / 'r.db'}"
    res = runner.invoke(main, ["ledger", "init", "--db", url, "--composition", "renyi", "--alphas", "2,4,8"])
    assert res.exit_code == 0, res.output
    grid = AlphaGrid((2.0, 4.0, 8.0))
    with open_ledger(url) as led:
        led.add_block(Block("b", EpsDelta(10.0, 1e-6).to_renyi(grid), guarantee=EpsDelta(10.0, 1e-6)))
    res = runner.invoke(main, ["ledger", "show", "--db", url])
    assert res.exit_code == 0, res.output
    assert "as (ε, δ=1e-06)" in res.output
    res = runner.invoke(main, ["ledger", "show", "--db", str(tmp_path / "missing.db")])
    assert res.exit_code == 2 and res.output.startswith("error:")
