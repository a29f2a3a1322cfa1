"""`dpf-sched compare`'s output directory (never overwritten behind the user's back, re-runnable with --out) and
its plots (the chart fits the data: bars for a one-point sweep, distinct styles, honest labels, claim counts)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from dpf_sched.cli import main
from dpf_sched.sim.compare import (
    MANIFEST,
    claims_note,
    compare,
    delay_chart,
    granted_chart,
    granted_table,
    plot_granted,
    write_outputs,
)

SMALL = ["--policies", "fcfs,dpf-n", "--n", "1,5", "--wparam", "duration=20", "--no-progress"]


def _compare(*args: str) -> tuple[int, str]:
    res = CliRunner().invoke(main, ["compare", *SMALL, *args])
    return res.exit_code, res.output


# ----- the output directory ---------------------------------------------------------------------------------


def test_the_readme_command_can_run_twice_and_leaves_no_stale_files(tmp_path: Path) -> None:
    out = tmp_path / "results"
    rc, output = _compare("--out", str(out), "--claims", "--no-plots")
    assert rc == 0, output
    claims = sorted((out / "claims").glob("claims_*"))
    assert claims
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["kind"] == "dpf-sched compare" and manifest["workload"] == "micro-single"
    assert f"claims/{claims[0].name}" in manifest["files"] and "runs.csv" in manifest["files"]
    rc, output = _compare("--out", str(out), "--no-plots")  # the same command again, without --claims
    assert rc == 0, output
    assert f"replaced the earlier comparison in {out}" in output
    assert not any(p.exists() for p in claims)  # the earlier run's per-claim tables do not linger
    assert (out / "runs.csv").exists()


def test_the_default_directory_is_never_replaced_silently(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    rc, output = _compare("--no-plots")
    assert rc == 0, output
    before = (tmp_path / "results" / "runs.csv").read_bytes()
    rc, output = _compare("--no-plots", "--seeds", "1")
    assert rc == 2 and output.startswith("error: ") and "holds an earlier comparison" in output, output
    assert "--out results" in output
    assert (tmp_path / "results" / "runs.csv").read_bytes() == before
    rc, output = _compare("--no-plots", "--out", "results")  # named explicitly: replaced
    assert rc == 0, output


def test_a_foreign_directory_needs_force_and_keeps_its_other_files(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    rc, output = _compare("--out", str(tmp_path), "--no-plots")
    assert rc == 2 and "not empty" in output and "--force" in output, output
    assert not (tmp_path / "runs.csv").exists()
    rc, output = _compare("--out", str(tmp_path), "--no-plots", "--force")
    assert rc == 0, output
    assert (tmp_path / "notes.txt").read_text() == "mine" and (tmp_path / "runs.csv").exists()
    target = tmp_path / "file"
    target.write_text("x")
    rc, output = _compare("--out", str(target), "--no-plots")
    assert rc == 2 and "is a file" in output


def test_a_forged_manifest_never_deletes_outside_the_directory(tmp_path: Path) -> None:
    outside = tmp_path / "precious.txt"
    outside.write_text("keep")
    out = tmp_path / "res"
    out.mkdir()
    doc = {"kind": "dpf-sched compare", "workload": "w", "created": "t", "files": ["../precious.txt", str(outside)]}
    (out / MANIFEST).write_text(json.dumps(doc))
    rc, output = _compare("--out", str(out), "--no-plots")
    assert rc == 0, output
    assert outside.read_text() == "keep"


# ----- the charts -------------------------------------------------------------------------------------------


def test_a_one_point_sweep_is_bars_by_policy() -> None:
    policies = ["fcfs", "dpf-n", "dpack", "dpf-pack"]
    res = compare("packing-mix", policies, {"N": [10]}, workload_params={"duration": 20})
    chart = granted_chart(granted_table(res), "packing-mix")
    assert chart.kind == "bars"
    assert chart.ticks == tuple(policies) and "N=10" in chart.xlabel
    assert len(chart.series) == 1 and len(chart.series[0].y) == len(policies)


def test_lines_have_distinct_styles_and_labels_name_only_the_policies_that_ran() -> None:
    res = compare("micro-single", ["fcfs", "dpf-n", "rr-n"], {"N": [1, 50]}, workload_params={"duration": 20})
    chart = granted_chart(granted_table(res), "t")
    assert chart.kind == "lines"
    assert len({(s.marker, s.linestyle) for s in chart.series}) == len(chart.series) == 3
    assert chart.xlabel == "N"  # no DPF-T/RR-T convention when neither ran
    res = compare("micro-single", ["fcfs", "dpf-t"], {"N": [1, 50]}, workload_params={"duration": 20})
    chart = granted_chart(granted_table(res), "t")
    assert "dpf-t" in chart.xlabel and "rr-t" not in chart.xlabel.lower() and "T = N" in chart.xlabel


def test_identical_lines_say_so_in_the_legend() -> None:
    table = pd.DataFrame({"N": [1, 2], "dpack": [3.0, 4.0], "dpf-pack": [3.0, 4.0]}).set_index("N")
    chart = granted_chart(table, "t")
    assert [s.label for s in chart.series] == ["dpack", "dpf-pack (= dpack)"]


def test_all_zero_delays_are_not_a_degenerate_cdf() -> None:
    res = compare("micro-single", ["fcfs"], {"N": [1]}, workload_params={"duration": 20})  # FCFS grants at once
    chart = delay_chart(res, "t")
    assert chart.kind == "bars" and "on arrival" in chart.note and chart.ticks == ("fcfs",)
    assert chart.series[0].y[0] == res.runs["granted"].iloc[0]
    mixed = compare("micro-single", ["fcfs", "dpf-n"], {"N": [50]}, workload_params={"duration": 20})
    chart = delay_chart(mixed, "t")
    assert chart.kind == "cdf"
    fcfs, dpf = chart.series
    assert "all delay 0" in fcfs.label and max(fcfs.x) == max(dpf.x) > 0  # drawn along the top, not on the spine


def test_every_plot_says_how_many_claims_were_submitted(tmp_path: Path) -> None:
    res = compare("micro-single", ["fcfs", "dpf-n"], {"N": [1, 5]}, [0, 1], {"duration": 20})
    totals = set((res.runs["granted"] + res.runs["rejected"] + res.runs["waiting"]).tolist())
    _, note = write_outputs(res, tmp_path)
    assert note == "" and (tmp_path / "granted.png").stat().st_size > 1000
    lo, hi = min(totals), max(totals)
    expected = f"{lo} claims submitted per run" if lo == hi else f"{lo}–{hi} claims submitted per run"
    chart = plot_granted(granted_table(res), tmp_path / "g.png", "t", claims_note(res))  # as write_outputs does
    assert expected in chart.note and "mean over 2 seeds" in chart.note
    delay = delay_chart(res, "t")
    assert expected in delay.note and "delays pooled over 2 seeds" in delay.note


def test_a_comparison_written_before_the_manifest_is_recognised(tmp_path: Path) -> None:
    out = tmp_path / "results"
    rc, output = _compare("--out", str(out), "--claims", "--no-plots")
    assert rc == 0, output
    (out / MANIFEST).unlink()  # as an earlier version of dpf-sched left it
    rc, output = _compare("--out", str(out), "--no-plots")
    assert rc == 0 and "replaced the earlier comparison" in output, output
    assert not (out / "claims").exists() or not any((out / "claims").iterdir())
    (out / MANIFEST).unlink()
    (out / "mine.txt").write_text("x")  # anything else: not a comparison's directory
    rc, output = _compare("--out", str(out), "--no-plots")
    assert rc == 2 and "--force" in output


def test_a_failed_run_leaves_the_earlier_comparison_as_it_was(tmp_path: Path) -> None:
    out = tmp_path / "results"
    rc, output = _compare("--out", str(out), "--claims", "--no-plots")
    assert rc == 0, output
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    res = CliRunner().invoke(main, ["compare", "--policies", "fcfs,nope", "--out", str(out), "--claims", "--no-plots"])
    assert res.exit_code == 2 and "unknown policy" in res.output
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
