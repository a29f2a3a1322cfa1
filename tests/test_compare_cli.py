"""`dpf-sched compare` over parameter grids: axes, the T convention, outputs, backends and bad input."""

from __future__ import annotations

import json
import math
import sys
import types
from typing import Any

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from dpf_sched.cli import main
from dpf_sched.errors import InvalidParameterError
from dpf_sched.sim import compare as compare_mod
from dpf_sched.sim.compare import compare, granted_table, plan_runs, workload_input
from dpf_sched.sim.workloads import make_workload

SHORT = ["--wparam", "duration=60"]  # 60 claims: every run takes milliseconds


def _json(args: list[str]) -> list[dict[str, Any]]:
    res = CliRunner().invoke(main, ["compare", *args, "--json"])
    assert res.exit_code == 0, res.output
    runs = json.loads(res.stdout)
    assert isinstance(runs, list)
    return runs


def test_grid_is_the_product_and_policies_without_the_axis_run_once(tmp_path) -> None:
    runs = _json(
        [
            "--policies", "fcfs,dpf-n,dpf-t",
            "--param", "N=1,20",
            "--param", "mice_fraction=0.5,1",
            "--seeds", "0,1",
            "--out", str(tmp_path),
            *SHORT,
        ]
    )  # fmt: skip
    for r in runs:
        assert {"policy", "N", "mice_fraction", "seed", "granted", "rejected", "waiting", "params"} <= set(r)
    count = {p: sum(r["policy"] == p for r in runs) for p in ("fcfs", "dpf-n", "dpf-t")}
    assert count == {"fcfs": 4, "dpf-n": 8, "dpf-t": 8}  # FCFS: 2 fractions x 2 seeds, no N
    assert all(r["N"] is None for r in runs if r["policy"] == "fcfs")
    # DPF-T on the N axis: T = N x mean inter-arrival (1 s), tick = half of it, the artifact's unlocking.
    t_params = {r["N"]: r["params"] for r in runs if r["policy"] == "dpf-t"}
    assert t_params[20] == {"T": 20.0, "tick": 0.5, "unlock": "artifact"}
    for r in runs:  # every claim is counted once
        total = r["granted"] + r["rejected"] + r["waiting"]
        assert total == r["granted_mice"] + r["rejected_mice"] + r["waiting_mice"] + r["granted_elephant"] + r[
            "rejected_elephant"
        ] + r["waiting_elephant"]
    # all-mice runs have no elephants: their class counts are 0, not missing
    assert all(r["granted_elephant"] == 0 for r in runs if r["mice_fraction"] == 1)


def test_explicit_t_axis_and_policy_parameter_axes(tmp_path) -> None:
    runs = _json(["--policies", "dpf-t,dpf-n", "--param", "T=5,30", "--param", "strict=false,true",
                  "--out", str(tmp_path), *SHORT])  # fmt: skip
    t_runs = [r for r in runs if r["policy"] == "dpf-t"]
    assert sorted((r["T"], r["strict"]) for r in t_runs) == [(5, False), (5, True), (30, False), (30, True)]
    assert all(r["params"]["tick"] == 0.5 and r["params"]["unlock"] == "artifact" for r in t_runs)
    # With a T axis there is no default N axis; DPF-N takes no T, so it runs over strict only, at its own N.
    n_runs = [r for r in runs if r["policy"] == "dpf-n"]
    assert "N" not in n_runs[0] and all(r["T"] is None and "N" not in r["params"] for r in n_runs)
    assert sorted(r["strict"] for r in n_runs) == [False, True]


def test_outputs_table_plots_and_per_claim_tables(tmp_path) -> None:
    out = tmp_path / "res"
    args = ["compare", "--policies", "fcfs,dpf-n", "--param", "N=1,30", "--out", str(out), "--claims", *SHORT]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "granted claims on micro-single" in res.stdout and "best grid point" in res.stdout
    for name in ("runs.csv", "granted.csv", "granted.png", "delay_cdf.png"):
        assert (out / name).stat().st_size > 0, name
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 3 and {"delay_p50", "utilisation_mean", "jain_classes", "replay_s"} <= set(runs.columns)
    claims = sorted((out / "claims").glob("claims_*.csv"))
    assert len(claims) == 3
    one = pd.read_csv(claims[0])
    assert {"id", "label", "status", "arrival", "granted_at", "delay"} <= set(one.columns)


