"""Tests of dpf_sched.accounting: RDP curves, conversions and calibration.

The sampled-Gaussian curve is checked three ways: against a published reference vector (opacus'
``compute_rdp``, itself checked against 50-digit quadrature), against an independent numerical integration
of the Rényi divergence written here with scipy.integrate.quad, and against structural properties
(composition, monotonicity, the q = 1 limit), including a hypothesis property test.
"""

from __future__ import annotations

import ast
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from scipy import integrate

from dpf_sched import accounting
from dpf_sched.accounting import (
    calibrate_noise_multiplier,
    gaussian_rdp,
    gaussian_sigma_for,
    laplace_rdp,
    laplace_scale_for_epsilon,
    rdp_to_epsilon,
    subsampled_gaussian_rdp,
)
from dpf_sched.errors import InvalidParameterError

try:
    from hypothesis import given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a declared dependency; keep the rest of the file usable
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

# --------------------------------------------------------------------------------------------------------
# 1. Reference vector: σ = 1.1, q = 0.01, 1000 steps
# --------------------------------------------------------------------------------------------------------

REF_ALPHAS = [1.5, 1.75, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 16.0, 32.0, 64.0]
REF_RDP = [
    0.09554528557684942,
    0.11195416481301922,
    0.12851008160514807,
    0.16207740933199663,
    0.19627788991499473,
    0.26671831462705986,
    0.34015796633296463,
    0.41702945472015374,
    0.5840703355202467,
    1699.8267277531747,
    8469.416433675926,
    21768.012866287314,
]


def test_reference_vector() -> None:
    got = subsampled_gaussian_rdp(REF_ALPHAS, 1.1, 0.01, 1000)
    assert got.dtype == np.float64
    assert got.shape == (len(REF_ALPHAS),)
    for alpha, value, ref in zip(REF_ALPHAS, got, REF_RDP, strict=True):
        rtol = 1e-12 if float(alpha).is_integer() else 1e-8
        assert value == pytest.approx(ref, rel=rtol, abs=0.0), alpha


def test_reference_epsilon() -> None:
    rdp = subsampled_gaussian_rdp(REF_ALPHAS, 1.1, 0.01, 1000)
    eps, best = rdp_to_epsilon(REF_ALPHAS, rdp, 1e-5)  # balle is the default
    assert eps == pytest.approx(1.79817950336578, rel=1e-9, abs=0.0)
    assert best == 8.0
    eps_classic, best_classic = rdp_to_epsilon(REF_ALPHAS, rdp, 1e-5, conversion="classic")
    assert eps_classic == pytest.approx(2.2287739733731367, rel=1e-9, abs=0.0)
    assert best_classic == 8.0


# --------------------------------------------------------------------------------------------------------
# 2. Independent numerical integration
# --------------------------------------------------------------------------------------------------------


def _quad_sampled_gaussian_rdp(alpha: float, sigma: float, q: float) -> float:
    """D_α(μ || μ0) for μ0 = N(0,σ²), μ = (1-q)μ0 + qN(1,σ²), by direct quadrature.

    A_α - 1 = ∫ μ0 [(1 + qY)^α - 1 - αqY] dz with Y = μ1/μ0 - 1 (E_μ0[Y] = 0 so the subtracted term integrates
    to zero); the integrand is non-negative, so the small A_α - 1 is obtained without cancellation.
    """

    def integrand(z: float) -> float:
        log_mu0 = -z * z / (2.0 * sigma * sigma) - math.log(sigma * math.sqrt(2.0 * math.pi))
        x = q * math.expm1((2.0 * z - 1.0) / (2.0 * sigma * sigma))
        return math.exp(log_mu0) * (math.expm1(alpha * math.log1p(x)) - alpha * x)

    lo, hi = -15.0 * sigma - 1.0, alpha + 15.0 * sigma + 1.0
    excess, _ = integrate.quad(integrand, lo, hi, points=[0.0, 0.5, 1.0, alpha], epsabs=0.0, epsrel=1e-13, limit=500)
    return math.log1p(excess) / (alpha - 1.0)


