"""Pure mask functions: scores in, boolean mask out (``True`` = pruned, i.e. set to zero).

Every function selects an *exact* number of entries: the ``k`` lowest scores of its group, ties
broken deterministically in favour of the lower index (the order a stable ascending sort gives,
as Wanda's ``torch.sort(..., stable=True)``). Selection uses ``kthvalue`` plus a cumulative count
of ties, so it is O(n) per group and needs no full sort of a large matrix.

Counts: a matrix of ``n`` weights pruned at ratio ``s`` loses exactly ``round(n · s)`` weights
(the rounding of one weight per matrix), whatever the pattern of groups. Where the selection is
per group (Wanda's rows, SparseGPT's rows × 128-column tiles), the counts are spread over the
groups by :func:`spread_counts`: group ``g`` gets ``R(c_g · s) - R(c_{g-1} · s)`` with ``c_g`` the
number of weights in groups ``0..g`` and ``R`` rounding half up, so every group is within one
weight of ``size · s`` and the total is exact. The reference scripts prune ``int(size · s)`` per
group, which falls short by up to one weight per group (a 70 % Wanda allocation of LLaMA lands at
0.6993); where ``size · s`` is an integer (50 % of an even width) the counts, and the masks, are
the reference's.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import check_interval, check_positive_int, fail

__all__ = [
    "spread_counts",
    "lowest_k_per_row",
    "row_topk_mask",
    "nm_mask",
    "matrix_threshold_mask",
    "apply_mask",
]


def _check_scores(scores, func: str) -> Tensor:
    if not isinstance(scores, Tensor) or scores.ndim != 2:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise fail("scores", func, "a 2-D tensor of shape (out_features, in_features)", got)
    if scores.dtype == torch.bool or scores.is_complex():
        raise fail("scores", func, "a real tensor", scores.dtype)
    if scores.dtype in (torch.float32, torch.float64):
        out = scores.detach()
    elif scores.is_floating_point():  # float16 / bfloat16: exact in float32
        out = scores.detach().float()
    else:  # integers: exact in float64 up to 2**53
        out = scores.detach().double()
    if out.numel() and not bool(torch.isfinite(out).all()):
        raise fail("scores", func, "finite (no NaN or inf)", "a tensor with non-finite entries")
    return out


def check_weight(weight, func: str) -> Tensor:
    """A detached 2-D real floating weight (internal helper shared by the pruning functions)."""
    if not isinstance(weight, Tensor) or weight.ndim != 2:
        got = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise fail("weight", func, "a 2-D tensor of shape (out_features, in_features)", got)
    if not weight.is_floating_point():
        raise fail("weight", func, "a real floating-point tensor", weight.dtype)
    return weight.detach()


def lowest_k(scores: Tensor, k: int) -> Tensor:
    """Mask of the ``k`` lowest entries of each row of a 2-D tensor, ties to the lower index."""
    rows, cols = scores.shape
    if k <= 0 or rows == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k >= cols:
        return torch.ones(scores.shape, dtype=torch.bool, device=scores.device)
    kth = torch.kthvalue(scores, k, dim=1, keepdim=True).values  # the k-th smallest per row
    below = scores < kth
    # Of the entries equal to the k-th value, take the first (k - #below) in index order.
    need = k - below.sum(dim=1, keepdim=True)
    tie = scores == kth
    return below | (tie & (torch.cumsum(tie, dim=1) <= need))


def _round_half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def spread_counts(sizes, sparsity: float) -> list[int]:
    """How many weights each group prunes so that the total is exactly ``round(Σ sizes · s)``.

    Parameters
    ----------
    sizes : sequence of int
        Number of weights in each group, in order.
    sparsity : float
        Fraction in [0, 1].

    Returns
    -------
    list of int
        ``k_g = R(c_g s) - R(c_{g-1} s)``, ``c_g`` the cumulative size; each ``k_g`` is within one
        of ``size_g · s`` and ``Σ k_g = R(Σ size · s)``.

    Examples
    --------
    >>> spread_counts([10, 10, 10], 0.25)
    [3, 2, 3]
    >>> spread_counts([4, 4], 0.5)
    [2, 2]
    """
    out, done, cumulative = [], 0, 0
    for size in sizes:
        cumulative += int(size)
        k = _round_half_up(cumulative * sparsity) - done
        out.append(min(max(k, 0), int(size)))
        done += out[-1]
    return out


def lowest_k_per_row(scores: Tensor, ks) -> Tensor:
    """Mask of the ``ks[i]`` lowest entries of row ``i`` (ties to the lower index)."""
    ks = [int(k) for k in ks]
    mask = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    for k in sorted(set(ks)):
        rows = torch.tensor([i for i, ki in enumerate(ks) if ki == k], device=scores.device)
        if rows.numel():
            mask[rows] = lowest_k(scores[rows], k)
    return mask


def row_topk_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Prune the same number of lowest scores in every output row (Wanda, unstructured).

    Parameters
    ----------
    scores : torch.Tensor, shape (out_features, in_features)
        Real, finite importance scores; lower is pruned first.
    sparsity : float
        Fraction in [0, 1]. The matrix prunes exactly ``round(numel · s)`` entries, spread over
        the rows by :func:`spread_counts` (each row within one of ``in_features · s``; the
        reference's ``int(in_features · s)`` per row where that is an integer).

    Returns
    -------
    torch.BoolTensor, shape (out_features, in_features)
        ``True`` where pruned: in each row its ``k_i`` lowest scores, ties going to the lower
        column index (the order of a stable ascending sort, as in Wanda).

    References
    ----------
    .. [1] M. Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
       2023; ``lib/prune.py::prune_wanda``.
    """
    scores = _check_scores(scores, "row_topk_mask")
    s = check_interval(sparsity, 0, 1, name="sparsity", func="row_topk_mask", closed="both")
    rows, cols = scores.shape
    return lowest_k_per_row(scores, spread_counts([cols] * rows, s))


