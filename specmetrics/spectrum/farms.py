"""FARMS: the ESD of fixed-aspect-ratio submatrices, free of the aspect-ratio bias of alpha.

The shape of a weight matrix's ESD depends on its aspect ratio ``Q = N / M`` as well as on what
training put into it (a Marchenko-Pastur bulk with ``Q = 1`` reaches down to zero, one with
``Q = 8`` is narrow), so a power-law ``alpha`` fitted to the ESD of a square attention
projection and to that of a 1 : 2.7 MLP projection are not comparable, and an allocation that
ranks layers by alpha (AlphaPruning) partly ranks them by shape. FARMS (Fixed-Aspect-Ratio
Matrix Subsampling) measures every matrix on submatrices of one size and aspect ratio instead:

1. choose a window of ``p`` rows and ``q = int(p · aspect_ratio)`` columns, ``p =
   min(window, N_rows, N_cols)`` (shrunk further if ``q`` would exceed the columns);
2. slide it over the matrix, ``windows_per_dim`` positions along each dimension: along a
   dimension of length ``L`` and a window side ``w``, the step is ``max(1, (L - w) //
   (windows_per_dim - 1))`` and the positions ``0, step, 2·step, ...`` (at most
   ``windows_per_dim`` of them, all within the matrix), so up to ``windows_per_dim²``
   overlapping submatrices;
3. pool (concatenate) the eigenvalues of ``S^T S`` of every submatrix ``S``: this is the
   *average ESD* of the submatrices (each contributes ``min(p, q)`` eigenvalues, i.e. equal
   weight);
4. fit the power law to the pooled spectrum (by default AlphaPruning's ``alpha_peak`` fit,
   ``xmin="peak"``, with no eigenvalue threshold, as the reference).

A square matrix no larger than the window is its own single window: its FARMS alpha is its
plain alpha.

Defaults are the paper's LLM-pruning setting (``scripts/llm_pruning_main.txt``, Wanda rows:
``num_row_samples=2000``, ``Q_ratio=1``, ``sampling_ops_per_dim=15``, metric
``alpha_peak_farms``). The code's ``fixed_sampling`` is what is implemented; its other mode
(a fixed ``step_size`` instead of a fixed number of windows) and the convolution slicing are
not. Where ``int(p · Q)`` exceeds the columns (``Q > 1`` on a narrow matrix) the reference
slices from a negative start; here ``p`` is reduced until the window fits.

Cost: ``n_windows`` Gram products of ``p × q`` and eigendecompositions of ``min(p, q)²``
matrices, about ``n_windows · (2 p q min(p, q) + 4/3 min(p, q)³)`` flops against about
``2 N M² + 4/3 M³`` for the plain ESD, and a power-law fit of ``n_windows · min(p, q)`` pooled
eigenvalues, whose ``xmin`` scan is quadratic in their number. Measured on one CPU core
(float64): a 1536 × 576 SmolLM2 MLP matrix (15 windows of 576², 8640 eigenvalues) takes 1.1 s
for the eigenvalues and 0.5-0.9 s for the peak fit, against 0.1 s for its plain ESD and fit; a
576² attention matrix costs the same as its plain ESD (one window). At the paper's LLaMA-7B
setting a 4096² matrix has 225 windows of 2000² (2.2 s each here, ~8 min) and 450,000 pooled
eigenvalues, whose peak fit extrapolates to ~40 min: use a GPU, or fewer windows.

References
----------
.. [1] Y. Hu, K. Goel, V. Killiakov, Y. Yang, "Eigenspectrum Analysis of Neural Networks
   without Aspect Ratio Bias", ICML 2025, arXiv:2506.06280 (code: github.com/HUST-AI-HYZ/FARMS,
   ``LLM_Pruning/lib/sampling.py::fixed_sampling``, ``lib/esd_utils_farms.py``).
"""
from __future__ import annotations

import math
from typing import Any, Optional, Union

import torch
from torch import Tensor

from .._validation import (check_bool, check_choice, check_device, check_float_dtype,
                           check_interval, check_not_meta, check_positive_int, fail, is_integer)
from .eigen import eigenvalues
from .powerlaw import PowerLawFit, check_xmin, fit_power_law

__all__ = ["FARMS_WINDOW", "FARMS_ASPECT_RATIO", "FARMS_WINDOWS_PER_DIM", "farms_windows",
           "farms_eigenvalues", "farms_alpha"]

#: The paper's LLM submatrix size (rows of each window): ``num_row_samples=2000``.
FARMS_WINDOW = 2000
#: The paper's LLM aspect ratio of each window (columns / rows): ``Q_ratio=1``.
FARMS_ASPECT_RATIO = 1.0
#: The paper's LLM number of window positions along each dimension: ``sampling_ops_per_dim=15``.
FARMS_WINDOWS_PER_DIM = 15


