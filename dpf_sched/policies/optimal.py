"""The packing optimum as a policy: each pass grants a maximum-weight set of waiting claims that fit together.

Offline (every claim known, every block unlocked: the default ``unlocking="all"`` on a workload whose claims
all arrive at t = 0), one pass computes *the* optimum of the packing problem — the bar DPack (Tholoniat et al.,
EuroSys 2025) measures itself against. Online, every pass solves the same problem over the claims waiting then
and the budget unlocked then: a per-pass optimum, not a clairvoyant one. Unlocking is a parameter:

* ``all`` — everything unlocked when a block is created (as FCFS and DRF);
* ``timed`` — DPF-T's rule (parameters ``T``, ``tick``, ``unlock``;
  :func:`~dpf_sched.policies.unlocking.timed_unlocker`);
* ``arrival`` — DPF-N's rule (parameter ``N``; :func:`~dpf_sched.policies.unlocking.arrival_unlocker`).

The solver is :func:`dpf_sched.packing.solve_packing` (a MILP solved by HiGHS, one per connected component of
the claim–block graph; see its module docstring for the formulation, the validation of the solver's answer and
the greedy completion). A pass that hits ``time_limit`` grants the best set found, logs a warning with the
proven bound and the gap, and keeps the :class:`~dpf_sched.packing.PackingResult` (``proven=False``) in
:attr:`Optimal.last_result`; it is never reported as optimal.

Only claims that fit alone in the unlocked budget can be in a feasible set, and after a pass no waiting claim
fits alone (the greedy completion makes the granted set maximal); so a pass only needs to consider the claims
that just arrived and those waiting on blocks that gained budget (``PassContext.dirty``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from dpf_sched.errors import InvalidParameterError
from dpf_sched.packing import DEFAULT_TIME_LIMIT, FORMULATIONS, PackingResult, solve_packing
from dpf_sched.policies.base import (
    Decision,
    Param,
    PassContext,
    Policy,
    UnlockAll,
    Unlocker,
    Verdict,
    choice,
    positive_float,
)
from dpf_sched.policies.unlocking import ARRIVAL_PARAMS, TIMED_PARAMS, arrival_unlocker, timed_unlocker
from dpf_sched.queue import QueuedClaim

logger = logging.getLogger(__name__)

UNLOCKING = ("all", "timed", "arrival")


def _gap(v: Any) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise InvalidParameterError(f"gap must be a number in [0, 1), got {v!r}") from None
    if isinstance(v, bool) or not np.isfinite(f) or not 0.0 <= f < 1.0:
        raise InvalidParameterError(f"gap must be a number in [0, 1), got {v!r}")
    return f


class Optimal(Policy):
    """Grant, at each pass, a maximum-weight set of waiting claims that fit together in the unlocked budget.

    Parameters (besides those of the chosen unlocking rule): ``time_limit`` (seconds per pass, default 60),
    ``gap`` (relative gap at which the solver may stop, default 0: prove the optimum), ``unlocking``
    (``all``, ``timed`` or ``arrival``). Weights are the claims' ``weight`` (1 by default: the number of claims).
    """

    name = "optimal"
    params: ClassVar[Mapping[str, Param]] = {
        "time_limit": Param(positive_float("time_limit"), DEFAULT_TIME_LIMIT, "wall-clock seconds of a pass's solve"),
        "gap": Param(_gap, 0.0, "relative optimality gap at which the solver may stop (0: prove the optimum)"),
        "formulation": Param(choice("formulation", FORMULATIONS), "hull", "MILP of the per-block order choice"),
        "unlocking": Param(choice("unlocking", UNLOCKING), "all", "all (at creation), timed (DPF-T), arrival (DPF-N)"),
        **ARRIVAL_PARAMS,
        **TIMED_PARAMS,
    }

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        #: The packing result of the last pass that solved something (``None`` before).
        self.last_result: PackingResult | None = None
        #: Passes whose answer was not proven optimal.
        self.unproven_passes = 0

    @classmethod
    def active_params(cls, config: Mapping[str, Any]) -> set[str]:
        """The parameters that matter for ``config`` (the unlocking rule's own only when it is chosen).

        :func:`dpf_sched.sim.compare.plan_runs` uses it so that an ``N`` grid does not multiply the runs of
        ``unlocking=all`` (which ignores ``N``).
        """
        mode = str(config.get("unlocking", cls.params["unlocking"].default)).strip().lower()
        keys = {"time_limit", "gap", "formulation", "unlocking"}
        if mode == "timed":
            keys |= set(TIMED_PARAMS)
        elif mode == "arrival":
            keys |= set(ARRIVAL_PARAMS)
        return keys

    def report(self) -> dict[str, Any]:
        """``optimal_proven`` (every pass proven optimal), ``optimal_bound`` and ``optimal_gap`` of the last
        pass that solved something (offline, a single pass: the proven upper bound on the optimum)."""
        last = self.last_result
        return {
            "optimal_proven": self.unproven_passes == 0,
            "optimal_bound": float(last.bound) if last is not None else math.nan,
            "optimal_gap": float(last.gap) if last is not None else math.nan,
        }

    def make_unlocker(self) -> Unlocker:
        mode = self.config["unlocking"]
        if mode == "timed":
            return timed_unlocker(self.config)
        if mode == "arrival":
            return arrival_unlocker(self.config)
        return UnlockAll()

    def _candidates(self, ctx: PassContext) -> list[QueuedClaim]:
        """Waiting claims that arrived now or wait on a block that gained budget, and fit alone."""
        queue = ctx.queue
        handles: set[int] = {q.handle for q in ctx.arrivals if q.handle in queue}
        for b in ctx.dirty.tolist():
            handles.update(queue.waiting_on(b).tolist())
        ledger = ctx.ledger
        comp = ledger.composition
        avail = ledger.unlocked
        cap = ledger.capacity
        retired = ledger.retired_mask
        out = []
        for h in sorted(handles):
            q = queue.get(h)
            if retired.shape[0] and bool(retired[q.idx].any()):
                continue
            if bool(comp.fits(q.demand, avail[q.idx], cap[q.idx]).all()):
                out.append(q)
        return out

    def schedule(self, ctx: PassContext) -> list[Decision]:
        cands = self._candidates(ctx)
        if not cands:
            return []
        ledger = ctx.ledger
        result = solve_packing(
            [(q.idx, q.demand) for q in cands],
            np.asarray(ledger.capacity),
            ledger.composition,
            weights=[q.weight for q in cands],
            available=np.asarray(ledger.unlocked),
            time_limit=float(self.config["time_limit"]),
            gap=float(self.config["gap"]),
            formulation=str(self.config["formulation"]),
        )
        self.last_result = result
        if not result.proven:
            self.unproven_passes += 1
            logger.warning(
                "optimal: the pass at t=%s is not proven optimal (%s): granted weight %.6g, bound %.6g, gap %.3g%%",
                ctx.now,
                result.status.value,
                result.objective,
                result.bound,
                100.0 * result.gap,
            )
        return [Decision(cands[i].handle, Verdict.GRANT) for i in result.chosen]
