"""The lookahead question (DejaVu): is layer ``l`` a good predictor of layer ``l + 1``?

Two measures, both on the same token sample of the layer-sequential capture
(:func:`~specmetrics.activations.capture.run_sites`):

:func:`residual_similarity`
    Cosine similarity between the residual stream after block ``l`` and after block ``l + k``
    (block outputs), per token, averaged over the sampled tokens, for ``k = 1 .. max_k``.
    DejaVu's argument for lookahead predictors is that this is high (the residual stream
    changes slowly); the seed-000 notes found it low before layer ~20 of a 32-layer model.

:func:`lookahead_predictability`
    How well the residual stream *entering* block ``l`` predicts which channels are active in
    block ``l + 1``'s MLP. The predictor is parameter-free ("skip one block"): block ``l + 1``'s
    own MLP front end (its pre-MLP norm, then, for ``sites="silu_gate"``, its gate projection and
    activation) applied to block ``l``'s input residual ``r_l`` instead of to its real MLP input.
    The truth is the active set in the real forward pass. For each sampled token the active set
    is the top ``top_frac`` channels by ``|x|`` (or, with ``target``, the channels a magnitude
    threshold at sparsity ``target`` keeps, the threshold of the predictor's values set for the
    same sparsity); recall = ``|true ∩ predicted| / |true|``, precision =
    ``|true ∩ predicted| / |predicted|`` (equal for top-k). A second predictor, from block
    ``l + 1``'s *own* input residual (skipping only its attention), bounds what any lookahead
    from the residual stream can do with this front end. A random predictor's recall is the
    active fraction.

    DejaVu trains a small MLP per layer for this; the parameter-free predictor measures how much
    of the future active set is already decided by the residual stream, which is what the
    similarity argument claims.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

import torch
from torch import nn

from .._validation import (check_choice, check_interval, check_positive_int, fail,
                           renamed_keywords)
from .._results import KeyedResult
from ..calibration.text import model_tokenizer_text
from ..models.blocks import find_blocks
from .capture import _SiteAccumulator, run_sites, sample_token_index
from .sites import find_sites, mlp_gate_and_activation

__all__ = ["mean_cosine", "topk_mask", "threshold_mask", "mask_recall_precision",
           "SimilarityResult", "residual_similarity", "LookaheadLayer", "LookaheadResult",
           "lookahead_predictability"]

logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------
# pure functions

def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over rows of the cosine similarity of ``a[i]`` and ``b[i]`` (float64).

    Rows where either vector is zero count as cosine 0 (1 when both are zero).

    Parameters
    ----------
    a, b : torch.Tensor, shape (n, d)
    """
    a64, b64 = a.double(), b.double()
    na, nb = a64.norm(dim=1), b64.norm(dim=1)
    dot = (a64 * b64).sum(dim=1)
    cos = torch.where((na > 0) & (nb > 0), dot / (na * nb).clamp_min(1e-300),
                      ((na == 0) & (nb == 0)).double())
    return float(cos.mean())


def topk_mask(x: torch.Tensor, k: int) -> torch.Tensor:
    """Boolean mask of the ``k`` largest ``|x|`` of each row (ties broken by index).

    Parameters
    ----------
    x : torch.Tensor, shape (n, d)
    k : int, 0 <= k <= d
    """
    mask = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
    if k > 0:
        mask.scatter_(1, x.abs().topk(k, dim=1).indices, True)
    return mask


def threshold_mask(x: torch.Tensor, t: float) -> torch.Tensor:
    """Boolean mask of the kept (active) values: ``|x| > t``."""
    return x.abs() > t


def mask_recall_precision(truth: torch.Tensor, predicted: torch.Tensor) -> tuple[float, float]:
    """Pooled recall ``|T ∩ P| / |T|`` and precision ``|T ∩ P| / |P|`` of boolean masks.

    NaN where the denominator is zero.
    """
    hit = float((truth & predicted).sum())
    n_true, n_pred = float(truth.sum()), float(predicted.sum())
    return (hit / n_true if n_true else math.nan, hit / n_pred if n_pred else math.nan)


# ----------------------------------------------------------------------------------------------
# results

