"""How budgets compose, as dense row arithmetic: the one place that knows "∀ dimension" from "∃ α".

The ledger and the policies keep budgets as float64 rows (one row per block, one column per dimension) and ask
a :class:`Composition` the few questions whose answer differs between basic and Rényi accounting:

* **basic** — columns are (ε, δ); a demand fits when it fits in *every* column; a block is within its
  guarantee when allocated + consumed ≤ capacity in every column. A column whose capacity is 0 (a pure ε-DP
  block has δ_G = 0) can only hold zero demands.
* **rényi** — columns are the α orders of the ledger's grid; a demand fits when it fits at *some* usable order
  (capacity > 0) of each block; a block is within its guarantee when some usable order still satisfies
  allocated + consumed ≤ capacity. Allocation subtracts the demand at every order, so unlocked budget may go
  negative at the orders that did not fit; that is correct.

Tolerance (DESIGN.md): a demand may exceed what is available by at most ``REL_TOL × capacity`` (per column), to
absorb floating-point error of repeated fractional unlocks (N unlocks of G/N must admit a demand of exactly
G/N). Anything beyond that is refused. The overspend this can ever cause is bounded by ``REL_TOL × capacity``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np
from numpy.typing import NDArray

from dpf_sched.budget import AlphaGrid, Budget, Conversion, EpsDelta, RenyiCurve
from dpf_sched.errors import AlphaGridMismatchError, CompositionMismatchError, InvalidBudgetError

FloatArray = NDArray[np.float64]
BoolArray = NDArray[np.bool_]

#: Relative tolerance of every budget comparison (see module docstring).
REL_TOL = 1e-9

#: The largest capacity a block may have in any column (docs/ledger.md, "Limits"). Far beyond any meaningful
#: privacy budget, and small enough that every sum the ledger, the policies and the audit form over blocks, claims
#: and buckets stays finite: near the float64 maximum (1.8e308) two blocks of 1e308 already sum to infinity, and
#: the audit then reported a sound ledger as broken.
MAX_CAPACITY = 1e100


class Composition(ABC):
    """The composition rule of one ledger: its columns and its fit / guarantee / share arithmetic."""

    name: str

    @property
    @abstractmethod
    def width(self) -> int:
        """Number of columns of every budget row."""

    @abstractmethod
    def row(self, budget: Budget) -> FloatArray:
        """The row of a budget value; raises if the value belongs to the other composition or grid."""

    @abstractmethod
    def value(self, row: FloatArray) -> Budget:
        """The budget value of a row (inverse of :meth:`row`; rows with tiny negatives are clipped at 0)."""

    @abstractmethod
    def fits(self, demand: FloatArray, available: FloatArray, capacity: FloatArray) -> BoolArray:
        """Per row: can ``demand`` be taken out of ``available``? Shapes (M, width) → (M,)."""

    @abstractmethod
    def shortfall(self, demand: FloatArray, available: FloatArray, capacity: FloatArray) -> FloatArray:
        """Per row: how far ``demand`` is from fitting, in capacity units; ≤ 0 exactly when it fits.

        Basic: the worst column's ``(d − available − tol) / capacity``. Rényi: the best usable order's.
        A policy uses it to wait on the block that is furthest from fitting.
        """

    def possible(self, demand: FloatArray, consumed: FloatArray, capacity: FloatArray) -> BoolArray:
        """Per row: could ``demand`` ever fit? Consumption never decreases, so nothing beyond
        ``capacity − consumed`` can ever become available (the "never" of a claim, as opposed to "wait")."""
        return self.fits(demand, capacity - consumed, capacity)

    @abstractmethod
    def within(self, spent: FloatArray, capacity: FloatArray) -> BoolArray:
        """Per row: is ``spent`` (allocated + consumed) within the block's guarantee? (M, width) → (M,)."""

    def shares(self, demand: FloatArray, capacity: FloatArray) -> FloatArray:
        """Per row: the largest demand/capacity ratio over usable columns (capacity > 0).

        A positive demand in a column of zero capacity has an infinite share (it can never be served).
        """
        cap = np.asarray(capacity, dtype=np.float64)
        d = np.asarray(demand, dtype=np.float64)
        ratio = np.divide(d, cap, out=np.where(d > 0, np.inf, 0.0), where=cap > 0)
        return np.asarray(ratio.max(axis=-1), dtype=np.float64)

    @staticmethod
    def tolerance(capacity: FloatArray) -> FloatArray:
        """Absolute slack per column: ``REL_TOL × capacity``."""
        return np.asarray(capacity, dtype=np.float64) * REL_TOL


