"""Internal: every operator the estimators accept, as one small interface.

The estimators (:func:`~specmetrics.hessian.top_eigenvalues`,
:func:`~specmetrics.hessian.hessian_trace`, :func:`~specmetrics.hessian.spectral_density`) take a
:class:`~specmetrics.hessian.HessianOperator`, a curvlinops ``PyTorchLinearOperator``
(self-adjoint), a scipy ``LinearOperator`` (assumed symmetric), or a dense symmetric matrix
(torch tensor or numpy array). :func:`as_linear` turns each
into a :class:`LinearMap`: ``matmat`` on torch tensors of shape (dim, k), with a counter of the
matrix-vector products it performed.

Random probes are drawn on the CPU with a seeded ``torch.Generator`` and then moved to the
operator's device, so a seed gives the same probes on every device.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Optional

import numpy as np
import torch

from .._validation import fail

__all__ = ["LinearMap", "as_linear", "probes", "DISTRIBUTIONS"]

DISTRIBUTIONS = ("rademacher", "normal")
_PROBE_CHUNK = 1 << 24  # elements drawn at a time


class LinearMap:
    """A symmetric linear map on ``R^dim`` (internal).

    Attributes
    ----------
    dim : int
    dtype : torch.dtype
        The working dtype of vectors (float32 or float64).
    device : torch.device
    settings : dict
        JSON-able description recorded in results.
    """

    def __init__(self, matmat: Callable[[torch.Tensor], torch.Tensor], dim: int,
                 dtype: torch.dtype, device: torch.device, settings: dict):
        self._matmat = matmat
        self.dim = int(dim)
        self.dtype = dtype
        self.device = torch.device(device)
        self.settings = settings
        self.n_matvecs = 0

    def matmat(self, V: torch.Tensor) -> torch.Tensor:
        """``A @ V`` for ``V`` of shape (dim, k); counts k products."""
        V = V.to(device=self.device, dtype=self.dtype)
        out = self._matmat(V)
        self.n_matvecs += int(V.shape[1])
        return out.to(device=self.device, dtype=self.dtype).reshape(self.dim, V.shape[1])

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A @ v`` for ``v`` of shape (dim,)."""
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    @property
    def eps(self) -> float:
        return float(torch.finfo(self.dtype).eps)


def _check_square(shape, func: str, name: str) -> int:
    if len(shape) != 2 or shape[0] != shape[1] or shape[0] < 1:
        raise fail(name, func, "a square operator or matrix", f"shape {tuple(shape)}")
    return int(shape[0])


def _dense(A: torch.Tensor, func: str, name: str) -> LinearMap:
    if A.is_meta:
        raise fail(name, func, "a matrix with data (not on the 'meta' device)", "a meta tensor")
    if A.is_complex() or not A.is_floating_point():
        raise fail(name, func, "a real floating-point matrix", f"a {A.dtype} tensor")
    dim = _check_square(A.shape, func, name)
    if A.dtype not in (torch.float32, torch.float64):
        A = A.to(torch.float32)
    A = A.detach()
    if not bool(torch.isfinite(A).all()):
        raise fail(name, func, "a matrix of finite numbers", "a matrix containing NaN or inf")
    scale = float(A.abs().max()) if A.numel() else 0.0
    asym = float((A - A.T).abs().max()) if A.numel() else 0.0
    tol = 100 * float(torch.finfo(A.dtype).eps) * max(scale, 1e-300) * math.sqrt(dim)
    if asym > tol:
        raise fail(name, func, "a symmetric matrix", f"a matrix with max |A - A^T| = {asym:.3g}")
    settings = {"operator": "dense", "dim": dim, "dtype": str(A.dtype).replace("torch.", "")}
    return LinearMap(lambda V: A @ V, dim, A.dtype, A.device, settings)


def as_linear(operator: Any, *, func: str, name: str = "operator") -> LinearMap:
    """The operator as a :class:`LinearMap` (see the module docstring).

    Raises
    ------
    ParameterError
        For anything else, a non-square or non-symmetric matrix, NaN/inf entries, or a
        curvlinops operator that is not self-adjoint.
    """
    from .operators import HessianOperator

    if isinstance(operator, LinearMap):
        return operator
    if isinstance(operator, HessianOperator):
        settings = dict(operator.settings)
        return LinearMap(operator.matmat, operator.dim, operator.dtype, operator.device, settings)
    if isinstance(operator, torch.Tensor):
        return _dense(operator, func, name)
    if isinstance(operator, np.ndarray):
        if operator.dtype.kind not in "fiu":
            raise fail(name, func, "a real floating-point matrix",
                       f"an array of dtype {operator.dtype}")
        return _dense(torch.as_tensor(np.asarray(operator, dtype=np.float64)), func, name)
    # a curvlinops PyTorchLinearOperator (duck-typed: no curvlinops import needed here)
    if hasattr(operator, "_matmat") and hasattr(operator, "adjoint") and \
            hasattr(operator, "shape") and hasattr(operator, "device"):
        dim = _check_square(operator.shape, func, name)
        if not getattr(operator, "SELF_ADJOINT", False):
            raise fail(name, func, "a self-adjoint operator (SELF_ADJOINT = True)",
                       type(operator).__name__)
        dtype = operator.dtype
        settings = {"operator": type(operator).__name__, "dim": dim,
                    "dtype": str(dtype).replace("torch.", "")}
        return LinearMap(lambda V: operator @ V, dim, dtype, operator.device, settings)
    # a scipy LinearOperator (assumed symmetric)
    try:
        from scipy.sparse.linalg import LinearOperator
    except ImportError:  # pragma: no cover - scipy is a core dependency
        LinearOperator = ()
    if isinstance(operator, LinearOperator):
        dim = _check_square(operator.shape, func, name)

        def matmat(V: torch.Tensor) -> torch.Tensor:
            out = operator.matmat(V.detach().cpu().numpy())
            return torch.as_tensor(np.asarray(out, dtype=np.float64).reshape(dim, -1))

        settings = {"operator": "scipy.LinearOperator", "dim": dim, "dtype": "float64"}
        return LinearMap(matmat, dim, torch.float64, torch.device("cpu"), settings)
    raise fail(name, func, "a HessianOperator, a curvlinops or scipy linear operator, or a "
               "square symmetric matrix", type(operator).__name__)


def probes(generator: torch.Generator, dim: int, k: int, distribution: str,
           dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``k`` random probe vectors of shape (dim, k) with E[v v^T] = I.

    ``"rademacher"``: entries +-1; ``"normal"``: standard normal entries. Drawn on the CPU with
    ``generator`` (in float64 for ``"normal"``), then moved to ``device`` and cast to ``dtype``.
    """
    out = torch.empty((dim, k), dtype=dtype, device=device)
    cols = max(1, _PROBE_CHUNK // max(dim, 1))
    for start in range(0, k, cols):
        stop = min(k, start + cols)
        if distribution == "rademacher":
            block = torch.randint(0, 2, (dim, stop - start), generator=generator,
                                  dtype=torch.int8).to(torch.float64).mul_(2).sub_(1)
        else:
            block = torch.randn((dim, stop - start), generator=generator, dtype=torch.float64)
        out[:, start:stop] = block.to(device=device, dtype=dtype)
    return out


def seeded_generator(seed: int) -> torch.Generator:
    return torch.Generator(device="cpu").manual_seed(int(seed))


def as_float(x: Any) -> float:
    return float(x.item() if hasattr(x, "item") else x)


def optional_int(value: Optional[int]) -> Optional[int]:
    return None if value is None else int(value)
