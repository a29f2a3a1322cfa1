"""dp-accounting ``DpEvent`` values as Rényi curves on a ledger's α grid, computed by our own accountant.

Many DP workloads outside Opacus (JAX, TF Privacy, DP aggregates) describe their privacy loss with the
`dp-accounting <https://pypi.org/project/dp-accounting/>`_ package's ``DpEvent`` tree. :func:`event_curve`
walks such a tree and returns its Rényi-DP curve on an :class:`~dpf_sched.budget.AlphaGrid`, so that a job can
charge it against a claim (:func:`dpf_sched.integrations.charge.charge_event`). The curves are those of
:mod:`dpf_sched.accounting` (our own, checked against dp-accounting's ``RdpAccountant`` in the tests); only the
event *types* come from dp-accounting, which is therefore an optional extra (``pip install
'dpf-sched[dp-accounting]'``), imported lazily on the first conversion.

Supported events (add-or-remove-one neighbouring relation, the one of DP-SGD and of the ledger's curves):

* ``NoOpDpEvent``: the zero curve;
* ``GaussianDpEvent(σ)``: ``α/(2σ²)`` (Mironov 2017, Prop. 7);
* ``LaplaceDpEvent(b)``: the Laplace curve with ``λ = 1/b`` (Mironov 2017, Prop. 6; dp-accounting's
  ``noise_multiplier`` of a Laplace event is the scale over the L1 sensitivity);
* ``ZCDpEvent(ρ, ξ)``: ``ξ + ρα`` (the definition of (ξ, ρ)-zCDP, Bun & Steinke 2016, Def. 1.1);
* ``PoissonSampledDpEvent(q, e)`` where ``e`` is a Gaussian or a composition (plain or self-) of Gaussians:
  the sampled Gaussian curve (Mironov, Talwar & Zhang 2019). A composition of Gaussian queries on the same
  sample is one Gaussian query with ``σ_eff = (Σ σᵢ⁻²)^(-1/2)`` (McMahan et al. 2018, arXiv:1812.06210, Sec. 3);
* ``ComposedDpEvent``: the sum of its events' curves; ``SelfComposedDpEvent(e, k)``: ``k`` times ``e``'s.

Anything else (``NonPrivateDpEvent``, ``UnsupportedDpEvent``, sampling without replacement, tree aggregation,
a Poisson-sampled Laplace, ...) raises :class:`UnsupportedDpEventError`, naming the event's type and where it sits
in the tree. A curve that is infinite at some order (``σ`` far too small, an astronomic count) cannot be charged
and raises :class:`~dpf_sched.errors.InvalidParameterError`. Nothing here has side effects.
"""

from __future__ import annotations

import importlib
import math
import numbers
from types import ModuleType
from typing import Any

import numpy as np

from dpf_sched.accounting import FloatArray, gaussian_rdp, laplace_rdp, subsampled_gaussian_rdp
from dpf_sched.budget import AlphaGrid, RenyiCurve
from dpf_sched.errors import InvalidParameterError
from dpf_sched.extras import MissingExtraError

__all__ = [
    "DpAccountingMissingError",
    "UnsupportedDpEventError",
    "event_curve",
    "event_rdp",
    "is_dp_event",
]

#: How to install the extra that provides ``DpEvent`` (named in :class:`DpAccountingMissingError`).
INSTALL_HINT = "pip install 'dpf-sched[dp-accounting]'"
#: Deepest event tree accepted; deeper (or cyclic: ``ComposedDpEvent.events`` is a mutable list) trees are refused.
MAX_DEPTH = 100


class DpAccountingMissingError(MissingExtraError):
    """The ``dp-accounting`` extra is not installed, so ``DpEvent`` values cannot be converted (the CLI's
    missing-extra error, exit 2, like every other extra's)."""


class UnsupportedDpEventError(InvalidParameterError):
    """An event (or a sub-event) whose privacy loss this library does not know how to express as a Rényi curve.

    ``event_type`` is the offending event's class name and ``path`` where it sits in the tree (e.g.
    ``"ComposedDpEvent.events[1]"``; empty for the root).
    """

    def __init__(self, message: str, event_type: str, path: str = "") -> None:
        super().__init__(message)
        self.event_type = event_type
        self.path = path


def _dp_event_module() -> ModuleType:
    """``dp_accounting.dp_event``, imported on first use; :class:`DpAccountingMissingError` when absent."""
    try:
        return importlib.import_module("dp_accounting.dp_event")
    except ImportError as exc:
        raise DpAccountingMissingError(
            "dp-accounting", "dp_accounting.dp_event", exc, "converting a dp-accounting DpEvent"
        ) from exc


