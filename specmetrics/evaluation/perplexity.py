"""Perplexity of a causal language model over non-overlapping windows (the Wanda protocol)."""
from __future__ import annotations

import logging
import math
import os
import warnings
from typing import Any, Optional, Union

import torch

from .._checks import check_positive_int, fail

__all__ = ["perplexity", "tokenize_text", "model_device"]

logger = logging.getLogger(__name__)

TextLike = Union[str, "os.PathLike[str]", torch.Tensor]


def _read_text(text: Any, *, func: str) -> str:
    """The text itself (``str``) or the contents of a file (``os.PathLike``)."""
    if isinstance(text, os.PathLike):
        path = os.fspath(text)
        if not os.path.isfile(path):
            raise fail("text", func, "a str of text or the os.PathLike of an existing file", text)
        # newline="" keeps the file's line endings byte for byte (WikiText is LF-only).
        with open(path, encoding="utf-8", newline="") as fh:
            return fh.read()
    if isinstance(text, str):
        if text and len(text) < 1024 and "\n" not in text and os.path.isfile(text):
            warnings.warn(
                f"The text {text!r} names an existing file but is scored as text; pass "
                "pathlib.Path(...) to read the file.",
                UserWarning,
                stacklevel=3,
            )
        return text
    raise fail(
        "text", func, "a str of text, an os.PathLike of a text file or a tensor of token ids",
        type(text).__name__,
    )