@dataclass(frozen=True, eq=False)
class SimilarityResult(KeyedResult):
    """Mean cosine similarity of the residual stream between blocks ``l`` and ``l + k``.

    A read-only mapping ``{block name: {k: mean cosine}}`` in model order.

    Attributes
    ----------
    blocks : tuple of str
        Block names, in order.
    cosine : mapping of str to mapping of int to float
        ``cosine[block_l][k]``: mean over sampled tokens of ``cos(h_l, h_{l+k})``, ``h`` the
        block outputs; only for ``l + k`` inside the model.
    max_k : int
    n_tokens : int
        Tokens the means are taken over.
    settings : mapping
    """

    blocks: tuple[str, ...]
    cosine: Mapping[str, Mapping[int, float]]
    max_k: int
    n_tokens: int
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "blocks", tuple(self.blocks))
        object.__setattr__(self, "cosine", MappingProxyType(
            {b: MappingProxyType({int(k): float(c) for k, c in v.items()})
             for b, v in self.cosine.items()}))
        self._init_result({b: self.cosine.get(b, MappingProxyType({})) for b in self.blocks},
                          self.settings)

    def __repr__(self) -> str:
        return f"SimilarityResult(n_blocks={len(self.blocks)}, max_k={self.max_k})"

    def _to_payload(self) -> Any:
        return {"blocks": list(self.blocks), "max_k": self.max_k, "n_tokens": self.n_tokens,
                "cosine": {b: {str(k): c for k, c in v.items()} for b, v in self.cosine.items()}}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "SimilarityResult":
        cosine = {b: {int(k): (math.nan if c is None else c) for k, c in v.items()}
                  for b, v in data["cosine"].items()}
        return cls(blocks=tuple(data["blocks"]), cosine=cosine, max_k=data["max_k"],
                   n_tokens=data["n_tokens"], settings=dict(settings))

    def by_k(self) -> dict[int, float]:
        """Mean over blocks of the similarity at each distance ``k``."""
        out = {}
        for k in range(1, self.max_k + 1):
            values = [v[k] for v in self.cosine.values() if k in v]
            out[k] = sum(values) / len(values) if values else math.nan
        return out

    def to_frame(self):
        """Indexed by block name: ``layer`` and one column ``k{k}`` per distance (NaN beyond
        the last block)."""
        import pandas as pd

        rows = []
        for index, block in enumerate(self.blocks):
            row = {"block": block, "layer": index}
            for k in range(1, self.max_k + 1):
                row[f"k{k}"] = self.cosine.get(block, {}).get(k, math.nan)
            rows.append(row)
        return pd.DataFrame(rows).set_index("block")

    def plot(self, ax=None):
        """Similarity by layer, one line per ``k``. Returns the matplotlib Axes."""
        from ..plotting.axes import new_axes

        ax = new_axes(ax)
        frame = self.to_frame()
        for k in range(1, self.max_k + 1):
            ax.plot(frame["layer"], frame[f"k{k}"], marker="o", label=f"k = {k}")
        ax.set_xlabel("layer l")
        ax.set_ylabel("mean cos(h_l, h_{l+k})")
        ax.set_ylim(min(0.0, float(frame.filter(like="k").min().min())), 1.02)
        ax.legend()
        return ax


@dataclass(frozen=True)
class LookaheadLayer:
    """Predictability of one block's MLP active set.

    Attributes
    ----------
    block : str
        The predicted block ``l + 1``.
    layer : int
        Its index.
    source_block : str
        Block ``l``, whose input residual the predictor reads.
    recall, precision : float
        Of the lookahead predictor (from block ``l``'s input).
    recall_own_input, precision_own_input : float
        Of the same front end applied to block ``l + 1``'s own input residual.
    active_fraction : float
        Fraction of channels in the true active sets (``top_frac``, or the kept fraction at the
        threshold); a random predictor's recall.
    """

    block: str
    layer: int
    source_block: str
    recall: float
    precision: float
    recall_own_input: float
    precision_own_input: float
    active_fraction: float


