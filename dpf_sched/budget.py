"""Budget values: basic (ε, δ) pairs and Rényi curves on an α grid, with their arithmetic and conversions.

These are immutable values (frozen dataclasses). Nothing here knows about blocks, claims or ledgers: the
module imports nothing else of ours except the error types, so every other layer can build on it.

Conversions between (ε, δ)-DP and Rényi DP (RDP):

* ``classic`` (Mironov 2017, Prop. 3): an (α, r)-RDP mechanism is (r + ln(1/δ)/(α−1), δ)-DP; inverted for a
  block's capacity, ``G(α) = max(0, ε_G − ln(1/δ_G)/(α − 1))``. This is PrivateKube's default and the one the
  OSDI'21 numbers use.
* ``balle`` (Balle et al. 2020, "Hypothesis testing interpretations and Rényi DP", Thm 21): the tighter
  ``ε = r + ln((α−1)/α) − (ln δ + ln α)/(α−1)``, inverted as
  ``G(α) = max(0, ε_G − ln((α−1)/α) + (ln δ_G + ln α)/(α − 1))``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np
from numpy.typing import NDArray

from dpf_sched.errors import (
    AlphaGridMismatchError,
    CompositionMismatchError,
    InvalidBudgetError,
    InvalidParameterError,
)

FloatArray = NDArray[np.float64]

#: Default Rényi orders (spec/dpf.md): dense where DP-SGD curves usually attain their best ε.
DEFAULT_ALPHAS: tuple[float, ...] = (1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 16.0, 32.0, 64.0)


class Conversion(StrEnum):
    """How (ε, δ)-DP and Rényi DP are converted into each other."""

    CLASSIC = "classic"
    BALLE = "balle"

    @classmethod
    def parse(cls, value: str | Conversion) -> Conversion:
        """Return the conversion named ``value``; raise :class:`InvalidParameterError` otherwise."""
        if isinstance(value, Conversion):
            return value
        try:
            return cls(str(value).lower())
        except ValueError:
            names = ", ".join(c.value for c in cls)
            raise InvalidParameterError(f"unknown conversion {value!r}; expected one of: {names}") from None


def _check_number(name: str, value: Any, *, positive: bool = False) -> float:
    """Validate one scalar budget number: a real, finite, non-negative (or positive) float."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise InvalidBudgetError(f"{name} must be a number, got {value!r}")
    x = float(value)
    if math.isnan(x):
        raise InvalidBudgetError(f"{name} is NaN")
    if math.isinf(x):
        raise InvalidBudgetError(f"{name} is infinite ({x})")
    if x < 0:
        raise InvalidBudgetError(f"{name} is negative ({x})")
    if positive and x == 0:
        raise InvalidBudgetError(f"{name} must be positive, got 0")
    return x


def check_alphas(orders: Any) -> tuple[float, ...]:
    """Validate Rényi orders: a non-empty, strictly increasing sequence of finite numbers > 1."""
    if isinstance(orders, (str, bytes)) or not isinstance(orders, (Sequence, np.ndarray)):
        raise InvalidParameterError(f"α grid must be a sequence of numbers, got {orders!r}")
    values_list = []
    for a in orders:
        if isinstance(a, bool) or not isinstance(a, (int, float, np.integer, np.floating)):
            raise InvalidParameterError(f"α grid holds a non-number {a!r}")
        values_list.append(float(a))
    values = tuple(values_list)
    if not values:
        raise InvalidParameterError("α grid is empty")
    for a in values:
        if math.isnan(a) or math.isinf(a):
            raise InvalidParameterError(f"α grid holds a non-finite order {a}")
        if a <= 1.0:
            raise InvalidParameterError(f"α grid holds order {a}; Rényi orders must be > 1")
    for a, b in itertools.pairwise(values):
        if b <= a:
            raise InvalidParameterError(f"α grid must be strictly increasing, got {a} then {b}")
    return values


@dataclass(frozen=True)
class AlphaGrid:
    """A strictly increasing tuple of Rényi orders α > 1 shared by every curve of one ledger.

    Grids are compared by value; a curve on one grid never meets a curve on another silently.
    """

    orders: tuple[float, ...]
    _array: FloatArray = field(init=False, repr=False, compare=False, hash=False)

    def __post_init__(self) -> None:
        orders = check_alphas(self.orders)
        object.__setattr__(self, "orders", orders)
        arr = np.asarray(orders, dtype=np.float64)
        arr.flags.writeable = False
        object.__setattr__(self, "_array", arr)

    @classmethod
    def default(cls) -> AlphaGrid:
        """The default grid {1.5, 1.75, 2, 2.5, 3, 4, 5, 6, 8, 16, 32, 64}."""
        return cls(DEFAULT_ALPHAS)

    @property
    def array(self) -> FloatArray:
        """The orders as a read-only float64 array."""
        return self._array

    def __len__(self) -> int:
        return len(self.orders)


