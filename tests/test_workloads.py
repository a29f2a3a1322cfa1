"""Workload generators (dpf_sched.sim.workloads): determinism, table ⇔ trace identity, the statistics of
spec/workloads.md, the DP-SGD demands of ``macro``, parameter validation, and ``dpf-sched trace``."""

from __future__ import annotations

import io
import math
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

from dpf_sched.accounting import (
    gaussian_rdp,
    gaussian_sigma_for,
    laplace_rdp,
    rdp_to_epsilon,
    subsampled_gaussian_rdp,
)
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.cli import main
from dpf_sched.errors import InvalidParameterError
from dpf_sched.sim.table import SimInput, tables_from_trace
from dpf_sched.sim.trace import read_trace, write_trace
from dpf_sched.sim.workloads import (
    MACRO_ALPHAS,
    MICRO_ALPHAS,
    MODEL_BLOCKS,
    MODEL_EPSILONS,
    STAT_BLOCKS,
    STAT_EPSILONS,
    WORKLOADS,
    Workload,
    make_workload,
    workload_params,
)

#: Small instances of every workload and composition (fast enough to write and re-read as text).
SMALL: list[tuple[str, dict[str, Any]]] = [
    ("micro-single", {"composition": "basic"}),
    ("micro-single", {"composition": "renyi", "duration": 500}),
    ("micro-multi", {"composition": "basic"}),
    ("micro-multi", {"composition": "renyi", "duration": 20}),
    ("macro", {"composition": "basic", "days": 8}),
    ("macro", {"composition": "renyi", "days": 8}),
    ("hetero-renyi", {"duration": 150}),
    ("packing-mix", {"offline": False, "claims": 150}),
]
IDS = [f"{n}-{p.get('composition', 'renyi')}" for n, p in SMALL]


def assert_same_input(a: SimInput, b: SimInput) -> None:
    """Exactly the same run: blocks, claims (ids, times, timeouts, blocks, demands, labels, owners), end."""
    assert a.header.composition == b.header.composition
    assert tuple(a.header.alphas) == tuple(b.header.alphas) or a.header.composition == "basic"
    assert a.blocks.ids == b.blocks.ids
    np.testing.assert_array_equal(a.blocks.created, b.blocks.created)
    np.testing.assert_array_equal(a.blocks.capacity, b.blocks.capacity)
    ca, cb = a.claims, b.claims
    assert ca.ids == cb.ids
    for name in ("arrival", "timeout", "ptr", "block", "demand"):
        x, y = getattr(ca, name), getattr(cb, name)
        assert x.shape == y.shape, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert ca.labels == cb.labels
    assert ca.owners == cb.owners
    assert a.end == b.end


def written(wl: Workload) -> str:
    buf = io.StringIO()
    write_trace(buf, wl.header, wl.events())
    return buf.getvalue()


def rows_of(inp: SimInput, k: int) -> np.ndarray:
    return inp.claims.block[inp.claims.ptr[k] : inp.claims.ptr[k + 1]]


# ----- determinism and table ⇔ trace identity -----------------------------------------------------------------


@pytest.mark.parametrize(("name", "params"), SMALL, ids=IDS)
def test_same_seed_same_run_other_seed_other_run(name: str, params: dict[str, Any]) -> None:
    a = make_workload(name, seed=7, **params)
    b = make_workload(name, seed=7, **params)
    assert_same_input(a.table(), b.table())
    assert_same_input(a.table(), a.table())  # rebuilt identically on every call
    assert written(a) == written(b)
    other = make_workload(name, seed=8, **params).table()
    ta = a.table().claims.arrival
    assert len(ta) != len(other.claims.arrival) or not np.array_equal(ta, other.claims.arrival)


@pytest.mark.parametrize(("name", "params"), SMALL, ids=IDS)
def test_table_is_the_written_trace(name: str, params: dict[str, Any]) -> None:
    """table() and the trace file (write_trace → read_trace → tables_from_trace) are the same run."""
    wl = make_workload(name, seed=3, **params)
    table = wl.table()
    assert len(table.claims) > 0
    back = tables_from_trace(read_trace(io.StringIO(written(wl))), wl.header.end)
    assert_same_input(table, back)
    assert_same_input(table, tables_from_trace(wl.trace(), wl.header.end))
    assert table.end == wl.header.end
    assert read_trace(io.StringIO(written(wl))).header.meta["name"] == name


