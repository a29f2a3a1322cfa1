"""`dpf-sched reproduce`: the shipped figure configurations, the quantity language, and the issue's must-show
claims on trimmed grids (the full figures are selected with ``-m slow``)."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from click.testing import CliRunner

from dpf_sched.cli import main
from dpf_sched.errors import InvalidParameterError
from dpf_sched.sim.compare import plan_runs
from dpf_sched.sim.reproduce import ReproConfig, figures, load_config, reproduce

FIGURES = ["fig6a", "fig7", "fig8", "fig9", "fig10", "fig16"]


def _quantities(q: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield q
    if "over" in q:
        yield from _quantities(q["over"])


def _all_quantities(cfg: ReproConfig) -> Iterator[Mapping[str, Any]]:
    for row in cfg.paper:
        yield from _quantities(row["ours"])
    for row in cfg.checks:
        yield from _quantities(row["left"])
        if isinstance(row["right"], Mapping):
            yield from _quantities(row["right"])


def _policies(q: Mapping[str, Any]) -> list[str]:
    return q["policy"] if isinstance(q["policy"], list) else [q["policy"]]


@pytest.mark.parametrize("figure", FIGURES)
def test_shipped_configurations_are_valid(figure: str) -> None:
    """Every figure loads, every experiment plans (names, grids, values), every quantity names a policy and a
    grid point of its experiment: a typo fails here, not after minutes of simulation."""
    assert figure in figures()
    cfg = load_config(figure)
    assert cfg.figure == figure and cfg.checks and cfg.paper
    experiments = {e.name: e for e in cfg.experiments}
    for exp in cfg.experiments:
        plan_runs(exp.workload, exp.policies, exp.grid, cfg.seeds, exp.workload_params)
    for q in _all_quantities(cfg):
        exp = experiments[q.get("experiment", cfg.experiments[0].name)]
        assert set(_policies(q)) <= set(exp.policies), (figure, q)
        for axis, value in dict(q.get("at", {})).items():
            for v in value if isinstance(value, list) else [value]:
                assert v in exp.grid[axis], (figure, q)


def _trim(cfg: ReproConfig, policies: set[str], grid: Mapping[str, list[Any]]) -> ReproConfig:
    """The configuration restricted to some policies and grid values, with the rows that still apply."""
    exps = tuple(
        dataclasses.replace(
            e,
            policies=tuple(p for p in e.policies if p in policies),
            grid={k: tuple(v for v in vals if v in grid.get(k, vals)) for k, vals in e.grid.items()},
        )
        for e in cfg.experiments
    )

    def keeps(qs: list[Mapping[str, Any]]) -> bool:
        for q in qs:
            for sub in _quantities(q):
                if not set(_policies(sub)) <= policies:
                    return False
                for axis, value in dict(sub.get("at", {})).items():
                    values = value if isinstance(value, list) else [value]
                    if axis in grid and not set(values) <= set(grid[axis]):
                        return False
        return True

    paper = tuple(r for r in cfg.paper if keeps([r["ours"]]))
    checks = tuple(
        r for r in cfg.checks if keeps([r["left"]] + ([r["right"]] if isinstance(r["right"], Mapping) else []))
    )
    return dataclasses.replace(cfg, experiments=exps, paper=paper, checks=checks)


def test_fig6a_dpf_reaches_the_100_claim_maximum() -> None:
    cfg = _trim(load_config("fig6a"), {"fcfs", "dpf-n", "dpf-t"}, {"N": [1, 175, 200, 325]})
    rep = reproduce(cfg, seeds=[0, 1])
    assert len(rep.checks) >= 2 and rep.passed, rep.checks
    table = rep.results["basic"].runs
    assert table[table["policy"].isin(["dpf-n", "dpf-t"])]["granted"].max() == 100


def test_fig8_dpf_peaks_at_1_8x_fcfs_and_dpf_t_beats_dpf_n_at_large_n() -> None:
    cfg = _trim(load_config("fig8"), {"fcfs", "dpf-n", "dpf-t"}, {"N": [1, 125, 175, 210, 6000, 10000]})
    rep = reproduce(cfg)
    whats = set(rep.checks["what"])
    assert {"DPF peaks at >= 1.8x FCFS", "DPF-T above DPF-N at N = 10000"} <= whats
    assert rep.passed, rep.checks


def test_cli_reproduce_fig7_report_json_and_out(tmp_path) -> None:
    res = CliRunner().invoke(main, ["reproduce", "fig7", "--seeds", "0,1", "--no-progress", "--check",
                                    "--out", str(tmp_path)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "ours beside the paper's" in res.stdout and "PASS" in res.stdout and "FAIL" not in res.stdout
    assert (tmp_path / "paper_vs_ours.csv").exists() and (tmp_path / "checks.csv").exists()
    assert (tmp_path / "basic" / "granted.png").exists() and (tmp_path / "basic" / "runs.csv").exists()
    res = CliRunner().invoke(main, ["reproduce", "fig7", "--seeds", "0", "--json"])
    runs = json.loads(res.stdout)
    assert len(runs) == 5 * 3  # 5 mice fractions x (FCFS, DPF-N, DPF-T) at the single N
    assert all(r["figure"] == "fig7" and r["experiment"] == "basic" and "mice_fraction" in r for r in runs)


CUSTOM = """
figure = "custom"
title = "a small custom figure"
seeds = [0]

