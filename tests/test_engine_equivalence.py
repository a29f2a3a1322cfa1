"""The batch simulator grants exactly what the online scheduler grants: same claims, same instants, same final
status for every claim, and the same final budget per block (up to float rounding of the unlock arithmetic).

The online :class:`~dpf_sched.scheduler.Scheduler` is the reference (its invariants are checked after every
event by the policy contract suite); the batch engine is a different algorithm for the same semantics, so any
divergence on a random trace is a bug in one of them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tracegen import random_trace

from dpf_sched.errors import InvalidParameterError
from dpf_sched.policies import create_policy
from dpf_sched.sim.engine import supports
from dpf_sched.sim.replay import ReplayResult, replay
from dpf_sched.sim.trace import read_trace

BATCH_CASES: list[tuple[str, dict[str, Any]]] = [
    ("fcfs", {}),
    ("drf", {}),
    ("drf", {"tie_break": "arrival"}),
    ("dpf-n", {"N": 1}),
    ("dpf-n", {"N": 3}),
    ("dpf-n", {"N": 8}),
    ("dpf-n", {"N": 25, "tie_break": "arrival"}),
    ("dpf-t", {"T": 10, "tick": 1}),
    ("dpf-t", {"T": 7, "tick": 0.7, "unlock": "artifact"}),
    ("dpf-t", {"T": 30, "tick": 2.5}),
]


def _lines(seed: int, composition: str, integer_times: bool, n_claims: int = 60, n_blocks: int = 4) -> list[str]:
    """A random trace; with ``integer_times`` claims share instants (several arrivals per pass)."""
    import json

    objs = random_trace(seed, composition, n_blocks=n_blocks, n_claims=n_claims)
    if integer_times:
        for o in objs:
            if o.get("kind") == "claim":
                o["time"] = float(math.floor(o["time"]))
    return [json.dumps(o) for o in objs]


def assert_same(a: ReplayResult, b: ReplayResult, check_end: bool = True) -> None:
    """Same claims, statuses and grant instants; same final budget per block."""
    assert list(a.ids) == list(b.ids)
    sa, sb = a.status.tolist(), b.status.tolist()
    diff = [(cid, x, y) for cid, x, y in zip(a.ids, sa, sb, strict=True) if x != y]
    assert not diff, f"status differs (id, {a.engine}, {b.engine}): {diff[:5]}"
    np.testing.assert_array_equal(a.granted_at, b.granted_at)
    if check_end:
        assert a.end_time == b.end_time
    for name in ("consumed", "unlocked", "locked", "allocated"):
        x, y = getattr(a.blocks, name), getattr(b.blocks, name)
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12 * float(np.abs(a.blocks.capacity).max()), err_msg=name)


@pytest.mark.parametrize(("name", "params"), BATCH_CASES)
@pytest.mark.parametrize("composition", ["basic", "renyi"])
@pytest.mark.parametrize("integer_times", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_batch_equals_scheduler(name, params, composition, integer_times, seed) -> None:
    lines = _lines(seed, composition, integer_times)
    online = replay(read_trace(lines), name, dict(params), engine="scheduler")
    batch = replay(read_trace(lines), name, dict(params), engine="batch")
    assert online.engine == "scheduler" and batch.engine == "batch"
    assert_same(online, batch)


@pytest.mark.parametrize(("name", "params"), BATCH_CASES)
@pytest.mark.parametrize("end", [0.0, 5.0, 17.5, 33.0])
def test_batch_equals_scheduler_with_an_end_time(name, params, end) -> None:
    lines = _lines(3, "basic", True, n_claims=50)
    online = replay(read_trace(lines), name, dict(params), engine="scheduler", end=end)
    batch = replay(read_trace(lines), name, dict(params), engine="batch", end=end)
    assert_same(online, batch)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 100_000),
    composition=st.sampled_from(["basic", "renyi"]),
    integer_times=st.booleans(),
    case=st.sampled_from(BATCH_CASES),
    n_blocks=st.integers(1, 6),
)
def test_batch_equals_scheduler_on_random_traces(seed, composition, integer_times, case, n_blocks) -> None:
    name, params = case
    lines = _lines(seed, composition, integer_times, n_claims=40, n_blocks=n_blocks)
    online = replay(read_trace(lines), name, dict(params), engine="scheduler")
    batch = replay(read_trace(lines), name, dict(params), engine="batch")
    assert_same(online, batch)


def test_auto_picks_batch_when_it_can() -> None:
    lines = _lines(0, "basic", False)
    assert replay(read_trace(lines), "dpf-n", {"N": 5}).engine == "batch"
    assert replay(read_trace(lines), "dpf-n", {"N": 5, "strict": True}).engine == "scheduler"
    assert replay(read_trace(lines), "rr-n", {"N": 5}).engine == "scheduler"
    assert replay(read_trace(lines), "dpf-n", {"N": 5}, observer=lambda s, o: None).engine == "scheduler"


def test_supports_names_the_policies_with_a_plan() -> None:
    assert supports(create_policy("dpf-t", T=5))
    assert supports(create_policy("fcfs"))
    assert not supports(create_policy("dpf-n", N=5, strict=True))
    assert not supports(create_policy("rr-t", T=5))


def test_batch_engine_refuses_what_it_cannot_run() -> None:
    lines = _lines(0, "basic", False)
    with pytest.raises(InvalidParameterError, match="batch"):
        replay(read_trace(lines), "rr-n", {"N": 3}, engine="batch")
    with pytest.raises(InvalidParameterError, match="engine"):
        replay(read_trace(lines), "fcfs", engine="turbo")
    from dpf_sched.sim.replay import replay_input
    from dpf_sched.sim.table import tables_from_trace

    inp = tables_from_trace(read_trace(lines))
    with pytest.raises(InvalidParameterError, match="engine"):
        replay_input(inp, "fcfs", engine="turbo")
    with pytest.raises(InvalidParameterError, match="batch"):
        replay_input(inp, "rr-n", {"N": 3}, engine="batch")
    with pytest.raises(InvalidParameterError, match="unknown parameter"):
        replay_input(inp, "dpf-n", {"M": 3})
    with pytest.raises(InvalidParameterError, match="only accepted with a policy name"):
        replay_input(inp, create_policy("fcfs"), {"N": 3})


@pytest.mark.parametrize("composition", ["basic", "renyi"])
def test_tables_round_trip_through_trace_events(composition) -> None:
    """A columnar run turned back into trace events gives the same tables and the same results."""
    from dpf_sched.sim.replay import replay_input
    from dpf_sched.sim.table import tables_from_trace, trace_from_tables

    lines = _lines(4, composition, True)
    inp = tables_from_trace(read_trace(lines))
    again = tables_from_trace(trace_from_tables(inp))
    assert again.blocks.ids == inp.blocks.ids and again.claims.ids == inp.claims.ids
    np.testing.assert_array_equal(again.blocks.capacity, inp.blocks.capacity)
    np.testing.assert_array_equal(again.claims.demand, inp.claims.demand)
    np.testing.assert_array_equal(again.claims.deadline, inp.claims.deadline)
    np.testing.assert_array_equal(again.claims.ptr, inp.claims.ptr)
    np.testing.assert_array_equal(again.claims.block, inp.claims.block)
    for name, params in (("dpf-n", {"N": 5}), ("rr-n", {"N": 5}), ("dpf-t", {"T": 9, "tick": 1})):
        if name == "rr-n" and composition == "renyi":
            continue
        a = replay(read_trace(lines), name, dict(params))
        b = replay_input(inp, name, dict(params))
        assert a.engine == b.engine
        assert_same(a, b)


GENERATED = [
    ("micro-single", {"composition": "basic", "duration": 120.0}),
    ("micro-single", {"composition": "renyi", "duration": 400.0}),
    ("micro-multi", {"composition": "basic", "duration": 40.0}),
    ("micro-multi", {"composition": "renyi", "duration": 3.0}),
    ("hetero-renyi", {"duration": 50.0}),
    ("hetero-renyi", {"duration": 100.0}),
    ("macro", {"composition": "basic", "days": 8, "pipelines_per_day": 40}),
    ("macro", {"composition": "renyi", "days": 8, "pipelines_per_day": 40}),
]


@pytest.mark.parametrize(("workload", "wparams"), GENERATED)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_batch_equals_scheduler_on_generated_workloads(workload, wparams, seed) -> None:
    """The built-in workloads (mice and elephants, many claims per block, heterogeneous best orders) give the
    same grants in both engines; this caught a claim listed twice on one block (it had left and come back)."""
    from dpf_sched.sim.replay import replay_input
    from dpf_sched.sim.workloads import make_workload

    wl = make_workload(workload, seed=seed, **wparams)
    inp = wl.table()
    mi = wl.mean_interarrival
    cases = [("fcfs", {}), ("dpf-n", {"N": 5}), ("dpf-n", {"N": 50}), ("dpf-t", {"T": 40 * mi, "tick": mi / 2})]
    for name, params in cases:
        a = replay_input(inp, name, dict(params), engine="scheduler")
        b = replay_input(inp, name, dict(params), engine="batch")
        assert_same(a, b)
