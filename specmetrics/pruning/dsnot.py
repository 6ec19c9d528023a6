"""DSnoT: training-free prune-and-grow on top of a sparse mask (Dynamic Sparse No Training).

Start from the mask of any method (Wanda by default) and, for each output row ``r``
independently, swap one pruned weight back in and one kept weight out per cycle so as to shrink
the row's *expected* reconstruction error. With ``c_j = (1/N) Σ_tokens x_j`` the mean over the
``N`` calibration samples of each sample's token sum of input ``j``
(:attr:`~specmetrics.calibration.moments.InputMomentStats.sums`), the contribution of weight
``W_rj`` to the row's mean output is ``m_rj = W_rj c_j`` and the expected error of a mask is

    ``e_r = Σ_{j pruned} m_rj``  (dense output minus sparse output, in expectation).

One cycle, for every row with ``|e_r| > threshold``:

grow
    among the pruned weights, the one with the largest ``m_rj / Var(x_j)^p`` if ``e_r > 0``
    (the smallest if ``e_r < 0``): a weight that cancels the error through an input of low
    variance (``p = var_power``; ``p = 0`` ranks by ``m_rj`` alone);
prune
    unstructured: among the kept weights whose ``m_rj`` has the sign opposite to ``e_r`` (pruning
    them also shrinks the error), the one of smallest Wanda score ``|W_rj| ‖x_j‖₂``; N:M: the
    kept weight of smallest Wanda score in the grown weight's group of M, so every group keeps
    its N zeros;
update
    ``e_r ← e_r + m_r,pruned − m_r,grown``.

Each row stops once ``|e_r| <= threshold``, after ``max_cycles`` cycles, when no candidate is
left (unstructured: no kept weight of the sign that shrinks its error), and, with
``same_sign`` (the default for N:M only, as the reference), when a swap would flip the sign of
its error. Every cycle keeps each row's number of zeros, so the achieved sparsity is the base
method's. The kept weights keep their dense values: DSnoT changes the mask only.

Candidates are visited as in the reference: the grow order is fixed once (the initially pruned
weights sorted by ``m / Var^p``, walked from both ends by two pointers), and the unstructured
prune order too (the initially kept weights with ``m < 0`` by ascending Wanda score, then those
with ``m > 0`` by descending score, walked from both ends), so each weight is considered at most
once. The reference's prune pointers do not stop at the end of their sign: once the kept
weights of the helpful sign are used up they walk on into those that *add* to the error,
largest Wanda score first. That never happens within 50 cycles on a 4096-wide LLaMA row, but on
narrow rows it does (tiny-llama-wt, 256 columns, 77 kept at 70 %: perplexity 80 → 1244 in one
measurement); here the row stops instead, which is the paper's pruning criterion.

References
----------
.. [1] Y. Zhang, L. Zhao, M. Lin, Y. Sun, Y. Yao, X. Han, J. Tanner, S. Liu, R. Ji, "Dynamic
   Sparse No Training: Training-Free Fine-tuning for Sparse LLMs", ICLR 2024, §3
   (code: github.com/zyxxmu/DSnoT, ``lib/prune.py::prune_DSnoT``, ``lib/layerwrapper.py``).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Optional

import torch
from torch import Tensor

from .._validation import check_bool, check_choice, check_int, check_interval, fail
from ..calibration.moments import InputMomentStats
from .base import MatrixUpdate
from .configs import WandaConfig, _parse_pattern
from .masks import apply_mask, check_weight

__all__ = ["DSnoTConfig", "DSnoTStats", "dsnot_mask"]


# ----------------------------------------------------------------------------------------------
# the pure algorithm

def _vector(value, name: str, func: str, length: int, device, *, nonnegative: bool) -> Tensor:
    if not isinstance(value, Tensor) or value.shape != (length,):
        got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
        raise fail(name, func, f"a tensor of shape (in_features,) = ({length},)", got)
    if not value.is_floating_point():
        raise fail(name, func, "a real floating-point tensor", value.dtype)
    v = value.detach().to(device)
    if not bool(torch.isfinite(v).all()):
        raise fail(name, func, "finite (no NaN or inf)", "a tensor with non-finite entries")
    if nonnegative and bool((v < 0).any()):
        raise fail(name, func, ">= 0 everywhere", "a tensor with negative entries")
    return v


def _ranks(keys: Tensor) -> Tensor:
    """Position of each entry of each row in the row's stable ascending order."""
    order = torch.sort(keys, dim=1, stable=True).indices
    ranks = torch.empty_like(order)
    ranks.scatter_(1, order, torch.arange(keys.shape[1], device=keys.device).expand_as(order))
    return ranks


