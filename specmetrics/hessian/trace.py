"""Stochastic trace estimates of a Hessian operator, each with its standard error.

Three estimators, seeded, that return the spread their estimate comes from (curvlinops'
``hutchinson_trace``, ``hutchpp_trace`` and ``xtrace`` return the estimate only and draw from the
global random generator):

``"hutchinson"`` (Girard 1989, Hutchinson 1989)
    ``mean_i z_i^T A z_i`` over ``n`` probes with ``E[z z^T] = I``; standard error
    ``std(z_i^T A z_i) / sqrt(n)``. Per-probe variance ``2 (||A||_F^2 - sum_i A_ii^2)`` for
    Rademacher probes, ``2 ||A||_F^2`` for Gaussian ones. Memory: a block of probes.
``"hutch++"`` (Meyer, Musco, Musco and Woodruff 2021)
    A third of the products sketch the range, ``Q = orth(A S)``; a third give ``tr(Q^T A Q)``
    exactly; the last third run Hutchinson on the deflated ``(I - QQ^T) A (I - QQ^T)``. Its
    standard error is that of the Hutchinson part (the sketch part is exact given ``Q``; the
    estimate is unbiased given ``Q``). Memory: ``n/3`` vectors.
``"xtrace"`` (Epperly, Tropp and Webber 2024)
    ``n/2`` probes ``W`` (scaled to norm ``sqrt(dim)``), ``Y = A W = Q R``, ``Z = A Q``; the
    ``i``-th leave-one-out estimate uses the basis of ``Y`` without column ``i``
    (``Q (I - s_i s_i^T)``, ``s_i`` the normalised ``i``-th column of ``R^{-T}``) plus the
    Hutchinson term of probe ``i`` on its complement; the estimate is their mean and the standard
    error their standard deviation over ``sqrt(n/2)``, all from small ``(n/2) x (n/2)``
    matrices. Memory: ``n`` vectors.
``"exact"``
    ``dim`` products with the unit vectors (small operators).
"""
from __future__ import annotations

import math
import time
from typing import Any, Optional

import numpy as np
import torch

from .._validation import check_choice, check_int, check_seed, fail
from ._linear import DISTRIBUTIONS, LinearMap, as_linear, probes, seeded_generator
from .results import HessianTrace

__all__ = ["hessian_trace", "TRACE_METHODS", "DEFAULT_PROBES"]

TRACE_METHODS = ("hutch++", "hutchinson", "xtrace", "exact")
#: Products used when ``n_probes`` is not given (divisible by 2 and 3).
DEFAULT_PROBES = 30
_BLOCK = 16  # probe columns per product call (memory: dim x block)
_FUNC = "hessian_trace"


def _std_error(samples: np.ndarray) -> float:
    n = samples.shape[0]
    return float(np.std(samples, ddof=1) / math.sqrt(n)) if n > 1 else math.nan


def _apply(A: LinearMap, V: torch.Tensor) -> torch.Tensor:
    return torch.cat([A.matmat(V[:, i:i + _BLOCK]) for i in range(0, V.shape[1], _BLOCK)], 1)


def _hutchinson(A: LinearMap, n: int, gen, distribution: str):
    samples = []
    for start in range(0, n, _BLOCK):
        Z = probes(gen, A.dim, min(_BLOCK, n - start), distribution, A.dtype, A.device)
        AZ = A.matmat(Z)
        samples.append((Z.to(torch.float64) * AZ.to(torch.float64)).sum(0).cpu().numpy())
    s = np.concatenate(samples)
    return float(s.mean()), _std_error(s), s, 0.0, ""


def _orth(Y: torch.Tensor) -> torch.Tensor:
    Q, _ = torch.linalg.qr(Y)
    return Q


def _hutchpp(A: LinearMap, n: int, gen, distribution: str):
    m = n // 3
    S = probes(gen, A.dim, m, distribution, A.dtype, A.device)
    Q = _orth(_apply(A, S))
    del S
    exact = float((Q.to(torch.float64) * _apply(A, Q).to(torch.float64)).sum())
    G = probes(gen, A.dim, m, distribution, A.dtype, A.device)
    G = G - Q @ (Q.T @ G)
    AG = _apply(A, G)
    AG = AG - Q @ (Q.T @ AG)
    s = (G.to(torch.float64) * AG.to(torch.float64)).sum(0).cpu().numpy()
    return exact + float(s.mean()), _std_error(s), s, exact, ""


