"""The power-law fit of the top of a Hessian spectrum (Xie et al. 2022).

The top ``K`` eigenvalues ``lambda_1 >= ... >= lambda_K`` of trained networks' Hessians follow
``lambda_k ~ k^(-s)``. Read as a density above ``lambda_K``, ``p(lambda) ~ lambda^(-beta)`` with
``s = 1 / (beta - 1)``; the maximum-likelihood (Hill) estimate is

    beta = 1 + K / sum_i ln(lambda_i / lambda_K),   se(beta) = (beta - 1) / sqrt(K),

which is the library's power-law fit (:func:`specmetrics.spectrum.fit_power_law`) with
``xmin = lambda_K`` and no eigenvalue threshold, so this module calls it and returns its
:class:`~specmetrics.spectrum.PowerLawFit`. The fit is judged by the Kolmogorov-Smirnov test:
the distance ``sup |F_K - F|`` between the empirical distribution of the ``K`` eigenvalues and the
fitted one, compared with ``1.36 / sqrt(K)`` (the 5 % critical value); Xie et al. report trained
small networks at ``s`` about 1.0-1.1 passing the test and random ones failing it. The distance
here takes both sides of every step of the empirical distribution (the library's weight-spectrum
fit reports WeightWatcher's one-sided convention, which can be smaller by up to ``1/K``).

References
----------
.. [1] Z. Xie, Q.-Y. Tang, Y. Cai, M. Sun, P. Li, "On the power-law Hessian spectrums in deep
   learning", arXiv:2201.13011 (2022).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Optional

import numpy as np

from .._validation import check_bool, check_int, fail
from ..exceptions import DegenerateSpectrumWarning
from .results import HessianEigen, HessianPowerLaw

__all__ = ["fit_hessian_power_law", "ks_two_sided", "KS_COEFFICIENT"]

#: The 5 % critical value of the one-sample KS test is about ``1.36 / sqrt(K)``.
KS_COEFFICIENT = 1.36
_FUNC = "fit_hessian_power_law"


def ks_two_sided(eigenvalues: np.ndarray, beta: float) -> float:
    """``sup |F_K - F|`` for the power law ``F(x) = 1 - (x / x_min)^(1 - beta)`` above the
    smallest of ``eigenvalues`` (both sides of each step of the empirical ``F_K``)."""
    x = np.sort(np.asarray(eigenvalues, dtype=np.float64))
    K = x.shape[0]
    F = 1.0 - (x / x[0]) ** (1.0 - beta)
    j = np.arange(1, K + 1)
    return float(max(np.max(np.abs(j / K - F)), np.max(np.abs(F - (j - 1) / K))))


def _values(eigenvalues: Any) -> np.ndarray:
    if isinstance(eigenvalues, HessianEigen):
        if eigenvalues.which not in ("LA", "LM"):
            raise fail("eigenvalues", _FUNC, "the top of the spectrum (which='LA' or 'LM')",
                       f"HessianEigen with which={eigenvalues.which!r}")
        return np.asarray(eigenvalues.values, dtype=np.float64)
    if hasattr(eigenvalues, "detach"):
        eigenvalues = eigenvalues.detach().cpu().numpy()
    try:
        arr = np.asarray(eigenvalues)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.dtype.kind not in "fiu" or arr.ndim != 1:
        raise fail("eigenvalues", _FUNC, "a HessianEigen or a 1-D array of real numbers",
                   type(eigenvalues).__name__ if arr is None else
                   f"an array of dtype {arr.dtype} and shape {arr.shape}")
    return arr.astype(np.float64)


def fit_hessian_power_law(eigenvalues: Any, *, k: Optional[int] = None,
                          warn: bool = True) -> HessianPowerLaw:
    """Fit ``lambda_k ~ k^(-s)`` to the top eigenvalues of a Hessian and test it.

    Parameters
    ----------
    eigenvalues : HessianEigen or array-like, shape (n,)
        Top eigenvalues (any order); only positive ones are fitted.
    k : int, optional
        Fit the largest ``k`` (default: every positive eigenvalue given). At least 2; a fit of
        fewer than :data:`specmetrics.spectrum.MIN_TAIL` (8) eigenvalues is reported as failed.
    warn : bool, default True
        Emit :class:`~specmetrics.DegenerateSpectrumWarning` when the fit fails.

    Returns
    -------
    HessianPowerLaw
        ``s``, ``s_error``, ``beta``, ``beta_error``, the KS distance, threshold and verdict
        (``power_law``), and ``fit``, the :class:`~specmetrics.spectrum.PowerLawFit`. A fit that
        cannot succeed (too few positive eigenvalues, all equal, NaN) has ``success=False``,
        NaN exponents and a message; it does not raise.

    Raises
    ------
    ParameterError
        For input that is not a spectrum, or ``k`` above the number of positive eigenvalues.

    Examples
    --------
    >>> import numpy as np
    >>> lam = 10.0 * np.arange(1, 201) ** -1.0       # lambda_k = 10 / k
    >>> fit = fit_hessian_power_law(lam)
    >>> round(fit.s, 2), fit.power_law
    (0.98, True)
    """
    from ..spectrum import MIN_TAIL, fit_power_law

    values = _values(eigenvalues)
    warn = check_bool(warn, name="warn", func=_FUNC)
    if not np.all(np.isfinite(values)):
        return _failed("the eigenvalues contain NaN or inf", values, warn)
    positive = np.sort(values[values > 0])[::-1]
    if k is not None:
        k = check_int(k, name="k", func=_FUNC, minimum=2, maximum=max(2, positive.shape[0]))
        if k > positive.shape[0]:
            raise fail("k", _FUNC, f"at most the number of positive eigenvalues "
                       f"({positive.shape[0]})", k)
        top = positive[:k]
    else:
        top = positive
    K = int(top.shape[0])
    if K < 2:
        return _failed(f"{K} positive eigenvalue(s): a power law needs at least {MIN_TAIL}",
                       top, warn)
    # a contiguous copy: fit_power_law rejects numpy views with negative strides
    fit = fit_power_law(np.ascontiguousarray(top), xmin=float(top[-1]), thresh=None, warn=False)
    if not fit.success:
        return _failed(fit.message, top, warn, fit=fit)
    beta = float(fit.alpha)
    D = ks_two_sided(top, beta)
    threshold = KS_COEFFICIENT / math.sqrt(K)
    fit = dataclasses.replace(fit, ks_distance=D, message=(
        f"top-{K} Hessian eigenvalues, xmin = lambda_K; two-sided KS distance"))
    s = 1.0 / (beta - 1.0)
    passed = bool(D < threshold)
    message = (f"power law {'not rejected' if passed else 'rejected'} by the KS test "
               f"(D={D:.3g} {'<' if passed else '>='} 1.36/sqrt({K})={threshold:.3g})")
    return HessianPowerLaw(fit=fit, s=s, s_error=s / math.sqrt(K), beta=beta,
                           beta_error=float(fit.sigma), ks_distance=D, ks_threshold=threshold,
                           power_law=passed, k=K, eigenvalues=top, success=True,
                           message=message, settings={"k": k, "n_given": int(values.shape[0])})


def _failed(message: str, top: np.ndarray, warn: bool, fit=None) -> HessianPowerLaw:
    from ..spectrum import PowerLawFit

    if warn:
        warnings.warn(f"{_FUNC}: {message}", DegenerateSpectrumWarning, stacklevel=3)
    nan = math.nan
    if fit is None:
        fit = PowerLawFit(nan, nan, nan, nan, nan, 0, False, message, "fixed")
    K = int(np.asarray(top).shape[0])
    return HessianPowerLaw(fit=fit, s=nan, s_error=nan, beta=nan, beta_error=nan,
                           ks_distance=nan, ks_threshold=KS_COEFFICIENT / math.sqrt(K) if K
                           else nan, power_law=False, k=K, eigenvalues=np.asarray(top),
                           success=False, message=message, settings={})
