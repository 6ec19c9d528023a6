"""The sparse-coding metrics of Deng, Tao & Benton (2023), their sampling errors and the oracle.

Definitions
-----------
For data ``X`` (n samples ``x_j`` of dimension d), a dictionary ``Φ`` (d × m, unit columns),
the greedy non-negative codes ``α_j`` (:mod:`~specmetrics.sparse_coding.coding`) and the ℓ1
weight ``λ``:

- ``N₀ = mean_j ‖α_j‖₀``: mean number of non-zero coefficients per sample;
- the loss ``L = (1/n) Σ_j (‖x_j − Φ α_j‖² + λ ‖α_j‖₁)``, in the squared units of the data;
- the average coefficient norm, a **ratio of means**, ``S₁ = mean_j ‖α_j‖₁ / mean_j max_i α_ij``
  (not the mean of per-sample ratios, which is undefined for a sample without an active atom
  and is dominated by samples with one tiny coefficient);
- the normalised loss ``L_norm = L / (λ · mean_j max_i α_ij)``. Under perfect reconstruction it
  equals ``S₁``; otherwise it is larger. It is the number the paper reports for language models,
  and the one :func:`~specmetrics.sparse_coding.estimate_sparsity` puts first.

``λ`` is *adaptive*: by default it is the fixed point ``λ = κ · mean_j max_i α_ij(λ)`` with
``κ = lambda_ratio = 0.1`` (the paper's "0.1 × the average maximum coefficient"), found by
iterating ``λ ← κ M(λ)``, a contraction (``M`` falls by about ``λ/2`` when ``λ`` grows, so each
iteration shrinks the error about twentyfold). Every metric above is then invariant to rescaling
the data: ``α``, ``λ`` and ``max α`` scale with the data, ``L`` with its square.

Sampling errors: both ``S₁`` and ``L_norm`` are ratios of two sample means ``Ȳ / X̄``; their
standard error is the delta-method ``sqrt(Var(Y − R X) / n) / X̄`` (:func:`ratio_of_means`).

The oracle
----------
For the planted coefficients of :func:`~specmetrics.sparse_coding.make_sparse_linear` (each of
``m`` features active with probability ``p = a/m``, values ``U(0, 1)``), the number ``K`` of
active features is ``Binomial(m, p)``; ``E‖α‖₁ = a/2`` and ``E max α = E[K/(K+1)] =
1 − E[1/(K+1)] = 1 − (1 − (1 − p)^{m+1}) / ((m + 1) p)``, so

    ``S₁* = (a/2) / (1 − (1 − (1 − p)^{m+1}) / ((m + 1) p))``

which for large ``m`` is the Poisson form ``(a/2) / (1 − (1 − e^{−a}) / a)`` (1.7616 at
``a = 2``). :func:`oracle_s1` computes either; :func:`implied_a` inverts it, turning a measured
``S₁`` or ``L_norm`` into an equivalent number of active features per sample.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import torch

from .._validation import check_interval, check_positive_int, check_real, fail
from ._checks import check_matrix

__all__ = ["oracle_s1", "implied_a", "ratio_of_means", "coefficient_s1", "CodingMetrics",
           "metrics_from_summary"]


def oracle_s1(a: float, *, n_features: Optional[int] = None) -> float:
    """``S₁`` of the planted coefficients of sparse linear data (see the module notes).

    Parameters
    ----------
    a : float
        Expected number of active features per sample (> 0).
    n_features : int, optional
        Number of planted features ``m``: the exact Binomial form; ``None``: the Poisson limit
        ``(a/2) / (1 − (1 − e^{−a}) / a)``.

    Returns
    -------
    float

    Examples
    --------
    >>> round(oracle_s1(2.0), 4)
    1.7616
    """
    func = "oracle_s1"
    a = check_real(a, name="a", func=func, requirement="a real number > 0")
    if not a > 0:
        raise fail("a", func, "a real number > 0", a)
    if n_features is None:
        # 1 - (1 - e^-a)/a, written with expm1 for small a
        mean_max = 1.0 + math.expm1(-a) / a
    else:
        m = check_positive_int(n_features, name="n_features", func=func)
        if a > m:
            raise fail("a", func, f"at most n_features = {m}", a)
        p = a / m
        # (1 - p)^(m+1) as exp((m+1) log1p(-p)), exact enough for tiny p
        tail = -math.expm1((m + 1) * math.log1p(-p)) if p < 1 else 1.0
        mean_max = 1.0 - tail / ((m + 1) * p)
    return (a / 2.0) / mean_max


def implied_a(s1: float, *, n_features: Optional[int] = None, rtol: float = 1e-12) -> float:
    """The ``a`` whose oracle ``S₁`` equals ``s1``: an equivalent number of active features.

    ``oracle_s1`` increases from 1 (``a → 0``) without bound (about ``a/2 + 1/2`` for large
    ``a``), so every ``s1 >= 1`` has one preimage (found by bisection); ``s1 < 1`` gives NaN
    (``S₁`` and ``L_norm`` are never below 1 for a real coding). With ``n_features`` the search is
    limited to ``a <= n_features`` (NaN beyond).

    Examples
    --------
    >>> round(implied_a(oracle_s1(6.0)), 9)
    6.0
    """
    func = "implied_a"
    s1 = check_real(s1, name="s1", func=func)
    rtol = check_interval(rtol, 0.0, 1.0, name="rtol", func=func, closed="neither")
    if n_features is not None:
        n_features = check_positive_int(n_features, name="n_features", func=func)
    if s1 < 1.0:
        return math.nan
    lo, hi = 1e-12, max(4.0, 2.0 * s1 + 4.0)
    if n_features is not None:
        hi = min(hi, float(n_features))
        if oracle_s1(hi, n_features=n_features) < s1:
            return math.nan
    if oracle_s1(lo, n_features=n_features) >= s1:
        return lo
    while hi - lo > rtol * hi:
        mid = 0.5 * (lo + hi)
        if oracle_s1(mid, n_features=n_features) < s1:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def ratio_of_means(num: torch.Tensor, den: torch.Tensor) -> tuple[float, float]:
    """``mean(num) / mean(den)`` and its delta-method standard error.

    ``se = sqrt(Var(num − R den) / n) / mean(den)`` with ``R`` the ratio (float64). NaN when the
    mean of ``den`` is 0; the error is NaN for fewer than two samples.
    """
    num = num.to(torch.float64).flatten()
    den = den.to(torch.float64).flatten()
    n = int(num.numel())
    mean_den = float(den.mean()) if n else math.nan
    if n == 0 or mean_den == 0 or not math.isfinite(mean_den):
        return math.nan, math.nan
    ratio = float(num.mean()) / mean_den
    if n < 2:
        return ratio, math.nan
    resid = num - ratio * den
    se = math.sqrt(float(resid.var(unbiased=True)) / n) / abs(mean_den)
    return ratio, se


def coefficient_s1(coefficients: torch.Tensor) -> tuple[float, float]:
    """``S₁`` of given coefficients (a ratio of means) and its standard error.

    Parameters
    ----------
    coefficients : torch.Tensor, shape (n, m)
        Non-negative coefficients, one sample per row (e.g. the planted
        ``SyntheticActivations.coefficients``).

    Returns
    -------
    (float, float)
        ``mean_j ‖α_j‖₁ / mean_j max_i α_ij`` and its delta-method standard error.
    """
    alpha = check_matrix(coefficients, name="coefficients", func="coefficient_s1",
                         nonnegative=True)
    return ratio_of_means(alpha.sum(dim=1, dtype=torch.float64),
                          alpha.max(dim=1).values.to(torch.float64))


@dataclass(frozen=True)
class CodingMetrics:
    """The metrics of one coding of a data set with one dictionary (see the module notes).

    Attributes
    ----------
    n0 : float
        Mean number of non-zero coefficients per sample.
    loss : float
        ``L``, in the squared units of the data.
    s1 : float
        Average coefficient norm (ratio of means).
    normalized_loss : float
        ``L_norm = L / (λ mean max α)``.
    s1_se, normalized_loss_se : float
        Delta-method standard errors over the samples.
    lam : float
        The ℓ1 weight λ used, in the units of the data.
    lambda_ratio : float or None
        κ of the adaptive λ (``None`` when λ was given).
    mean_l1, mean_max : float
        ``mean_j ‖α_j‖₁`` and ``mean_j max_i α_ij`` in the units of the data.
    relative_mse : float
        ``Σ_j ‖x_j − Φα_j‖² / Σ_j ‖x_j‖²``.
    capped_fraction : float
        Fraction of samples whose coding hit ``max_atoms`` (0 when every coding finished).
    unused_fraction : float
        Fraction of atoms no sample uses.
    n_samples, n_features : int
    lambda_iterations : int
        Fixed-point iterations spent on λ (0 when it was given).
    """

    n0: float
    loss: float
    s1: float
    normalized_loss: float
    s1_se: float
    normalized_loss_se: float
    lam: float
    lambda_ratio: Optional[float]
    mean_l1: float
    mean_max: float
    relative_mse: float
    capped_fraction: float
    unused_fraction: float
    n_samples: int
    n_features: int
    lambda_iterations: int = 0

    def as_dict(self) -> dict:
        """The fields as a plain ``dict``."""
        return asdict(self)


def metrics_from_summary(summary, lam: float, *, scale: float = 1.0,
                         lambda_ratio: Optional[float] = None, lambda_iterations: int = 0,
                         total_energy: Optional[float] = None) -> CodingMetrics:
    """:class:`CodingMetrics` from a :class:`~specmetrics.sparse_coding.coding.CodeSummary`
    computed on data divided by ``scale`` (``lam`` in those units; reported in data units)."""
    n = int(summary.l1.numel())
    s1, s1_se = ratio_of_means(summary.l1, summary.max)
    per_sample_loss = summary.residual + lam * summary.l1
    lnorm, lnorm_se = ratio_of_means(per_sample_loss / lam, summary.max)
    if total_energy is None or total_energy <= 0:
        rel = math.nan
    else:
        rel = float(summary.residual.sum()) / total_energy
    usage = summary.usage
    return CodingMetrics(
        n0=float(summary.nnz.mean()), loss=float(per_sample_loss.mean()) * scale * scale,
        s1=s1, normalized_loss=lnorm, s1_se=s1_se, normalized_loss_se=lnorm_se,
        lam=lam * scale, lambda_ratio=lambda_ratio,
        mean_l1=float(summary.l1.mean()) * scale, mean_max=float(summary.max.mean()) * scale,
        relative_mse=rel, capped_fraction=float(summary.capped.to(torch.float64).mean()),
        unused_fraction=float((usage == 0).to(torch.float64).mean()), n_samples=n,
        n_features=int(usage.numel()), lambda_iterations=int(lambda_iterations))
