"""Rényi-DP (RDP) curves of common mechanisms, and conversions from RDP to (ε, δ).

A privacy-budget scheduler that works over Rényi budgets needs, for every task, the RDP curve ``ε(α)`` of
the mechanism it runs, evaluated on the scheduler's fixed grid of orders α. This module computes those
curves for

* the Laplace mechanism (Mironov 2017, "Rényi Differential Privacy", Prop. 6 / Table II),
* the Gaussian mechanism (same paper, Prop. 7),
* the Poisson-subsampled Gaussian mechanism used by DP-SGD, composed over ``steps`` iterations
  (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the Sampled Gaussian Mechanism",
  arXiv:1908.10530, Sec. 3.3),

and it converts a curve back to a single (ε, δ) guarantee, either with the classic bound (Mironov 2017,
Prop. 3) or with the tighter bound of Balle, Barthe, Gaboardi, Hsu & Sato 2020 ("Hypothesis Testing
Interpretations and Renyi Differential Privacy", Thm. 21). It can also calibrate the DP-SGD noise
multiplier that meets a target ε.

Everything is computed with numpy and scipy only, in log space, so that large orders and small noise
give large-but-finite numbers instead of overflows. Wherever a quantity of the form ``log(1 + tiny)`` is
needed, the code evaluates ``tiny`` directly (no ``1 + tiny - 1`` cancellation), so small RDP values keep
their full relative precision. Every public function validates its arguments and raises
:class:`~dpf_sched.errors.InvalidParameterError` (a ``ValueError``) naming the offending value; none of them
has side effects.
"""

from __future__ import annotations

import logging
import math
import numbers

import numpy as np
import numpy.typing as npt
from scipy import special

from dpf_sched.budget import Conversion, conversion_penalty
from dpf_sched.errors import InvalidParameterError

__all__ = [
    "CONVERSIONS",
    "calibrate_noise_multiplier",
    "gaussian_rdp",
    "gaussian_sigma_for",
    "laplace_rdp",
    "laplace_scale_for_epsilon",
    "rdp_to_epsilon",
    "subsampled_gaussian_rdp",
]

logger = logging.getLogger(__name__)

FloatArray = npt.NDArray[np.float64]

#: Names accepted by :func:`rdp_to_epsilon` and :func:`calibrate_noise_multiplier`.
CONVERSIONS: tuple[str, ...] = ("balle", "classic")

# Series summation controls for the fractional-order sampled Gaussian (see ``_log_a_fractional``).
_SERIES_REL_TOL = 1e-15
_SERIES_FIRST_CHUNK = 512
_SERIES_MAX_CHUNK = 1 << 16
_SERIES_MAX_TERMS = 1 << 20
# Integer orders are summed in chunks of this many binomial terms to bound memory for huge α.
_BINOMIAL_CHUNK = 1 << 16
# Fractional orders with very large σ use Gauss-Hermite quadrature instead of the series (see _log_a_hermite).
_HERMITE_MIN_SIGMA = 10.0
_HERMITE_MAX_ALPHA_OVER_SIGMA = 12.0
_HERMITE_NODES, _HERMITE_WEIGHTS = np.polynomial.hermite_e.hermegauss(120)
# Sampled-Gaussian orders above this use the plain-Gaussian upper bound instead of an O(α) exact sum.
_MAX_EXACT_ORDER = 1e6
# Orders with α²/(2σ²) above this get an infinite RDP (see subsampled_gaussian_rdp).
_HUGE_EXPONENT = 1e300
# Largest accepted step count (beyond it float arithmetic on the count itself stops being exact).
_MAX_STEPS = 2**53
# Largest σ tried by ``calibrate_noise_multiplier`` before declaring the target unattainable.
_CALIBRATION_SIGMA_MAX = 1e7


# --------------------------------------------------------------------------------------------------------
# Argument validation
# --------------------------------------------------------------------------------------------------------


