"""Plain torch reference of the activation-sparse GEMV: the oracle the kernel is tested against.

``y = x_masked @ weight.T`` with ``x_masked = x`` where ``|x| > t`` and ``0`` where
``|x| <= t`` (NaN inputs are kept, as in a dense product), ``t`` rounded to ``x``'s dtype
first. The product is torch's own (``F.linear``): in ``x``'s dtype, float32 accumulation where
the device does so (CPU and cuBLAS for float16/bfloat16). Any weight layout (row-major or the
prepared K-major one) gives the same values.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["mask_input", "sparse_gemv"]


def mask_input(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``x`` with the entries ``|x| <= threshold`` set to zero (a new tensor).

    ``threshold`` must already be rounded to ``x``'s dtype (see
    :func:`specmetrics.kernels.rounded_threshold`) for the result to match the kernels on every
    device.
    """
    return x.masked_fill(x.abs() <= threshold, 0)


def sparse_gemv(x: torch.Tensor, weight: torch.Tensor, threshold: float) -> torch.Tensor:
    """``mask_input(x, threshold) @ weight.T``: x (..., K), weight (N, K) -> (..., N)."""
    return F.linear(mask_input(x, threshold), weight)