def is_dp_event(value: object) -> bool:
    """True when ``value`` is a dp-accounting ``DpEvent`` (False, without importing anything, when the extra is
    absent: then nothing can be one)."""
    try:
        mod = _dp_event_module()
    except DpAccountingMissingError:
        return False
    return isinstance(value, mod.DpEvent)


def _where(path: str) -> str:
    return f" at {path}" if path else ""


def _param(event: Any, field: str, path: str, *, low: float, low_ok: bool, high: float | None = None) -> float:
    """A real parameter of an event, checked to lie in its range; an :class:`InvalidParameterError` naming it."""
    value = getattr(event, field, None)
    name = f"{type(event).__name__}.{field}{_where(path)}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(f"{name} must be a real number, got {value!r}")
    out = float(value)
    if not math.isfinite(out) or out < low or (out == low and not low_ok) or (high is not None and out > high):
        bound = f"{'>=' if low_ok else '>'} {low:g}" + ("" if high is None else f" and <= {high:g}")
        raise InvalidParameterError(f"{name} must be finite and {bound}, got {value!r}")
    return out


def _count(event: Any, path: str) -> float:
    """A self-composition's count as a float (``inf`` beyond float range: the curve is then reported infinite)."""
    value = getattr(event, "count", None)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or int(value) < 0:
        raise InvalidParameterError(
            f"SelfComposedDpEvent.count{_where(path)} must be a non-negative integer, got {value!r}"
        )
    try:
        return float(int(value))
    except OverflowError:
        return math.inf


def _unsupported(event: Any, path: str, why: str = "") -> UnsupportedDpEventError:
    kind = type(event).__name__
    reason = why or (
        "it has no Rényi curve in dpf_sched (supported: Gaussian, Laplace, zCDP, Poisson-sampled Gaussian, "
        "composed, self-composed, no-op)"
    )
    return UnsupportedDpEventError(f"cannot charge a {kind}{_where(path)}: {reason}", kind, path)