def dsnot_mask(weight: Tensor, mask: Tensor, sums: Tensor, variance: Tensor, sq_norms: Tensor,
               *, pattern: str = "unstructured", max_cycles: int = 50, threshold: float = 0.1,
               var_power: float = 1.0, same_sign: Optional[bool] = None) -> Tensor:
    """DSnoT's prune-and-grow refinement of a pruning mask.

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        The dense weight; not modified.
    mask : torch.BoolTensor, same shape
        The initial mask (``True`` = pruned), e.g. Wanda's.
    sums : torch.Tensor, shape (in_features,)
        ``c_j``: the mean over calibration samples of each sample's token sum of input ``j``
        (:attr:`InputMomentStats.sums <specmetrics.calibration.moments.InputMomentStats>`).
        The expected error, and so ``threshold``, is in these units (sequence sums, as the
        reference).
    variance : torch.Tensor, shape (in_features,)
        ``Var(x_j)`` (>= 0), the growing criterion's denominator; zeros are raised to the
        smallest positive float.
    sq_norms : torch.Tensor, shape (in_features,)
        Wanda's ``s_j`` (>= 0); the pruning criterion is ``|W_rj| sqrt(s_j)``.
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (``in_features`` divisible by M): the swaps stay within
        a group of M columns, so an N:M mask stays N:M.
    max_cycles : int, default 50
        At most this many swaps per row (the reference's ``max_cycle_time``); 0 returns the
        initial mask.
    threshold : float, default 0.1
        A row stops once ``|e_r| <= threshold`` (the reference's ``update_threshold``).
    var_power : float, default 1.0
        Power ``p`` of the variance in the growing criterion (``pow_of_var_regrowing``).
    same_sign : bool or None, default None
        Stop a row instead of making a swap that would flip the sign of its error (the
        reference's ``--without_same_sign False``). ``None``: the reference's default, off for
        unstructured and on for N:M.

    Returns
    -------
    torch.BoolTensor, same shape and device as ``weight``
        The refined mask; every row (and every N:M group) has as many ``True`` as in ``mask``.

    Examples
    --------
    >>> w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    >>> start = torch.tensor([[False, False, True, True]])  # e = 3·1 + 0.5·1 = 3.5 > 0
    >>> ones = torch.ones(4)
    >>> dsnot_mask(w, start, ones, ones, ones, max_cycles=1).int().tolist()  # grow 3, prune -2
    [[0, 1, 0, 1]]
    """
    func = "dsnot_mask"
    w = check_weight(weight, func)
    rows, cols = w.shape
    if not isinstance(mask, Tensor) or mask.dtype != torch.bool or mask.shape != w.shape:
        got = ((tuple(mask.shape), mask.dtype) if isinstance(mask, Tensor)
               else type(mask).__name__)
        raise fail("mask", func, f"a bool tensor of the weight's shape {tuple(w.shape)}", got)
    nm = _parse_pattern(pattern, func)
    if nm is not None and cols % nm[1]:
        raise fail("pattern", func, f"an N:M pattern whose M divides in_features = {cols}",
                   pattern)
    max_cycles = check_int(max_cycles, name="max_cycles", func=func, minimum=0)
    threshold = check_interval(threshold, 0, math.inf, name="threshold", func=func)
    var_power = check_interval(var_power, 0, math.inf, name="var_power", func=func)
    if same_sign is not None:
        same_sign = check_bool(same_sign, name="same_sign", func=func)
    if same_sign is None:
        same_sign = nm is not None
    if not bool(torch.isfinite(w).all()):
        raise fail("weight", func, "finite (no NaN or inf)", "a tensor with non-finite entries")
    dtype = torch.float64 if w.dtype == torch.float64 else torch.float32
    c = _vector(sums, "sums", func, cols, w.device, nonnegative=False).to(dtype)
    var = _vector(variance, "variance", func, cols, w.device, nonnegative=True).to(dtype)
    s = _vector(sq_norms, "sq_norms", func, cols, w.device, nonnegative=True).to(dtype)

    pruned = mask.detach().to(w.device).clone()
    if max_cycles == 0 or rows == 0 or cols == 0:
        return pruned
    wf = w.to(dtype)
    metric = wf * c.reshape(1, -1)  # m_rj = W_rj c_j
    wanda = wf.abs() * torch.sqrt(s).reshape(1, -1)
    grow_key = metric
    if var_power > 0:
        grow_key = metric / var.clamp_min(torch.finfo(dtype).tiny).pow(var_power).reshape(1, -1)
    big = torch.finfo(dtype).max
    grow_key = torch.nan_to_num(grow_key, nan=0.0, posinf=big, neginf=-big)
    initially_pruned = pruned.clone()
    err = (metric.double() * initially_pruned).sum(dim=1)
    sign0 = torch.sign(err)

    # grow order: the pruned weights of each row by ascending m / Var^p (kept ones sent last)
    grow_order = torch.sort(grow_key.masked_fill(~initially_pruned, math.inf), dim=1,
                            stable=True).indices
    lo = torch.zeros(rows, dtype=torch.long, device=w.device)
    hi = initially_pruned.sum(dim=1) - 1
    index = torch.arange(rows, device=w.device)

    if nm is None:
        # prune order: kept with m < 0 by ascending Wanda rank, m == 0, then m > 0 by descending
        rank = _ranks(wanda.masked_fill(initially_pruned, math.inf))
        group = torch.where(metric < 0, 0, torch.where(metric == 0, 1, 2))
        group = group.masked_fill(initially_pruned, 3)
        secondary = torch.where(metric > 0, -rank, rank)
        first = torch.sort(secondary, dim=1, stable=True).indices
        second = torch.sort(group.gather(1, first), dim=1, stable=True).indices
        prune_order = first.gather(1, second)
        del rank, group, secondary, first, second  # (rows, cols) int64 each
        kept0 = ~initially_pruned
        n_neg = (kept0 & (metric < 0)).sum(dim=1)  # front of the prune order: m < 0
        n_kept = kept0.sum(dim=1)
        first_pos = n_kept - (kept0 & (metric > 0)).sum(dim=1)  # back of the order: m > 0
        plo = torch.zeros(rows, dtype=torch.long, device=w.device)
        phi = n_kept - 1
        active = torch.ones(rows, dtype=torch.bool, device=w.device)
        for _ in range(max_cycles):
            up = err > 0
            # a row stops when no kept weight of the sign that shrinks its error is left
            has_prune = torch.where(up, plo < n_neg, phi >= first_pos)
            active &= (err.abs() > threshold) & (lo <= hi) & has_prune
            if not bool(active.any()):
                break
            g = grow_order[index, torch.where(up, hi, lo).clamp(0, cols - 1)]
            p = prune_order[index, torch.where(up, plo, phi).clamp(0, cols - 1)]
            if same_sign:
                after = err + (metric[index, p] - metric[index, g]).double()
                active &= torch.sign(after) == sign0
            r, g, p = index[active], g[active], p[active]
            pruned[r, g] = False
            pruned[r, p] = True
            err[r] += (metric[r, p] - metric[r, g]).double()
            hi -= up.long()
            lo += (~up).long()
            plo += up.long()
            phi -= (~up).long()
        return pruned

    m = nm[1]
    # N:M: prune, in the grown weight's group, the initially kept weight of lowest Wanda score
    # still kept (weights DSnoT pruned, and the grown ones, are not candidates)
    eligible = wanda.masked_fill(initially_pruned, math.inf)
    offsets = torch.arange(m, device=w.device)
    active = torch.ones(rows, dtype=torch.bool, device=w.device)
    for _ in range(max_cycles):
        active &= (err.abs() > threshold) & (lo <= hi)
        if not bool(active.any()):
            break
        up = err > 0
        g = grow_order[index, torch.where(up, hi, lo).clamp(0, cols - 1)]
        start = g - g % m
        block = start.reshape(-1, 1) + offsets
        best, where = eligible.gather(1, block).min(dim=1)
        p = start + where
        has = torch.isfinite(best)
        after = err + (metric[index, p] - metric[index, g]).double()
        if same_sign:
            active &= ~(has & (torch.sign(after) != sign0))
        do = active & has
        r, g_do, p_do = index[do], g[do], p[do]
        pruned[r, g_do] = False
        pruned[r, p_do] = True
        eligible[r, p_do] = math.inf
        err[r] = after[do]
        hi -= up.long()
        lo += (~up).long()
    return pruned


