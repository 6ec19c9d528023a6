"""Are activations sparse linear combinations of features, and how sparse? Plus SAE metrics.

Holds the sparse-coding validity metrics of Deng, Tao & Benton (2023, "Measuring Feature
Sparsity in Language Models", arXiv:2310.07837) and the standard sparse-autoencoder metrics:
synthetic sparse linear data and controls with a known answer (:func:`make_sparse_linear`,
:func:`make_control`); the greedy non-negative coding step (:func:`greedy_code`) and SGD
dictionary learning with an adaptive λ (:func:`learn_dictionary`); the metrics N₀, loss, S₁ and
the normalised loss with their sampling errors and the closed-form oracle (:func:`oracle_s1`);
:func:`estimate_sparsity` (learned dictionary) and :func:`dictionary_metrics` (given
dictionary); the per-layer measurement on a Hugging Face model (:func:`layer_sparsity`); L0,
dead/dense latents, FVE about the mean and loss recovered for any encoder/decoder pair
(:func:`sae_metrics`, :func:`loss_recovered`) with a small SAE trainer (:func:`train_sae`).
Hypothesis strategies for users' own property tests live in
:mod:`specmetrics.sparse_coding.strategies` (the only module that imports hypothesis; it is not
imported here).

May import: the base files, :mod:`specmetrics.models`, :mod:`specmetrics.calibration`,
:mod:`specmetrics.spectrum`, :mod:`specmetrics.activations` (sites) and
:mod:`specmetrics.plotting`. pandas and matplotlib are imported where used.
"""
from .synthetic import CONTROL_KINDS, SyntheticActivations, make_control, make_sparse_linear
from .coding import greedy_code
from .metrics import CodingMetrics, coefficient_s1, implied_a, oracle_s1, ratio_of_means
from .dictionary import (ConvergenceWarning, LearnedDictionary, SampleSizeWarning,
                         learn_dictionary)
from .estimate import (SparsityBand, SparsityEstimate, dictionary_metrics, estimate_sparsity,
                       sparsity_band)
from .layers import LAYER_KINDS, LayerSparsity, SiteSparsity, layer_sparsity
from .sae import (LossRecovered, SAEMetrics, SparseAutoencoder, fraction_of_variance_explained,
                  loss_recovered, recovered_fraction, sae_metrics, train_sae)

__all__ = [
    "make_sparse_linear", "make_control", "SyntheticActivations", "CONTROL_KINDS",
    "greedy_code",
    "oracle_s1", "implied_a", "coefficient_s1", "ratio_of_means", "CodingMetrics",
    "learn_dictionary", "LearnedDictionary", "ConvergenceWarning", "SampleSizeWarning",
    "estimate_sparsity", "SparsityEstimate", "dictionary_metrics", "sparsity_band",
    "SparsityBand",
    "layer_sparsity", "LayerSparsity", "SiteSparsity", "LAYER_KINDS",
    "sae_metrics", "SAEMetrics", "fraction_of_variance_explained", "loss_recovered",
    "LossRecovered", "recovered_fraction", "train_sae", "SparseAutoencoder",
]
