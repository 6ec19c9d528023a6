"""What the circuit analyses share: per-head attention weights, vocabulary matrices, token
mapping with a random-direction baseline, and spectral metrics of a list of singular values.

Private to :mod:`specmetrics.circuits`; the public functions live in ``qk_ov``, ``congruence``,
``variance`` and ``mp``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .._validation import fail, is_integer, check_int
from ..exceptions import UnsupportedModelError
from ..models import find_blocks, module_type, weight_out_in

__all__ = ["AttentionWeights", "attention_weights", "vocab_matrices", "token_strings",
           "RandomBaseline", "VocabScan", "random_baseline", "scan_vocab", "singular_metrics",
           "product_svd", "check_model", "check_layers", "check_tokenizer", "RANK_EPS"]

#: Relative tolerance unit of the numerical rank: weights are stored in float32 or lower, so
#: singular values below ``s_max * max(shape) * eps(float32)`` are rounding noise.
RANK_EPS = float(np.finfo(np.float32).eps)

# fused q/k/v projections whose row layout is known, by config ``model_type``
_QKV_THIRDS = ("gpt2",)  # rows: [all q heads | all k heads | all v heads]
_QKV_PER_HEAD = ("gpt_neox", "bloom")  # rows: head 0 [q | k | v], head 1 [q | k | v], ...


# ----------------------------------------------------------------------------------------------
# boundary checks shared by the public functions


def check_model(model: Any, func: str) -> nn.Module:
    from .._validation import check_not_meta

    if not isinstance(model, nn.Module):
        raise fail("model", func, "a torch.nn.Module (a Hugging Face model)",
                   type(model).__name__)
    check_not_meta(model, name="model", func=func)
    return model


def check_layers(layers: Any, n_blocks: int, func: str, name: str = "layers"
                 ) -> Optional[tuple[int, ...]]:
    """``None`` (every block), one block index or a non-empty sequence of distinct indices in
    ``[0, n_blocks)``; returned sorted."""
    if layers is None:
        return None
    requirement = f"None, or block indices in [0, {n_blocks}) (an integer or a sequence)"
    if is_integer(layers):
        layers = (layers,)
    if isinstance(layers, (str, bytes)) or not isinstance(
            layers, (Sequence, set, frozenset, range, np.ndarray)) or \
            (isinstance(layers, np.ndarray) and layers.ndim != 1):
        raise fail(name, func, requirement, layers)
    items = list(layers)
    if not items or not all(is_integer(i) and 0 <= int(i) < n_blocks for i in items) \
            or len(set(int(i) for i in items)) != len(items):
        raise fail(name, func, requirement + ", distinct and non-empty", layers)
    return tuple(sorted(int(i) for i in items))


def check_tokenizer(tokenizer: Any, func: str, *, required: bool = False) -> Any:
    if tokenizer is None:
        if required:
            raise fail("tokenizer", func, "a Hugging Face tokenizer", None)
        return None
    if not (hasattr(tokenizer, "convert_ids_to_tokens") or hasattr(tokenizer, "decode")):
        raise fail("tokenizer", func, "None or a Hugging Face tokenizer (with "
                   "convert_ids_to_tokens or decode)", type(tokenizer).__name__)
    return tokenizer


# ----------------------------------------------------------------------------------------------
# attention weights per head


@dataclass(frozen=True)
class AttentionWeights:
    """The attention projections of one block, as (out, in) matrices, split by head.

    ``q`` is (n_heads * head_dim, d_model), ``k`` and ``v`` are (n_kv_heads * head_dim, d_model),
    ``o`` is (d_model, n_heads * head_dim): detached *views* of the model's weights in their own
    dtype (no copy; convert per block where needed). Query head ``h`` reads key/value head
    ``h // (n_heads // n_kv_heads)`` (transformers' ``repeat_kv``).
    """

    block: int
    block_name: str
    attention: str  # qualified name of the module holding the query projection
    modules: dict  # type -> qualified module name ("q", "k", "v", "o"; or "qkv", "o")
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_model: int
    q: torch.Tensor = field(repr=False)
    k: torch.Tensor = field(repr=False)
    v: torch.Tensor = field(repr=False)
    o: torch.Tensor = field(repr=False)

    @property
    def group(self) -> int:
        return self.n_heads // self.n_kv_heads

    def kv_head(self, head: int) -> int:
        return head // self.group

    def q_head(self, h: int) -> torch.Tensor:
        return self.q[h * self.head_dim:(h + 1) * self.head_dim]

    def k_head(self, g: int) -> torch.Tensor:
        return self.k[g * self.head_dim:(g + 1) * self.head_dim]

    def v_head(self, g: int) -> torch.Tensor:
        return self.v[g * self.head_dim:(g + 1) * self.head_dim]

    def o_head(self, h: int) -> torch.Tensor:
        return self.o[:, h * self.head_dim:(h + 1) * self.head_dim]

    def v_repeated(self) -> torch.Tensor:
        """W_V with every KV head repeated for its query heads: (n_heads * head_dim, d_model)."""
        if self.group == 1:
            return self.v
        v = self.v.reshape(self.n_kv_heads, 1, self.head_dim, self.d_model)
        return v.expand(-1, self.group, -1, -1).reshape(self.n_heads * self.head_dim,
                                                        self.d_model)


def _config(model: nn.Module):
    config = getattr(model, "config", None)
    if config is None:
        return None
    if getattr(config, "num_attention_heads", None) is None and \
            getattr(config, "text_config", None) is not None:
        return config.text_config
    return config


def _positive_attr(config, name: str):
    value = getattr(config, name, None) if config is not None else None
    if is_integer(value) and int(value) > 0:
        return int(value)
    return None


def attention_weights(model: nn.Module, *, func: str) -> list[AttentionWeights]:
    """The attention weights of every block, split by head (see :class:`AttentionWeights`).

    Head counts come from the Hugging Face config: ``num_attention_heads`` (``n_head`` on GPT-2
    through its attribute map), ``num_key_value_heads`` (default: ``num_attention_heads``) and
    ``head_dim`` (default: query rows / heads). Module types come from
    :func:`specmetrics.models.module_type`. Fused ``qkv`` projections are split for GPT-2
    (``[q | k | v]``) and GPT-NeoX / BLOOM (per head ``[q_h | k_h | v_h]``).

    Raises
    ------
    UnsupportedModelError
        No head counts in the config, a block without q/k/v/o, shapes that disagree with the
        config, or a fused projection of an unknown layout.
    """
    layout = find_blocks(model, func=func)
    config = _config(model)
    n_heads = _positive_attr(config, "num_attention_heads")
    if n_heads is None:
        raise UnsupportedModelError(
            f"{func}: {type(model).__name__} has no config.num_attention_heads; the head split of "
            "the attention projections is read from the Hugging Face config")
    n_kv_cfg = _positive_attr(config, "num_key_value_heads")
    head_dim_cfg = _positive_attr(config, "head_dim")
    model_type = getattr(config, "model_type", None)
    out: list[AttentionWeights] = []
    for index, block_name in enumerate(layout.names):
        found: dict[str, str] = {}
        for name in layout.modules_of(index):
            mtype = module_type(name)
            if mtype in ("q", "k", "v", "o", "qkv"):
                if mtype in found:
                    raise UnsupportedModelError(
                        f"{func}: block {block_name!r} has two {mtype!r} projections "
                        f"({found[mtype]!r}, {name!r}); one self-attention per block is "
                        "supported")
                found[mtype] = name
        mods = {t: model.get_submodule(n) for t, n in found.items()}
        if "o" not in found or not ({"q", "k", "v"} <= set(found) or "qkv" in found):
            raise UnsupportedModelError(
                f"{func}: block {block_name!r} has no complete set of attention projections "
                f"(found {sorted(found)}); q, k, v (or a fused qkv) and o are needed")
        o = weight_out_in(mods["o"])
        d_model = int(o.shape[0])
        if "qkv" in found and not {"q", "k", "v"} <= set(found):
            qkv = weight_out_in(mods["qkv"])
            head_dim = head_dim_cfg or int(o.shape[1]) // n_heads
            n_kv = n_kv_cfg or n_heads
            if model_type in _QKV_THIRDS and qkv.shape[0] == 3 * n_heads * head_dim:
                q, k, v = qkv.split(n_heads * head_dim, dim=0)
            elif model_type in _QKV_PER_HEAD and qkv.shape[0] == 3 * n_heads * head_dim \
                    and n_kv == n_heads:
                per = qkv.reshape(n_heads, 3, head_dim, qkv.shape[1])
                q, k, v = (per[:, i].reshape(n_heads * head_dim, -1) for i in range(3))
            else:
                raise UnsupportedModelError(
                    f"{func}: the fused projection {found['qkv']!r} of a {model_type!r} model has "
                    "no known q/k/v row layout (supported: GPT-2 and GPT-NeoX / BLOOM)")
            attention = found["qkv"].rpartition(".")[0]
        else:
            q = weight_out_in(mods["q"])
            k = weight_out_in(mods["k"])
            v = weight_out_in(mods["v"])
            attention = found["q"].rpartition(".")[0]
            head_dim = head_dim_cfg or int(q.shape[0]) // n_heads
            n_kv = n_kv_cfg or (int(k.shape[0]) // head_dim if head_dim else n_heads)
        problems = []
        if q.shape != (n_heads * head_dim, d_model):
            problems.append(f"q is {tuple(q.shape)}, expected ({n_heads} heads x {head_dim}, "
                            f"{d_model})")
        if k.shape != (n_kv * head_dim, d_model) or v.shape != k.shape:
            problems.append(f"k/v are {tuple(k.shape)}/{tuple(v.shape)}, expected ({n_kv} KV "
                            f"heads x {head_dim}, {d_model})")
        if o.shape[1] != n_heads * head_dim:
            problems.append(f"o is {tuple(o.shape)}, expected ({d_model}, {n_heads * head_dim})")
        if n_heads % n_kv:
            problems.append(f"{n_heads} query heads are not a multiple of {n_kv} KV heads")
        if problems:
            raise UnsupportedModelError(f"{func}: the attention weights of block {block_name!r} "
                                        "do not match the config: " + "; ".join(problems))
        modules = {t: found[t] for t in ("q", "k", "v", "qkv", "o") if t in found}
        out.append(AttentionWeights(index, block_name, attention, modules, n_heads, n_kv,
                                    head_dim, d_model, q.detach(), k.detach(), v.detach(),
                                    o.detach()))
    return out


# ----------------------------------------------------------------------------------------------
# vocabulary


def vocab_matrices(model: nn.Module, d_model: int, *, func: str
                   ) -> tuple[torch.Tensor, torch.Tensor, str]:
    """``(W_E, W_U, unembedding)``: the token embedding (V, d) and the unembedding (V, d) as
    float32; the unembedding is the output embedding (``lm_head``) where the model has one,
    else the token embedding (encoders); ``unembedding`` says which: ``"lm_head"``, ``"tied"``
    (an output embedding sharing the token embedding's storage; the same tensor is returned
    twice) or ``"embedding"`` (no output embedding)."""
    get_in = getattr(model, "get_input_embeddings", None)
    emb = get_in() if callable(get_in) else None
    weight = getattr(emb, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2:
        raise UnsupportedModelError(f"{func}: {type(model).__name__} has no token embedding "
                                    "(get_input_embeddings())")
    if int(weight.shape[1]) != d_model:
        raise UnsupportedModelError(
            f"{func}: the token embedding of {type(model).__name__} has width "
            f"{int(weight.shape[1])}, not the residual width {d_model} (a projected embedding, "
            "as in some OPT models, is not supported)")
    w_e = weight.detach().float()
    get_out = getattr(model, "get_output_embeddings", None)
    head = get_out() if callable(get_out) else None
    w_u, which = w_e, "embedding"
    head_weight = getattr(head, "weight", None)
    if isinstance(head_weight, torch.Tensor) and head_weight.dim() == 2 \
            and tuple(head_weight.shape) == tuple(weight.shape):
        if head_weight is weight or head_weight.data_ptr() == weight.data_ptr():
            which = "tied"
        else:
            w_u, which = head_weight.detach().float(), "lm_head"
    return w_e, w_u, which


def token_strings(tokenizer: Any, ids: Sequence[int]) -> list[str]:
    """Readable tokens for ids: ``convert_ids_to_tokens`` (or ``decode``) of the tokenizer;
    ``"#<id>"`` without one."""
    ids = [int(i) for i in ids]
    if tokenizer is None:
        return [f"#{i}" for i in ids]
    convert = getattr(tokenizer, "convert_ids_to_tokens", None)
    if callable(convert):
        out = convert(ids)
        return [f"#{i}" if t is None else str(t) for i, t in zip(ids, out)]
    return [str(tokenizer.decode([i])) for i in ids]


@dataclass(frozen=True)
class RandomBaseline:
    """Token-alignment statistics of random unit directions against a vocabulary matrix ``M``.

    For ``n`` random directions ``r`` (Gaussian, normalised): ``t(r)``, the mean of the ``k``
    largest entries of ``M r``, has mean ``mean`` and standard deviation ``sd``; the *peak*
    ``t(r) / rms(M r)`` has mean ``peak_mean`` and standard deviation ``peak_sd``. A vector
    ``w`` scores

    - ``ratio = t(w) / (||w|| mean)`` and ``z = (t(w) - ||w|| mean) / (||w|| sd)``: its largest
      dot products against those of random directions of the same norm;
    - ``peak = t(w) / rms(M w)``: how far its top tokens stand out of its own score
      distribution, invariant to any rescaling of ``M w`` (a direction that only has a large
      norm under ``M``, such as a top singular vector of ``M`` itself, has a large ratio but no
      larger peak).
    """

    mean: float
    sd: float
    peak_mean: float
    peak_sd: float
    top_k: int
    n: int

    def as_dict(self) -> dict:
        return {"mean": self.mean, "sd": self.sd, "peak_mean": self.peak_mean,
                "peak_sd": self.peak_sd, "top_k": self.top_k, "n": self.n}


@dataclass(frozen=True)
class VocabScan:
    """What :func:`scan_vocab` returns (every tensor on the CPU).

    Attributes
    ----------
    values, ids : torch.Tensor, shape (n, k)
        The ``k`` largest scores of each vector and their token ids, descending.
    rms : torch.Tensor, shape (n,), float64
        Root mean square of all ``V`` scores of each vector.
    greater : torch.Tensor of int64, shape (n,), or None
        With a ``reference``: scores above it.
    low_values, low_ids : torch.Tensor, shape (n, k), or None
        With ``lowest=True``: the ``k`` smallest scores, ascending.
    """

    values: torch.Tensor
    ids: torch.Tensor
    rms: torch.Tensor
    greater: Optional[torch.Tensor] = None
    low_values: Optional[torch.Tensor] = None
    low_ids: Optional[torch.Tensor] = None

    @property
    def top_mean(self) -> torch.Tensor:
        """Mean of the ``k`` largest scores, float64, shape (n,)."""
        return self.values.double().mean(dim=1)

    @property
    def peak(self) -> torch.Tensor:
        """``top_mean / rms``, float64, shape (n,) (NaN for an all-zero score vector)."""
        rms = self.rms
        return torch.where(rms > 0, self.top_mean / rms.clamp_min(1e-300),
                           torch.full_like(rms, math.nan))


def random_baseline(matrix: torch.Tensor, top_k: int, n: int, seed: int) -> RandomBaseline:
    gen = torch.Generator().manual_seed(seed)
    r = torch.randn(n, matrix.shape[1], generator=gen, dtype=torch.float32)
    r = (r / r.norm(dim=1, keepdim=True)).to(matrix.device)
    scan = scan_vocab(matrix, r, top_k)
    t, peak = scan.top_mean, scan.peak
    sd = float(t.std(unbiased=True)) if n > 1 else math.nan
    peak_sd = float(peak.std(unbiased=True)) if n > 1 else math.nan
    return RandomBaseline(float(t.mean()), sd, float(peak.mean()), peak_sd, top_k, n)


def scan_vocab(matrix: torch.Tensor, vectors: torch.Tensor, k: int,
               reference: Optional[torch.Tensor] = None, *, lowest: bool = False
               ) -> VocabScan:
    """The ``k`` largest (and smallest) scores of ``matrix @ vectors[i]`` over the vocabulary.

    The vocabulary is scanned in chunks (about 8M scores at a time), so no (V, n) matrix is
    formed; the products run where ``matrix`` is.

    Parameters
    ----------
    matrix : torch.Tensor, shape (V, d)
    vectors : torch.Tensor, shape (n, d)
    k : int
    reference : torch.Tensor, shape (n,), optional
        When given, also count per vector how many scores exceed ``reference[i]`` by more than
        rounding (``1e-5 * ||vectors[i]|| * max_t ||matrix[t]||``): the rank of a score
        computed separately, such as a token's own.
    lowest : bool, default False
        Also keep the ``k`` smallest scores.

    Returns
    -------
    VocabScan
    """
    vocab = int(matrix.shape[0])
    n = int(vectors.shape[0])
    k = min(k, vocab)
    chunk = max(256, (1 << 23) // max(1, n))
    vectors = vectors.to(device=matrix.device, dtype=matrix.dtype)
    best = [None, None]
    worst = [None, None]
    sumsq = torch.zeros(n, dtype=torch.float64, device=matrix.device)
    greater = None
    if reference is not None:
        greater = torch.zeros(n, dtype=torch.long, device=matrix.device)
        tol = 1e-5 * vectors.norm(dim=1) * matrix.norm(dim=1).max()
        reference = reference.to(device=matrix.device, dtype=matrix.dtype) + tol

    def merge(acc, v, i, largest):
        if acc[0] is None:
            acc[0], acc[1] = v, i
            return
        cat_v = torch.cat([acc[0], v], dim=1)
        cat_i = torch.cat([acc[1], i], dim=1)
        top_v, pos = torch.topk(cat_v, min(k, cat_v.shape[1]), dim=1, largest=largest)
        acc[0], acc[1] = top_v, torch.gather(cat_i, 1, pos)

    for start in range(0, vocab, chunk):
        scores = matrix[start:start + chunk] @ vectors.T  # (c, n)
        kk = min(k, scores.shape[0])
        v, i = torch.topk(scores, kk, dim=0)
        merge(best, v.T, (i + start).T, True)
        if lowest:
            v, i = torch.topk(scores, kk, dim=0, largest=False)
            merge(worst, v.T, (i + start).T, False)
        if reference is not None:
            greater += (scores > reference[None, :]).sum(dim=0)
        sumsq += scores.square().sum(dim=0, dtype=torch.float64)
    return VocabScan(
        best[0].cpu(), best[1].cpu(), torch.sqrt(sumsq / vocab).cpu(),
        None if greater is None else greater.cpu(),
        worst[0].cpu() if lowest else None, worst[1].cpu() if lowest else None)


# ----------------------------------------------------------------------------------------------
# spectra of products and their metrics


def product_svd(a: torch.Tensor, b: torch.Tensor, *, vectors: bool = False):
    """Singular values (and vectors) of ``a @ b`` from its thin factors, without forming it.

    Parameters
    ----------
    a : torch.Tensor, shape (..., m, r)
    b : torch.Tensor, shape (..., r, n)
        ``r`` small (a head dimension); batched over leading dimensions.
    vectors : bool
        Also return the leading singular vectors.

    Returns
    -------
    s : torch.Tensor, shape (..., r), descending, float64
    u : torch.Tensor, shape (..., m, r) (only with ``vectors``)
    v : torch.Tensor, shape (..., n, r) (only with ``vectors``)

    Notes
    -----
    ``a = Q_a R_a`` and ``b^T = Q_b R_b`` (thin QR), so ``a b = Q_a (R_a R_b^T) Q_b^T``: the
    singular values of the product are those of the r x r core, and its singular vectors are
    ``Q_a U`` and ``Q_b V``. Cost O((m + n) r^2) instead of O(m n r).
    """
    a = a.to(torch.float64)
    b = b.to(torch.float64)
    qa, ra = torch.linalg.qr(a)
    qb, rb = torch.linalg.qr(b.transpose(-1, -2))
    core = ra @ rb.transpose(-1, -2)
    if not vectors:
        return torch.linalg.svdvals(core)
    uc, s, vch = torch.linalg.svd(core)
    return s, qa @ uc, qb @ vch.transpose(-1, -2)


def singular_metrics(s: np.ndarray, *, max_rank: int, n: int) -> dict[str, Any]:
    """Spectral metrics of one list of singular values.

    Parameters
    ----------
    s : ndarray, shape (r,)
        Singular values (any order, non-negative).
    max_rank : int
        The largest rank the matrix can have (a head dimension; ``min(shape)`` of a matrix).
    n : int
        Largest side of the matrix (enters the rank tolerance).

    Returns
    -------
    dict
        ``rank`` (#(s > s_max n eps32)), ``rank_fraction`` (rank / max_rank),
        ``effective_rank`` (exp of the entropy of p = s / sum s; Roy & Vetterli 2007),
        ``stable_rank`` (sum s^2 / s_max^2), ``entropy`` (-sum p ln p in nats, p = s^2 / sum s^2:
        the ESD), ``entropy_normalized`` (entropy / ln max_rank), ``sv_max``, ``frobenius``.
    """
    s = np.sort(np.abs(np.asarray(s, dtype=np.float64)))[::-1]
    keys = ("rank", "rank_fraction", "effective_rank", "stable_rank", "entropy",
            "entropy_normalized", "sv_max", "frobenius")
    if s.size == 0 or not np.all(np.isfinite(s)) or s[0] <= 0:
        out = dict.fromkeys(keys, math.nan)
        out["rank"] = 0 if s.size and np.all(np.isfinite(s)) else math.nan
        return out
    smax = float(s[0])
    rank = int(np.count_nonzero(s > smax * max(n, s.size) * RANK_EPS))
    lam = s * s
    p_lam = lam[lam > 0] / lam.sum()
    entropy = float(-np.sum(p_lam * np.log(p_lam)))
    p_s = s[s > 0] / s.sum()
    h_s = float(-np.sum(p_s * np.log(p_s)))
    return {
        "rank": rank,
        "rank_fraction": rank / max_rank,
        "effective_rank": math.exp(h_s),
        "stable_rank": float(lam.sum() / lam[0]),
        "entropy": entropy,
        "entropy_normalized": entropy / math.log(max_rank) if max_rank > 1 else math.nan,
        "sv_max": smax,
        "frobenius": math.sqrt(float(lam.sum())),
    }


def positive_int(value: Any, name: str, func: str, minimum: int = 1) -> int:
    return check_int(value, name=name, func=func, minimum=minimum)
