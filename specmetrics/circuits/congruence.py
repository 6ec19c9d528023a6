"""Token-neuron congruence (seed 002): how strongly MLP neurons and the OV circuit line up with
single tokens, against random directions of the same norm.

For a vocabulary matrix ``M`` (V, d) (the token embedding ``W_E``, or the unembedding ``W_U``)
and a vector ``w`` in the residual stream, the scores ``M w`` are the dot products of ``w`` with
every token's vector. A unit's **top tokens** are its ``top_k`` largest scores; its
**congruence ratio** is

    ratio(w) = mean of the top_k largest entries of M w  /  (||w|| * B_k)

where ``B_k`` is the same top-k mean for random unit directions (Gaussian, normalised; ``n_random``
of them, seeded), so that a direction no more aligned with single tokens than chance has a ratio
near 1 whatever its norm. ``z(w)`` measures the same excess in standard deviations of the random
top-k means. ``peak(w)`` is the top-k mean over the root mean square of all of ``M w``: how far
the top tokens stand out of the unit's own scores (about ``sqrt(2 ln V)`` for a random direction
and an isotropic ``M``), which a direction does not raise by merely having a large norm under
``M`` (for instance by lying along an anisotropic embedding's dominant direction, which lifts
every token's score). The units:

``mlp_in``
    Each neuron's input weights: the rows of the ``gate`` / ``up`` projections (what the neuron
    reads from the residual stream), against ``W_E``.
``mlp_out``
    Each neuron's output weights: the columns of the ``down`` projection (what it writes), against
    ``W_E`` (the seed's "W_E dot the neuron's outgoing weights").
``ov``
    The "OV without QK" thought experiment: with the attention pattern replaced by attending to
    a token fully, token ``t``'s embedding passes through the layer's OV circuit (all heads,
    ``W_O W_V`` with each KV head repeated for its query heads) and is unembedded:
    ``W_U W_O W_V e_t``. Units are ``ov_tokens`` source tokens sampled (seeded) from the
    vocabulary; ``self_rank`` records where the source token itself ranks among its outputs
    (0: the circuit copies it first).
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from .._validation import check_bool, check_int, check_seed, fail
from ..models import find_blocks, module_type, weight_out_in
from ._common import (attention_weights, check_layers, check_model, check_tokenizer,
                      random_baseline, scan_vocab, token_strings, vocab_matrices)
from .results import CongruenceEntry, TokenCongruence, Unit

__all__ = ["token_congruence", "congruence_scores", "KINDS"]

logger = logging.getLogger(__name__)

#: The kinds of units :func:`token_congruence` can compare with the vocabulary.
KINDS = ("mlp_in", "mlp_out", "ov")

_IN_TYPES = ("gate", "up", "gate_up")


def congruence_scores(matrix: torch.Tensor, vectors: torch.Tensor, baseline, top_k: int,
                      reference=None):
    """Top tokens, ratios, z-scores and peaks of ``vectors`` (n, d) against ``matrix`` (V, d).

    Returns
    -------
    values, ids : torch.Tensor, shape (n, top_k)
    ratio, z, peak : ndarray, shape (n,)
        See :class:`~specmetrics.circuits._common.RandomBaseline`.
    greater : torch.Tensor or None
        With ``reference``: per vector, the number of scores above ``reference[i]``.
    """
    scan = scan_vocab(matrix, vectors, top_k, reference)
    top_mean = scan.top_mean.numpy()
    norms = vectors.double().norm(dim=1).cpu().numpy()
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = norms * baseline.mean
        ratio = np.where(norms > 0, top_mean / expected, np.nan)
        z = np.where(norms > 0, (top_mean - expected) / (norms * baseline.sd), np.nan)
    return scan.values, scan.ids, ratio, z, scan.peak.numpy(), scan.greater


def _entry(name, block, kind, vocab_name, unit_ids, labels, values, ids, ratio, z, peak,
           top_units, tokenizer, self_rank=None) -> CongruenceEntry:
    finite = np.where(np.isfinite(ratio), ratio, -np.inf)
    order = np.argsort(-finite, kind="stable")[:top_units]
    units = []
    for j in order:
        if not np.isfinite(ratio[j]):
            continue
        units.append(Unit(int(unit_ids[j]), labels(j), float(ratio[j]), float(z[j]),
                          float(peak[j]), tuple(int(t) for t in ids[j]),
                          tuple(token_strings(tokenizer, ids[j].tolist())),
                          tuple(float(v) for v in values[j])))
    return CongruenceEntry(name, block, kind, vocab_name, np.asarray(unit_ids, dtype=np.int64),
                           ratio, z, peak, self_rank, tuple(units))


def token_congruence(model, tokenizer, *, layers=None, kinds=KINDS, top_k: int = 5,
                     n_random: int = 64, top_units: int = 5, ov_tokens: int = 512,
                     cosine: bool = False, seed: int = 0, progress: bool = False
                     ) -> TokenCongruence:
    """Dot products of token embeddings with MLP neurons and with the OV circuit, against random
    directions (see the module docstring for the definitions).

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face decoder or BERT-style encoder.
    tokenizer : Hugging Face tokenizer or None
        Turns token ids into tokens (``None``: tokens are shown as ``#<id>``).
    layers : int or sequence of int, optional
        Block indices (default: all).
    kinds : sequence of {"mlp_in", "mlp_out", "ov"}, default all three
    top_k : int, default 5
        Tokens per unit, and the ``k`` of the top-k means (ratio and baseline).
    n_random : int, default 64
        Random unit directions of each baseline.
    top_units : int, default 5
        Units listed (with their tokens) per entry: those with the largest ratios.
    ov_tokens : int, default 512
        Source tokens sampled for ``kind="ov"`` (every token when the vocabulary is smaller).
    cosine : bool, default False
        Normalise every token's vector first (cosine similarities up to the unit's norm) so that
        tokens with large embeddings do not dominate.
    seed : int, default 0
        Seed of the random directions and of the source-token sample.
    progress : bool, default False

    Returns
    -------
    TokenCongruence
        One :class:`~specmetrics.circuits.CongruenceEntry` per MLP matrix (``mlp_in``: gate
        and up; ``mlp_out``: down) and per layer's OV circuit (``<attention>.ov``), each with a
        ratio and a z-score per unit and its top units' tokens.

    Raises
    ------
    ParameterError
        For a bad parameter (before any work).
    UnsupportedModelError
        For a model without a token embedding of the residual width, or (``"ov"``) whose
        attention weights cannot be read.
    """
    func = "token_congruence"
    check_model(model, func)
    tokenizer = check_tokenizer(tokenizer, func)
    if isinstance(kinds, str):
        kinds = (kinds,)
    try:
        kinds_t = tuple(kinds)
    except TypeError:
        raise fail("kinds", func, f"a non-empty sequence of {', '.join(map(repr, KINDS))}",
                   kinds) from None
    if not kinds_t or not all(isinstance(k, str) and k in KINDS for k in kinds_t) \
            or len(set(kinds_t)) != len(kinds_t):
        raise fail("kinds", func, f"a non-empty sequence of distinct kinds among "
                   f"{', '.join(map(repr, KINDS))}", kinds)
    top_k = check_int(top_k, name="top_k", func=func, minimum=1)
    n_random = check_int(n_random, name="n_random", func=func, minimum=2)
    top_units = check_int(top_units, name="top_units", func=func, minimum=0)
    ov_tokens = check_int(ov_tokens, name="ov_tokens", func=func, minimum=1)
    cosine = check_bool(cosine, name="cosine", func=func)
    seed = check_seed(seed, func=func)
    progress = check_bool(progress, name="progress", func=func)
    layout = find_blocks(model, func=func)
    chosen = check_layers(layers, len(layout), func)
    blocks = list(chosen) if chosen is not None else list(range(len(layout)))

    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    d_model = int(emb.weight.shape[1]) if hasattr(emb, "weight") else -1
    w_e, w_u, unembedding = vocab_matrices(model, d_model, func=func)
    raw_embedding = w_e
    if cosine:
        same = w_u is w_e
        w_e = w_e / w_e.norm(dim=1, keepdim=True).clamp_min(1e-30)
        w_u = w_e if same else w_u / w_u.norm(dim=1, keepdim=True).clamp_min(1e-30)
    baselines = {"embedding": random_baseline(w_e, top_k, n_random, seed)}
    if "ov" in kinds_t:
        baselines["unembedding"] = (baselines["embedding"] if w_u is w_e
                                    else random_baseline(w_u, top_k, n_random, seed + 1))
    att = {a.block: a for a in attention_weights(model, func=func)} if "ov" in kinds_t else {}
    vocab_size = int(w_e.shape[0])
    if ov_tokens >= vocab_size:
        sources = torch.arange(vocab_size)
    else:
        gen = torch.Generator().manual_seed(seed)
        sources = torch.sort(torch.randperm(vocab_size, generator=gen)[:ov_tokens]).values
    source_labels = token_strings(tokenizer, sources.tolist())

    from tqdm.auto import tqdm

    entries: dict[str, CongruenceEntry] = {}
    for b in tqdm(blocks, desc=func, unit="block", disable=not progress):
        with torch.no_grad():
            for name, pm in layout.modules_of(b).items():
                mtype = module_type(name)
                if mtype in _IN_TYPES and "mlp_in" in kinds_t:
                    kind, vectors = "mlp_in", weight_out_in(pm.module).float()
                elif mtype == "down" and "mlp_out" in kinds_t:
                    kind, vectors = "mlp_out", weight_out_in(pm.module).float().T
                else:
                    continue
                if vectors.shape[1] != d_model:
                    logger.info("%s: %s has width %d, not the embedding width %d; skipped",
                                func, name, vectors.shape[1], d_model)
                    continue
                values, ids, ratio, z, peak, _ = congruence_scores(
                    w_e, vectors.contiguous(), baselines["embedding"], top_k)
                entries[name] = _entry(name, b, kind, "embedding", np.arange(vectors.shape[0]),
                                       lambda j: f"neuron {j}", values, ids, ratio, z, peak,
                                       top_units, tokenizer)
            if "ov" in kinds_t:
                a = att[b]
                e_src = raw_embedding[sources]
                out = (e_src @ a.v_repeated().float().T) @ a.o.float().T  # W_O W_V e_t
                reference = (w_u[sources] * out).sum(dim=1)
                values, ids, ratio, z, peak, greater = congruence_scores(
                    w_u, out.contiguous(), baselines["unembedding"], top_k, reference)
                name = f"{a.attention}.ov"
                entries[name] = _entry(name, b, "ov", "unembedding", sources.numpy(),
                                       lambda j: source_labels[j], values, ids, ratio, z, peak,
                                       top_units, tokenizer, self_rank=greater.numpy())
    settings = {"layers": None if chosen is None else list(chosen), "kinds": list(kinds_t),
                "top_k": top_k, "n_random": n_random, "top_units": top_units,
                "ov_tokens": int(len(sources)), "cosine": cosine, "seed": seed,
                "unembedding": unembedding, "model": type(model).__name__}
    return TokenCongruence(entries, baselines={k: v.as_dict() for k, v in baselines.items()},
                           settings=settings)
