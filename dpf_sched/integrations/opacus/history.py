"""Curves of an Opacus accountant history: what a job's recorded steps cost on the ledger's α grid.

An Opacus accountant's ``history`` is a list of ``(noise_multiplier, sample_rate, steps)`` entries, the same for
the PRV, RDP and GDP accountants. This module holds that record as :class:`Segment` values, the difference of two
snapshots (:func:`history_since`, the job's own steps), and its Rényi curve (:func:`history_rdp`,
:func:`history_curve`), computed by :mod:`dpf_sched.accounting`.

Plan, step hook and commit all compute their curves through the per-step curve cache here (``_StepCurves``), in
segment order, so that they agree to the last bit whenever they see the same segments. Its code uses neither
torch nor opacus.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dpf_sched.accounting import subsampled_gaussian_rdp
from dpf_sched.budget import AlphaGrid, RenyiCurve
from dpf_sched.errors import InvalidBudgetError, InvalidParameterError
from dpf_sched.integrations.opacus.errors import AccountingMismatchError


@dataclass(frozen=True, slots=True)
class Segment:
    """``steps`` DP-SGD steps at one noise multiplier and one sample rate: one entry of an Opacus history."""

    noise_multiplier: float
    sample_rate: float
    steps: int

    @classmethod
    def of(cls, entry: Any) -> Segment:
        """A segment from an Opacus history entry ``(noise_multiplier, sample_rate, steps)``."""
        if isinstance(entry, Segment):
            return entry
        try:
            sigma, q, steps = entry
        except (TypeError, ValueError):
            raise InvalidParameterError(
                f"a history entry must be (noise_multiplier, sample_rate, steps), got {entry!r}"
            ) from None
        if isinstance(steps, bool) or int(steps) != steps or steps < 0:
            raise InvalidParameterError(f"history entry {entry!r}: steps must be a non-negative integer")
        return cls(float(sigma), float(q), int(steps))

    def same_mechanism(self, other: Segment) -> bool:
        """True when both segments run the same mechanism (so that their steps merge, as Opacus merges them)."""
        return self.noise_multiplier == other.noise_multiplier and self.sample_rate == other.sample_rate


def _merge(segments: Sequence[Segment], extra: Segment) -> tuple[Segment, ...]:
    """``segments`` followed by ``extra``, merged into the last one when the mechanism is the same."""
    if segments and segments[-1].same_mechanism(extra):
        last = segments[-1]
        return (*segments[:-1], Segment(last.noise_multiplier, last.sample_rate, last.steps + extra.steps))
    return (*segments, extra)


def history_since(before: Sequence[Any], after: Sequence[Any]) -> tuple[Segment, ...]:
    """The segments an accountant recorded between two snapshots of its ``history``.

    Opacus accountants only ever extend their history: the RDP and PRV accountants add one step to the last
    segment when (σ, q) is unchanged and append a segment otherwise; the GDP accountant keeps one segment. Any
    other change (a reset, a loaded state) cannot be attributed to the job and raises
    :class:`AccountingMismatchError`.
    """
    b = [Segment.of(e) for e in before]
    a = [Segment.of(e) for e in after]
    if not b:
        return tuple(s for s in a if s.steps)
    k = len(b) - 1
    if len(a) < len(b) or a[:k] != b[:k] or not a[k].same_mechanism(b[k]) or a[k].steps < b[k].steps:
        raise AccountingMismatchError("the accountant's history was rewritten during the job; its spend is unknown")
    out = []
    if a[k].steps > b[k].steps:
        out.append(Segment(b[k].noise_multiplier, b[k].sample_rate, a[k].steps - b[k].steps))
    out.extend(s for s in a[len(b) :] if s.steps)
    return tuple(out)


class _StepCurves:
    """Per-step curves on one grid, cached by (σ, q): a training step costs a dictionary look-up, not a series.

    Every curve of this module is computed as ``Σ_segments per_step(σ, q) × steps``, summed in segment order:
    ``subsampled_gaussian_rdp(…, steps)`` is the same product, so plan, hook and commit agree to the last bit
    whenever they see the same segments.
    """

    def __init__(self, grid: AlphaGrid) -> None:
        self.grid = grid
        self._cache: dict[tuple[float, float], np.ndarray[Any, np.dtype[np.float64]]] = {}

    def per_step(self, sigma: float, q: float) -> np.ndarray[Any, np.dtype[np.float64]]:
        key = (sigma, q)
        c = self._cache.get(key)
        if c is None:
            # Mironov, Talwar & Zhang 2019 (arXiv:1908.10530), Sec. 3.3, one step; see dpf_sched.accounting.
            c = subsampled_gaussian_rdp(self.grid.array, sigma, q, 1)
            c.flags.writeable = False
            self._cache[key] = c
        return c

    def total(self, segments: Sequence[Segment]) -> np.ndarray[Any, np.dtype[np.float64]]:
        out = np.zeros(len(self.grid), dtype=np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            for s in segments:
                if s.steps:
                    out = out + self.per_step(s.noise_multiplier, s.sample_rate) * s.steps
        return out


def history_rdp(grid: AlphaGrid, history: Sequence[Any]) -> np.ndarray[Any, np.dtype[np.float64]]:
    """RDP of an Opacus accountant history on ``grid``: the sum of its segments' subsampled-Gaussian curves.

    RDP composes additively (Mironov 2017, Prop. 1), so a run with several (σ, q) segments (a noise scheduler,
    a change of batch size) costs the sum of the segments' curves. May hold ``inf`` (σ = 0).
    """
    return _StepCurves(grid).total([Segment.of(e) for e in history])


def _finite_curve(grid: AlphaGrid, values: np.ndarray[Any, np.dtype[np.float64]], what: str) -> RenyiCurve:
    bad = ~np.isfinite(values)
    if bad.any():
        raise InvalidBudgetError(
            f"{what} is infinite at α = {[grid.orders[i] for i in np.flatnonzero(bad)]}; the mechanism gives no "
            "Rényi guarantee there (noise multiplier 0?). Use an α grid without those orders."
        )
    return RenyiCurve(grid, values)


def history_curve(grid: AlphaGrid, history: Sequence[Any]) -> RenyiCurve:
    """:func:`history_rdp` as a budget value (every order must be finite)."""
    return _finite_curve(grid, history_rdp(grid, history), "the history's curve")
