"""Extreme eigenvalues of a Hessian operator with converged-Ritz detection.

:func:`top_eigenvalues` runs Lanczos with full reorthogonalisation from a seeded random vector
and stops as soon as the ``k`` wanted Ritz pairs have converged: their residual norms, read off
the tridiagonal matrix (``||A y_i - theta_i y_i|| = beta_m |e_m^T s_i|``, no extra product),
are at most ``tol * max(|theta_i|, sqrt(eps) ||A||)``. ``method="arpack"`` runs scipy's
``eigsh`` (implicitly restarted Lanczos, ARPACK) on the same operator instead and checks its
result with ``k`` explicit products. Plain Lanczos needed fewer Hessian products than ARPACK for
the same accuracy in every case measured (``benchmarks/RESULTS-hessian.md``), which is why it is
the default; ARPACK keeps only ``max(2k + 1, 20)`` vectors, Lanczos one per step.

Single-vector Krylov methods see each distinct eigenvalue once: an exactly repeated eigenvalue
is found with its multiplicity only after the Krylov space becomes invariant (then the run
continues from a fresh random vector orthogonal to it). Real Hessians rarely have exact
multiplicities at the top of the spectrum.
"""
from __future__ import annotations

import logging
import math
import time
import warnings
from typing import Any, Optional

import numpy as np
import torch

from .._validation import (check_bool, check_choice, check_int, check_interval, check_seed, fail)
from ..exceptions import SpecmetricsWarning
from ._lanczos import lanczos, ritz
from ._linear import LinearMap, as_linear, probes, seeded_generator
from .results import HessianEigen

__all__ = ["top_eigenvalues", "WHICH", "METHODS"]

logger = logging.getLogger(__name__)

WHICH = ("LA", "SA", "LM")
METHODS = ("lanczos", "arpack")
_FUNC = "top_eigenvalues"


def _order(theta: np.ndarray, which: str) -> np.ndarray:
    """Indices of ``theta`` in the order of ``which`` (most wanted first)."""
    if which == "LA":
        return np.argsort(-theta, kind="stable")
    if which == "SA":
        return np.argsort(theta, kind="stable")
    return np.argsort(-np.abs(theta), kind="stable")


def _thresholds(theta: np.ndarray, norm: float, tol: float, eps: float) -> np.ndarray:
    """Residual bound of each Ritz value: ``tol * max(|theta|, sqrt(eps) * norm)``."""
    return tol * np.maximum(np.abs(theta), math.sqrt(eps) * max(norm, 1e-300))


def default_tol(dtype: torch.dtype) -> float:
    """``sqrt(eps)`` of the operator's dtype: 1.5e-8 in float64, 3.5e-4 in float32."""
    return math.sqrt(float(torch.finfo(dtype).eps))


def _lanczos_top(A: LinearMap, k: int, which: str, gen: torch.Generator, tol: float,
                 max_steps: int, return_vectors: bool, progress: bool):
    v0 = probes(gen, A.dim, 1, "normal", A.dtype, A.device)[:, 0]

    def converged(alphas: np.ndarray, betas: np.ndarray) -> bool:
        if alphas.shape[0] < k:
            return False
        theta, S = ritz(alphas, betas[:-1])
        res = np.abs(betas[-1] * S[-1, :])
        norm = float(np.max(np.abs(theta))) if theta.size else 0.0
        sel = _order(theta, which)[:k]
        return bool(np.all(res[sel] <= _thresholds(theta[sel], norm, tol, A.eps)))

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps, desc="Lanczos (top eigenvalues)", unit="HVP")
    try:
        run = lanczos(A, v0, max_steps, reorthogonalize=True, restart=True, generator=gen,
                      stop=converged, progress=bar)
    finally:
        if bar is not None:
            bar.close()
    theta, S = ritz(run.alphas, run.betas[:-1])
    res = np.abs(run.betas[-1] * S[-1, :])
    sel = _order(theta, which)[:k]
    vectors = run.basis.combine(S[:, sel]) if return_vectors else None
    return theta[sel], res[sel], float(np.max(np.abs(theta))), run.m, vectors


def _arpack_top(A: LinearMap, k: int, which: str, gen: torch.Generator, tol: float,
                max_steps: Optional[int], return_vectors: bool):
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    def matmat(X):
        X = np.asarray(X)
        out = A.matmat(torch.as_tensor(X.reshape(A.dim, -1)))
        return out.detach().to("cpu", torch.float64).numpy().reshape(X.shape)

    lin = LinearOperator((A.dim, A.dim), matvec=matmat, matmat=matmat, rmatvec=matmat,
                         dtype=np.float64)
    v0 = probes(gen, A.dim, 1, "normal", torch.float64, torch.device("cpu"))[:, 0].numpy()
    try:
        vals, vecs = eigsh(lin, k=k, which=which, v0=v0, tol=tol, maxiter=max_steps)
    except ArpackNoConvergence as err:
        vals, vecs = err.eigenvalues, err.eigenvectors
    steps = A.n_matvecs
    vals = np.asarray(vals, dtype=np.float64)
    order = _order(vals, which)
    vals, vecs = vals[order], np.asarray(vecs)[:, order]
    X = torch.as_tensor(vecs, dtype=A.dtype, device=A.device)
    if X.shape[1]:
        R = A.matmat(X) - X * torch.as_tensor(vals, dtype=A.dtype, device=A.device)[None, :]
        res = torch.linalg.vector_norm(R.to(torch.float64), dim=0).cpu().numpy()
    else:
        res = np.zeros(0)
    found = vals.shape[0]
    if found < k:  # ARPACK gave up: pad with NaN, not converged
        vals = np.concatenate([vals, np.full(k - found, np.nan)])
        res = np.concatenate([res, np.full(k - found, np.nan)])
    norm = float(np.nanmax(np.abs(vals))) if found else 0.0
    return vals, res, norm, steps, (X if return_vectors else None)