def test_header_meta_and_mean_interarrival() -> None:
    wl = make_workload("micro-multi", seed=5, composition="renyi")
    assert wl.header.meta["seed"] == 5 and wl.header.meta["name"] == "micro-multi"
    assert wl.header.meta["params"]["rate"] == 234.5
    assert wl.mean_interarrival == pytest.approx(1 / 234.5)
    assert wl.header.composition == "renyi" and tuple(wl.header.alphas) == MICRO_ALPHAS
    assert wl.header.conversion == "classic" and wl.header.end == 300.0
    assert make_workload("micro-multi").mean_interarrival == pytest.approx(1 / 12.8)
    assert make_workload("micro-single").header.end == 236.0
    assert make_workload("micro-single", composition="renyi").header.end == 34289.0
    assert make_workload("macro").mean_interarrival == pytest.approx(1 / 300)


def test_workload_params_lists_defaults() -> None:
    assert workload_params("micro-single")["mice_fraction"] == 0.75
    assert workload_params("macro")["days"] == 50
    for name in WORKLOADS:
        assert "seed" in workload_params(name)


# ----- statistics of spec/workloads.md ------------------------------------------------------------------------


def within(count: float, n: int, p: float, sigmas: float = 5.0) -> bool:
    """``count`` is within ``sigmas`` binomial standard deviations of ``n·p``."""
    return abs(count - n * p) <= sigmas * math.sqrt(max(n * p * (1 - p), 1.0))


def test_micro_single_basic_statistics() -> None:
    inp = make_workload("micro-single", seed=11, duration=20_000).table()
    c = inp.claims
    n = len(c)
    assert abs(n - 20_000) <= 5 * math.sqrt(20_000)  # Poisson, 1 claim/s
    assert np.all(np.diff(c.arrival) >= 0) and c.arrival[0] >= 0 and c.arrival[-1] < 20_000
    gaps = np.diff(c.arrival)
    assert gaps.mean() == pytest.approx(1.0, rel=0.05) and gaps.std() == pytest.approx(1.0, rel=0.05)  # exponential
    mice = np.array([lab == "mice" for lab in c.labels])
    assert set(c.labels) == {"mice", "elephant"} and within(mice.sum(), n, 0.75)
    np.testing.assert_array_equal(c.demand[mice], np.tile([0.01, 1e-9], (mice.sum(), 1)))
    np.testing.assert_array_equal(c.demand[~mice], np.tile([0.1, 1e-9], ((~mice).sum(), 1)))
    assert np.all(c.timeout == 300.0) and np.all(c.n_blocks == 1) and np.all(c.block == 0)
    assert inp.blocks.ids == ("b0",) and inp.blocks.created.tolist() == [0.0]
    np.testing.assert_array_equal(inp.blocks.capacity, [[1.0, 1e-6]])
    assert set(c.owners) == {None}
    # A basic block holds 100 mice or 10 elephants (spec/workloads.md).
    assert round(1.0 / 0.01) == 100 and round(1.0 / 0.1) == 10


def test_micro_single_renyi_demands_and_capacity() -> None:
    wl = make_workload("micro-single", seed=1, composition="renyi", duration=2000)
    inp = wl.table()
    a = np.asarray(MICRO_ALPHAS)
    mice = gaussian_rdp(a, gaussian_sigma_for(0.01, 1e-9))
    eleph = gaussian_rdp(a, gaussian_sigma_for(0.1, 1e-9))
    cap = EpsDelta(1.0, 1e-6).to_renyi(AlphaGrid(MICRO_ALPHAS), "classic").values
    np.testing.assert_array_equal(inp.blocks.capacity[0], cap)
    is_mouse = np.array([lab == "mice" for lab in inp.claims.labels])
    np.testing.assert_array_equal(inp.claims.demand[is_mouse], np.tile(mice, (is_mouse.sum(), 1)))
    np.testing.assert_array_equal(inp.claims.demand[~is_mouse], np.tile(eleph, ((~is_mouse).sum(), 1)))
    # spec/workloads.md: a Rényi block holds 14,514 mice or 145 elephants, at best α = 32.
    i32 = MICRO_ALPHAS.index(32.0)
    usable = cap > 0
    assert int(np.max(np.floor(cap[usable] / mice[usable]))) == 14_514
    assert int(np.max(np.floor(cap[usable] / eleph[usable]))) == 145
    assert int(np.argmax(np.where(usable, cap / mice, 0))) == i32
    assert wl.block_guarantee == EpsDelta(1.0, 1e-6)


