"""Result objects of the circuit analyses (all read-only; the keyed ones derive from
:class:`~specmetrics._results.KeyedResult`).

==========================  ====================================  ==========================
result                      keyed by                              made by
==========================  ====================================  ==========================
:class:`QKOVSpectra`        ``<attention module>.heads.<h>``      :func:`qk_ov_spectra`
:class:`TokenCongruence`    ``<module>`` (MLP input/output) or    :func:`token_congruence`
                            ``<attention module>.ov``
:class:`OutputVariance`     block name (``model.layers.3``)       :func:`output_variance`
:class:`MPDistanceReport`   module name                           :func:`mp_distances`
:class:`MPDistance`         (one matrix, not keyed)               :func:`mp_distance`
==========================  ====================================  ==========================

Every keyed result has ``.to_frame()``, ``.to_json()`` / ``.from_json()`` (a lossless round trip:
``Result.from_json(r.to_json()) == r``), ``.plot(ax=None)`` and read-only ``.settings``.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Optional

import numpy as np

from .._results import KeyedResult, freeze, nan_if_none

__all__ = ["Direction", "CircuitSpectrum", "HeadSpectra", "QKOVSpectra", "Unit",
           "CongruenceEntry", "TokenCongruence", "BlockVariance", "OutputVariance",
           "MPDistance", "MPDistanceReport"]


# ----------------------------------------------------------------------------------------------
# equality that treats NaN as equal to NaN and compares arrays by value


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if not (isinstance(a, np.ndarray) and isinstance(b, np.ndarray)):
            return False
        if a.dtype.kind in "fc" or b.dtype.kind in "fc":
            return a.shape == b.shape and bool(np.array_equal(a, b, equal_nan=True))
        return a.shape == b.shape and bool(np.array_equal(a, b))
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        if type(a) is not type(b):
            return False
        return all(_same(getattr(a, f.name), getattr(b, f.name))
                   for f in dataclasses.fields(a) if f.compare)
    if isinstance(a, Mapping):
        return isinstance(b, Mapping) and list(a) == list(b) and \
            all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and \
            all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _eq(self, other):
    if type(self) is not type(other):
        return NotImplemented
    return _same(self, other)


def _readonly_array(values, dtype=np.float64) -> np.ndarray:
    arr = np.array([math.nan if v is None else v for v in values] if isinstance(values, list)
                   else values, dtype=dtype)
    return freeze(arr)


def _floats(d: Mapping) -> dict:
    return {k: (math.nan if v is None else v) for k, v in d.items()}


# ----------------------------------------------------------------------------------------------
# QK / OV spectra


@dataclasses.dataclass(frozen=True, eq=False)
class Direction:
    """One singular direction mapped to tokens.

    Attributes
    ----------
    circuit : str
        ``"embedding"``, ``"qk"`` or ``"ov"``.
    side : str
        ``"embedding"`` (right singular vector of W_E); ``"query"`` / ``"key"`` (left / right
        singular vector of W_Q^T W_K, read through W_E); ``"source"`` / ``"output"`` (right / left
        singular vector of W_O W_V, read through W_E / written through the unembedding).
    index : int
        Rank of the singular value (0: the largest).
    singular_value : float
    token_ids, tokens, scores : tuple
        The ``top_k`` tokens with the largest scores ``M x`` (``M`` the vocabulary matrix, ``x``
        the unit direction), descending.
    negative_token_ids, negative_tokens : tuple
        The ``top_k`` tokens with the most negative scores (the other end of the direction).
    ratio, z : float
        Mean of the top-k scores over that of random unit directions (``ratio``), and its
        distance from the random mean in random standard deviations (``z``); see
        :class:`~specmetrics.circuits.TokenCongruence` for the baseline.
    peak : float
        Mean of the top-k scores over the RMS of all the direction's scores (scale-free).
    """

    circuit: str
    side: str
    index: int
    singular_value: float
    token_ids: tuple
    tokens: tuple
    scores: tuple
    negative_token_ids: tuple
    negative_tokens: tuple
    ratio: float
    z: float
    peak: float = math.nan

    __eq__ = _eq
    __hash__ = None

    def as_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v, tuple) else v)
                for f in dataclasses.fields(self) for v in (getattr(self, f.name),)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Direction":
        return cls(d["circuit"], d["side"], int(d["index"]), nan_if_none(d["singular_value"]),
                   tuple(int(i) for i in d["token_ids"]), tuple(d["tokens"]),
                   tuple(nan_if_none(v) for v in d["scores"]),
                   tuple(int(i) for i in d["negative_token_ids"]), tuple(d["negative_tokens"]),
                   nan_if_none(d["ratio"]), nan_if_none(d["z"]), nan_if_none(d.get("peak")))


@dataclasses.dataclass(frozen=True, eq=False)
class CircuitSpectrum:
    """The spectrum of one head's QK (``W_Q^T W_K``) or OV (``W_O W_V``) product.

    Attributes
    ----------
    singular_values : ndarray, shape (head_dim,)
        Descending, float64, read-only.
    metrics : Mapping
        ``rank, rank_fraction, effective_rank, stable_rank, entropy, entropy_normalized,
        sv_max, frobenius, alpha, alpha_ks, alpha_n_tail, fit_message`` (see
        :func:`~specmetrics.circuits.qk_ov_spectra`).
    directions : tuple of Direction
        The leading singular directions mapped to tokens (empty without a tokenizer or with
        ``directions=0``).
    """

    singular_values: np.ndarray
    metrics: Mapping
    directions: tuple = ()

    __eq__ = _eq
    __hash__ = None

    def __post_init__(self):
        object.__setattr__(self, "singular_values", _readonly_array(self.singular_values))
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        object.__setattr__(self, "directions", tuple(self.directions))

    def _payload(self) -> dict:
        return {"singular_values": self.singular_values.tolist(), "metrics": dict(self.metrics),
                "directions": [d.as_dict() for d in self.directions]}

    @classmethod
    def _from(cls, d: Mapping) -> "CircuitSpectrum":
        return cls(_readonly_array(list(d["singular_values"])), _floats(d["metrics"]),
                   tuple(Direction.from_dict(x) for x in d["directions"]))


@dataclasses.dataclass(frozen=True, eq=False)
class HeadSpectra:
    """The QK and OV spectra of one query head.

    Attributes
    ----------
    name : str
        ``<attention module>.heads.<head>``.
    block : int
    block_name : str
    head : int
        Query head.
    kv_head : int
        The key/value head it reads (``head // (n_heads // n_kv_heads)``).
    qk, ov : CircuitSpectrum
    """

    name: str
    block: int
    block_name: str
    head: int
    kv_head: int
    qk: CircuitSpectrum
    ov: CircuitSpectrum

    __eq__ = _eq
    __hash__ = None

    def _payload(self) -> dict:
        return {"name": self.name, "block": self.block, "block_name": self.block_name,
                "head": self.head, "kv_head": self.kv_head, "qk": self.qk._payload(),
                "ov": self.ov._payload()}

    @classmethod
    def _from(cls, d: Mapping) -> "HeadSpectra":
        return cls(d["name"], int(d["block"]), d["block_name"], int(d["head"]),
                   int(d["kv_head"]), CircuitSpectrum._from(d["qk"]),
                   CircuitSpectrum._from(d["ov"]))


#: Columns of the per-head metrics, in table order.
CIRCUIT_METRICS = ("rank", "rank_fraction", "effective_rank", "stable_rank", "entropy",
                   "entropy_normalized", "sv_max", "frobenius", "alpha", "alpha_ks",
                   "alpha_n_tail")


class QKOVSpectra(KeyedResult):
    """Read-only mapping ``<attention module>.heads.<h> -> HeadSpectra`` in model order.

    Attributes
    ----------
    layers : Mapping[str, Mapping]
        Per block name: the layer-level metrics (``v_*``: the whole value projection W_V;
        ``n_heads``, ``n_kv_heads``, ``head_dim``), see :meth:`summary`.
    embedding : tuple of Direction
        The leading right singular directions of the token embedding, mapped to tokens.
    baselines : Mapping[str, Mapping]
        The random-direction baselines of the vocabulary matrices (``"embedding"``,
        ``"unembedding"``).
    """

    def __init__(self, heads: Mapping, *, layers: Mapping, embedding=(),
                 baselines: Optional[Mapping] = None, settings: Optional[Mapping] = None):
        self._init_result(heads, settings)
        object.__setattr__(self, "layers", MappingProxyType(
            {k: MappingProxyType(dict(v)) for k, v in layers.items()}))
        object.__setattr__(self, "embedding", tuple(embedding))
        object.__setattr__(self, "baselines", MappingProxyType(
            {k: MappingProxyType(dict(v)) for k, v in (baselines or {}).items()}))

    def __eq__(self, other):
        if not isinstance(other, QKOVSpectra):
            return NotImplemented
        return (_same(dict(self), dict(other)) and _same(self.layers, other.layers)
                and _same(self.embedding, other.embedding)
                and _same(self.baselines, other.baselines)
                and _same(dict(self.settings), dict(other.settings)))

    __hash__ = None

    def __repr__(self) -> str:
        return f"QKOVSpectra({len(self)} heads in {len(self.layers)} layers)"

    def to_frame(self):
        """One row per head, indexed by name: ``block, head, kv_head``, then ``qk_<metric>``
        and ``ov_<metric>`` for every metric of :data:`CIRCUIT_METRICS`, and, where directions
        were mapped to tokens, the tokens of the leading direction of each side
        (``qk_query_tokens, qk_key_tokens, ov_source_tokens, ov_output_tokens``, joined by
        ``" | "``).

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        rows = {}
        for name, h in self.items():
            row = {"block": h.block, "head": h.head, "kv_head": h.kv_head}
            for prefix, c in (("qk", h.qk), ("ov", h.ov)):
                for key in CIRCUIT_METRICS:
                    row[f"{prefix}_{key}"] = c.metrics.get(key, math.nan)
            for prefix, c in (("qk", h.qk), ("ov", h.ov)):
                for d in c.directions:
                    if d.index == 0:
                        row[f"{prefix}_{d.side}_tokens"] = " | ".join(d.tokens)
            rows[name] = row
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "name"
        return frame

    def summary(self):
        """One row per layer: the means over its heads of the QK and OV metrics
        (``qk_<metric>_mean``, ``ov_<metric>_mean``) and the metrics of the whole value
        projection (``v_entropy``, ``v_entropy_sv``, ``v_rank``, ``v_rank_fraction``,
        ``v_stable_rank``, ``v_effective_rank``): the columns behind the readings of the
        user's "V Entropy", "V Rank" and "QK Entropy" in the documentation.

        Returns
        -------
        pandas.DataFrame
            Indexed by block name.
        """
        import pandas as pd

        frame = self.to_frame()
        numeric = [c for c in frame.columns if c.startswith(("qk_", "ov_"))
                   and not c.endswith("_tokens")]
        rows = {}
        for block_name, meta in self.layers.items():
            row = dict(meta)
            part = frame[[self[n].block_name == block_name for n in frame.index]]
            for c in numeric:
                row[f"{c}_mean"] = float(pd.to_numeric(part[c]).mean()) if len(part) else math.nan
            rows[block_name] = row
        out = pd.DataFrame.from_dict(rows, orient="index")
        out.index.name = "block_name"
        return out

    def directions_frame(self):
        """Every mapped direction, one row each: ``name`` (head, or ``"embedding"``),
        ``circuit, side, index, singular_value, ratio, z, peak, tokens, negative_tokens``.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        rows = []
        for d in self.embedding:
            rows.append(("embedding", d))
        for name, h in self.items():
            for d in h.qk.directions + h.ov.directions:
                rows.append((name, d))
        return pd.DataFrame([{
            "name": name, "circuit": d.circuit, "side": d.side, "index": d.index,
            "singular_value": d.singular_value, "ratio": d.ratio, "z": d.z, "peak": d.peak,
            "tokens": " | ".join(d.tokens), "negative_tokens": " | ".join(d.negative_tokens),
        } for name, d in rows], columns=["name", "circuit", "side", "index", "singular_value",
                                         "ratio", "z", "peak", "tokens", "negative_tokens"])

    def plot(self, ax=None, *, metric: str = "effective_rank"):
        """A metric of the QK and OV products by layer (every head a dot, the layer mean a
        line).

        Parameters
        ----------
        ax : matplotlib Axes, optional
        metric : str, default "effective_rank"
            One of :data:`CIRCUIT_METRICS`.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.circuits import plot_qk_ov

        return plot_qk_ov(self, ax=ax, metric=metric)

    def _to_payload(self) -> Any:
        return {"heads": [h._payload() for h in self.values()],
                "layers": {k: dict(v) for k, v in self.layers.items()},
                "embedding": [d.as_dict() for d in self.embedding],
                "baselines": {k: dict(v) for k, v in self.baselines.items()}}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "QKOVSpectra":
        heads = {d["name"]: HeadSpectra._from(d) for d in data["heads"]}
        layers = {k: _floats(v) for k, v in data["layers"].items()}
        return cls(heads, layers=layers,
                   embedding=tuple(Direction.from_dict(d) for d in data["embedding"]),
                   baselines={k: _floats(v) for k, v in data["baselines"].items()},
                   settings=settings)


# ----------------------------------------------------------------------------------------------
# token congruence


@dataclasses.dataclass(frozen=True, eq=False)
class Unit:
    """One neuron (or, for ``kind="ov"``, one source token) and its top tokens.

    Attributes
    ----------
    index : int
        Neuron index in its module (``kind="ov"``: the source token id).
    label : str
        ``"neuron <i>"``, or the source token.
    ratio, z, peak : float
        See :class:`CongruenceEntry`.
    token_ids, tokens, scores : tuple
        The ``top_k`` tokens with the largest dot products, descending.
    """

    index: int
    label: str
    ratio: float
    z: float
    peak: float
    token_ids: tuple
    tokens: tuple
    scores: tuple

    __eq__ = _eq
    __hash__ = None

    def as_dict(self) -> dict:
        return {"index": self.index, "label": self.label, "ratio": self.ratio, "z": self.z,
                "peak": self.peak, "token_ids": list(self.token_ids),
                "tokens": list(self.tokens),
                "scores": list(self.scores)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Unit":
        return cls(int(d["index"]), d["label"], nan_if_none(d["ratio"]), nan_if_none(d["z"]),
                   nan_if_none(d["peak"]), tuple(int(i) for i in d["token_ids"]),
                   tuple(d["tokens"]),
                   tuple(nan_if_none(v) for v in d["scores"]))


@dataclasses.dataclass(frozen=True, eq=False)
class CongruenceEntry:
    """Token congruence of one set of units (the neurons of one MLP matrix, or the source
    tokens of one layer's OV circuit).

    Attributes
    ----------
    name : str
        The key: the module name (``model.layers.3.mlp.up_proj``) or ``<attention>.ov``.
    block : int
    kind : str
        ``"mlp_in"`` (rows of gate/up: what a neuron reads), ``"mlp_out"`` (columns of down:
        what it writes) or ``"ov"`` (``W_U W_O W_V e_t`` for source tokens ``t``).
    vocab : str
        The vocabulary matrix the units were compared with: ``"embedding"`` (W_E) or
        ``"unembedding"`` (W_U; W_E where the model has no output embedding).
    unit_ids : ndarray of int64, shape (n_units,)
        Neuron indices, or the sampled source token ids.
    ratios : ndarray, shape (n_units,)
        Per unit ``w``: ``topk_mean(M w) / (||w|| baseline.mean)``; about 1 for a direction
        unrelated to the vocabulary.
    z : ndarray, shape (n_units,)
        ``(topk_mean(M w) - ||w|| baseline.mean) / (||w|| baseline.sd)``.
    peaks : ndarray, shape (n_units,)
        ``topk_mean(M w) / rms(M w)``: scale-free; compare with ``baseline.peak_mean``.
    self_rank : ndarray of int64 or None
        ``kind="ov"`` only: the rank of each source token among its own output scores (0:
        the circuit maps the token to itself first).
    top_units : tuple of Unit
        The units with the largest ratios, with their top tokens.
    """

    name: str
    block: int
    kind: str
    vocab: str
    unit_ids: np.ndarray
    ratios: np.ndarray
    z: np.ndarray
    peaks: np.ndarray
    self_rank: Optional[np.ndarray]
    top_units: tuple

    __eq__ = _eq
    __hash__ = None

    def __post_init__(self):
        object.__setattr__(self, "unit_ids", _readonly_array(self.unit_ids, np.int64))
        object.__setattr__(self, "ratios", _readonly_array(self.ratios))
        object.__setattr__(self, "z", _readonly_array(self.z))
        object.__setattr__(self, "peaks", _readonly_array(self.peaks))
        if self.self_rank is not None:
            object.__setattr__(self, "self_rank", _readonly_array(self.self_rank, np.int64))
        object.__setattr__(self, "top_units", tuple(self.top_units))

    def summary(self, top_k: int) -> dict:
        r = self.ratios[np.isfinite(self.ratios)]
        z = self.z[np.isfinite(self.z)]
        peaks = self.peaks[np.isfinite(self.peaks)]
        row = {
            "block": self.block, "kind": self.kind, "vocab": self.vocab,
            "n_units": int(self.ratios.size),
            "ratio_mean": float(r.mean()) if r.size else math.nan,
            "ratio_median": float(np.median(r)) if r.size else math.nan,
            "ratio_max": float(r.max()) if r.size else math.nan,
            "z_mean": float(z.mean()) if z.size else math.nan,
            "frac_z_above_3": float(np.mean(z > 3)) if z.size else math.nan,
            "peak_mean": float(peaks.mean()) if peaks.size else math.nan,
            "self_top_k_fraction": (float(np.mean(self.self_rank < top_k))
                                    if self.self_rank is not None and self.self_rank.size
                                    else math.nan),
        }
        if self.top_units:
            best = self.top_units[0]
            row.update(best_unit=best.label, best_ratio=best.ratio,
                       best_tokens=" | ".join(best.tokens))
        else:
            row.update(best_unit="", best_ratio=math.nan, best_tokens="")
        return row

    def _payload(self) -> dict:
        return {"name": self.name, "block": self.block, "kind": self.kind, "vocab": self.vocab,
                "unit_ids": self.unit_ids.tolist(), "ratios": self.ratios.tolist(),
                "z": self.z.tolist(), "peaks": self.peaks.tolist(),
                "self_rank": None if self.self_rank is None else self.self_rank.tolist(),
                "top_units": [u.as_dict() for u in self.top_units]}

    @classmethod
    def _from(cls, d: Mapping) -> "CongruenceEntry":
        sr = d.get("self_rank")
        return cls(d["name"], int(d["block"]), d["kind"], d["vocab"],
                   _readonly_array(list(d["unit_ids"]), np.int64),
                   _readonly_array(list(d["ratios"])), _readonly_array(list(d["z"])),
                   _readonly_array(list(d["peaks"])),
                   None if sr is None else _readonly_array(list(sr), np.int64),
                   tuple(Unit.from_dict(u) for u in d["top_units"]))


class TokenCongruence(KeyedResult):
    """Read-only mapping ``name -> CongruenceEntry`` in model order.

    Attributes
    ----------
    baselines : Mapping[str, Mapping]
        Per vocabulary matrix (``"embedding"``, ``"unembedding"``): the random-direction
        baseline ``{"mean", "sd", "peak_mean", "peak_sd", "top_k", "n"}``: over ``n`` random unit
        directions ``r``, the mean and standard deviation of the mean of the ``top_k`` largest
        entries of ``M r``, and of that mean over the RMS of ``M r``.
    """

    def __init__(self, entries: Mapping, *, baselines: Mapping,
                 settings: Optional[Mapping] = None):
        self._init_result(entries, settings)
        object.__setattr__(self, "baselines", MappingProxyType(
            {k: MappingProxyType(dict(v)) for k, v in baselines.items()}))

    def __eq__(self, other):
        if not isinstance(other, TokenCongruence):
            return NotImplemented
        return (_same(dict(self), dict(other)) and _same(self.baselines, other.baselines)
                and _same(dict(self.settings), dict(other.settings)))

    __hash__ = None

    def __repr__(self) -> str:
        return f"TokenCongruence({len(self)} entries)"

    def to_frame(self):
        """One row per entry: ``block, kind, vocab, n_units, ratio_mean, ratio_median,
        ratio_max, z_mean, frac_z_above_3, peak_mean, self_top_k_fraction`` (``ov`` only: the
        fraction of source tokens among their own top-k outputs), ``best_unit, best_ratio,
        best_tokens``.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        top_k = int(self.settings.get("top_k", 10))
        frame = pd.DataFrame.from_dict({n: e.summary(top_k) for n, e in self.items()},
                                       orient="index")
        frame.index.name = "name"
        return frame

    def units_frame(self):
        """The listed units of every entry, one row each: ``name, kind, block, unit, index,
        ratio, z, peak, tokens``.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        return pd.DataFrame([{"name": n, "kind": e.kind, "block": e.block, "unit": u.label,
                              "index": u.index, "ratio": u.ratio, "z": u.z, "peak": u.peak,
                              "tokens": " | ".join(u.tokens)}
                             for n, e in self.items() for u in e.top_units],
                            columns=["name", "kind", "block", "unit", "index", "ratio", "z",
                                     "peak", "tokens"])

    def plot(self, ax=None, *, metric: str = "ratio_mean"):
        """A column of :meth:`to_frame` by layer, one line per kind.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.circuits import plot_congruence

        return plot_congruence(self, ax=ax, metric=metric)

    def _to_payload(self) -> Any:
        return {"entries": [e._payload() for e in self.values()],
                "baselines": {k: dict(v) for k, v in self.baselines.items()}}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "TokenCongruence":
        entries = {d["name"]: CongruenceEntry._from(d) for d in data["entries"]}
        return cls(entries, baselines={k: _floats(v) for k, v in data["baselines"].items()},
                   settings=settings)


# ----------------------------------------------------------------------------------------------
# output variance


@dataclasses.dataclass(frozen=True, eq=False)
class BlockVariance:
    """Output variances of one block on real text.

    Every variance is ``trace(Cov) / d``: the variance over tokens of each of the ``d``
    coordinates, averaged over coordinates (population variance).

    Attributes
    ----------
    name : str
        Block name.
    block : int
    var_attention : float
        Of the attention output (the output of the ``o`` projection).
    var_mlp : float
        Of the MLP output (the output of the ``down`` projection).
    var_sum : float
        Of their sum per token (the block's residual update in a pre-norm block).
    var_output : float
        Of the block's output hidden states.
    pruned : Mapping[str, float]
        Per projection set (``"q+o"``, ``"q+k+v+o"``): the variance of the change in the block's
        output when those projections are pruned, on the same inputs.
    pruned_modules : Mapping[str, tuple of str]
        The modules pruned for each set.
    n_tokens : int
    """

    name: str
    block: int
    var_attention: float
    var_mlp: float
    var_sum: float
    var_output: float
    pruned: Mapping
    pruned_modules: Mapping
    n_tokens: int

    __eq__ = _eq
    __hash__ = None

    def __post_init__(self):
        object.__setattr__(self, "pruned", MappingProxyType(dict(self.pruned)))
        object.__setattr__(self, "pruned_modules", MappingProxyType(
            {k: tuple(v) for k, v in self.pruned_modules.items()}))

    def _payload(self) -> dict:
        return {"name": self.name, "block": self.block, "var_attention": self.var_attention,
                "var_mlp": self.var_mlp, "var_sum": self.var_sum, "var_output": self.var_output,
                "pruned": dict(self.pruned),
                "pruned_modules": {k: list(v) for k, v in self.pruned_modules.items()},
                "n_tokens": self.n_tokens}

    @classmethod
    def _from(cls, d: Mapping) -> "BlockVariance":
        return cls(d["name"], int(d["block"]), nan_if_none(d["var_attention"]),
                   nan_if_none(d["var_mlp"]), nan_if_none(d["var_sum"]),
                   nan_if_none(d["var_output"]),
                   {k: nan_if_none(v) for k, v in d["pruned"].items()},
                   {k: tuple(v) for k, v in d["pruned_modules"].items()}, int(d["n_tokens"]))


class OutputVariance(KeyedResult):
    """Read-only mapping ``block name -> BlockVariance`` in model order (the seed-003 table)."""

    def __init__(self, blocks: Mapping, *, settings: Optional[Mapping] = None):
        self._init_result(blocks, settings)

    def __eq__(self, other):
        if not isinstance(other, OutputVariance):
            return NotImplemented
        return _same(dict(self), dict(other)) and _same(dict(self.settings),
                                                        dict(other.settings))

    __hash__ = None

    def __repr__(self) -> str:
        return f"OutputVariance({len(self)} blocks)"

    def to_frame(self):
        """One row per block: ``block, var_attention, var_mlp, var_sum, var_output`` and
        ``var_delta_<set>`` per pruned projection set (``var_delta_q+o``,
        ``var_delta_q+k+v+o``), ``n_tokens``.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        rows = {}
        for name, b in self.items():
            row = {"block": b.block, "var_attention": b.var_attention, "var_mlp": b.var_mlp,
                   "var_sum": b.var_sum, "var_output": b.var_output}
            for label, value in b.pruned.items():
                row[f"var_delta_{label}"] = value
            row["n_tokens"] = b.n_tokens
            rows[name] = row
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "name"
        return frame

    def plot(self, ax=None, *, log: bool = True):
        """The variances by layer, one line per column (log scale by default).

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.circuits import plot_output_variance

        return plot_output_variance(self, ax=ax, log=log)

    def _to_payload(self) -> Any:
        return {"blocks": [b._payload() for b in self.values()]}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "OutputVariance":
        return cls({d["name"]: BlockVariance._from(d) for d in data["blocks"]},
                   settings=settings)


# ----------------------------------------------------------------------------------------------
# Marchenko-Pastur distance


@dataclasses.dataclass(frozen=True, eq=False)
class MPDistance:
    """Distance of one matrix's ESD from the Marchenko-Pastur law fitted to it.

    Attributes
    ----------
    distance : float
        Kolmogorov-Smirnov distance (in [0, 1]) between the empirical distribution of the
        eigenvalues of ``W^T W / N`` and the MP law with ratio ``y`` and the fitted scale
        ``sigma2`` (see :func:`~specmetrics.circuits.mp_distance`).
    fit : str
        How ``sigma2`` was fitted: ``"ks"`` (minimises the distance) or ``"moment"`` (the mean
        eigenvalue).
    sigma2 : float
        The fitted element variance, in units of ``W``'s entries squared.
    y : float
        ``M / N`` (``M = min(shape)``, ``N = max(shape)``).
    n, m : int
        ``N`` and ``M``.
    bulk_max : float
        The fitted MP bulk edge in eigenvalue units of ``W^T W``: ``N sigma2 (1 + sqrt(y))^2``.
    n_spikes : int
        Eigenvalues above ``bulk_max``.
    spike_fraction : float
        ``n_spikes / M``.
    null_mean, null_sd : float
        Mean and standard deviation of the distance of ``null_draws`` Gaussian matrices of the
        same shape (NaN without draws): the sampling error of the distance.
    z : float
        ``(distance - null_mean) / null_sd``.
    rand_distance : float
        WeightWatcher's ``rand_distance`` (Jensen-Shannon distance between the ESD and that of
        the element-shuffled matrix); NaN for eigenvalue input or ``randomize=False``.
    name : str
        Module name (in a report), else ``""``.
    module_type : str or None
    block : int or None
    """

    distance: float
    fit: str
    sigma2: float
    y: float
    n: int
    m: int
    bulk_max: float
    n_spikes: int
    spike_fraction: float
    null_mean: float = math.nan
    null_sd: float = math.nan
    z: float = math.nan
    rand_distance: float = math.nan
    name: str = ""
    module_type: Optional[str] = None
    block: Optional[int] = None

    __eq__ = _eq
    __hash__ = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> "MPDistance":
        fields = {f.name: f for f in dataclasses.fields(cls)}
        out = {}
        for k, v in d.items():
            if k not in fields:
                continue
            if k in ("n", "m", "n_spikes"):
                out[k] = int(v)
            elif k in ("fit", "name", "module_type"):
                out[k] = v
            elif k == "block":
                out[k] = None if v is None else int(v)
            else:
                out[k] = nan_if_none(v)
        return cls(**out)


class MPDistanceReport(KeyedResult):
    """Read-only mapping ``module name -> MPDistance`` in model order."""

    def __init__(self, entries: Mapping, *, settings: Optional[Mapping] = None):
        self._init_result(entries, settings)

    def __eq__(self, other):
        if not isinstance(other, MPDistanceReport):
            return NotImplemented
        return _same(dict(self), dict(other)) and _same(dict(self.settings),
                                                        dict(other.settings))

    __hash__ = None

    def __repr__(self) -> str:
        return f"MPDistanceReport({len(self)} matrices)"

    def to_frame(self):
        """One row per matrix: ``block, module_type, distance, rand_distance, null_mean,
        null_sd, z, sigma2, y, n, m, bulk_max, n_spikes, spike_fraction, fit``.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        cols = ("block", "module_type", "distance", "rand_distance", "null_mean", "null_sd",
                "z", "sigma2", "y", "n", "m", "bulk_max", "n_spikes", "spike_fraction", "fit")
        frame = pd.DataFrame.from_dict(
            {k: {c: getattr(v, c) for c in cols} for k, v in self.items()}, orient="index")
        frame.index.name = "name"
        return frame

    def plot(self, ax=None, *, metric: str = "distance"):
        """``distance`` (or another column) by layer, one line per module type.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.circuits import plot_mp_distance

        return plot_mp_distance(self, ax=ax, metric=metric)

    def _to_payload(self) -> Any:
        return {"entries": [v.as_dict() for v in self.values()]}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "MPDistanceReport":
        return cls({d["name"]: MPDistance.from_dict(d) for d in data["entries"]},
                   settings=settings)
