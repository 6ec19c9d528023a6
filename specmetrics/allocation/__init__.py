"""Layer-wise sparsity allocation from per-layer scores (AlphaPruning, OWL, uniform).

:func:`allocate` is the entry point; the pieces it is made of are pure functions in
:mod:`~specmetrics.allocation.mapping` (scores to ratios, the exact budget solver),
:mod:`~specmetrics.allocation.module_types` (what a module is, from its name) and
:mod:`~specmetrics.allocation.owl` (OWL's outlier ratios).
"""
from .api import DegenerateMetricWarning, allocate
from .configs import AlphaPruningConfig, OWLConfig, UniformConfig
from .result import AllocatedMatrix, Allocation
from .variants import SEED003_TYPES, SEED003_VARIANTS, seed003_variant

__all__ = [
    "allocate",
    "Allocation",
    "AllocatedMatrix",
    "AlphaPruningConfig",
    "OWLConfig",
    "UniformConfig",
    "DegenerateMetricWarning",
    "SEED003_TYPES",
    "SEED003_VARIANTS",
    "seed003_variant",
]
