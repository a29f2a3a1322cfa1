"""The kill campaign (simulations/campaigns/kill.py, docs/reliability.md) with a small count: ledger writers and a
`dpf-sched serve` are SIGKILLed mid-operation, and every acknowledged operation must survive, nothing half-applied,
every database openable. SQLite always; PostgreSQL when ``DPF_SCHED_TEST_POSTGRES_URL`` is set. The checker itself
is shown able to fail (a lost acknowledgement, a half-applied batch or consumption, an unopenable file)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from campaign_support import campaign, scale
from sql_ledger_support import PG_SKIP, PG_URL

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.composition import BasicComposition
from dpf_sched.ledger.sql import open_ledger

pytestmark = pytest.mark.campaign
kill = campaign("kill")


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=PG_SKIP)])
def test_kill_campaign_loses_nothing(backend: str, tmp_path: Path) -> None:
    """Three rounds (two writers, one service) by default; ``DPF_SCHED_CAMPAIGN_SCALE`` multiplies them."""
    k = 3 * scale()
    res = kill.run_campaign(backend, k, serve_every=3, rotate=3, seed=7, work=tmp_path, pg_url=PG_URL)
    assert res.ok, res.to_json()
    assert res.kills == k and res.serve_kills == k // 3 and res.writer_kills == k - k // 3
    assert res.acknowledged > 0


def _ledger(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    with open_ledger(url, BasicComposition()) as led:
        led.add_block(Block("b", EpsDelta(10.0)))
        led.unlock_to([0], [1.0])
        led.add_claim(Claim("c", {"b": EpsDelta(1.0)}))
        led.allocate("c", 0.0)
        led.consume("c", {"b": EpsDelta(0.25)}, 0.0, request_id="r1")
    return url


def test_checker_counts_lost_acknowledgements(tmp_path: Path) -> None:
    url = _ledger(tmp_path)
    ok = kill.Result("sqlite")
    acked = [
        {"kind": "ack", "op": "add_block", "block": "b"},
        {"kind": "ack", "op": "add_claim", "claim": "c"},
        {"kind": "ack", "op": "allocate", "claim": "c"},
        {"kind": "ack", "op": "consume", "claim": "c", "request": "r1"},
    ]
    kill.check(url, acked, ok, "here")
    assert ok.ok, ok.to_json()
    bad = kill.Result("sqlite")
    kill.check(
        url,
        [
            *acked,
            {"kind": "ack", "op": "add_claim", "claim": "ghost"},
            {"kind": "ack", "op": "consume", "claim": "c", "request": "r2"},
            {"kind": "ack", "op": "release", "claim": "c", "request": "r3"},
        ],
        bad,
        "here",
    )
    assert bad.lost == 3 and bad.half_applied == 0, bad.to_json()


def test_checker_counts_half_applied_operations(tmp_path: Path) -> None:
    url = _ledger(tmp_path)
    res = kill.Result("sqlite")
    kill.check(
        url,
        [
            {"kind": "intent", "op": "batch", "claims": ["c", "never-written"]},  # one of two claims present
            # r1 was applied with 0.25, the log says 0.5: the consumption does not match its request
            {"kind": "intent", "op": "consume", "claim": "c", "request": "r1", "amounts": {"b": [0.5, 0.0]}},
        ],
        res,
        "here",
    )
    assert res.half_applied == 2 and res.lost == 0, res.to_json()


def test_checker_counts_unopenable_databases(tmp_path: Path) -> None:
    path = tmp_path / "garbage.db"
    path.write_bytes(b"not a database" * 100)
    res = kill.Result("sqlite")
    kill.check(f"sqlite:///{path}", [], res, "here")
    assert res.unopenable == 1 and not res.ok


def test_command_line_reports_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The campaign's command: one writer round, JSON result, exit status 0."""
    rc = kill.main(["--backend", "sqlite", "--kills", "1", "--serve-every", "0", "--json", "--work-dir", str(tmp_path)])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["kills"] == 1 and out["writer_kills"] == 1, out
