"""Random search for counterexamples: hypothesis draws small traces (basic and Rényi), the checkers judge them,
and hypothesis shrinks the first failing trace to a minimal one.

The traces are small on purpose (a few blocks, a handful of claims, integer times so that arrivals may share an
instant, demands on a grid around the fair share ``G/N``): every property of ``proofs/`` that fails has a
counterexample of two or three claims, and small traces shrink fast. Demands are fractions of the block's
capacity; for a Rényi trace each order of a demand curve is drawn on its own, so that "some order fits" and
"dominant share over usable orders" differ from the basic rules. Timeouts are drawn too.

The search is deterministic for a given ``seed`` *and hypothesis version* only: which traces hypothesis draws
from a seed changes between its releases (the project pins the version its tests run with in
``requirements/test.txt``). A counterexample that must be found again, by a test or by a document, is therefore
stored as a *witness* trace and passed as ``witnesses``: each witness is judged before the random search (like
hypothesis' ``@example``), so a known counterexample never depends on what a random draw happens to hit.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from dpf_sched.errors import InvalidParameterError
from dpf_sched.properties.base import PolicyFactory, PolicyLike, Property, fair_n_of, observe, policy_factory
from dpf_sched.properties.runner import PropertyReport, check_observed, parse_properties
from dpf_sched.sim.table import SimInput, tables_from_trace
from dpf_sched.sim.trace import read_trace

#: The α grid of the Rényi traces (small, so that shrinking has little to do).
SEARCH_ALPHAS: tuple[float, ...] = (2.0, 4.0, 8.0)
COMPOSITIONS = ("basic", "renyi")
#: Shapes of Rényi demand curves over :data:`SEARCH_ALPHAS`, scaled by a drawn fraction: flat, cheap at low or
#: high orders, and steep either way (so that the order that fits, and the one that sets the share, vary).
CURVE_SHAPES: tuple[tuple[float, ...], ...] = (
    (1.0, 1.0, 1.0),
    (0.5, 1.0, 1.0),
    (1.0, 0.5, 0.25),
    (0.25, 0.5, 1.0),
    (1.0, 2.0, 4.0),
    (4.0, 2.0, 1.0),
)
TraceLines = list[dict[str, Any]]


def demand_fractions(fair_n: int) -> tuple[float, ...]:
    """Demand grid as fractions of a block's capacity: around the fair share ``1/N``, plus large demands."""
    u = 1.0 / fair_n
    grid = (u, 2 * u, 0.5 * u, 1.5 * u, 3 * u, 0.5, 1.0)
    return tuple(dict.fromkeys(g for g in grid if 0 < g <= 1.0))


@st.composite
def trace_lines(draw: st.DrawFn, composition: str, fair_n: int, max_blocks: int = 3, max_claims: int = 6) -> TraceLines:
    """A small random trace as JSON objects (header, then blocks and claims in time order)."""
    renyi = composition == "renyi"
    fracs = demand_fractions(fair_n)
    width = len(SEARCH_ALPHAS) if renyi else 1
    n_blocks = draw(st.integers(1, max_blocks))
    blocks: list[tuple[str, float, list[float]]] = []
    for j in range(n_blocks):
        t = 0.0 if j == 0 else float(draw(st.integers(0, 3)))
        cap = [float(draw(st.sampled_from((1.0, 2.0)))) for _ in range(width)]
        blocks.append((f"b{j}", t, cap))
    times = sorted(draw(st.lists(st.integers(0, 6), min_size=1, max_size=max_claims)))
    events: list[tuple[float, int, int, dict[str, Any]]] = []
    for j, (bid, t, cap) in enumerate(blocks):
        obj: dict[str, Any] = {"kind": "block", "id": bid, "time": t}
        if renyi:
            obj["rdp"] = cap
        else:
            obj["epsilon"] = cap[0]
        events.append((t, 0, j, obj))
    for i, ti in enumerate(times):
        t = float(ti)
        created = [b for b in blocks if b[1] <= t]
        picks = draw(
            st.lists(st.sampled_from(range(len(created))), min_size=1, max_size=min(3, len(created)), unique=True)
        )
        demand: dict[str, Any] = {}
        for bid, _, cap in (created[p] for p in picks):
            base = draw(st.sampled_from(fracs))
            shape = draw(st.sampled_from(CURVE_SHAPES)) if renyi else (1.0,)
            row = [base * fi * ci for fi, ci in zip(shape, cap, strict=True)]
            demand[bid] = row if renyi else {"epsilon": row[0]}
        claim: dict[str, Any] = {"kind": "claim", "id": f"c{i}", "time": t, "blocks": list(demand), "demand": demand}
        timeout = draw(st.one_of(st.none(), st.integers(1, 4)))
        if timeout is not None:
            claim["timeout"] = float(timeout)
        events.append((t, 1, i, claim))
    events.sort(key=lambda e: (e[0], e[1], e[2]))
    header: dict[str, Any] = {"kind": "header", "composition": composition}
    if renyi:
        header["alphas"] = list(SEARCH_ALPHAS)
    return [header] + [e[3] for e in events]


