"""Wanda: prune by weight magnitude times input-activation norm, per output row.

Score ``S_ij = |W_ij| · sqrt(s_j)`` with ``s_j`` the calibration statistic of
:class:`~specmetrics.pruning.stats.SquaredNormStats`. Unstructured: every output row prunes its
``⌊C_in · s⌋`` lowest scores (stable order); N:M: the N lowest of each group of M consecutive
input columns. No weight update.

References
----------
.. [1] M. Sun, Z. Liu, A. Bair, J. Z. Kolter, "A Simple and Effective Pruning Approach for Large
   Language Models", arXiv:2306.11695, 2023 (code: github.com/locuslab/wanda, ``lib/prune.py``).
"""
from __future__ import annotations

import torch
from torch import Tensor

from .._validation import fail
from ..calibration.stats import input_weighted_magnitude
from .configs import resolve_pattern
from .masks import check_weight, nm_mask, row_topk_mask

__all__ = ["wanda_scores", "wanda_mask"]


def wanda_scores(weight: Tensor, sq_norms: Tensor) -> Tensor:
    """Wanda importance scores ``|W_ij| · sqrt(s_j)``.

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        Any real floating dtype; not modified.
    sq_norms : torch.Tensor, shape (in_features,)
        ``s_j``: per-input-channel squared norms of the calibration inputs
        (:attr:`SquaredNormStats.value <specmetrics.pruning.stats.SquaredNormStats>`); finite,
        >= 0. Moved to the weight's device.

    Returns
    -------
    torch.Tensor, shape (out_features, in_features), float32
    """
    func = "wanda_scores"
    w = check_weight(weight, func)
    if not isinstance(sq_norms, Tensor) or sq_norms.shape != (w.shape[1],):
        got = tuple(sq_norms.shape) if isinstance(sq_norms, Tensor) else type(sq_norms).__name__
        raise fail("sq_norms", func, f"a tensor of shape (in_features,) = ({w.shape[1]},)", got)
    s = sq_norms.detach().to(w.device, torch.float32)
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise fail("sq_norms", func, "finite and >= 0", "a tensor with negative or non-finite "
                   "entries")
    return input_weighted_magnitude(w, s)


def wanda_mask(weight: Tensor, sq_norms: Tensor, sparsity: float, *,
               pattern: str = "unstructured") -> Tensor:
    """Wanda pruning mask.

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        Any real floating dtype; not modified.
    sq_norms : torch.Tensor, shape (in_features,)
        ``s_j`` as for :func:`wanda_scores`.
    sparsity : float
        Fraction in [0, 1]. Unstructured: each output row prunes exactly
        about ``in_features · sparsity`` weights, the matrix exactly ``round(numel · sparsity)``
        (:func:`~specmetrics.pruning.masks.row_topk_mask`). For an N:M pattern it must equal N/M.
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (``in_features`` divisible by M).

    Returns
    -------
    torch.BoolTensor, shape (out_features, in_features)
        ``True`` = pruned: the lowest scores of each row (or group), ties to the lower column
        index as Wanda's stable sort.
    """
    nm, s = resolve_pattern(pattern, sparsity, "wanda_mask")
    scores = wanda_scores(weight, sq_norms)
    if nm is None:
        return row_topk_mask(scores, s)
    return nm_mask(scores, *nm)
