"""DPack (dpf_sched/policies/dpack.py) and DPF-Pack (dpf_sched/policies/hybrid.py): hand-computed best orders,
efficiencies and grant orders, the recompute period k, parameters, the policy contract with every unlocking
rule, and DPack packing more than DPF on a heterogeneous Rényi instance."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_policy_contract import InvariantObserver
from tracegen import random_trace, write_jsonl

from dpf_sched.block import Block
from dpf_sched.budget import AlphaGrid, EpsDelta, RenyiCurve
from dpf_sched.claim import Claim
from dpf_sched.clock import ManualClock
from dpf_sched.composition import REL_TOL, BasicComposition, Composition, RenyiComposition
from dpf_sched.errors import InvalidParameterError
from dpf_sched.ledger import MemoryLedger
from dpf_sched.policies import available, create_policy
from dpf_sched.policies import dpack as dpack_module
from dpf_sched.policies.dpack import DPack, fitting, pack, packing_start
from dpf_sched.policies.hybrid import DPFPack
from dpf_sched.properties.search import to_input
from dpf_sched.queue import QueuedClaim
from dpf_sched.scheduler import Scheduler, share_key
from dpf_sched.sim.replay import replay, replay_input

GRID = AlphaGrid((2.0, 4.0, 8.0))


def renyi_scheduler(policy: str = "dpack", n_blocks: int = 1, cap: tuple[float, ...] = (1.0, 1.0, 1.0), **params: Any):
    s = Scheduler(MemoryLedger(RenyiComposition(GRID)), policy, ManualClock(), **params)
    for j in range(n_blocks):
        s.add_block(Block(f"b{j}", RenyiCurve(GRID, list(cap))))
    return s


def basic_scheduler(policy: str = "dpack", n_blocks: int = 2, **params: Any) -> Scheduler:
    s = Scheduler(MemoryLedger(BasicComposition()), policy, ManualClock(), **params)
    for j in range(n_blocks):
        s.add_block(Block(f"b{j}", EpsDelta(1.0)))
    return s


def rc(*values: float) -> RenyiCurve:
    return RenyiCurve(GRID, list(values))


def granted(outcomes: list[Any]) -> list[str]:
    return [o.claim_id for o in outcomes if o.verdict.value == "grant"]


# ----- hand-computed cases ---------------------------------------------------------------------------------


def test_best_order_efficiency_and_grant_order_renyi() -> None:
    """One block (capacity 1 at α = 2, 4, 8), all unlocked; A = (.6, .2, .9), B = (.3, .7, .9), C = (.3, .7, .2).

    Greedy counts: α=2: .3+.3 ≤ 1 < .3+.3+.6 → 2; α=4: .2+.7 ≤ 1 → 2; α=8: .2 ≤ 1 < .2+.9 → 1. The tie goes
    to the smallest order: α = 2. Efficiencies 1/(d(2)/1): A 1/.6, B 1/.3, C 1/.3. B and C tie; DPF's key
    breaks it (dominant share .7 < .9): C first. Then U = (.7, .3, .8); A and B still fit; counts α=2: .3 ≤ .7 <
    .9 → 1, α=4: .2 ≤ .3 → 1, α=8: 0 → α = 2; B .7/.3 beats A .7/.6: B. Then U = (.4, -.4, -.1): A no longer
    fits anywhere and waits."""
    s = renyi_scheduler()
    for cid, d in (("A", rc(0.6, 0.2, 0.9)), ("B", rc(0.3, 0.7, 0.9)), ("C", rc(0.3, 0.7, 0.2))):
        s.submit(Claim(cid, {"b0": d}))
    led = s.ledger
    start = packing_start(list(s.queue), led.unlocked, led.capacity, led.composition)
    assert start.best_order == {0: 0}
    eff = {s.queue.get(h).id: v for h, v in start.efficiency.items()}
    assert eff == pytest.approx({"A": 1 / 0.6, "B": 1 / 0.3, "C": 1 / 0.3})
    assert granted(s.step()) == ["C", "B"]
    assert s.status("A").state.value == "waiting"
    # DRF (dominant-share order) serves C then A (tie .9 = .9 broken by arrival) and B no longer fits.
    d = renyi_scheduler("drf")
    for cid, dd in (("A", rc(0.6, 0.2, 0.9)), ("B", rc(0.3, 0.7, 0.9)), ("C", rc(0.3, 0.7, 0.2))):
        d.submit(Claim(cid, {"b0": dd}))
    assert granted(d.step()) == ["C", "A"]


def test_best_order_moves_to_where_more_claims_fit() -> None:
    """Three claims cheap at α = 8, one cheap at α = 2: counts α=2: 1 (.2 then .5), α=4: 1, α=8: 3 (.3·3 ≤ 1) → α=8;
    the α=8 claims are granted, the α=2 one (smallest dominant share, DPF's first pick) is not."""
    s = renyi_scheduler()
    s.submit(Claim("lo", {"b0": rc(0.2, 0.6, 0.9)}))
    for i in range(3):
        s.submit(Claim(f"hi{i}", {"b0": rc(0.9, 0.6, 0.3)}))
    led = s.ledger
    start = packing_start(list(s.queue), led.unlocked, led.capacity, led.composition)
    assert start.best_order == {0: 2}
    assert granted(s.step()) == ["hi0", "hi1", "hi2"]
    d = renyi_scheduler("drf")
    d.submit(Claim("lo", {"b0": rc(0.2, 0.6, 0.9)}))
    for i in range(3):
        d.submit(Claim(f"hi{i}", {"b0": rc(0.9, 0.6, 0.3)}))
    assert granted(d.step()) == ["lo"]


def test_efficiency_sums_over_blocks_basic() -> None:
    """Basic, two blocks of ε = 1: A asks .5 on both (efficiency 1/(.5+.5) = 1), B .6 on b0 (1/.6), C .3 on b1
    (1/.3). Order C, B; then A does not fit b0 (.4 left). DRF (share order C .3, A .5, B .6) grants C, A."""
    s = basic_scheduler()
    s.submit(Claim("A", {"b0": EpsDelta(0.5), "b1": EpsDelta(0.5)}))
    s.submit(Claim("B", {"b0": EpsDelta(0.6)}))
    s.submit(Claim("C", {"b1": EpsDelta(0.3)}))
    led = s.ledger
    start = packing_start(list(s.queue), led.unlocked, led.capacity, led.composition)
    eff = {s.queue.get(h).id: v for h, v in start.efficiency.items()}
    assert eff == pytest.approx({"A": 1.0, "B": 1 / 0.6, "C": 1 / 0.3})
    assert granted(s.step()) == ["C", "B"]
    d = basic_scheduler("drf")
    d.submit(Claim("A", {"b0": EpsDelta(0.5), "b1": EpsDelta(0.5)}))
    d.submit(Claim("B", {"b0": EpsDelta(0.6)}))
    d.submit(Claim("C", {"b1": EpsDelta(0.3)}))
    assert granted(d.step()) == ["C", "A"]


def test_efficiency_normalises_by_available_budget_and_weight() -> None:
    """The term is demand over *available* budget: with b0 half spent, .2 on b0 (.2/.5) weighs more than .3 on
    b1 (.3/1). A weight of 3 triples the efficiency."""
    s = basic_scheduler()
    s.submit(Claim("spend", {"b0": EpsDelta(0.5)}))
    s.step()
    s.consume("spend")
    s.submit(Claim("x", {"b0": EpsDelta(0.2)}))
    s.submit(Claim("y", {"b1": EpsDelta(0.3)}))
    s.submit(Claim("z", {"b1": EpsDelta(0.9)}, weight=3.0))
    led = s.ledger
    start = packing_start(list(s.queue), led.unlocked, led.capacity, led.composition)
    eff = {s.queue.get(h).id: v for h, v in start.efficiency.items()}
    assert eff == pytest.approx({"x": 0.5 / 0.2, "y": 1 / 0.3, "z": 3 / 0.9})
    # y (3.33) and z (3.33) tie; DPF's key (share .3 < .9) puts y first; then z (.9 > .7 left) does not fit.
    assert granted(s.step()) == ["y", "x"]


def test_zero_available_gives_zero_efficiency() -> None:
    """A positive demand at a block's best order where nothing is available: infinite term, efficiency 0. A claim
    asking 0 at the best orders of all its blocks (here α = 2 on b1) has efficiency ∞."""
    comp = RenyiComposition(GRID)
    s = renyi_scheduler(n_blocks=2)
    s.submit(Claim("x", {"b0": rc(0.5, 0.5, 0.5), "b1": rc(0.5, 0.5, 0.5)}))
    s.submit(Claim("free", {"b1": rc(0.0, 0.5, 0.5)}))
    avail = s.ledger.unlocked.copy()
    avail[0] = [0.0, 0.6, 0.0]  # only α = 4 has budget on b0
    start = packing_start(list(s.queue), avail, s.ledger.capacity, comp)
    eff = {s.queue.get(h).id: v for h, v in start.efficiency.items()}
    assert start.best_order[0] == 1
    assert eff["x"] == pytest.approx(1 / (0.5 / 0.6 + 0.5 / 1.0))
    assert math.isinf(eff["free"])
    avail[0] = [0.0, 0.0, 0.0]
    assert packing_start(list(s.queue), avail, s.ledger.capacity, comp).efficiency.get(0) is None  # x cannot fit


@pytest.mark.parametrize(
    ("k", "order"), [(1, ["c0", "c2", "c3", "c1"]), (2, ["c0", "c2", "c3", "c1"]), (100, ["c0", "c2", "c1", "c3"])]
)
def test_k_recompute_period(k: int, order: list[str]) -> None:
    """Blocks b0, b1 of capacity (1, 1, 1). On b1: c0 = (.1, .3, .5), c1 = (.4, .9, .9), c2 = (.4, .3, .5); on b0:
    c3 = (.5, .2, .3). Counts on b1: α=2: .1+.4+.4 ≤ 1 → 3, α=4: 2, α=8: 2 → α = 2; b0 has one claim → α = 2.
    Efficiencies: c0 10, c1 2.5, c2 2.5, c3 2. Grant c0 (b1 left: .9, .7, .5), then c2 (tie with c1, smaller
    dominant share .5 < .9) leaving (.5, .4, 0).

    * k = 1 recomputes after c0 (b1: α=2 still; c1, c2 both .9/.4 = 2.25) and after c2 (b1: only c1 fits, at
      α=2, efficiency .5/.4 = 1.25 < c3's 2): c3, then c1. k = 2 recomputes after c2 too: the same.
    * k = 100 never recomputes: c1 keeps 2.5 and goes before c3.
    """
    s = renyi_scheduler(k=k, n_blocks=2)
    s.submit(Claim("c0", {"b1": rc(0.1, 0.3, 0.5)}))
    s.submit(Claim("c1", {"b1": rc(0.4, 0.9, 0.9)}))
    s.submit(Claim("c2", {"b1": rc(0.4, 0.3, 0.5)}))
    s.submit(Claim("c3", {"b0": rc(0.5, 0.2, 0.3)}))
    assert granted(s.step()) == order


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 7])
def test_pack_grants_fit_and_leave_nothing_that_fits(seed: int, k: int) -> None:
    """On random passes (Rényi, several blocks, partly spent budgets): the granted claims, applied in order, each fit
    what the earlier ones left (∃α per block), and afterwards no other claim fits (the pass is Pareto efficient)."""
    rng = np.random.default_rng(seed)
    grid = AlphaGrid((1.5, 2.0, 3.0, 4.0, 8.0, 16.0))
    s = Scheduler(MemoryLedger(RenyiComposition(grid)), "dpack", ManualClock(), k=k)
    for j in range(5):
        s.add_block(Block(f"b{j}", RenyiCurve(grid, rng.uniform(0.0, 2.0, 6) * (rng.random(6) < 0.8))))
    for i in range(60):
        blocks = rng.choice(5, size=int(rng.integers(1, 4)), replace=False)
        s.submit(Claim(f"c{i}", {f"b{j}": RenyiCurve(grid, rng.uniform(0.01, 0.6, 6)) for j in blocks}))
    led = s.ledger
    comp, cap = led.composition, led.capacity
    claims = list(s.queue)
    start = led.unlocked.copy() * rng.uniform(0.2, 1.0, size=led.unlocked.shape)
    order = pack(claims, start.copy(), cap, comp, k)
    assert order, "the instance should grant something"
    scratch = start.copy()
    by_handle = {q.handle: q for q in claims}
    for h in order:
        q = by_handle[h]
        assert bool(comp.fits(q.demand, scratch[q.idx], cap[q.idx]).all())
        scratch[q.idx] -= q.demand
    done = set(order)
    rest = [q for q in claims if q.handle not in done]
    assert not fitting(rest, scratch, cap, comp).any()
    # pack() leaves the scratch budget it was given exactly as the grants left it.
    again = start.copy()
    pack(claims, again, cap, comp, k)
    np.testing.assert_allclose(again, scratch, rtol=0, atol=1e-12)