def test_micro_multi_block_schedule_and_widths() -> None:
    inp = make_workload("micro-multi", seed=4).table()
    blocks, c = inp.blocks, inp.claims
    assert len(blocks) == 41  # 12 at t = 0, then one every 10 s before 300 s
    expected = [0.0] * 12 + [10.0 * k for k in range(1, 30)]
    assert blocks.created.tolist() == expected
    n = len(c)
    assert abs(n - 12.8 * 300) <= 5 * math.sqrt(12.8 * 300)
    widths = c.n_blocks
    assert set(np.unique(widths).tolist()) == {1, 10}
    assert within((widths == 10).sum(), n, 0.25)
    mice = np.array([lab == "mice" for lab in c.labels])
    assert within(mice.sum(), n, 0.75)
    # Width is independent of ε: the multi-block share is the same among mice and elephants.
    assert abs((widths[mice] == 10).mean() - (widths[~mice] == 10).mean()) < 0.06
    assert np.all(np.isinf(c.timeout))
    for k in range(n):
        latest = int(np.searchsorted(blocks.created, c.arrival[k], side="right")) - 1
        assert rows_of(inp, k).tolist() == list(range(latest - widths[k] + 1, latest + 1))


def test_micro_multi_renyi_rate() -> None:
    inp = make_workload("micro-multi", seed=2, composition="renyi", duration=30).table()
    assert abs(len(inp.claims) - 234.5 * 30) <= 5 * math.sqrt(234.5 * 30)
    assert inp.claims.demand.shape[1] == len(MICRO_ALPHAS)


def test_mice_fraction_sweep_keeps_arrivals_and_nests_mice() -> None:
    """Fig. 7 sweeps the mice fraction: one seed gives the same arrivals and blocks, and nested mice sets."""
    tables = {f: make_workload("micro-multi", seed=9, mice_fraction=f).table() for f in (0.0, 0.25, 0.5, 0.75, 1.0)}
    base = tables[0.0].claims
    mice_sets = {}
    for f, inp in tables.items():
        np.testing.assert_array_equal(inp.claims.arrival, base.arrival)
        np.testing.assert_array_equal(inp.claims.block, base.block)
        mice_sets[f] = {i for i, lab in enumerate(inp.claims.labels) if lab == "mice"}
    assert mice_sets[0.0] == set() and len(mice_sets[1.0]) == len(base)
    assert mice_sets[0.25] <= mice_sets[0.5] <= mice_sets[0.75]
    assert within(len(mice_sets[0.5]), len(base), 0.5)


def test_timeout_parameter() -> None:
    assert np.all(np.isinf(make_workload("micro-single", timeout="none").table().claims.timeout))
    assert np.all(make_workload("micro-multi", timeout=7).table().claims.timeout == 7.0)