@pytest.mark.parametrize("sigma", [0.8, 1.5, 3.0])
@pytest.mark.parametrize("q", [0.001, 0.05, 0.3])
def test_subsampled_gaussian_matches_quadrature(sigma: float, q: float) -> None:
    alphas = [1.3, 2.7, 7.0, 12.5]
    got = subsampled_gaussian_rdp(alphas, sigma, q)
    for alpha, value in zip(alphas, got, strict=True):
        ref = _quad_sampled_gaussian_rdp(alpha, sigma, q)
        assert value == pytest.approx(ref, rel=1e-9, abs=0.0), (alpha, sigma, q)


@pytest.mark.parametrize(("scale", "sensitivity"), [(10.0, 1.0), (1.0, 1.0), (1.0, 3.0), (0.5, 0.25)])
def test_laplace_matches_quadrature(scale: float, sensitivity: float) -> None:
    alphas = [1.3, 2.7, 7.0, 12.5]
    got = laplace_rdp(alphas, scale, sensitivity)
    for alpha, value in zip(alphas, got, strict=True):
        # ∫ p^α p'^(1-α) with p = Lap(0, b), p' = Lap(Δ, b).
        def integrand(x: float, alpha: float = alpha) -> float:
            exponent = -(alpha * abs(x) + (1.0 - alpha) * abs(x - sensitivity)) / scale
            return math.exp(exponent) / (2.0 * scale)

        pieces = [(-math.inf, 0.0), (0.0, sensitivity), (sensitivity, math.inf)]
        total = sum(integrate.quad(integrand, a, b, epsabs=0.0, epsrel=1e-13)[0] for a, b in pieces)
        ref = math.log(total) / (alpha - 1.0)
        assert value == pytest.approx(ref, rel=1e-9, abs=0.0), (alpha, scale, sensitivity)


@pytest.mark.parametrize(("sigma", "sensitivity"), [(0.5, 1.0), (2.0, 1.0), (3.0, 0.7)])
def test_gaussian_matches_quadrature(sigma: float, sensitivity: float) -> None:
    alphas = [1.3, 2.7, 7.0, 12.5]
    got = gaussian_rdp(alphas, sigma, sensitivity)
    for alpha, value in zip(alphas, got, strict=True):

        def integrand(z: float, alpha: float = alpha) -> float:
            log_p = -z * z / (2.0 * sigma * sigma)
            log_p1 = -((z - sensitivity) ** 2) / (2.0 * sigma * sigma)
            return math.exp(alpha * log_p + (1.0 - alpha) * log_p1) / (sigma * math.sqrt(2.0 * math.pi))

        center = (1.0 - alpha) * sensitivity
        total, _ = integrate.quad(
            integrand, center - 40.0 * sigma, center + 40.0 * sigma, points=[center], epsabs=0.0, epsrel=1e-13
        )
        ref = math.log(total) / (alpha - 1.0)
        assert value == pytest.approx(ref, rel=1e-9, abs=0.0), (alpha, sigma)


def test_fractional_series_agrees_with_hermite_quadrature() -> None:
    """The series (used for σ < 10) and the Gauss-Hermite rule (used for large σ) agree where both apply."""
    for sigma in (2.0, 5.0, 12.0):
        for q in (1e-4, 0.02, 0.4, 0.97):
            for alpha in (1.05, 1.5, 3.25, 9.5):
                series = accounting._log_a_fractional(alpha, q, sigma)
                hermite = accounting._log_a_hermite(alpha, q, sigma)
                assert series == pytest.approx(hermite, rel=1e-9, abs=0.0), (alpha, q, sigma)


# --------------------------------------------------------------------------------------------------------
# 3. Structural properties and edge cases
# --------------------------------------------------------------------------------------------------------


def test_full_batch_is_plain_gaussian() -> None:
    alphas = [1.25, 2.0, 3.5, 10.0, 64.0]
    np.testing.assert_allclose(subsampled_gaussian_rdp(alphas, 1.7, 1.0, 3), 3 * gaussian_rdp(alphas, 1.7), rtol=1e-15)


def test_near_full_batch_approaches_gaussian() -> None:
    alphas = [1.25, 2.0, 3.5, 10.0]
    np.testing.assert_allclose(subsampled_gaussian_rdp(alphas, 1.7, 1.0 - 1e-9), gaussian_rdp(alphas, 1.7), rtol=1e-6)


