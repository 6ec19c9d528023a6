"""The spectral density of a Hessian operator by stochastic Lanczos quadrature (SLQ).

For a random unit vector ``u`` (normalised Rademacher, so that ``E[u^T f(A) u] = tr f(A) / dim``
exactly), ``m`` Lanczos steps from ``u`` give the tridiagonal ``T_m = S diag(theta) S^T``; the
Gauss quadrature with nodes ``theta_i`` and weights ``tau_i = S[0, i]^2`` (the squared **first
components** of the eigenvectors of ``T_m``, i.e. the first *row* of ``S``) satisfies
``sum_i tau_i theta_i^j = u^T A^j u`` for every ``j <= 2m - 1``. Averaging the quadrature
measures of ``n_repeats`` vectors estimates the eigenvalue distribution
``(1/dim) sum_j delta(lambda - lambda_j)``; convolving it with a Gaussian of standard deviation
``sigma`` (in eigenvalue units, not rescaled) gives a smooth density that integrates to 1.

Two errors of a widely used implementation that the tests here guard against: PyHessian took the
weights from the wrong axis of the eigenvector matrix (fixed in January 2024, 13 months after it
appeared), and its smoothing parameter is a variance applied after the spectrum is rescaled. Here
``weights`` are the squared first components (a test compares them with an independent
eigendecomposition, and the quadrature moments are checked exactly), and ``sigma`` is the
standard deviation of the kernel on the eigenvalue axis (a test checks the density of ``c I``).

curvlinops' ``lanczos_approximate_spectrum`` computes the same quadrature, but without
reorthogonalisation, from the global random generator, with a kernel width set through ``kappa``
in rescaled units, and with two extra ``eigsh`` calls for the spectral boundary; this module
keeps only the quadrature idea.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Optional

import numpy as np

from .._validation import check_bool, check_int, check_real, check_seed, fail
from ..exceptions import SpecmetricsWarning
from ._lanczos import lanczos, ritz
from ._linear import as_linear, probes, seeded_generator
from .results import SpectralDensity

__all__ = ["spectral_density", "lanczos_quadrature"]

_FUNC = "spectral_density"
_GRID_SIGMAS = 6.0  # the grid extends this many sigmas beyond the extreme nodes
_CHUNK = 1 << 20


def lanczos_quadrature(alphas: np.ndarray, offdiag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss quadrature nodes and weights of a Lanczos tridiagonal matrix.

    Parameters
    ----------
    alphas : numpy.ndarray, shape (m,)
        Diagonal of ``T_m``.
    offdiag : numpy.ndarray, shape (m - 1,)
        Off-diagonal of ``T_m``.

    Returns
    -------
    nodes : numpy.ndarray, shape (m,)
        Eigenvalues of ``T_m`` (ascending).
    weights : numpy.ndarray, shape (m,)
        Squared first components of the unit eigenvectors: ``S[0, :] ** 2``; they sum to 1.
    """
    theta, S = ritz(np.asarray(alphas, dtype=np.float64), np.asarray(offdiag, dtype=np.float64))
    return theta, S[0, :] ** 2