def top_eigenvalues(operator: Any, k: int = 20, *, which: str = "LA", seed: int = 0,
                    tol: Optional[float] = None, method: str = "lanczos",
                    max_steps: Optional[int] = None, return_vectors: bool = False,
                    progress: bool = False) -> HessianEigen:
    """The ``k`` extreme eigenvalues of a symmetric operator, with their Ritz residuals.

    Parameters
    ----------
    operator : HessianOperator, curvlinops or scipy linear operator, or symmetric matrix
        From :func:`hessian_operator`, or any symmetric operator (shape (dim, dim)).
    k : int, default 20
        How many eigenvalues (``1 <= k <= dim``; ``k < dim`` for ``"arpack"``).
    which : {"LA", "SA", "LM"}, default "LA"
        Largest algebraic (the top of a Hessian spectrum), smallest algebraic (its most negative
        curvature), or largest in magnitude.
    seed : int, default 0
        Seed of the random start vector.
    tol : float, optional
        A Ritz pair has converged when its residual norm is at most
        ``tol * max(|theta_i|, sqrt(eps) ||A||)`` (relative to its own value, as ARPACK's
        criterion, with a floor at rounding level; ``||A||`` is estimated by the largest Ritz value
        in magnitude); the eigenvalue is then within that residual of a true one, and usually
        much closer (the error is at most ``residual^2 / gap``). Default ``sqrt(eps)`` of the
        operator's dtype (1.5e-8 in float64, 3.5e-4 in float32). In ``(0, 1)``.
    method : {"lanczos", "arpack"}, default "lanczos"
        Lanczos with full reorthogonalisation that stops when the ``k`` pairs converge (memory:
        one vector per step), or scipy's ``eigsh`` (ARPACK; memory ``max(2k + 1, 20)``
        vectors), whose result is checked with ``k`` more products.
    max_steps : int, optional
        ``"lanczos"``: the most Lanczos steps (Hessian products), default
        ``min(dim, max(10 k, 100))``. ``"arpack"``: ARPACK's ``maxiter`` (restart cycles;
        default scipy's).
    return_vectors : bool, default False
        Also return the unit Ritz vectors (``HessianEigen.vectors``, shape (dim, k); see
        :meth:`HessianOperator.unflatten`).
    progress : bool, default False
        Show a progress bar over the Lanczos steps.

    Returns
    -------
    HessianEigen
        With ``converged`` per value; a :class:`~specmetrics.SpecmetricsWarning` says when some
        did not converge within ``max_steps``.

    Raises
    ------
    ParameterError
        For an unusable operator or option, before any product.

    Examples
    --------
    >>> import torch
    >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
    >>> eig = top_eigenvalues(A, k=3)
    >>> [round(float(v), 6) for v in eig.values], bool(eig.all_converged)
    ([100.0, 99.0, 98.0], True)
    """
    A = as_linear(operator, func=_FUNC)
    method = check_choice(method, METHODS, name="method", func=_FUNC)
    limit = A.dim - 1 if method == "arpack" else A.dim
    if limit < 1:
        raise fail("operator", _FUNC, "of dimension at least 2 for method='arpack'", A.dim)
    k = check_int(k, name="k", func=_FUNC, minimum=1, maximum=limit)
    which = check_choice(which, WHICH, name="which", func=_FUNC)
    seed = check_seed(seed, func=_FUNC)
    if tol is None:
        tol = default_tol(A.dtype)
    else:
        tol = check_interval(tol, 0.0, 1.0, name="tol", func=_FUNC, closed="neither")
    if max_steps is not None:
        max_steps = check_int(max_steps, name="max_steps", func=_FUNC,
                              minimum=k if method == "lanczos" else 1)
    return_vectors = check_bool(return_vectors, name="return_vectors", func=_FUNC)
    progress = check_bool(progress, name="progress", func=_FUNC)

    gen = seeded_generator(seed)
    start, count = time.perf_counter(), A.n_matvecs
    if method == "lanczos":
        steps_cap = min(A.dim, max_steps if max_steps is not None else max(10 * k, 100))
        values, res, norm, n_steps, vectors = _lanczos_top(A, k, which, gen, tol, steps_cap,
                                                           return_vectors, progress)
    else:
        values, res, norm, n_steps, vectors = _arpack_top(A, k, which, gen, tol, max_steps,
                                                          return_vectors)
        n_steps -= count
    bounds = _thresholds(np.nan_to_num(np.asarray(values, dtype=np.float64)), norm, tol, A.eps)
    converged = np.isfinite(res) & (np.nan_to_num(res, nan=np.inf) <= bounds)
    n_conv = int(converged.sum())
    if n_conv < k:
        warnings.warn(f"{_FUNC}: {k - n_conv} of the {k} Ritz values did not converge to "
                      f"tol={tol:.3g} ({method}, {A.n_matvecs - count} products); raise "
                      "max_steps or tol", SpecmetricsWarning, stacklevel=2)
    settings = dict(A.settings)
    settings.update({"k": k, "which": which, "seed": seed, "tol": tol, "method": method,
                     "max_steps": max_steps})
    result = HessianEigen(values=values, residuals=res, converged=converged, which=which,
                          method=method, tol=tol, n_matvecs=A.n_matvecs - count,
                          n_steps=int(n_steps), dim=A.dim, seconds=time.perf_counter() - start,
                          settings=settings, vectors=vectors)
    logger.info("%s: %d eigenvalues (%s), %d/%d converged, %d products", _FUNC, k, method,
                n_conv, k, result.n_matvecs)
    return result
