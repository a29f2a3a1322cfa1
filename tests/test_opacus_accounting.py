"""Planning and history curves of the Opacus integration, cross-checked against Opacus's own analysis."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("opacus", reason="the Opacus integration needs the 'opacus' extra")

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp
from opacus_helpers import GRID, QUIET, block_rows, rel_gap
from torch.utils.data import ConcatDataset, DataLoader

from dpf_sched.accounting import rdp_to_epsilon, subsampled_gaussian_rdp
from dpf_sched.budget import AlphaGrid
from dpf_sched.errors import DpfSchedError, InvalidBudgetError, InvalidParameterError
from dpf_sched.integrations.opacus import (
    AccountingMismatchError,
    Segment,
    calibrate_for_loader,
    history_curve,
    history_rdp,
    history_since,
    loader_accounting,
    plan_dp_sgd,
    plan_for_loader,
)

INTEGER = [o for o in GRID.orders if float(o).is_integer()]
FRACTIONAL = [o for o in GRID.orders if not float(o).is_integer()]

pytestmark = QUIET


@pytest.mark.parametrize(("sigma", "q", "steps"), [(1.1, 0.01, 1000), (0.7, 0.05, 300), (2.5, 1 / 92, 184)])
def test_history_curve_matches_opacus_compute_rdp(sigma: float, q: float, steps: int) -> None:
    ours = history_curve(GRID, [(sigma, q, steps)]).values
    theirs = np.asarray(compute_rdp(q=q, noise_multiplier=sigma, steps=steps, orders=list(GRID.orders)))
    integer = np.isin(GRID.array, INTEGER)
    assert rel_gap(ours[integer], theirs[integer]) <= 1e-10
    assert rel_gap(ours[~integer], theirs[~integer]) <= 1e-8


def test_reference_values_of_the_spec() -> None:
    # ../shared/spec/accounting.md: σ = 1.1, q = 0.01, 1,000 steps.
    ref = {1.5: 0.09554528557684942, 2: 0.12851008160514807, 5: 0.34015796633296463, 64: 21768.012866287314}
    c = history_curve(GRID, [(1.1, 0.01, 1000)])
    for a, v in ref.items():
        assert c.values[GRID.orders.index(float(a))] == pytest.approx(v, rel=1e-8)


def test_a_history_of_several_segments_is_the_sum_of_their_curves() -> None:
    acc = RDPAccountant()
    for sigma, n in [(1.0, 5), (0.8, 3), (1.0, 2)]:
        for _ in range(n):
            acc.step(noise_multiplier=sigma, sample_rate=0.02)
    assert len(acc.history) == 3
    orders = list(GRID.orders)
    expected = sum(
        (np.asarray(compute_rdp(q=q, noise_multiplier=s, steps=k, orders=orders)) for s, q, k in acc.history),
        start=np.zeros(len(GRID)),
    )
    assert rel_gap(history_rdp(GRID, acc.history), expected) <= 1e-8
    # The accountant's own ε on our orders is ours: same curve, same (Balle et al.) conversion.
    ours, _ = rdp_to_epsilon(GRID.array, history_rdp(GRID, acc.history), 1e-5)
    assert ours == pytest.approx(acc.get_epsilon(1e-5, alphas=list(GRID.orders)), rel=1e-8)


def test_history_since_attributes_only_the_new_steps() -> None:
    before = [(1.0, 0.1, 5)]
    assert history_since(before, [(1.0, 0.1, 9)]) == (Segment(1.0, 0.1, 4),)
    assert history_since(before, [(1.0, 0.1, 5), (0.5, 0.1, 2)]) == (Segment(0.5, 0.1, 2),)
    assert history_since([], [(1.0, 0.1, 3)]) == (Segment(1.0, 0.1, 3),)
    assert history_since(before, before) == ()
    with pytest.raises(AccountingMismatchError):
        history_since(before, [])  # a reset
    with pytest.raises(AccountingMismatchError):
        history_since(before, [(1.0, 0.2, 6)])
    with pytest.raises(InvalidParameterError):
        Segment.of((1.0, 0.1))


def test_plan_with_a_noise_schedule_merges_repeated_noise() -> None:
    plan = plan_dp_sgd(GRID, sample_rate=0.1, steps_per_epoch=10, noise_multiplier=[1.0, 1.0, 2.0])
    assert plan.epochs == 3 and plan.steps == 30
    assert plan.segments == (Segment(1.0, 0.1, 20), Segment(2.0, 0.1, 10))
    expected = subsampled_gaussian_rdp(GRID.array, 1.0, 0.1, 20) + subsampled_gaussian_rdp(GRID.array, 2.0, 0.1, 10)
    assert rel_gap(plan.demand, expected) <= 1e-15
    with pytest.raises(InvalidParameterError):
        plan_dp_sgd(GRID, sample_rate=0.1, steps_per_epoch=10, noise_multiplier=[1.0], epochs=2)
    with pytest.raises(InvalidParameterError):
        plan_dp_sgd(GRID, sample_rate=0.1, steps_per_epoch=10, noise_multiplier=1.0)  # epochs missing
    with pytest.raises(InvalidParameterError):
        plan_dp_sgd(GRID, sample_rate=1.5, steps_per_epoch=10, noise_multiplier=1.0, epochs=1)
    with pytest.raises(InvalidParameterError):
        plan_dp_sgd(GRID, sample_rate=0.1, steps_per_epoch=10, noise_multiplier=0.0, epochs=1)


def test_an_infinite_curve_is_refused_with_a_clear_message() -> None:
    with pytest.raises(InvalidBudgetError, match="infinite"):
        history_curve(GRID, [(0.0, 0.1, 3)])
    assert issubclass(InvalidBudgetError, DpfSchedError)


@pytest.mark.parametrize(("batches", "expected"), [(93, 92), (100, 100), (99, 98)])
def test_loader_accounting_uses_the_private_loaders_own_numbers(batches: int, expected: int) -> None:
    loader = DataLoader(block_rows(batches * 2, seed=0), batch_size=2)
    assert len(loader) == batches
    q, per_epoch = loader_accounting(loader)
    assert per_epoch == expected and q == 1 / expected
    # Without Poisson sampling the loader is used as it is.
    assert loader_accounting(loader, poisson_sampling=False) == (1 / batches, batches)
    assert loader_accounting(loader, poisson_sampling=False, accumulation_steps=3) == ((1 / batches) * 3, batches // 3)
    plan = plan_for_loader(GRID, loader, epochs=2, noise_multiplier=1.0)
    assert plan.steps == 2 * expected and plan.sample_rate == 1 / expected


def test_calibration_meets_the_target_on_the_ledger_grid() -> None:
    loader = DataLoader(ConcatDataset([block_rows(50, 0), block_rows(50, 1)]), batch_size=10)
    sigma = calibrate_for_loader(GRID, loader, epochs=3, target_epsilon=1.5, target_delta=1e-6, tol=0.001)
    assert plan_for_loader(GRID, loader, epochs=3, noise_multiplier=sigma).epsilon(1e-6) <= 1.5
    assert plan_for_loader(GRID, loader, epochs=3, noise_multiplier=sigma - 0.001).epsilon(1e-6) > 1.5
    # Another grid gives another σ: the calibration follows the ledger's orders.
    coarse = AlphaGrid((2.0, 4.0, 8.0, 16.0))
    assert calibrate_for_loader(coarse, loader, epochs=3, target_epsilon=1.5, target_delta=1e-6) > sigma
