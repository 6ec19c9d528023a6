"""Calibration data and the block-by-block pass every calibrated analysis runs.

Holds the one rule for text arguments (:mod:`~specmetrics.calibration.text`: a ``str`` is the text,
a ``pathlib.Path`` a file, a list of strings several texts), the corpora shipped in the package
(:func:`load_text`), :class:`CalibrationSet` (seeded token windows, recorded in every report that
used them), the running input statistics (Wanda's squared norms, SparseGPT's Hessian) and the
block-sequential runner (:class:`SequentialRunner`: capture the first block's inputs and
keyword arguments, run block by block, propagate) that pruning, activations, sparse coding and
Hessian analyses all use.

May import: the base files and :mod:`specmetrics.models`.
"""
from .corpora import CORPORA, load_paragraphs, load_text
from .runner import (BlockStep, CapturedInputs, SequentialRunner, capture_block_inputs, move_to,
                     output_tensor)
from .stats import HessianStats, SquaredNormStats
from .text import TextLike, is_hf_tokenizer, read_text, read_texts, split_paragraphs, tokenize
from .windows import (MAX_DEFAULT_SEQLEN, CalibrationSet, calibration_set, default_seqlen,
                      load_calibration, model_max_positions, model_vocab_size)

__all__ = [
    "CORPORA", "load_text", "load_paragraphs",
    "TextLike", "read_text", "read_texts", "split_paragraphs", "tokenize", "is_hf_tokenizer",
    "CalibrationSet", "load_calibration", "calibration_set", "default_seqlen",
    "model_max_positions", "model_vocab_size", "MAX_DEFAULT_SEQLEN",
    "SquaredNormStats", "HessianStats",
    "SequentialRunner", "BlockStep", "CapturedInputs", "capture_block_inputs", "output_tensor",
    "move_to",
]