@dataclass(frozen=True)
class EpsDelta:
    """A basic-composition budget: ε ≥ 0 and 0 ≤ δ < 1; both add up under basic composition."""

    epsilon: float
    delta: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "epsilon", _check_number("epsilon", self.epsilon))
        d = _check_number("delta", self.delta)
        if d >= 1.0:
            raise InvalidBudgetError(f"delta must be < 1, got {d}")
        object.__setattr__(self, "delta", d)

    def __add__(self, other: EpsDelta) -> EpsDelta:
        if not isinstance(other, EpsDelta):
            return NotImplemented
        return EpsDelta(self.epsilon + other.epsilon, self.delta + other.delta)

    def __sub__(self, other: EpsDelta) -> EpsDelta:
        """Difference; raises :class:`InvalidBudgetError` if it would go negative (budgets never do)."""
        if not isinstance(other, EpsDelta):
            return NotImplemented
        return EpsDelta(self.epsilon - other.epsilon, self.delta - other.delta)

    def scale(self, k: float) -> EpsDelta:
        """``k`` times this budget (``k`` ≥ 0)."""
        k = _check_number("scale factor", k)
        return EpsDelta(self.epsilon * k, self.delta * k)

    def is_zero(self) -> bool:
        """True when both ε and δ are 0."""
        return self.epsilon == 0.0 and self.delta == 0.0

    def to_renyi(self, grid: AlphaGrid, conversion: str | Conversion = Conversion.CLASSIC) -> RenyiCurve:
        """The Rényi capacity curve that an (ε_G, δ_G) guarantee allows (see module docstring)."""
        return RenyiCurve(grid, epsdelta_to_rdp_capacity(self.epsilon, self.delta, grid.array, conversion))


@dataclass(frozen=True, eq=False)
class RenyiCurve:
    """A Rényi-DP budget: one non-negative, finite value per order of its :class:`AlphaGrid`.

    Curves add up order by order under composition. ``values`` is a read-only float64 array.
    """

    grid: AlphaGrid
    values: FloatArray

    def __post_init__(self) -> None:
        if not isinstance(self.grid, AlphaGrid):
            raise InvalidParameterError(f"grid must be an AlphaGrid, got {type(self.grid).__name__}")
        try:
            arr = np.array(self.values, dtype=np.float64)
        except (TypeError, ValueError):
            raise InvalidBudgetError(f"Rényi curve values must be numbers, got {self.values!r}") from None
        if arr.ndim != 1:
            raise InvalidBudgetError(f"Rényi curve values must be a flat sequence, got shape {arr.shape}")
        if arr.shape[0] != len(self.grid):
            raise AlphaGridMismatchError(
                f"Rényi curve has {arr.shape[0]} values but the α grid has {len(self.grid)} orders"
            )
        bad = ~np.isfinite(arr) | (arr < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise InvalidBudgetError(
                f"Rényi curve value at α={self.grid.orders[i]} is {arr[i]}; values must be finite and ≥ 0"
            )
        arr.flags.writeable = False
        object.__setattr__(self, "values", arr)

    def _check_grid(self, other: RenyiCurve) -> None:
        if not isinstance(other, RenyiCurve):
            raise CompositionMismatchError(f"cannot combine a Rényi curve with {type(other).__name__}")
        if other.grid != self.grid:
            raise AlphaGridMismatchError(f"α grids differ: {self.grid.orders} vs {other.grid.orders}")

    def __add__(self, other: RenyiCurve) -> RenyiCurve:
        self._check_grid(other)
        return RenyiCurve(self.grid, self.values + other.values)

    def __sub__(self, other: RenyiCurve) -> RenyiCurve:
        self._check_grid(other)
        return RenyiCurve(self.grid, self.values - other.values)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, RenyiCurve):
            return NotImplemented
        return self.grid == other.grid and bool(np.array_equal(self.values, other.values))

    def __hash__(self) -> int:
        return hash((self.grid, self.values.tobytes()))

    def scale(self, k: float) -> RenyiCurve:
        """``k`` times this curve (composition of ``k`` copies when ``k`` is an integer)."""
        k = _check_number("scale factor", k)
        return RenyiCurve(self.grid, self.values * k)

    def is_zero(self) -> bool:
        """True when every order is 0."""
        return not bool(np.any(self.values))

    def to_eps_delta(self, delta: float, conversion: str | Conversion = Conversion.BALLE) -> EpsDelta:
        """The (ε, δ) guarantee this RDP curve implies at ``delta`` (best order of the grid)."""
        eps, _ = rdp_to_epsilon(self.grid.array, self.values, delta, conversion)
        return EpsDelta(eps, delta)

    @classmethod
    def constant(cls, grid: AlphaGrid, epsilon: float) -> RenyiCurve:
        """The curve of a pure ε-DP mechanism bounded by ε at every order (D_α ≤ D_∞)."""
        eps = _check_number("epsilon", epsilon)
        return cls(grid, np.full(len(grid), eps))