def _smooth(grid: np.ndarray, nodes: np.ndarray, weights: np.ndarray, sigma: float) -> np.ndarray:
    keep = weights > 0
    nodes, weights = nodes[keep], weights[keep]
    out = np.zeros_like(grid)
    norm = 1.0 / (sigma * math.sqrt(2.0 * math.pi))
    step = max(1, _CHUNK // max(1, grid.shape[0]))
    for start in range(0, nodes.shape[0], step):
        d = (grid[None, :] - nodes[start:start + step, None]) / sigma
        out += (weights[start:start + step, None] * np.exp(-0.5 * d * d)).sum(0)
    return out * norm


def spectral_density(operator: Any, *, n_steps: int = 100, n_repeats: int = 1,
                     sigma: Optional[float] = None, n_points: int = 1024, seed: int = 0,
                     reorthogonalize: bool = True, progress: bool = False) -> SpectralDensity:
    """Stochastic Lanczos quadrature estimate of the eigenvalue density of a symmetric operator.

    Parameters
    ----------
    operator : HessianOperator, curvlinops or scipy linear operator, or symmetric matrix
    n_steps : int, default 100
        Lanczos steps (products) per repeat: the quadrature has ``n_steps`` nodes (fewer if the
        Krylov space becomes invariant; at most ``dim``). At least 2.
    n_repeats : int, default 1
        Random start vectors whose quadratures are averaged (each costs ``n_steps`` products).
    sigma : float, optional
        Standard deviation of the Gaussian kernel, in eigenvalue units (> 0). Default:
        ``(theta_max - theta_min) / (3 (n_steps - 1))`` over all nodes (Papyan's kappa = 3 rule,
        about the node spacing), or ``1e-3 max(|theta|, 1)`` when all nodes coincide.
    n_points : int, default 1024
        Points of the evenly spaced grid ``[min node - 6 sigma, max node + 6 sigma]``.
    seed : int, default 0
        Seed of the start vectors.
    reorthogonalize : bool, default True
        Full reorthogonalisation (memory: ``n_steps`` vectors during a repeat, freed after it);
        ``False`` keeps three vectors (memory ``O(dim)``) at the price of ghost nodes.
    progress : bool, default False

    Returns
    -------
    SpectralDensity

    Raises
    ------
    ParameterError
        For an unusable operator or option, before any product.
    """
    A = as_linear(operator, func=_FUNC)
    n_steps = check_int(n_steps, name="n_steps", func=_FUNC, minimum=2)
    n_repeats = check_int(n_repeats, name="n_repeats", func=_FUNC, minimum=1)
    if sigma is not None:
        sigma = check_real(sigma, name="sigma", func=_FUNC, requirement="a positive number "
                           "(a standard deviation in eigenvalue units)")
        if sigma <= 0:
            raise fail("sigma", _FUNC, "a positive number (a standard deviation in eigenvalue "
                       "units)", sigma)
    n_points = check_int(n_points, name="n_points", func=_FUNC, minimum=2)
    seed = check_seed(seed, func=_FUNC)
    reorthogonalize = check_bool(reorthogonalize, name="reorthogonalize", func=_FUNC)
    progress = check_bool(progress, name="progress", func=_FUNC)

    steps = min(n_steps, A.dim)
    gen = seeded_generator(seed)
    start, count = time.perf_counter(), A.n_matvecs
    nodes = np.zeros((n_repeats, steps))
    weights = np.zeros((n_repeats, steps))
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=steps * n_repeats, desc="Lanczos quadrature", unit="HVP")
    try:
        for r in range(n_repeats):
            u = probes(gen, A.dim, 1, "rademacher", A.dtype, A.device)[:, 0]
            run = lanczos(A, u, steps, reorthogonalize=reorthogonalize, restart=False,
                          progress=bar)
            theta, tau = lanczos_quadrature(run.alphas, run.betas[:-1])
            nodes[r, :theta.shape[0]] = theta
            weights[r, :tau.shape[0]] = tau
            del run
    finally:
        if bar is not None:
            bar.close()
    used = weights > 0
    lo, hi = float(nodes[used].min()), float(nodes[used].max())
    if sigma is None:
        sigma = (hi - lo) / (3.0 * (steps - 1)) if hi > lo else 1e-3 * max(abs(hi), 1.0)
    grid = np.linspace(lo - _GRID_SIGMAS * sigma, hi + _GRID_SIGMAS * sigma, n_points)
    if grid[1] - grid[0] > sigma:
        warnings.warn(f"{_FUNC}: the grid spacing {grid[1] - grid[0]:.3g} exceeds sigma="
                      f"{sigma:.3g}; the density is undersampled (raise n_points or sigma)",
                      SpecmetricsWarning, stacklevel=2)
    density = _smooth(grid, nodes.reshape(-1), weights.reshape(-1) / n_repeats, sigma)
    settings = dict(A.settings)
    settings.update({"n_steps": n_steps, "n_repeats": n_repeats, "sigma": sigma,
                     "n_points": n_points, "seed": seed, "reorthogonalize": reorthogonalize})
    return SpectralDensity(grid=grid, density=density, nodes=nodes, weights=weights,
                           sigma=float(sigma), n_steps=steps, n_repeats=n_repeats,
                           n_matvecs=A.n_matvecs - count, dim=A.dim,
                           seconds=time.perf_counter() - start, settings=settings)
