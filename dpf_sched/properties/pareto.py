"""Pareto efficiency (proofs/pareto-efficiency.md): after every pass, no waiting claim fits in the unlocked budget.

With all-or-nothing utility and privacy the only bottleneck, a waiting claim that fits could be granted without
taking anything from anyone, so leaving it waiting is a Pareto improvement foregone. Fitting is the ledger's own
test (basic: every column; Rényi: some usable order on each block).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

from dpf_sched.properties.base import ObservedRun, PolicyLike, Property, Subject, as_input, observe, policy_factory


@dataclass(frozen=True)
class ParetoViolation:
    """A claim left waiting after a pass although the unlocked budget of all its blocks could serve it."""

    property: ClassVar[Property] = Property.PARETO_EFFICIENCY
    claim: str
    time: float
    arrival: float
    dominant_share: float
    blocks: tuple[str, ...]

    def describe(self) -> str:
        """One line for people."""
        return (
            f"after the pass at t={self.time:g}, claim {self.claim} (arrived t={self.arrival:g}, dominant share "
            f"{self.dominant_share:.4g}, blocks {', '.join(self.blocks)}) waits although it fits in the unlocked budget"
        )

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        return {
            "property": self.property.value,
            "claim": self.claim,
            "time": self.time,
            "arrival": self.arrival,
            "dominant_share": self.dominant_share,
            "blocks": list(self.blocks),
        }


def from_run(run: ObservedRun) -> tuple[ParetoViolation, ...]:
    """Every (pass, waiting claim that fits) of an observed run; a claim is reported at its first such pass."""
    seen: set[str] = set()
    out = []
    for p in run.passes:
        for cid in p.fitting:
            if cid in seen:
                continue
            seen.add(cid)
            info = run.claims[cid]
            out.append(ParetoViolation(cid, p.time, info.arrival, info.dominant_share, info.blocks))
    return tuple(out)


def check_pareto_efficiency(
    subject: Subject, policy: PolicyLike, params: dict[str, Any] | None = None
) -> tuple[ParetoViolation, ...]:
    """Replay ``subject`` under ``policy`` and return every violation of Pareto efficiency (empty: none)."""
    return from_run(observe(as_input(subject), policy_factory(policy, params)))
