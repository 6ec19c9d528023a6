"""Streaming activation statistics: a float-bit histogram and a token sample per site.

How the activations are read
----------------------------
The same layer-sequential capture as pruning (:class:`~specmetrics.pruning.SequentialRunner`):
calibration windows go through the model one block at a time; while block ``l`` runs, forward
hooks on the modules named by its :class:`~specmetrics.activations.sites.Site` objects see every
sequence's tensor once and fold it into the site's statistics. Nothing of shape (tokens, width)
is kept beyond one sequence, so memory is bounded by the runner's two hidden-state buffers, one
histogram per site and the token sample.

What is kept per site
---------------------
- **Histogram of |x|**, separately for ``x > 0`` and ``x < 0``, over the whole float32 range.
  The cell of a value is read from its float32 bits: the exponent and the top ``m`` mantissa
  bits, so every octave ``[2**e, 2**(e+1))`` is cut into ``2**m`` equal cells (relative width
  at most ``2**-m``); ``bins`` sets the resolution the way a log-spaced histogram of ``bins``
  cells over 64 octaves would: ``bins=4096`` gives ``m = 6``, 64 cells per octave, cells at most
  1.6 % wide. Every value is counted (cast to float32); values with ``|x|`` below the smallest
  normal float32 (``2**-126``, about ``1.2e-38``) count as zeros; infinities and NaNs are
  counted apart and ignored. The largest magnitude of each sign is kept exactly.
- **Token sample**: ``reservoir`` token positions are drawn uniformly without replacement from
  all calibration tokens (``torch.randperm`` with a generator seeded by ``seed``) *before* the
  pass; every site keeps the full vector of each of those tokens, so row ``i`` of every site's
  :attr:`SiteStats.sample` is the same token (sites of one block can be chained, as TEAL's greedy
  search needs). Memory: ``reservoir * width * 4`` bytes per site (float32, on the CPU): 4096
  tokens × 11008 channels = 180 MB for one 7B ``silu_gate`` site, about 20 GB for all the sites
  of a 32-layer 7B model; pass a smaller ``reservoir`` (or ``0``: none) for large models.

Accuracy
--------
Quantiles and fractions interpolate the histogram's CDF linearly inside a cell, the top cell
clipped to the exact largest magnitude. A quantile estimate lies in the same cell as the exact
sample quantile, so its relative error is below ``64 / bins`` (1.6 % at ``bins=4096``). The error
of ``fraction_at_or_below(t)`` is at most the fraction of values in the cell holding ``t`` (under
0.5 point for a Gaussian at ``bins=4096``) and, for smooth distributions, second order in the
cell width: below 0.02 point in ``tests/activations/test_capture.py``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Iterator, Optional

import numpy as np
import torch
from torch import nn

from .._results import KeyedResult
from .._validation import check_interval, check_positive_int, fail
from ..calibration.text import model_tokenizer_text
from ..models.blocks import find_blocks
from ..calibration.runner import SequentialRunner, output_tensor
from .sites import SITE_KINDS, Site, find_sites, parse_kinds

__all__ = ["SiteStats", "ActivationStats", "activation_stats", "site_stats", "float_histogram",
           "split_histogram", "histogram_edges", "histogram_quantile", "histogram_cdf",
           "mantissa_bits", "sample_token_index", "run_sites"]

logger = logging.getLogger(__name__)

_EXP_CELLS = 256  # float32 exponent field values


# ----------------------------------------------------------------------------------------------
# pure functions: the histogram and reading it

def mantissa_bits(bins: int, *, func: str = "activation_stats") -> int:
    """``m`` for a resolution of ``bins`` cells per 64 octaves (``bins = 64 * 2**m``)."""
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 64 or bins > 64 << 16 \
            or bins & (bins - 1):
        raise fail("bins", func, "64 times a power of two, from 64 to 4194304 (cells per 64 "
                   "octaves)", bins)
    return int(math.log2(bins // 64))


def float_histogram(x: torch.Tensor, m: int) -> torch.Tensor:
    """Counts of the float32 values of ``x`` per (sign, exponent, top ``m`` mantissa bits) cell.

    Parameters
    ----------
    x : torch.Tensor
        Any shape and floating dtype (cast to float32).
    m : int
        Mantissa bits kept, 0 to 16.

    Returns
    -------
    torch.Tensor, shape (2, 256 * 2**m), int64, on the device of ``x``
        Row 0: ``x >= +0``, row 1: ``x <= -0``; column ``e * 2**m + j``: exponent field ``e`` and
        top mantissa bits ``j``. Column ``j < 2**m`` (``e = 0``) holds zeros and subnormals,
        ``e = 255`` infinities and NaNs.
    """
    bits = x.detach().to(torch.float32).contiguous().view(torch.int32).reshape(-1)
    index = (bits >> (23 - m)) & ((1 << (9 + m)) - 1)  # sign, exponent, top m mantissa bits
    if index.device.type != "cpu":
        index = index.long()  # int32 bincount is fastest on the CPU; int64 is safe everywhere
    counts = torch.bincount(index, minlength=1 << (9 + m))
    return counts.reshape(2, _EXP_CELLS << m)


def split_histogram(counts: np.ndarray, m: int) -> tuple[int, int, np.ndarray]:
    """Split one sign's row of :func:`float_histogram` into ``(zeros, non_finite, cells)``.

    ``cells`` are the counts of the normal finite magnitudes, exponent fields 1..254, whose
    edges are :func:`histogram_edges`.
    """
    per = 1 << m
    counts = np.asarray(counts, dtype=np.int64)
    return int(counts[:per].sum()), int(counts[255 * per:].sum()), counts[per:255 * per]


def histogram_edges(m: int) -> np.ndarray:
    """Edges of the normal float32 cells: ``2**(e-127) * (1 + j / 2**m)``, e = 1..254.

    Returns
    -------
    numpy.ndarray, shape (254 * 2**m + 1,), float64
        From ``2**-126`` to ``2**128``.
    """
    per = 1 << m
    cell = np.arange(254 * per + 1)
    exponent = cell // per + 1 - 127
    return np.exp2(exponent.astype(np.float64)) * (1.0 + (cell % per) / per)


def histogram_quantile(counts: np.ndarray, edges: np.ndarray, s: float, *,
                       vmax: float = math.inf) -> float:
    """The ``s``-quantile of positive values counted on cells, interpolated linearly in a cell.

    Parameters
    ----------
    counts : numpy.ndarray, shape (c,)
        Counts per cell.
    edges : numpy.ndarray, shape (c + 1,)
        Cell edges, increasing, positive.
    s : float
        In [0, 1].
    vmax : float
        Largest counted value; the cells are clipped to it.

    Returns
    -------
    float
        ``t`` with ``histogram_cdf(counts, edges, t) = s * counts.sum()``; ``0.0`` for ``s = 0``,
        NaN when nothing was counted.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n <= 0:
        return float("nan")
    rank = round(s * n, 9)  # as the exact thresholds: 0.3 * 10 is 3, not 3.0000000000000004
    if rank <= 0:
        return 0.0
    cum = np.cumsum(counts)
    cell = int(np.searchsorted(cum, rank * (1 - 1e-12), side="left"))
    cell = min(cell, len(counts) - 1)
    while counts[cell] == 0 and cell > 0:  # rounding at the top: back to a non-empty cell
        cell -= 1
    lower, upper = edges[cell], min(edges[cell + 1], vmax)
    frac = min(max((rank - (cum[cell] - counts[cell])) / counts[cell], 0.0), 1.0)
    return float(lower + (max(upper, lower) - lower) * frac)


