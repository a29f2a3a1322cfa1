"""The packing optimum (dpf_sched.packing) and the ``optimal`` policy: the MILP against brute force, component
decomposition, time-limit reporting, the policy in the scheduler (ledger invariants), parameters, compare."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dpf_sched.budget import AlphaGrid
from dpf_sched.composition import BasicComposition, Composition, RenyiComposition
from dpf_sched.errors import InvalidParameterError
from dpf_sched.packing import PackingStatus, _as_claims, _Packer, solve_packing, solve_packing_csr
from dpf_sched.policies import create_policy
from dpf_sched.policies.optimal import Optimal
from dpf_sched.scheduler import Outcome, Scheduler
from dpf_sched.sim.compare import plan_runs
from dpf_sched.sim.replay import replay, replay_input
from dpf_sched.sim.table import trace_from_tables
from dpf_sched.sim.workloads import make_workload

RENYI = RenyiComposition(AlphaGrid((2.0, 4.0, 8.0)))
BASIC = BasicComposition()

Instance = tuple[list[tuple[np.ndarray, np.ndarray]], np.ndarray, np.ndarray]


def brute_force(demands: list[tuple[np.ndarray, np.ndarray]], cap: np.ndarray, comp: Composition, w: Any) -> float:
    """The optimum by enumerating every subset (feasibility: the composition's ``fits`` on summed demands)."""
    best = 0.0
    n = len(demands)
    for r in range(n + 1):
        for subset in itertools.combinations(range(n), r):
            total = np.zeros_like(cap)
            for i in subset:
                total[demands[i][0]] += demands[i][1]
            if comp.fits(total, cap, cap).all():
                best = max(best, float(sum(w[i] for i in subset)))
    return best


@st.composite
def instances(draw: Any, comp: Composition) -> Instance:
    """Small random instances with quantised demands (multiples of 1/4), so that a set either fits exactly or
    misses by at least 1/4: the brute force and the solver's tolerances cannot disagree on a borderline set."""
    n_blocks = draw(st.integers(1, 3))
    n = draw(st.integers(1, 8))
    width = comp.width
    cap = (
        np.array(
            draw(
                st.lists(
                    st.lists(st.integers(1, 12), min_size=width, max_size=width), min_size=n_blocks, max_size=n_blocks
                )
            ),
            dtype=float,
        )
        / 4
    )
    if comp.name == "basic":
        cap[:, 1] = np.array(draw(st.lists(st.integers(0, 3), min_size=n_blocks, max_size=n_blocks))) / 4
    demands = []
    for _ in range(n):
        blocks = sorted(draw(st.sets(st.integers(0, n_blocks - 1), min_size=1, max_size=n_blocks)))
        rows = (
            np.array(
                draw(
                    st.lists(
                        st.lists(st.integers(0, 10), min_size=width, max_size=width),
                        min_size=len(blocks),
                        max_size=len(blocks),
                    )
                ),
                dtype=float,
            )
            / 4
        )
        demands.append((np.array(blocks, dtype=np.int64), rows))
    weights = np.array(draw(st.lists(st.integers(0, 5), min_size=n, max_size=n)), dtype=float)
    return demands, cap, weights


def check_fits(result_chosen: tuple[int, ...], demands: Any, cap: np.ndarray, comp: Composition) -> None:
    total = np.zeros_like(cap)
    for i in result_chosen:
        total[demands[i][0]] += demands[i][1]
    assert comp.fits(total, cap, cap).all()


# ----- the MILP against brute force ---------------------------------------------------------------------------


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(RENYI))
def test_renyi_optimum_equals_brute_force(inst: Instance) -> None:
    demands, cap, w = inst
    res = solve_packing(demands, cap, RENYI, w, time_limit=20)
    assert res.proven and res.status is PackingStatus.OPTIMAL
    assert res.objective == pytest.approx(brute_force(demands, cap, RENYI, w), abs=1e-9)
    assert res.bound >= res.objective - 1e-9
    check_fits(res.chosen, demands, cap, RENYI)
    bigm = solve_packing(demands, cap, RENYI, w, time_limit=20, formulation="bigm")
    assert bigm.proven and bigm.objective == pytest.approx(res.objective, abs=1e-9)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(inst=instances(BASIC))
def test_basic_optimum_equals_brute_force(inst: Instance) -> None:
    demands, cap, w = inst
    res = solve_packing(demands, cap, BASIC, w, time_limit=20)
    assert res.proven
    assert res.objective == pytest.approx(brute_force(demands, cap, BASIC, w), abs=1e-9)
    check_fits(res.chosen, demands, cap, BASIC)