def test_steps_compose_linearly() -> None:
    alphas = [1.5, 2.0, 4.5, 16.0]
    one = subsampled_gaussian_rdp(alphas, 0.9, 0.02)
    np.testing.assert_allclose(subsampled_gaussian_rdp(alphas, 0.9, 0.02, 250), 250 * one, rtol=1e-15)
    np.testing.assert_array_equal(subsampled_gaussian_rdp(alphas, 0.9, 0.02, 0), np.zeros(4))
    # An integer-valued float is accepted as a step count.
    np.testing.assert_array_equal(
        subsampled_gaussian_rdp(alphas, 0.9, 0.02, cast(Any, 250.0)),
        subsampled_gaussian_rdp(alphas, 0.9, 0.02, 250),
    )


def test_zero_noise_is_infinite() -> None:
    got = subsampled_gaussian_rdp([1.5, 2.0, 8.0], 0.0, 0.01, 10)
    assert np.all(np.isinf(got))


@pytest.mark.parametrize(("sigma", "q"), [(1.1, 0.01), (0.5, 0.3), (4.0, 0.001), (15.0, 0.5), (0.8, 0.9)])
def test_monotone_in_alpha(sigma: float, q: float) -> None:
    alphas = np.concatenate([np.linspace(1.01, 12.0, 90), np.arange(2.0, 40.0)])
    alphas.sort()
    curve = subsampled_gaussian_rdp(alphas, sigma, q)
    assert np.all(np.isfinite(curve))
    assert np.all(np.diff(curve) >= -1e-12 * curve[1:])


@pytest.mark.parametrize("alpha", [2.0, 3.0, 7.0, 16.0])
def test_continuous_across_integer_orders(alpha: float) -> None:
    # Fractional orders take the series path and integer orders the binomial one; they must join up.
    for sigma, q in [(1.1, 0.01), (0.6, 0.2), (25.0, 0.5)]:
        lo, mid, hi = subsampled_gaussian_rdp([alpha - 1e-7, alpha, alpha + 1e-7], sigma, q)
        assert lo <= mid <= hi
        assert hi - lo <= 1e-5 * mid


def test_orders_within_rounding_of_an_integer() -> None:
    # Regression (found by hypothesis): α - k + 1 rounding onto a pole of Γ used to give NaN.
    for alpha in (1.9999999999999858, 2.0 - 1e-15, 3.0 + 4e-16, 7.0 - 1e-14, 16.0 + 1e-13):
        got = subsampled_gaussian_rdp([alpha, float(round(alpha))], 1.0, 0.5)
        assert np.all(np.isfinite(got))
        assert got[0] == pytest.approx(got[1], rel=1e-9)


@pytest.mark.filterwarnings("error")
def test_extreme_parameters_stay_finite_or_inf_without_warnings() -> None:
    alphas = [1.5, 2.0, 2.5, 64.0, 3.5e6]
    for sigma in (1e-160, 1e-100, 1e-3, 1e3, 1e10, 1e200):
        for q in (1e-300, 1e-6, 0.5, 1.0):
            got = subsampled_gaussian_rdp(alphas, sigma, q, 1000)
            assert not np.any(np.isnan(got)), (sigma, q)
            assert np.all(got >= 0.0), (sigma, q)
            # Never above the plain Gaussian curve (subsampling only helps) unless that overflowed.
            bound = 1000 * np.asarray(alphas) / (2.0 * sigma * sigma) if sigma > 1e-140 else np.full(5, np.inf)
            assert np.all((got <= bound * (1 + 1e-12)) | np.isinf(got)), (sigma, q)
    # Orders beyond 1e6 use the plain-Gaussian upper bound.
    assert subsampled_gaussian_rdp([2e6], 3.0, 0.01)[0] == pytest.approx(2e6 / 18.0, rel=1e-15)
    # Laplace with a huge or tiny λ.
    assert np.all(np.isfinite(laplace_rdp([1.5, 1e300], 1e-300)))
    np.testing.assert_array_equal(laplace_rdp([2.0, 3.0], 1e300, 1e-300), [0.0, 0.0])


