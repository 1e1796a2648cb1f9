"""Bjøntegaard delta metrics (BD-rate, BD-PSNR) between two rate-distortion curves.

Implements G. Bjøntegaard, "Calculation of average PSNR differences between
RD-curves", ITU-T SG16/Q6 VCEG-M33 (2001):

- **BD-rate** (%): fit ``log(rate)`` as a function of distortion (e.g. PSNR) for
  each curve, integrate both fits over the distortion interval the two curves
  share, and turn the average difference into a percentage,
  ``(exp(diff) - 1) * 100``. Negative values mean that the test curve needs
  fewer bits than the anchor for the same quality.
- **BD-PSNR** (dB): the other way round, distortion as a function of
  ``log(rate)``, averaged over the shared log-rate interval.

Two fits are available: ``"cubic"`` (the least-squares cubic polynomial of
VCEG-M33) and ``"pchip"`` (scipy's monotone piecewise-cubic Hermite
interpolation through the sorted points, as in later VCEG/JVET spreadsheets).

Example::

    >>> round(bd_rate([1, 2, 3, 4], [30, 32, 34, 36], [0.9, 1.8, 2.7, 3.6], [30, 32, 34, 36]), 6)
    -10.0
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike
from scipy.interpolate import PchipInterpolator

from encdist.errors import ConfigError

__all__ = ["BD_METHODS", "MIN_POINTS", "bd_rate", "bd_psnr", "validate_curve", "gap_share"]

#: Names of the supported curve fits.
BD_METHODS = ("cubic", "pchip")

#: A cubic fit needs at least four points.
MIN_POINTS = 4


def _label(name: str | None, default: str) -> str:
    return f"curve {name!r}" if name else default


def validate_curve(
    rate: ArrayLike, dist: ArrayLike, name: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Checks one RD curve and returns it as float arrays sorted by rate.

    Args:
        rate: rates (e.g. bpp), all positive.
        dist: quality values (e.g. PSNR in dB), one per rate.
        name: the curve's name, used in error messages.

    Raises:
        ConfigError: if the arrays differ in length, hold non-finite values or
            non-positive rates, or have fewer than :data:`MIN_POINTS` points.
    """
    return _validate(rate, dist, _label(name, "RD curve"))


