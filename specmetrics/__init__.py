"""specmetrics: sparsity and weight spectra of neural networks.

Importing this package is light and changes no global state: it imports nothing beyond the
standard library until a public name is used. Each name below is loaded from its subpackage on
first access (PEP 562); optional dependencies (pandas, matplotlib, weightwatcher, transformers,
triton) are imported only by the functions that need them.

The layers of the library (each subpackage's docstring says what it may import; the contract is
checked by ``lint-imports``): ``models`` and ``calibration`` at the bottom; ``spectrum``;
``allocation``, ``pruning``, ``evaluation``, ``activations`` (and the later analyses);
``experiments`` (grid runners and the demo); ``cli``. ``plotting`` and the base files
(``exceptions``, ``_validation``, ``_results``) serve them all.
"""
from __future__ import annotations

import importlib
import warnings
from typing import Any

__version__ = "0.2.0"

# public name -> subpackage (or module) that defines it
_EXPORTS: dict[str, str] = {
    # errors and warnings
    "SpecmetricsError": "exceptions",
    "ParameterError": "exceptions",
    "UnsupportedModelError": "exceptions",
    "PruneError": "exceptions",
    "CholeskyError": "exceptions",
    "SpecmetricsWarning": "exceptions",
    "DegenerateSpectrumWarning": "exceptions",
    "DegenerateMetricWarning": "exceptions",
    "SparsityShortfallWarning": "exceptions",
    # models and calibration
    "load_model": "models",
    "list_weight_matrices": "models",
    "find_blocks": "models",
    "load_calibration": "calibration",
    "CalibrationSet": "calibration",
    "load_text": "calibration",
    "load_paragraphs": "calibration",
    # weight spectra
    "esd": "spectrum",
    "fit_power_law": "spectrum",
    "PowerLawFit": "spectrum",
    "LayerSpectrum": "spectrum",
    "SpectrumReport": "spectrum",
    # allocation
    "allocate": "allocation",
    "Allocation": "allocation",
    "AlphaPruningConfig": "allocation",
    "OWLConfig": "allocation",
    "UniformConfig": "allocation",
    "DLPConfig": "allocation",
    "ATPConfig": "allocation",
    # evaluation
    "perplexity": "evaluation",
    "zero_shot": "evaluation",
    "ZeroShotResult": "evaluation",
    "embedding_fidelity": "evaluation",
    "FidelityResult": "evaluation",
    # pruning
    "prune": "pruning",
    "PruneReport": "pruning",
    "WandaConfig": "pruning",
    "SparseGPTConfig": "pruning",
    "MagnitudeConfig": "pruning",
    "RIAConfig": "pruning",
    # the main job
    "compare_allocations": "experiments",
    "ComparisonResult": "experiments",
    "prune_and_evaluate": "experiments",
    "PruneRun": "experiments",
    "activation_sparsity_sweep": "experiments",
    "SweepResult": "experiments",
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
}

__all__ = list(_EXPORTS)

# subpackages reachable as attributes (``specmetrics.models.load_model``) without an import
_SUBMODULES = frozenset({
    "activations", "allocation", "calibration", "cli", "evaluation", "exceptions",
    "experiments", "kernels", "models", "plotting", "pruning", "spectrum",
})

# modules of earlier versions -> where their contents live now (DeprecationWarning)
_MOVED_MODULES = {
    "pipeline": "experiments", "layers": "models", "powerlaw": "spectrum.powerlaw",
    "metrics": "spectrum.metrics", "report": "spectrum.results", "backends": "spectrum.backends",
}


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _MOVED_MODULES:
        warnings.warn(f"specmetrics.{name} is now specmetrics.{_MOVED_MODULES[name]}",
                      DeprecationWarning, stacklevel=2)
        return importlib.import_module(f".{_MOVED_MODULES[name]}", __name__)
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'specmetrics' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
