"""Sharing incentive (proofs/sharing-incentive.md): a fair-demand claim is granted in the pass at its arrival.

A claim is *fair-demand* for ``N`` when, on every block it asks for, it is among the first ``N`` claims to ask
for that block and asks at most ``G_j / N`` (every usable column; :func:`dpf_sched.sim.metrics.fair_demand_mask`
is the one definition). The theorem needs one more condition, which the checker applies too: at the instant
of the claim's arrival, at most ``N`` claims in all have asked for each of its blocks (no instant *overshoots*
the N-th unlock; always true when arrivals are at distinct instants). Without it the property fails even for
DPF-N (the counterexample is in the proof), so a claim that only the paper's literal definition covers is not
reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from dpf_sched.properties.base import (
    ObservedRun,
    PolicyLike,
    Property,
    Subject,
    as_input,
    grant_time,
    observe,
    opt_time,
    policy_factory,
)
from dpf_sched.sim.metrics import fair_demand_mask
from dpf_sched.sim.table import SimInput


@dataclass(frozen=True)
class SharingIncentiveViolation:
    """A fair-demand claim that was not granted in the pass at its arrival."""

    property: ClassVar[Property] = Property.SHARING_INCENTIVE
    claim: str
    arrival: float
    granted_at: float | None
    status: str
    dominant_share: float
    fair_share: float
    blocks: tuple[str, ...]

    def describe(self) -> str:
        """One line for people."""
        when = "never granted" if self.granted_at is None else f"granted only at t={self.granted_at:g}"
        return (
            f"fair-demand claim {self.claim} (dominant share {self.dominant_share:.4g} ≤ 1/N = {self.fair_share:.4g}, "
            f"blocks {', '.join(self.blocks)}) arrived at t={self.arrival:g} and was {when} ({self.status})"
        )

    def to_json(self) -> dict[str, Any]:
        """Plain values for ``--json``."""
        return {
            "property": self.property.value,
            "claim": self.claim,
            "arrival": self.arrival,
            "granted_at": self.granted_at,
            "status": self.status,
            "dominant_share": self.dominant_share,
            "fair_share": self.fair_share,
            "blocks": list(self.blocks),
        }


def covered_claims(inp: SimInput, n: int) -> NDArray[np.bool_]:
    """Per claim: fair-demand for ``n`` and no overshoot at its arrival instant on any of its blocks."""
    fair = fair_demand_mask(inp, n)
    claims = inp.claims
    if len(claims) == 0:
        return fair
    # Arrivals on each block up to and including each claim's arrival instant: count rows of the same block
    # whose claim arrived at or before this one's time.
    rows_claim = np.repeat(np.arange(len(claims)), claims.n_blocks)
    row_time = claims.arrival[rows_claim]
    ok_row = np.ones(rows_claim.shape[0], dtype=np.bool_)
    for b in np.unique(claims.block).tolist():
        rows = np.flatnonzero(claims.block == b)
        times = np.sort(row_time[rows])
        upto = np.searchsorted(times, row_time[rows], side="right")
        ok_row[rows] = upto <= n
    bad = np.zeros(len(claims), dtype=np.int64)
    np.add.at(bad, rows_claim, ~ok_row)
    return np.asarray(fair & (bad == 0), dtype=np.bool_)


def from_run(run: ObservedRun) -> tuple[SharingIncentiveViolation, ...]:
    """Every covered fair-demand claim of an observed run that was not granted at its arrival, by arrival."""
    res = run.result
    pos = {cid: k for k, cid in enumerate(res.ids)}
    out = []
    covered = covered_claims(run.input, run.fair_n)
    for k in np.flatnonzero(covered).tolist():
        cid = run.input.claims.ids[k]
        r = pos[cid]
        g = grant_time(res, r)
        arrival = float(res.arrival[r])
        if g == arrival:
            continue
        info = run.claims[cid]
        status = res.claims[r].status
        reason = res.reasons[r]
        out.append(
            SharingIncentiveViolation(
                cid,
                arrival,
                opt_time(g),
                f"{status}: {reason}" if reason else status,
                info.dominant_share,
                1.0 / run.fair_n,
                info.blocks,
            )
        )
    out.sort(key=lambda v: (v.arrival, v.claim))
    return tuple(out)


def check_sharing_incentive(
    subject: Subject, policy: PolicyLike, params: dict[str, Any] | None = None, *, fair_n: int | None = None
) -> tuple[SharingIncentiveViolation, ...]:
    """Replay ``subject`` under ``policy`` and return every violation of sharing incentive (empty: none).

    ``fair_n`` is the ``N`` of the fair-demand definition (default: the policy's ``N``, else
    :data:`~dpf_sched.properties.base.DEFAULT_FAIR_N`).
    """
    return from_run(observe(as_input(subject), policy_factory(policy, params), fair_n))


__all__ = ["SharingIncentiveViolation", "check_sharing_incentive", "covered_claims", "from_run"]