def test_laplace_limits() -> None:
    alphas = np.array([1.5, 2.0, 10.0, 100.0])
    lam = 1e-4
    np.testing.assert_allclose(laplace_rdp(alphas, 1.0 / lam), alphas * lam * lam / 2.0, rtol=1e-3)
    # Large λ and α: no overflow, ε(α) -> λ from below.
    big = laplace_rdp([1e6, 1e9], 1e-3)
    assert np.all(np.isfinite(big))
    assert np.all(big <= 1e3)
    assert big[-1] == pytest.approx(1e3, rel=1e-6)
    # Mironov 2017 Table II: the Laplace curve is bounded by its pure-DP ε = λ.
    assert np.all(laplace_rdp(alphas, 0.5, 1.0) <= 2.0)


def test_scale_and_sigma_calibration() -> None:
    assert laplace_scale_for_epsilon(0.5) == 2.0
    assert laplace_scale_for_epsilon(2.0, sensitivity=3.0) == 1.5
    assert gaussian_sigma_for(0.5, 1e-5) == pytest.approx(math.sqrt(2.0 * math.log(1.25e5)) / 0.5, rel=1e-15)
    assert gaussian_sigma_for(0.5, 1e-5, 2.0) == pytest.approx(2.0 * gaussian_sigma_for(0.5, 1e-5), rel=1e-15)
    np.testing.assert_allclose(gaussian_rdp([2.0, 4.0], 2.0, 3.0), [2.25, 4.5], rtol=1e-15)


def test_conversions() -> None:
    alphas = [1.5, 2.0, 4.0, 8.0, 32.0]
    rdp = gaussian_rdp(alphas, 3.0)
    balle, _ = rdp_to_epsilon(alphas, rdp, 1e-6)
    classic, best = rdp_to_epsilon(alphas, rdp, 1e-6, "classic")
    assert 0.0 <= balle <= classic
    expected = [r + math.log(1e6) / (a - 1.0) for a, r in zip(alphas, rdp, strict=True)]
    assert classic == pytest.approx(min(expected), rel=1e-15)
    assert best == alphas[int(np.argmin(expected))]
    # Balle's bound can go negative for a tiny curve and a large δ: it is clamped at 0.
    eps_clamped, best_clamped = rdp_to_epsilon([64.0, 128.0], [0.0, 0.0], 0.9)
    assert eps_clamped == 0.0
    assert best_clamped in (64.0, 128.0)
    # An infinite curve gives an infinite ε.
    assert rdp_to_epsilon([2.0, 3.0], [math.inf, math.inf], 1e-5)[0] == math.inf
    # Tuples and numpy arrays both work.
    assert rdp_to_epsilon(np.array(alphas), tuple(rdp), 1e-6) == (balle, rdp_to_epsilon(alphas, rdp, 1e-6)[1])


# --------------------------------------------------------------------------------------------------------
# 3b. Every bad input raises InvalidParameterError
# --------------------------------------------------------------------------------------------------------

NAN = math.nan
INF = math.inf
BAD_ALPHAS: list[Any] = [
    [1.5, NAN],
    [INF],
    [2.0, 1.0],
    [0.5],
    [-3.0],
    [],
    [[1.5, 2.0]],
    2.0,
    ["a"],
    "abc",
    None,
]


@pytest.mark.parametrize("alphas", BAD_ALPHAS)
def test_bad_alphas(alphas: Any) -> None:
    calls: list[Callable[[], object]] = [
        lambda: laplace_rdp(alphas, 1.0),
        lambda: gaussian_rdp(alphas, 1.0),
        lambda: subsampled_gaussian_rdp(alphas, 1.0, 0.1),
        lambda: rdp_to_epsilon(alphas, [0.1], 1e-5),
        lambda: calibrate_noise_multiplier(1.0, 1e-5, 0.01, 100, alphas),
    ]
    for call in calls:
        with pytest.raises(InvalidParameterError):
            call()