def _xtrace(A: LinearMap, n: int, gen, distribution: str):
    m = n // 2
    W = probes(gen, A.dim, m, distribution, torch.float64, A.device)
    W = W * (math.sqrt(A.dim) / torch.linalg.vector_norm(W, dim=0))[None, :]
    W = W.to(A.dtype)
    Y = _apply(A, W)
    Q, R = torch.linalg.qr(Y)
    Z = _apply(A, Q)
    f64 = torch.float64
    Q64, R64, W64, Y64, Z64 = (t.to(f64) for t in (Q, R, W, Y, Z))
    H = Q64.T @ Z64  # Q^T A Q
    diag_r = torch.abs(torch.diagonal(R64))
    if float(diag_r.min()) <= 1e-10 * max(float(diag_r.max()), 1e-300):
        # the sketch has rank < n/2: range(A W) = range(A), so tr(A) = tr(Q^T A Q) exactly
        value = float(torch.trace(H))
        return value, 0.0, np.full(m, value), value, (
            "rank-deficient sketch: the operator has rank below n_probes/2, trace exact")
    # s_i: normalised columns of R^{-T}
    Rinv_t = torch.linalg.solve_triangular(R64, torch.eye(m, dtype=f64, device=R64.device),
                                           upper=True).T
    S = Rinv_t / torch.linalg.vector_norm(Rinv_t, dim=0)[None, :]
    tr_h = torch.trace(H)
    # tr of A on the leave-one-out bases: tr(H) - s_i^T H s_i
    loo = tr_h - torch.einsum("ji,jk,ki->i", S, H, S)
    # residual Hutchinson term of probe i: (w_i - Q c_i)^T (y_i - Z c_i),
    # c_i = (I - s_i s_i^T) Q^T w_i
    QW = Q64.T @ W64
    C = QW - S * (S * QW).sum(0)[None, :]
    term = ((W64 * Y64).sum(0) - (W64 * (Z64 @ C)).sum(0) - (C * R64).sum(0)
            + (C * (H @ C)).sum(0))
    estimates = (loo + term).cpu().numpy()
    return float(estimates.mean()), _std_error(estimates), estimates, 0.0, ""


def _exact(A: LinearMap):
    total = 0.0
    for start in range(0, A.dim, _BLOCK):
        stop = min(A.dim, start + _BLOCK)
        E = torch.zeros((A.dim, stop - start), dtype=A.dtype, device=A.device)
        idx = torch.arange(start, stop, device=A.device)
        E[idx, idx - start] = 1
        total += float(A.matmat(E)[idx, idx - start].to(torch.float64).sum())
    return total, 0.0, np.zeros(0), total, ""


def hessian_trace(operator: Any, *, method: str = "hutch++", n_probes: Optional[int] = None,
                  seed: int = 0, distribution: str = "rademacher") -> HessianTrace:
    """Estimate ``tr(A)`` of a symmetric operator with a standard error.

    Parameters
    ----------
    operator : HessianOperator, curvlinops or scipy linear operator, or symmetric matrix
    method : {"hutch++", "hutchinson", "xtrace", "exact"}, default "hutch++"
        See the module docstring.
    n_probes : int, optional
        Products to spend (default 30): at least 2 for ``"hutchinson"``, a multiple of 3 of at
        least 6 for ``"hutch++"`` and an even number of at least 4 for ``"xtrace"``, with the
        sketch (``n/3``, ``n/2``) at most ``dim``. Not used by ``"exact"`` (``dim`` products).
    seed : int, default 0
        Seed of the probes.
    distribution : {"rademacher", "normal"}, default "rademacher"
        Entries of the probes (+-1, or standard normal).

    Returns
    -------
    HessianTrace
        ``value``, ``stderr`` and the samples they come from.

    Raises
    ------
    ParameterError
        For an unusable operator or option, before any product.

    Examples
    --------
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 61.0, dtype=torch.float64))
    >>> hessian_trace(A, method="exact").value
    1830.0
    """
    A = as_linear(operator, func=_FUNC)
    method = check_choice(method, TRACE_METHODS, name="method", func=_FUNC)
    distribution = check_choice(distribution, DISTRIBUTIONS, name="distribution", func=_FUNC)
    seed = check_seed(seed, func=_FUNC)
    if method == "exact":
        if n_probes is not None:
            raise fail("n_probes", _FUNC, "None for method='exact' (it uses dim products)",
                       n_probes)
        n = A.dim
    else:
        n = DEFAULT_PROBES if n_probes is None else n_probes
        if method == "hutchinson":
            n = check_int(n, name="n_probes", func=_FUNC, minimum=2)
        elif method == "hutch++":
            n = check_int(n, name="n_probes", func=_FUNC, minimum=6, maximum=3 * A.dim)
            if n % 3:
                raise fail("n_probes", _FUNC, "a multiple of 3 for method='hutch++'", n)
        else:
            n = check_int(n, name="n_probes", func=_FUNC, minimum=4, maximum=2 * A.dim)
            if n % 2:
                raise fail("n_probes", _FUNC, "an even number for method='xtrace'", n)
    gen = seeded_generator(seed)
    start, count = time.perf_counter(), A.n_matvecs
    if method == "hutchinson":
        value, se, samples, exact_part, message = _hutchinson(A, n, gen, distribution)
    elif method == "hutch++":
        value, se, samples, exact_part, message = _hutchpp(A, n, gen, distribution)
    elif method == "xtrace":
        value, se, samples, exact_part, message = _xtrace(A, n, gen, distribution)
    else:
        value, se, samples, exact_part, message = _exact(A)
    settings = dict(A.settings)
    settings.update({"method": method, "n_probes": n_probes, "seed": seed,
                     "distribution": distribution})
    return HessianTrace(value=value, stderr=se, method=method, distribution=distribution,
                        n_matvecs=A.n_matvecs - count, dim=A.dim, samples=samples,
                        exact_part=exact_part, message=message,
                        seconds=time.perf_counter() - start, settings=settings)
