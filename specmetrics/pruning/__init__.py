"""Pruning of linear layers: methods behind one protocol, masks, and the ``prune()`` loop.

Each method is a small frozen config (:mod:`~specmetrics.pruning.configs`) following
:class:`~specmetrics.pruning.base.PruningMethod`: the calibration statistic it needs in, one
pruned matrix out, from pure tensor functions (:mod:`~specmetrics.pruning.masks`,
:mod:`~specmetrics.pruning.wanda`, :mod:`~specmetrics.pruning.sparsegpt`, ...). One registry
(:data:`METHODS`) maps names to configs for ``prune(method="wanda")``, the CLI and the grid
runners. :func:`prune` is the loop only (blocks, statistics, write-back, errors, atomic restore).

May import: the base files, :mod:`specmetrics.models` and :mod:`specmetrics.calibration`.
"""
from ..exceptions import CholeskyError, PruneError
from .api import prune
from .base import MatrixUpdate, PruningMethod
from .configs import MagnitudeConfig, SparseGPTConfig, WandaConfig, parse_pattern
from .dsnot import DSnoTConfig, DSnoTStats, dsnot_mask
from .magnitude import magnitude_mask
from .masks import apply_mask, matrix_threshold_mask, nm_mask, row_topk_mask, spread_counts
from .registry import METHODS, method_label, method_names, register, resolve_method
from .report import ModulePruneResult, PruneReport
from .ria import RIAConfig, ria_mask, ria_scores
from .sparsegpt import SparseGPTResult, sparsegpt_prune
from .wanda import wanda_mask, wanda_scores

__all__ = [
    "prune", "PruneReport", "ModulePruneResult", "PruneError", "CholeskyError",
    "PruningMethod", "MatrixUpdate", "METHODS", "register", "resolve_method", "method_names",
    "method_label",
    "MagnitudeConfig", "WandaConfig", "SparseGPTConfig", "parse_pattern",
    "row_topk_mask", "nm_mask", "matrix_threshold_mask", "apply_mask", "spread_counts",
    "magnitude_mask", "wanda_scores", "wanda_mask", "sparsegpt_prune", "SparseGPTResult",
    "DSnoTConfig", "DSnoTStats", "dsnot_mask",
    "RIAConfig", "ria_scores", "ria_mask",
]


def __getattr__(name):
    """Names that moved to :mod:`specmetrics.calibration`, :mod:`specmetrics.models` or
    :mod:`specmetrics.allocation` in the restructure (kept with a DeprecationWarning)."""
    import importlib
    import warnings

    moved = {
        "CalibrationSet": "specmetrics.calibration", "load_calibration": "specmetrics.calibration",
        "SequentialRunner": "specmetrics.calibration", "BlockStep": "specmetrics.calibration",
        "SquaredNormStats": "specmetrics.calibration", "HessianStats": "specmetrics.calibration",
        "find_blocks": "specmetrics.models", "BlockLayout": "specmetrics.models",
        "PrunableModule": "specmetrics.models",
        "calibration_input_norms": "specmetrics.allocation",
        "owl_outlier_ratios": "specmetrics.allocation",
    }
    if name in moved:
        warnings.warn(f"specmetrics.pruning.{name} moved to {moved[name]}.{name}",
                      DeprecationWarning, stacklevel=2)
        return getattr(importlib.import_module(moved[name]), name)
    raise AttributeError(f"module 'specmetrics.pruning' has no attribute {name!r}")