def test_error_message_names_the_value() -> None:
    with pytest.raises(InvalidParameterError, match=r"alphas\[1\] = 0\.5"):
        gaussian_rdp([2.0, 0.5], 1.0)
    with pytest.raises(InvalidParameterError, match=r"sample_rate.*1\.5"):
        subsampled_gaussian_rdp([2.0], 1.0, 1.5)
    with pytest.raises(InvalidParameterError, match=r"steps.*2\.5"):
        subsampled_gaussian_rdp([2.0], 1.0, 0.1, cast(Any, 2.5))
    with pytest.raises(InvalidParameterError, match=r"conversion.*'renyi'"):
        rdp_to_epsilon([2.0], [0.1], 1e-5, "renyi")
    assert issubclass(InvalidParameterError, ValueError)


BAD_REAL: list[Any] = [NAN, INF, -INF, "1.0", None, True, complex(1.0, 0.0)]


@pytest.mark.parametrize("value", [*BAD_REAL, 0.0, -1.0])
def test_bad_positive_scalars(value: Any) -> None:
    calls: list[Callable[[], object]] = [
        lambda: laplace_rdp([2.0], value),
        lambda: laplace_rdp([2.0], 1.0, value),
        lambda: laplace_scale_for_epsilon(value),
        lambda: laplace_scale_for_epsilon(1.0, value),
        lambda: gaussian_rdp([2.0], value),
        lambda: gaussian_rdp([2.0], 1.0, value),
        lambda: gaussian_sigma_for(0.5, 1e-5, value),
        lambda: calibrate_noise_multiplier(value, 1e-5, 0.01, 100, [2.0, 8.0]),
        lambda: calibrate_noise_multiplier(1.0, 1e-5, 0.01, 100, [2.0, 8.0], tol=value),
    ]
    for call in calls:
        with pytest.raises(InvalidParameterError):
            call()


@pytest.mark.parametrize("value", [*BAD_REAL, -0.5])
def test_bad_noise_multiplier(value: Any) -> None:
    with pytest.raises(InvalidParameterError):
        subsampled_gaussian_rdp([2.0], value, 0.1)


@pytest.mark.parametrize("value", [*BAD_REAL, 0.0, -0.1, 1.0000001, 2.0])
def test_bad_sample_rate(value: Any) -> None:
    with pytest.raises(InvalidParameterError):
        subsampled_gaussian_rdp([2.0], 1.0, value)
    with pytest.raises(InvalidParameterError):
        calibrate_noise_multiplier(1.0, 1e-5, value, 100, [2.0, 8.0])


@pytest.mark.parametrize("value", [*BAD_REAL, 2.5, -1, -1.0, 1e400])
def test_bad_steps(value: Any) -> None:
    with pytest.raises(InvalidParameterError):
        subsampled_gaussian_rdp([2.0], 1.0, 0.1, value)
    with pytest.raises(InvalidParameterError):
        calibrate_noise_multiplier(1.0, 1e-5, 0.01, value, [2.0, 8.0])


@pytest.mark.parametrize("value", [*BAD_REAL, 0.0, 1.0, 1.5, -1e-5])
def test_bad_delta_and_unit_epsilon(value: Any) -> None:
    calls: list[Callable[[], object]] = [
        lambda: rdp_to_epsilon([2.0], [0.1], value),
        lambda: gaussian_sigma_for(0.5, value),
        lambda: gaussian_sigma_for(value, 1e-5),  # Dwork & Roth Thm A.1 needs ε in (0, 1)
        lambda: calibrate_noise_multiplier(1.0, value, 0.01, 100, [2.0, 8.0]),
    ]
    for call in calls:
        with pytest.raises(InvalidParameterError):
            call()


@pytest.mark.parametrize("conversion", ["renyi", "Balle", "", None, 1])
def test_bad_conversion(conversion: Any) -> None:
    with pytest.raises(InvalidParameterError):
        rdp_to_epsilon([2.0], [0.1], 1e-5, conversion)
    with pytest.raises(InvalidParameterError):
        calibrate_noise_multiplier(1.0, 1e-5, 0.01, 100, [2.0, 8.0], conversion)