def nm_mask(scores: Tensor, n: int, m: int) -> Tensor:
    """N:M mask: in each group of ``m`` consecutive input columns prune the ``n`` lowest scores.

    Parameters
    ----------
    scores : torch.Tensor, shape (out_features, in_features)
        Real, finite scores; ``in_features`` must be divisible by ``m``.
    n : int
        Zeros per group, ``0 < n < m``.
    m : int
        Group size (columns ``[g·m, (g+1)·m)`` of each row form group ``g``).

    Returns
    -------
    torch.BoolTensor, shape (out_features, in_features)
        ``True`` where pruned; exactly ``n`` per group, ties to the lower column index.

    Examples
    --------
    >>> nm_mask(torch.arange(1.0, 9.0)[None], 2, 4).int().tolist()
    [[1, 1, 0, 0, 1, 1, 0, 0]]
    """
    func = "nm_mask"
    scores = _check_scores(scores, func)
    m = check_positive_int(m, name="m", func=func, minimum=2)
    n = check_positive_int(n, name="n", func=func)
    if n >= m:
        raise fail("n", func, f"smaller than m = {m}", n)
    rows, cols = scores.shape
    if cols % m != 0:
        raise fail("scores", func, f"of a shape whose in_features is divisible by m = {m}",
                   tuple(scores.shape))
    grouped = scores.reshape(rows * (cols // m), m)
    return lowest_k(grouped, n).reshape(rows, cols)


def matrix_threshold_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Prune the lowest scores of the whole matrix under one threshold (magnitude baseline).

    Parameters
    ----------
    scores : torch.Tensor, shape (out_features, in_features)
        Real, finite scores.
    sparsity : float
        Fraction in [0, 1]; exactly ``round(numel · sparsity)`` entries are pruned.

    Returns
    -------
    torch.BoolTensor, shape (out_features, in_features)
        ``True`` where pruned: every pruned score is <= every kept one; among scores equal to
        the threshold the first in row-major order are pruned, so the count is exact.
    """
    scores = _check_scores(scores, "matrix_threshold_mask")
    s = check_interval(sparsity, 0, 1, name="sparsity", func="matrix_threshold_mask",
                       closed="both")
    k = _round_half_up(scores.numel() * s)
    return lowest_k(scores.reshape(1, -1), k).reshape(scores.shape)


def apply_mask(weight: Tensor, mask: Tensor) -> Tensor:
    """Return ``weight`` with the masked entries set to zero (a new tensor; inputs untouched).

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
    mask : torch.BoolTensor, same shape
        ``True`` = pruned.

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``weight``.
    """
    if not isinstance(weight, Tensor):
        raise fail("weight", "apply_mask", "a torch.Tensor", type(weight).__name__)
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool:
        raise fail("mask", "apply_mask", "a bool torch.Tensor",
                   mask.dtype if isinstance(mask, Tensor) else type(mask).__name__)
    if mask.shape != weight.shape:
        raise fail("mask", "apply_mask", f"of the weight's shape {tuple(weight.shape)}",
                   tuple(mask.shape))
    return weight.masked_fill(mask.to(weight.device), 0)
