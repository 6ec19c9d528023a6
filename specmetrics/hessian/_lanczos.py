"""Internal: the Lanczos iteration shared by the eigenvalue and density estimators.

For a symmetric ``A`` and a unit start vector ``q_1``, ``m`` steps build an orthonormal basis
``Q_m = [q_1 ... q_m]`` of the Krylov space and a symmetric tridiagonal ``T_m`` (diagonal
``alpha``, off-diagonal ``beta``) with

    A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T.

Consequences used by the estimators (exact in exact arithmetic, and to rounding with full
reorthogonalisation):

- Ritz pairs: ``T_m s_i = theta_i s_i`` gives ``y_i = Q_m s_i`` with residual
  ``||A y_i - theta_i y_i|| = beta_m |e_m^T s_i|`` (no extra product needed);
- Gauss quadrature: with ``tau_i = (e_1^T s_i)^2`` (the squared *first* components of the
  eigenvectors of ``T_m``), ``sum_i tau_i theta_i^j = q_1^T A^j q_1`` for ``j <= 2m - 1``.

Full reorthogonalisation (classical Gram-Schmidt against every stored basis vector, repeated
when the first pass removed much of the vector: the DGKS criterion) keeps ``Q_m`` orthonormal to working precision, at the memory of ``m`` vectors; without it
only three vectors are kept, and Ritz values of converged eigenvalues reappear as copies ("ghost"
eigenvalues) once orthogonality is lost; quadrature stays usable but eigenvalue counts do not.

A breakdown (``beta_j`` at rounding level: the Krylov space is invariant) ends the run, or, when
``restart`` is set, continues from a fresh random vector orthogonal to the basis with
``beta_j = 0`` (so multiplicities and the whole space of a small operator are reached).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from ._linear import LinearMap

__all__ = ["Basis", "LanczosRun", "lanczos", "ritz"]

_BLOCK_ROWS = 32


class Basis:
    """Orthonormal vectors stored in blocks of rows (no re-allocation as it grows)."""

    def __init__(self, dim: int, dtype: torch.dtype, device: torch.device):
        self.dim, self.dtype, self.device = dim, dtype, device
        self.blocks: list[torch.Tensor] = []
        self.n = 0

    def append(self, q: torch.Tensor) -> None:
        row = self.n % _BLOCK_ROWS
        if row == 0:
            self.blocks.append(torch.empty((_BLOCK_ROWS, self.dim), dtype=self.dtype,
                                           device=self.device))
        self.blocks[-1][row] = q
        self.n += 1

    def _views(self):
        for b, block in enumerate(self.blocks):
            rows = min(_BLOCK_ROWS, self.n - b * _BLOCK_ROWS)
            if rows > 0:
                yield block[:rows]

    def _project_out(self, w: torch.Tensor) -> torch.Tensor:
        for view in self._views():
            w = w - view.T @ (view @ w)
        return w

    def orthogonalize(self, w: torch.Tensor) -> torch.Tensor:
        """``w`` minus its projection on the basis: classical Gram-Schmidt, repeated once when
        the first pass removed more than ``1 - 1/sqrt(2)`` of its norm (the DGKS criterion
        ARPACK uses; "twice is enough"), so that the basis stays orthonormal to rounding."""
        before = float(torch.linalg.vector_norm(w))
        w = self._project_out(w)
        if float(torch.linalg.vector_norm(w)) < 0.7071 * before:
            w = self._project_out(w)
        return w

    def combine(self, coefficients: np.ndarray) -> torch.Tensor:
        """``Q^T C``: vectors of shape (dim, k) from coefficients of shape (n, k)."""
        C = torch.as_tensor(coefficients, dtype=self.dtype, device=self.device)
        out = torch.zeros((self.dim, C.shape[1]), dtype=self.dtype, device=self.device)
        start = 0
        for view in self._views():
            out += view.T @ C[start:start + view.shape[0]]
            start += view.shape[0]
        return out


@dataclass
class LanczosRun:
    """What a Lanczos run produced.

    alphas : (m,) float64;  betas : (m,) float64 with ``betas[j]`` the norm of the residual after
    step ``j`` (``betas[:-1]`` are the off-diagonal of ``T_m``, zero at restarts; ``betas[-1]`` is
    ``beta_m`` of the residual bound); basis : the stored vectors (None without
    reorthogonalisation); exhausted : the Krylov space reached an invariant subspace (or the
    whole space) and the run stopped there; restarts : steps at which a fresh vector started;
    n_matvecs : products performed.
    """

    alphas: np.ndarray
    betas: np.ndarray
    basis: Optional[Basis]
    exhausted: bool
    restarts: tuple
    n_matvecs: int

    @property
    def m(self) -> int:
        return int(self.alphas.shape[0])


def ritz(alphas: np.ndarray, offdiag: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and eigenvectors (columns) of the tridiagonal matrix."""
    from scipy.linalg import eigh_tridiagonal

    if alphas.shape[0] == 1:
        return alphas.copy(), np.ones((1, 1))
    return eigh_tridiagonal(alphas, offdiag)