@pytest.mark.parametrize("rdp", [[0.1, NAN], [0.1, -0.2], [0.1], [0.1, 0.2, 0.3], "ab", [[0.1, 0.2]]])
def test_bad_rdp(rdp: Any) -> None:
    with pytest.raises(InvalidParameterError):
        rdp_to_epsilon([2.0, 3.0], rdp, 1e-5)


# --------------------------------------------------------------------------------------------------------
# 4. Calibration round trip
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("target", "q", "steps", "conversion", "tol"),
    [
        (1.0, 0.01, 1000, "balle", 0.01),
        (3.0, 0.01, 1000, "classic", 0.01),
        (8.0, 0.004, 10_000, "balle", 0.001),
        (0.6, 0.001, 1000, "balle", 0.001),
        (2.0, 1.0, 10, "balle", 0.05),
    ],
)
def test_calibration_round_trip(target: float, q: float, steps: int, conversion: str, tol: float) -> None:
    sigma = calibrate_noise_multiplier(target, 1e-5, q, steps, REF_ALPHAS, conversion, tol)

    def eps(s: float) -> float:
        curve = subsampled_gaussian_rdp(REF_ALPHAS, s, q, steps)
        return rdp_to_epsilon(REF_ALPHAS, curve, 1e-5, conversion)[0]

    assert eps(sigma) <= target
    assert sigma > tol
    assert eps(sigma - tol) > target


def test_calibration_unattainable_and_trivial() -> None:
    # Even σ = ∞ leaves ε >= min over the grid of the conversion term, here > 0.1.
    with pytest.raises(InvalidParameterError, match="unattainable"):
        calibrate_noise_multiplier(0.1, 1e-5, 0.01, 1000, REF_ALPHAS)
    assert calibrate_noise_multiplier(1.0, 1e-5, 0.01, 0, REF_ALPHAS) == 0.0


# --------------------------------------------------------------------------------------------------------
# 5. Property test
# --------------------------------------------------------------------------------------------------------


def _le(a: float, b: float) -> bool:
    """``a <= b`` up to the accuracy of the computation (relative 1e-9)."""
    return a <= b + 1e-9 * abs(b) + 1e-300


if HAVE_HYPOTHESIS:  # a declared dependency; the property test is simply absent without it

    @settings(max_examples=40, deadline=None, derandomize=True)
    @given(
        sigma=st.floats(0.4, 20.0),
        sigma2=st.floats(0.4, 20.0),
        q=st.floats(1e-4, 1.0),
        q2=st.floats(1e-4, 1.0),
        alpha=st.one_of(st.floats(1.02, 48.0), st.integers(2, 48).map(float)),
        alpha2=st.one_of(st.floats(1.02, 48.0), st.integers(2, 48).map(float)),
    )
    def test_monotonicity_property(
        sigma: float, sigma2: float, q: float, q2: float, alpha: float, alpha2: float
    ) -> None:
        a_lo, a_hi = sorted((alpha, alpha2))
        s_lo, s_hi = sorted((sigma, sigma2))
        q_lo, q_hi = sorted((q, q2))
        by_alpha = subsampled_gaussian_rdp([a_lo, a_hi], sigma, q)
        assert np.all(by_alpha >= 0.0)
        assert _le(by_alpha[0], by_alpha[1])
        by_q = subsampled_gaussian_rdp([alpha], sigma, q_lo)[0], subsampled_gaussian_rdp([alpha], sigma, q_hi)[0]
        assert _le(*by_q)
        by_sigma = subsampled_gaussian_rdp([alpha], s_hi, q)[0], subsampled_gaussian_rdp([alpha], s_lo, q)[0]
        assert _le(*by_sigma)


# --------------------------------------------------------------------------------------------------------
# Module hygiene
# --------------------------------------------------------------------------------------------------------


def test_imports_only_numpy_scipy_and_lower_layers() -> None:
    """No torch or opacus; of our own modules only the layers below it (DESIGN.md: arrows point down)."""
    tree = ast.parse(Path(accounting.__file__).read_text(encoding="utf-8"))
    modules: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None:
            modules.add(node.module)
    assert not any(m.split(".")[0] in {"torch", "opacus"} for m in modules)
    assert {m for m in modules if m.startswith("dpf_sched")} <= {"dpf_sched.errors", "dpf_sched.budget"}
