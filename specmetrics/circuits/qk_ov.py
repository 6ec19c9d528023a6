"""Spectra of the QK and OV circuits of every attention head, and their directions as tokens.

For query head ``h`` of a block, with ``g = h // (n_heads / n_kv_heads)`` the key/value head it
reads (grouped-query attention; ``g = h`` for multi-head attention), and the projections as
stored by Hugging Face (``W_Q^h``, ``W_K^g``, ``W_V^g`` of shape (head_dim, d_model), ``W_O^h`` of
shape (d_model, head_dim)):

- the **QK circuit** ``W_QK^h = (W_Q^h)^T W_K^g`` (d_model x d_model): the bilinear form of the
  attention logits, ``score(x_i, x_j) = x_i^T W_QK^h x_j / sqrt(head_dim)``;
- the **OV circuit** ``W_OV^h = W_O^h W_V^g`` (d_model x d_model): what the head writes into the
  residual stream for each attended vector.

Both have rank at most ``head_dim``; their singular values are computed from the thin factors
(:func:`~specmetrics.circuits._common.product_svd`: QR of each factor, SVD of a head_dim x
head_dim core), never forming the d_model x d_model product. Biases, rotary position embeddings
(which rotate queries and keys by position; at equal positions they cancel), query/key norms and
the blocks' input norms are not part of the products.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np
import torch

from .._validation import check_bool, check_int, check_seed
from ..spectrum import fit_power_law
from ._common import (attention_weights, check_layers, check_model, check_tokenizer,
                      product_svd, random_baseline, scan_vocab, singular_metrics, token_strings,
                      vocab_matrices)
from .results import CircuitSpectrum, Direction, HeadSpectra, QKOVSpectra

__all__ = ["qk_ov_spectra", "embedding_directions"]

logger = logging.getLogger(__name__)


def _alpha(s: np.ndarray) -> dict[str, Any]:
    fit = fit_power_law(s.astype(np.float64) ** 2, warn=False)
    return {"alpha": fit.alpha if fit.success else math.nan,
            "alpha_ks": fit.ks_distance if fit.success else math.nan,
            "alpha_n_tail": int(fit.n_tail) if fit.success else 0,
            "fit_message": fit.message}


def _map_directions(specs: list, vocab: dict, baselines: dict, top_k: int, tokenizer
                    ) -> list[Direction]:
    """Map unit vectors to tokens.

    ``specs``: dicts with ``circuit, side, index, singular_value, vector (d,), vocab`` and
    ``pair`` (an id shared by the two sides of one singular triple; the first side listed
    decides the sign: its largest-magnitude score is made positive, and the other side follows).
    """
    out: list[Optional[Direction]] = [None] * len(specs)
    results: dict[int, tuple] = {}
    for key in sorted({s["vocab"] for s in specs}):
        idx = [i for i, s in enumerate(specs) if s["vocab"] == key]
        x = torch.stack([specs[i]["vector"].float() for i in idx])
        scan = scan_vocab(vocab[key], x, top_k, lowest=True)
        for j, i in enumerate(idx):
            results[i] = (scan.values[j], scan.ids[j], scan.low_values[j], scan.low_ids[j],
                          float(scan.rms[j]))
    flips: dict[Any, bool] = {}
    for i, s in enumerate(specs):
        hv, hi, lv, li, rms = results[i]
        if s["pair"] not in flips:
            flips[s["pair"]] = bool(-float(lv[0]) > float(hv[0]))
        if flips[s["pair"]]:  # the direction's sign is reversed: the ends swap
            hv, hi, lv, li = -lv, li, -hv, hi
        base = baselines[s["vocab"]]
        top_mean = float(hv.double().mean())
        out[i] = Direction(
            s["circuit"], s["side"], int(s["index"]), float(s["singular_value"]),
            tuple(int(t) for t in hi), tuple(token_strings(tokenizer, hi.tolist())),
            tuple(float(v) for v in hv), tuple(int(t) for t in li),
            tuple(token_strings(tokenizer, li.tolist())),
            top_mean / base.mean if base.mean > 0 else math.nan,
            (top_mean - base.mean) / base.sd if base.sd > 0 else math.nan,
            top_mean / rms if rms > 0 else math.nan)
    return out


def embedding_directions(w_e: torch.Tensor, n: int) -> tuple[np.ndarray, torch.Tensor]:
    """The ``n`` leading singular values and right singular vectors of the token embedding
    (uncentred), from the eigen-decomposition of ``W_E^T W_E`` in float64.

    Returns
    -------
    s : ndarray, shape (n,)
    v : torch.Tensor, shape (n, d)
    """
    gram = w_e.double().T @ w_e.double()
    evals, evecs = torch.linalg.eigh(gram)
    order = torch.argsort(evals, descending=True)[:n]
    s = torch.sqrt(torch.clamp(evals[order], min=0)).cpu().numpy()
    return s, evecs[:, order].T.contiguous()


def qk_ov_spectra(model, *, layers=None, heads=None, tokenizer=None, directions: int = 3,
                  top_k: int = 10, n_random: int = 64, seed: int = 0, fit: bool = True,
                  progress: bool = False) -> QKOVSpectra:
    """Spectra of the QK (``W_Q^T W_K``) and OV (``W_O W_V``) products of every head.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face decoder (multi-head or grouped-query attention: LLaMA, Mistral, Qwen2,
        OPT, GPT-2, GPT-NeoX, ...) or a BERT-style encoder. Head counts are read from its config
        (``num_attention_heads``, ``num_key_value_heads``, ``head_dim``).
    layers : int or sequence of int, optional
        Block indices to analyse (default: all).
    heads : int or sequence of int, optional
        Query-head indices to analyse in each block (default: all).
    tokenizer : Hugging Face tokenizer, optional
        When given (and ``directions > 0``), the leading singular directions of the token
        embedding and of every product are mapped to tokens.
    directions : int, default 3
        Singular directions per product (and of the embedding) mapped to tokens.
    top_k : int, default 10
        Tokens listed per direction (and the ``k`` of the random baseline's top-k mean).
    n_random : int, default 64
        Random unit directions of the baseline of each vocabulary matrix.
    seed : int, default 0
        Seed of the random directions.
    fit : bool, default True
        Fit a power law (:func:`specmetrics.fit_power_law`, WeightWatcher's KS policy) to the
        squared singular values of each product; ``alpha`` is NaN where no tail of at least
        :data:`~specmetrics.spectrum.MIN_TAIL` values fits (``fit_message`` says why).
    progress : bool, default False
        A progress bar over the blocks.

    Returns
    -------
    QKOVSpectra
        One :class:`~specmetrics.circuits.HeadSpectra` per (block, query head), keyed
        ``<attention module>.heads.<h>``. Per product (``qk_*`` / ``ov_*`` columns of
        ``to_frame()``), from its singular values ``s`` (at most ``head_dim`` of them):

        - ``rank``: ``#(s > s_max * d_model * eps(float32))``; ``rank_fraction``: rank /
          head_dim (1.0 for a full-rank product);
        - ``effective_rank``: ``exp(-sum p ln p)``, ``p = s / sum s`` (Roy & Vetterli, 2007);
        - ``stable_rank``: ``sum s^2 / s_max^2``;
        - ``entropy``: ``-sum p ln p`` in nats with ``p = s^2 / sum s^2`` (the spectral entropy
          of the ESD); ``entropy_normalized``: entropy / ln(head_dim);
        - ``sv_max``, ``frobenius``; ``alpha``, ``alpha_ks``, ``alpha_n_tail``.

        :meth:`QKOVSpectra.summary` adds, per layer, the same metrics of the whole value
        projection ``W_V`` (``v_*``) and the head means.

    Raises
    ------
    ParameterError
        For a bad parameter (before any work).
    UnsupportedModelError
        For a model whose attention projections or head counts cannot be read.

    Notes
    -----
    Directions: the product ``W = U S V^T``; for QK, ``u_i`` (query side) and ``v_i`` (key side)
    are read through the token embedding (scores ``W_E u_i``); for OV, ``v_i`` (the source side,
    what the head reads) through ``W_E`` and ``u_i`` (what it writes) through the unembedding
    (``lm_head``; ``W_E`` for encoders). The embedding's own directions are its right singular
    vectors (uncentred SVD). A singular pair's sign is fixed so that the largest-magnitude score
    of its first side is positive; ``tokens`` are the positive end, ``negative_tokens`` the
    other. ``ratio`` compares the mean of the ``top_k`` scores with that of random unit
    directions (1: no more aligned with single tokens than chance); ``peak`` divides it by the
    RMS of all the direction's scores instead, which does not grow with the direction's norm
    under the vocabulary matrix (the embedding's own leading directions have large ratios for
    that reason alone), so it compares directions of different matrices (seed 004's question).

    References
    ----------
    .. [1] N. Elhage et al., "A Mathematical Framework for Transformer Circuits", Transformer
       Circuits Thread (2021).
    .. [2] O. Roy, M. Vetterli, "The effective rank: a measure of effective dimensionality",
       EUSIPCO (2007).
    """
    func = "qk_ov_spectra"
    check_model(model, func)
    tokenizer = check_tokenizer(tokenizer, func)
    directions = check_int(directions, name="directions", func=func, minimum=0)
    top_k = check_int(top_k, name="top_k", func=func, minimum=1)
    n_random = check_int(n_random, name="n_random", func=func, minimum=2)
    seed = check_seed(seed, func=func)
    fit = check_bool(fit, name="fit", func=func)
    progress = check_bool(progress, name="progress", func=func)
    att = attention_weights(model, func=func)
    chosen = check_layers(layers, len(att), func)
    n_heads_min = min(a.n_heads for a in att)
    head_list = check_layers(heads, n_heads_min, func, name="heads")
    blocks = [att[i] for i in (chosen if chosen is not None else range(len(att)))]

    map_tokens = tokenizer is not None and directions > 0
    vocab: dict[str, torch.Tensor] = {}
    baselines = {}
    embedding: tuple = ()
    unembedding = None
    if map_tokens:
        w_e, w_u, unembedding = vocab_matrices(model, att[0].d_model, func=func)
        vocab = {"embedding": w_e, "unembedding": w_u}
        baselines = {"embedding": random_baseline(w_e, top_k, n_random, seed)}
        baselines["unembedding"] = (baselines["embedding"] if w_u is w_e
                                    else random_baseline(w_u, top_k, n_random, seed + 1))
        n_emb = min(directions, int(w_e.shape[1]))
        s_emb, v_emb = embedding_directions(w_e, n_emb)
        specs = [{"circuit": "embedding", "side": "embedding", "index": i,
                  "singular_value": float(s_emb[i]), "vector": v_emb[i], "vocab": "embedding",
                  "pair": ("embedding", i)} for i in range(n_emb)]
        embedding = tuple(_map_directions(specs, vocab, baselines, top_k, tokenizer))

    from tqdm.auto import tqdm

    entries: dict[str, HeadSpectra] = {}
    layer_meta: dict[str, dict] = {}
    for a in tqdm(blocks, desc=func, unit="block", disable=not progress):
        hs = list(head_list) if head_list is not None else list(range(a.n_heads))
        kv = [a.kv_head(h) for h in hs]
        with torch.no_grad():
            qk_a = torch.stack([a.q_head(h).T for h in hs])  # (H, d, hd)
            qk_b = torch.stack([a.k_head(g) for g in kv])  # (H, hd, d)
            ov_a = torch.stack([a.o_head(h) for h in hs])  # (H, d, hd)
            ov_b = torch.stack([a.v_head(g) for g in kv])  # (H, hd, d)
            if map_tokens:
                s_qk, u_qk, v_qk = product_svd(qk_a, qk_b, vectors=True)
                s_ov, u_ov, v_ov = product_svd(ov_a, ov_b, vectors=True)
            else:
                s_qk, s_ov = product_svd(qk_a, qk_b), product_svd(ov_a, ov_b)
        mapped: dict = {}
        if map_tokens:
            specs = []
            nd = min(directions, a.head_dim)
            for j, h in enumerate(hs):
                for i in range(nd):
                    specs += [
                        {"circuit": "qk", "side": "query", "index": i, "head": h,
                         "singular_value": float(s_qk[j, i]), "vector": u_qk[j, :, i],
                         "vocab": "embedding", "pair": ("qk", h, i)},
                        {"circuit": "qk", "side": "key", "index": i, "head": h,
                         "singular_value": float(s_qk[j, i]), "vector": v_qk[j, :, i],
                         "vocab": "embedding", "pair": ("qk", h, i)},
                        {"circuit": "ov", "side": "source", "index": i, "head": h,
                         "singular_value": float(s_ov[j, i]), "vector": v_ov[j, :, i],
                         "vocab": "embedding", "pair": ("ov", h, i)},
                        {"circuit": "ov", "side": "output", "index": i, "head": h,
                         "singular_value": float(s_ov[j, i]), "vector": u_ov[j, :, i],
                         "vocab": "unembedding", "pair": ("ov", h, i)},
                    ]
            for spec, d in zip(specs, _map_directions(specs, vocab, baselines, top_k,
                                                       tokenizer)):
                mapped.setdefault((spec["head"], spec["circuit"]), []).append(d)
        for j, (h, g) in enumerate(zip(hs, kv)):
            circuits = {}
            for key, s in (("qk", s_qk[j]), ("ov", s_ov[j])):
                s = s.cpu().numpy()
                metrics = singular_metrics(s, max_rank=a.head_dim, n=a.d_model)
                metrics.update(_alpha(s) if fit else
                               {"alpha": math.nan, "alpha_ks": math.nan, "alpha_n_tail": 0,
                                "fit_message": "not fitted (fit=False)"})
                circuits[key] = CircuitSpectrum(s, metrics, tuple(mapped.get((h, key), ())))
            name = f"{a.attention}.heads.{h}"
            entries[name] = HeadSpectra(name, a.block, a.block_name, h, g, circuits["qk"],
                                        circuits["ov"])
        s_v = torch.linalg.svdvals(a.v.double()).cpu().numpy()
        v_metrics = singular_metrics(s_v, max_rank=min(a.v.shape), n=max(a.v.shape))
        meta = {"block": a.block, "attention": a.attention, "n_heads": a.n_heads,
                "n_kv_heads": a.n_kv_heads, "head_dim": a.head_dim, "d_model": a.d_model}
        for key in ("rank", "rank_fraction", "effective_rank", "stable_rank", "entropy",
                    "entropy_normalized"):
            meta[f"v_{key}"] = v_metrics[key]
        meta["v_entropy_sv"] = (math.log(v_metrics["effective_rank"])
                                if v_metrics["effective_rank"] > 0 else math.nan)
        layer_meta[a.block_name] = meta

    settings = {
        "layers": None if chosen is None else list(chosen),
        "heads": None if head_list is None else list(head_list),
        "directions": directions if map_tokens else 0, "top_k": top_k, "n_random": n_random,
        "seed": seed, "fit": fit, "unembedding": unembedding,
        "model": type(model).__name__,
    }
    return QKOVSpectra(entries, layers=layer_meta, embedding=embedding,
                       baselines={k: v.as_dict() for k, v in baselines.items()},
                       settings=settings)
