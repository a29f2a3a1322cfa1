"""`dpf-sched compare` (the README's main job) and `dpf-sched trace` on a small grid."""

from __future__ import annotations

import json

from click.testing import CliRunner

from dpf_sched.cli import main


def test_compare_writes_table_csv_and_plot(tmp_path) -> None:
    out = tmp_path / "res"
    args = ["compare", "--policies", "fcfs,dpf-n,dpf-t", "--n", "1,175", "--out", str(out)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "granted claims on micro-single" in res.output
    assert (out / "runs.csv").exists() and (out / "granted.csv").exists() and (out / "granted.png").exists()
    assert (out / "granted.png").stat().st_size > 1000


def test_compare_json_and_dpf_beats_fcfs(tmp_path) -> None:
    args = ["compare", "--policies", "fcfs,dpf-n", "--n", "1,175", "--out", str(tmp_path), "--json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    runs = json.loads(res.output)
    for r in runs:
        assert {"policy", "N", "seed", "granted", "rejected", "waiting"} <= set(r)
    by = {(r["policy"], r["N"]): r["granted"] for r in runs}
    fcfs = by[("fcfs", None)]
    assert by[("dpf-n", 1)] == fcfs  # N = 1 is FCFS
    assert by[("dpf-n", 175)] > 2 * fcfs  # Fig. 6a: DPF reaches the 100-claim maximum near N = 175


def test_compare_bad_input_is_a_clean_error(tmp_path) -> None:
    for args in (["--n", "0"], ["--n", "x"], ["--policies", "nope"], ["--wparam", "rate=-1"], ["--seeds", ""]):
        res = CliRunner().invoke(main, ["compare", "--out", str(tmp_path), *args])
        assert res.exit_code == 2, (args, res.output)
        assert "error:" in res.output and "Traceback" not in res.output


def test_trace_then_simulate(tmp_path) -> None:
    res = CliRunner().invoke(main, ["trace", "--workload", "micro-multi", "--seed", "2", "--param", "duration=20"])
    assert res.exit_code == 0
    path = tmp_path / "t.jsonl"
    path.write_text(res.output)
    sim = CliRunner().invoke(main, ["simulate", "--trace", str(path), "--policy", "dpf-n", "--param", "N=50", "--json"])
    assert sim.exit_code == 0, sim.output
    doc = json.loads(sim.output)
    assert doc["granted"] + doc["rejected"] + doc["waiting"] == len(doc["claims"]) > 100