def test_macro_structure_and_statistics() -> None:
    wl = make_workload("macro", seed=6)
    run = wl.generate()
    inp, kind = run.table, run.kind
    blocks, c = inp.blocks, inp.claims
    assert blocks.created.tolist() == [float(d) for d in range(50)]
    np.testing.assert_array_equal(blocks.capacity, np.tile([10.0, 1e-7], (50, 1)))
    n = len(c)
    assert abs(n - 300 * 50) <= 5 * math.sqrt(300 * 50)
    assert np.all(c.timeout == 5.0) and inp.end == 50.0
    labels = np.array(c.labels)
    mice = labels == "mice"
    assert set(labels.tolist()) == {"mice", "elephant"} and within(mice.sum(), n, 0.75)
    owners = np.array(c.owners)
    assert set(owners[mice].tolist()) == {"analytics"}
    assert set(owners[~mice].tolist()) == {"product", "sentiment"}
    assert within((owners == "product").sum(), (~mice).sum(), 0.5)
    kinds = wl.kinds
    mech = np.array([kinds[k].mechanism for k in kind])
    assert set(mech[mice].tolist()) == {"laplace", "gaussian"} and set(mech[~mice].tolist()) == {"dp-sgd"}
    assert within((mech == "gaussian").sum(), mice.sum(), 0.5)
    first = c.demand[c.ptr[:-1]]  # one (ε, δ) row per claim (the same on each of its blocks)
    assert set(np.unique(first[mice, 0]).tolist()) == set(STAT_EPSILONS)
    assert set(np.unique(first[~mice, 0]).tolist()) == set(MODEL_EPSILONS)
    assert set(np.unique(first[mech == "laplace", 1]).tolist()) == {0.0}
    assert set(np.unique(first[mech == "gaussian", 1]).tolist()) == {1e-10}
    assert set(np.unique(first[~mice, 1]).tolist()) == {1e-9}
    np.testing.assert_array_equal(c.demand, np.repeat(first, c.n_blocks, axis=0))
    # Blocks: the most recent k days, k from the kind's grid, fewer only when fewer days exist yet.
    for k in range(n):
        latest = int(np.floor(c.arrival[k]))
        want = kinds[kind[k]].blocks
        assert want in (STAT_BLOCKS if mice[k] else MODEL_BLOCKS)
        width = min(want, latest + 1)
        assert rows_of(inp, k).tolist() == list(range(latest - width + 1, latest + 1))
    widths = c.n_blocks
    assert widths[mice].max() <= max(STAT_BLOCKS) and widths[~mice].max() == 50
    assert widths[~mice].mean() > 2 * widths[mice].mean()


def test_macro_renyi_demands_come_from_the_accountant() -> None:
    """Every DP-SGD demand is subsampled_gaussian_rdp of its own parameters and meets its (ε, δ) target."""
    wl = make_workload("macro", seed=0, composition="renyi", days=10)
    a = np.asarray(MACRO_ALPHAS)
    assert tuple(wl.header.alphas) == MACRO_ALPHAS
    cap = EpsDelta(10.0, 1e-7).to_renyi(AlphaGrid(MACRO_ALPHAS), "classic").values
    assert np.all(cap > 0)  # every order of the grid is usable for an (10, 1e-7) block
    sgd = [k for k in wl.kinds if k.mechanism == "dp-sgd"]
    assert len(sgd) == 2 * 4 * 3 * len(MODEL_BLOCKS)
    for kd in sgd:
        p = kd.params
        records = int(p["records"])
        batch = math.isqrt(records)
        assert p["batch_size"] == batch and p["sample_rate"] == batch / records
        assert p["steps"] == p["epochs"] * math.ceil(records / batch)
        curve = subsampled_gaussian_rdp(a, p["noise_multiplier"], p["sample_rate"], int(p["steps"]))
        assert isinstance(kd.demand, RenyiCurve)
        np.testing.assert_array_equal(kd.demand.values, curve)
        for conversion in ("classic", "balle"):
            eps, _ = rdp_to_epsilon(a, curve, kd.delta, conversion)
            assert eps <= kd.epsilon
        # Calibrated, not just safe: 0.01 less noise would overshoot the target on the classic conversion.
        lower = subsampled_gaussian_rdp(a, p["noise_multiplier"] - 0.01, p["sample_rate"], int(p["steps"]))
        assert rdp_to_epsilon(a, lower, kd.delta, "classic")[0] > kd.epsilon
        assert kd.delta == 1e-9 and kd.label == "elephant" and kd.owner in ("product", "sentiment")
    for kd in wl.kinds:
        assert isinstance(kd.demand, RenyiCurve)
        if kd.mechanism == "laplace":
            np.testing.assert_array_equal(kd.demand.values, laplace_rdp(a, 1.0 / kd.epsilon))
        elif kd.mechanism == "gaussian":
            np.testing.assert_array_equal(kd.demand.values, gaussian_rdp(a, gaussian_sigma_for(kd.epsilon, 1e-10)))
    # The table's rows are the kinds' curves, claim by claim.
    run = wl.generate()
    rows_kind = np.repeat(run.kind, run.table.claims.n_blocks)
    kind_rows = np.stack([k.demand.values for k in wl.kinds])  # type: ignore[union-attr]
    np.testing.assert_array_equal(run.table.claims.demand, kind_rows[rows_kind])


