"""DPF-Pack: DPF for claims within their fair share, DPack's packing for the rest of the unlocked budget.

DPF (Luo et al., OSDI'21) guarantees every fair-demand claim its grant at arrival (sharing incentive) but orders
everything else by dominant share, which packs heterogeneous Rényi demands poorly; DPack (Tholoniat et al.,
EuroSys'25, arXiv 2212.13228) packs well but gives no such guarantee (``proofs/dpack.md``). DPF-Pack keeps
DPF's unlocking and splits every pass in two:

1. **Fair phase.** The waiting claims whose dominant share is at most the *fair share* ``f`` are served exactly
   as DPF serves them: in DPF's order (dominant share, then the next shares or arrival, per ``tie_break``),
   best effort, with the composition's all-or-nothing fit rule, against a scratch copy of the unlocked budget.
   Since DPF's order starts with the dominant share, these claims are the prefix of DPF's own pass.
2. **Packing phase.** Every claim still waiting is packed into what is left by DPack's efficiency order
   (:func:`dpf_sched.policies.dpack.pack`, best order per block, recomputed every ``k`` grants).

The fair share is what one unlock step releases, as a fraction of a block's capacity:

* ``unlocking=arrival`` (DPF-N, default): ``f = 1/N``. Each of the first ``N`` claims on a block unlocks ``G/N``;
  a claim asking at most that on each of its blocks is served first, so packers can only use what fair claims
  leave. Sharing incentive holds (``proofs/dpf-pack.md``, Theorem SI-P).
* ``unlocking=timed`` (DPF-T): ``f = tick/T`` (``unlock=paper``) or ``1/K`` with ``K = int(T/tick) + 1`` (``unlock=
  artifact``), the budget of one tick. Arrival-time sharing incentive cannot hold under timed unlocking (as for
  DPF-T, a lone claim at its block's creation finds nothing unlocked); ``proofs/dpf-pack.md`` states the
  per-tick guarantee that the fair phase gives instead.

Like DPack, a pass re-runs on all waiting claims whenever blocks gained budget or claims arrived.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from dpf_sched.composition import REL_TOL
from dpf_sched.policies.base import (
    TIE_BREAKS,
    Decision,
    Param,
    PassContext,
    Policy,
    Unlocker,
    Verdict,
    choice,
)
from dpf_sched.policies.dpack import K_PARAM, TIMED_UNLOCK_PARAMS, fitting, pack, unlock_active_params, unlocker_for
from dpf_sched.policies.unlocking import ARRIVAL_PARAMS, UnlockOverTime, UnlockPerArrival


class DPFPack(Policy):
    """DPF-Pack (module docstring): DPF's unlocking; each pass serves fair-share claims in DPF order, then packs
    the rest of the unlocked budget by DPack's efficiency.

    Parameters: ``unlocking`` (``arrival``: DPF-N's rule with ``N``; ``timed``: DPF-T's with ``T``, ``tick``,
    ``unlock``), ``k`` (DPack's recompute period), ``tie_break`` (DPF's order among equal dominant shares).
    Parameters of the unlocking rule that is not selected are ignored.
    """

    name = "dpf-pack"
    params: ClassVar[Mapping[str, Param]] = {
        "unlocking": Param(
            choice("unlocking", ("arrival", "timed")), "arrival", "unlocking: arrival (DPF-N), timed (DPF-T)"
        ),
        **ARRIVAL_PARAMS,
        **TIMED_UNLOCK_PARAMS,
        "k": K_PARAM,
        "tie_break": Param(choice("tie_break", TIE_BREAKS), "lexicographic", "DPF order among equal dominant shares"),
    }

    @classmethod
    def active_params(cls, config: Mapping[str, Any]) -> set[str]:
        """``k``, ``tie_break``, ``unlocking`` and the chosen unlocking rule's parameters."""
        return unlock_active_params(config, {"k", "tie_break"}, cls.params["unlocking"].default)

    def make_unlocker(self) -> Unlocker:
        rule = unlocker_for(self.config)
        assert rule is not None  # "all" is not a choice here
        return rule

    @property
    def fair_share(self) -> float:
        """The fair share ``f`` as a fraction of capacity: one unlock step (module docstring)."""
        rule = self.unlocker
        if isinstance(rule, UnlockPerArrival):
            return 1.0 / rule.n
        assert isinstance(rule, UnlockOverTime)
        return 1.0 / rule.K if rule.mode == "artifact" else min(rule.tick / rule.T, 1.0)

    def schedule(self, ctx: PassContext) -> list[Decision]:
        if ctx.dirty.size == 0 and not ctx.arrivals:
            return []  # nothing changed since the last pass, which left no waiting claim that fits
        ledger = ctx.ledger
        comp, cap = ledger.composition, ledger.capacity
        avail = np.array(ledger.unlocked, dtype=np.float64)
        waiting = list(ctx.queue)
        # Fair phase: the prefix of DPF's pass (same tolerance on the share as the fair-demand definition).
        limit = self.fair_share * (1.0 + REL_TOL)
        fair = [q for q in waiting if q.dominant_share <= limit]
        granted: list[int] = []
        if fair:
            ok = fitting(fair, avail, cap, comp)
            for q in sorted((q for q, f in zip(fair, ok.tolist(), strict=True) if f), key=self.sort_key):
                if bool(comp.fits(q.demand, avail[q.idx], cap[q.idx]).all()):
                    avail[q.idx] -= q.demand
                    granted.append(q.handle)
        # Packing phase: everyone still waiting, on what the fair phase left.
        done = set(granted)
        rest = [q for q in waiting if q.handle not in done]
        granted += pack(rest, avail, cap, comp, int(self.config["k"]), str(self.config["tie_break"]))
        return [Decision(h, Verdict.GRANT) for h in granted]
