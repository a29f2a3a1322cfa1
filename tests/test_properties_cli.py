"""``dpf-sched check-properties``: exit 0 when the search finds nothing, 1 with a shrunk counterexample."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dpf_sched.cli import main


def test_dpf_n_finds_nothing() -> None:
    """proofs/*.md (DPF-N, basic and Rényi): all four theorems hold, so the search finds nothing."""
    out = CliRunner().invoke(main, ["check-properties", "--policy", "dpf-n", "--param", "N=3", "--examples", "25"])
    assert out.exit_code == 0, out.output
    assert out.output.count("no counterexample found") == 4


def test_fcfs_sharing_incentive_counterexample_as_json() -> None:
    """proofs/sharing-incentive.md, counterexample (FCFS): found, shrunk, and printed as a replayable trace."""
    out = CliRunner().invoke(
        main, ["check-properties", "--policy", "fcfs", "--property", "sharing-incentive", "--examples", "100", "--json"]
    )
    assert out.exit_code == 1, out.output
    doc = json.loads(out.output)
    assert doc["ok"] is False
    ce = doc["counterexamples"]["sharing-incentive"]
    assert ce["trace"][0]["kind"] == "header"
    assert ce["report"]["violations"]["sharing-incentive"]


def test_rr_n_pareto_counterexample() -> None:
    """proofs/pareto-efficiency.md, counterexample (RR-N)."""
    out = CliRunner().invoke(
        main, ["check-properties", "--policy", "rr-n", "--property", "pareto-efficiency", "--examples", "50"]
    )
    assert out.exit_code == 1, out.output
    assert "pareto-efficiency    COUNTEREXAMPLE" in out.output


def test_bad_input_is_a_clean_error() -> None:
    out = CliRunner().invoke(main, ["check-properties", "--policy", "nope"])
    assert out.exit_code == 2 and "unknown policy" in out.output
    out = CliRunner().invoke(main, ["check-properties", "--policy", "dpf-n", "--param", "N=0"])
    assert out.exit_code == 2 and "N must be a positive integer" in out.output
