"""The paper's Fig. 4 scenario (spec/dpf.md, golden): DPF-N grants P2 at t=2, P1 at t=3, and P3 waits."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner
from tracegen import write_jsonl

from dpf_sched.block import Block
from dpf_sched.budget import EpsDelta
from dpf_sched.claim import Claim
from dpf_sched.cli import main
from dpf_sched.clock import ManualClock
from dpf_sched.composition import BasicComposition
from dpf_sched.ledger import ClaimState, MemoryLedger
from dpf_sched.scheduler import Scheduler

# Two blocks, fair share 1 each; N = 3 arrivals unlock the capacity of 3, one fair share per arrival.
FIG4 = [
    {"kind": "header", "composition": "basic"},
    {"kind": "block", "id": "B1", "time": 0, "epsilon": 3.0},
    {"kind": "block", "id": "B2", "time": 0, "epsilon": 3.0},
    {"kind": "claim", "id": "P1", "time": 1, "blocks": ["B1", "B2"], "demand": {"B1": 0.5, "B2": 1.5}},
    {"kind": "claim", "id": "P2", "time": 2, "blocks": ["B1", "B2"], "demand": {"B1": 1.0, "B2": 1.0}},
    {"kind": "claim", "id": "P3", "time": 3, "blocks": ["B1", "B2"], "demand": {"B1": 1.6, "B2": 1.0}},
]


@pytest.mark.parametrize("strict", [False, True])
def test_fig4_step_by_step(strict: bool) -> None:
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    sched = Scheduler(ledger, "dpf-n", clock, N=3, strict=strict)
    sched.add_block(Block("B1", EpsDelta(3.0)))
    sched.add_block(Block("B2", EpsDelta(3.0)))

    def unlocked() -> tuple[float, float]:
        return (round(float(ledger.unlocked[0, 0]), 12), round(float(ledger.unlocked[1, 0]), 12))

    clock.set(1)
    sched.submit(Claim("P1", {"B1": EpsDelta(0.5), "B2": EpsDelta(1.5)}))
    assert unlocked() == (1.0, 1.0)
    assert sched.step() == []  # P1 needs 1.5 on B2, only 1 unlocked
    clock.set(2)
    sched.submit(Claim("P2", {"B1": EpsDelta(1.0), "B2": EpsDelta(1.0)}))
    assert unlocked() == (2.0, 2.0)
    assert [o.claim_id for o in sched.step()] == ["P2"]  # share 1 before P1's 1.5
    assert unlocked() == (1.0, 1.0)
    clock.set(3)
    sched.submit(Claim("P3", {"B1": EpsDelta(1.6), "B2": EpsDelta(1.0)}))
    assert unlocked() == (2.0, 2.0)
    assert [o.claim_id for o in sched.step()] == ["P1"]  # share 1.5 (second 0.5) before P3's 1.6
    assert unlocked() == (1.5, 0.5)
    assert sched.status("P3").state is ClaimState.WAITING
    assert sched.status("P1").granted_at == 3.0
    assert sched.status("P2").granted_at == 2.0
    assert ledger.violations() == []


def test_fig4_from_the_cli(tmp_path) -> None:
    path = write_jsonl(tmp_path / "fig4.jsonl", FIG4)
    res = CliRunner().invoke(main, ["simulate", "--trace", str(path), "--policy", "dpf-n", "--param", "N=3", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.output)
    assert doc["policy"] == "dpf-n"
    assert (doc["granted"], doc["rejected"], doc["waiting"]) == (2, 0, 1)
    by_id = {c["id"]: c for c in doc["claims"]}
    assert by_id["P2"] == {"id": "P2", "status": "granted", "arrival": 2.0, "granted_at": 2.0}
    assert by_id["P1"] == {"id": "P1", "status": "granted", "arrival": 1.0, "granted_at": 3.0}
    assert by_id["P3"] == {"id": "P3", "status": "waiting", "arrival": 3.0, "granted_at": None}


def test_fig4_human_summary(tmp_path) -> None:
    path = write_jsonl(tmp_path / "fig4.jsonl", FIG4)
    res = CliRunner().invoke(main, ["simulate", "--trace", str(path), "--policy", "dpf-n", "--param", "N=3"])
    assert res.exit_code == 0
    assert "granted     2" in res.output and "waiting     1" in res.output


def test_lexicographic_tie_break_decides_fig4() -> None:
    """With tie_break=arrival the order is by dominant share then arrival; P1 (1.5) still precedes P3 (1.6)."""
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    sched = Scheduler(ledger, "dpf-n", clock, N=3, tie_break="arrival")
    for b in ("B1", "B2"):
        sched.add_block(Block(b, EpsDelta(3.0)))
    for t, cid, d in ((1, "P1", (0.5, 1.5)), (2, "P2", (1.0, 1.0)), (3, "P3", (1.6, 1.0))):
        clock.set(t)
        sched.submit(Claim(cid, {"B1": EpsDelta(d[0]), "B2": EpsDelta(d[1])}))
        sched.step()
    assert sched.states() == {"P1": ClaimState.GRANTED, "P2": ClaimState.GRANTED, "P3": ClaimState.WAITING}


def test_second_share_breaks_ties() -> None:
    """Equal dominant shares: the claim with the smaller second share goes first (the paper's rule)."""
    clock = ManualClock()
    ledger = MemoryLedger(BasicComposition())
    sched = Scheduler(ledger, "dpf-n", clock, N=1)
    for b in ("B1", "B2"):
        sched.add_block(Block(b, EpsDelta(1.0)))
    # Both have dominant share 0.6; X's second share 0.5 > Y's 0.3. Only one fits on B1 (0.6 + 0.6 > 1).
    sched.submit(Claim("X", {"B1": EpsDelta(0.6), "B2": EpsDelta(0.5)}))
    sched.submit(Claim("Y", {"B1": EpsDelta(0.6), "B2": EpsDelta(0.3)}))
    assert [o.claim_id for o in sched.step()] == ["Y"]
    ledger2 = MemoryLedger(BasicComposition())
    sched2 = Scheduler(ledger2, "dpf-n", ManualClock(), N=1, tie_break="arrival")
    for b in ("B1", "B2"):
        sched2.add_block(Block(b, EpsDelta(1.0)))
    sched2.submit(Claim("X", {"B1": EpsDelta(0.6), "B2": EpsDelta(0.5)}))
    sched2.submit(Claim("Y", {"B1": EpsDelta(0.6), "B2": EpsDelta(0.3)}))
    assert [o.claim_id for o in sched2.step()] == ["X"]