def histogram_cdf(counts: np.ndarray, edges: np.ndarray, t: float, *,
                  vmax: float = math.inf) -> float:
    """How many counted values are ``<= t`` (interpolated, a float count).

    The inverse of :func:`histogram_quantile`: same cells, clipping and interpolation.
    """
    counts = np.asarray(counts, dtype=np.float64)
    n = counts.sum()
    if n <= 0 or t < edges[0]:
        return 0.0
    if t >= vmax:
        return float(n)
    cell = int(np.searchsorted(edges, t, side="right")) - 1
    if cell >= len(counts):
        return float(n)
    lower, upper = edges[cell], min(edges[cell + 1], vmax)
    frac = 1.0 if upper <= lower else (t - lower) / (upper - lower)
    return float(counts[:cell].sum() + counts[cell] * min(max(frac, 0.0), 1.0))


def _check_s(s, func: str) -> float:
    return check_interval(s, 0.0, 1.0, name="s", func=func, closed="both")


# ----------------------------------------------------------------------------------------------
# results

@dataclass(frozen=True, eq=False)
class SiteStats:
    """Statistics of one site's activations over all calibration tokens.

    Attributes
    ----------
    site : Site
    count : int
        Values counted (tokens × width), non-finite ones excluded.
    zeros : int
        Values with ``|x| < 2**-126`` (exact zeros and float32 subnormals).
    pos_counts, neg_counts : numpy.ndarray, shape (254 * 2**m,), int64
        Histogram of ``|x|`` for ``x > 0`` and ``x < 0`` on the cells of
        :func:`histogram_edges`.
    pos_max, neg_max : float
        Largest ``|x|`` of each sign (NaN when there is none).
    sum_abs : float
        Sum of ``|x|``.
    sample : torch.Tensor, shape (k, width), float32
        The full vectors of the sampled tokens (the same tokens, in the same order, for every
        site of one :class:`ActivationStats`), on the CPU.
    m : int
        Mantissa bits per cell (``bins = 64 * 2**m``).
    non_finite : int
        Infinities and NaNs seen (ignored).
    """

    site: Site
    count: int
    zeros: int
    pos_counts: np.ndarray = field(repr=False)
    neg_counts: np.ndarray = field(repr=False)
    pos_max: float
    neg_max: float
    sum_abs: float
    sample: torch.Tensor = field(repr=False)
    m: int = 6
    non_finite: int = 0

    @property
    def n_pos(self) -> int:
        return int(self.pos_counts.sum())

    @property
    def n_neg(self) -> int:
        return int(self.neg_counts.sum())

    @property
    def mean_abs(self) -> float:
        """Mean of ``|x|``."""
        return self.sum_abs / self.count if self.count else float("nan")

    @property
    def max_abs(self) -> float:
        return float(np.nanmax([self.pos_max, self.neg_max, 0.0]))

    def _edges(self) -> np.ndarray:
        return histogram_edges(self.m)

    def abs_quantile(self, s: float) -> float:
        """``t`` with ``P(|x| <= t) = s``: the magnitude threshold zeroing a fraction ``s``.

        ``0.0`` when ``s`` is at most the share of zeros.
        """
        s = _check_s(s, "SiteStats.abs_quantile")
        if self.count == 0:
            return float("nan")
        rank = round(s * self.count, 9)
        if rank <= self.zeros:
            return 0.0
        counts = self.pos_counts + self.neg_counts
        return histogram_quantile(counts, self._edges(), (rank - self.zeros) / counts.sum(),
                                  vmax=self.max_abs)

    def pos_quantile(self, s: float) -> float:
        """The ``s``-quantile of ``x`` given ``x > 0`` (NaN without positive values)."""
        s = _check_s(s, "SiteStats.pos_quantile")
        return histogram_quantile(self.pos_counts, self._edges(), s, vmax=self.pos_max)

    def neg_quantile(self, s: float) -> float:
        """The ``s``-quantile of ``|x|`` given ``x < 0`` (NaN without negative values)."""
        s = _check_s(s, "SiteStats.neg_quantile")
        return histogram_quantile(self.neg_counts, self._edges(), s, vmax=self.neg_max)

    def signed_quantile(self, q: float) -> float:
        """The ``q``-quantile of the signed values ``x``."""
        q = check_interval(q, 0.0, 1.0, name="q", func="SiteStats.signed_quantile",
                           closed="both")
        if self.count == 0:
            return float("nan")
        # the k-th smallest signed value, k = ceil(q n), as teal_signed_threshold defines it
        k = max(1, math.ceil(round(q * self.count, 9)))
        n_neg = self.n_neg
        if k <= n_neg:  # -(the (n_neg - k + 1)-th smallest magnitude of the negatives)
            return -histogram_quantile(self.neg_counts, self._edges(), (n_neg - k + 1) / n_neg,
                                       vmax=self.neg_max)
        if k <= n_neg + self.zeros or self.n_pos == 0:
            return 0.0
        return self.pos_quantile(min(1.0, (k - n_neg - self.zeros) / self.n_pos))

    def teal_quantile(self, s: float) -> float:
        """TEAL's threshold for sparsity ``s``: the signed ``(0.5 + s/2)``-quantile.

        Equals :meth:`abs_quantile` for symmetric, zero-centred values only; see
        :func:`~specmetrics.activations.thresholds.teal_signed_threshold`.
        """
        s = _check_s(s, "SiteStats.teal_quantile")
        return self.signed_quantile(0.5 + s / 2)

    def fraction_at_or_below(self, t: float) -> float:
        """``P(|x| <= t)``: the sparsity a magnitude threshold ``t`` gives on these values."""
        t = float(t)
        if self.count == 0:
            return float("nan")
        if t < 0:
            return 0.0
        counts = self.pos_counts + self.neg_counts
        below = histogram_cdf(counts, self._edges(), t, vmax=self.max_abs)
        return (self.zeros + below) / self.count


