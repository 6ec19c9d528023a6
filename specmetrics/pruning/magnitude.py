"""Magnitude pruning: zero the weights of smallest absolute value (no calibration data)."""
from __future__ import annotations

from torch import Tensor

from .configs import resolve_pattern
from .masks import check_weight, matrix_threshold_mask, nm_mask

__all__ = ["magnitude_mask"]


def magnitude_mask(weight: Tensor, sparsity: float, *, pattern: str = "unstructured") -> Tensor:
    """Mask of the smallest-magnitude weights.

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        Any real floating dtype; not modified.
    sparsity : float
        Fraction in [0, 1] to prune. Unstructured: exactly ``round(numel · sparsity)`` weights of
        the whole matrix under one threshold (Wanda's ``prune_magnitude`` baseline). For an N:M
        pattern it must equal N/M.
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"``: the N smallest ``|W_ij|`` of each group of M
        consecutive input columns (``in_features`` divisible by M).

    Returns
    -------
    torch.BoolTensor, shape (out_features, in_features)
        ``True`` = pruned. Ties go to the lower (row-major) index, so counts are exact.

    See Also
    --------
    specmetrics.pruning.masks.matrix_threshold_mask, specmetrics.pruning.masks.nm_mask
    """
    nm, s = resolve_pattern(pattern, sparsity, "magnitude_mask")
    scores = check_weight(weight, "magnitude_mask").abs()
    if nm is None:
        return matrix_threshold_mask(scores, s)
    return nm_mask(scores, *nm)
