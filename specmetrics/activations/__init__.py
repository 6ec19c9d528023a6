"""Activation statistics and activation sparsity (TEAL, CATS), and the lookahead question.

- :func:`find_sites`: where activations are read in each block (q/k/v input, o input, gate/up
  input, ``SiLU(gate)``, down input, residual stream).
- :func:`activation_stats`: streaming histograms and a token sample per site, through the same
  layer-sequential capture as pruning.
- :func:`activation_thresholds` and the pure threshold functions (:func:`abs_threshold`,
  :func:`pos_threshold`, :func:`neg_threshold`, :func:`teal_signed_threshold`).
- :func:`threshold_table`: the seed-000 per-layer table.
- :func:`residual_similarity` and :func:`lookahead_predictability`: the DejaVu question.
- :func:`sparsify_activations` (thresholds applied at inference, realised sparsity counted),
  :func:`sequential_thresholds` and TEAL's greedy allocation (:func:`teal_greedy_targets`).

The perplexity sweep over styles and targets is a grid runner:
:func:`specmetrics.experiments.activation_sparsity_sweep`.

May import: the base files, :mod:`specmetrics.models`, :mod:`specmetrics.calibration`,
:mod:`specmetrics.spectrum` and :mod:`specmetrics.kernels` (torch only; triton at first use, by
``sparsify_activations(..., backend="triton")``). pandas and matplotlib are imported where used.
"""
from .sites import CATS_KINDS, SITE_KINDS, TEAL_KINDS, Site, find_sites
from .capture import ActivationStats, SiteStats, activation_stats
from .thresholds import (ActivationThresholds, abs_threshold, activation_thresholds,
                         fraction_at_or_below, neg_threshold, pos_threshold,
                         teal_signed_threshold)
from .table import plot_threshold_table, threshold_table
from .similarity import (LookaheadResult, SimilarityResult, lookahead_predictability,
                         residual_similarity)
from .sparsify import (SparsifyHandle, TorchThreshold, sequential_thresholds,
                       sparsify_activations)
from .greedy import (GreedyPath, GreedySearch, greedy_allocation, teal_greedy_search,
                     teal_greedy_targets)

__all__ = [
    "Site",
    "SITE_KINDS",
    "TEAL_KINDS",
    "CATS_KINDS",
    "find_sites",
    "activation_stats",
    "ActivationStats",
    "SiteStats",
    "activation_thresholds",
    "ActivationThresholds",
    "abs_threshold",
    "pos_threshold",
    "neg_threshold",
    "teal_signed_threshold",
    "fraction_at_or_below",
    "threshold_table",
    "plot_threshold_table",
    "residual_similarity",
    "SimilarityResult",
    "lookahead_predictability",
    "LookaheadResult",
    "sparsify_activations",
    "SparsifyHandle",
    "TorchThreshold",
    "sequential_thresholds",
    "greedy_allocation",
    "GreedyPath",
    "teal_greedy_search",
    "teal_greedy_targets",
    "GreedySearch",
]
