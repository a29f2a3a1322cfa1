"""What a newcomer meets first: `--version`, help texts that list what they accept, an aligned `policies` table,
and a malformed trace line reported at its true line and column."""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dpf_sched.cli import compare, main
from dpf_sched.sim.workloads import WORKLOADS

ROOT = Path(__file__).resolve().parents[1]


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.skipif(shutil.which("curl") is None or shutil.which("bash") is None, reason="needs bash and curl")
def test_the_readme_service_flow_works_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    start = readme.index("ADMIN=$(dpf-sched tokens create")
    block = readme[start : readme.index("kill %1", start) + len("kill %1")]
    assert "--admin" in block.splitlines()[0]  # blocks are created with an admin token
    script = block.replace("8000", str(_free_port()))
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }
    proc = subprocess.Popen(
        ["bash", "-c", script], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group: the server goes with it whatever happens
    )  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    replies = [json.loads(line) for line in stdout.splitlines() if line.strip()]
    assert proc.returncode == 0 and len(replies) == 5, (stdout, stderr, (tmp_path / "serve.log").read_text())
    assert "error" not in json.dumps(replies), replies
    assert [r.get("state") for r in replies[1:]] == ["waiting", "granted", "granted", "released"]
    assert replies[-1]["consumed"] == {"day-1": {"epsilon": 0.2}}
