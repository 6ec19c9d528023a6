"""How well a pruned sentence encoder keeps the dense encoder's embeddings."""
from __future__ import annotations

import dataclasses
import logging
from typing import Optional, Sequence, Union

import numpy as np
import torch

from .._validation import check_choice, check_positive_int, fail
from .perplexity import model_device

__all__ = ["FidelityResult", "embedding_fidelity", "sentence_embeddings"]

logger = logging.getLogger(__name__)

_POOLINGS = ("mean", "cls")


@dataclasses.dataclass(frozen=True)
class FidelityResult:
    """Agreement between the sentence embeddings of a dense and a pruned encoder.

    Attributes
    ----------
    cosine : float
        Mean over texts of the cosine similarity between a text's dense and pruned embedding
        (1.0 when they coincide).
    cosine_min : float
        The smallest per-text cosine similarity.
    nn_agreement : float
        Mean over texts of ``|N_k^dense(i) ∩ N_k^pruned(i)| / k``, where ``N_k(i)`` is the set of
        the ``k`` texts nearest to text ``i`` (cosine similarity, ``i`` itself excluded) under
        each model's embeddings; 1.0 when every neighbour list is kept.
    k : int
        Neighbours per text.
    pooling : str
        ``"mean"`` or ``"cls"``.
    per_text_cosine : ndarray of float64, shape (n_texts,)
        Cosine similarity of each text's two embeddings, in the order of ``texts``.
    per_text_overlap : ndarray of float64, shape (n_texts,)
        Neighbour overlap fraction of each text, in the order of ``texts``.
    """

    cosine: float
    cosine_min: float
    nn_agreement: float
    k: int
    pooling: str
    per_text_cosine: np.ndarray = dataclasses.field(repr=False)
    per_text_overlap: np.ndarray = dataclasses.field(repr=False)

    def __post_init__(self):
        for name in ("per_text_cosine", "per_text_overlap"):
            array = np.array(getattr(self, name), dtype=np.float64)
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def n_texts(self) -> int:
        """Number of texts compared."""
        return int(self.per_text_cosine.shape[0])

    def summary(self) -> dict:
        """The scalar fields as a plain dict."""
        return {
            "cosine": self.cosine,
            "cosine_min": self.cosine_min,
            "nn_agreement": self.nn_agreement,
            "k": self.k,
            "pooling": self.pooling,
            "n_texts": self.n_texts,
        }

    def to_frame(self):
        """One row per text (indexed by its position in ``texts``): ``cosine``, ``nn_overlap``.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        frame = pd.DataFrame({"cosine": self.per_text_cosine, "nn_overlap": self.per_text_overlap})
        frame.index.name = "text"
        return frame


def _check_texts(texts, *, func: str) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise fail("texts", func, "a sequence of str", type(texts).__name__)
    texts = list(texts)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise fail("texts", func, "a non-empty sequence of str", texts[:3] if texts else texts)
    return texts


def sentence_embeddings(
    model: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    batch_size: int = 16,
    max_length: Optional[int] = None,
    normalize: bool = True,
    device: Union[str, torch.device, None] = None,
) -> torch.Tensor:
    """Pooled sentence embeddings of an encoder, as sentence-transformers computes them.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face encoder (``AutoModel``: BERT, MiniLM...) called as ``model(**batch)``;
        its first output (``last_hidden_state``) has shape ``(batch, tokens, hidden)``. Put in
        eval mode for the call (its mode is restored); never moved.
    tokenizer : Hugging Face tokenizer
        Called as ``tokenizer(batch, padding=True, truncation=True, return_tensors="pt")``.
    texts : sequence of str, length n
    pooling : {"mean", "cls"}, default "mean"
        ``"mean"``: average of the token states weighted by the attention mask (padding
        excluded), the pooling of all-MiniLM-L6-v2; ``"cls"``: the first token's state.
    batch_size : int, default 16
    max_length : int, optional
        Truncation length in tokens; the tokenizer's ``model_max_length`` by default
        (sentence-transformers truncates all-MiniLM-L6-v2 at 256).
    normalize : bool, default True
        L2-normalise each embedding (all-MiniLM-L6-v2 ends with a ``Normalize`` module).
    device : str or torch.device, optional
        Where the inputs go; the model's device by default.

    Returns
    -------
    torch.Tensor of float32, shape (n, hidden), on the CPU
    """
    func = "sentence_embeddings"
    texts = _check_texts(texts, func=func)
    check_choice(pooling, _POOLINGS, name="pooling", func=func)
    check_positive_int(batch_size, name="batch_size", func=func)
    if max_length is not None:
        check_positive_int(max_length, name="max_length", func=func)
    target = torch.device(device) if device is not None else model_device(model)
    kwargs = {"padding": True, "truncation": True, "return_tensors": "pt"}
    if max_length is not None:
        kwargs["max_length"] = max_length

    chunks = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                batch = tokenizer(texts[start:start + batch_size], **kwargs)
                batch = {name: value.to(target) for name, value in batch.items()}
                output = model(**batch)
                hidden = output[0] if not isinstance(output, torch.Tensor) else output
                hidden = hidden.float()
                if pooling == "mean":
                    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
                else:
                    pooled = hidden[:, 0]
                if normalize:
                    pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
                chunks.append(pooled.cpu())
    finally:
        model.train(was_training)
    return torch.cat(chunks, dim=0)


def _neighbours(embeddings: torch.Tensor, k: int) -> torch.Tensor:
    """Indices (n, k) of each row's k most cosine-similar other rows (stable order)."""
    unit = torch.nn.functional.normalize(embeddings.double(), p=2, dim=1)
    similarity = unit @ unit.T
    similarity.fill_diagonal_(-torch.inf)
    # stable descending sort: ties go to the lower index, the same way under both models
    order = torch.sort(similarity, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def embedding_fidelity(
    dense: torch.nn.Module,
    pruned: torch.nn.Module,
    tokenizer,
    texts: Sequence[str],
    *,
    pooling: str = "mean",
    k: int = 5,
    batch_size: int = 16,
    max_length: Optional[int] = None,
    device: Union[str, torch.device, None] = None,
) -> FidelityResult:
    """Compare the sentence embeddings of a dense encoder and its pruned copy.

    Both models embed the same ``texts`` (pooled as sentence-transformers does for
    all-MiniLM-L6-v2: mean over the attention mask, then L2-normalised; see
    :func:`sentence_embeddings`). Two numbers come out: the mean cosine similarity between each
    text's dense and pruned embedding, and the nearest-neighbour agreement, i.e. for each text the
    fraction of its ``k`` nearest other texts under the dense embeddings that are also among its
    ``k`` nearest under the pruned embeddings, averaged over texts. The second asks whether the
    retrieval structure survives, which a high cosine alone does not guarantee.

    Parameters
    ----------
    dense, pruned : torch.nn.Module
        Hugging Face encoders (``AutoModel``) with the same tokenizer. Neither is moved; each is
        put in eval mode for the call and its mode restored.
    tokenizer : Hugging Face tokenizer
    texts : sequence of str, length n
        The texts to embed; ``n >= k + 1``.
    pooling : {"mean", "cls"}, default "mean"
    k : int, default 5
        Neighbours per text, ``1 <= k <= n - 1``.
    batch_size : int, default 16
    max_length : int, optional
        Truncation length in tokens (the tokenizer's ``model_max_length`` by default).
    device : str or torch.device, optional
        Where the inputs go; by default each model's own device.

    Returns
    -------
    FidelityResult

    Raises
    ------
    ParameterError
        For ``texts`` that is not a non-empty sequence of str, an unknown ``pooling``, or ``k``
        outside ``[1, n - 1]``.

    References
    ----------
    .. [1] N. Reimers, I. Gurevych, "Sentence-BERT: Sentence Embeddings using Siamese
       BERT-Networks", EMNLP 2019 (mean pooling; the all-MiniLM-L6-v2 model card).
    """
    func = "embedding_fidelity"
    texts = _check_texts(texts, func=func)
    check_choice(pooling, _POOLINGS, name="pooling", func=func)
    check_positive_int(batch_size, name="batch_size", func=func)
    n = len(texts)
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= n - 1:
        raise fail("k", func, f"an integer in [1, len(texts) - 1] = [1, {n - 1}]", k)

    options = dict(pooling=pooling, batch_size=batch_size, max_length=max_length, device=device)
    a = sentence_embeddings(dense, tokenizer, texts, **options).double()
    b = sentence_embeddings(pruned, tokenizer, texts, **options).double()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=1, eps=1e-12).clamp(-1.0, 1.0)

    na, nb = _neighbours(a, k), _neighbours(b, k)
    overlap = torch.empty(n, dtype=torch.float64)
    for i in range(n):
        overlap[i] = len(set(na[i].tolist()) & set(nb[i].tolist())) / k

    result = FidelityResult(
        cosine=float(cos.mean()),
        cosine_min=float(cos.min()),
        nn_agreement=float(overlap.mean()),
        k=k,
        pooling=pooling,
        per_text_cosine=cos.numpy(),
        per_text_overlap=overlap.numpy(),
    )
    logger.info("embedding fidelity over %d texts: cosine %.4f, NN@%d agreement %.4f",
                n, result.cosine, k, result.nn_agreement)
    return result