def _positions(length: int, size: int, count: int) -> list[int]:
    """Start offsets of ``count`` windows of ``size`` along ``length`` (the reference's rule)."""
    if count == 1:
        return [0]
    step = max(1, (length - size) // (count - 1))
    n = min(count, max(1, (length - size) // step + 1))
    return [min(i * step, length - size) for i in range(n)]


def _check_options(func: str, window, aspect_ratio, windows_per_dim) -> tuple[int, float, int]:
    window = check_positive_int(window, name="window", func=func)
    aspect_ratio = check_interval(aspect_ratio, 0, math.inf, name="aspect_ratio", func=func,
                                  closed="neither")
    windows_per_dim = check_positive_int(windows_per_dim, name="windows_per_dim", func=func)
    return window, aspect_ratio, windows_per_dim


def _layout(func: str, rows: int, cols: int, window: int, aspect_ratio: float,
            windows_per_dim: int) -> tuple[int, int, list[tuple[int, int]]]:
    p = min(window, rows, cols)
    if int(p * aspect_ratio) > cols:
        p = min(p, int(cols / aspect_ratio))
        while p > 0 and int(p * aspect_ratio) > cols:
            p -= 1
    q = int(p * aspect_ratio)
    if p < 1 or q < 1:
        raise fail("aspect_ratio", func, f"a ratio that leaves a window of at least one row and "
                   f"one column in a {rows} x {cols} matrix (window = {window})", aspect_ratio)
    starts = [(r, c) for r in _positions(rows, p, windows_per_dim)
              for c in _positions(cols, q, windows_per_dim)]
    return p, q, starts


def farms_windows(shape, *, window: int = FARMS_WINDOW, aspect_ratio: float = FARMS_ASPECT_RATIO,
                  windows_per_dim: int = FARMS_WINDOWS_PER_DIM
                  ) -> tuple[int, int, tuple[tuple[int, int], ...]]:
    """The submatrices FARMS takes from a matrix of a given shape.

    Parameters
    ----------
    shape : tuple of (int, int)
        ``(rows, cols)`` of the weight as given (``(out_features, in_features)`` for a Linear).
    window : int, default 2000
        Rows of each window (at most the matrix's smaller dimension).
    aspect_ratio : float, default 1.0
        Columns per row of each window, > 0; ``cols = int(rows · aspect_ratio)``.
    windows_per_dim : int, default 15
        Window positions along each dimension (fewer where the dimension has no room).

    Returns
    -------
    p, q : int
        Rows and columns of every window.
    starts : tuple of (int, int)
        The ``(row, col)`` offset of each window, row-major.

    Examples
    --------
    >>> farms_windows((10, 30), window=4, windows_per_dim=3)
    (4, 4, ((0, 0), (0, 13), (0, 26), (3, 0), (3, 13), (3, 26), (6, 0), (6, 13), (6, 26)))
    >>> farms_windows((64, 64), window=2000)  # a square matrix below the window: itself
    (64, 64, ((0, 0),))
    """
    func = "farms_windows"
    ok = (isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 2
          and all(is_integer(n) and int(n) > 0 for n in shape))
    if not ok:
        raise fail("shape", func, "a pair of positive integers (rows, cols)", shape)
    window, aspect_ratio, windows_per_dim = _check_options(func, window, aspect_ratio,
                                                           windows_per_dim)
    p, q, starts = _layout(func, int(shape[0]), int(shape[1]), window, aspect_ratio,
                           windows_per_dim)
    return p, q, tuple(starts)


def _check_weight(weight, func: str) -> Tensor:
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise fail("weight", func, "a 2-D tensor (a weight matrix)", got)
    check_not_meta(weight, name="weight", func=func)
    if not weight.is_floating_point():
        raise fail("weight", func, "a real floating-point tensor", weight.dtype)
    if weight.numel() == 0:
        raise fail("weight", func, "a non-empty matrix", tuple(weight.shape))
    return weight.detach()


def _eigenvalues(func: str, weight, window, aspect_ratio, windows_per_dim, dtype, method,
                 device, batch_bytes) -> Tensor:
    w = _check_weight(weight, func)
    window, aspect_ratio, windows_per_dim = _check_options(func, window, aspect_ratio,
                                                           windows_per_dim)
    dtype = check_float_dtype(dtype, (torch.float64, torch.float32), func=func)
    check_choice(method, ("gram", "svd"), name="method", func=func)
    device = check_device(device, func=func) or w.device
    batch_bytes = check_positive_int(batch_bytes, name="batch_bytes", func=func)
    p, q, starts = _layout(func, w.shape[0], w.shape[1], window, aspect_ratio, windows_per_dim)
    k = min(p, q)
    if not bool(torch.isfinite(w).all()):
        return torch.full((len(starts) * k,), math.nan, dtype=dtype, device=device)
    w = w.to(device=device, dtype=dtype)
    itemsize = torch.empty((), dtype=dtype).element_size()
    step = max(1, batch_bytes // max(1, (p * q + k * k) * itemsize))
    parts = []
    for first in range(0, len(starts), step):
        chunk = starts[first:first + step]
        stack = torch.stack([w[r:r + p, c:c + q] for r, c in chunk])
        parts.append(eigenvalues(stack, method=method).reshape(-1))
    return torch.sort(torch.cat(parts)).values


def farms_eigenvalues(weight: Tensor, *, window: int = FARMS_WINDOW,
                      aspect_ratio: float = FARMS_ASPECT_RATIO,
                      windows_per_dim: int = FARMS_WINDOWS_PER_DIM,
                      dtype: Union[torch.dtype, str] = torch.float64, method: str = "gram",
                      device: Any = None, batch_bytes: int = 1 << 28) -> Tensor:
    """The pooled ESD of a matrix's fixed-aspect-ratio submatrices (FARMS).

    Parameters
    ----------
    weight : torch.Tensor, shape (rows, cols)
        A weight matrix (any real floating dtype; not modified).
    window, aspect_ratio, windows_per_dim
        The windows (see :func:`farms_windows`); defaults are the paper's LLM setting:
        2000 × 2000 windows, 15 positions per dimension.
    dtype : torch.dtype, default torch.float64
        Compute dtype (``torch.float32`` is faster; see :func:`~specmetrics.spectrum.eigenvalues`).
    method : {"gram", "svd"}, default "gram"
        Eigenvalue route of :func:`~specmetrics.spectrum.eigenvalues`.
    device : torch.device or str, optional
        Where to compute; default the weight's device.
    batch_bytes : int, default 256 MiB
        Bound on the submatrices (and Gram matrices) stacked into one batched eigensolve.

    Returns
    -------
    torch.Tensor, shape (n_windows · min(p, q),)
        The eigenvalues of ``S^T S`` of every window ``S``, pooled and sorted ascending, in
        ``dtype``; all NaN when the weight has a NaN or inf entry.

    Examples
    --------
    >>> w = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    >>> farms_eigenvalues(w, window=32, windows_per_dim=3).shape  # 3 x 3 windows of 32 x 32
    torch.Size([288])
    """
    return _eigenvalues("farms_eigenvalues", weight, window, aspect_ratio, windows_per_dim,
                        dtype, method, device, batch_bytes)


def farms_alpha(weight: Tensor, *, window: int = FARMS_WINDOW,
                aspect_ratio: float = FARMS_ASPECT_RATIO,
                windows_per_dim: int = FARMS_WINDOWS_PER_DIM, xmin: Any = "peak",
                thresh: Optional[float] = None, dtype: Union[torch.dtype, str] = torch.float64,
                method: str = "gram", device: Any = None, batch_bytes: int = 1 << 28,
                warn: bool = True) -> PowerLawFit:
    """The power-law fit of a matrix's FARMS spectrum (``alpha_peak_farms`` by default).

    Parameters
    ----------
    weight : torch.Tensor, shape (rows, cols)
        A weight matrix.
    window, aspect_ratio, windows_per_dim, dtype, method, device, batch_bytes
        As for :func:`farms_eigenvalues` (defaults: the paper's LLM setting).
    xmin : str or float, default "peak"
        ``xmin`` policy of :func:`~specmetrics.spectrum.fit_power_law`; ``"peak"`` is the
        reference's ``fix_fingers='xmin_peak'`` (AlphaPruning's ``alpha_peak``).
    thresh : float or None, default None
        Eigenvalues ``<= thresh`` are dropped before the fit; ``None`` keeps every positive
        one, as the reference (``filter_zeros=False``). WeightWatcher's ``1e-5`` is
        :data:`~specmetrics.spectrum.powerlaw.EVALS_THRESH`.
    warn : bool, default True
        Warn (:class:`~specmetrics.DegenerateSpectrumWarning`) when the fit fails.

    Returns
    -------
    PowerLawFit
        ``alpha`` is the FARMS alpha; ``success=False`` with ``alpha=nan`` when no fit is
        possible (e.g. a NaN weight), never an exception from the fit itself.

    Examples
    --------
    >>> g = torch.Generator().manual_seed(0)
    >>> w = torch.randn(512, 64, generator=g) @ torch.diag(torch.rand(64, generator=g) ** -1.5)
    >>> fit = farms_alpha(w, window=32, windows_per_dim=4)
    >>> fit.success, fit.method
    (True, 'peak')
    """
    func = "farms_alpha"
    xmin = check_xmin(xmin, func=func)
    if thresh is not None:
        thresh = check_interval(thresh, 0, math.inf, name="thresh", func=func)
    warn = check_bool(warn, name="warn", func=func)
    evals = _eigenvalues(func, weight, window, aspect_ratio, windows_per_dim, dtype, method,
                         device, batch_bytes)
    return fit_power_law(evals, xmin=xmin, thresh=thresh, warn=warn)
