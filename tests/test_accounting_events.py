"""dp-accounting DpEvents as Rényi curves (our own accounting), checked against dp-accounting's RdpAccountant and
the shared reference vectors (shared/spec/accounting.md); charging them against a claim through a BudgetClient."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

dpa = pytest.importorskip("dp_accounting", reason="the DpEvent path needs the 'dp-accounting' extra")
from dp_accounting.rdp import RdpAccountant  # noqa: E402
from dp_accounting.rdp.rdp_privacy_accountant import compute_epsilon  # noqa: E402

from dpf_sched.accounting import rdp_to_epsilon  # noqa: E402
from dpf_sched.accounting_events import (  # noqa: E402
    DpAccountingMissingError,
    UnsupportedDpEventError,
    event_curve,
    event_rdp,
    is_dp_event,
)
from dpf_sched.budget import AlphaGrid, RenyiCurve  # noqa: E402
from dpf_sched.errors import InvalidParameterError  # noqa: E402

GRID = AlphaGrid.default()
INTEGER_GRID = AlphaGrid((2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 16.0, 32.0, 64.0, 128.0, 256.0))
FINE_GRID = AlphaGrid((1.1, 1.25, 1.5, 1.75, 2.0, 2.5, 3.0, 4.5, 7.5, 12.0, 20.0, 100.0))

# shared/spec/accounting.md: opacus compute_rdp, σ = 1.1, q = 0.01, 1,000 steps, on the default grid.
REFERENCE = {
    1.5: 0.09554528557684942,
    1.75: 0.11195416481301922,
    2.0: 0.12851008160514807,
    2.5: 0.16207740933199663,
    3.0: 0.19627788991499473,
    4.0: 0.26671831462705986,
    5.0: 0.34015796633296463,
    6.0: 0.41702945472015374,
    8.0: 0.5840703355202467,
    16.0: 1699.8267277531747,
    32.0: 8469.416433675926,
    64.0: 21768.012866287314,
}
DP_SGD = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.1)), 1000)


def oracle(event: object, grid: AlphaGrid) -> np.ndarray:
    """dp-accounting's own RDP values of ``event`` on the grid's orders."""
    acc = RdpAccountant(list(grid.orders))
    acc.compose(event)
    return np.asarray(acc.rdp)


def test_the_dp_sgd_event_reproduces_the_shared_reference_vectors() -> None:
    got = event_curve(DP_SGD, GRID)
    for alpha, value in zip(GRID.orders, got.values, strict=True):
        rtol = 1e-12 if float(alpha).is_integer() else 1e-8
        assert value == pytest.approx(REFERENCE[alpha], rel=rtol), alpha
    eps, best = rdp_to_epsilon(GRID.array, got.values, 1e-5, "balle")
    assert eps == pytest.approx(1.79817950336578, rel=1e-12) and best == 8.0
    assert rdp_to_epsilon(GRID.array, got.values, 1e-5, "classic")[0] == pytest.approx(2.2287739733731367, rel=1e-12)
    # dp-accounting agrees at the integer orders (its fractional orders are a looser upper bound).
    ours, theirs = got.values, oracle(DP_SGD, GRID)
    integer = np.array([float(a).is_integer() for a in GRID.orders])
    np.testing.assert_allclose(ours[integer], theirs[integer], rtol=1e-12)
    assert np.all(ours[~integer] <= theirs[~integer])


@pytest.mark.parametrize(
    "event",
    [
        dpa.GaussianDpEvent(1.0),
        dpa.GaussianDpEvent(0.3),
        dpa.GaussianDpEvent(40.0),
        dpa.LaplaceDpEvent(0.5),
        dpa.LaplaceDpEvent(2.0),
        dpa.LaplaceDpEvent(300.0),
        dpa.ZCDpEvent(0.05, 0.01),
        dpa.SelfComposedDpEvent(dpa.LaplaceDpEvent(4.0), 25),
        dpa.ComposedDpEvent([dpa.GaussianDpEvent(3.0), dpa.LaplaceDpEvent(10.0), dpa.NoOpDpEvent()]),
    ],
    ids=repr,
)
def test_closed_form_events_match_dp_accounting_at_every_order(event: object) -> None:
    for grid in (GRID, FINE_GRID):
        np.testing.assert_allclose(event_curve(event, grid).values, oracle(event, grid), rtol=1e-12, atol=0)


@pytest.mark.parametrize(
    ("q", "sigma", "steps"),
    [(0.01, 1.1, 1000), (0.001, 0.8, 10_000), (0.05, 2.0, 300), (0.2, 5.0, 50), (0.5, 0.7, 3), (1.0, 1.3, 7)],
)
def test_poisson_sampled_gaussian_matches_dp_accounting_at_integer_orders(q: float, sigma: float, steps: int) -> None:
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(q, dpa.GaussianDpEvent(sigma)), steps)
    ours, theirs = event_curve(event, INTEGER_GRID).values, oracle(event, INTEGER_GRID)
    np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=0)
    delta = 1e-6
    eps_ours, _ = rdp_to_epsilon(INTEGER_GRID.array, ours, delta, "balle")
    eps_theirs, _ = compute_epsilon(np.asarray(INTEGER_GRID.orders), theirs, delta)
    assert eps_ours == pytest.approx(eps_theirs, rel=1e-11)


def test_poisson_sampled_composition_of_gaussians_uses_the_effective_noise_like_dp_accounting() -> None:
    inner = dpa.ComposedDpEvent([dpa.GaussianDpEvent(2.0), dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(3.0), 4)])
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.02, inner), 500)
    np.testing.assert_allclose(event_curve(event, INTEGER_GRID).values, oracle(event, INTEGER_GRID), rtol=1e-11)
    # σ_eff = (1/4 + 4/9)^(-1/2): the same curve as one Gaussian of that σ.
    single = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.02, dpa.GaussianDpEvent((1 / 4 + 4 / 9) ** -0.5)), 500)
    np.testing.assert_allclose(event_curve(event, GRID).values, event_curve(single, GRID).values, rtol=1e-12)


def test_composition_is_additive_and_self_composition_multiplies() -> None:
    a = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.01, dpa.GaussianDpEvent(1.1)), 700)
    b = dpa.LaplaceDpEvent(3.0)
    c = dpa.GaussianDpEvent(6.0)
    ca, cb, cc = (event_curve(e, GRID) for e in (a, b, c))
    assert event_curve(dpa.ComposedDpEvent([a, b, c]), GRID) == ca + cb + cc  # exactly: the same additions
    assert event_curve(dpa.SelfComposedDpEvent(b, 12), GRID) == cb.scale(12)
    np.testing.assert_allclose(event_curve(dpa.ComposedDpEvent([b] * 12), GRID).values, cb.scale(12).values, rtol=1e-14)
    nested = dpa.ComposedDpEvent([dpa.ComposedDpEvent([a, b]), dpa.SelfComposedDpEvent(c, 3)])
    np.testing.assert_allclose(event_curve(nested, GRID).values, (ca + cb + cc.scale(3)).values, rtol=1e-14)
    empty = [dpa.ComposedDpEvent([]), dpa.NoOpDpEvent(), dpa.SelfComposedDpEvent(b, 0)]
    assert all(event_curve(e, GRID).is_zero() for e in empty)
    assert event_curve(dpa.PoissonSampledDpEvent(0.0, dpa.GaussianDpEvent(1.0)), GRID).is_zero()


@pytest.mark.parametrize(
    ("event", "kind", "path"),
    [
        (dpa.UnsupportedDpEvent(), "UnsupportedDpEvent", ""),
        (dpa.NonPrivateDpEvent(), "NonPrivateDpEvent", ""),
        (dpa.SampledWithoutReplacementDpEvent(100, 10, dpa.GaussianDpEvent(1.0)),
         "SampledWithoutReplacementDpEvent", ""),
        (dpa.SingleEpochTreeAggregationDpEvent(1.0, 10), "SingleEpochTreeAggregationDpEvent", ""),
        (dpa.ComposedDpEvent([dpa.GaussianDpEvent(1.0), dpa.UnsupportedDpEvent()]), "UnsupportedDpEvent",
         "ComposedDpEvent.events[1]"),
        (dpa.PoissonSampledDpEvent(0.1, dpa.LaplaceDpEvent(1.0)), "LaplaceDpEvent", "PoissonSampledDpEvent.event"),
        (dpa.SelfComposedDpEvent(dpa.RandomizedResponseDpEvent(0.5, 4), 3), "RandomizedResponseDpEvent",
         "SelfComposedDpEvent.event"),
    ],
    ids=lambda v: type(v).__name__ if not isinstance(v, str) else v,
)  # fmt: skip
def test_an_unsupported_event_is_a_typed_error_naming_its_type_and_place(event: object, kind: str, path: str) -> None:
    with pytest.raises(UnsupportedDpEventError, match=kind) as err:
        event_curve(event, GRID)
    assert err.value.event_type == kind and err.value.path == path
    assert isinstance(err.value, InvalidParameterError)


@pytest.mark.parametrize(
    ("event", "match"),
    [
        (dpa.GaussianDpEvent(0.0), "noise_multiplier"),
        (dpa.GaussianDpEvent(float("nan")), "noise_multiplier"),
        (dpa.LaplaceDpEvent(-1.0), "noise_multiplier"),
        (dpa.GaussianDpEvent("1.0"), "noise_multiplier"),  # type: ignore[arg-type]
        (dpa.PoissonSampledDpEvent(1.5, dpa.GaussianDpEvent(1.0)), "sampling_probability"),
        (dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), -2), "count"),
        (dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), 2.5), "count"),  # type: ignore[arg-type]
        (dpa.ZCDpEvent(-0.1), "rho"),
        (dpa.GaussianDpEvent(1e-200), "infinite"),
        (dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(1.0), 10**400), "infinite"),
        (42, "expected a dp-accounting DpEvent"),
        (dpa.ComposedDpEvent([dpa.GaussianDpEvent(1.0), "gauss"]), r"events\[1\]"),  # type: ignore[list-item]
    ],
)
def test_bad_events_are_typed_errors(event: object, match: str) -> None:
    with pytest.raises(InvalidParameterError, match=match):
        event_curve(event, GRID)


def test_a_cyclic_composition_is_refused_not_a_recursion_error() -> None:
    loop = dpa.ComposedDpEvent([dpa.GaussianDpEvent(1.0)])
    loop.events.append(loop)  # the events list is mutable
    with pytest.raises(InvalidParameterError, match="deeper than"):
        event_curve(loop, GRID)
    sampled = dpa.ComposedDpEvent([])
    sampled.events.append(sampled)
    with pytest.raises(InvalidParameterError, match="deeper than"):
        event_curve(dpa.PoissonSampledDpEvent(0.1, sampled), GRID)


def test_the_grid_must_be_an_alpha_grid() -> None:
    with pytest.raises(InvalidParameterError, match="AlphaGrid"):
        event_curve(dpa.GaussianDpEvent(1.0), (2.0, 3.0))  # type: ignore[arg-type]
    assert event_rdp(dpa.GaussianDpEvent(2.0), np.array([2.0, 4.0])).tolist() == [0.25, 0.5]


def test_a_missing_extra_is_a_typed_error_with_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [m for m in sys.modules if m == "dp_accounting" or m.startswith("dp_accounting.")]:
        monkeypatch.setitem(sys.modules, name, None)  # import of a None entry raises ImportError
    with pytest.raises(DpAccountingMissingError, match=r"pip install 'dpf-sched\[dp-accounting\]'") as err:
        event_curve(object(), GRID)
    assert isinstance(err.value, ImportError)
    assert not is_dp_event(DP_SGD)
    # A Rényi curve needs no extra.
    from dpf_sched.integrations.charge import cost_curve

    curve = RenyiCurve.constant(GRID, 0.1)
    assert cost_curve(curve, GRID) is curve


def test_importing_the_event_modules_loads_neither_dp_accounting_nor_torch() -> None:
    code = (
        "import sys\n"
        "import dpf_sched.accounting_events, dpf_sched.integrations.charge, dpf_sched.integrations.sweep\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('dp_accounting', 'torch', 'opacus', 'httpx'))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