class BasicComposition(Composition):
    """Basic (ε, δ) composition: columns (ε, δ); every column must fit."""

    name = "basic"

    @property
    def width(self) -> int:
        return 2

    def row(self, budget: Budget) -> FloatArray:
        if not isinstance(budget, EpsDelta):
            raise CompositionMismatchError(
                f"a basic-composition ledger takes (ε, δ) budgets, got {type(budget).__name__}"
            )
        return np.array([budget.epsilon, budget.delta], dtype=np.float64)

    def value(self, row: FloatArray) -> EpsDelta:
        r = np.maximum(np.asarray(row, dtype=np.float64), 0.0)
        return EpsDelta(float(r[0]), float(min(r[1], np.nextafter(1.0, 0.0))))

    def fits(self, demand: FloatArray, available: FloatArray, capacity: FloatArray) -> BoolArray:
        ok = demand <= available + capacity * REL_TOL
        return np.logical_and.reduce(ok, axis=-1)  # type: ignore[no-any-return]

    def shortfall(self, demand: FloatArray, available: FloatArray, capacity: FloatArray) -> FloatArray:
        gap = demand - available - capacity * REL_TOL
        # A zero-capacity column: any positive gap there can never close (inf); otherwise it is 0.
        ratio = np.divide(gap, capacity, out=np.where(gap > 0, np.inf, 0.0), where=capacity > 0)
        return np.asarray(ratio.max(axis=-1))

    def within(self, spent: FloatArray, capacity: FloatArray) -> BoolArray:
        return np.asarray((spent <= capacity + self.tolerance(capacity)).all(axis=-1))


class RenyiComposition(Composition):
    """Rényi composition on a fixed α grid: some usable order of each block must fit."""

    name = "renyi"

    def __init__(self, grid: AlphaGrid, conversion: str | Conversion = Conversion.CLASSIC) -> None:
        self.grid = grid
        self.conversion = Conversion.parse(conversion)

    @property
    def width(self) -> int:
        return len(self.grid)

    def row(self, budget: Budget) -> FloatArray:
        if not isinstance(budget, RenyiCurve):
            raise CompositionMismatchError(
                f"a Rényi ledger takes Rényi curves, got {type(budget).__name__}; convert it first"
            )
        if budget.grid != self.grid:
            raise AlphaGridMismatchError(
                f"curve is on α grid {budget.grid.orders}, the ledger's grid is {self.grid.orders}"
            )
        return np.array(budget.values, dtype=np.float64)

    def value(self, row: FloatArray) -> RenyiCurve:
        return RenyiCurve(self.grid, np.maximum(np.asarray(row, dtype=np.float64), 0.0))

    def fits(self, demand: FloatArray, available: FloatArray, capacity: FloatArray) -> BoolArray:
        ok = (demand <= available + capacity * REL_TOL) & (capacity > 0)
        return np.logical_or.reduce(ok, axis=-1)  # type: ignore[no-any-return]

    def shortfall(self, demand: FloatArray, available: FloatArray, capacity: FloatArray) -> FloatArray:
        gap = demand - available - capacity * REL_TOL
        ratio = np.divide(gap, capacity, out=np.full(gap.shape, np.inf), where=capacity > 0)
        return np.asarray(ratio.min(axis=-1))

    def within(self, spent: FloatArray, capacity: FloatArray) -> BoolArray:
        ok = (spent <= capacity + self.tolerance(capacity)) & (capacity > 0)
        return np.asarray(ok.any(axis=-1))

    def shares(self, demand: FloatArray, capacity: FloatArray) -> FloatArray:
        # spec/dpf.md: DS = max over the usable orders (G(α) > 0) of d(α)/G(α); a block with no usable
        # order gives an infinite share.
        cap = np.asarray(capacity, dtype=np.float64)
        d = np.asarray(demand, dtype=np.float64)
        ratio = np.divide(d, cap, out=np.full(np.broadcast_shapes(d.shape, cap.shape), -np.inf), where=cap > 0)
        out = ratio.max(axis=-1)
        return np.asarray(np.where(np.isneginf(out), np.inf, out), dtype=np.float64)


def check_capacity(comp: Composition, row: FloatArray, what: str) -> None:
    """Refuse a block capacity that could never serve anything (all zero) or exceeds :data:`MAX_CAPACITY`."""
    if not np.any(row > 0):
        raise InvalidBudgetError(f"{what} has zero capacity at every dimension")
    if np.any(row > MAX_CAPACITY):
        raise InvalidBudgetError(
            f"{what} has a capacity of {float(np.max(row)):.6g}, above the maximum {MAX_CAPACITY:g} per dimension"
        )
