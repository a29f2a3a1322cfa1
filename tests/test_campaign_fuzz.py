"""The operation fuzz (simulations/campaigns/fuzz_ops.py, docs/reliability.md) with a small count: random
adversarial operation sequences against every ledger backend and, through the Scheduler, every registered policy,
basic and Rényi; no invariant broken, every error typed, refusals change nothing. The fuzz is shown able to fail
on planted defects. ``DPF_SCHED_CAMPAIGN_SCALE`` multiplies the counts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from campaign_support import campaign, scale
from sql_ledger_support import PG_SKIP, PG_URL

from dpf_sched.composition import Composition
from dpf_sched.errors import InvalidStateError
from dpf_sched.ledger import Ledger, MemoryLedger
from dpf_sched.policies.registry import available

pytestmark = pytest.mark.campaign
fuzz = campaign("fuzz_ops")


@pytest.mark.parametrize("policy", sorted(available()))
def test_every_policy_through_the_scheduler(policy: str) -> None:
    """Memory backend: per policy, sequences in scheduler mode (and ledger mode in between), basic and Rényi."""
    res = fuzz.run_fuzz(400 * scale(), backends=("memory",), policies=[policy], length=50, seed=11, huge=False)
    assert res.ok, res.findings
    assert res.per_policy.get(policy, 0) > 0 and res.per_mode.get("ledger", 0) > 0
    assert set(res.per_composition) == {"basic", "renyi"}
    assert res.refused > 0  # adversarial values were drawn and refused with typed errors


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgres", marks=PG_SKIP)])
def test_sql_backends(backend: str) -> None:
    res = fuzz.run_fuzz(
        160 * scale(), backends=(backend,), policies=["dpf-n", "dpack"], length=40, seed=5, huge=False, pg_url=PG_URL
    )
    assert res.ok, res.findings
    assert res.per_backend == {backend: 160 * scale()}
    assert set(res.per_mode) == {"scheduler", "ledger"}


class _Halved(MemoryLedger):
    """Reports half of what was consumed: conservation and the per-claim sums must catch it."""

    @property
    def consumed(self) -> Any:
        return np.asarray(super().consumed) * 0.5


class _Untyped(MemoryLedger):
    def retire(self, block_id: str) -> None:
        raise ValueError("planted")


class _ChangesOnRefusal(MemoryLedger):
    def reject(self, claim_id: str, now: float, reason: str) -> None:
        super().reject(claim_id, now, reason)
        raise InvalidStateError("planted: refused after the change")


@pytest.mark.parametrize(
    ("ledger_class", "expected"),
    [(_Halved, "conservation"), (_Untyped, "untyped error"), (_ChangesOnRefusal, "changed the ledger")],
)
def test_the_fuzz_catches_planted_defects(ledger_class: type[MemoryLedger], expected: str) -> None:
    def make(comp: Composition) -> Ledger:
        return ledger_class(comp)

    res = fuzz.run_fuzz(
        2000, backends=("memory",), policies=["fcfs"], seed=2, huge=False, factories={"memory": make}, max_findings=1
    )
    assert not res.ok and expected in res.findings[0], res.findings


def test_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    rc = fuzz.main(["--ops", "100", "--no-huge", "--json", "--policy", "drf"])
    out = json.loads(capsys.readouterr().out)
    assert rc == 0 and out["ok"] and out["ops"] == 100, out