# ----------------------------------------------------------------------------------------------
# the statistic and the config

class DSnoTStats:
    """The one statistic :func:`~specmetrics.prune` gives each matrix under DSnoT.

    It feeds every input batch to an
    :class:`~specmetrics.calibration.moments.InputMomentStats` (``moments``: DSnoT's sums,
    variances and Wanda norms) and to the base method's own statistic (``base``). When the base
    needs :class:`~specmetrics.calibration.SquaredNormStats` (Wanda), ``base`` *is* ``moments``
    (one accumulation); when it needs none (magnitude), ``base`` is ``None``.

    Parameters
    ----------
    in_features : int, optional
        Number of input channels.
    base_statistic : type or None, default SquaredNormStats
        The base method's ``statistic`` (a class called with ``in_features``), or ``None``.

    Attributes
    ----------
    moments : InputMomentStats
    base : statistic or None
    value : torch.Tensor
        ``moments.value`` (Wanda's squared norms).
    """

    def __init__(self, in_features: Optional[int] = None, *, base_statistic: Any = None):
        self.moments = InputMomentStats(in_features)
        if base_statistic is None:
            self.base = None
        elif isinstance(base_statistic, type) and isinstance(self.moments, base_statistic):
            self.base = self.moments
        else:
            self.base = base_statistic(in_features)

    def update(self, x: Tensor) -> None:
        """Add a batch of inputs to both statistics (see ``InputMomentStats.update``)."""
        self.moments.update(x)
        if self.base is not None and self.base is not self.moments:
            self.base.update(x)

    @property
    def nsamples(self) -> int:
        """Samples seen."""
        return self.moments.nsamples

    @property
    def value(self) -> Tensor:
        """Wanda's squared norms (``moments.value``)."""
        return self.moments.value


