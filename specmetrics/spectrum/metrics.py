"""Pure functions of an eigenvalue spectrum (the ESD of ``W^T W``).

Every function takes the eigenvalues ``lambda_i = s_i^2`` (squared singular values
of the raw weight matrix, no ``1/N`` normalisation, as WeightWatcher) as a 1-D
float64 numpy array and returns plain Python numbers, with WeightWatcher's
definitions and names:

=====================  ===========================================================
``norm``               ``sum lambda`` (squared Frobenius norm)
``log_norm``           ``log10 norm``
``spectral_norm``      ``max lambda`` (squared largest singular value)
``log_spectral_norm``  ``log10 spectral_norm``
``alpha_weighted``     ``alpha * log10 lambda_max`` (alpha-hat)
``log_alpha_norm``     ``log10 sum lambda^alpha``
``stable_rank``        ``norm / spectral_norm``
``matrix_rank``        ``#(s > s_max * N * eps)``
``entropy``            ``-sum p ln p / ln rank``, ``p = lambda / norm`` (+1e-10)
``rank_loss``          ``M - matrix_rank``
``weak_rank_loss``     ``#(lambda < 1e-6)``
=====================  ===========================================================

The Marchenko-Pastur bulk fit (:func:`mp_fit`) and :func:`rand_distance` follow
WeightWatcher's ``mp_fit=True`` / ``randomize=True`` columns; see their docstrings
for where they differ (a seeded shuffle; a least-squares density fit).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = [
    "norm_metrics",
    "matrix_rank",
    "matrix_entropy",
    "mp_fit",
    "rand_distance",
    "WEAK_RANK_TOLERANCE",
]

WEAK_RANK_TOLERANCE = 1e-6
_ENTROPY_EPS = 1e-10
_NORM_KEYS = (
    "norm", "log_norm", "spectral_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm",
    "stable_rank", "matrix_rank", "entropy", "rank_loss", "weak_rank_loss", "lambda_max", "sv_max",
    "sv_min", "num_evals",
)


def matrix_rank(evals: np.ndarray, n: int) -> int:
    """Numerical rank from the eigenvalues: ``#(s > s_max * n * eps)``, ``s = sqrt(lambda)``.

    Parameters
    ----------
    evals : ndarray, shape (M,)
        Eigenvalues of ``W^T W``.
    n : int
        Largest side ``N`` of ``W``.
    """
    s = np.sqrt(np.clip(np.asarray(evals, dtype=np.float64), 0.0, None))
    if s.size == 0:
        return 0
    tol = s.max() * n * np.finfo(np.float64).eps
    return int(np.count_nonzero(s > tol))


def matrix_entropy(evals: np.ndarray, n: int) -> float:
    """Normalised spectral entropy ``-sum p ln p / ln rank`` in [0, 1] (WeightWatcher's).

    ``p = lambda / sum lambda + 1e-10`` as in WeightWatcher, so a flat spectrum gives
    ``1 + O(M * 1e-10)``. A matrix of rank 1 gives 0 (WeightWatcher divides by
    ``ln(1 + 1e-10)`` and reports values in the hundreds); rank 0 gives NaN.
    """
    rank = matrix_rank(evals, n)
    if rank == 0:
        return math.nan
    if rank == 1:
        return 0.0
    rank = rank + _ENTROPY_EPS
    p = evals / np.sum(evals) + _ENTROPY_EPS
    return float(-np.sum(p * np.log(p)) / np.log(rank))


def norm_metrics(evals: np.ndarray, n: int, alpha: float) -> dict[str, Any]:
    """Norm-based metrics of one spectrum.

    Parameters
    ----------
    evals : ndarray, shape (M,)
        All ``M`` eigenvalues of ``W^T W`` (zeros included).
    n : int
        Largest side ``N`` of ``W`` (enters the rank tolerance).
    alpha : float
        Power-law exponent for ``alpha_weighted`` and ``log_alpha_norm`` (NaN allowed).

    Returns
    -------
    dict
        ``norm, log_norm, spectral_norm, log_spectral_norm, alpha_weighted,
        log_alpha_norm, stable_rank, matrix_rank, entropy, rank_loss,
        weak_rank_loss, lambda_max, sv_max, sv_min, num_evals``.
    """
    evals = np.asarray(evals, dtype=np.float64).reshape(-1)
    if evals.size == 0 or not np.all(np.isfinite(evals)):
        # no spectrum (empty, or a NaN/inf weight): every metric is undefined
        out = dict.fromkeys(_NORM_KEYS, math.nan)
        out["num_evals"] = int(evals.size)
        return out
    total = float(np.sum(evals))
    lmax = float(np.max(evals))
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        log_lmax = math.log10(lmax) if lmax > 0 else -math.inf
        rank = matrix_rank(evals, n)
        out = {
            "norm": total,
            "log_norm": math.log10(total) if total > 0 else -math.inf,
            "spectral_norm": lmax,
            "log_spectral_norm": log_lmax,
            "alpha_weighted": alpha * log_lmax if math.isfinite(alpha) else math.nan,
            "log_alpha_norm": float(np.log10(np.sum(evals**alpha))) if math.isfinite(alpha) else math.nan,
            "stable_rank": total / lmax if lmax > 0 else math.nan,
            "matrix_rank": rank,
            "entropy": matrix_entropy(evals, n) if total > 0 else math.nan,
            "rank_loss": int(len(evals) - rank),
            "weak_rank_loss": int(np.count_nonzero(evals < WEAK_RANK_TOLERANCE)),
            "lambda_max": lmax,
            "sv_max": math.sqrt(lmax),
            "sv_min": math.sqrt(max(float(np.min(evals)), 0.0)),
            "num_evals": int(len(evals)),
        }
    return out


# ---------------------------------------------------------------------------
# Marchenko-Pastur bulk
# ---------------------------------------------------------------------------


def _linear_kde(points: np.ndarray, grid: np.ndarray, bandwidth: float) -> np.ndarray:
    """Linear-kernel density estimate ``(1/(n h)) sum max(0, 1 - |x - x_i| / h)``."""
    out = np.zeros_like(grid)
    for start in range(0, len(points), 512):
        chunk = points[start : start + 512]
        out += np.clip(1.0 - np.abs(grid[:, None] - chunk[None, :]) / bandwidth, 0.0, None).sum(axis=1)
    return out / (len(points) * bandwidth)


def _mp_residual(sigma: float, xde: np.ndarray, yde: np.ndarray, q: float) -> float:
    """WeightWatcher's ``resid_mp``: squared distance of the MP density to the KDE."""
    if q == 1.0:
        with np.errstate(invalid="ignore"):
            ymp = np.nan_to_num(1 / (np.pi * sigma * sigma) * np.sqrt(4 - xde**2))
        return float(np.sum((ymp - yde) ** 2))
    b = (sigma * (1 + math.sqrt(1 / q))) ** 2
    a = (sigma * (1 - math.sqrt(1 / q))) ** 2
    x_peak = xde[np.argmax(yde)]
    if b < x_peak or b > xde.max() or a > x_peak:
        return 1000.0**2 * len(yde)
    with np.errstate(invalid="ignore", divide="ignore"):
        ymp = np.nan_to_num(q / (2 * np.pi * sigma * sigma * xde) * np.sqrt((b - xde) * (xde - a)))
    return float(np.sum((ymp - yde) ** 2))


def mp_fit(evals: np.ndarray, n: int, m: int, *, bandwidth: float = 0.1) -> dict[str, float]:
    """Fit the Marchenko-Pastur bulk of a spectrum and count the spikes above it.

    Follows WeightWatcher's ``mp_fit``: the spectrum is rescaled by
    ``W_scale^2 = M / sum(lambda)``; a linear-kernel density estimate (bandwidth
    0.1) on 1000 points of ``[0, max + 0.5]`` (points with density <= 0.01
    dropped) is compared with the MP density (the quarter-circle law on singular
    values when ``Q = 1``); ``sigma`` minimises the squared residual on the grid
    ``[0.05, 2) * s_c`` in steps of ``0.01 s_c`` (``s_c = sqrt(lambda_max) /
    (1 + Q^-1/2)``), then a Nelder-Mead polish, as ``scipy.optimize.brute`` does.
    The bulk edge is ``(sigma (1 + Q^-1/2))^2``; spikes are the rescaled
    eigenvalues above the edge plus the Tracy-Widom margin
    ``sqrt(Q^-1/2 edge^(2/3) M^(-2/3))``.

    The density estimate is computed once rather than once per ``sigma``, and in
    numpy rather than scikit-learn, so the result equals WeightWatcher's up to the
    optimiser's tolerance (see the conformance tests for the measured agreement).

    Parameters
    ----------
    evals : ndarray, shape (M,)
        Eigenvalues of ``W^T W``.
    n, m : int
        Largest and smallest side of ``W`` (``Q = n / m``).

    Returns
    -------
    dict
        ``sigma_mp, bulk_max, bulk_min, num_spikes, mp_softrank, W_scale``, with
        ``bulk_max`` and ``bulk_min`` in the units of ``evals``.
    """
    from scipy import optimize

    evals = np.asarray(evals, dtype=np.float64)
    if evals.size == 0 or not np.all(np.isfinite(evals)) or not float(np.sum(evals)) > 0:
        # no bulk to fit (a NaN/inf weight, or W = 0); WeightWatcher reports -1 sentinels here
        return dict.fromkeys(("sigma_mp", "bulk_max", "bulk_min", "num_spikes", "mp_softrank", "W_scale"), math.nan)
    q = n / m
    w_scale = math.sqrt(len(evals)) / math.sqrt(float(np.sum(evals)))
    x = evals * w_scale**2
    lmax = float(np.max(x))
    to_fit = np.sqrt(x) if q == 1.0 else x
    xde = np.linspace(0.0, float(np.max(to_fit)) + 0.5, 1000)
    yde = _linear_kde(to_fit, xde, bandwidth)
    keep = yde > 0.01
    xde, yde = xde[keep], yde[keep]
    s_c = math.sqrt(lmax) / (1 + 1 / math.sqrt(q))
    grid = (slice(0.05 * s_c, 2.0 * s_c, 0.01 * s_c),)
    sigma = float(np.atleast_1d(optimize.brute(lambda p: _mp_residual(float(np.atleast_1d(p)[0]), xde, yde, q), grid))[0])
    bulk_max = (sigma * (1 + 1 / math.sqrt(q))) ** 2
    bulk_min = (sigma * (1 - 1 / math.sqrt(q))) ** 2
    tw = 1 / math.sqrt(q) * bulk_max ** (2 / 3) * m ** (-2 / 3)
    num_spikes = int(np.count_nonzero(x > bulk_max + math.sqrt(tw)))
    return {
        "sigma_mp": sigma,
        "bulk_max": bulk_max / w_scale**2,
        "bulk_min": bulk_min / w_scale**2,
        "num_spikes": num_spikes,
        "mp_softrank": bulk_max / lmax,
        "W_scale": w_scale,
    }


def rand_distance(evals: np.ndarray, rand_evals: np.ndarray) -> float:
    """Jensen-Shannon distance between a spectrum and that of the shuffled matrix.

    WeightWatcher's definition: both sorted eigenvalue vectors are normalised to
    probability vectors (``scipy.stats.entropy`` normalises) and compared entry by
    entry. ``rand_evals`` should come from a seeded element shuffle of ``W``.
    """
    from scipy import stats

    p = np.sort(np.asarray(evals, dtype=np.float64))
    q = np.sort(np.asarray(rand_evals, dtype=np.float64))
    mid = (p + q) / 2
    return float(np.sqrt((stats.entropy(p, mid) + stats.entropy(q, mid)) / 2))
