"""Plain torch reference of the CATS-style sparse MLP: the oracle the kernels are tested against.

``y = down(a ⊙ m ⊙ up(x))`` with ``a = SiLU(gate(x))`` and ``m = |a| > t`` (``|a| <= t``
zeroed, NaN kept), exactly what a LLaMA/Mistral/Qwen2 MLP computes when its activation output
is thresholded (:class:`specmetrics.activations.sparsify.TorchThreshold` on the ``silu_gate``
site). Each product is torch's own, in ``x``'s dtype; ``t`` must already be rounded to that
dtype.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["masked_activation", "sparse_mlp"]


def masked_activation(x: torch.Tensor, gate: torch.Tensor, threshold: float) -> torch.Tensor:
    """``SiLU(x @ gate.T)`` with the entries ``|.| <= threshold`` set to zero: (..., I)."""
    a = F.silu(F.linear(x, gate))
    return a.masked_fill(a.abs() <= threshold, 0)


def sparse_mlp(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
               threshold: float) -> torch.Tensor:
    """x (..., H), gate and up (I, H), down (H, I) -> (..., H)."""
    return F.linear(masked_activation(x, gate, threshold) * F.linear(x, up), down)
