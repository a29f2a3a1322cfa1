"""What a newcomer meets first: `--version`, help texts that list what they accept, an aligned `policies` table,
and a malformed trace line reported at its true line and column."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import click
from click.testing import CliRunner

from dpf_sched.cli import compare, main
from dpf_sched.sim.workloads import WORKLOADS


def test_version() -> None:
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0
    assert res.output == f"dpf-sched {importlib.metadata.version('dpf_sched')}\n"


def _option(name: str) -> click.Option:
    (opt,) = [p for p in compare.params if isinstance(p, click.Option) and p.name == name]
    return opt


def test_compare_help_explains_policies_and_lists_the_workloads() -> None:
    assert _option("policy_list").help and "dpf-sched policies" in (_option("policy_list").help or "")
    workload_help = _option("workload").help or ""
    assert all(name in workload_help for name in WORKLOADS)  # from the registry, so a new workload shows up
    res = CliRunner().invoke(main, ["compare", "--help"])
    assert res.exit_code == 0 and "registered policy" in res.output and "packing-mix" in res.output


def test_policies_table_is_aligned() -> None:
    res = CliRunner().invoke(main, ["policies"])
    assert res.exit_code == 0
    info = json.loads(CliRunner().invoke(main, ["policies", "--json"]).output)
    rows = [line for line in res.output.splitlines() if line.startswith("    ")]
    assert len(rows) == sum(len(p) for p in info.values())
    assert any(line.split()[0] == "formulation" for line in rows)  # the longest name, misaligned before
    assert len({line.index(" default ") for line in rows}) == 1
    docs = {p["doc"] for params in info.values() for p in params.values()}
    starts = {len(line) - max((len(d) for d in docs if d and line.endswith(d)), default=-1) for line in rows}
    assert len(starts) == 1  # every doc begins in the same column


def _simulate(tmp_path: Path, second_line: str) -> str:
    path = tmp_path / "t.jsonl"
    path.write_text('{"kind": "header", "composition": "basic", "end": 10}\n' + second_line + "\n")
    res = CliRunner().invoke(main, ["simulate", "--trace", str(path), "--policy", "fcfs"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    return res.output


def test_malformed_json_reports_the_true_line_and_column(tmp_path: Path) -> None:
    line = '{"kind": "block", "id": "b0", "time": 0.0, "epsilon": 1.0'  # the closing brace is missing
    out = _simulate(tmp_path, line)
    assert out.startswith("error: line 2: not valid JSON")
    assert f"at column {len(line) + 1}, the end of the line" in out, out
    line = '{"kind": "block", "id": "b0",, "time": 0.0}'  # a second comma at column 30
    out = _simulate(tmp_path, line)
    assert "line 2" in out and "at column 30)" in out, out