Budget = EpsDelta | RenyiCurve


def epsdelta_to_rdp_capacity(
    epsilon: float, delta: float, alphas: FloatArray | Sequence[float], conversion: str | Conversion
) -> FloatArray:
    """Rényi capacity ``G(α)`` that keeps a block (ε_G, δ_G)-DP, per order; orders that cannot help get 0.

    Classic: ``max(0, ε − ln(1/δ)/(α−1))`` (Mironov 2017, Prop. 3 inverted).
    Balle: ``max(0, ε − ln((α−1)/α) + (ln δ + ln α)/(α−1))`` (Balle et al. 2020, Thm 21 inverted).
    """
    eps = _check_number("epsilon", epsilon, positive=True)
    d = _check_number("delta", delta, positive=True)
    if d >= 1.0:
        raise InvalidBudgetError(f"delta must be < 1, got {d}")
    a = np.asarray(check_alphas(alphas))
    return np.maximum(eps - conversion_penalty(a, d, Conversion.parse(conversion)), 0.0)


def conversion_penalty(alphas: FloatArray, delta: float, conversion: Conversion) -> FloatArray:
    """The per-order gap between RDP and (ε, δ)-DP: ``ε(α) = r(α) + penalty(α)``, ``G(α) = ε_G − penalty(α)``.

    Classic (Mironov 2017, Prop. 3): ``ln(1/δ)/(α−1)``. Balle et al. 2020, Thm 21:
    ``ln((α−1)/α) − (ln δ + ln α)/(α−1)``. Inputs are assumed validated.
    """
    a = alphas
    if conversion is Conversion.CLASSIC:
        return np.asarray(math.log(1.0 / delta) / (a - 1.0), dtype=np.float64)
    return np.asarray(np.log((a - 1.0) / a) - (math.log(delta) + np.log(a)) / (a - 1.0), dtype=np.float64)


def rdp_to_epsilon(
    alphas: FloatArray | Sequence[float],
    rdp: FloatArray | Sequence[float],
    delta: float,
    conversion: str | Conversion = Conversion.BALLE,
) -> tuple[float, float]:
    """Best (ε, α) over the grid for an RDP curve at ``delta``; ε is clamped at 0.

    Classic: ``min_α r(α) + ln(1/δ)/(α−1)``. Balle et al. 2020 Thm 21:
    ``min_α r(α) + ln((α−1)/α) − (ln δ + ln α)/(α−1)``.
    """
    d = _check_number("delta", delta, positive=True)
    if d >= 1.0:
        raise InvalidBudgetError(f"delta must be < 1, got {d}")
    a = np.asarray(check_alphas(alphas))
    try:
        r = np.asarray(rdp, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidBudgetError(f"RDP values must be numbers, got {rdp!r}") from None
    if a.shape != r.shape:
        raise AlphaGridMismatchError(f"{r.shape[0]} RDP values for {a.shape[0]} orders")
    bad = np.isnan(r) | (r < 0)
    if bad.any():
        i = int(np.argmax(bad))
        raise InvalidBudgetError(f"RDP value at α={a[i]} is {r[i]}; values must be ≥ 0 (inf is allowed)")
    eps = r + conversion_penalty(a, d, Conversion.parse(conversion))
    i = int(np.argmin(eps))
    return max(0.0, float(eps[i])), float(a[i])


def budget_json(b: Budget) -> dict[str, Any]:
    """A budget as the JSON object of the trace format and the service API: ``{"epsilon": ε}`` (plus
    ``"delta"`` when δ > 0) or ``{"rdp": [ε(α₁), …]}`` on the budget's grid."""
    if isinstance(b, RenyiCurve):
        return {"rdp": [float(x) for x in np.asarray(b.values).tolist()]}
    out: dict[str, Any] = {"epsilon": float(b.epsilon)}
    if b.delta:
        out["delta"] = float(b.delta)
    return out


def curve(grid: AlphaGrid, values: Iterable[float]) -> RenyiCurve:
    """Shorthand for ``RenyiCurve(grid, values)``."""
    return RenyiCurve(grid, list(values))  # type: ignore[arg-type]  # validated by RenyiCurve
