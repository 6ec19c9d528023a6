"""Calibration token windows for pruning, following the Wanda / SparseGPT protocol.

Text (read by the one text rule of :mod:`specmetrics.calibration.text`: a ``str`` is the text, a
``pathlib.Path`` a file, a list of strings is joined with ``"\\n\\n"``) is tokenised once;
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
from typing import Any, Optional

import torch

from .._validation import check_positive_int, check_seed, fail
from .text import check_token_ids, read_text, tokenize

__all__ = ["CalibrationSet", "load_calibration", "calibration_set", "model_max_positions",
           "model_vocab_size", "learned_positions", "default_seqlen", "MAX_DEFAULT_SEQLEN"]

logger = logging.getLogger(__name__)

#: ``nsamples=None`` means this many windows (the reference scripts' 128), or every given row.
DEFAULT_NSAMPLES = 128

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


_POSITION_EMBEDDINGS = ("wpe", "position_embeddings", "embed_positions")


def learned_positions(model) -> Optional[int]:
    """How many positions a model with *learned* absolute position embeddings accepts (GPT-2's
    ``wpe``, OPT's ``embed_positions``, BERT's ``position_embeddings``); ``None`` for models
    without them (rotary or ALiBi models extrapolate, with degraded quality)."""
    if not isinstance(model, torch.nn.Module):
        return None
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Embedding) and name.rsplit(".", 1)[-1] in \
                _POSITION_EMBEDDINGS:
            limit = model_max_positions(model)
            return limit if limit is not None else int(module.num_embeddings)
    return None


def default_seqlen(model, *, func: str = "prune") -> int:
    """``min(model max positions, 2048)``; a ParameterError asking for ``seqlen`` if unknown."""
    limit = model_max_positions(model)
    if limit is None:
        raise fail("seqlen", func, "given (an integer >= 1) for a model whose config states no "
                   "maximum number of positions", None)
    return min(limit, MAX_DEFAULT_SEQLEN)


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
    """Calibration windows from a text, a text file, a list of texts or token ids.

    Parameters
    ----------
    calibration : str, os.PathLike, sequence of str, torch.Tensor or CalibrationSet
        By the one text rule (:mod:`specmetrics.calibration.text`): a ``str`` is the text itself,
        a ``pathlib.Path`` a UTF-8 file read whole, a list of texts is joined with ``"\\n\\n"``.
        Or a 1-D tensor of token ids (a stream, sampled like tokenised text); a 2-D tensor of
        shape (n, L) used row by row (the first ``nsamples`` rows, the first ``seqlen``
        columns); or a :class:`CalibrationSet` (checked against ``nsamples`` and ``seqlen`` the
        same way).
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
    nsamples = check_positive_int(nsamples, name="nsamples", func=func)
    seqlen = check_positive_int(seqlen, name="seqlen", func=func)
    seed = check_seed(seed, func=func)
    if max_positions is not None and seqlen > max_positions:
        raise fail("seqlen", func, f"at most the model's maximum positions ({max_positions})",
                   seqlen)

    if isinstance(calibration, CalibrationSet):
        calibration = calibration.input_ids
    if isinstance(calibration, torch.Tensor):
        if calibration.is_meta:
            raise fail("calibration", func, "a tensor of token ids with data (not on the 'meta' "
                       "device)", "a meta tensor")
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
        check_token_ids(result.input_ids, vocab_size, func=func, name="calibration")
    else:
        text = read_text(calibration, name="calibration", func=func)
        if isinstance(calibration, os.PathLike) or (
                isinstance(calibration, str) and text is not calibration):
            source = f"file:{os.fspath(calibration)}"
            what = f"file {os.fspath(calibration)!r}"
        elif isinstance(calibration, str):
            source, what = "text", "the text"
        else:
            source, what = "texts", f'{len(calibration)} texts joined with "\\n\\n"'
        stream = tokenize(tokenizer, text, func=func, vocab_size=vocab_size)
        ids = _draw_windows(stream, nsamples, seqlen, seed, func=func, what=what)
        result = CalibrationSet(ids, nsamples, seqlen, seed, source, int(stream.shape[0]))
    logger.info("calibration: %d windows of %d tokens from %s (seed %s)", result.nsamples,
                result.seqlen, result.source, result.seed)
    return result


def model_vocab_size(model) -> Optional[int]:
    """The vocabulary size a Hugging Face model's config states (``None`` if unknown)."""
    config = getattr(model, "config", None)
    for cfg in (config, getattr(config, "text_config", None)):
        value = getattr(cfg, "vocab_size", None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    weight = getattr(emb, "weight", None)
    if isinstance(weight, torch.Tensor) and weight.dim() == 2:
        return int(weight.shape[0])
    return None


def calibration_set(model, calibration, *, tokenizer=None, nsamples: Optional[int] = None,
                    seqlen: Optional[int] = None, seed: int = 0, func: str) -> CalibrationSet:
    """:func:`load_calibration` for a given model: ``seqlen`` defaults to the model's maximum
    positions (capped at 2048, and at the rows of given windows), and token ids are checked
    against its vocabulary and positions.

    Parameters
    ----------
    model : torch.nn.Module
    calibration, tokenizer, seed
        As for :func:`load_calibration`.
    nsamples : int, optional
        Default: every row of a ``CalibrationSet`` or token-window tensor, else 128.
    seqlen : int, optional
        Default: ``min(model max positions, 2048)`` (a token-window tensor or ``CalibrationSet``
        caps it at its row length).
    func : str
        The public function named in error messages.
    """
    if nsamples is None:
        if isinstance(calibration, CalibrationSet):
            nsamples = calibration.nsamples
        elif isinstance(calibration, torch.Tensor) and calibration.ndim == 2:
            nsamples = int(calibration.shape[0])
        else:
            nsamples = DEFAULT_NSAMPLES
    if seqlen is None:
        seqlen = default_seqlen(model, func=func)
        if isinstance(calibration, CalibrationSet):
            seqlen = min(seqlen, calibration.seqlen)
        elif isinstance(calibration, torch.Tensor) and calibration.ndim == 2:
            seqlen = min(seqlen, int(calibration.shape[1]))
    return load_calibration(calibration, tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen,
                            seed=seed, max_positions=model_max_positions(model),
                            vocab_size=model_vocab_size(model), func=func)