def test_renyi_needs_a_different_order_per_block() -> None:
    """Two blocks whose best orders differ: the optimum takes both pairs, each block at its own order."""
    cap = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])
    a = (np.array([0]), np.array([[0.5, 0.9, 0.9]]))  # fits twice at α = 2 only
    b = (np.array([1]), np.array([[0.9, 0.9, 0.5]]))  # fits twice at α = 8 only
    res = solve_packing([a, a, b, b], cap, RENYI)
    assert res.chosen == (0, 1, 2, 3) and res.proven


def test_hull_copies_are_binary_and_only_where_the_claim_fits() -> None:
    """The hull model has no copy z_{i,α} where claim i does not fit alone at α (d > c), and every variable is
    binary (x, y, and the copies, which are integer for integer x and y); the optimum is unchanged."""
    cap = np.array([[1.0, 1.0, 1.0]])
    a = (np.array([0]), np.array([[0.5, 2.0, 0.9]]))  # fits at α = 2 and α = 8, not at α = 4
    b = (np.array([0]), np.array([[0.9, 0.6, 0.7]]))  # fits at every order, best at α = 4
    demands = [a, a, b, b]
    packer = _Packer(*_as_claims(demands, 1, 3), np.ones(4), cap.copy(), cap, RENYI, "hull")
    model = packer.build([0, 1, 2, 3], np.array([0]))
    assert model is not None
    n_y = 3  # orders 2, 4, 8: none dominated (a is best at 2, b at 4, and 8 is second for both)
    assert model.c.shape[0] == 4 + n_y + (4 * 3 - 2)  # x, y, and copies for all but (a, α = 4) twice
    assert np.all(model.integrality == 1.0)
    res = solve_packing(demands, cap, RENYI)
    assert res.proven and res.objective == brute_force(demands, cap, RENYI, np.ones(4)) == 2.0


def test_claims_that_cannot_fit_alone_are_fixed_out() -> None:
    cap = np.array([[1.0, 1.0, 1.0]])
    big = (np.array([0]), np.array([[2.0, 3.0, 1.5]]))
    small = (np.array([0]), np.array([[0.2, 0.2, 0.2]]))
    res = solve_packing([big, small], cap, RENYI, available=cap)
    assert res.fixed_out == (0,) and res.chosen == (1,)


def test_available_budget_limits_the_packing() -> None:
    cap = np.array([[1.0, 1.0, 1.0]])
    c = (np.array([0]), np.array([[0.3, 0.3, 0.3]]))
    assert len(solve_packing([c] * 5, cap, RENYI).chosen) == 3
    assert len(solve_packing([c] * 5, cap, RENYI, available=cap * 0.65).chosen) == 2


# ----- decomposition, time limit -----------------------------------------------------------------------------