def _validate(rate: ArrayLike, dist: ArrayLike, label: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        rate_ = np.asarray(rate, dtype=np.float64).reshape(-1)
        dist_ = np.asarray(dist, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{label} has non-numeric values ({e})") from None
    if rate_.shape != dist_.shape:
        raise ConfigError(
            f"{label} has {rate_.size} rates but {dist_.size} quality values"
        )
    if rate_.size < MIN_POINTS:
        raise ConfigError(
            f"{label} has {rate_.size} RD point(s); "
            f"BD metrics need at least {MIN_POINTS}"
        )
    if not (np.isfinite(rate_).all() and np.isfinite(dist_).all()):
        raise ConfigError(f"{label} has non-finite (NaN or inf) values")
    if (rate_ <= 0).any():
        raise ConfigError(f"{label} has non-positive rates; BD metrics need rate > 0")
    order = np.argsort(rate_, kind="stable")
    return rate_[order], dist_[order]


def _integral(
    x: np.ndarray, y: np.ndarray, lo: float, hi: float, method: str, label: str
) -> float:
    """Integral over ``[lo, hi]`` of the ``method`` fit of ``y`` as a function of ``x``."""
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    if method == "cubic":
        if np.unique(x).size < MIN_POINTS:
            raise ConfigError(f"{label} has fewer than {MIN_POINTS} distinct values to fit")
        poly = np.polyint(np.polyfit(x, y, 3))
        return float(np.polyval(poly, hi) - np.polyval(poly, lo))
    if np.any(np.diff(x) <= 0):
        raise ConfigError(f"{label} has repeated values; the pchip fit needs distinct ones")
    return float(PchipInterpolator(x, y).integrate(lo, hi))


def _bd_mean_difference(
    x_anchor: np.ndarray,
    y_anchor: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    method: str,
    labels: tuple[str, str],
    axis: str,
) -> float:
    """Mean of ``fit_test(x) - fit_anchor(x)`` over the shared ``x`` interval."""
    if method not in BD_METHODS:
        raise ConfigError(
            f"unknown BD method {method!r}; expected one of {', '.join(BD_METHODS)}"
        )
    lo = max(x_anchor.min(), x_test.min())
    hi = min(x_anchor.max(), x_test.max())
    if not hi > lo:
        raise ConfigError(
            f"{labels[1]} and {labels[0]} do not overlap in {axis} "
            f"([{x_test.min():.4g}, {x_test.max():.4g}] vs "
            f"[{x_anchor.min():.4g}, {x_anchor.max():.4g}])"
        )
    area_anchor = _integral(x_anchor, y_anchor, lo, hi, method, labels[0])
    area_test = _integral(x_test, y_test, lo, hi, method, labels[1])
    return (area_test - area_anchor) / (hi - lo)


def _curves(
    rate_anchor: ArrayLike,
    dist_anchor: ArrayLike,
    rate_test: ArrayLike,
    dist_test: ArrayLike,
    anchor_name: str | None,
    test_name: str | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, tuple[str, str]]:
    labels = (_label(anchor_name, "anchor curve"), _label(test_name, "test curve"))
    ra, da = _validate(rate_anchor, dist_anchor, labels[0])
    rt, dt = _validate(rate_test, dist_test, labels[1])
    return np.log(ra), da, np.log(rt), dt, labels


def bd_rate(
    rate_anchor: ArrayLike,
    dist_anchor: ArrayLike,
    rate_test: ArrayLike,
    dist_test: ArrayLike,
    method: str = "cubic",
    *,
    anchor_name: str | None = None,
    test_name: str | None = None,
) -> float:
    """Bjøntegaard delta rate of the test curve against the anchor, in percent.

    Args:
        rate_anchor: anchor rates (e.g. bpp), any order.
        dist_anchor: anchor quality (e.g. PSNR in dB), one per rate.
        rate_test: test rates.
        dist_test: test quality.
        method: ``"cubic"`` (VCEG-M33 polynomial fit) or ``"pchip"``.
        anchor_name: name of the anchor curve, for error messages.
        test_name: name of the test curve, for error messages.

    Returns:
        The average rate difference at equal quality, in percent (negative:
        the test curve saves bits).

    Raises:
        ConfigError: a curve has fewer than 4 points or bad values, the curves
            do not overlap in quality, or ``method`` is unknown.
    """
    lra, da, lrt, dt, labels = _curves(
        rate_anchor, dist_anchor, rate_test, dist_test, anchor_name, test_name
    )
    diff = _bd_mean_difference(da, lra, dt, lrt, method, labels, "quality")
    return float(np.expm1(diff) * 100.0)


def bd_psnr(
    rate_anchor: ArrayLike,
    dist_anchor: ArrayLike,
    rate_test: ArrayLike,
    dist_test: ArrayLike,
    method: str = "cubic",
    *,
    anchor_name: str | None = None,
    test_name: str | None = None,
) -> float:
    """Bjøntegaard delta quality (BD-PSNR, in the unit of ``dist``, e.g. dB).

    The arguments are those of :func:`bd_rate`. Returns the average quality
    difference of the test curve over the anchor at equal rate (positive: the
    test curve is better), averaged over the shared log-rate interval.
    """
    lra, da, lrt, dt, labels = _curves(
        rate_anchor, dist_anchor, rate_test, dist_test, anchor_name, test_name
    )
    return _bd_mean_difference(lra, da, lrt, dt, method, labels, "rate")


def gap_share(change: float | None, ideal_change: float | None) -> float | None:
    """Share (percent) of the static→ideal gap that a codec closes.

    ``change`` and ``ideal_change`` are rate changes against the same anchor (BD-rates,
    or rate changes at equal quality, in percent); 100 means the codec matches the
    ideal bound, more than 100 that it goes below it. None when either is missing or
    the ideal bound does not change the rate.
    """
    ok = lambda v: isinstance(v, (int, float)) and math.isfinite(v)  # noqa: E731
    if not ok(change) or not ok(ideal_change) or ideal_change == 0:
        return None
    return 100.0 * float(change) / float(ideal_change)
