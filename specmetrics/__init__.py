"""specmetrics: sparsity and weight spectra of neural networks.

Importing this package is light and changes no global state: it imports nothing
beyond the standard library until a public name is used. Each name below is
loaded from its submodule on first access (PEP 562); optional dependencies
(pandas, matplotlib, weightwatcher, transformers, triton) are imported only by
the functions that need them.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS: dict[str, str] = {
    # weight spectra
    "esd": "spectrum",
    "fit_power_law": "powerlaw",
    "PowerLawFit": "powerlaw",
    "LayerSpectrum": "report",
    "SpectrumReport": "report",
    "ParameterError": "_checks",
    "DegenerateSpectrumWarning": "powerlaw",
    # allocation
    "allocate": "allocation",
    "Allocation": "allocation",
    "AlphaPruningConfig": "allocation",
    "OWLConfig": "allocation",
    "UniformConfig": "allocation",
    "DegenerateMetricWarning": "allocation",
    # evaluation
    "perplexity": "evaluation",
    "zero_shot": "evaluation",
    "ZeroShotResult": "evaluation",
    "embedding_fidelity": "evaluation",
    "FidelityResult": "evaluation",
    "load_text": "evaluation",
    # pruning
    "prune": "pruning",
    "PruneReport": "pruning",
    "PruneError": "pruning",
    "WandaConfig": "pruning",
    "SparseGPTConfig": "pruning",
    "MagnitudeConfig": "pruning",
    # the main job
    "compare_allocations": "pipeline",
    "ComparisonResult": "pipeline",
    "prune_and_evaluate": "pipeline",
    "PruneRun": "pipeline",
    # activations
    "activation_stats": "activations",
    "activation_thresholds": "activations",
    "ActivationStats": "activations",
    "ActivationThresholds": "activations",
    "find_sites": "activations",
    "threshold_table": "activations",
    "residual_similarity": "activations",
    "SimilarityResult": "activations",
    "lookahead_predictability": "activations",
    "LookaheadResult": "activations",
    "sparsify_activations": "activations",
    "SparsifyHandle": "activations",
    "sequential_thresholds": "activations",
    "teal_greedy_targets": "activations",
    "activation_sparsity_sweep": "activations",
    "SweepResult": "activations",
}

__all__ = list(_EXPORTS)


# submodules reachable as attributes (``specmetrics.evaluation.tokenize_text``) without an import
_SUBMODULES = frozenset({
    "activations", "allocation", "backends", "cli", "evaluation", "kernels", "layers", "metrics",
    "pipeline", "plotting", "powerlaw", "pruning", "report", "spectrum",
})


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'specmetrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