def _table(seed: int = 0, **params: Any) -> Any:
    return make_workload("packing-mix", seed=seed, **params).table()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_components_give_the_monolithic_optimum(seed: int) -> None:
    inp = _table(seed, blocks=8, claims=40, blocks_per_claim=2)
    c = inp.claims
    # Keep the claims within blocks 0-3 or within 4-7, so that the graph has at least two components.
    keep = [k for k in range(len(c)) if len({int(b) // 4 for b in c.block[c.ptr[k] : c.ptr[k + 1]]}) == 1]
    demands = [(c.block[c.ptr[k] : c.ptr[k + 1]], c.demand[c.ptr[k] : c.ptr[k + 1]]) for k in keep]
    ptr = np.concatenate(([0], np.cumsum([len(d[0]) for d in demands])))
    args = (
        ptr,
        np.concatenate([d[0] for d in demands]),
        np.concatenate([d[1] for d in demands]),
        inp.blocks.capacity,
        inp.composition,
    )
    split = solve_packing_csr(*args, time_limit=30)
    whole = solve_packing_csr(*args, time_limit=30, decompose=False)
    assert split.proven and whole.proven
    assert len(split.components) > 1 and len(whole.components) == 1
    assert split.objective == whole.objective
    assert split.bound == pytest.approx(whole.bound)


def test_time_limit_is_reported_not_called_optimal() -> None:
    inp = _table(0)  # 10 blocks x 200 claims: HiGHS does not prove it in a few milliseconds
    c = inp.claims
    res = solve_packing_csr(c.ptr, c.block, c.demand, inp.blocks.capacity, inp.composition, time_limit=0.05)
    assert not res.proven
    assert res.status is PackingStatus.TIME_LIMIT
    assert res.bound >= res.objective > 0
    assert res.gap > 0
    assert len(res.chosen) == res.objective  # unit weights
    total = np.zeros_like(inp.blocks.capacity)
    for i in res.chosen:
        total[c.block[c.ptr[i] : c.ptr[i + 1]]] += c.demand[c.ptr[i] : c.ptr[i + 1]]
    assert inp.composition.fits(total, inp.blocks.capacity, inp.blocks.capacity).all()


@pytest.mark.parametrize("bad", [0, -1, math.nan, math.inf, "soon", True])
def test_bad_time_limit(bad: Any) -> None:
    cap = np.ones((1, 3))
    with pytest.raises(InvalidParameterError):
        solve_packing([(np.array([0]), np.ones((1, 3)))], cap, RENYI, time_limit=bad)
    with pytest.raises(InvalidParameterError):
        create_policy("optimal", time_limit=bad)


@pytest.mark.parametrize(
    "params",
    [{"gap": -0.1}, {"gap": 1}, {"gap": "nan"}, {"unlocking": "sometimes"}, {"N": 0}, {"T": "nan"}, {"colour": 1}],
)
def test_bad_policy_params(params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameterError):
        create_policy("optimal", **params)


def test_bad_solver_input() -> None:
    cap = np.ones((2, 3))
    one = (np.array([0]), np.ones((1, 3)))
    with pytest.raises(InvalidParameterError):
        solve_packing([(np.array([5]), np.ones((1, 3)))], cap, RENYI)
    with pytest.raises(InvalidParameterError):
        solve_packing([(np.array([0]), -np.ones((1, 3)))], cap, RENYI)
    with pytest.raises(InvalidParameterError):
        solve_packing([one], cap, RENYI, weights=[-1.0])
    with pytest.raises(InvalidParameterError):
        solve_packing([one], cap, RENYI, formulation="magic")
    with pytest.raises(InvalidParameterError):
        solve_packing([one], np.ones((2, 2)), RENYI)


# ----- the policy -------------------------------------------------------------------------------------------


def test_offline_policy_grants_the_optimum() -> None:
    inp = _table(3, blocks=6, claims=30)
    c = inp.claims
    best = solve_packing_csr(c.ptr, c.block, c.demand, inp.blocks.capacity, inp.composition, time_limit=30)
    assert best.proven
    res = replay_input(inp, "optimal")
    assert res.engine == "scheduler"
    assert res.counts["granted"] == best.objective


class Invariants:
    def __init__(self) -> None:
        self.passes = 0

    def __call__(self, scheduler: Scheduler, outcomes: list[Outcome]) -> None:
        self.passes += 1
        led = scheduler.ledger
        assert led.violations() == []
        # Pareto: no waiting claim fits in what is unlocked after the pass.
        for q in scheduler.queue:
            assert not led.composition.fits(q.demand, led.unlocked[q.idx], led.capacity[q.idx]).all()


@pytest.mark.parametrize(
    "params",
    [{}, {"unlocking": "timed", "T": "5", "tick": "0.5"}, {"unlocking": "arrival", "N": "6"}, {"time_limit": "0.01"}],
)
def test_online_policy_never_overspends(params: dict[str, str]) -> None:
    inp = _table(4, offline=False, blocks=6, claims=120, block_interval=2.0)
    obs = Invariants()
    res = replay(trace_from_tables(inp), "optimal", dict(params), observer=obs)
    assert obs.passes > 0
    assert res.counts["granted"] > 0
    assert sum(res.counts.values()) == len(inp.claims)


def test_policy_keeps_the_last_result_and_describes_only_what_it_uses() -> None:
    pol = Optimal()
    assert pol.describe() == "optimal(time_limit=60.0, gap=0.0, formulation=hull, unlocking=all)"
    assert "N=" in Optimal(unlocking="arrival", N=5).describe()
    assert Optimal.active_params({"unlocking": "timed"}) >= {"T", "tick", "unlock"}
    inp = _table(1, blocks=4, claims=20)
    replay_input(inp, pol)
    assert pol.last_result is not None and pol.last_result.proven


def test_compare_runs_optimal_once_over_an_n_grid() -> None:
    _, runs = plan_runs("packing-mix", ["dpf-n", "optimal"], {"N": [1, 10, 50]})
    assert sum(r.policy == "optimal" for r in runs) == 1
    assert sum(r.policy == "dpf-n" for r in runs) == 3
    _, runs = plan_runs("packing-mix", ["optimal"], {"N": [1, 10], "unlocking": ["arrival"]})
    assert sorted(r.params["N"] for r in runs) == [1, 10]
    _, runs = plan_runs("packing-mix", ["optimal"], {"N": [10], "unlocking": ["timed"]})
    (run,) = runs
    assert run.params["T"] == pytest.approx(10 * make_workload("packing-mix").mean_interarrival)
    assert "N" not in run.params