def test_macro_basic_and_renyi_are_the_same_pipelines() -> None:
    basic = make_workload("macro", seed=2, days=6).generate()
    renyi = make_workload("macro", seed=2, days=6, composition="renyi").generate()
    np.testing.assert_array_equal(basic.kind, renyi.kind)
    np.testing.assert_array_equal(basic.table.claims.arrival, renyi.table.claims.arrival)
    np.testing.assert_array_equal(basic.table.claims.block, renyi.table.claims.block)


def test_hetero_renyi_best_orders_differ() -> None:
    wl = make_workload("hetero-renyi", seed=3, duration=3000)
    run = wl.generate()
    inp = run.table
    assert len(inp.blocks) == 10 and np.all(inp.blocks.created == 0.0)
    cap = inp.blocks.capacity[0]
    best: dict[str, set[float]] = {}
    for kd in wl.kinds:
        assert isinstance(kd.demand, RenyiCurve)
        share = kd.demand.values / cap
        best.setdefault(kd.label, set()).add(MACRO_ALPHAS[int(np.argmin(share))])
        assert 0.01 < share.min() < 0.25  # a block holds a few dozen claims of any kind
    assert set(best) == {"laplace", "gaussian", "dp-sgd"}
    assert best["laplace"].isdisjoint(best["gaussian"])
    assert best["laplace"].isdisjoint(best["dp-sgd"])
    assert best["gaussian"].isdisjoint(best["dp-sgd"])
    a = np.asarray(MACRO_ALPHAS)
    for kd in wl.kinds:
        p = kd.params
        if kd.mechanism == "laplace":
            expected = laplace_rdp(a, p["scale"])
        elif kd.mechanism == "gaussian":
            expected = gaussian_rdp(a, p["sigma"])
        else:
            expected = subsampled_gaussian_rdp(a, p["noise_multiplier"], p["sample_rate"], int(p["steps"]))
        np.testing.assert_array_equal(kd.demand.values, expected)  # type: ignore[union-attr]
    c = inp.claims
    n = len(c)
    labels = np.array(c.labels)
    for fam in ("laplace", "gaussian", "dp-sgd"):
        assert within((labels == fam).sum(), n, 1 / 3)
    widths = c.n_blocks
    assert set(np.unique(widths).tolist()) == {1, 2, 3}
    for w in (1, 2, 3):
        assert within((widths == w).sum(), n, 1 / 3)
    for k in range(n):
        b = rows_of(inp, k)
        assert np.all(np.diff(b) > 0) and b.min() >= 0 and b.max() < 10
    # Every block is picked about equally often.
    counts = np.bincount(c.block, minlength=10)
    assert counts.min() > 0.8 * counts.mean()


# ----- bad parameters -----------------------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any]]] = [
    ("micro-single", {"rate": -1}),
    ("micro-single", {"rate": 0}),
    ("micro-single", {"rate": "fast"}),
    ("micro-single", {"rate": math.nan}),
    ("micro-single", {"mice_fraction": 1.5}),
    ("micro-single", {"mice_fraction": -0.1}),
    ("micro-single", {"duration": 0}),
    ("micro-single", {"timeout": -5}),
    ("micro-single", {"composition": "advanced"}),
    ("micro-single", {"seed": -1}),
    ("micro-single", {"seed": 1.5}),
    ("micro-single", {"rate": 1e9, "duration": 1e9}),
    ("micro-single", {"colour": "red"}),
    ("micro-multi", {"rate": -12.8}),
    ("micro-multi", {"multi_fraction": 2}),
    ("micro-multi", {"multi_blocks": 0}),
    ("micro-multi", {"initial_blocks": 2.5}),
    ("micro-multi", {"block_interval": 0}),
    ("macro", {"days": 0}),
    ("macro", {"pipelines_per_day": -3}),
    ("macro", {"mice_fraction": 7}),
    ("macro", {"gaussian_fraction": 1.1}),
    ("macro", {"block_delta": 1}),
    ("macro", {"block_epsilon": 0}),
    ("macro", {"records_per_block": 0}),
    ("macro", {"composition": "renyi", "block_epsilon": 1e-3}),  # zero Rényi capacity on the grid
    ("hetero-renyi", {"max_blocks": 11}),
    ("hetero-renyi", {"laplace_fraction": 0.7, "gaussian_fraction": 0.7}),
    ("hetero-renyi", {"rate": -1}),
    ("hetero-renyi", {"composition": "basic"}),
    ("packing-mix", {"alpha_spread": 1.5}),
    ("packing-mix", {"blocks_per_claim": 11}),
    ("packing-mix", {"blocks_distribution": "zipf"}),
    ("packing-mix", {"share_min": 0.5, "share_max": 0.1}),
    ("packing-mix", {"share_min": 0}),
    ("packing-mix", {"offline": "maybe"}),
    ("packing-mix", {"claims": 2.5}),
    ("packing-mix", {"block_interval": 0}),
    ("no-such-workload", {}),
]


