"""The grid runners and the demo: plumbing over the public API, no algorithm of their own.

- :func:`compare_allocations` / :func:`prune_and_evaluate`: allocators × pruning methods ×
  targets, evaluated against the dense model (:mod:`~specmetrics.experiments.compare`);
- :func:`activation_sparsity_sweep` / :func:`activation_report`: perplexity against activation
  sparsity (TEAL, CATS);
- :func:`ablation`: the seed-003 grid of allocation variants × methods, resumable
  (``specmetrics ablate``);
- :func:`run_demo`: the main job on an embedded model (``specmetrics demo``);
- :func:`atp_search`: ATP's common difference chosen by the calibration loss after pruning.

May import: everything in the library.
"""
from .ablations import SEED003_GRID, AblationCell, AblationResult, ablation
from .activation_sweep import (SWEEP_STYLES, ActivationReport, SweepResult, SweepRow,
                               activation_report, activation_sparsity_sweep)
from .atp_search import ATPSearchResult, atp_search
from .compare import (ComparisonResult, PruneRun, compare_allocations, method_config,
                      prune_and_evaluate)
from .demo import DEMO_MODELS, DemoResult, run_demo
from .evaluate import PruningEvaluation, evaluate_pruned
from .probe import BlockSensitivity, block_sensitivity, mean_nll

__all__ = [
    "compare_allocations", "prune_and_evaluate", "ComparisonResult", "PruneRun",
    "method_config", "evaluate_pruned", "PruningEvaluation",
    "activation_sparsity_sweep", "activation_report", "SweepResult", "SweepRow",
    "ActivationReport", "SWEEP_STYLES",
    "run_demo", "DemoResult", "DEMO_MODELS",
    "ablation", "AblationResult", "AblationCell", "SEED003_GRID",
    "block_sensitivity", "BlockSensitivity", "mean_nll",
    "atp_search", "ATPSearchResult",
]
