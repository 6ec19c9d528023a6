"""Evaluation of (pruned) models: perplexity, zero-shot accuracy, embedding fidelity.

- :func:`perplexity`: the WikiText protocol of Wanda and SparseGPT (one tokenisation,
  non-overlapping windows, mean NLL, exp).
- :func:`zero_shot`: accuracy on lm-evaluation-harness tasks for an in-memory model
  (optional extra ``eval``).
- :func:`embedding_fidelity`: how far a pruned sentence encoder's embeddings and nearest
  neighbours move from the dense model's.
- :func:`~specmetrics.calibration.load_text`: the small English corpus shipped with the
  package (calibration and evaluation text).

Heavy optional packages (transformers, lm_eval, pandas) are imported where used.
"""
from ..calibration.corpora import CORPORA, load_paragraphs, load_text
from .fidelity import FidelityResult, embedding_fidelity, sentence_embeddings
from .perplexity import perplexity, tokenize_text
from .zero_shot import DEFAULT_TASKS, TaskScore, ZeroShotResult, zero_shot

__all__ = [
    "perplexity",
    "tokenize_text",
    "zero_shot",
    "ZeroShotResult",
    "TaskScore",
    "DEFAULT_TASKS",
    "embedding_fidelity",
    "sentence_embeddings",
    "FidelityResult",
    "load_text",
    "load_paragraphs",
    "CORPORA",
]
