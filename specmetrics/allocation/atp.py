"""ATP: layer-wise sparsity rising linearly with depth (an arithmetic progression).

ATP ("A Theoretical Perspective") shows that the reconstruction errors of a sparsified LLM
accumulate and grow from block to block ("reconstruction error explosion") and that sparsity
rates rising with depth as an arithmetic progression mitigate it. With ``L`` blocks, target
``S`` and common difference ``β``, block ``l = 0, ..., L - 1`` gets

    ``s_l = S - β (L - 1) / 2 + β l``,

whose mean is ``S``; ``β`` is *legal* when every ``s_l`` lies in [0, 1], i.e.
``β ≤ min(2S, 2(1 - S)) / (L - 1)`` (:func:`atp_max_step`), and the one hyperparameter ``β``
is chosen by a few trials (the reference steps ``β = 0.002, 0.004, ...`` while legal and keeps
the one of least WikiText perplexity; :func:`specmetrics.experiments.atp_search` does a small
grid on the calibration loss instead, so no test text is used for the choice).

Here ``s = c + β l`` with the shift ``c`` solved for the parameter-weighted target and the clip
bounds by :func:`~specmetrics.allocation.mapping.solve_budget`: for blocks of equal size and no
clipping, ``c = S - β (L - 1) / 2``, the reference's first term. A step above the legal range
pushes some ratios onto the clip bounds; the others are shifted so the mean stays exact (no
longer an arithmetic progression).

References
----------
.. [1] W. Huang, Y. Zhang, X. Zheng, F. Chao, R. Ji, "Determining Layer-wise Sparsity for Large
   Language Models Through a Theoretical Perspective", ICML 2025, arXiv:2502.14770 (code:
   github.com/wzhuang-xmu/ATP, ``main.py`` (``--beta``, the progression and the legality
   check), ``search.sh`` (the grid)).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Optional

import numpy as np

from .._validation import check_interval, check_positive_int, fail, is_integer
from .configs import register

__all__ = ["ATPConfig", "atp_max_step", "atp_ratios", "atp_step_grid"]


def _check_target_blocks(target, n_blocks, func: str) -> tuple[float, int]:
    target = check_interval(target, 0, 1, name="target", func=func, closed="left")
    n_blocks = check_positive_int(n_blocks, name="n_blocks", func=func)
    return target, n_blocks


def atp_max_step(target: float, n_blocks: int) -> float:
    """The largest legal common difference: ``min(2S, 2(1 - S)) / (L - 1)``.

    Parameters
    ----------
    target : float
        Mean sparsity ``S`` in [0, 1).
    n_blocks : int
        Number of blocks ``L`` (>= 1).

    Returns
    -------
    float
        The step at which the first block reaches 0 or the last reaches 1; ``inf`` for a single
        block (its ratio is ``S`` whatever the step).

    Examples
    --------
    >>> round(atp_max_step(0.7, 32), 6)  # LLaMA-7B at 70 %: 0.6 / 31
    0.019355
    """
    target, n_blocks = _check_target_blocks(target, n_blocks, "atp_max_step")
    if n_blocks == 1:
        return math.inf
    return min(2 * target, 2 * (1 - target)) / (n_blocks - 1)


def atp_ratios(target: float, n_blocks: int, step: float) -> np.ndarray:
    """ATP's progression ``s_l = S - β (L - 1) / 2 + β l`` (unclipped).

    Parameters
    ----------
    target : float
        Mean sparsity ``S`` in [0, 1).
    n_blocks : int
        Number of blocks ``L``.
    step : float
        Common difference ``β`` >= 0.

    Returns
    -------
    ndarray, shape (n_blocks,)

    Examples
    --------
    >>> atp_ratios(0.5, 3, 0.1).round(6).tolist()
    [0.4, 0.5, 0.6]
    """
    target, n_blocks = _check_target_blocks(target, n_blocks, "atp_ratios")
    step = check_interval(step, 0, math.inf, name="step", func="atp_ratios", closed="left")
    return target - step * (n_blocks - 1) / 2 + step * np.arange(n_blocks, dtype=np.float64)


def atp_step_grid(target: float, n_blocks: int, *, n: int = 5) -> tuple[float, ...]:
    """A small grid of legal steps: ``k / n`` of :func:`atp_max_step`, ``k = 1, ..., n``.

    Parameters
    ----------
    target : float
    n_blocks : int
    n : int, default 5
        Number of candidates.

    Returns
    -------
    tuple of float
        Increasing steps, the last the legal maximum; ``(0.0,)`` for a single block.

    Examples
    --------
    >>> [round(b, 4) for b in atp_step_grid(0.7, 4, n=3)]
    [0.0667, 0.1333, 0.2]
    """
    func = "atp_step_grid"
    n = check_positive_int(n, name="n", func=func)
    top = atp_max_step(target, n_blocks)
    if not math.isfinite(top):
        return (0.0,)
    return tuple(top * k / n for k in range(1, n + 1))


@register
@dataclass(frozen=True)
class ATPConfig:
    """ATP: sparsity rising linearly with block depth, ``s_l = c + β l``.

    Parameters
    ----------
    step : float or None, default None
        The common difference ``β`` in [0, 1] between consecutive blocks (0: uniform).
        ``None``: chosen by :func:`specmetrics.experiments.atp_search` (which
        :func:`~specmetrics.experiments.compare_allocations` runs for it);
        :func:`~specmetrics.allocate` needs a number.
    steps : tuple of float or None, default None
        The candidate steps of the search (``None``: :func:`atp_step_grid`, five legal steps up
        to :func:`atp_max_step`).
    search_method : str, default "wanda"
        The pruning method each candidate is pruned with during the search.
    search_nsamples : int or None, default None
        Calibration windows the search prunes with and measures the loss on (``None``: all of
        the calibration set).

    Notes
    -----
    Uses no scores (``inputs = None``): only each unit's block index. With ``units="block"``
    (the default) every matrix of block ``l`` gets ``s_l``; matrices outside the blocks sit at
    the middle depth.

    References
    ----------
    .. [1] W. Huang et al., "Determining Layer-wise Sparsity for Large Language Models Through a
       Theoretical Perspective", ICML 2025, arXiv:2502.14770.
    """

    name: ClassVar[str] = "atp"
    #: no scores: a depth trend
    inputs: ClassVar[None] = None
    relative: ClassVar[str] = "base"
    #: the grid runners choose the step with :func:`specmetrics.experiments.atp_search` when it
    #: is ``None``
    needs_search: ClassVar[bool] = True

    step: Optional[float] = None
    steps: Optional[tuple] = None
    search_method: str = "wanda"
    search_nsamples: Optional[int] = None

    def __post_init__(self):
        func = "ATPConfig"
        if self.step is not None:
            object.__setattr__(self, "step", check_interval(
                self.step, 0, 1, name="step", func=func, closed="both"))
        if self.steps is not None:
            values = self.steps
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") \
                    or not len(tuple(values)):
                raise fail("steps", func, "None or a non-empty tuple of steps in [0, 1]", values)
            object.__setattr__(self, "steps", tuple(
                check_interval(v, 0, 1, name="steps", func=func, closed="both")
                for v in values))
        if not isinstance(self.search_method, str) or not self.search_method:
            raise fail("search_method", func, "the name of a pruning method (e.g. 'wanda')",
                       self.search_method)
        if self.search_nsamples is not None and (
                isinstance(self.search_nsamples, bool) or not is_integer(self.search_nsamples)
                or int(self.search_nsamples) < 1):
            raise fail("search_nsamples", func, "None or an integer >= 1", self.search_nsamples)
        if self.search_nsamples is not None:
            object.__setattr__(self, "search_nsamples", int(self.search_nsamples))

    def map_units(self, scores, *, depth=None, n_blocks=None):
        """``(β l, 1)``: ratios ``c + β l`` (``l = depth · (n_blocks - 1)``, the block index),
        the shift ``c`` solved for the target."""
        if self.step is None:
            raise fail("method", "allocate", "an ATPConfig with a step (choose one with "
                       "specmetrics.experiments.atp_search, or let compare_allocations search)",
                       self)
        if n_blocks is None:
            raise ValueError("ATPConfig.map_units needs n_blocks (allocate passes it).")
        depth = np.asarray(depth, dtype=np.float64)
        base = self.step * max(1, int(n_blocks) - 1) * depth
        return base, np.ones_like(base)
