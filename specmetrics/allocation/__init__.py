"""Layer-wise sparsity allocation: per-layer scores → per-matrix ratios.

:func:`allocate` is the entry point; every allocator is a small frozen config
(:class:`AlphaPruningConfig`, :class:`OWLConfig`, :class:`UniformConfig`, ...) and the pieces are
pure functions in :mod:`~specmetrics.allocation.mapping` (scores to ratios, the exact budget
solver) and :mod:`~specmetrics.allocation.owl` (OWL's outlier ratios from a dense calibration
pass). What a module is (its block, type and group) comes from :mod:`specmetrics.models`.

May import: the base files, :mod:`specmetrics.models`, :mod:`specmetrics.calibration` and
:mod:`specmetrics.spectrum`.
"""
from ..exceptions import DegenerateMetricWarning
from .alphaprobe import AlphaProbeConfig
from .api import allocate
from .configs import ALLOCATORS, AlphaPruningConfig, OWLConfig, UniformConfig
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
    "ALLOCATORS",
    "DegenerateMetricWarning",
    "calibration_input_norms",
    "owl_outlier_ratios",
    "SEED003_TYPES",
    "SEED003_VARIANTS",
    "seed003_variant",
]