@dataclass(frozen=True)
class DSnoTConfig:
    """DSnoT: refine a base method's mask by training-free prune-and-grow swaps.

    The base method prunes the matrix; DSnoT then swaps weights within each output row to cancel
    the row's expected reconstruction error (see :func:`dsnot_mask` and the module docstring).
    The result is the dense weight under the refined mask: only the base's *mask* is used, so a
    weight update the base makes (SparseGPT's) is not kept, as in the reference, where DSnoT
    never updates weights. Per-row zero counts are the base's, so the achieved sparsity is too.

    Parameters
    ----------
    base : pruning method config, optional
        The initial mask's method: a registered config other than DSnoT (``WandaConfig``,
        ``MagnitudeConfig``, ``SparseGPTConfig``, ...). Default ``WandaConfig(pattern)``.
    pattern : str, optional
        ``"unstructured"`` or ``"N:M"``; defaults to the base's pattern, and must equal it when
        both are given.
    max_cycles : int, default 50
        Swaps per row at most (the reference's ``--max_cycle_time`` default).
    threshold : float, default 0.1
        A row stops once its expected error ``|e_r| <= threshold`` (``--update_threshold``),
        in units of the per-sequence input sums.
    var_power : float, default 1.0
        Power of the input variance in the growing criterion (``--pow_of_var_regrowing``);
        0 ignores the variance.
    variance : {"within", "pooled"}, default "within"
        ``"within"``: the token-weighted mean of the per-sequence variances, as the reference
        accumulates it; ``"pooled"``: the variance over all calibration tokens.
    same_sign : bool or None, default None
        Stop a row rather than flip the sign of its expected error (``--without_same_sign
        False``); ``None``: the reference's default, off for unstructured, on for N:M. On rows
        much narrower than an LLM's, where 50 swaps are a large part of the row, ``True`` stops
        each row before a swap that would overshoot its error.

    Notes
    -----
    Where this differs from the reference script (``lib/prune.py::prune_DSnoT``):

    - the reference leaves the MLP matrices of LLaMA with their initial mask by default
      (``--skip_layer mlp``); here every matrix given to the method is refined (a pruning method
      sees one matrix, not its name);
    - with ``initial_method=sparsegpt`` the reference scores with ``W² / [H⁻¹]_jj²`` and never
      accumulates H; here any registered base runs as it does on its own and only its mask is
      taken;
    - a row with no kept weight of the helpful sign left stops (the reference walks on into
      weights that add to the error; see the module docstring), and in N:M a group with no
      kept candidate left skips the swap;
    - the N:M pruning candidate is ranked by the Wanda score whatever the base (the reference
      uses the base's score).

    References
    ----------
    .. [1] Y. Zhang et al., "Dynamic Sparse No Training: Training-Free Fine-tuning for Sparse
       LLMs", ICLR 2024 (code: github.com/zyxxmu/DSnoT).
    """

    name: ClassVar[str] = "dsnot"

    base: Any = None  # the initial mask's method; None: WandaConfig(pattern)
    pattern: Optional[str] = None  # None: the base's pattern
    max_cycles: int = 50  # swaps per row at most (reference default)
    threshold: float = 0.1  # stop a row once |expected error| <= threshold (reference default)
    var_power: float = 1.0  # power of Var(x_j) in the growing criterion (reference default)
    variance: str = "within"  # "within" (reference) or "pooled" (all tokens)
    same_sign: Optional[bool] = None  # stop before an error sign flip; None: reference default

    def __post_init__(self):
        func = "DSnoTConfig"
        if self.pattern is not None:
            _parse_pattern(self.pattern, func)
        from .registry import METHODS

        allowed = tuple(c for c in METHODS.values() if c is not DSnoTConfig)
        base = self.base
        if base is None:
            base = WandaConfig(pattern=self.pattern or "unstructured")
        elif not isinstance(base, allowed) or isinstance(base, DSnoTConfig):
            names = ", ".join(c.__name__ for c in allowed)
            raise fail("base", func, f"None or a pruning method config other than DSnoT "
                       f"({names})", base)
        if self.pattern is not None and base.pattern != self.pattern:
            raise fail("pattern", func, f"None or the base's own pattern {base.pattern!r}",
                       self.pattern)
        object.__setattr__(self, "base", base)
        object.__setattr__(self, "pattern", base.pattern)
        object.__setattr__(self, "max_cycles",
                           check_int(self.max_cycles, name="max_cycles", func=func, minimum=0))
        for field in ("threshold", "var_power"):
            value = check_interval(getattr(self, field), 0, math.inf, name=field, func=func)
            object.__setattr__(self, field, value)
        check_choice(self.variance, ("within", "pooled"), name="variance", func=func)
        if self.same_sign is not None:
            object.__setattr__(self, "same_sign",
                               check_bool(self.same_sign, name="same_sign", func=func))

    @property
    def nm(self) -> Optional[tuple[int, int]]:
        """``(N, M)`` for an N:M pattern, else ``None`` (the base's)."""
        return self.base.nm

    @property
    def needs_calibration(self) -> bool:
        """``True``: the swaps need the input moments of calibration activations."""
        return True

    @property
    def statistic(self):
        """``in_features -> DSnoTStats`` for this config's base method."""
        return functools.partial(DSnoTStats, base_statistic=self.base.statistic)

    def prune_matrix(self, weight, stat, sparsity: float) -> MatrixUpdate:
        """The base's mask, refined by :func:`dsnot_mask`; dense values where kept."""
        if not isinstance(stat, DSnoTStats):
            raise fail("stat", "DSnoTConfig.prune_matrix", "a DSnoTStats (made by "
                       "DSnoTConfig(...).statistic)", type(stat).__name__)
        update = self.base.prune_matrix(weight, stat.base, sparsity)
        initial = update.weight.detach().to(weight.device) == 0
        moments = stat.moments
        variance = moments.within_variance if self.variance == "within" else moments.variance
        mask = dsnot_mask(weight, initial, moments.sums, variance, moments.value,
                          pattern=self.pattern, max_cycles=self.max_cycles,
                          threshold=self.threshold, var_power=self.var_power,
                          same_sign=self.same_sign)
        return MatrixUpdate(apply_mask(weight, mask), dict(update.extras))