@dataclass(frozen=True, eq=False)
class LookaheadResult(KeyedResult):
    """Lookahead recall keyed by predicted block name (``res["model.layers.3"]`` = recall).

    Attributes
    ----------
    layers : mapping of str to LookaheadLayer
    kind : str
        ``"silu_gate"`` or ``"gate_up"``.
    top_frac, target : float or None
        How active sets were defined (one of them is set).
    predictor : str
        Description of the predictor.
    n_tokens : int
    settings : mapping
    """

    layers: Mapping[str, LookaheadLayer]
    kind: str
    top_frac: Optional[float]
    target: Optional[float]
    predictor: str
    n_tokens: int
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "layers", MappingProxyType(dict(self.layers)))
        self._init_result({b: v.recall for b, v in self.layers.items()}, self.settings)

    def _to_payload(self) -> Any:
        from dataclasses import asdict

        return {"layers": [asdict(v) for v in self.layers.values()], "kind": self.kind,
                "top_frac": self.top_frac, "target": self.target, "predictor": self.predictor,
                "n_tokens": self.n_tokens}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "LookaheadResult":
        layers = {}
        for row in data["layers"]:
            row = {k: (math.nan if v is None else v) for k, v in row.items()}
            layers[row["block"]] = LookaheadLayer(**row)
        return cls(layers=layers, kind=data["kind"], top_frac=data["top_frac"],
                   target=data["target"], predictor=data["predictor"],
                   n_tokens=data["n_tokens"], settings=dict(settings))

    def __repr__(self) -> str:
        mode = f"top_frac={self.top_frac}" if self.top_frac is not None else \
            f"target={self.target}"
        return (f"LookaheadResult(kind={self.kind!r}, {mode}, n_layers={len(self)}, "
                f"mean_recall={self.mean_recall:.3f})")

    @property
    def mean_recall(self) -> float:
        values = [v.recall for v in self.layers.values()]
        return sum(values) / len(values) if values else math.nan

    def to_frame(self):
        """One row per predicted block (indexed by name) with every :class:`LookaheadLayer`
        field."""
        import pandas as pd
        from dataclasses import asdict

        return pd.DataFrame([asdict(v) for v in self.layers.values()]).set_index("block")

    def plot(self, ax=None):
        """Recall by predicted layer (lookahead, own input, chance). Returns the Axes."""
        from ..plotting.axes import new_axes

        ax = new_axes(ax)
        frame = self.to_frame()
        ax.plot(frame["layer"], frame["recall"], "-o", label="from block l's input (lookahead)")
        ax.plot(frame["layer"], frame["recall_own_input"], "--s",
                label="from block l+1's own input")
        ax.plot(frame["layer"], frame["active_fraction"], ":", color="grey", label="chance")
        ax.set_xlabel("predicted layer l+1")
        ax.set_ylabel("recall of the active set")
        ax.set_ylim(0, 1.02)
        ax.legend()
        return ax


# ----------------------------------------------------------------------------------------------
# the measurements

def _sample_pass(model, calibration, *, kinds, tokenizer, nsamples, seqlen, seed, max_tokens,
                 device, progress, func, on_block=None):
    """Token samples of the requested site kinds (no histograms)."""
    from ..calibration.windows import calibration_set

    check_positive_int(max_tokens, name="max_tokens", func=func)
    sites = find_sites(model, sites=kinds, func=func)
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                             seqlen=seqlen, seed=seed, func=func)
    token_index = sample_token_index(calib.nsamples, calib.seqlen, max_tokens, seed)
    accs = {n: _SiteAccumulator(s, m=0, token_index=token_index,
                                seqlen=calib.seqlen, histogram=False) for n, s in sites.items()}
    run_sites(model, calib.input_ids, sites, {n: a.update for n, a in accs.items()},
              device=device, progress=progress, desc=func, func=func,
              on_block=None if on_block is None else (lambda step: on_block(step, token_index)))
    return sites, accs, token_index, calib