def lanczos(A: LinearMap, v0: torch.Tensor, n_steps: int, *, reorthogonalize: bool = True,
            restart: bool = False, generator: Optional[torch.Generator] = None,
            stop: Optional[Callable[[np.ndarray, np.ndarray], bool]] = None,
            progress=None) -> LanczosRun:
    """Run up to ``n_steps`` Lanczos steps from ``v0`` (see the module docstring).

    ``stop(alphas, betas)`` is called after each step and ends the run when it
    returns True. ``restart`` needs ``reorthogonalize`` and a ``generator`` for the fresh vectors.
    ``progress`` is an optional tqdm-like object with ``update(1)``.
    """
    dim, dtype, device = A.dim, A.dtype, A.device
    n_steps = min(int(n_steps), dim)
    eps = float(torch.finfo(dtype).eps)
    q = v0.to(device=device, dtype=dtype).reshape(-1)
    q = q / torch.linalg.vector_norm(q)
    basis = Basis(dim, dtype, device) if reorthogonalize else None
    if basis is not None:
        basis.append(q)
    q_prev: Optional[torch.Tensor] = None
    beta_prev = 0.0
    alphas: list[float] = []
    betas: list[float] = []
    restarts: list[int] = []
    anorm = 0.0
    exhausted = False
    start_count = A.n_matvecs
    for j in range(n_steps):
        w = A.matvec(q)
        alpha = float(torch.dot(q, w))
        w = w - alpha * q
        if q_prev is not None and beta_prev != 0.0:
            w = w - beta_prev * q_prev
        if basis is not None:
            w = basis.orthogonalize(w)
        beta = float(torch.linalg.vector_norm(w))
        alphas.append(alpha)
        anorm = max(anorm, abs(alpha) + beta + beta_prev)
        breakdown = beta <= 10.0 * eps ** 0.75 * max(anorm, 1e-300)
        last = j == n_steps - 1
        if breakdown:
            can_restart = restart and basis is not None and basis.n < dim and not last
            fresh = None
            if can_restart:
                r = torch.randn(dim, generator=generator, dtype=torch.float64).to(
                    device=device, dtype=dtype)
                r = basis.orthogonalize(r / torch.linalg.vector_norm(r))
                norm = float(torch.linalg.vector_norm(r))
                fresh = r / norm if norm > 1e-3 else None
            if fresh is None:
                betas.append(0.0)
                exhausted = True
                if progress is not None:
                    progress.update(1)
                break
            betas.append(0.0)
            restarts.append(j + 1)
            q_prev, q, beta_prev = None, fresh, 0.0
        else:
            betas.append(beta)
            if not last:
                q_prev, q, beta_prev = q, w / beta, beta
        if progress is not None:
            progress.update(1)
        if last:
            break
        if stop is not None and stop(np.asarray(alphas), np.asarray(betas)):
            break
        if basis is not None:
            basis.append(q)
    return LanczosRun(alphas=np.asarray(alphas, dtype=np.float64),
                      betas=np.asarray(betas, dtype=np.float64), basis=basis,
                      exhausted=exhausted, restarts=tuple(restarts),
                      n_matvecs=A.n_matvecs - start_count)
