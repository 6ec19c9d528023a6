"""DLP: Dynamic Layerwise Pruning, layer importance from the median Wanda score.

For each unit (a decoder block by default) DLP pools the Wanda scores ``|W_ij| · ‖X_j‖₂`` of
all its matrices and takes their median as the unit's *absolute unimportance* ``U_l``; it turns
these into relative importances ``I_l = 1 - U_l / Σ_k U_k``, min-max normalises them to ``u_l``
and gives each unit the keep ratio (density) ``1 - S + 2α (u_l - mean(u))``, i.e. the sparsity

    ``s_l = S - 2α (u_l - mean(u))``,

with ``α = 0.15`` in the paper's scripts: a unit of larger median score (more "unimportant" in
the paper's terms) gets *more* sparsity. As ``Σ U > 0`` the normalised importance is
``u = 1 - minmax(U)``, so ``Σ U`` only fixes the direction. Here ``s = c - 2α u`` with the shift
``c`` solved for the parameter-weighted target (and the clip bounds) by
:func:`~specmetrics.allocation.mapping.solve_budget`: for units of equal size and no clipping,
the paper's formula exactly.

Notes on the reference code (``lib/prune.py``): ``get_dlp_ratios`` (the unstructured path of
``run.py``) takes the *mean* of the pooled scores while the paper (and the ``--strategy``
argument's default ``"median"``, used by the structured path) takes the median; both are
offered (``statistic``), the paper's median by default. The median is ``torch.median`` of the
float32 scores (the lower of the two middle values for an even count), as the code. The code
floors a non-positive layer sparsity at 0.01; here the ``clip`` of
:func:`~specmetrics.allocate` bounds every ratio and the target stays exact.

The activation statistics are those of OWL (the dense model's per-input-channel sums of squared
inputs, :func:`~specmetrics.allocation.calibration_input_norms` or a forward pass with hooks);
the unimportance does not depend on their common scale (``I`` is a ratio of medians that all
scale by the same factor).

References
----------
.. [1] Y. Chen, B. Cheng, J. Han, Y. Zhang, Y. Li, S. Zhang, "DLP: Dynamic Layerwise Pruning in
   Large Language Models", ICML 2025, arXiv:2505.23807 (code: github.com/ironartisan/DLP,
   ``lib/prune.py::get_dlp_ratios``, ``run.py``: ``--alpha 0.15``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Sequence

import numpy as np
import torch

from .._validation import check_choice, check_interval, fail
from ..calibration.stats import input_weighted_magnitude
from .owl import unit_weights_and_norms
from .configs import register
from .mapping import NORMALIZATIONS, normalize_scores

__all__ = ["DLPConfig", "DLP_STATISTICS", "dlp_unimportance", "dlp_importance", "dlp_offsets"]

#: how the pooled Wanda scores of a unit are summarised: the paper's median, or the mean of the
#: reference's unstructured path
DLP_STATISTICS = ("median", "mean")


def dlp_unimportance(model, units: Mapping[str, Sequence[str]],
                     input_sq_norms: Mapping[str, Any], *,
                     statistic: str = "median") -> dict[str, float]:
    """DLP's absolute unimportance of each unit: the median of its pooled Wanda scores.

    Parameters
    ----------
    model : torch.nn.Module
        Provides the weights (``model.get_submodule(name)``); not modified.
    units : mapping of str to sequence of str
        ``{unit: [module names whose Wanda scores are pooled]}``.
    input_sq_norms : mapping of str to torch.Tensor or array_like
        Per-input-channel sums (or means) of squared inputs, shape (in_features,), for every
        module named in ``units``.
    statistic : {"median", "mean"}, default "median"
        The summary of the pooled scores (see the module notes).

    Returns
    -------
    dict of str to float
        ``{unit: U}`` with ``U = median_{i,j} |W_ij| · sqrt(s_j)`` over all the unit's matrices.

    Raises
    ------
    ParameterError
        For a bad ``statistic``.
    ValueError
        When a named module has no statistics.
    """
    check_choice(statistic, DLP_STATISTICS, name="statistic", func="dlp_unimportance")
    out: dict[str, float] = {}
    for unit, pairs in unit_weights_and_norms(model, units, input_sq_norms):
        pooled = [input_weighted_magnitude(w, s if isinstance(s, torch.Tensor) else torch.as_tensor(
            np.asarray(s, dtype=np.float32))).reshape(-1).cpu() for w, s in pairs]
        if not pooled:
            out[unit] = math.nan
            continue
        scores = torch.cat(pooled)
        value = torch.median(scores) if statistic == "median" else scores.mean()
        out[unit] = float(value)
    return out


def dlp_importance(unimportance) -> np.ndarray:
    """DLP's relative importance ``I_l = 1 - U_l / Σ_k U_k``.

    Parameters
    ----------
    unimportance : array_like, shape (n_units,)
        Finite, nonnegative ``U`` with a positive sum.

    Returns
    -------
    ndarray, shape (n_units,)

    Raises
    ------
    ValueError
        For non-finite or negative values, or a zero sum.
    """
    u = np.asarray(unimportance, dtype=np.float64)
    if u.ndim != 1:
        raise ValueError(f"unimportance must be one-dimensional, got shape {u.shape}.")
    if u.size and (not np.all(np.isfinite(u)) or np.any(u < 0) or not u.sum() > 0):
        raise ValueError("DLP's unimportance scores must be finite and nonnegative with a "
                         f"positive sum; got {u.tolist()[:6]}.")
    return 1.0 - u / u.sum() if u.size else u.copy()


def dlp_offsets(unimportance, alpha: float, *, normalize: str = "minmax") -> np.ndarray:
    """DLP's per-unit offsets ``-2α u`` (before the budget shift).

    Parameters
    ----------
    unimportance : array_like, shape (n_units,)
        ``U`` of each unit (:func:`dlp_unimportance`).
    alpha : float
        α: the ratios span at most ``2α``.
    normalize : {"minmax", "rank"}, default "minmax"
        How the relative importance ``I`` is mapped to ``u`` in [0, 1]; ``"minmax"`` is DLP's.

    Returns
    -------
    ndarray, shape (n_units,)
        ``d = -2α u``, ``u`` the normalised ``I = 1 - U / ΣU``: the more important unit (smaller
        ``U``) is pruned less. With ``s = c + d`` and equal unit sizes the budget shift gives
        DLP's ``s_l = S - 2α (u_l - mean(u))``.
    """
    check_choice(normalize, NORMALIZATIONS, name="normalize", func="dlp_offsets")
    return -(normalize_scores(dlp_importance(unimportance), normalize) * (2.0 * alpha))


@register
@dataclass(frozen=True)
class DLPConfig:
    """DLP: more sparsity for units whose pooled Wanda scores have a larger median.

    Each unit's score is the median of the Wanda scores ``|W_ij| · ‖X_j‖₂`` of all its matrices
    (DLP's *unimportance* ``U``); the relative importance ``I = 1 - U / ΣU`` is min-max
    normalised to ``u`` and the ratios are ``s = c - 2α u`` with the shift ``c`` solved for the
    target: for equal-size units, the paper's ``s_l = S - 2α (u_l - mean(u))``.

    Parameters
    ----------
    alpha : float, default 0.15
        α in [0, 0.5]: the ratios of the units span at most ``2α``. 0.15 is the value of the
        DLP scripts and README for LLaMA / LLaMA-2 at 70 % (``run.py --alpha``).
    statistic : {"median", "mean"}, default "median"
        Summary of a unit's pooled scores: the paper's median, or the mean that the reference's
        unstructured path (``get_dlp_ratios``) computes.
    calibration : optional
        As for :class:`OWLConfig`: token ids of shape (n_samples, seq_len), an iterable of
        batches, or captured per-input-channel squared norms ``{module name: tensor}`` (e.g.
        :func:`~specmetrics.allocation.calibration_input_norms`). Not compared, hashed or shown.
        With a scores mapping or a ``SpectrumReport`` as source it is not used: the given
        scores are taken as the unimportance ``U``.
    batch_size : int, default 1
        Sequences per forward pass when ``calibration`` is a token-id tensor.
    normalize : {"minmax", "rank"}, default "minmax"
        How ``I`` is mapped to [0, 1]; ``"minmax"`` is DLP's.

    References
    ----------
    .. [1] Y. Chen et al., "DLP: Dynamic Layerwise Pruning in Large Language Models", ICML 2025,
       arXiv:2505.23807.
    """

    name: ClassVar[str] = "dlp"
    #: what the scores are computed from: calibration activations of the dense model
    inputs: ClassVar[str] = "activations"
    relative: ClassVar[str] = "base"
    #: the label of its scores in tables: the median Wanda score of the unit
    score_label: ClassVar[str] = "unimportance"

    alpha: float = 0.15
    statistic: str = "median"
    calibration: Any = field(default=None, compare=False, repr=False)
    batch_size: int = 1
    normalize: str = "minmax"

    def __post_init__(self):
        func = "DLPConfig"
        object.__setattr__(self, "alpha", check_interval(self.alpha, 0, 0.5, name="alpha",
                                                         func=func, closed="both"))
        check_choice(self.statistic, DLP_STATISTICS, name="statistic", func=func)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise fail("batch_size", func, "an integer >= 1", self.batch_size)
        check_choice(self.normalize, NORMALIZATIONS, name="normalize", func=func)

    def map_units(self, scores, *, depth=None):
        """``(d, 1)``: ratios ``c + d`` with DLP's offsets ``d = -2α u``, the shift ``c`` solved
        for the target."""
        d = dlp_offsets(scores, self.alpha, normalize=self.normalize)
        return d, np.ones_like(d)

    def unit_scores(self, model, units, input_sq_norms):
        """DLP's unimportance of each unit (the median of its matrices' pooled Wanda scores)."""
        return dlp_unimportance(model, units, input_sq_norms, statistic=self.statistic)