[[experiment]]
name = "small"
workload = "micro-single"
policies = ["fcfs", "dpf-n"]
workload_params = { duration = 60 }
grid = { N = [1, 30] }

[[paper]]
what = "DPF-N at N = 30 over FCFS"
paper = "?"
ours = { policy = "dpf-n", stat = "at", at = { N = 30 }, over = { policy = "fcfs", stat = "mean" } }

[[check]]
what = "DPF-N equals FCFS at N = 1"
left = { policy = "dpf-n", stat = "at", at = { N = 1 } }
op = "=="
right = { policy = "fcfs", stat = "mean" }

[[check]]
what = "an impossible claim"
left = { policy = "fcfs", stat = "max" }
op = ">"
right = 1000000
"""


def test_custom_config_and_failing_check_exit_status(tmp_path) -> None:
    path = tmp_path / "custom.toml"
    path.write_text(CUSTOM, encoding="utf-8")
    res = CliRunner().invoke(main, ["reproduce", str(path), "--no-progress"])
    assert res.exit_code == 0, res.output
    assert "PASS  DPF-N equals FCFS at N = 1" in res.stdout and "FAIL  an impossible claim" in res.stdout
    res = CliRunner().invoke(main, ["reproduce", str(path), "--no-progress", "--check"])
    assert res.exit_code == 1 and "checks of the figure failed" in res.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("figure = 'x'", "needs at least one [[experiment]]"),
        ("[[experiment]]\nworkload = 'micro-single'", "needs workload and policies"),
        (
            "[[experiment]]\nworkload = 'micro-single'\npolicies = ['fcfs']\n"
            "[[check]]\nwhat = 'w'\nleft = { policy = 'fcfs', stat = 'median' }\nop = '>'\nright = 1",
            "stat must be one of",
        ),
        (
            "[[experiment]]\nworkload = 'micro-single'\npolicies = ['fcfs']\n"
            "[[check]]\nwhat = 'w'\nleft = { policy = 'fcfs' }\nop = '=>'\nright = 1",
            "op",
        ),
        ("not toml [", "cannot read"),
    ],
)
def test_malformed_config_is_a_clean_error(tmp_path, text: str, message: str) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(InvalidParameterError, match=message.replace("[", r"\[")):
        load_config(path)
    res = CliRunner().invoke(main, ["reproduce", str(path)])
    assert res.exit_code == 2 and "error:" in res.output and "Traceback" not in res.output


def test_unknown_figure_lists_the_known_ones() -> None:
    res = CliRunner().invoke(main, ["reproduce", "fig99"])
    assert res.exit_code == 2 and "unknown figure" in res.output and "fig8" in res.output


@pytest.mark.slow
@pytest.mark.parametrize("figure", ["fig6a", "fig8"])
def test_full_figure_must_show(figure: str, request: pytest.FixtureRequest) -> None:
    """The issue's must-show claims on the full grids (RR included; minutes): select with ``-m slow``."""
    if "slow" not in (request.config.getoption("markexpr", "") or ""):
        pytest.skip("full figure: select it with -m slow")
    res = CliRunner().invoke(main, ["reproduce", figure, "--jobs", "2", "--no-progress", "--check"])
    assert res.exit_code == 0, res.output