@pytest.mark.parametrize(("name", "params"), BAD, ids=[f"{n}-{sorted(p)}" for n, p in BAD])
def test_bad_parameters_are_invalid_parameter_errors(name: str, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameterError) as e:
        make_workload(name, **params)
    assert str(e.value)


def test_fractions_at_the_bounds_are_valid() -> None:
    for f in (0.0, 1.0):
        labels = set(make_workload("micro-single", mice_fraction=f).table().claims.labels)
        assert labels == ({"mice"} if f == 1.0 else {"elephant"})
    only_laplace = make_workload("hetero-renyi", laplace_fraction=1.0, gaussian_fraction=0.0).table()
    assert set(only_laplace.claims.labels) == {"laplace"}


# ----- the CLI ------------------------------------------------------------------------------------------------

CLI_PARAMS: dict[str, list[str]] = {
    "micro-single": ["duration=50"],
    "micro-multi": ["duration=20", "composition=renyi"],
    "macro": ["days=5", "composition=renyi", "mice_fraction=0.5"],
    "hetero-renyi": ["duration=30", "timeout=none"],
    "packing-mix": ["offline=false", "claims=40", "alpha_spread=0.5"],
}


@pytest.mark.parametrize("name", sorted(WORKLOADS))
def test_cli_trace_writes_every_workload(name: str) -> None:
    args = ["trace", "--workload", name, "--seed", "4"]
    for p in CLI_PARAMS[name]:
        args += ["--param", p]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    trace = read_trace(io.StringIO(res.output))
    assert trace.header.meta["name"] == name and trace.header.meta["seed"] == 4
    from_cli = tables_from_trace(trace, trace.header.end)
    params: dict[str, Any] = {}
    for p in CLI_PARAMS[name]:
        k, _, v = p.partition("=")
        params[k] = v
    assert_same_input(from_cli, make_workload(name, seed=4, **params).table())
    assert len(from_cli.claims) > 0


@pytest.mark.parametrize(
    "args",
    [
        ["--workload", "nope"],
        ["--workload", "micro-single", "--param", "rate=-1"],
        ["--workload", "micro-multi", "--param", "mice_fraction=1.5"],
        ["--workload", "macro", "--param", "colour=red"],
        ["--workload", "hetero-renyi", "--param", "max_blocks=0"],
        ["--workload", "micro-single", "--seed", "-3"],
        ["--workload", "micro-single", "--param", "rate"],
    ],
)
def test_cli_trace_bad_input_is_a_clean_error(args: list[str]) -> None:
    res = CliRunner().invoke(main, ["trace", *args])
    assert res.exit_code != 0
    assert "error:" in res.output and "Traceback" not in res.output


# ----- packing-mix ------------------------------------------------------------------------------------------


def _best_orders(wl: Workload, inp: SimInput) -> np.ndarray:
    """Each claim's best order: where its demand is the smallest share of a block."""
    cap = inp.blocks.capacity[0]
    ratio = np.where(cap > 0, inp.claims.demand / np.where(cap > 0, cap, 1.0), np.inf)
    return np.asarray(MACRO_ALPHAS)[np.argmin(ratio, axis=1)][inp.claims.ptr[:-1]]


