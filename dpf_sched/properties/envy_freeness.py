"""Dynamic envy-freeness (proofs/envy-freeness.md): a waiting claim never envies a claim granted while it waits,
unless their dominant shares are equal.

Claim ``w`` *envies* claim ``g`` when ``g``'s allocation would serve ``w``: ``w``'s blocks are among ``g``'s and
on each of them ``g``'s grant covers ``w``'s demand at every usable column (:func:`~dpf_sched.properties.base.covers`;
all-or-nothing utility). The checker looks at every pass: each claim granted in it against each claim still
waiting after it (a claim that arrived at that very instant counts as waiting). The pairs form the run's
*envy graph* (a :class:`networkx.DiGraph`, edge ``w → g``), which :func:`envy_graph` returns for inspection;
a violation is an edge whose two dominant shares differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import networkx as nx

from dpf_sched.properties.base import (
    ObservedRun,
    PolicyLike,
    Property,
    Subject,
    as_input,
    covers,
    observe,
    policy_factory,
    same_share,
)


@dataclass(frozen=True)
class EnvyViolation:
    """Claim ``envious`` waited while ``envied`` was granted an allocation that would have served it."""

    property: ClassVar[Property] = Property.ENVY_FREENESS
    envious: str
    envied: str
    time: float
    envious_share: float
    envied_share: float
    blocks: tuple[str, ...]

    def describe(self) -> str:
        """One line for people."""
        return (
            f"at t={self.time:g} claim {self.envied} (dominant share {self.envied_share:.4g}) was granted while "
            f"claim {self.envious} (dominant share {self.envious_share:.4g}) kept waiting, although the grant covers "
            f"its demand on blocks {', '.join(self.blocks)}"
        )

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        return {
            "property": self.property.value,
            "envious": self.envious,
            "envied": self.envied,
            "time": self.time,
            "envious_share": self.envious_share,
            "envied_share": self.envied_share,
            "blocks": list(self.blocks),
        }


def envies(run: ObservedRun, w: str, g: str) -> bool:
    """Whether claim ``w`` would be served by ``g``'s allocation (its blocks among ``g``'s, each covered)."""
    cw, cg = run.claims[w], run.claims[g]
    where = {int(b): r for r, b in enumerate(cg.idx.tolist())}
    cap = run.input.blocks.capacity
    comp = run.input.composition
    for r, b in enumerate(cw.idx.tolist()):
        rg = where.get(int(b))
        if rg is None or not covers(comp, cw.demand[r], cg.demand[rg], cap[b]):
            return False
    return True


def envy_graph(run: ObservedRun) -> nx.DiGraph:
    """The run's envy graph: a node per claim (attribute ``share``), an edge ``w → g`` (attribute ``time``, the
    first pass at which it arose) when ``g`` was granted while ``w`` waited and ``g``'s grant covers ``w``."""
    graph = nx.DiGraph()
    for cid, info in run.claims.items():
        graph.add_node(cid, share=info.dominant_share)
    for p in run.passes:
        for g in p.granted:
            for w in p.waiting:
                if not graph.has_edge(w, g) and envies(run, w, g):
                    graph.add_edge(w, g, time=p.time)
    return graph


def from_run(run: ObservedRun) -> tuple[EnvyViolation, ...]:
    """Every envy edge between claims of different dominant shares, by time."""
    graph = envy_graph(run)
    out = []
    for w, g, data in graph.edges(data=True):
        sw, sg = graph.nodes[w]["share"], graph.nodes[g]["share"]
        if same_share(sw, sg):
            continue
        out.append(EnvyViolation(w, g, float(data["time"]), sw, sg, run.claims[w].blocks))
    out.sort(key=lambda v: (v.time, v.envious, v.envied))
    return tuple(out)


def check_envy_freeness(
    subject: Subject, policy: PolicyLike, params: dict[str, Any] | None = None
) -> tuple[EnvyViolation, ...]:
    """Replay ``subject`` under ``policy`` and return every violation of dynamic envy-freeness (empty: none)."""
    return from_run(observe(as_input(subject), policy_factory(policy, params)))