def tokenize_text(tokenizer, text: TextLike, *, func: str = "tokenize_text") -> torch.Tensor:
    """Token ids of a whole text, tokenised once as Wanda does.

    Parameters
    ----------
    tokenizer : callable
        A Hugging Face tokenizer (anything called as ``tokenizer(text, return_tensors="pt")``
        that returns a mapping with ``"input_ids"``). Its default special tokens are used.
    text : str, os.PathLike or torch.Tensor
        The text (``str``), a UTF-8 text file (``pathlib.Path`` or other ``os.PathLike``), or
        token ids already computed (integer tensor of shape ``(n,)`` or ``(1, n)``; returned as is).
    func : str
        Name used in error messages.

    Returns
    -------
    torch.LongTensor, shape (n,)
    """
    if isinstance(text, torch.Tensor):
        if text.dtype.is_floating_point or text.dtype.is_complex or text.dtype == torch.bool or not (
            text.dim() == 1 or (text.dim() == 2 and text.shape[0] == 1)
        ):
            raise fail("text", func, "an integer tensor of token ids of shape (n,) or (1, n)",
                       f"tensor of dtype {text.dtype} and shape {tuple(text.shape)}")
        return text.reshape(-1).long()
    string = _read_text(text, func=func)
    if not string:
        raise fail("text", func, "a non-empty text", string)
    if tokenizer is None:
        raise fail("tokenizer", func, "a tokenizer when text is not already token ids", None)
    try:
        # verbose=False: silence the "longer than the model's maximum length" warning; the ids
        # are cut into windows below.
        encoding = tokenizer(string, return_tensors="pt", verbose=False)
    except TypeError:
        encoding = tokenizer(string, return_tensors="pt")
    ids = encoding["input_ids"]
    return torch.as_tensor(ids).reshape(-1).long()


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of a model's inputs: ``model.device`` if it has one, else its first parameter's."""
    device = getattr(model, "device", None)
    if isinstance(device, torch.device):
        return device
    for param in model.parameters():
        return param.device
    return torch.device("cpu")


def _logits(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, (tuple, list)):
        logits = output[0]
    if logits is None:
        raise TypeError(f"the model returned {type(output).__name__}, which has no logits")
    return logits


def perplexity(
    model: torch.nn.Module,
    tokenizer,
    text: TextLike,
    *,
    seqlen: int,
    max_windows: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
    progress: bool = False,
) -> float:
    """Perplexity of a causal LM on a text, over non-overlapping windows (Wanda's protocol).

    The whole text is tokenised **once** with the tokenizer's defaults (``tokenizer(text,
    return_tensors="pt")``, exactly as Wanda's ``lib/data.py`` does, so a BOS token appears only
    if the tokenizer adds one by default, and then only once, at the very start). The ids are cut
    into ``n = len(ids) // seqlen`` consecutive, non-overlapping windows of ``seqlen`` tokens (the
    tail is dropped), each window is run alone (batch 1, no BOS of its own, no attention mask), and
    every token but the first of each window is predicted from the tokens before it in its window::

        ppl = exp( sum_w sum_{t=1}^{seqlen-1} -log p(x_{w,t} | x_{w,<t}) / (n * (seqlen - 1)) )

    Wanda's ``eval_ppl_wikitext`` multiplies each window's mean loss by ``seqlen`` and divides the
    sum by ``n * seqlen``; since every window predicts ``seqlen - 1`` tokens, that is the same
    number as the mean NLL over all predicted tokens computed here.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM called as ``model(input_ids)`` that returns logits of shape
        ``(1, seqlen, vocab)`` (or an object with ``.logits``, e.g. any Hugging Face
        ``*ForCausalLM``). It is put in eval mode for the call and its mode restored; it is never
        moved between devices.
    tokenizer : Hugging Face tokenizer or None
        Used as ``tokenizer(text, return_tensors="pt")["input_ids"]``. May be ``None`` when
        ``text`` is already token ids.
    text : str, os.PathLike or torch.Tensor
        What to score. A ``str`` is the text itself; an ``os.PathLike`` (``pathlib.Path``) is a
        UTF-8 text file read verbatim (line endings kept), e.g. WikiText-2's ``wiki.test.raw``,
        which is already the rows joined by ``"\\n\\n"``; an integer tensor of shape ``(n,)`` or
        ``(1, n)`` is token ids tokenised beforehand (reuse them across many models). A short
        one-line ``str`` that names an existing file is still scored as text, with a warning.
    seqlen : int
        Window length in tokens, >= 2 (Wanda: ``model.seqlen``, 2048 for LLaMA, 4096 for
        LLaMA-2). Should not exceed the model's context length (a warning is logged if it does).
    max_windows : int, optional
        Score only the first ``max_windows`` windows (all of them by default). A value at least
        the number of windows changes nothing.
    device : str or torch.device, optional
        Where the input ids are placed. Default: ``model.device`` (or the device of the model's
        first parameter). The model itself is not moved.
    progress : bool, default False
        Show a tqdm progress bar over the windows.

    Returns
    -------
    float
        ``exp`` of the mean negative log-likelihood (natural log) over the
        ``n_windows * (seqlen - 1)`` predicted tokens. Logits are upcast to float32 for the loss;
        the sum is accumulated in float64.

    Raises
    ------
    ParameterError
        If ``seqlen`` or ``max_windows`` is not a positive integer (``seqlen >= 2``), if ``text``
        is of the wrong type or empty, or if it has fewer than ``seqlen`` tokens.

    References
    ----------
    .. [1] M. Sun, Z. Liu, A. Bair, J. Z. Kolter, "A Simple and Effective Pruning Approach for
       Large Language Models" (Wanda), ICLR 2024; code ``lib/eval.py::eval_ppl_wikitext`` and
       ``lib/data.py::get_wikitext2`` (github.com/locuslab/wanda).
    .. [2] S. Merity, C. Xiong, J. Bradbury, R. Socher, "Pointer Sentinel Mixture Models"
       (WikiText), 2016.

    Examples
    --------
    >>> from pathlib import Path
    >>> ppl = perplexity(model, tokenizer, Path("wiki.test.raw"), seqlen=2048)  # doctest: +SKIP
    """
    func = "perplexity"
    check_positive_int(seqlen, name="seqlen", func=func, minimum=2)
    if max_windows is not None:
        check_positive_int(max_windows, name="max_windows", func=func)
    if not isinstance(progress, bool):
        raise fail("progress", func, "a bool", progress)

    ids = tokenize_text(tokenizer, text, func=func)
    n_tokens = int(ids.numel())
    n_windows = n_tokens // seqlen
    if n_windows == 0:
        raise fail("text", func, f"at least seqlen={seqlen} tokens long (one window)",
                   f"{n_tokens} tokens")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)

    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if isinstance(context, int) and seqlen > context:
        logger.warning("seqlen=%d exceeds the model's max_position_embeddings=%d", seqlen, context)

    target = torch.device(device) if device is not None else model_device(model)
    kwargs = {}
    if hasattr(getattr(model, "config", None), "use_cache"):
        kwargs["use_cache"] = False  # no KV cache: one forward per window
    logger.info(
        "perplexity: %d tokens, %d windows of %d scored (%d tokens not scored)",
        n_tokens, n_windows, seqlen, n_tokens - n_windows * seqlen,
    )

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    total = torch.zeros((), dtype=torch.float64)
    try:
        with torch.no_grad():
            for w in tqdm(range(n_windows), desc="perplexity", disable=not progress):
                window = ids[w * seqlen:(w + 1) * seqlen].unsqueeze(0).to(target)
                logits = _logits(model(window, **kwargs))
                nll = torch.nn.functional.cross_entropy(
                    logits[0, :-1, :].float(), window[0, 1:], reduction="sum"
                )
                total += nll.double().cpu()
    finally:
        model.train(was_training)

    mean_nll = float(total) / (n_windows * (seqlen - 1))
    return math.exp(mean_nll)