def test_packing_mix_default_is_the_offline_target_instance() -> None:
    wl = make_workload("packing-mix")
    inp = wl.table()
    assert len(inp.blocks) == 10 and len(inp.claims) == 200
    assert np.all(inp.blocks.created == 0.0) and np.all(inp.claims.arrival == 0.0)
    assert wl.header.composition == "renyi" and tuple(wl.header.alphas) == MACRO_ALPHAS
    # Shares of a block at the best order: a few % to about 30 %; best orders over the whole grid.
    cap = inp.blocks.capacity[0]
    share = np.min(np.where(cap > 0, inp.claims.demand / np.where(cap > 0, cap, 1.0), np.inf), axis=1)
    assert share.min() >= 0.02 * 0.8 and share.max() <= 0.3 + 1e-12
    assert len(set(_best_orders(wl, inp).tolist())) >= 10
    assert set(inp.claims.labels) <= {"laplace", "gaussian", "dp-sgd", "composed"}
    assert len(set(inp.claims.labels)) >= 3
    # More demand than capacity: packing matters.
    assert share.sum() * 2 > 2 * len(inp.blocks)


def test_packing_mix_alpha_spread() -> None:
    narrow = make_workload("packing-mix", seed=2, alpha_spread=0.0)
    assert set(_best_orders(narrow, narrow.table()).tolist()) == {16.0}
    wide = make_workload("packing-mix", seed=2, alpha_spread=1.0)
    assert len(set(_best_orders(wide, wide.table()).tolist())) > 8
    half = make_workload("packing-mix", seed=2, alpha_spread=0.5)
    orders = set(_best_orders(half, half.table()).tolist())
    assert 1 < len(orders) < len(set(_best_orders(wide, wide.table()).tolist()))
    for kd in wide.kinds:  # every curve is k compositions of one unit mechanism from the accountant
        k = int(kd.params["repeats"])
        if kd.mechanism == "laplace":
            np.testing.assert_allclose(kd.demand.values, k * laplace_rdp(MACRO_ALPHAS, kd.params["scale"]))  # type: ignore[union-attr]
        elif kd.mechanism == "gaussian":
            np.testing.assert_allclose(kd.demand.values, k * gaussian_rdp(MACRO_ALPHAS, kd.params["sigma"]))  # type: ignore[union-attr]


@pytest.mark.parametrize("dist", ["uniform", "fixed", "geometric"])
def test_packing_mix_blocks_per_claim(dist: str) -> None:
    inp = make_workload("packing-mix", seed=1, blocks_per_claim=4, blocks_distribution=dist, claims=400).table()
    widths = inp.claims.n_blocks
    assert widths.min() >= 1 and widths.max() <= 4
    if dist == "fixed":
        assert np.all(widths == 4)
    elif dist == "uniform":
        assert set(widths.tolist()) == {1, 2, 3, 4}
    else:
        assert (widths == 1).sum() > (widths == 2).sum() > (widths == 4).sum()
    for k in range(len(inp.claims)):  # consecutive blocks
        b = rows_of(inp, k)
        assert np.all(np.diff(b) == 1)


def test_packing_mix_online() -> None:
    wl = make_workload("packing-mix", seed=5, offline=False, blocks=12, claims=300, block_interval=2.0)
    inp = wl.table()
    np.testing.assert_array_equal(inp.blocks.created, np.arange(12) * 2.0)
    assert wl.header.end == 24.0 and wl.mean_interarrival == pytest.approx(24.0 / 300)
    arr = inp.claims.arrival
    assert np.all(np.diff(arr) >= 0) and arr.max() < 24.0 and within(len(arr), 600, 0.5)
    for k in range(len(inp.claims)):  # the most recent blocks at arrival
        b = rows_of(inp, k)
        assert inp.blocks.created[b].max() <= arr[k]
        assert b.max() == np.searchsorted(inp.blocks.created, arr[k], side="right") - 1


def test_packing_mix_offline_flag_from_text() -> None:
    assert make_workload("packing-mix", offline="false", claims=50).table().claims.arrival.max() > 0
    assert make_workload("packing-mix", offline="true").table().claims.arrival.max() == 0


def test_packing_mix_offline_is_deterministic_per_seed() -> None:
    a, b = make_workload("packing-mix", seed=9), make_workload("packing-mix", seed=9)
    assert_same_input(a.table(), b.table())
    assert written(a) == written(b)
    assert_same_input(a.table(), tables_from_trace(read_trace(io.StringIO(written(a))), a.header.end))
    other = make_workload("packing-mix", seed=10).table()
    assert not np.array_equal(a.table().claims.demand[:50], other.claims.demand[:50])