@model_tokenizer_text(old=("calibration",), new=("calibration",))
def residual_similarity(model: nn.Module, tokenizer, calibration, *, max_k: int = 4,
                        nsamples: int = 32, seqlen: Optional[int] = None, seed: int = 0,
                        max_tokens: int = 4096, device=None,
                        progress: bool = False) -> SimilarityResult:
    """Cosine similarity of the residual stream between blocks ``l`` and ``l + k``.

    Parameters
    ----------
    model : torch.nn.Module
        Left unchanged.
    calibration, tokenizer, nsamples, seqlen, seed
        Calibration windows, as for :func:`~specmetrics.activations.activation_stats`.
    max_k : int, default 4
        Largest block distance.
    max_tokens : int, default 4096
        Tokens sampled (uniformly, seeded) from the calibration windows; all of them when fewer.
    device, progress
        As for :func:`~specmetrics.activations.activation_stats`.

    Returns
    -------
    SimilarityResult
    """
    func = "residual_similarity"
    check_positive_int(max_k, name="max_k", func=func)
    sites, accs, token_index, calib = _sample_pass(
        model, calibration, kinds=("residual",), tokenizer=tokenizer, nsamples=nsamples,
        seqlen=seqlen, seed=seed, max_tokens=max_tokens, device=device, progress=progress,
        func=func)
    ordered = list(sites.values())
    blocks = tuple(s.block_name for s in ordered)
    cosine: dict[str, dict[int, float]] = {}
    for i, site in enumerate(ordered):
        row = {}
        for k in range(1, max_k + 1):
            if i + k < len(ordered):
                row[k] = mean_cosine(accs[site.name].sample, accs[ordered[i + k].name].sample)
        cosine[site.block_name] = row
    return SimilarityResult(blocks=blocks, cosine=cosine, max_k=max_k,
                            n_tokens=int(token_index.shape[0]),
                            settings={**calib.settings(), "max_tokens": max_tokens})


def _tracer(block: nn.Module, block_name: str, target: nn.Module, found: dict):
    """Hooks finding the submodule of ``block`` whose output is ``target``'s input (once)."""
    outputs: dict[str, Any] = {}
    handles = []
    state = {"done": False}

    def record(name):
        def hook(_module, _args, output):
            if not state["done"]:
                outputs.setdefault(name, output)
        return hook

    def check(_module, args):
        if state["done"]:
            return
        state["done"] = True
        x = args[0] if args else None
        for name, out in outputs.items():
            if out is x:
                found["norm"] = f"{block_name}.{name}" if name else block_name
                break
        outputs.clear()

    for name, module in block.named_modules():
        if module is not block:
            handles.append(module.register_forward_hook(record(name)))
    handles.append(target.register_forward_pre_hook(check))
    return handles


def _param_device_dtype(module: nn.Module, fallback: torch.Tensor):
    for p in module.parameters():
        return p.device, p.dtype
    return fallback.device, fallback.dtype


