"""The one rule for text arguments, and tokenising a whole text once.

Every public function that takes text (``calibration=``, ``text``, ``eval_texts=``, ...) reads it
with :func:`read_text` / :func:`read_texts`, so one rule holds everywhere:

=========================  ====================================================================
``str``                    the text itself
``os.PathLike``            a UTF-8 text file (``pathlib.Path("wiki.test.raw")``), read verbatim
                           (line endings kept)
list / tuple of ``str``    several texts: joined with ``"\\n\\n"`` where one stream is needed
                           (calibration, perplexity), kept apart where items matter (embedding
                           fidelity)
integer ``torch.Tensor``   token ids already computed (where token ids make sense)
=========================  ====================================================================

Transition: a one-line ``str`` shorter than 1024 characters that names an existing file is
read as that file, with a :class:`DeprecationWarning` asking for ``pathlib.Path(...)`` (earlier
versions read a ``str`` as a path in ``load_calibration`` / ``prune(calibration=...)`` and as
text in ``perplexity``). A future version will treat it as text.
"""
from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Sequence
from typing import Any, Optional, Union

from .._validation import fail

__all__ = ["TextLike", "read_text", "read_texts", "split_paragraphs", "tokenize",
           "is_hf_tokenizer", "check_token_ids", "model_tokenizer_text"]

TextLike = Union[str, "os.PathLike[str]", Sequence[str]]


def _read_file(path: Any, *, name: str, func: str) -> str:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise fail(name, func, "a text, a list of texts or the path of an existing text file "
                   "(no such file)", path)
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    except UnicodeDecodeError as err:
        raise fail(name, func, f"a UTF-8 text file ({err.reason} at byte {err.start})", path) \
            from None
    except OSError as err:
        raise fail(name, func, f"a readable text file ({err.strerror})", path) from None


def _str_names_file(text: str) -> bool:
    return bool(text) and len(text) < 1024 and "\n" not in text and os.path.isfile(text)


def _deprecated_path(text: str, *, name: str, func: str) -> str:
    warnings.warn(
        f"The {name!r} parameter of {func} got the str {text!r}, which names an existing file: it "
        "is read as that file for now, but a str is the text itself; pass pathlib.Path("
        f"{text!r}) to read a file.", DeprecationWarning, stacklevel=4)
    return _read_file(text, name=name, func=func)


def read_text(value: Any, *, name: str, func: str) -> str:
    """One text from a ``str``, an ``os.PathLike`` file or a list of texts (joined by
    ``"\\n\\n"``), by the rule of the module docstring.

    Raises
    ------
    ParameterError
        For another type, an empty text, a missing or non-UTF-8 file, or a list holding
        something other than strings.
    """
    if isinstance(value, os.PathLike):
        text = _read_file(value, name=name, func=func)
    elif isinstance(value, str):
        text = _deprecated_path(value, name=name, func=func) if _str_names_file(value) else value
    elif isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray)):
        items = list(value)
        if not items or not all(isinstance(t, str) for t in items):
            raise fail(name, func, "a text, a non-empty list of texts or a pathlib.Path of a text "
                       "file", f"a {type(value).__name__} of "
                       f"{sorted({type(t).__name__ for t in items}) or 'nothing'}")
        text = "\n\n".join(items)
    else:
        raise fail(name, func, "a text (str), a list of texts or a pathlib.Path of a text file",
                   type(value).__name__)
    if not text.strip():
        raise fail(name, func, "a non-empty text", value if isinstance(value, str) else text)
    return text


def split_paragraphs(text: str) -> list[str]:
    """Paragraphs separated by blank lines, stripped, empty ones dropped."""
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


