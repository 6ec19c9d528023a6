"""specmetrics: sparsity and weight spectra of neural networks.

Importing this package is light: it imports numpy and torch only, and changes no
logging, warning or torch state. Optional dependencies (pandas, matplotlib,
weightwatcher, transformers, triton) are imported where they are used.
"""
from ._checks import ParameterError
from .powerlaw import DegenerateSpectrumWarning, PowerLawFit, fit_power_law
from .report import LayerSpectrum, SpectrumReport
from .spectrum import esd

__version__ = "0.1.0"

__all__ = [
    "esd",
    "fit_power_law",
    "PowerLawFit",
    "LayerSpectrum",
    "SpectrumReport",
    "ParameterError",
    "DegenerateSpectrumWarning",
]

from .allocation import Allocation, AlphaPruningConfig, DegenerateMetricWarning, OWLConfig, UniformConfig, allocate  # noqa: E402
__all__ += ["allocate", "Allocation", "AlphaPruningConfig", "OWLConfig", "UniformConfig", "DegenerateMetricWarning"]
from .evaluation import FidelityResult, ZeroShotResult, embedding_fidelity, load_text, perplexity, zero_shot  # noqa: E402
__all__ += ["perplexity", "zero_shot", "ZeroShotResult", "embedding_fidelity", "FidelityResult", "load_text"]
from .pruning import MagnitudeConfig, PruneError, PruneReport, SparseGPTConfig, WandaConfig, prune  # noqa: E402
__all__ += ["prune", "PruneReport", "PruneError", "WandaConfig", "SparseGPTConfig", "MagnitudeConfig"]
from .pipeline import ComparisonResult, PruneRun, compare_allocations, prune_and_evaluate  # noqa: E402
__all__ += ["compare_allocations", "ComparisonResult", "prune_and_evaluate", "PruneRun"]
from .activations import ActivationStats, ActivationThresholds, LookaheadResult, SimilarityResult, activation_stats, activation_thresholds, find_sites, lookahead_predictability, residual_similarity, threshold_table  # noqa: E402
__all__ += ["activation_stats", "activation_thresholds", "ActivationStats", "ActivationThresholds", "find_sites", "threshold_table", "residual_similarity", "SimilarityResult", "lookahead_predictability", "LookaheadResult"]