@torch.no_grad()
@model_tokenizer_text(old=("calibration",), new=("calibration",))
@renamed_keywords(kind="sites")
def lookahead_predictability(model: nn.Module, tokenizer, calibration, *,
                             sites: str = "silu_gate", top_frac: Optional[float] = 0.1,
                             target: Optional[float] = None, nsamples: int = 32,
                             seqlen: Optional[int] = None, seed: int = 0, max_tokens: int = 4096,
                             device=None, progress: bool = False) -> LookaheadResult:
    """How well block ``l``'s input residual predicts block ``l + 1``'s MLP active set.

    Parameters
    ----------
    model : torch.nn.Module
        Left unchanged.
    calibration, tokenizer, nsamples, seqlen, seed, max_tokens, device, progress
        As for :func:`residual_similarity`.
    sites : {"silu_gate", "gate_up"}, default "silu_gate"
        ``"silu_gate"``: channels of ``act(gate(x))`` (the MLP's intermediate activation, the
        CATS/DejaVu neurons); ``"gate_up"``: channels of the normalised MLP input (TEAL's gate/up
        input sparsity).
    top_frac : float or None, default 0.1
        Active set = the top ``ceil(top_frac · width)`` channels by ``|x|`` of each token.
    target : float or None
        Instead of ``top_frac``: active set = channels kept by a magnitude threshold at sparsity
        ``target`` (threshold fitted on the sampled true values; the predictor's threshold is
        fitted on its own values for the same sparsity).

    Returns
    -------
    LookaheadResult
        Keyed by the predicted block ``l + 1``, for ``l = 0 .. L - 2``.

    Notes
    -----
    The predictor for block ``l + 1`` is ``f_{l+1}(r_l)`` where ``r_l`` is the residual stream
    entering block ``l`` and ``f_{l+1}`` is block ``l + 1``'s pre-MLP norm (the module whose
    output feeds its gate/up projections, found by tracing one forward pass), followed for
    ``silu_gate`` by its gate projection and activation. Exact when blocks ``l`` and
    ``l + 1``'s attention leave the residual stream unchanged.
    """
    func = "lookahead_predictability"
    kind = check_choice(sites, ("silu_gate", "gate_up"), name="sites", func=func)
    if target is not None:
        target = check_interval(target, 0.0, 1.0, name="target", func=func)
        top_frac = None
    elif top_frac is None:
        raise fail("top_frac", func, "a float in (0, 1] when target is None", None)
    else:
        top_frac = check_interval(top_frac, 0.0, 1.0, name="top_frac", func=func,
                                  closed="right")
    layout = find_blocks(model, func=func)
    if len(layout) < 2:
        raise fail("model", func, "a model with at least two blocks", len(layout))
    gate_up_sites = find_sites(model, sites="gate_up", func=func)
    gate_up_module = {s.block: s.module for s in gate_up_sites.values()}
    residual_in: dict[int, torch.Tensor] = {}
    norms: dict[int, dict] = {}

    def on_block(step, token_index):
        residual_in[step.index] = step.inputs[token_index[:, 0].to(step.inputs.device),
                                              token_index[:, 1].to(step.inputs.device)
                                              ].to("cpu", torch.float32)
        if step.index not in gate_up_module:
            return []
        found = norms.setdefault(step.index, {})
        target_module = model.get_submodule(gate_up_module[step.index])
        return _tracer(step.block, step.name, target_module, found)

    sites, accs, token_index, calib = _sample_pass(
        model, calibration, kinds=(kind,), tokenizer=tokenizer, nsamples=nsamples,
        seqlen=seqlen, seed=seed, max_tokens=max_tokens, device=device, progress=progress,
        func=func, on_block=on_block)
    truth_of = {s.block: accs[n].sample for n, s in sites.items()}

    def front_end(index: int, r: torch.Tensor) -> torch.Tensor:
        norm_name = norms.get(index, {}).get("norm")
        if norm_name is None:
            raise RuntimeError(f"block {layout.names[index]!r}: could not find the module whose "
                               "output feeds the MLP (a functional norm?); lookahead needs it.")
        norm = model.get_submodule(norm_name)
        where, dtype = _param_device_dtype(norm, r)
        u = norm(r.to(where, dtype))
        if kind == "gate_up":
            return u.float().cpu()
        gate_name, act_name, _ = mlp_gate_and_activation(model, layout, index)
        if gate_name is None or act_name is None:
            raise RuntimeError(f"block {layout.names[index]!r}: no gate projection and activation "
                               "module found for kind='silu_gate'")
        gate = model.get_submodule(gate_name)
        where, dtype = _param_device_dtype(gate, u)
        g = gate(u.to(where, dtype))
        width = truth_of[index].shape[1]
        if g.shape[-1] != width:
            raise RuntimeError(f"block {layout.names[index]!r}: fused gate/up projections are not "
                               "supported by lookahead_predictability")
        return model.get_submodule(act_name)(g).float().cpu()

    def masks(values: torch.Tensor) -> torch.Tensor:
        if top_frac is not None:
            return topk_mask(values, math.ceil(top_frac * values.shape[1] - 1e-9))
        t = torch.kthvalue(values.abs().reshape(-1),
                           max(1, math.ceil(target * values.numel() - 1e-9))).values
        return threshold_mask(values, float(t))

    layers: dict[str, LookaheadLayer] = {}
    for index in range(1, len(layout)):
        if index not in truth_of or index - 1 not in residual_in:
            continue
        truth = masks(truth_of[index])
        rec, prec = mask_recall_precision(truth, masks(front_end(index, residual_in[index - 1])))
        rec_own, prec_own = mask_recall_precision(truth, masks(front_end(index,
                                                                         residual_in[index])))
        layers[layout.names[index]] = LookaheadLayer(
            block=layout.names[index], layer=index, source_block=layout.names[index - 1],
            recall=rec, precision=prec, recall_own_input=rec_own, precision_own_input=prec_own,
            active_fraction=float(truth.double().mean()))
    predictor = ("block l+1's pre-MLP norm" + (", gate projection and activation"
                                               if kind == "silu_gate" else "")
                 + " applied to the residual stream entering block l")
    return LookaheadResult(layers=layers, kind=kind, top_frac=top_frac, target=target,
                           predictor=predictor, n_tokens=int(token_index.shape[0]),
                           settings={**calib.settings(), "max_tokens": max_tokens})
