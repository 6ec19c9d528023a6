"""Calibration token windows for pruning, following the Wanda / SparseGPT protocol.

Text (a list of strings joined with ``"\\n\\n"``, or a text file read whole) is tokenised once;
``nsamples`` windows of ``seqlen`` tokens are then drawn at random start positions with a seeded
``torch.Generator`` (independently, so windows may overlap, as in the reference scripts'
``random.randint(0, T - seqlen - 1)``). Token ids can also be given directly: a 2-D tensor of
shape (n, L) is used row by row, a 1-D tensor is a token stream sampled like tokenised text.

The result is a :class:`CalibrationSet`: a tensor of shape (nsamples, seqlen) and the settings
that produced it, which :func:`~specmetrics.prune` records in its report.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .._checks import check_positive_int, fail

__all__ = ["CalibrationSet", "load_calibration", "model_max_positions", "MAX_DEFAULT_SEQLEN"]

logger = logging.getLogger(__name__)

#: ``seqlen=None`` means the model's maximum number of positions, capped at this value (the
#: reference scripts' 2048-token windows).
MAX_DEFAULT_SEQLEN = 2048

# config attributes that hold the maximum number of positions, in the order they are tried
_MAX_POSITION_ATTRS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length",
                       "n_ctx", "max_sequence_length")


@dataclass(frozen=True)
class CalibrationSet:
    """Calibration token windows and how they were drawn.

    Attributes
    ----------
    input_ids : torch.Tensor, shape (nsamples, seqlen), int64
        One calibration sequence per row.
    nsamples : int
        Number of rows.
    seqlen : int
        Tokens per row.
    seed : int or None
        Seed of the window draw; ``None`` when the rows were given directly.
    source : str
        ``"texts"``, ``"file:<path>"``, ``"token_stream"`` or ``"token_windows"``.
    n_tokens : int
        Length of the tokenised text (or token stream) the windows were drawn from; for given
        rows, ``nsamples * seqlen``.
    """

    input_ids: torch.Tensor = field(repr=False)
    nsamples: int
    seqlen: int
    seed: Optional[int]
    source: str
    n_tokens: int

    def settings(self) -> dict[str, Any]:
        """The JSON-able description recorded in a report."""
        return {"nsamples": self.nsamples, "seqlen": self.seqlen, "seed": self.seed,
                "source": self.source, "n_tokens": self.n_tokens}


def model_max_positions(model) -> Optional[int]:
    """The maximum number of positions a Hugging Face model accepts (``None`` if unknown)."""
    config = getattr(model, "config", None)
    if config is None:
        return None
    for attr in _MAX_POSITION_ATTRS:
        value = getattr(config, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def default_seqlen(model, *, func: str = "prune") -> int:
    """``min(model max positions, 2048)``; a ParameterError asking for ``seqlen`` if unknown."""
    limit = model_max_positions(model)
    if limit is None:
        raise fail("seqlen", func, "given (an integer >= 1) for a model whose config states no "
                   "maximum number of positions", None)
    return min(limit, MAX_DEFAULT_SEQLEN)


def _tokenize(text: str, tokenizer, func: str) -> torch.Tensor:
    if tokenizer is None:
        raise fail("tokenizer", func, "given (a Hugging Face tokenizer or a callable text -> "
                   "token ids) when calibration is text", None)
    if not callable(tokenizer):
        raise fail("tokenizer", func, "a Hugging Face tokenizer or a callable text -> token ids",
                   type(tokenizer).__name__)
    # Long texts exceed the tokenizer's model_max_length on purpose (windows are cut afterwards);
    # the tokenizer's warning about it is not useful here.
    tok_logger = logging.getLogger("transformers.tokenization_utils_base")
    previous = tok_logger.level
    tok_logger.setLevel(max(previous, logging.ERROR))
    try:
        encoded = tokenizer(text, return_tensors="pt") if _is_hf_tokenizer(tokenizer) \
            else tokenizer(text)
    finally:
        tok_logger.setLevel(previous)
    ids = encoded["input_ids"] if isinstance(encoded, dict) or hasattr(encoded, "keys") else encoded
    ids = torch.as_tensor(ids)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1:
        raise fail("tokenizer", func, "a tokenizer returning one sequence of token ids",
                   f"ids of shape {tuple(ids.shape)}")
    return ids.to(torch.long)


def _is_hf_tokenizer(tokenizer) -> bool:
    return hasattr(tokenizer, "encode") and hasattr(tokenizer, "convert_ids_to_tokens")


def _draw_windows(stream: torch.Tensor, nsamples: int, seqlen: int, seed: int, *, func: str,
                  what: str) -> torch.Tensor:
    n_tokens = int(stream.shape[0])
    if n_tokens < seqlen + 1:
        raise fail("calibration", func, f"at least seqlen + 1 = {seqlen + 1} tokens long ({what})",
                   f"{n_tokens} tokens")
    generator = torch.Generator().manual_seed(seed)
    # start i uniform in [0, T - seqlen - 1], as the reference's random.randint(0, T-seqlen-1)
    starts = torch.randint(0, n_tokens - seqlen, (nsamples,), generator=generator)
    offsets = torch.arange(seqlen)
    return stream[starts[:, None] + offsets[None, :]].clone()


def load_calibration(calibration, *, tokenizer=None, nsamples: int = 128, seqlen: int = 2048,
                     seed: int = 0, max_positions: Optional[int] = None,
                     vocab_size: Optional[int] = None, func: str = "load_calibration",
                     ) -> CalibrationSet:
    """Calibration windows from texts, a text file or token ids.

    Parameters
    ----------
    calibration : str, os.PathLike, sequence of str, torch.Tensor or CalibrationSet
        A path to a UTF-8 text file (read whole); a list of texts (joined with ``"\\n\\n"``);
        a 1-D tensor of token ids (a stream, sampled like tokenised text); a 2-D tensor of shape
        (n, L) used row by row (the first ``nsamples`` rows, the first ``seqlen`` columns); or a
        :class:`CalibrationSet` (checked against ``nsamples`` and ``seqlen`` the same way).
    tokenizer : callable, optional
        A Hugging Face tokenizer (called as ``tokenizer(text, return_tensors="pt")``, so special
        tokens such as BOS are added as the reference scripts do) or any callable returning token
        ids; required for text.
    nsamples : int, default 128
        Number of windows.
    seqlen : int, default 2048
        Tokens per window.
    seed : int, default 0
        Seed of the ``torch.Generator`` that draws the window starts.
    max_positions : int, optional
        The model's maximum positions; ``seqlen`` must not exceed it.
    vocab_size : int, optional
        When given, token ids must lie in ``[0, vocab_size)``.
    func : str
        Function named in error messages.

    Returns
    -------
    CalibrationSet

    Raises
    ------
    ParameterError
        For a missing file or tokenizer, a text shorter than ``seqlen + 1`` tokens, fewer rows
        than ``nsamples``, rows shorter than ``seqlen``, or ids outside the vocabulary.
    """
    check_positive_int(nsamples, name="nsamples", func=func)
    check_positive_int(seqlen, name="seqlen", func=func)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise fail("seed", func, "an integer >= 0", seed)
    if max_positions is not None and seqlen > max_positions:
        raise fail("seqlen", func, f"at most the model's maximum positions ({max_positions})",
                   seqlen)

    if isinstance(calibration, CalibrationSet):
        calibration = calibration.input_ids
    if isinstance(calibration, (str, os.PathLike)):
        path = Path(calibration)
        if not path.is_file():
            raise fail("calibration", func, "a path to an existing text file (wrap a text in a "
                       "list to pass it directly)", str(calibration))
        text = path.read_text(encoding="utf-8")
        stream = _tokenize(text, tokenizer, func)
        ids = _draw_windows(stream, nsamples, seqlen, seed, func=func, what=f"file {str(path)!r}")
        result = CalibrationSet(ids, nsamples, seqlen, seed, f"file:{path}", int(stream.shape[0]))
    elif isinstance(calibration, torch.Tensor):
        if calibration.is_floating_point() or calibration.is_complex() \
                or calibration.dtype == torch.bool:
            raise fail("calibration", func, "a tensor of integer token ids",
                       f"a {calibration.dtype} tensor")
        if calibration.ndim == 1:
            stream = calibration.detach().to("cpu", torch.long)
            ids = _draw_windows(stream, nsamples, seqlen, seed, func=func, what="token stream")
            result = CalibrationSet(ids, nsamples, seqlen, seed, "token_stream",
                                    int(stream.shape[0]))
        elif calibration.ndim == 2:
            n, length = calibration.shape
            if n < nsamples:
                raise fail("nsamples", func, f"at most the number of calibration rows ({n})",
                           nsamples)
            if length < seqlen:
                raise fail("seqlen", func, f"at most the calibration rows' length ({length})",
                           seqlen)
            ids = calibration.detach()[:nsamples, :seqlen].to("cpu", torch.long).clone()
            if n > nsamples or length > seqlen:
                logger.info("calibration tensor of shape (%d, %d) cut to (%d, %d)", n, length,
                            nsamples, seqlen)
            result = CalibrationSet(ids, nsamples, seqlen, None, "token_windows",
                                    nsamples * seqlen)
        else:
            raise fail("calibration", func, "a token-id tensor of shape (n, seqlen) or (tokens,)",
                       f"shape {tuple(calibration.shape)}")
    elif isinstance(calibration, Sequence) and not isinstance(calibration, (bytes, bytearray)):
        texts = list(calibration)
        if not texts or not all(isinstance(t, str) for t in texts):
            raise fail("calibration", func, "a path, a non-empty list of strings or a tensor of "
                       "token ids", f"a {type(calibration).__name__} of "
                       f"{sorted({type(t).__name__ for t in texts}) or 'nothing'}")
        stream = _tokenize("\n\n".join(texts), tokenizer, func)
        ids = _draw_windows(stream, nsamples, seqlen, seed, func=func,
                            what=f'{len(texts)} texts joined with "\\n\\n"')
        result = CalibrationSet(ids, nsamples, seqlen, seed, "texts", int(stream.shape[0]))
    else:
        raise fail("calibration", func, "a path to a text file, a list of strings or a tensor "
                   "of token ids", type(calibration).__name__)

    if vocab_size is not None and result.input_ids.numel():
        lo, hi = int(result.input_ids.min()), int(result.input_ids.max())
        if lo < 0 or hi >= vocab_size:
            raise fail("calibration", func, f"token ids in [0, {vocab_size}) (the model's "
                       "vocabulary)", f"ids in [{lo}, {hi}]")
    logger.info("calibration: %d windows of %d tokens from %s (seed %s)", result.nsamples,
                result.seqlen, result.source, result.seed)
    return result