# ----- parameters --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, -1, "nan", float("nan"), 1.5, "x", True, float("inf")])
def test_bad_k(bad: Any) -> None:
    with pytest.raises(InvalidParameterError):
        DPack(k=bad)
    with pytest.raises(InvalidParameterError):
        DPFPack(k=bad)


@pytest.mark.parametrize(
    ("cls", "params"),
    [
        (DPack, {"unlocking": "sometimes"}),
        (DPack, {"unlocking": "timed", "T": "nan"}),
        (DPack, {"unlocking": "timed", "T": 0}),
        (DPack, {"unlocking": "arrival", "N": 0}),
        (DPack, {"unlock": "fast"}),
        (DPack, {"unknown": 1}),
        (DPFPack, {"unlocking": "all"}),
        (DPFPack, {"N": "nan"}),
        (DPFPack, {"tie_break": "random"}),
        (DPFPack, {"unlocking": "timed", "tick": -1}),
    ],
)
def test_bad_parameters(cls: type, params: dict[str, Any]) -> None:
    with pytest.raises(InvalidParameterError):
        cls(**params)


def test_registered_and_unlockers() -> None:
    assert available()["dpack"] is DPack and available()["dpf-pack"] is DPFPack
    assert create_policy("dpack").unlocker.on_block(0, 0.0, None) == 1.0  # type: ignore[arg-type]
    timed = create_policy("dpack", unlocking="timed", T="10", tick="2", unlock="artifact")
    assert (timed.unlocker.T, timed.unlocker.tick, timed.unlocker.mode) == (10.0, 2.0, "artifact")  # type: ignore[attr-defined]
    assert create_policy("dpack", unlocking="arrival", N="7").unlocker.n == 7  # type: ignore[attr-defined]
    assert DPFPack(N=4).fair_share == 0.25
    assert DPFPack(unlocking="timed", T=10, tick=1).fair_share == pytest.approx(0.1)
    assert DPFPack(unlocking="timed", T=10, tick=4, unlock="artifact").fair_share == pytest.approx(1 / 3)
    assert DPack().batch_plan() is None and DPFPack().batch_plan() is None