@dataclass(frozen=True, eq=False)
class ActivationStats(KeyedResult):
    """Activation statistics keyed by site name (``stats["model.layers.3.silu_gate"]``).

    A read-only mapping ``{site name: SiteStats}`` in model order.

    Attributes
    ----------
    sites : mapping of str to SiteStats
    token_index : torch.Tensor, shape (k, 2), int64
        ``(sequence, position)`` of each sampled token (row ``i`` of every ``sample``).
    settings : mapping
        How they were computed: ``nsamples``, ``seqlen``, ``seed``, ``bins``, ``reservoir`` and
        the calibration ``source``.
    """

    sites: Mapping[str, SiteStats]
    token_index: torch.Tensor = field(repr=False)
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "sites", MappingProxyType(dict(self.sites)))
        self._init_result(self.sites, self.settings)

    # -- JSON --------------------------------------------------------------------------------
    def to_json(self, path=None, *, indent: Optional[int] = 2, sample: bool = False) -> str:
        """Serialise to JSON (histograms sparse, as ``{cell: count}``); ``sample=True`` also
        writes the sampled token vectors (large: ``reservoir × width`` floats per site), which
        otherwise come back empty (shape ``(0, width)``) from :meth:`from_json`."""
        from .._validation import check_bool

        keep = check_bool(sample, name="sample", func="ActivationStats.to_json")
        return self._write_json(self._to_payload(keep), path, indent)

    def _to_payload(self, sample: bool = False) -> Any:
        from dataclasses import asdict

        def sparse(counts):
            nz = np.flatnonzero(counts)
            return {str(int(i)): int(counts[i]) for i in nz}

        return {"token_index": self.token_index.tolist(), "sites": [
            {"site": asdict(st.site), "count": st.count, "zeros": st.zeros,
             "pos_counts": sparse(st.pos_counts), "neg_counts": sparse(st.neg_counts),
             "size": int(st.pos_counts.size), "pos_max": st.pos_max, "neg_max": st.neg_max,
             "sum_abs": st.sum_abs, "m": st.m, "non_finite": st.non_finite,
             "sample": st.sample.tolist() if sample else None}
            for st in self.sites.values()]}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "ActivationStats":
        def dense(counts, size):
            out = np.zeros(size, dtype=np.int64)
            for i, c in counts.items():
                out[int(i)] = c
            return out

        sites = {}
        for e in data["sites"]:
            site = Site(**e["site"])
            sample = torch.tensor(e["sample"], dtype=torch.float32) if e["sample"] is not None \
                else torch.empty(0, site.width, dtype=torch.float32)
            nan = float("nan")
            sites[site.name] = SiteStats(
                site=site, count=e["count"], zeros=e["zeros"],
                pos_counts=dense(e["pos_counts"], e["size"]),
                neg_counts=dense(e["neg_counts"], e["size"]),
                pos_max=nan if e["pos_max"] is None else e["pos_max"],
                neg_max=nan if e["neg_max"] is None else e["neg_max"],
                sum_abs=e["sum_abs"], sample=sample, m=e["m"], non_finite=e["non_finite"])
        index = torch.tensor(data["token_index"], dtype=torch.long).reshape(-1, 2)
        return cls(sites, index, dict(settings))

    def __repr__(self) -> str:
        kinds = sorted({s.site.kind for s in self.sites.values()}, key=SITE_KINDS.index)
        return (f"ActivationStats(n_sites={len(self)}, kinds={kinds}, "
                f"n_tokens={self.settings.get('nsamples', 0) * self.settings.get('seqlen', 0)}, "
                f"sample={int(self.token_index.shape[0])})")

    def of_kind(self, kind: str) -> dict[str, SiteStats]:
        """The sites of one kind, in model order."""
        return {n: s for n, s in self.sites.items() if s.site.kind == kind}

    def to_frame(self, quantiles=(0.5,)):
        """One row per site, indexed by site name.

        Columns: ``kind``, ``block``, ``module``, ``hook``, ``width``, ``count``,
        ``zero_fraction``, ``pos_fraction``, ``mean_abs``, ``max_abs`` and, for each ``q`` in
        ``quantiles``, ``abs_q{q}``, ``pos_q{q}``, ``neg_q{q}`` and ``teal_q{q}`` (the thresholds
        for sparsity ``q`` by each definition).
        """
        import pandas as pd

        rows = []
        for name, st in self.sites.items():
            row = {"site": name, "kind": st.site.kind, "block": st.site.block,
                   "module": st.site.module, "hook": st.site.hook, "width": st.site.width,
                   "count": st.count,
                   "zero_fraction": st.zeros / st.count if st.count else math.nan,
                   "pos_fraction": st.n_pos / st.count if st.count else math.nan,
                   "mean_abs": st.mean_abs, "max_abs": st.max_abs}
            for q in quantiles:
                row[f"abs_q{q:g}"] = st.abs_quantile(q)
                row[f"pos_q{q:g}"] = st.pos_quantile(q)
                row[f"neg_q{q:g}"] = st.neg_quantile(q)
                row[f"teal_q{q:g}"] = st.teal_quantile(q)
            rows.append(row)
        return pd.DataFrame(rows).set_index("site")

    def plot(self, ax=None, *, s: float = 0.5, sites=None, kinds=None):
        """The ``|x|`` threshold for sparsity ``s`` by block, one line per site kind.

        Parameters
        ----------
        ax : matplotlib Axes, optional
        s : float, default 0.5
        sites : str or sequence of str, optional
            Site kinds to draw (default: all). ``kinds`` is its deprecated spelling.

        Returns
        -------
        matplotlib.axes.Axes
        """
        import warnings

        if ax is not None and not hasattr(ax, "plot"):  # the earlier plot(s, *, kinds, ax)
            warnings.warn("ActivationStats.plot(s) is now plot(ax=None, *, s=...)",
                          DeprecationWarning, stacklevel=2)
            ax, s = None, ax
        if kinds is not None:
            warnings.warn("ActivationStats.plot(kinds=...) is now plot(sites=...)",
                          DeprecationWarning, stacklevel=2)
            sites = kinds
        from ..plotting.axes import new_axes

        ax = new_axes(ax)
        chosen = SITE_KINDS if sites is None else parse_kinds(sites, func="ActivationStats.plot",
                                                                name="sites")
        for kind in chosen:
            sites = self.of_kind(kind)
            if not sites:
                continue
            blocks = [st.site.block for st in sites.values()]
            ax.plot(blocks, [st.abs_quantile(s) for st in sites.values()], marker="o",
                    label=kind)
        ax.set_xlabel("block")
        ax.set_ylabel(f"|x| threshold for sparsity {s:g}")
        ax.set_yscale("log")
        ax.legend()
        return ax


