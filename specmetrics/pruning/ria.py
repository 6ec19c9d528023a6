"""RIA: prune by relative importance times input-activation norm (Relative Importance and
Activations).

With ``|W|`` the absolute weight (shape ``(out, in)``), ``R_i = Σ_j |W_ij|`` the absolute sum of
output row ``i`` and ``C_j = Σ_i |W_ij|`` that of input column ``j``, the relative importance of a
weight is its share of both the row and the column it connects,

    ``RI_ij = |W_ij| / C_j + |W_ij| / R_i``,

and RIA weighs it by the input channel's activation norm to the power ``a``:

    ``RIA_ij = RI_ij · (‖X_j‖₂)^a = RI_ij · s_j^(a/2)``,

with ``s_j = ‖X_j‖₂²`` the calibration statistic of
:class:`~specmetrics.calibration.SquaredNormStats` (Wanda's) and ``a = 0.5`` the paper's and the
reference's default (``--a 0.5``). A weight whose row or column is all zeros scores 0 (the
reference divides 0 by 0 there). The score does not change when the whole matrix is multiplied by
``c > 0``, and multiplying ``s`` by ``k > 0`` scales every score by the same ``k^(a/2)``, so the
masks are invariant to both; ``a = 0`` is the weights-only "relative importance" (the
reference's ``--prune_method ri``).

Which weights are compared (``comparison``, unstructured patterns only):

``"matrix"`` (default)
    one threshold over the whole matrix, as the reference does by default (``prune_ria`` without
    ``--per_outneuron``): the matrix prunes exactly ``round(numel · s)`` weights
    (:func:`~specmetrics.pruning.masks.matrix_threshold_mask`). The reference keeps every score
    ``<=`` the ``int(numel · s)``-th smallest and so prunes one weight more (plus ties).
``"row"``
    the same count in every output row, as Wanda (the reference's ``--per_outneuron``): exactly
    ``round(numel · s)`` in all, spread over the rows by
    :func:`~specmetrics.pruning.masks.spread_counts`
    (:func:`~specmetrics.pruning.masks.row_topk_mask`). The row term ``|W_ij| / R_i`` is then a
    constant factor within each row, so only the column term changes the ranking from Wanda's.

N:M patterns prune the N lowest scores of each group of M consecutive input columns, as the
reference's "directly N:M" path. The paper's channel permutation for N:M (the reference's
``--reallocation`` heuristic and ``--lsa`` linear-sum-assignment refinement) is **not**
implemented: its mask is N:M only in a permuted column order, so the model must permute each
matrix's inputs (and the producing layer's outputs) at run time to use it, which a per-matrix
pruning method cannot express.

References
----------
.. [1] Y. Zhang, H. Bai, H. Lin, J. Zhao, L. Hou, C. V. Cannistraci, "Plug-and-Play: An Efficient
   Post-training Pruning Method for Large Language Models", ICLR 2024, §3 (code:
   github.com/biomedical-cybernetics/Relative-importance-and-activation-pruning,
   ``lib/prune.py::prune_ria``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import torch
from torch import Tensor

from .._validation import check_choice, check_interval, fail
from ..calibration.stats import SquaredNormStats
from .base import MatrixUpdate
from .configs import _parse_pattern, resolve_pattern
from .masks import apply_mask, check_weight, matrix_threshold_mask, nm_mask, row_topk_mask

__all__ = ["RIAConfig", "ria_scores", "ria_mask"]

#: the groups of weights an unstructured RIA mask compares
COMPARISONS = ("matrix", "row")


def _check_power(power, func: str) -> float:
    return check_interval(power, 0, math.inf, name="power", func=func, closed="left")


def _check_comparison(comparison, func: str) -> str:
    return check_choice(comparison, COMPARISONS, name="comparison", func=func)


def ria_scores(weight: Tensor, sq_norms: Tensor, *, power: float = 0.5) -> Tensor:
    """RIA importance scores ``(|W_ij| / C_j + |W_ij| / R_i) · s_j^(power/2)``.

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        Any real floating dtype, finite; not modified. ``R_i`` and ``C_j`` are its absolute row
        and column sums.
    sq_norms : torch.Tensor, shape (in_features,)
        ``s_j = ‖X_j‖₂²``: per-input-channel squared norms of the calibration inputs
        (:attr:`SquaredNormStats.value <specmetrics.calibration.SquaredNormStats>`); finite,
        >= 0. Moved to the weight's device.
    power : float, default 0.5
        The exponent ``a`` of the activation norm ``‖X_j‖₂`` (the paper's default 0.5), finite
        and >= 0; 0 gives the relative importance alone (``s`` is then ignored, ``0^0 = 1``).

    Returns
    -------
    torch.Tensor, shape (out_features, in_features), float32
        A weight in an all-zero row or column scores 0.

    Examples
    --------
    >>> w = torch.tensor([[1.0, -2.0, 3.0], [4.0, 0.0, -1.0]])
    >>> ria_scores(w, torch.ones(3)).mul(60).round().tolist()  # RI = |W|/C + |W|/R, in 60ths
    [[22.0, 80.0, 75.0], [96.0, 0.0, 27.0]]
    """
    func = "ria_scores"
    w = check_weight(weight, func)
    a = _check_power(power, func)
    if not isinstance(sq_norms, Tensor) or sq_norms.shape != (w.shape[1],):
        got = tuple(sq_norms.shape) if isinstance(sq_norms, Tensor) else type(sq_norms).__name__
        raise fail("sq_norms", func, f"a tensor of shape (in_features,) = ({w.shape[1]},)", got)
    if not sq_norms.is_floating_point():
        raise fail("sq_norms", func, "a real floating-point tensor", sq_norms.dtype)
    s = sq_norms.detach().to(w.device, torch.float32)
    if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
        raise fail("sq_norms", func, "finite and >= 0", "a tensor with negative or non-finite "
                   "entries")
    mag = w.float().abs()
    if not bool(torch.isfinite(mag).all()):
        raise fail("weight", func, "finite (no NaN or inf)", "a tensor with non-finite entries")
    tiny = torch.finfo(torch.float32).tiny  # an all-zero row/column: 0 / tiny = 0
    col = mag.sum(dim=0, keepdim=True).clamp_min(tiny)  # C_j, shape (1, in)
    row = mag.sum(dim=1, keepdim=True).clamp_min(tiny)  # R_i, shape (out, 1)
    relative = mag / col + mag / row
    if a == 0.0:
        return relative
    return relative * s.pow(a / 2).reshape(1, -1)


def ria_mask(weight: Tensor, sq_norms: Tensor, sparsity: float, *,
             pattern: str = "unstructured", power: float = 0.5,
             comparison: str = "matrix") -> Tensor:
    """RIA pruning mask.

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        Any real floating dtype, finite; not modified.
    sq_norms : torch.Tensor, shape (in_features,)
        ``s_j`` as for :func:`ria_scores`.
    sparsity : float
        Fraction in [0, 1]; the matrix prunes exactly ``round(numel · sparsity)`` weights. For an
        N:M pattern it must equal N/M.
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (``in_features`` divisible by M).
    power : float, default 0.5
        The exponent ``a`` of ``‖X_j‖₂`` (see :func:`ria_scores`).
    comparison : {"matrix", "row"}, default "matrix"
        Unstructured only: the lowest scores of the whole matrix (the reference's default) or
        the same count in each output row (Wanda's grouping, the reference's
        ``--per_outneuron``). Ignored for N:M, whose groups are the M-column blocks.

    Returns
    -------
    torch.BoolTensor, shape (out_features, in_features)
        ``True`` = pruned; ties go to the lower (row-major) index.

    Examples
    --------
    >>> w = torch.tensor([[1.0, -2.0, 3.0], [4.0, 0.0, -1.0]])
    >>> ria_mask(w, torch.ones(3), 0.5).int().tolist()
    [[1, 0, 0], [0, 1, 1]]
    >>> ria_mask(w, torch.ones(3), 0.5, comparison="row").int().tolist()
    [[1, 0, 1], [0, 1, 0]]
    """
    func = "ria_mask"
    nm, s = resolve_pattern(pattern, sparsity, func)
    comparison = _check_comparison(comparison, func)
    _check_power(power, func)
    scores = ria_scores(weight, sq_norms, power=power)
    if nm is not None:
        if scores.shape[1] % nm[1]:
            raise fail("pattern", func, f"an N:M pattern whose M divides in_features = "
                       f"{scores.shape[1]}", pattern)
        return nm_mask(scores, *nm)
    if comparison == "row":
        return row_topk_mask(scores, s)
    return matrix_threshold_mask(scores, s)


@dataclass(frozen=True)
class RIAConfig:
    """RIA: prune by relative importance times activation norm,
    ``(|W_ij| / Σ_i|W_ij| + |W_ij| / Σ_j|W_ij|) · ‖X_j‖₂^a``.

    See :mod:`specmetrics.pruning.ria` for the formula and :func:`ria_mask` for the groups.
    Needs calibration data (Wanda's statistic, :class:`~specmetrics.calibration.SquaredNormStats`);
    no weight update.

    Parameters
    ----------
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (see :func:`~specmetrics.pruning.parse_pattern`). N:M
        masks are taken in the stored column order (no channel permutation).
    power : float, default 0.5
        The exponent ``a`` of the activation norm, >= 0 (the paper's and the reference's
        ``--a`` default 0.5; 0 ignores the activations).
    comparison : {"matrix", "row"}, default "matrix"
        Unstructured patterns: one threshold per matrix (the reference's default) or the same
        count per output row (``--per_outneuron``, Wanda's grouping).

    References
    ----------
    .. [1] Y. Zhang, H. Bai, H. Lin, J. Zhao, L. Hou, C. V. Cannistraci, "Plug-and-Play: An
       Efficient Post-training Pruning Method for Large Language Models", ICLR 2024 (code:
       github.com/biomedical-cybernetics/Relative-importance-and-activation-pruning).
    """

    name: ClassVar[str] = "ria"

    pattern: str = "unstructured"  # "unstructured" or "N:M": where the zeros may go
    power: float = 0.5  # exponent a of ||X_j||_2 (paper and reference default)
    comparison: str = "matrix"  # unstructured: "matrix" (reference default) or "row" (Wanda's)

    def __post_init__(self):
        func = "RIAConfig"
        _parse_pattern(self.pattern, func)
        object.__setattr__(self, "power", _check_power(self.power, func))
        object.__setattr__(self, "comparison", _check_comparison(self.comparison, func))

    @property
    def nm(self) -> Optional[tuple[int, int]]:
        """``(N, M)`` for an N:M pattern, else ``None``."""
        return _parse_pattern(self.pattern, "RIAConfig")

    @property
    def needs_calibration(self) -> bool:
        """``True``: the scores need the input norms of calibration activations."""
        return True

    #: the per-input-channel squared norms of the layer's calibration inputs (Wanda's)
    statistic: ClassVar[type] = SquaredNormStats

    def prune_matrix(self, weight, stat, sparsity: float) -> MatrixUpdate:
        """Zero the lowest RIA scores of the matrix (or of each row, or N:M group)."""
        mask = ria_mask(weight, stat.value, sparsity, pattern=self.pattern, power=self.power,
                        comparison=self.comparison)
        return MatrixUpdate(apply_mask(weight, mask))
