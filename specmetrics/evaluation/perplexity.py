"""Perplexity of a causal language model over non-overlapping windows (the Wanda protocol)."""
from __future__ import annotations

import logging
import math
from typing import Any, Optional, Union

import torch

from .._validation import check_bool, check_device, check_not_meta, check_positive_int, fail
from ..calibration.text import check_token_ids, read_text, tokenize
from ..calibration.windows import learned_positions, model_max_positions, model_vocab_size

__all__ = ["perplexity", "tokenize_text", "model_device"]

logger = logging.getLogger(__name__)

TextLike = Union[str, "os.PathLike[str]", list, torch.Tensor]


def tokenize_text(tokenizer, text: TextLike, *, func: str = "tokenize_text",
                  vocab_size: Optional[int] = None) -> torch.Tensor:
    """Token ids of a whole text, tokenised once as Wanda does.

    Parameters
    ----------
    tokenizer : callable
        A Hugging Face tokenizer (called as ``tokenizer(text, return_tensors="pt")``), or any
        callable returning token ids. Its default special tokens are used.
    text : str, os.PathLike, list of str or torch.Tensor
        By the one text rule (:mod:`specmetrics.calibration.text`): the text itself (``str``), a
        UTF-8 file (``pathlib.Path``), several texts joined with ``"\\n\\n"``; or token ids
        already computed (integer tensor of shape ``(n,)`` or ``(1, n)``; returned as is).
    func : str
        Name used in error messages.
    vocab_size : int, optional
        When given, every id must lie in ``[0, vocab_size)``.

    Returns
    -------
    torch.LongTensor, shape (n,)
    """
    if isinstance(text, torch.Tensor):
        if text.is_meta or text.dtype.is_floating_point or text.dtype.is_complex \
                or text.dtype == torch.bool or not (
                    text.dim() == 1 or (text.dim() == 2 and text.shape[0] == 1)):
            raise fail("text", func, "an integer tensor of token ids of shape (n,) or (1, n)",
                       f"tensor of dtype {text.dtype} and shape {tuple(text.shape)}")
        ids = text.reshape(-1).long()
        check_token_ids(ids, vocab_size, func=func, name="text")
        return ids
    string = read_text(text, name="text", func=func)
    return tokenize(tokenizer, string, func=func, vocab_size=vocab_size)


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
        ``(1, n)`` is token ids tokenised beforehand (reuse them across many models); a list of
        texts is joined with ``"\\n\\n"``. (Transition: a one-line ``str`` naming an existing
        file is read as that file with a ``DeprecationWarning``.)
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
        If ``seqlen`` or ``max_windows`` is not a positive integer (``seqlen >= 2``), if ``seqlen``
        exceeds the model's learned position embeddings (GPT-2, OPT, BERT-style), if ``text`` is
        of the wrong type or empty, has fewer than ``seqlen`` tokens or ids outside the
        vocabulary, or ``device`` does not exist here.

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
    if not isinstance(model, torch.nn.Module):
        raise fail("model", func, "a torch.nn.Module (a causal LM)", type(model).__name__)
    check_not_meta(model, name="model", func=func)
    seqlen = check_positive_int(seqlen, name="seqlen", func=func, minimum=2)
    if max_windows is not None:
        max_windows = check_positive_int(max_windows, name="max_windows", func=func)
    progress = check_bool(progress, name="progress", func=func)
    device = check_device(device, func=func)
    limit = learned_positions(model)
    if limit is not None and seqlen > limit:
        raise fail("seqlen", func, f"at most {limit}, the number of learned position embeddings "
                   f"of {type(model).__name__}", seqlen)

    ids = tokenize_text(tokenizer, text, func=func, vocab_size=model_vocab_size(model))
    n_tokens = int(ids.numel())
    n_windows = n_tokens // seqlen
    if n_windows == 0:
        raise fail("text", func, f"at least seqlen={seqlen} tokens long (one window)",
                   f"{n_tokens} tokens")
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)

    context = model_max_positions(model)
    if context is not None and seqlen > context:
        logger.warning("seqlen=%d exceeds the model's maximum positions (%d)", seqlen, context)

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