# ----------------------------------------------------------------------------------------------
# the streaming pass

class _SiteAccumulator:
    """Mutable running statistics of one site (histogram and token rows)."""

    def __init__(self, site: Site, *, m: int, token_index: torch.Tensor, seqlen: int,
                 histogram: bool = True):
        self.site = site
        self.m = m
        self.seqlen = seqlen
        self.histogram = histogram
        self.calls = 0
        self.counts: Optional[torch.Tensor] = None
        self.sum_abs = 0.0
        self.pos_max = -math.inf
        self.neg_max = -math.inf
        self.sample = torch.zeros((int(token_index.shape[0]), site.width), dtype=torch.float32)
        # sequence -> (rows of the sample buffer, positions in the sequence)
        self.rows_of: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for seq in torch.unique(token_index[:, 0]).tolist():
            rows = torch.nonzero(token_index[:, 0] == seq).flatten()
            self.rows_of[int(seq)] = (rows, token_index[rows, 1])

    def update(self, x: torch.Tensor, seq: int) -> None:
        x = x.detach()
        if x.shape[-1] != self.site.width:
            raise RuntimeError(f"site {self.site.name!r}: expected width {self.site.width}, got "
                               f"a tensor of shape {tuple(x.shape)}")
        rows = x.reshape(-1, x.shape[-1])
        if rows.shape[0] != self.seqlen:
            raise RuntimeError(f"site {self.site.name!r}: expected {self.seqlen} tokens per "
                               f"sequence, got a tensor of shape {tuple(x.shape)}")
        self.calls += 1
        picked = self.rows_of.get(seq)
        if picked is not None:
            buffer_rows, positions = picked
            self.sample[buffer_rows] = rows[positions.to(rows.device)].to("cpu", torch.float32)
        if not self.histogram:
            return
        values = rows.to(torch.float32)
        counts = float_histogram(values, self.m)
        self.counts = counts if self.counts is None else self.counts.add_(counts)
        finite = values if bool(torch.isfinite(values.sum())) else \
            torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
        self.sum_abs += float(finite.abs().sum())
        low, high = torch.aminmax(finite)
        self.pos_max = max(self.pos_max, float(high))
        self.neg_max = max(self.neg_max, -float(low))

    def result(self) -> SiteStats:
        if self.counts is None:
            counts = np.zeros((2, _EXP_CELLS << self.m), np.int64)
        else:
            counts = self.counts.cpu().numpy()
        zeros_pos, inf_pos, pos = split_histogram(counts[0], self.m)
        zeros_neg, inf_neg, neg = split_histogram(counts[1], self.m)
        non_finite = inf_pos + inf_neg
        if non_finite:
            logger.warning("site %s: %d infinite or NaN activations ignored", self.site.name,
                           non_finite)
        zeros = zeros_pos + zeros_neg
        n_pos, n_neg = int(pos.sum()), int(neg.sum())
        return SiteStats(site=self.site, count=zeros + n_pos + n_neg, zeros=zeros,
                         pos_counts=pos, neg_counts=neg,
                         pos_max=self.pos_max if n_pos else math.nan,
                         neg_max=self.neg_max if n_neg else math.nan, sum_abs=self.sum_abs,
                         sample=self.sample, m=self.m, non_finite=non_finite)


