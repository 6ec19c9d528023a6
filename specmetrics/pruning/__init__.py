"""Pruning of linear layers: masks, calibration statistics, magnitude, Wanda and SparseGPT.

Each method is a few pure tensor functions (accumulate statistics → compute mask or update →
apply), with the configs that ``prune()`` dispatches on.
"""
from .configs import MagnitudeConfig, SparseGPTConfig, WandaConfig, parse_pattern
from .magnitude import magnitude_mask
from .masks import apply_mask, matrix_threshold_mask, nm_mask, row_topk_mask
from .sparsegpt import CholeskyError, SparseGPTResult, sparsegpt_prune
from .stats import HessianStats, SquaredNormStats
from .wanda import wanda_mask, wanda_scores
from .api import calibration_input_norms, owl_outlier_ratios, prune
from .blocks import BlockLayout, PrunableModule, find_blocks
from .calibration import CalibrationSet, load_calibration
from .report import ModulePruneResult, PruneError, PruneReport
from .sequential import BlockStep, SequentialRunner

__all__ = [
    "MagnitudeConfig",
    "WandaConfig",
    "SparseGPTConfig",
    "parse_pattern",
    "row_topk_mask",
    "nm_mask",
    "matrix_threshold_mask",
    "apply_mask",
    "SquaredNormStats",
    "HessianStats",
    "magnitude_mask",
    "wanda_scores",
    "wanda_mask",
    "sparsegpt_prune",
    "SparseGPTResult",
    "CholeskyError",
    "prune",
    "PruneReport",
    "ModulePruneResult",
    "PruneError",
    "calibration_input_norms",
    "owl_outlier_ratios",
    "CalibrationSet",
    "load_calibration",
    "find_blocks",
    "BlockLayout",
    "PrunableModule",
    "SequentialRunner",
    "BlockStep",
]
