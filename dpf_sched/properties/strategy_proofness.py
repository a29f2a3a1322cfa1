"""Strategy-proofness (proofs/strategy-proofness.md): misreporting its demand never gets a claim a useful grant
earlier.

The checker replays the input once truthfully and then, for every claim and every misreport of a small set,
once more with that claim's demand scaled block by block (the same blocks: asking for other blocks is a
different claim, not a misreport of this one). Two things are checked:

* **over-reporting** (every factor ≥ 1, some > 1): the inflated claim is never granted earlier than the truthful
  one (never granted counts as ``t = ∞``);
* **under-reporting** (some factor < 1): the grant, if any, is exactly what was reported, so it does not cover
  the true demand on every block and is worth nothing (all-or-nothing utility).

Per claim, the smallest misreport (by its largest deviation from 1) that breaks each check is reported.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

import numpy as np

from dpf_sched.composition import Composition
from dpf_sched.properties.base import (
    ObservedRun,
    PolicyFactory,
    PolicyLike,
    Property,
    Subject,
    as_input,
    covers,
    grant_time,
    observe,
    opt_time,
    policy_factory,
)
from dpf_sched.scheduler import Outcome, Scheduler
from dpf_sched.sim.replay import replay
from dpf_sched.sim.table import SimInput, trace_from_tables

#: Uniform scale factors tried for every claim (one under-report, two over-reports), smallest deviation first;
#: multi-block claims are also tried with each single block doubled.
DEFAULT_FACTORS: tuple[float, ...] = (0.5, 1.5, 3.0)


@dataclass(frozen=True)
class StrategyProofnessViolation:
    """A misreport that got claim ``claim`` a grant earlier than the truth (or a useful grant by under-reporting)."""

    property: ClassVar[Property] = Property.STRATEGY_PROOFNESS
    claim: str
    kind: str
    factors: tuple[float, ...]
    blocks: tuple[str, ...]
    truthful_grant: float | None
    misreport_grant: float | None
    truthful_share: float
    reported_share: float

    def describe(self) -> str:
        """One line for people."""
        f = ", ".join(f"{b}×{x:g}" for b, x in zip(self.blocks, self.factors, strict=True))
        truth = "never" if self.truthful_grant is None else f"t={self.truthful_grant:g}"
        lie = "never" if self.misreport_grant is None else f"t={self.misreport_grant:g}"
        what = "an earlier grant" if self.kind == "inflate" else "a grant covering its true demand"
        return (
            f"claim {self.claim} misreporting its demand ({self.kind}: {f}; dominant share {self.truthful_share:.4g} "
            f"→ {self.reported_share:.4g}) got {what}: truthful {truth}, misreport {lie}"
        )

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        return {
            "property": self.property.value,
            "claim": self.claim,
            "kind": self.kind,
            "factors": dict(zip(self.blocks, self.factors, strict=True)),
            "truthful_grant": self.truthful_grant,
            "misreport_grant": self.misreport_grant,
            "truthful_share": self.truthful_share,
            "reported_share": self.reported_share,
        }


def misreports(n_blocks: int, factors: Sequence[float] = DEFAULT_FACTORS) -> list[tuple[float, ...]]:
    """The per-block factor vectors tried for a claim on ``n_blocks`` blocks, smallest deviation first."""
    out = [(f,) * n_blocks for f in factors if f != 1.0]
    if n_blocks > 1:
        for j in range(n_blocks):
            out.append(tuple(2.0 if i == j else 1.0 for i in range(n_blocks)))
    out.sort(key=lambda v: max(abs(math.log(x)) for x in v))
    return out


def scaled(inp: SimInput, k: int, factors: Sequence[float]) -> SimInput:
    """``inp`` with claim ``k``'s demand row on its ``i``-th block multiplied by ``factors[i]``."""
    claims = inp.claims
    lo, hi = int(claims.ptr[k]), int(claims.ptr[k + 1])
    demand = claims.demand.copy()
    demand[lo:hi] *= np.asarray(factors, dtype=np.float64)[:, None]
    return replace(inp, claims=replace(claims, demand=demand))


def _replay_one(
    inp: SimInput, factory: PolicyFactory, cid: str, comp: Composition
) -> tuple[float, list[np.ndarray[Any, np.dtype[np.float64]]] | None]:
    """Replay and return claim ``cid``'s grant time and, if granted, the rows it was granted (block order)."""
    got: list[list[np.ndarray[Any, np.dtype[np.float64]]]] = []

    def watch(scheduler: Scheduler, outcomes: list[Outcome]) -> None:
        for o in outcomes:
            if o.claim_id == cid and scheduler.ledger.state(cid).was_granted:
                rec = scheduler.ledger.claim(cid)
                got.append([comp.row(rec.consumed[b]) for b in rec.claim.blocks])

    res = replay(trace_from_tables(inp), factory(), observer=watch, engine="scheduler")
    k = list(res.ids).index(cid)
    return grant_time(res, k), (got[0] if got else None)


def from_run(
    run: ObservedRun, factory: PolicyFactory, factors: Sequence[float] = DEFAULT_FACTORS
) -> tuple[StrategyProofnessViolation, ...]:
    """Every claim of ``run`` for which some misreport breaks strategy-proofness (its smallest such misreport)."""
    inp = run.input
    comp = inp.composition
    cap = inp.blocks.capacity
    truth = {cid: grant_time(run.result, k) for k, cid in enumerate(run.result.ids)}
    out: list[StrategyProofnessViolation] = []
    for k, cid in enumerate(inp.claims.ids):
        info = run.claims[cid]
        found: set[str] = set()
        for vec in misreports(info.idx.shape[0], factors):
            kind = "deflate" if min(vec) < 1.0 else "inflate"
            if kind in found:
                continue
            lied = scaled(inp, k, vec)
            t_lie, rows = _replay_one(lied, factory, cid, comp)
            t_true = truth[cid]
            if kind == "inflate":
                bad = t_lie < t_true
            else:
                bad = rows is not None and all(
                    covers(comp, info.demand[r], rows[r], cap[b]) for r, b in enumerate(info.idx.tolist())
                )
            if not bad:
                continue
            found.add(kind)
            rep_dem = lied.claims.demand[int(lied.claims.ptr[k]) : int(lied.claims.ptr[k + 1])]
            reported = float(comp.shares(rep_dem, cap[info.idx]).max())
            out.append(
                StrategyProofnessViolation(
                    cid, kind, tuple(vec), info.blocks, opt_time(t_true), opt_time(t_lie), info.dominant_share, reported
                )
            )
    return tuple(out)


def check_strategy_proofness(
    subject: Subject,
    policy: PolicyLike,
    params: dict[str, Any] | None = None,
    *,
    factors: Sequence[float] = DEFAULT_FACTORS,
) -> tuple[StrategyProofnessViolation, ...]:
    """Replay ``subject`` under ``policy`` truthfully and with each claim's demand misreported; return every
    violation of strategy-proofness (empty: none). ``factors`` are the uniform scale factors tried."""
    factory = policy_factory(policy, params)
    return from_run(observe(as_input(subject), factory), factory, factors)