def sample_token_index(nsamples: int, seqlen: int, k: int, seed: int) -> torch.Tensor:
    """``k`` token positions drawn uniformly without replacement, as (sequence, position) rows.

    All tokens (in order) when ``k >= nsamples * seqlen``; otherwise sorted by position in the
    flattened calibration set. Seeded ``torch.Generator``.
    """
    total = nsamples * seqlen
    if k >= total:
        flat = torch.arange(total)
    else:
        generator = torch.Generator().manual_seed(seed)
        flat = torch.randperm(total, generator=generator)[:k].sort().values
    return torch.stack([flat // seqlen, flat % seqlen], dim=1)


def site_stats(x: torch.Tensor, *, site: Optional[Site] = None, bins: int = 4096
               ) -> SiteStats:
    """The :class:`SiteStats` of a tensor held in memory (every row a token, no sample kept).

    The same accumulation as :func:`activation_stats`, for activations obtained elsewhere and for
    testing the estimates against exact quantiles.

    Parameters
    ----------
    x : torch.Tensor, shape (..., width)
    site : Site, optional
        Default: ``Site("x", "qkv", 0, "", "input", width)``.
    bins : int, default 4096
        Resolution, as for :func:`activation_stats`.
    """
    func = "site_stats"
    m = mantissa_bits(bins, func=func)
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.ndim == 0 or x.numel() == 0:
        raise fail("x", func, "a non-empty tensor of shape (..., width)", tuple(x.shape))
    if site is None:
        site = Site(name="x", kind="qkv", block=0, module="", hook="input",
                    width=int(x.shape[-1]))
    rows = x.reshape(-1, x.shape[-1])
    acc = _SiteAccumulator(site, m=m, token_index=torch.zeros((0, 2), dtype=torch.long),
                           seqlen=int(rows.shape[0]))
    acc.update(rows, 0)
    return acc.result()


def _hook_tensor(site: Site, args: tuple, kwargs: dict, output: Any) -> torch.Tensor:
    if site.hook == "output":
        return output_tensor(output)
    if args and isinstance(args[0], torch.Tensor):
        return args[0]
    for value in kwargs.values():
        if isinstance(value, torch.Tensor):
            return value
    raise RuntimeError(f"site {site.name!r}: module {site.module!r} was called without a tensor "
                       "input")


def run_sites(model: nn.Module, input_ids: torch.Tensor, sites: Mapping[str, Site],
              consumers: Mapping[str, Callable[[torch.Tensor, int], None]], *, device=None,
              progress: bool = False, desc: str = "activations",
              on_block: Optional[Callable[[Any], None]] = None, func: str = "activation_stats",
              ) -> None:
    """Run calibration windows through ``model`` block by block, feeding each site's tensors.

    ``consumers[name](x, seq)`` is called once per calibration sequence ``seq`` with the site's
    tensor (shape (1, seqlen, width)) while the site's block runs; ``on_block(step)`` (optional)
    gets each :class:`~specmetrics.pruning.sequential.BlockStep` first (its ``inputs`` are the
    hidden states entering the block) and may return hook handles, removed once the block has
    run. The model is left unchanged; without ``on_block``, blocks after the last one with a
    site are not run.
    """
    layout = find_blocks(model, func=func)
    by_block: dict[int, list[Site]] = {}
    for name, site in sites.items():
        by_block.setdefault(site.block, []).append(site)
    last = max(by_block) if on_block is None else len(layout) - 1
    runner = SequentialRunner(model, layout, input_ids, device=device, make_stat=None,
                              progress=progress, desc=desc)
    handles: list = []

    def make_hook(site: Site):
        consume = consumers[site.name]
        counter = iter(range(1 << 62))

        def hook(_module, args, kwargs, output):
            consume(_hook_tensor(site, args, kwargs, output), next(counter))
        return hook

    def clear():
        for h in handles:
            h.remove()
        handles.clear()

    steps = iter(runner)
    try:
        for step in steps:
            clear()  # the previous block has been re-run with its hooks by now
            if step.index > last:
                break
            if on_block is not None:
                handles.extend(on_block(step) or ())
            for site in by_block.get(step.index, ()):
                module = model.get_submodule(site.module)
                handles.append(module.register_forward_hook(make_hook(site), with_kwargs=True))
    finally:
        clear()
        steps.close()


def _resolve_sites(model: nn.Module, sites, func: str) -> dict[str, Site]:
    """``None`` (all), kinds or site names (a string, comma-separated, or a sequence), or a
    mapping of :class:`Site` objects (used as given)."""
    requirement = "None, site kinds, site names or a mapping {name: Site}"
    if isinstance(sites, Mapping):
        if not sites or not all(isinstance(v, Site) for v in sites.values()):
            raise fail("sites", func, requirement, sites)
        return dict(sites)
    every = find_sites(model, func=func)
    if sites is None:
        return every
    try:
        names = [sites] if isinstance(sites, str) else list(sites)
    except TypeError:
        raise fail("sites", func, requirement, sites) from None
    if not names or not all(isinstance(n, str) for n in names):
        raise fail("sites", func, requirement, sites)
    tokens = {t.strip() for n in names for t in n.split(",") if t.strip()}
    unknown = sorted(t for t in tokens if t not in SITE_KINDS and t not in every)
    if unknown or not tokens:
        raise fail("sites", func, f"site kinds among {SITE_KINDS} or site names of the model "
                   f"(unknown: {unknown})", sites)
    chosen = {n: s for n, s in every.items() if s.kind in tokens or n in tokens}
    if not chosen:
        raise fail("sites", func, "a selection matching at least one site of the model", sites)
    return chosen


@model_tokenizer_text(old=("calibration",), new=("calibration",))
def activation_stats(model: nn.Module, tokenizer, calibration, *, sites=None,
                     nsamples: int = 32, seqlen: Optional[int] = None, seed: int = 0,
                     bins: int = 4096, reservoir: int = 4096, device=None,
                     progress: bool = False) -> ActivationStats:
    """Streaming statistics of every activation site of a model on calibration text.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face transformer; left unchanged (run in ``eval`` mode, no gradients).
    tokenizer : callable or None
        Required for text (``None`` for token ids).
    calibration : str, pathlib.Path, list of str, torch.Tensor or CalibrationSet
        By the one text rule, as for :func:`~specmetrics.calibration.load_calibration`:
        ``nsamples`` windows of ``seqlen`` tokens drawn with ``seed``.
    sites : None, str, sequence of str or mapping of str to Site
        Site kinds (``"silu_gate"``, ``["qkv", "o"]``), site names, or the output of
        :func:`~specmetrics.activations.find_sites`; ``None``: every site.
    nsamples : int, default 32
    seqlen : int, optional
        Default: the model's maximum positions, at most 2048.
    seed : int, default 0
        Seeds the calibration windows and the token sample.
    bins : int, default 4096
        Histogram resolution, as cells per 64 octaves (64 × a power of two): ``bins / 64`` cells
        per octave; quantiles are within ``64 / bins`` relative error (see the module notes).
    reservoir : int, default 4096
        Tokens whose full activation vectors are kept for every site (``0``: none).
    device : torch.device or str, optional
        Where each block runs (default: where its parameters are).
    progress : bool, default False
        A tqdm bar over the blocks.

    Returns
    -------
    ActivationStats

    Examples
    --------
    >>> stats = activation_stats(model, tok, Path("valid.txt"))  # doctest: +SKIP
    >>> stats["model.layers.3.silu_gate"].abs_quantile(0.5)  # doctest: +SKIP
    """
    from ..calibration.windows import calibration_set

    func = "activation_stats"
    m = mantissa_bits(bins, func=func)
    check_positive_int(reservoir, name="reservoir", func=func, minimum=0)
    chosen = _resolve_sites(model, sites, func)
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                             seqlen=seqlen, seed=seed, func=func)
    token_index = sample_token_index(calib.nsamples, calib.seqlen, reservoir, seed)
    accumulators = {name: _SiteAccumulator(site, m=m, token_index=token_index,
                                           seqlen=calib.seqlen)
                    for name, site in chosen.items()}
    run_sites(model, calib.input_ids, chosen, {n: a.update for n, a in accumulators.items()},
              device=device, progress=progress, desc=func, func=func)
    for acc in accumulators.values():
        if acc.calls != calib.nsamples:
            raise RuntimeError(f"site {acc.site.name!r} ({acc.site.module}) was seen {acc.calls} "
                               f"times for {calib.nsamples} calibration sequences")
    settings = {**calib.settings(), "bins": bins, "reservoir": reservoir}
    return ActivationStats({n: a.result() for n, a in accumulators.items()}, token_index,
                           settings)
