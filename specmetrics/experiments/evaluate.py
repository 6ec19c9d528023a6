"""How a pruned model compares with its dense original: perplexity or embedding fidelity."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from .._validation import check_bool, check_positive_int, fail
from ..calibration.text import read_text, read_texts
from ..calibration.windows import default_seqlen, model_vocab_size
from ..evaluation import embedding_fidelity, perplexity
from ..evaluation.perplexity import tokenize_text
from ..models.loading import is_causal_lm

__all__ = ["PruningEvaluation", "evaluate_pruned", "EvalText"]

_NAN = math.nan


@dataclass(frozen=True)
class PruningEvaluation:
    """How a pruned model compares with its dense original.

    Attributes
    ----------
    kind : {"perplexity", "fidelity"}
        ``"perplexity"`` for a causal LM (:func:`~specmetrics.perplexity` of both models on the
        same text), ``"fidelity"`` for an encoder (:func:`~specmetrics.embedding_fidelity`).
    perplexity_dense, perplexity : float
        Perplexity of the dense and of the pruned model (NaN for ``"fidelity"``).
    cosine, cosine_min, nn_agreement : float
        Mean and smallest cosine similarity between each text's dense and pruned embedding, and
        the nearest-neighbour agreement at ``k`` (NaN for ``"perplexity"``).
    n_texts : int
        Texts embedded (``"fidelity"``) or windows scored (``"perplexity"``).
    seqlen : int or None
        Perplexity window length (``None`` for ``"fidelity"``).
    k : int or None
        Neighbours per text (``None`` for ``"perplexity"``).
    """

    kind: str
    perplexity_dense: float = _NAN
    perplexity: float = _NAN
    cosine: float = _NAN
    cosine_min: float = _NAN
    nn_agreement: float = _NAN
    n_texts: int = 0
    seqlen: Optional[int] = None
    k: Optional[int] = None

    def summary(self) -> dict[str, Any]:
        """The numbers that apply to ``kind``, as a plain dict."""
        if self.kind == "perplexity":
            return {"perplexity_dense": self.perplexity_dense, "perplexity": self.perplexity,
                    "n_windows": self.n_texts, "seqlen": self.seqlen}
        return {"cosine": self.cosine, "cosine_min": self.cosine_min,
                "nn_agreement": self.nn_agreement, "k": self.k, "n_texts": self.n_texts}

    def columns(self) -> dict[str, float]:
        """The per-cell table columns: ``perplexity`` or ``cosine``, ``cosine_min``,
        ``nn_agreement``."""
        if self.kind == "perplexity":
            return {"perplexity": self.perplexity}
        return {"cosine": self.cosine, "cosine_min": self.cosine_min,
                "nn_agreement": self.nn_agreement}


class EvalText:
    """Held-out text read once (by the one text rule) and, for a causal LM, tokenised once, so
    that every model of a grid is scored on the very same tokens.

    Parameters
    ----------
    model : nn.Module
        The dense model (decides causal LM vs encoder, the default window and the vocabulary).
    tokenizer : Hugging Face tokenizer
    texts : str, pathlib.Path, sequence of str or torch.Tensor
        Causal LM: one text (a list is joined with ``"\\n\\n"``), or token ids. Encoder: a list
        of texts, or a text / file split into paragraphs at blank lines.
    seqlen : int, optional
        Perplexity window (default the model's maximum positions, capped at 2048).
    k : int
        Neighbours per text (encoders).
    max_windows : int, optional
    func : str
        The public function named in error messages.
    """

    def __init__(self, model: nn.Module, tokenizer, texts, *, seqlen=None, k=5, max_windows=None,
                 func: str):
        self.causal = is_causal_lm(model)
        self.func = func
        self.max_windows = None if max_windows is None else check_positive_int(
            max_windows, name="max_windows", func=func)
        if self.causal:
            if not isinstance(texts, torch.Tensor):  # token ids are taken as they are
                texts = read_text(texts, name="eval_texts", func=func)
            self.seqlen = default_seqlen(model, func=func) if seqlen is None else \
                check_positive_int(seqlen, name="seqlen", func=func, minimum=2)
            self.ids = tokenize_text(tokenizer, texts, func=func,
                                     vocab_size=model_vocab_size(model))
            n_windows = int(self.ids.numel()) // self.seqlen
            if n_windows == 0:
                raise fail("eval_texts", func, f"at least seqlen={self.seqlen} tokens long",
                           f"{int(self.ids.numel())} tokens")
            self.n_windows = n_windows if self.max_windows is None else min(n_windows,
                                                                             self.max_windows)
            self.paragraphs = None
            self.k = None
        else:
            self.paragraphs = read_texts(texts, name="eval_texts", func=func)
            self.k = check_positive_int(k, name="k", func=func)
            if self.k > len(self.paragraphs) - 1:
                raise fail("k", func, "an integer in [1, number of texts - 1] = "
                           f"[1, {len(self.paragraphs) - 1}]", k)
            self.tokenizer = tokenizer
            self.ids = None
            self.seqlen = None

    def perplexity(self, model: nn.Module, *, progress: bool = False) -> float:
        return perplexity(model, None, self.ids, seqlen=self.seqlen, max_windows=self.max_windows,
                          progress=progress)

    def dense(self, model: nn.Module, *, progress: bool = False) -> PruningEvaluation:
        """The dense reference: its perplexity, or fidelity 1.0 (the model against itself)."""
        if self.causal:
            ppl = self.perplexity(model, progress=progress)
            return PruningEvaluation("perplexity", perplexity_dense=ppl, perplexity=ppl,
                                     n_texts=self.n_windows, seqlen=self.seqlen)
        return PruningEvaluation("fidelity", cosine=1.0, cosine_min=1.0, nn_agreement=1.0,
                                 n_texts=len(self.paragraphs), k=self.k)

    def compare(self, dense: nn.Module, pruned: nn.Module, *, dense_ppl: Optional[float] = None,
                progress: bool = False) -> PruningEvaluation:
        if self.causal:
            if dense_ppl is None:
                dense_ppl = self.perplexity(dense, progress=progress)
            ppl = self.perplexity(pruned, progress=progress)
            return PruningEvaluation("perplexity", perplexity_dense=dense_ppl, perplexity=ppl,
                                     n_texts=self.n_windows, seqlen=self.seqlen)
        result = embedding_fidelity(dense, pruned, self.tokenizer, self.paragraphs, k=self.k)
        return PruningEvaluation("fidelity", cosine=result.cosine, cosine_min=result.cosine_min,
                                 nn_agreement=result.nn_agreement, n_texts=result.n_texts,
                                 k=result.k)


def evaluate_pruned(dense: nn.Module, pruned: nn.Module, tokenizer, texts, *, seqlen=None, k=5,
                    max_windows=None, progress=False) -> PruningEvaluation:
    """Compare a pruned model with its dense original on held-out text.

    A causal LM is scored by :func:`~specmetrics.perplexity` (both models, the same
    non-overlapping windows); an encoder by :func:`~specmetrics.embedding_fidelity` (mean-pooled
    sentence embeddings: cosine similarity and nearest-neighbour agreement).

    Parameters
    ----------
    dense, pruned : torch.nn.Module
        The original and the pruned model (same architecture and tokenizer); neither is changed.
    tokenizer : Hugging Face tokenizer
    texts : str, pathlib.Path or sequence of str
        The held-out text, by the one text rule. Causal LM: a text, a file, or texts joined with
        ``"\\n\\n"``. Encoder: a list of texts, or a text / file split into paragraphs at blank
        lines.
    seqlen : int, optional
        Perplexity window; default the model's maximum positions capped at 2048.
    k : int, default 5
        Neighbours per text for the nearest-neighbour agreement.
    max_windows : int, optional
        Score only the first ``max_windows`` perplexity windows (all by default).
    progress : bool, default False
        Progress bars over the perplexity windows.

    Returns
    -------
    PruningEvaluation
    """
    func = "evaluate_pruned"
    progress = check_bool(progress, name="progress", func=func)
    for label, m in (("dense", dense), ("pruned", pruned)):
        if not isinstance(m, nn.Module):
            raise fail(label, func, "a torch.nn.Module", type(m).__name__)
    held_out = EvalText(dense, tokenizer, texts, seqlen=seqlen, k=k, max_windows=max_windows,
                        func=func)
    return held_out.compare(dense, pruned, progress=progress)
