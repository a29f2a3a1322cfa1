"""The report of a budgeted run: how it ended, and what it was granted, spent and gave back.

:class:`RunStatus` says how the run ended (completed, stopped early, exhausted its grant, failed);
:class:`RunReport` holds the plan, the granted, consumed and released curves (per block), the steps and the
accountant's segments, and the time the claim waited, with a JSON-ready view. It is what
:class:`~dpf_sched.integrations.opacus.engine.BudgetedTraining` leaves behind when it finishes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from dpf_sched.budget import RenyiCurve
from dpf_sched.integrations.opacus.history import Segment
from dpf_sched.integrations.opacus.plan import DpSgdPlan


class RunStatus(StrEnum):
    """How a budgeted run ended."""

    COMPLETED = "completed"  # every planned step was taken
    STOPPED = "stopped"  # the loop ended early (fewer steps than planned), without an error
    EXHAUSTED = "exhausted"  # the hook refused a step that would have exceeded the grant
    FAILED = "failed"  # an exception ended the run (its spend was still committed)


def _curve_dict(c: RenyiCurve) -> dict[str, float]:
    return {repr(a): float(v) for a, v in zip(c.grid.orders, c.values.tolist(), strict=True)}


@dataclass(frozen=True)
class RunReport:
    """What a budgeted run was granted, spent and gave back (per block: the claim asks the same on each).

    ``consumed`` is what the claim consumed on the ledger: the chunks charged ahead (write-ahead charging), at
    least ``spent``, the curve of the accountant's history, and equal to it bit for bit when the job ran every
    step it charged. ``charged_steps`` counts the steps charged, ``notes`` says how a resumed job continued.
    """

    claim_id: str
    status: RunStatus
    blocks: tuple[str, ...]
    accountant: str
    plan: DpSgdPlan
    granted: RenyiCurve
    consumed: RenyiCurve
    released: RenyiCurve
    steps: int
    segments: tuple[Segment, ...]
    waited: float
    error: str | None = None
    spent: RenyiCurve | None = None
    charged_steps: int = 0
    notes: tuple[str, ...] = ()
    released_by_block: Mapping[str, RenyiCurve] = field(default_factory=dict, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready view (curves as ``{str(α): value}``)."""
        return {
            "claim_id": self.claim_id,
            "status": self.status.value,
            "blocks": list(self.blocks),
            "accountant": self.accountant,
            "alphas": list(self.granted.grid.orders),
            "granted": _curve_dict(self.granted),
            "consumed": _curve_dict(self.consumed),
            "spent": None if self.spent is None else _curve_dict(self.spent),
            "charged_steps": self.charged_steps,
            "notes": list(self.notes),
            "released": _curve_dict(self.released),
            "steps": self.steps,
            "planned_steps": self.plan.steps,
            "sample_rate": self.plan.sample_rate,
            "noise_multipliers": list(self.plan.noise_multipliers),
            "segments": [[s.noise_multiplier, s.sample_rate, s.steps] for s in self.segments],
            "waited": self.waited,
            "error": self.error,
        }