def read_texts(value: Any, *, name: str, func: str) -> list[str]:
    """Several texts: a list is kept item by item; a ``str`` or file is split into paragraphs
    (blank-line separated)."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        items = list(value)
        if not items or not all(isinstance(t, str) and t.strip() for t in items):
            raise fail(name, func, "a non-empty list of non-empty texts, a text or a "
                       "pathlib.Path of a text file", f"a {type(value).__name__} of {len(items)} "
                       "items")
        return items
    return split_paragraphs(read_text(value, name=name, func=func))


def is_hf_tokenizer(tokenizer: Any) -> bool:
    """A Hugging Face tokenizer (has ``encode`` and ``convert_ids_to_tokens``)."""
    return hasattr(tokenizer, "encode") and hasattr(tokenizer, "convert_ids_to_tokens")


def tokenize(tokenizer: Any, text: str, *, func: str, vocab_size: Optional[int] = None,
             name: str = "tokenizer"):
    """Token ids of a whole text, tokenised once with the tokenizer's defaults.

    A Hugging Face tokenizer is called as ``tokenizer(text, return_tensors="pt")`` (so special
    tokens such as BOS are added once, at the start, as Wanda's and SparseGPT's scripts do); any
    other callable is called as ``tokenizer(text)`` and must return token ids (a sequence, a
    tensor or a mapping with ``"input_ids"``).

    Parameters
    ----------
    tokenizer : callable
    text : str
    func : str
        The public function named in error messages.
    vocab_size : int, optional
        When given, every id must lie in ``[0, vocab_size)``.

    Returns
    -------
    torch.LongTensor, shape (n,)
    """
    import torch

    if tokenizer is None:
        raise fail("tokenizer", func, "given (a Hugging Face tokenizer or a callable text -> token "
                   "ids) when the input is text", None)
    if not callable(tokenizer):
        raise fail("tokenizer", func, "a Hugging Face tokenizer or a callable text -> token ids",
                   type(tokenizer).__name__)
    # long texts exceed model_max_length on purpose (windows are cut afterwards)
    tok_logger = logging.getLogger("transformers.tokenization_utils_base")
    previous = tok_logger.level
    tok_logger.setLevel(max(previous, logging.ERROR))
    try:
        if is_hf_tokenizer(tokenizer):
            try:
                encoded = tokenizer(text, return_tensors="pt", verbose=False)
            except TypeError:
                encoded = tokenizer(text, return_tensors="pt")
        else:
            encoded = tokenizer(text)
    finally:
        tok_logger.setLevel(previous)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    try:
        ids = torch.as_tensor(ids)
    except (TypeError, ValueError, RuntimeError):
        raise fail(name, func, "a tokenizer returning token ids", type(ids).__name__) from None
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.is_floating_point() or ids.dtype == torch.bool:
        raise fail(name, func, "a tokenizer returning one sequence of integer token ids",
                   f"ids of dtype {ids.dtype} and shape {tuple(ids.shape)}")
    ids = ids.to(torch.long)
    check_token_ids(ids, vocab_size, func=func, name="text")
    return ids


def check_token_ids(ids, vocab_size: Optional[int], *, func: str, name: str) -> None:
    """Every id in ``[0, vocab_size)`` (when ``vocab_size`` is known)."""
    if vocab_size is None or ids.numel() == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0 or hi >= vocab_size:
        raise fail(name, func, f"token ids in [0, {vocab_size}) (the model's vocabulary)",
                   f"ids in [{lo}, {hi}]")


def _text_like(value: Any) -> bool:
    """What a text argument can be (and a tokenizer never is)."""
    import torch

    return isinstance(value, (str, os.PathLike, list, tuple, torch.Tensor)) or \
        type(value).__name__ in ("CalibrationSet", "ActivationStats")


def model_tokenizer_text(*, old: tuple, new: tuple):
    """Decorator of functions whose signature is ``f(model, tokenizer, <new...>, *, ...)``:
    the earlier order ``f(model, <old...>, tokenizer=...)`` still works, with a
    DeprecationWarning.

    The earlier call is recognised by its second positional argument being text-like (a
    ``str``, a path, a list, a tensor, a ``CalibrationSet`` or ``ActivationStats``): a tokenizer
    is none of those. ``old`` and ``new`` name the positional parameters after ``model`` in the
    earlier and the present order (the present one without ``tokenizer``).
    """
    import functools

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(model, *args, **kwargs):
            if args and _text_like(args[0]):
                warnings.warn(
                    f"{fn.__name__}(model, {', '.join(old)}, tokenizer=...) is now "
                    f"{fn.__name__}(model, tokenizer, {', '.join(new)}, ...): the tokenizer comes "
                    "right after the model, before the text", DeprecationWarning, stacklevel=2)
                tokenizer = kwargs.pop("tokenizer", None)
                given = dict(zip(old, args))
                rest = args[len(old):]
                for name in new:
                    if name not in given and name in kwargs:
                        given[name] = kwargs.pop(name)
                ordered = []
                for name in new:
                    if name not in given:
                        break
                    ordered.append(given.pop(name))
                kwargs.update(given)
                args = (tokenizer, *ordered, *rest)
            return fn(model, *args, **kwargs)

        return wrapper

    return decorate