class _Walk:
    """One conversion: the module of event types, the orders, and a cache of leaf curves (repeated leaves,
    e.g. the same Gaussian composed a thousand times, are computed once)."""

    def __init__(self, mod: ModuleType, alphas: FloatArray) -> None:
        self.mod = mod
        self.alphas = alphas
        self.cache: dict[tuple[Any, ...], FloatArray] = {}

    def leaf(self, key: tuple[Any, ...], compute: Any) -> FloatArray:
        out = self.cache.get(key)
        if out is None:
            out = self.cache[key] = np.asarray(compute(), dtype=np.float64)
        return out

    def rdp(self, event: Any, path: str, depth: int) -> FloatArray:
        """The RDP curve of ``event`` on the orders (``path``: where it sits, for error messages)."""
        mod, a = self.mod, self.alphas
        if depth > MAX_DEPTH:
            raise InvalidParameterError(
                f"the DpEvent tree nests deeper than {MAX_DEPTH} levels{_where(path)} (a cyclic composition?)"
            )
        if not isinstance(event, mod.DpEvent):
            raise InvalidParameterError(
                f"expected a dp-accounting DpEvent{_where(path)}, got {type(event).__name__}: {event!r}"
            )
        if isinstance(event, mod.NoOpDpEvent):
            return np.zeros_like(a)
        if isinstance(event, mod.GaussianDpEvent):
            sigma = _param(event, "noise_multiplier", path, low=0.0, low_ok=False)
            return self.leaf(("gaussian", sigma), lambda: gaussian_rdp(a, sigma))
        if isinstance(event, mod.LaplaceDpEvent):
            scale = _param(event, "noise_multiplier", path, low=0.0, low_ok=False)
            return self.leaf(("laplace", scale), lambda: laplace_rdp(a, scale))
        if isinstance(event, mod.ZCDpEvent):
            rho = _param(event, "rho", path, low=0.0, low_ok=True)
            xi = _param(event, "xi", path, low=0.0, low_ok=True)
            return np.asarray(xi + rho * a, dtype=np.float64)
        if isinstance(event, mod.PoissonSampledDpEvent):
            q = _param(event, "sampling_probability", path, low=0.0, low_ok=True, high=1.0)
            inv_var = self.gaussian_precision(event.event, f"{path or type(event).__name__}.event", depth + 1)
            if q == 0.0 or inv_var == 0.0:  # nothing sampled, or no Gaussian query at all: no privacy loss
                return np.zeros_like(a)
            sigma = 1.0 / math.sqrt(inv_var)
            return self.leaf(("sampled", q, sigma), lambda: subsampled_gaussian_rdp(a, sigma, q))
        if isinstance(event, mod.SelfComposedDpEvent):
            count = _count(event, path)
            inner = self.rdp(event.event, f"{path or 'SelfComposedDpEvent'}.event", depth + 1)
            if not count:
                return np.zeros_like(a)
            with np.errstate(over="ignore", invalid="ignore"):  # an infinite product is reported by event_rdp
                return np.asarray(np.where(inner == 0.0, 0.0, inner * count), dtype=np.float64)
        if isinstance(event, mod.ComposedDpEvent):
            events = getattr(event, "events", None)
            if not isinstance(events, list | tuple):
                raise InvalidParameterError(f"ComposedDpEvent.events{_where(path)} must be a list, got {events!r}")
            total = np.zeros_like(a)
            base = path or "ComposedDpEvent"
            with np.errstate(over="ignore"):
                for i, sub in enumerate(events):
                    total = total + self.rdp(sub, f"{base}.events[{i}]", depth + 1)
            return total
        if isinstance(event, mod.NonPrivateDpEvent):
            raise _unsupported(event, path, "it releases data without privacy (an infinite privacy loss)")
        raise _unsupported(event, path)

    def gaussian_precision(self, event: Any, path: str, depth: int) -> float:
        """``Σ σᵢ⁻²`` of a Gaussian or a (self-)composition of Gaussians: the inverse variance of the single
        Gaussian query it equals (McMahan et al. 2018, arXiv:1812.06210, Sec. 3); 0 for an empty composition."""
        mod = self.mod
        if depth > MAX_DEPTH:
            raise InvalidParameterError(
                f"the DpEvent tree nests deeper than {MAX_DEPTH} levels at {path} (a cyclic composition?)"
            )
        if isinstance(event, mod.GaussianDpEvent):
            sigma = _param(event, "noise_multiplier", path, low=0.0, low_ok=False)
            return 1.0 / (sigma * sigma)
        if isinstance(event, mod.SelfComposedDpEvent):
            count = _count(event, path)
            precision = self.gaussian_precision(event.event, f"{path}.event", depth + 1)
            return count * precision if count else 0.0
        if isinstance(event, mod.ComposedDpEvent):
            events = getattr(event, "events", None)
            if not isinstance(events, list | tuple):
                raise InvalidParameterError(f"ComposedDpEvent.events at {path} must be a list, got {events!r}")
            return math.fsum(
                self.gaussian_precision(sub, f"{path}.events[{i}]", depth + 1) for i, sub in enumerate(events)
            )
        raise _unsupported(
            event,
            path,
            "a PoissonSampledDpEvent must sample a Gaussian, or a composition of Gaussians (the sampled "
            "mechanism's curve is known for those only)",
        )


def event_rdp(event: object, alphas: FloatArray) -> FloatArray:
    """The RDP values of ``event`` at the orders ``alphas`` (a 1-D float array of orders > 1).

    Raises
    ------
    DpAccountingMissingError
        The ``dp-accounting`` extra is not installed.
    UnsupportedDpEventError
        The event, or one of its sub-events, is of a type this library cannot account (message names it).
    InvalidParameterError
        A parameter of an event is out of range, the tree is too deep, or the curve is infinite at some order.
    """
    walk = _Walk(_dp_event_module(), np.asarray(alphas, dtype=np.float64))
    try:
        values = walk.rdp(event, "", 0)
    except RecursionError:  # pragma: no cover - MAX_DEPTH keeps the walk far below the interpreter's limit
        raise InvalidParameterError("the DpEvent tree is too deep to convert") from None
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        alpha = float(walk.alphas[int(bad[0])])
        raise InvalidParameterError(
            f"the privacy loss of {type(event).__name__} is infinite at α={alpha:g} (noise too small or count too "
            f"large); it cannot be charged"
        )
    return values


def event_curve(event: object, grid: AlphaGrid) -> RenyiCurve:
    """The Rényi curve of a dp-accounting ``DpEvent`` on ``grid`` (see the module docstring for the events).

    Raises the errors of :func:`event_rdp`, and :class:`InvalidParameterError` if ``grid`` is not an
    :class:`AlphaGrid`.
    """
    if not isinstance(grid, AlphaGrid):
        raise InvalidParameterError(f"grid must be an AlphaGrid, got {type(grid).__name__}")
    return RenyiCurve(grid, event_rdp(event, grid.array))