def _real(name: str, value: object) -> float:
    """Return ``value`` as a finite float, or raise naming it (bools and non-numbers are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(f"{name} must be a real number, got {value!r}")
    try:
        out = float(value)
    except OverflowError:  # e.g. a Python int beyond float range
        out = math.inf
    if not math.isfinite(out):
        raise InvalidParameterError(f"{name} must be finite, got {value!r}")
    return out


def _positive(name: str, value: object) -> float:
    out = _real(name, value)
    if out <= 0.0:
        raise InvalidParameterError(f"{name} must be > 0, got {value!r}")
    return out


def _non_negative(name: str, value: object) -> float:
    out = _real(name, value)
    if out < 0.0:
        raise InvalidParameterError(f"{name} must be >= 0, got {value!r}")
    return out


def _open_unit(name: str, value: object) -> float:
    out = _real(name, value)
    if not 0.0 < out < 1.0:
        raise InvalidParameterError(f"{name} must lie in the open interval (0, 1), got {value!r}")
    return out


def _sample_rate(value: object) -> float:
    out = _real("sample_rate", value)
    if not 0.0 < out <= 1.0:
        raise InvalidParameterError(f"sample_rate must lie in (0, 1], got {value!r}")
    return out


def _steps(value: object) -> int:
    """Accept a non-negative integer (or an integer-valued float such as ``1000.0``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidParameterError(f"steps must be a non-negative integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        out = int(value)
    else:
        try:
            as_float = float(value)
        except OverflowError:
            as_float = math.inf
        if not math.isfinite(as_float) or not as_float.is_integer():
            raise InvalidParameterError(f"steps must be a non-negative integer, got {value!r}")
        out = int(as_float)
    if not 0 <= out <= _MAX_STEPS:
        raise InvalidParameterError(f"steps must be a non-negative integer <= {_MAX_STEPS}, got {value!r}")
    return out


def _conversion(value: object) -> str:
    if not isinstance(value, str) or value not in CONVERSIONS:
        raise InvalidParameterError(f"conversion must be one of {CONVERSIONS}, got {value!r}")
    return value


def _alphas(alphas: npt.ArrayLike) -> FloatArray:
    """Return the orders as a 1-D float64 array, checking that each is finite and > 1."""
    try:
        arr = np.asarray(alphas, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"alphas must be a 1-D sequence of real numbers, got {alphas!r}") from exc
    if arr.ndim != 1 or arr.size == 0:
        raise InvalidParameterError(f"alphas must be a non-empty 1-D sequence, got {alphas!r}")
    bad = np.flatnonzero(~(np.isfinite(arr) & (arr > 1.0)))
    if bad.size:
        i = int(bad[0])
        raise InvalidParameterError(f"every alpha must be finite and > 1, got alphas[{i}] = {float(arr[i])!r}")
    return arr


# --------------------------------------------------------------------------------------------------------
# Small cancellation-free helpers
# --------------------------------------------------------------------------------------------------------


def _log1p_minus_x(y: float) -> float:
    """``log(1 + y) - y`` for ``y > -1``, accurate also when ``|y|`` is tiny (where it is ``≈ -y²/2``)."""
    if abs(y) > 0.5:
        return math.log1p(y) - y
    # Taylor series  sum_{n>=2} (-1)^(n+1) y^n / n ; |y| <= 1/2 so 60 terms reach 1e-18 relative.
    total = 0.0
    power = y
    for n in range(2, 80):
        power *= y
        term = power / n if n % 2 == 1 else -power / n
        total += term
        if abs(term) <= 1e-18 * abs(total):
            break
    return total


def _expm1_minus_x(x: FloatArray) -> FloatArray:
    """``exp(x) - 1 - x`` element-wise, accurate for tiny ``|x|`` (where it is ``≈ x²/2``); always >= 0."""
    out = np.empty_like(x)
    small = np.abs(x) <= 1.0
    big = ~small
    out[big] = np.expm1(x[big]) - x[big]
    xs = x[small]
    total = np.zeros_like(xs)
    term = np.ones_like(xs)
    for n in range(1, 26):  # 1/25! ~ 6e-26: far below double precision for |x| <= 1
        term = term * xs / n
        if n >= 2:
            total = total + term
    out[small] = total
    return out


def _log_expm1(c: FloatArray) -> FloatArray:
    """``log(exp(c) - 1)`` element-wise for ``c >= 0`` without overflow (``-inf`` at ``c == 0``)."""
    out = np.empty_like(c)
    big = c > 30.0
    out[big] = c[big] + np.log1p(-np.exp(-c[big]))
    with np.errstate(divide="ignore"):
        out[~big] = np.log(np.expm1(c[~big]))
    return out


def _log_erfcx_half(x: FloatArray) -> FloatArray:
    """``log(erfcx(x) / 2)`` element-wise, where ``erfcx(x) = exp(x²) erfc(x)``, for any real ``x``.

    For ``x >= 0`` scipy's ``erfcx`` is accurate and never overflows; for ``x < 0`` we use the identity
    ``erfc(x) / 2 = Φ(-√2 x)`` with scipy's ``log_ndtr`` (accurate for positive arguments).
    """
    out = np.empty_like(x)
    pos = x >= 0.0
    out[pos] = np.log(special.erfcx(x[pos])) - math.log(2.0)
    neg = ~pos
    out[neg] = x[neg] ** 2 + special.log_ndtr(-math.sqrt(2.0) * x[neg])
    return out


# --------------------------------------------------------------------------------------------------------
# Laplace and Gaussian mechanisms
# --------------------------------------------------------------------------------------------------------


def laplace_rdp(alphas: npt.ArrayLike, scale: float, sensitivity: float = 1.0) -> FloatArray:
    """RDP curve of the Laplace mechanism.

    For ``λ = sensitivity / scale`` (Mironov 2017, Prop. 6 / Table II)::

        ε(α) = 1/(α-1) · log( α/(2α-1) · exp((α-1)λ) + (α-1)/(2α-1) · exp(-αλ) ).

    The log is evaluated without overflow for large ``α`` and ``λ`` (``exp((α-1)λ)`` is factored out), and
    without the ``log(1 + tiny)`` cancellation for small ``λ`` (where ``ε(α) ≈ αλ²/2``), so that both regimes
    keep full relative precision.

    Parameters
    ----------
    alphas : array_like
        1-D sequence of Rényi orders, each finite and > 1.
    scale : float
        Laplace scale ``b > 0``.
    sensitivity : float, default 1.0
        L1 sensitivity ``Δ > 0`` of the query.

    Returns
    -------
    numpy.ndarray
        ``ε(α)`` for each order, float64, same length as ``alphas``.

    Raises
    ------
    InvalidParameterError
        If an order is not finite or ``<= 1``, or ``scale`` / ``sensitivity`` is not a finite positive number.
    """
    a = _alphas(alphas)
    lam = _positive("sensitivity", sensitivity) / _positive("scale", scale)
    if not math.isfinite(lam):
        raise InvalidParameterError(f"sensitivity/scale overflows: sensitivity={sensitivity!r}, scale={scale!r}")
    if lam == 0.0:  # sensitivity/scale underflowed: ε(α) ≈ αλ²/2 is below the smallest float
        return np.zeros_like(a)
    am1 = a - 1.0
    two_am1 = 2.0 * a - 1.0
    out = np.empty_like(a)
    # Small-λ regime: the bracket equals 1 + [α·h((α-1)λ) + (α-1)·h(-αλ)]/(2α-1) with h(x) = eˣ - 1 - x >= 0,
    # a sum of non-negative terms, so log1p of it is exact to rounding.
    small = am1 <= 1.0 / lam  # i.e. (α-1)λ <= 1, written so that it cannot overflow
    if np.any(small):
        s_a, s_am1, s_2 = a[small], am1[small], two_am1[small]
        excess = (s_a * _expm1_minus_x(s_am1 * lam) + s_am1 * _expm1_minus_x(-s_a * lam)) / s_2
        out[small] = np.log1p(excess) / s_am1
    big = ~small
    if np.any(big):
        # Factor out exp((α-1)λ): ε = λ + [log(α/(2α-1)) + log1p((α-1)/α · exp(-(2α-1)λ))]/(α-1), which
        # never forms exp of a large number (the exponential below underflows harmlessly to 0).
        b_a, b_am1, b_2 = a[big], am1[big], two_am1[big]
        with np.errstate(over="ignore", under="ignore"):
            tail = np.log1p(b_am1 / b_a * np.exp(-(b_2 * lam)))
        out[big] = lam + (np.log(b_a) - np.log(b_2) + tail) / b_am1
    return np.asarray(out, dtype=np.float64)


def laplace_scale_for_epsilon(epsilon: float, sensitivity: float = 1.0) -> float:
    """Scale ``b = sensitivity / epsilon`` of the Laplace mechanism that is ``(ε, 0)``-DP.

    Parameters
    ----------
    epsilon : float
        Target pure-DP budget, finite and > 0.
    sensitivity : float, default 1.0
        L1 sensitivity, finite and > 0.

    Returns
    -------
    float
        The Laplace scale ``b``.

    Raises
    ------
    InvalidParameterError
        If an argument is NaN, infinite or not positive.
    """
    scale = _positive("sensitivity", sensitivity) / _positive("epsilon", epsilon)
    if not math.isfinite(scale) or scale == 0.0:
        raise InvalidParameterError(
            f"sensitivity/epsilon is outside float range: sensitivity={sensitivity!r}, epsilon={epsilon!r}"
        )
    return scale


def gaussian_rdp(alphas: npt.ArrayLike, sigma: float, sensitivity: float = 1.0) -> FloatArray:
    """RDP curve of the Gaussian mechanism: ``ε(α) = α Δ² / (2σ²)`` (Mironov 2017, Prop. 7).

    Parameters
    ----------
    alphas : array_like
        1-D sequence of Rényi orders, each finite and > 1.
    sigma : float
        Standard deviation of the added noise, finite and > 0.
    sensitivity : float, default 1.0
        L2 sensitivity ``Δ``, finite and > 0.

    Returns
    -------
    numpy.ndarray
        ``ε(α)`` for each order, float64.

    Raises
    ------
    InvalidParameterError
        If an order is invalid, or ``sigma`` / ``sensitivity`` is NaN, infinite or not positive.
    """
    a = _alphas(alphas)
    ratio = _positive("sensitivity", sensitivity) / _positive("sigma", sigma)
    with np.errstate(over="ignore"):  # a curve beyond float range is reported as inf
        return np.asarray(a * (0.5 * ratio * ratio), dtype=np.float64)


def gaussian_sigma_for(epsilon: float, delta: float, sensitivity: float = 1.0) -> float:
    """Noise ``σ = Δ·sqrt(2 ln(1.25/δ)) / ε`` of the classic ``(ε, δ)`` Gaussian mechanism.

    This is the calibration of Dwork & Roth 2014, Thm. A.1. That theorem is only proved for ``ε < 1`` (and
    the bound is known to fail for large ε, see Balle & Wang 2018), so ``epsilon >= 1`` is refused rather
    than silently returning an invalid σ.

    Parameters
    ----------
    epsilon : float
        Target ε, in ``(0, 1)``.
    delta : float
        Target δ, in ``(0, 1)``.
    sensitivity : float, default 1.0
        L2 sensitivity ``Δ``, finite and > 0.

    Returns
    -------
    float
        The noise standard deviation σ.

    Raises
    ------
    InvalidParameterError
        If ``epsilon`` or ``delta`` lies outside ``(0, 1)``, or ``sensitivity`` is not finite and positive.
    """
    eps = _open_unit("epsilon", epsilon)
    dlt = _open_unit("delta", delta)
    sens = _positive("sensitivity", sensitivity)
    return sens * math.sqrt(2.0 * math.log(1.25 / dlt)) / eps


# --------------------------------------------------------------------------------------------------------
# Sampled Gaussian mechanism (Mironov, Talwar & Zhang 2019, arXiv:1908.10530, Sec. 3.3)
#
# With μ0 = N(0, σ²), μ1 = N(1, σ²) and μ = (1-q)μ0 + qμ1, the RDP of one step at order α is
# log(A_α)/(α-1) where A_α = E_{z~μ0}[(μ(z)/μ0(z))^α]. We always return log(A_α) computed from A_α - 1, which
# is evaluated without cancellation against the leading 1, so tiny per-step values keep full precision.
# --------------------------------------------------------------------------------------------------------


def _log_a_integer(alpha: int, q: float, sigma: float) -> float:
    """``log A_α`` for integer ``α >= 2`` by the exact binomial expansion (Mironov et al. 2019, Sec. 3.3).

    ``A_α = Σ_k w_k exp((k²-k)/(2σ²))`` with ``w_k = C(α,k)(1-q)^(α-k) q^k`` the Binomial(α, q) pmf.
    Since ``Σ_k w_k = 1`` and the k = 0, 1 exponents vanish, ``A_α - 1 = Σ_{k>=2} w_k expm1((k²-k)/(2σ²))``:
    a sum of positive terms, computed by log-sum-exp.
    """
    log_q = math.log(q)
    log_1mq = math.log1p(-q)
    lg_alpha = float(special.gammaln(alpha + 1.0))
    two_s2 = 2.0 * sigma * sigma
    chunk_logs: list[float] = []
    for start in range(2, alpha + 1, _BINOMIAL_CHUNK):
        k = np.arange(start, min(alpha, start + _BINOMIAL_CHUNK - 1) + 1, dtype=np.float64)
        log_w = lg_alpha - special.gammaln(k + 1.0) - special.gammaln(alpha - k + 1.0)
        log_w = log_w + (alpha - k) * log_1mq + k * log_q
        log_terms = log_w + _log_expm1((k * k - k) / two_s2)
        chunk_logs.append(float(special.logsumexp(log_terms)))
    log_excess = float(special.logsumexp(np.asarray(chunk_logs)))
    return float(np.logaddexp(0.0, log_excess))  # log(1 + (A - 1))


def _log_a_fractional(alpha: float, q: float, sigma: float) -> float:
    """``log A_α`` for non-integer ``α > 1`` by the two-series form of Mironov et al. 2019, Sec. 3.3.

    Splitting the integral at ``z0 = σ² log(1/q - 1) + 1/2`` (where ``(1-q)μ0 = qμ1``) and expanding the
    binomial with real exponent on each side gives ``A_α = A1 + A2`` with

    * ``A1 = Σ_{k>=0} C(α,k) (1-q)^(α-k) q^k exp((k²-k)/(2σ²)) · ½ erfc((k - z0)/(√2 σ))``,
    * ``A2 = Σ_{k>=0} C(α,k) (1-q)^k q^(α-k) exp(((α-k)²-(α-k))/(2σ²)) · ½ erfc((z0 - (α-k))/(√2 σ))``.

    Each term is computed in log space with a sign. Where the erfc argument is positive, the exponentials are
    folded into scipy's ``erfcx`` (the exponents cancel exactly to ``α log(1-q) - z0²/(2σ²)``), which avoids
    subtracting huge numbers; elsewhere ``½ erfc`` is a normal CDF evaluated by ``log_ndtr``. The first two
    A1 terms are combined with the ``-1`` analytically (see the body) so that ``A - 1`` has no cancellation.

    For ``k > α`` the binomial coefficients alternate in sign, and the magnitudes ``a_k`` of ``A1_k + A2_k``
    (both of the sign of ``C(α,k)``) form a decreasing log-convex, hence convex, sequence: ``|C(α,k)|`` has
    increasing ratios ``(k-α)/(k+1)`` and ``erfcx`` is completely monotone. For such alternating series the
    remainder after ``a_N`` lies between ``a_{N+1}/2`` and ``a_N/2``; so we add half of the last computed
    term and stop once the remaining uncertainty ``(a_{N-1} - a_N)/2`` is below ``_SERIES_REL_TOL · |A - 1|``,
    or after ``_SERIES_MAX_TERMS`` terms (logged). This needs far fewer terms than waiting for ``a_N`` itself
    to vanish (the tail decays only like ``k^(-α-2)``).
    """
    log_q = math.log(q)
    log_1mq = math.log1p(-q)
    two_s2 = 2.0 * sigma * sigma
    rt2s = math.sqrt(2.0) * sigma
    z0 = sigma * sigma * (log_1mq - log_q) + 0.5
    log_const = alpha * log_1mq - z0 * z0 / two_s2  # common factor of every term in its erfcx form

    # --- A1_0 + A1_1 - 1 ------------------------------------------------------------------------------------
    # A1_0 + A1_1 = (1-q)^(α-1) (1 + (α-1)q) (1 - r), with r = [(1-q)Φ(-z0/σ) + αqΦ(-(z0-1)/σ)] / (1+(α-1)q),
    # and log[(1-q)^(α-1)(1+(α-1)q)] = L((α-1)q) + (α-1)L(-q) with L(y) = log(1+y) - y <= 0 (no cancellation).
    phi_a = float(special.ndtr(-z0 / sigma))
    phi_b = float(special.ndtr(-(z0 - 1.0) / sigma))
    r = ((1.0 - q) * phi_a + alpha * q * phi_b) / (1.0 + (alpha - 1.0) * q)
    if r <= 0.5:
        log_head = _log1p_minus_x((alpha - 1.0) * q) + (alpha - 1.0) * _log1p_minus_x(-q) + math.log1p(-r)
    else:
        log_head = float(
            np.logaddexp(
                alpha * log_1mq + special.log_ndtr(z0 / sigma),
                math.log(alpha) + (alpha - 1.0) * log_1mq + log_q + special.log_ndtr((z0 - 1.0) / sigma),
            )
        )
    head = math.expm1(log_head)

    lg_alpha = float(special.gammaln(alpha + 1.0))

    def terms(k: FloatArray) -> tuple[FloatArray, FloatArray]:
        """Log-magnitude and sign of (A1_k + A2_k) for the given k (A1 omitted for k = 0, 1)."""
        log_binom = lg_alpha - special.gammaln(k + 1.0) - special.gammaln(alpha - k + 1.0)
        sign = np.asarray(special.gammasgn(alpha - k + 1.0), dtype=np.float64)
        # For α within rounding of an integer, α - k + 1 can round onto a pole of Γ (gammasgn gives NaN there):
        # the true coefficient is then O(ulp) and the term is dropped.
        sign[~np.isfinite(log_binom) | np.isnan(sign)] = 0.0
        # A1_k: ½erfc(x1) with x1 = (k - z0)/(√2σ)
        x1 = (k - z0) / rt2s
        t1 = np.empty_like(k)
        m = x1 <= 0.0
        t1[m] = (
            (alpha - k[m]) * log_1mq
            + k[m] * log_q
            + (k[m] * k[m] - k[m]) / two_s2
            + special.log_ndtr(-math.sqrt(2.0) * x1[m])
        )
        t1[~m] = log_const + _log_erfcx_half(x1[~m])
        t1[k < 2.0] = -np.inf
        # A2_k: j = α - k, ½erfc(x2) with x2 = (z0 - j)/(√2σ)
        j = alpha - k
        x2 = (z0 - j) / rt2s
        t2 = np.empty_like(k)
        m = x2 <= 0.0
        t2[m] = (
            k[m] * log_1mq + j[m] * log_q + (j[m] * j[m] - j[m]) / two_s2 + special.log_ndtr(-math.sqrt(2.0) * x2[m])
        )
        t2[~m] = log_const + _log_erfcx_half(x2[~m])
        return np.asarray(log_binom + np.logaddexp(t1, t2), dtype=np.float64), sign

    # The first chunk covers every k <= α + margin, hence the largest term
    # (magnitudes decrease for k > (α-1)/2).
    size = max(_SERIES_FIRST_CHUNK, math.ceil(alpha) + 64)
    k = np.arange(0, size, dtype=np.float64)
    log_mag, sign = terms(k)
    shift = max(0.0, float(np.max(log_mag)))
    partial = [head * math.exp(-shift), math.fsum((sign * np.exp(log_mag - shift)).tolist())]
    done = size

    def estimate() -> tuple[float, float]:
        """Sum so far with the last term halved, and the bound on its truncation error (both × e^-shift)."""
        last = math.exp(float(log_mag[-1]) - shift)
        before = math.exp(float(log_mag[-2]) - shift)
        return math.fsum([*partial, -0.5 * float(sign[-1]) * last]), 0.5 * (before - last)

    total, bound = estimate()
    while bound > _SERIES_REL_TOL * abs(total):
        if done >= _SERIES_MAX_TERMS:
            logger.warning(
                "sampled-Gaussian series did not reach relative tolerance %g after %d terms "
                "(alpha=%r, q=%r, sigma=%r); truncation error <= %g relative",
                _SERIES_REL_TOL,
                done,
                alpha,
                q,
                sigma,
                bound / abs(total) if total else math.inf,
            )
            break
        size = min(2 * size, _SERIES_MAX_CHUNK)
        k = np.arange(done, done + size, dtype=np.float64)
        log_mag, sign = terms(k)
        partial.append(math.fsum((sign * np.exp(log_mag - shift)).tolist()))
        done += size
        total, bound = estimate()

    # A - 1 = e^shift · total, and A >= 1 mathematically: clamp rounding noise at 0.
    if shift == 0.0:
        return math.log1p(max(total, 0.0))
    return shift + math.log(max(total, 0.0) + math.exp(-shift))


def _binomial_excess(alpha: float, x: FloatArray) -> FloatArray:
    """``(1 + x)^α - 1 - αx`` element-wise for ``x > -1``; >= 0 by convexity, accurate also for tiny ``|x|``.

    Where ``|x|(α+1) <= 1`` the binomial series ``Σ_{k>=2} C(α,k) x^k`` converges geometrically (ratio <= 1/2
    after the first terms) without cancellation worth speaking of; elsewhere, writing ``α = 1 + β``,
    ``(1+x)·expm1(β log1p(x)) - βx`` keeps the result's relative precision even for ``α`` close to 1.
    """
    out = np.empty_like(x)
    small = np.abs(x) * (alpha + 1.0) <= 1.0
    xs = x[small]
    term = alpha * xs
    total = np.zeros_like(xs)
    for k in range(2, 200):
        term = term * ((alpha - k + 1.0) / k) * xs
        total = total + term
        if not np.any(np.abs(term) > 1e-18 * np.abs(total)):
            break
    out[small] = total
    xb = x[~small]
    beta = alpha - 1.0
    out[~small] = (1.0 + xb) * np.expm1(beta * np.log1p(xb)) - beta * xb
    return out


def _log_a_hermite(alpha: float, q: float, sigma: float) -> float:
    """``log A_α`` for large σ by Gauss-Hermite quadrature of ``A_α - 1 = E_{z~μ0}[(1 + qY)^α - 1 - αqY]``.

    Here ``Y = μ1(z)/μ0(z) - 1 = expm1((2z-1)/(2σ²))`` has mean 0, so the subtracted ``αqY`` integrates to 0
    and the integrand is non-negative. This is the same quantity as the series of ``_log_a_fractional``, which
    for very large σ converges slowly (terms only start to decay once k exceeds ~σ) and loses relative
    precision (``A - 1 ~ q²/σ²`` is a difference of O(q²) terms). For σ >= ``_HERMITE_MIN_SIGMA`` and
    ``α <= _HERMITE_MAX_ALPHA_OVER_SIGMA · σ``, ``Y`` is a smooth function of a normal variable with standard
    deviation ``1/σ`` and its singularities lie ~πσ away from the real axis, so a fixed Gauss-Hermite rule
    is accurate to rounding.
    """
    u = _HERMITE_NODES
    w = (u / sigma) - 0.5 / (sigma * sigma)
    values = _binomial_excess(alpha, q * np.expm1(w))
    excess = math.fsum((_HERMITE_WEIGHTS * values).tolist()) / math.sqrt(2.0 * math.pi)
    return math.log1p(max(excess, 0.0))


def subsampled_gaussian_rdp(
    alphas: npt.ArrayLike, noise_multiplier: float, sample_rate: float, steps: int = 1
) -> FloatArray:
    """RDP curve of the Poisson-subsampled Gaussian mechanism (DP-SGD), composed over ``steps`` steps.

    One step adds ``N(0, (noise_multiplier·Δ)²)`` noise to a sum over a Poisson sample with rate ``q``; its
    RDP at order α is ``log(A_α)/(α-1)`` (Mironov, Talwar & Zhang 2019, "Rényi Differential Privacy of the
    Sampled Gaussian Mechanism", Sec. 3.3). Integer orders use the exact finite binomial expansion;
    fractional orders use the paper's two infinite series (with erfc factors), summed until the remaining
    terms are negligible. Composition over ``steps`` multiplies the curve by ``steps``.

    For large σ (>= 10, with α <= 12σ) fractional orders are computed instead by Gauss-Hermite quadrature of
    the same expectation, where the series converges slowly and loses relative precision; both routes agree
    with 30-digit quadrature to ~1e-11 relative or better on their domains. The cost is O(α) terms, so
    orders above 10⁶ get the plain-Gaussian value ``α/(2σ²)``, an upper bound.

    Special cases: ``sample_rate == 1`` is the plain Gaussian ``steps·α/(2σ²)``; ``noise_multiplier == 0``
    gives ``inf`` at every order (no privacy), unless ``steps == 0`` (the all-zero curve). Orders where
    ``α²/(2σ²)`` exceeds 1e300 (absurdly small σ) also get ``inf``.

    Parameters
    ----------
    alphas : array_like
        1-D sequence of Rényi orders, each finite and > 1.
    noise_multiplier : float
        Ratio σ of the noise standard deviation to the L2 sensitivity, finite and >= 0.
    sample_rate : float
        Poisson sampling probability ``q`` in ``(0, 1]``.
    steps : int, default 1
        Number of composed steps, a non-negative integer (an integer-valued float is accepted).

    Returns
    -------
    numpy.ndarray
        ``ε(α)`` for each order, float64 (possibly ``inf``).

    Raises
    ------
    InvalidParameterError
        If an order is invalid, ``noise_multiplier`` is NaN/inf/negative, ``sample_rate`` is outside
        ``(0, 1]`` or ``steps`` is not a non-negative integer.
    """
    a = _alphas(alphas)
    sigma = _non_negative("noise_multiplier", noise_multiplier)
    q = _sample_rate(sample_rate)
    n_steps = _steps(steps)
    if n_steps == 0:
        return np.zeros_like(a)
    if sigma == 0.0 or sigma * sigma == 0.0:
        return np.full_like(a, np.inf)
    inv_two_s2 = 0.5 / (sigma * sigma)
    if q == 1.0:
        with np.errstate(over="ignore"):  # overflow to inf is the right answer here
            return np.asarray(a * inv_two_s2 * n_steps, dtype=np.float64)
    out = np.empty_like(a)
    for i, alpha in enumerate(a.tolist()):
        if alpha * alpha * inv_two_s2 > _HUGE_EXPONENT:
            # The exponents (k² - k)/(2σ²) with k ~ α would overflow; the curve is astronomically large there
            # (≈ α/(2σ²)), so report no privacy rather than risk inf - inf.
            log_a = math.inf
        elif alpha > _MAX_EXACT_ORDER:
            # Cost is O(α) terms: past this order report the plain-Gaussian value α/(2σ²), an upper bound
            # (subsampling never hurts, by joint quasi-convexity of the Rényi divergence).
            log_a = (alpha - 1.0) * alpha * inv_two_s2
        elif float(alpha).is_integer():
            log_a = _log_a_integer(int(alpha), q, sigma)
        elif sigma >= _HERMITE_MIN_SIGMA and alpha <= _HERMITE_MAX_ALPHA_OVER_SIGMA * sigma:
            log_a = _log_a_hermite(alpha, q, sigma)
        else:
            log_a = _log_a_fractional(alpha, q, sigma)
        out[i] = log_a / (alpha - 1.0)
    with np.errstate(over="ignore"):
        return np.asarray(out * n_steps, dtype=np.float64)


# --------------------------------------------------------------------------------------------------------
# Conversion to (ε, δ) and calibration
# --------------------------------------------------------------------------------------------------------


def _epsilon_candidates(a: FloatArray, r: FloatArray, delta: float, conversion: str) -> FloatArray:
    """ε(α) bound at each order, before the minimisation; ``inf`` where the curve is ``inf``."""
    return np.asarray(r + conversion_penalty(a, delta, Conversion.parse(conversion)), dtype=np.float64)


def rdp_to_epsilon(
    alphas: npt.ArrayLike, rdp: npt.ArrayLike, delta: float, conversion: str = "balle"
) -> tuple[float, float]:
    """Convert an RDP curve into an ``(ε, δ)``-DP guarantee, optimising over the orders.

    * ``"classic"`` (Mironov 2017, Prop. 3): ``ε = min_α [ r(α) + ln(1/δ)/(α-1) ]``.
    * ``"balle"`` (Balle et al. 2020, Thm. 21): ``ε = min_α [ r(α) + ln((α-1)/α) - (ln δ + ln α)/(α-1) ]``,
      clamped at 0. It is never looser than ``"classic"``.

    Parameters
    ----------
    alphas : array_like
        1-D sequence of Rényi orders, each finite and > 1.
    rdp : array_like
        RDP value at each order: same length, each ``>= 0`` and not NaN (``inf`` is allowed).
    delta : float
        Target δ in ``(0, 1)``.
    conversion : {"balle", "classic"}, default "balle"
        Which conversion theorem to use.

    Returns
    -------
    (float, float)
        ``(epsilon, best_alpha)``: the smallest bound and the order that attains it. If the curve is ``inf``
        everywhere, ``epsilon`` is ``inf`` and ``best_alpha`` is the first order.

    Raises
    ------
    InvalidParameterError
        On an invalid order, a length mismatch, a NaN or negative RDP value, ``delta`` outside ``(0, 1)``, or
        an unknown conversion name.
    """
    a = _alphas(alphas)
    try:
        r = np.asarray(rdp, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidParameterError(f"rdp must be a 1-D sequence of real numbers, got {rdp!r}") from exc
    if r.shape != a.shape:
        raise InvalidParameterError(f"rdp must have the same length as alphas ({a.size}), got shape {r.shape}")
    bad = np.flatnonzero(np.isnan(r) | (r < 0.0))
    if bad.size:
        i = int(bad[0])
        raise InvalidParameterError(f"every rdp value must be >= 0 (inf allowed), got rdp[{i}] = {float(r[i])!r}")
    dlt = _open_unit("delta", delta)
    conv = _conversion(conversion)
    eps = _epsilon_candidates(a, r, dlt, conv)
    idx = int(np.argmin(eps))
    best = float(eps[idx])
    if conv == "balle":
        best = max(best, 0.0)
    return best, float(a[idx])


def calibrate_noise_multiplier(
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    alphas: npt.ArrayLike,
    conversion: str = "balle",
    tol: float = 0.01,
) -> float:
    """Smallest DP-SGD noise multiplier whose composed curve gives ``ε <= target_epsilon`` at ``delta``.

    ε is non-increasing in σ, so a bisection on ``[lo, hi]`` keeps ``ε(lo) > target >= ε(hi)`` and stops when
    ``hi - lo <= tol``; ``hi`` is returned. Hence the result meets the target and ``result - tol`` does not
    (when ``result >= tol``).

    Parameters
    ----------
    target_epsilon : float
        Target ε, finite and > 0.
    delta : float
        Target δ in ``(0, 1)``.
    sample_rate : float
        Poisson sampling probability in ``(0, 1]``.
    steps : int
        Number of steps, a non-negative integer. With ``steps == 0`` nothing is released and 0.0 is returned.
    alphas : array_like
        The order grid used for accounting (each finite and > 1).
    conversion : {"balle", "classic"}, default "balle"
        RDP to (ε, δ) conversion, see :func:`rdp_to_epsilon`.
    tol : float, default 0.01
        Absolute tolerance on σ, finite and > 0.

    Returns
    -------
    float
        The noise multiplier σ.

    Raises
    ------
    InvalidParameterError
        On an invalid argument, or if no finite σ reaches the target (even σ → ∞ leaves the conversion term
        ``ln(1/δ)/(α-1)`` — or its Balle analogue — above ``target_epsilon`` on this grid).
    """
    target = _positive("target_epsilon", target_epsilon)
    dlt = _open_unit("delta", delta)
    q = _sample_rate(sample_rate)
    n_steps = _steps(steps)
    a = _alphas(alphas)
    conv = _conversion(conversion)
    tolerance = _positive("tol", tol)
    if n_steps == 0:
        return 0.0
    floor, _ = rdp_to_epsilon(a, np.zeros_like(a), dlt, conv)
    if floor >= target:
        raise InvalidParameterError(
            f"target_epsilon={target_epsilon!r} is unattainable at delta={delta!r} on this alpha grid: even "
            f"infinite noise gives epsilon {floor!r}"
        )

    def epsilon_at(sigma: float) -> float:
        return rdp_to_epsilon(a, subsampled_gaussian_rdp(a, sigma, q, n_steps), dlt, conv)[0]

    lo, hi = 0.0, 1.0  # ε(0) = inf > target
    while epsilon_at(hi) > target:
        lo, hi = hi, 2.0 * hi
        if hi > _CALIBRATION_SIGMA_MAX:
            raise InvalidParameterError(
                f"target_epsilon={target_epsilon!r} needs a noise multiplier above {_CALIBRATION_SIGMA_MAX:g}"
            )
    while hi - lo > tolerance:
        mid = 0.5 * (lo + hi)
        if epsilon_at(mid) > target:
            lo = mid
        else:
            hi = mid
    return hi