def test_granted_table_repeats_axis_free_policies() -> None:
    result = compare("micro-single", ["fcfs", "dpf-n"], {"N": [1, 40]}, workload_params={"duration": 60})
    table = granted_table(result)
    assert table.index.tolist() == [1, 40]
    assert table["fcfs"].nunique() == 1
    assert table.loc[1, "dpf-n"] == table.loc[1, "fcfs"]  # DPF-N with N = 1 is FCFS
    assert len(result.delays) == len(result.runs)


def test_joblib_processes_give_the_same_results() -> None:
    kw: dict[str, Any] = {"workload_params": {"duration": 60}, "seeds": [0, 1]}
    one = compare("micro-single", ["fcfs", "dpf-n", "rr-n"], {"N": [1, 30]}, n_jobs=1, **kw).runs
    two = compare("micro-single", ["fcfs", "dpf-n", "rr-n"], {"N": [1, 30]}, n_jobs=2, **kw).runs
    cols = ["policy", "N", "seed", "granted", "rejected", "waiting", "delay_mean"]
    pd.testing.assert_frame_equal(one[cols], two[cols])


def test_ray_backend_with_a_stand_in_module(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Ray code path (remote, wait, get) against a minimal in-process stand-in for the ray module."""

    class Ref:
        def __init__(self, value: Any) -> None:
            self.value = value

    calls: dict[str, int] = {"init": 0, "remote": 0}

    def remote(fn: Any) -> Any:
        def submit(*args: Any) -> Ref:
            calls["remote"] += 1
            return Ref(fn(*args))

        return types.SimpleNamespace(remote=submit)

    fake = types.SimpleNamespace(
        is_initialized=lambda: calls["init"] > 0,
        init=lambda **kw: calls.__setitem__("init", calls["init"] + 1),
        remote=remote,
        wait=lambda refs, num_returns=1: (refs[:num_returns], refs[num_returns:]),
        get=lambda ref: ref.value,
    )
    monkeypatch.setitem(sys.modules, "ray", fake)
    result = compare("micro-single", ["fcfs", "dpf-n"], {"N": [1, 30]}, workload_params={"duration": 60},
                     backend="ray")  # fmt: skip
    local = compare("micro-single", ["fcfs", "dpf-n"], {"N": [1, 30]}, workload_params={"duration": 60})
    assert calls["init"] == 1 and calls["remote"] >= 1
    assert result.runs["granted"].tolist() == local.runs["granted"].tolist()


def test_ray_missing_is_a_clean_error(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray → ImportError
    res = CliRunner().invoke(main, ["compare", "--backend", "ray", "--out", str(tmp_path)])
    assert res.exit_code == 2 and "pip install" in res.output and "Traceback" not in res.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--param", "N=0"], "N must be a positive integer"),
        (["--param", "N=-5,10"], "N must be a positive integer"),
        (["--param", "N="], "empty"),
        (["--param", "N"], "KEY=V1"),
        (["--param", "bogus=1,2"], "unknown parameter 'bogus'"),
        (["--param", "rate=-1"], "rate"),
        (["--wparam", "rate=-2"], "rate"),
        (["--param", "T=-1", "--policies", "dpf-t"], "T must be"),
        (["--param", "strict=maybe"], "strict"),
        (["--workload", "nope"], "unknown workload"),
        (["--policies", "fcfs,nope"], "unknown policy"),
        (["--policies", ""], "empty"),
        (["--seeds", "a"], "--seeds"),
        (["--jobs", "0"], "jobs"),
        (["--n", "1", "--param", "N=2"], "once"),
        (["--wparam", "composition=renyi", "--policies", "rr-n"], "basic composition only"),
    ],
)
def test_bad_input_is_a_clean_error(tmp_path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(main, ["compare", "--out", str(tmp_path), *args])
    assert res.exit_code == 2, (args, res.output)
    assert "error:" in res.output and message in res.output and "Traceback" not in res.output


def test_plan_refuses_an_empty_grid_and_ambiguity() -> None:
    with pytest.raises(InvalidParameterError, match="empty"):
        plan_runs("micro-single", ["fcfs"], {"N": []})
    with pytest.raises(InvalidParameterError, match="no policies"):
        plan_runs("micro-single", [], {"N": [1]})
    with pytest.raises(InvalidParameterError, match="both as fixed and as a grid"):
        plan_runs("micro-single", ["fcfs"], {"rate": [1.0]}, workload_params={"rate": 2.0})


def test_input_without_table_method_matches_the_vectorised_one() -> None:
    """The fallback (events read through tables_from_trace) builds the same input as ``Workload.table()``."""
    wl = make_workload("micro-multi", seed=1, duration=30.0)
    fallback = workload_input(types.SimpleNamespace(header=wl.header, events=wl.events))  # type: ignore[arg-type]
    if not hasattr(wl, "table"):
        pytest.skip("Workload.table() is not there yet")
    direct = wl.table()
    assert fallback.claims.ids == direct.claims.ids
    np.testing.assert_array_equal(fallback.claims.arrival, direct.claims.arrival)
    np.testing.assert_array_equal(fallback.claims.block, direct.claims.block)
    np.testing.assert_array_equal(fallback.claims.demand, direct.claims.demand)
    np.testing.assert_array_equal(fallback.blocks.capacity, direct.blocks.capacity)
    assert fallback.claims.labels == direct.claims.labels


def test_input_cache_is_bounded() -> None:
    compare_mod._CACHE.clear()
    for seed in range(4):
        compare_mod._cached_input("micro-single", {"duration": 10.0}, seed)
    assert len(compare_mod._CACHE) <= compare_mod._CACHE_SIZE
    compare_mod._CACHE.clear()


def test_scheduler_engine_measures_passes_and_gives_the_same_grants() -> None:
    kw: dict[str, Any] = {"workload_params": {"duration": 60.0}, "grid": {"N": [5]}}
    auto = compare("micro-single", ["fcfs", "dpf-n"], **kw)
    online = compare("micro-single", ["fcfs", "dpf-n"], engine="scheduler", **kw)
    assert set(auto.runs["engine"]) == {"batch"} and set(online.runs["engine"]) == {"scheduler"}
    assert auto.runs["granted"].tolist() == online.runs["granted"].tolist()
    assert (online.runs["passes"] > 0).all() and online.runs["pass_ms"].notna().all()
    assert auto.runs["pass_ms"].isna().all()
    with pytest.raises(InvalidParameterError, match="engine"):
        compare("micro-single", ["fcfs"], engine="warp", **kw)


def test_share_of_the_optimum_offline() -> None:
    res = compare(
        "packing-mix",
        ["fcfs", "dpf-n", "optimal"],
        {"N": [1]},
        seeds=[0, 1],
        workload_params={"claims": 30},
    )
    runs = res.runs
    opt = runs[runs["policy"] == "optimal"]
    assert (opt["of_optimal"] == 1.0).all()
    assert opt["optimal_proven"].astype(bool).all()  # 30 claims: proven at once
    assert (opt["optimal_bound"] >= opt["granted"] - 1e-9).all()
    others = runs[runs["policy"] != "optimal"]
    # Offline and proven: nobody grants more than the optimum; the share is granted / optimum of the same seed.
    assert (others["of_optimal"] <= 1.0 + 1e-12).all()
    for _, row in others.iterrows():
        best = float(opt[opt["seed"] == row["seed"]]["granted"].iloc[0])
        assert row["of_optimal"] == pytest.approx(row["granted"] / best)
    without = compare("packing-mix", ["fcfs"], {"N": [1]}, workload_params={"claims": 30})
    assert "of_optimal" not in without.runs.columns


def test_fair_n_measures_every_policy_by_the_same_n() -> None:
    kw: dict[str, Any] = {"workload_params": {"duration": 60.0}, "grid": {"N": [5]}}
    own = compare("micro-single", ["fcfs", "dpf-n"], **kw).runs.set_index("policy")
    same = compare("micro-single", ["fcfs", "dpf-n"], fair_n=5, **kw).runs.set_index("policy")
    assert math.isnan(own.loc["fcfs", "fair_granted_at_arrival"])
    assert not math.isnan(same.loc["fcfs", "fair_granted_at_arrival"])
    assert same.loc["dpf-n", "fair_granted_at_arrival"] == own.loc["dpf-n", "fair_granted_at_arrival"]
    with pytest.raises(InvalidParameterError):
        compare("micro-single", ["fcfs"], fair_n=0, **kw)


def test_plots_with_a_categorical_axis(tmp_path) -> None:
    res = compare(
        "packing-mix",
        ["dpf-n", "dpack"],
        {"N": [5], "unlocking": ["timed", "arrival"]},
        workload_params={"claims": 20, "offline": False},
    )
    compare_mod.write_outputs(res, tmp_path, "packing-mix")
    assert (tmp_path / "granted.png").stat().st_size > 0
    assert set(res.runs[res.runs["policy"] == "dpack"]["unlocking"]) == {"timed", "arrival"}
    assert res.runs[res.runs["policy"] == "dpf-n"]["unlocking"].isna().all()