# ----- the contract with every unlocking rule ----------------------------------------------------------------

VARIANTS = [
    ("dpack", {}),
    ("dpack", {"k": "3"}),
    ("dpack", {"unlocking": "timed", "T": "10", "tick": "1"}),
    ("dpack", {"unlocking": "timed", "T": "10", "tick": "0.7", "unlock": "artifact", "k": "2"}),
    ("dpack", {"unlocking": "arrival", "N": "5"}),
    ("dpf-pack", {"N": "1"}),
    ("dpf-pack", {"N": "5", "k": "4"}),
    ("dpf-pack", {"N": "8", "tie_break": "arrival"}),
    ("dpf-pack", {"unlocking": "timed", "T": "10", "tick": "1"}),
]


@pytest.mark.parametrize(("name", "params"), VARIANTS)
@pytest.mark.parametrize("composition", ["basic", "renyi"])
def test_contract_variants(tmp_path, name: str, params: dict[str, str], composition: str) -> None:
    """tests/test_policy_contract.py runs both policies with their defaults; here every unlocking rule and k:
    ledger invariants and exact all-or-nothing grants after every pass, determinism, Pareto after every pass."""
    path = write_jsonl(tmp_path / "t.jsonl", random_trace(3, composition, n_blocks=4, n_claims=50))
    obs = InvariantObserver()

    def pareto(scheduler: Scheduler, outcomes: list[Any]) -> None:
        obs(scheduler, outcomes)
        led = scheduler.ledger
        for q in scheduler.queue:
            assert not led.composition.fits(q.demand, led.unlocked[q.idx], led.capacity[q.idx]).all(), q.id

    a = replay(path, name, dict(params), observer=pareto)
    assert obs.passes > 0 and sum(a.counts.values()) == 50
    assert a.to_json() == replay(path, name, dict(params)).to_json()


