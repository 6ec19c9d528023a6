"""Layer-wise sparsity allocation: per-layer scores → per-matrix ratios.

:func:`allocate` is the entry point; every allocator is a small frozen config
(:class:`AlphaPruningConfig`, :class:`OWLConfig`, :class:`DLPConfig`, :class:`ATPConfig`,
:class:`UniformConfig`, ...) and the pieces are pure functions in
:mod:`~specmetrics.allocation.mapping` (scores to ratios, the exact budget solver),
:mod:`~specmetrics.allocation.owl` (OWL's outlier ratios from a dense calibration pass),
:mod:`~specmetrics.allocation.dlp` (DLP's median Wanda scores) and
:mod:`~specmetrics.allocation.farms_metric` (FARMS alphas as a metric). What a module is (its block, type and group) comes from :mod:`specmetrics.models`.

May import: the base files, :mod:`specmetrics.models`, :mod:`specmetrics.calibration` and
:mod:`specmetrics.spectrum`.
"""
from ..exceptions import DegenerateMetricWarning
from .alphaprobe import AlphaProbeConfig
from .api import allocate
from .atp import ATPConfig, atp_max_step, atp_ratios, atp_step_grid
from .configs import ALLOCATORS, AlphaPruningConfig, OWLConfig, UniformConfig
from .dlp import DLPConfig, dlp_importance, dlp_offsets, dlp_unimportance
from .farms_metric import FARMS_METRICS, FarmsMetric
from .owl import calibration_input_norms, owl_outlier_ratios
from .result import AllocatedMatrix, Allocation
from .variants import SEED003_TYPES, SEED003_VARIANTS, seed003_variant

__all__ = [
    "allocate",
    "Allocation",
    "AllocatedMatrix",
    "AlphaPruningConfig",
    "OWLConfig",
    "UniformConfig",
    "AlphaProbeConfig",
    "DLPConfig",
    "ATPConfig",
    "FarmsMetric",
    "FARMS_METRICS",
    "dlp_unimportance",
    "dlp_importance",
    "dlp_offsets",
    "atp_max_step",
    "atp_ratios",
    "atp_step_grid",
    "ALLOCATORS",
    "DegenerateMetricWarning",
    "calibration_input_norms",
    "owl_outlier_ratios",
    "SEED003_TYPES",
    "SEED003_VARIANTS",
    "seed003_variant",
]
