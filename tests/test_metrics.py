"""Metrics of a replay (dpf_sched.sim.metrics) against hand-computed values on tiny traces."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from dpf_sched.errors import InvalidParameterError
from dpf_sched.sim import metrics
from dpf_sched.sim.compare import workload_input
from dpf_sched.sim.metrics import (
    block_frame,
    block_utilisation,
    claims_frame,
    fair_demand_mask,
    fair_granted_at_arrival,
    group_counts,
    jain_index,
    run_summary,
    write_frame,
)
from dpf_sched.sim.replay import ReplayResult, replay_input
from dpf_sched.sim.table import SimInput, tables_from_trace
from dpf_sched.sim.trace import read_trace
from dpf_sched.sim.workloads import make_workload


def _input(*lines: dict[str, Any]) -> SimInput:
    return tables_from_trace(read_trace([json.dumps(x) + "\n" for x in lines]))


def _claim(cid: str, t: float, blocks: list[str], eps: float, owner: str, label: str) -> dict[str, Any]:
    return {"kind": "claim", "id": cid, "time": t, "blocks": blocks, "epsilon": eps, "owner": owner, "class": label}


# Two blocks of ε_G = 1 (pure ε: δ_G = 0, so the δ column cannot be used), DPF-N with N = 2:
#   t=1 c0 (b0,b1; 0.6): unlocked (0.5, 0.5): waits.
#   t=2 c1 (b0; 0.3):    b0 unlocked 1.0; c1 (share 0.3) granted first; c0 still short on b1 (0.5 < 0.6).
#   t=3 c2 (b1; 0.2):    b1 unlocked 1.0; c2 (0.2) granted, then c0 (b0 0.7 left, b1 0.8 left): granted.
#   t=4 c3 (b0; 0.5):    only 0.1 of b0 is left for ever: rejected at arrival.
#   t=5 block b2; t=6 c4 (b2; 0.9): b2 half unlocked by its only arrival: waits to the end.
BASIC = (
    {"kind": "header", "composition": "basic"},
    {"kind": "block", "id": "b0", "time": 0, "epsilon": 1.0},
    {"kind": "block", "id": "b1", "time": 0, "epsilon": 1.0},
    _claim("c0", 1, ["b0", "b1"], 0.6, "A", "elephant"),
    _claim("c1", 2, ["b0"], 0.3, "B", "mice"),
    _claim("c2", 3, ["b1"], 0.2, "B", "mice"),
    _claim("c3", 4, ["b0"], 0.5, "A", "mice"),
    {"kind": "block", "id": "b2", "time": 5, "epsilon": 1.0},
    _claim("c4", 6, ["b2"], 0.9, "C", "elephant"),
)


@pytest.fixture(scope="module")
def basic_run() -> tuple[SimInput, ReplayResult]:
    inp = _input(*BASIC)
    return inp, replay_input(inp, "dpf-n", {"N": 2})


def test_claims_frame_statuses_and_delays(basic_run: tuple[SimInput, ReplayResult]) -> None:
    _, res = basic_run
    df = claims_frame(res)
    assert list(df["id"]) == ["c0", "c1", "c2", "c3", "c4"]
    assert list(df["status"]) == ["granted", "granted", "granted", "rejected", "waiting"]
    assert list(df["label"]) == ["elephant", "mice", "mice", "mice", "elephant"]
    assert list(df["owner"]) == ["A", "B", "B", "A", "C"]
    assert list(df["n_blocks"]) == [2, 1, 1, 1, 1]
    np.testing.assert_array_equal(df["granted_at"].to_numpy()[:3], [3.0, 2.0, 3.0])
    np.testing.assert_array_equal(df["delay"].to_numpy()[:3], [2.0, 0.0, 0.0])
    assert df["delay"].iloc[3:].isna().all()
    assert df["reason"].iloc[3] and df["reason"].iloc[0] is None


def test_group_counts_by_class_and_owner(basic_run: tuple[SimInput, ReplayResult]) -> None:
    _, res = basic_run
    by_class = group_counts(res, "label")
    assert by_class.loc["mice", ["granted", "rejected", "waiting", "total"]].tolist() == [2, 1, 0, 3]
    assert by_class.loc["elephant", ["granted", "rejected", "waiting", "total"]].tolist() == [1, 0, 1, 2]
    assert by_class.loc["elephant", "delay_median"] == 2.0
    by_owner = group_counts(res, "owner")
    assert by_owner["granted_share"].to_dict() == {"A": 0.5, "B": 1.0, "C": 0.0}
    with pytest.raises(InvalidParameterError):
        group_counts(res, "colour")


def test_jain_index_on_known_vectors() -> None:
    assert jain_index([1, 1, 1, 1]) == pytest.approx(1.0)
    assert jain_index([1, 0, 0, 0]) == pytest.approx(0.25)  # 1/n: one gets everything
    assert jain_index([1, 2, 3]) == pytest.approx(36 / 42)  # (1+2+3)² / (3·(1+4+9))
    assert jain_index([0.5, 1.0, 0.0]) == pytest.approx(2.25 / 3.75)
    assert math.isnan(jain_index([])) and math.isnan(jain_index([0, 0]))
    with pytest.raises(InvalidParameterError):
        jain_index([1, -1])


def test_run_summary_by_hand(basic_run: tuple[SimInput, ReplayResult]) -> None:
    inp, res = basic_run
    s = run_summary(res, inp)  # N comes from the policy
    assert (s["granted"], s["rejected"], s["waiting"]) == (3, 1, 1)
    assert (s["granted_mice"], s["rejected_mice"], s["granted_elephant"], s["waiting_elephant"]) == (2, 1, 1, 1)
    assert s["delay_mean"] == pytest.approx(2 / 3) and s["delay_p50"] == 0.0 and s["delay_max"] == 2.0
    # granted share per owner: A 1/2, B 2/2, C 0/1; per class: elephant 1/2, mice 2/3.
    assert s["jain_owners"] == pytest.approx(0.6)
    assert s["jain_classes"] == pytest.approx(0.98)
    # ε consumed: b0 0.3 + 0.6, b1 0.2 + 0.6, b2 nothing.
    assert s["utilisation_mean"] == pytest.approx((0.9 + 0.8 + 0.0) / 3)
    assert s["utilisation_max"] == pytest.approx(0.9)
    assert s["claims_per_block"] == 2.0  # b0: 3 claims, b1: 2, b2: 1
    assert s["fair_claims"] == 2 and s["fair_granted_at_arrival"] == 1.0  # c1 and c2


def test_fair_demand_detection(basic_run: tuple[SimInput, ReplayResult]) -> None:
    inp, res = basic_run
    # N = 2: at most 0.5 per block and among the first two claims of each block: c1 and c2 (c0 asks too much,
    # c3 is the third claim on b0, c4 asks 0.9).
    assert fair_demand_mask(inp, 2).tolist() == [False, True, True, False, False]
    # N = 1: at most a whole block, and the first claim of each of its blocks: c0 (first on b0 and b1), c4.
    assert fair_demand_mask(inp, 1).tolist() == [True, False, False, False, True]
    assert fair_granted_at_arrival(res, inp, 1) == (2, 0)  # c0 waited, c4 is still waiting
    with pytest.raises(InvalidParameterError):
        fair_demand_mask(inp, 0)


def test_block_frame_basic(basic_run: tuple[SimInput, ReplayResult]) -> None:
    inp, res = basic_run
    bf = block_frame(res, inp)
    assert bf["id"].tolist() == ["b0", "b1", "b2"]
    assert bf["created"].tolist() == [0.0, 0.0, 5.0]
    assert bf["claims"].tolist() == [3, 2, 1] and bf["granted"].tolist() == [2, 2, 0]
    np.testing.assert_allclose(bf["utilisation"], [0.9, 0.8, 0.0])


def test_renyi_utilisation_is_at_the_best_order_and_fairness_skips_unusable_orders() -> None:
    header = {"kind": "header", "composition": "renyi", "alphas": [2.0, 4.0, 8.0]}
    # G = (0, 2, 4): the order α=2 can serve nothing. c0 uses (0.5, 0.5, 3.0); its ratios at the usable orders
    # are 0.25 (α=4) and 0.75 (α=8): the block still has room at α=4, so its utilisation is 0.25 there.
    inp = _input(
        header,
        {"kind": "block", "id": "b0", "time": 0, "rdp": [0.0, 2.0, 4.0]},
        {"kind": "claim", "id": "c0", "time": 1, "blocks": ["b0"], "rdp": [0.5, 0.5, 3.0]},
        {"kind": "claim", "id": "c1", "time": 2, "blocks": ["b0"], "rdp": [0.1, 1.6, 1.1]},
    )
    res = replay_input(inp, "fcfs")
    assert res.counts["granted"] == 1  # c1 fits at no usable order once c0 has taken its share
    util, col = block_utilisation(res)
    assert util.tolist() == [pytest.approx(0.25)] and col.tolist() == [1]
    assert block_frame(res)["best_alpha"].tolist() == [4.0]
    # N = 2: G/N = (0, 1, 2) at the usable orders 4 and 8. c0: 0.5 ≤ 1 but 3.0 > 2, not fair; c1: 1.6 > 1.
    assert fair_demand_mask(inp, 2).tolist() == [False, False]
    # N = 1: c0 fits under G at α=4 and 8 (and α=2 is ignored, though 0.5 > 0); c1 is the second claim on b0.
    assert fair_demand_mask(inp, 1).tolist() == [True, False]


def test_sharing_incentive_on_the_microbenchmark() -> None:
    """DPF-N grants every fair-demand claim in the pass at its arrival (spec/dpf.md, property 1)."""
    inp = workload_input(make_workload("micro-single", seed=3))
    res = replay_input(inp, "dpf-n", {"N": 100})
    fair, at_arrival = fair_granted_at_arrival(res, inp, 100)
    assert fair > 50 and at_arrival == fair


def test_write_frame_csv_and_parquet(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    df = pd.DataFrame({"a": [1, 2], "b": ["x", None]})
    monkeypatch.setattr(metrics, "parquet_available", lambda: False)
    paths = write_frame(df, tmp_path / "sub" / "t.N=0.5")
    assert paths == [tmp_path / "sub" / "t.N=0.5.csv"]
    assert pd.read_csv(paths[0])["a"].tolist() == [1, 2]
    with pytest.raises(InvalidParameterError, match="pyarrow"):
        write_frame(df, tmp_path / "t", parquet=True)


def test_pass_statistics_only_for_online_replays(basic_run: tuple[SimInput, ReplayResult]) -> None:
    inp, _ = basic_run
    online = replay_input(inp, "dpf-n", {"N": 2}, engine="scheduler")
    batch = replay_input(inp, "dpf-n", {"N": 2}, engine="batch")
    # One step per distinct event time at least (arrivals and block creations trigger a pass).
    assert online.passes >= len(set(inp.claims.arrival.tolist()))
    assert online.pass_seconds >= 0.0
    s = run_summary(online, inp)
    assert s["passes"] == online.passes
    assert math.isfinite(s["pass_ms"]) and s["pass_ms"] >= 0.0
    b = run_summary(batch, inp)
    assert b["passes"] == 0 and math.isnan(b["pass_ms"])