def test_dpf_pack_with_n_1_grants_like_fcfs_on_distinct_arrivals() -> None:
    """N = 1: every block is fully unlocked at its first arrival and every claim is fair (share ≤ 1): the fair
    phase is DRF's pass on what is there, exactly DPF-N with N = 1."""
    lines = random_trace(9, "basic", n_blocks=3, n_claims=40, distinct_times=True)
    a = replay_input(to_input(lines), "dpf-pack", {"N": 1})
    b = replay_input(to_input(lines), "dpf-n", {"N": 1})
    assert [c.status for c in a.claims] == [c.status for c in b.claims]


# ----- DPack packs more than DPF on heterogeneous Rényi demands ---------------------------------------------


def hetero_lines(seed: int) -> list[dict[str, Any]]:
    """Three blocks (capacity 1 at α = 2, 4, 8); claims of two families at random times: "low" claims cheap at α=2
    (share .3, dominant share from α=8) and "high" claims cheap at α=8 (share .05 there, .5 at α=2)."""
    rng = np.random.default_rng(seed)
    lines: list[dict[str, Any]] = [{"kind": "header", "composition": "renyi", "alphas": list(GRID.orders)}]
    for j in range(3):
        lines.append({"kind": "block", "id": f"b{j}", "time": 0.0, "rdp": [1.0, 1.0, 1.0]})
    for i in range(90):
        b = f"b{int(rng.integers(3))}"
        scale = float(rng.uniform(0.8, 1.2))
        curve = [0.1 * scale, 0.2 * scale, 0.3 * scale] if rng.random() < 0.35 else [0.5, 0.2, 0.05 * scale]
        lines.append({"kind": "claim", "id": f"c{i}", "time": float(i // 10), "blocks": [b], "demand": {b: curve}})
    return lines


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dpack_grants_more_than_dpf_on_heterogeneous_renyi(seed: int) -> None:
    """Online (claims arrive ten at a time, DPF-N's unlocking with N = 30): DPack and DPF-Pack grant more claims than
    DPF-N. Offline (all claims at t = 0, everything unlocked): DPack grants more than DRF."""
    lines = hetero_lines(seed)
    inp = to_input(lines)
    n_dpf = replay_input(inp, "dpf-n", {"N": 30}).counts.get("granted", 0)
    assert replay_input(inp, "dpack", {"unlocking": "arrival", "N": 30}).counts.get("granted", 0) > n_dpf
    assert replay_input(inp, "dpf-pack", {"N": 30}).counts.get("granted", 0) > n_dpf
    offline = to_input([dict(o, time=0.0) if o["kind"] == "claim" else o for o in lines])
    n_drf = replay_input(offline, "drf", {}).counts.get("granted", 0)
    assert replay_input(offline, "dpack", {}).counts.get("granted", 0) > n_drf


# ----- the optimised packing against an obviously-correct one ---------------------------------------------


def reference_pack(
    claims: list[QueuedClaim],
    avail: np.ndarray,
    capacity: np.ndarray,
    comp: Composition,
    k: int = 1,
    tie_break: str = "lexicographic",
) -> tuple[list[int], dict[int, int], dict[int, float]]:
    """DPack's packing written straight from the module docstring of dpf_sched/policies/dpack.py, slowly: the
    handles granted in order, and the best orders and efficiencies before the first grant. ``avail`` is updated
    in place, one grant after the other."""
    renyi = comp.name == "renyi"
    tol = capacity * REL_TOL
    usable = capacity > 0

    def fits(q: QueuedClaim) -> bool:
        return bool(comp.fits(q.demand, avail[q.idx], capacity[q.idx]).all())

    def key(q: QueuedClaim) -> tuple[Any, ...]:
        return (q.dominant_share, q.seq) if tie_break == "arrival" else (q.shares, q.seq)

    cand = sorted((q for q in claims if fits(q)), key=key)  # stable: input order among equal keys
    rows = [sorted(zip(q.idx.tolist(), q.demand, strict=True), key=lambda r: r[0]) for q in cand]
    live = set(range(len(cand)))
    alpha: dict[int, int] = {}
    snap: dict[int, np.ndarray] = {}  # per block: the available budget when it was last recomputed

    def greedy_count(b: int, a: int) -> int:
        """How many live candidates' smallest demands on block b at order a fit cumulatively."""
        total, n = 0.0, 0
        for d in sorted(float(d[a]) for c in live for j, d in rows[c] if j == b):
            total += d
            if total > avail[b, a] + tol[b, a]:
                break
            n += 1
        return n

    def recompute(blocks: set[int]) -> None:
        for b in sorted(blocks):
            if renyi:
                counts = [(greedy_count(b, a), -a) for a in range(capacity.shape[1]) if usable[b, a]]
                alpha[b] = -max(counts)[1] if counts else 0
            snap[b] = avail[b].copy()

    def term(b: int, d: np.ndarray) -> float:
        av = snap[b]
        cols = [alpha[b]] if renyi else [c for c in range(capacity.shape[1]) if usable[b, c]]
        ratios = [d[c] / av[c] if av[c] > 0 else (math.inf if d[c] > 0 else 0.0) for c in cols]
        return max(ratios, default=0.0)

    def efficiency(c: int) -> float:
        denom = 0.0
        for b, d in rows[c]:
            denom += term(b, d)
        return cand[c].weight / denom if denom > 0 else math.inf

    recompute({b for r in rows for b, _ in r})
    start_orders = dict(alpha) if renyi else {b: 0 for b in snap}
    start_eff = {cand[c].handle: efficiency(c) for c in live}
    out: list[int] = []
    touched: set[int] = set()
    while live:
        best = max(live, key=lambda c: (efficiency(c), -c))  # ties: the first in DPF's order
        q = cand[best]
        out.append(q.handle)
        live.discard(best)
        for b, d in rows[best]:
            avail[b] -= d
        live = {c for c in live if fits(cand[c])}
        touched.update(b for b, _ in rows[best])
        if len(out) % k == 0:
            recompute(touched)
            touched = set()
    return out, start_orders, start_eff


VALUES = (0.0, 0.1, 0.2, 0.25, 0.3, 0.5, 1.0)  # few values: many ties in demands, counts and efficiencies


@st.composite
def packing_instances(draw: st.DrawFn) -> tuple[list[QueuedClaim], np.ndarray, np.ndarray, Composition]:
    """Small packings: 1–4 blocks, Rényi (1–4 orders) or basic, capacities with unusable columns, available
    budgets partly or wholly spent (zero-available orders), 0–12 claims of few distinct demands and weights."""
    renyi = draw(st.booleans())
    n_blocks = draw(st.integers(1, 4))
    width = draw(st.integers(1, 4)) if renyi else 2
    comp: Composition = (
        RenyiComposition(AlphaGrid(tuple(2.0 + i for i in range(width)))) if renyi else BasicComposition()
    )
    cell = st.sampled_from((0.0, 0.5, 1.0, 1.0, 2.0))
    capacity = np.array(
        draw(st.lists(st.lists(cell, min_size=width, max_size=width), min_size=n_blocks, max_size=n_blocks))
    )
    frac = st.sampled_from((0.0, 0.3, 0.5, 1.0))
    avail = capacity * np.array(
        draw(st.lists(st.lists(frac, min_size=width, max_size=width), min_size=n_blocks, max_size=n_blocks))
    )
    claims = []
    for i in range(draw(st.integers(0, 12))):
        blocks = draw(st.lists(st.integers(0, n_blocks - 1), min_size=1, max_size=n_blocks, unique=True))
        demand = np.array(
            draw(
                st.lists(
                    st.lists(st.sampled_from(VALUES), min_size=width, max_size=width),
                    min_size=len(blocks),
                    max_size=len(blocks),
                )
            )
        )
        idx = np.array(blocks, dtype=np.int64)
        claims.append(
            QueuedClaim(
                handle=10 + 3 * i,
                id=f"c{i}",
                arrival=0.0,
                seq=draw(st.integers(0, 3)),
                deadline=math.inf,
                weight=draw(st.sampled_from((1.0, 1.0, 2.0))),
                owner=None,
                idx=idx,
                demand=demand,
                shares=share_key(comp.shares(demand, capacity[idx])),
            )
        )
    return claims, avail, capacity, comp


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    inst=packing_instances(),
    k=st.sampled_from((1, 2, 3, 100)),
    tie_break=st.sampled_from(("lexicographic", "arrival")),
    dense=st.sampled_from((dpack_module._DENSE_SLOTS, 1)),
    window=st.sampled_from((dpack_module._WINDOW, 1)),
)
def test_pack_matches_reference(
    inst: tuple[list[QueuedClaim], np.ndarray, np.ndarray, Composition], k: int, tie_break: str, dense: int, window: int
) -> None:
    """pack() and packing_start() make exactly the decisions of the slow reference (same grants in the same order,
    same budget left, same best orders and efficiencies), also with the wide-claim term table (dense = 1) and
    the smallest window of greedy counts (window = 1, widened on every count)."""
    claims, avail, capacity, comp = inst
    with patch.object(dpack_module, "_DENSE_SLOTS", dense), patch.object(dpack_module, "_WINDOW", window):
        got_avail = avail.copy()
        got = pack(claims, got_avail, capacity, comp, k, tie_break)
        start = packing_start(claims, avail, capacity, comp)
    want_avail = avail.copy()
    want, orders, eff = reference_pack(claims, want_avail, capacity, comp, k, tie_break)
    assert got == want
    assert np.array_equal(got_avail, want_avail)
    assert start.best_order == orders
    assert start.efficiency == eff


@pytest.mark.parametrize("renyi", [True, False])
@pytest.mark.parametrize("k", [1, 4])
def test_pack_matches_reference_on_a_benchmark_instance(renyi: bool, k: int) -> None:
    """A pass of simulations/benchmarks/bench_dpack.py's kind (600 claims on 1–5 of 12 blocks, three mechanism
    families, everything unlocked): hundreds of grants, the same as the reference's."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations" / "benchmarks"))
    from bench_dpack import build

    s = build(600, 12, renyi, "dpack", {"k": k}, seed=3)
    led = s.ledger
    claims = list(s.queue)
    got_avail, want_avail = led.unlocked.copy(), led.unlocked.copy()
    got = pack(claims, got_avail, led.capacity, led.composition, k)
    want, _, _ = reference_pack(claims, want_avail, led.capacity, led.composition, k)
    assert len(got) > 100
    assert got == want
    assert np.array_equal(got_avail, want_avail)


def random_packing(seed: int) -> tuple[list[QueuedClaim], np.ndarray, np.ndarray, Composition]:
    """A medium packing: up to 20 blocks and 150 claims on 1–20 of them, Rényi on up to 12 orders or basic,
    unusable columns, partly spent budgets; demands from few values (ties) or continuous."""
    rng = np.random.default_rng(seed)
    renyi = rng.random() < 0.7
    width = int(rng.integers(1, 13)) if renyi else 2
    comp: Composition = (
        RenyiComposition(AlphaGrid(tuple(float(a) for a in sorted(rng.choice(np.arange(2, 80), width, replace=False)))))
        if renyi
        else BasicComposition()
    )
    n_blocks = int(rng.integers(1, 21))
    capacity = rng.choice([0.0, 1.0, 2.0, 0.5], size=(n_blocks, width), p=[0.2, 0.4, 0.2, 0.2])
    few = rng.random() < 0.5
    avail = capacity * (rng.choice([0.0, 0.3, 0.5, 1.0], size=capacity.shape) if few else rng.random(capacity.shape))
    claims = []
    for i in range(int(rng.integers(1, 151))):
        m = int(rng.integers(1, min(n_blocks, int(rng.choice([3, 20]))) + 1))
        idx = rng.choice(n_blocks, m, replace=False).astype(np.int64)
        if few:
            demand = rng.choice([0.0, 0.05, 0.1, 0.2, 0.25], size=(m, width))
        else:
            demand = rng.uniform(0, 0.3, (m, width)) * (rng.random((m, width)) < 0.9)
        claims.append(
            QueuedClaim(
                handle=i,
                id=f"c{i}",
                arrival=0.0,
                seq=int(rng.integers(0, 50)),
                deadline=math.inf,
                weight=float(rng.choice([1.0, 2.0])),
                owner=None,
                idx=idx,
                demand=demand,
                shares=share_key(comp.shares(demand, capacity[idx])),
            )
        )
    return claims, avail, capacity, comp


@pytest.mark.parametrize("seed", range(40))
def test_pack_matches_reference_on_medium_instances(seed: int) -> None:
    """Medium random packings (claims on up to 20 blocks: the wide-claim term table too), k = 1 and 3."""
    claims, avail, capacity, comp = random_packing(seed)
    for k in (1, 3):
        got_avail, want_avail = avail.copy(), avail.copy()
        got = pack(claims, got_avail, capacity, comp, k)
        want, _, _ = reference_pack(claims, want_avail, capacity, comp, k)
        assert got == want
        assert np.array_equal(got_avail, want_avail)