def to_input(lines: Sequence[Mapping[str, Any]]) -> SimInput:
    """The columnar input of a trace given as JSON objects (validated like any trace file)."""
    trace = read_trace([json.dumps(o) for o in lines])
    return tables_from_trace(trace, trace.header.end)


@dataclass(frozen=True)
class Counterexample:
    """A minimal trace (JSON Lines) on which ``property`` fails, and the report of that property on it."""

    property: Property
    trace: tuple[str, ...]
    report: PropertyReport
    #: Where the trace came from: ``"witness"`` (one of the ``witnesses`` given, replayed as is) or ``"search"``
    #: (drawn by the random search and shrunk).
    source: str = "search"

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        return {
            "property": self.property.value,
            "source": self.source,
            "trace": [json.loads(line) for line in self.trace],
            "report": self.report.to_json(),
        }


@dataclass(frozen=True)
class SearchResult:
    """What a search found: per property searched, a counterexample or ``None``."""

    policy: str
    examples: int
    seed: int
    compositions: tuple[str, ...]
    found: Mapping[Property, Counterexample | None]

    @property
    def ok(self) -> bool:
        """True when no counterexample was found."""
        return all(c is None for c in self.found.values())

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        return {
            "policy": self.policy,
            "examples": self.examples,
            "seed": self.seed,
            "compositions": list(self.compositions),
            "ok": self.ok,
            "counterexamples": {p.value: (c.to_json() if c else None) for p, c in self.found.items()},
        }


def _fails(lines: TraceLines, factory: PolicyFactory, prop: Property, fair_n: int | None) -> PropertyReport | None:
    report = check_observed(observe(to_input(lines), factory, fair_n), factory, (prop,))
    return None if report.ok else report


def search_counterexamples(
    policy: PolicyLike,
    params: Mapping[str, Any] | None = None,
    *,
    properties: Iterable[str | Property] | None = None,
    examples: int = 100,
    seed: int = 0,
    compositions: Iterable[str] | None = None,
    fair_n: int | None = None,
    max_claims: int = 6,
    witnesses: Iterable[Sequence[Mapping[str, Any]]] = (),
) -> SearchResult:
    """Search random traces for a counterexample to each property, and shrink each one found.

    ``examples`` random traces are tried per property (hypothesis ``max_examples``), deterministically for a
    given ``seed``. ``compositions`` defaults to basic and Rényi (basic only for a policy without Rényi
    support). The same trace strategy serves every policy, so a third-party policy is searched exactly like a
    built-in one.

    ``witnesses`` are traces (JSON objects, header first) judged before the random search, per property: the
    first one on which a property fails is that property's counterexample (``source="witness"``, not shrunk) and
    no random search is run for it. A witness is validated like any trace (:class:`~dpf_sched.errors.TraceFormatError`
    when malformed); a witness that fails no property is simply not reported.
    """
    if isinstance(examples, bool) or examples <= 0:
        raise InvalidParameterError(f"examples must be a positive integer, got {examples!r}")
    factory = policy_factory(policy, params)
    probe = factory()
    n = fair_n_of(probe, fair_n)
    comps = tuple(compositions) if compositions is not None else COMPOSITIONS
    for c in comps:
        if c not in COMPOSITIONS:
            raise InvalidParameterError(f"composition must be one of {COMPOSITIONS}, got {c!r}")
    if not probe.supports_renyi:
        comps = tuple(c for c in comps if c != "renyi")
    if not comps:
        raise InvalidParameterError(f"policy {probe.name} supports none of the requested compositions")
    strategy = st.sampled_from(comps).flatmap(lambda c: trace_lines(c, n, max_claims=max_claims))
    conf = settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=(Phase.generate, Phase.shrink),
        suppress_health_check=list(HealthCheck),
    )
    witness_lines = [[dict(o) for o in w] for w in witnesses]
    for w in witness_lines:
        to_input(w)  # validate every witness up front, so that a malformed one is an error, not a silent skip
    found: dict[Property, Counterexample | None] = {}
    for prop in parse_properties(properties):
        hit = next(((w, r) for w in witness_lines if (r := _fails(w, factory, prop, n)) is not None), None)
        if hit is not None:
            found[prop] = Counterexample(prop, tuple(json.dumps(o) for o in hit[0]), hit[1], source="witness")
            continue
        try:
            lines = find(
                strategy,
                lambda ls, p=prop: _fails(ls, factory, p, n) is not None,  # type: ignore[misc]
                settings=conf,
                random=random.Random(seed),
            )
        except NoSuchExample:
            found[prop] = None
            continue
        report = _fails(lines, factory, prop, n)
        assert report is not None
        found[prop] = Counterexample(prop, tuple(json.dumps(o) for o in lines), report)
    return SearchResult(probe.describe(), examples, seed, comps, found)
