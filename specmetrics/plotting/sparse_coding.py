"""Figures of the sparse-coding metrics (matplotlib imported when a plot is drawn).

- :func:`plot_sparsity_vs_a`: the figure of Deng, Tao & Benton (2023): the normalised loss of
  sparse linear data against the planted number of active features ``a``, the oracle curve, and
  the controls as horizontal lines;
- :func:`plot_layer_sparsity`: a model's layer profile (a ``LayerSparsity``), one line per site
  kind, with the controls of the same width;
- :func:`plot_sparsity_band`: an estimate over seeds (a ``SparsityBand``).

The results are read duck-typed (this package imports no result module).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Optional

from .axes import new_axes

__all__ = ["plot_sparsity_vs_a", "plot_layer_sparsity", "plot_sparsity_band"]

_CONTROL_STYLES = {"gaussian": ("tab:red", "--"), "rademacher": ("tab:purple", ":"),
                   "cauchy_norm": ("tab:brown", "-.")}
_KIND_MARKERS = {"residual": "o", "embeddings": "s", "mlp_out": "^"}


def _triple(value) -> tuple[float, float, float]:
    """``(low, centre, high)`` from a number or a (low, centre, high) / (centre, err) tuple."""
    if isinstance(value, (tuple, list)):
        if len(value) == 3:
            return float(value[0]), float(value[1]), float(value[2])
        if len(value) == 2:
            c, e = float(value[0]), float(value[1])
            return c - e, c, c + e
        raise ValueError(f"expected a number or a (low, centre, high) tuple, got {value!r}")
    v = float(value)
    return v, v, v


def plot_sparsity_vs_a(values: Mapping, *, controls: Optional[Mapping] = None,
                       oracle: Optional[Mapping] = None, ax=None,
                       label: str = "sparse linear (learned dictionary)"):
    """Normalised loss against the planted ``a``, with the oracle and the controls.

    Parameters
    ----------
    values : mapping of float to float or tuple
        ``{a: L_norm}``, or ``{a: (low, centre, high)}`` / ``{a: (centre, error)}`` for a band
        (drawn as error bars).
    controls : mapping of str to float or tuple, optional
        ``{control kind: L_norm}`` (or a band): horizontal lines.
    oracle : mapping of float to float, optional
        ``{a: oracle S₁(a)}``: the closed-form curve (dashed).
    ax : matplotlib Axes, optional
    label : str

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = new_axes(ax)
    a_values = sorted(float(a) for a in values)
    triples = [_triple(values[a]) for a in sorted(values, key=float)]
    centre = [t[1] for t in triples]
    lower = [t[1] - t[0] for t in triples]
    upper = [t[2] - t[1] for t in triples]
    if any(lower) or any(upper):
        ax.errorbar(a_values, centre, yerr=[lower, upper], marker="o", capsize=3, label=label)
    else:
        ax.plot(a_values, centre, marker="o", label=label)
    if oracle:
        xs = sorted(float(a) for a in oracle)
        ax.plot(xs, [float(oracle[a]) for a in sorted(oracle, key=float)], color="black",
                linestyle="--", linewidth=1, label="oracle $S_1$ (closed form)")
    for kind, value in (controls or {}).items():
        low, mid, high = _triple(value)
        color, style = _CONTROL_STYLES.get(kind, ("tab:gray", "--"))
        ax.axhline(mid, color=color, linestyle=style, label=f"{kind} control")
        if high > low:
            ax.axhspan(low, high, color=color, alpha=0.12, linewidth=0)
    ax.set_xlabel("planted active features per sample $a$")
    ax.set_ylabel("normalised loss $L_{norm}$")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return ax


def plot_layer_sparsity(result, ax=None, *, kinds=None, controls: bool = True):
    """A model's layer profile: normalised loss by layer, one line per site kind.

    Parameters
    ----------
    result : LayerSparsity
        Read duck-typed: ``.sites`` (each with ``layer``, ``kind``, ``normalized_loss``,
        ``normalized_loss_se``, ``width``), ``.controls`` (``{kind: {width: value}}``).
    ax : matplotlib Axes, optional
    kinds : sequence of str, optional
        Kinds to draw (default: all; ``embeddings`` is drawn as the start of the ``residual``
        line when both are present).
    controls : bool, default True
        Draw the controls as horizontal lines (one per kind and width).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = new_axes(ax)
    sites = list(result.sites)
    present = list(dict.fromkeys(s.kind for s in sites))
    chosen = present if kinds is None else [k for k in kinds if k in present]
    for kind in chosen:
        if kind == "embeddings" and "residual" in chosen:
            continue
        members = [s for s in sites if s.kind == kind or
                   (kind == "residual" and s.kind == "embeddings" and "embeddings" in chosen)]
        members.sort(key=lambda s: s.layer)
        ys = [s.normalized_loss for s in members]
        errs = [s.normalized_loss_se if math.isfinite(s.normalized_loss_se) else 0.0
                for s in members]
        label = "residual stream (layer 0: embeddings)" if kind == "residual" and \
            any(s.kind == "embeddings" for s in members) else kind
        ax.errorbar([s.layer for s in members], ys, yerr=errs, marker=_KIND_MARKERS.get(kind, "o"),
                    capsize=2, label=label)
    if controls:
        widths = sorted({s.width for s in sites})
        for kind, by_width in getattr(result, "controls", {}).items():
            color, style = _CONTROL_STYLES.get(kind, ("tab:gray", "--"))
            for width in widths:
                if width in by_width and math.isfinite(by_width[width]):
                    suffix = f" (width {width})" if len(widths) > 1 else ""
                    ax.axhline(by_width[width], color=color, linestyle=style,
                               label=f"{kind} control{suffix}")
    ax.set_xlabel("layer (0: embeddings, i: after block i)")
    ax.set_ylabel("normalised loss $L_{norm}$ (lower: sparser)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small")
    return ax


def plot_sparsity_band(band, ax=None):
    """Normalised loss of every seed of a ``SparsityBand`` with its mean and min–max band.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = new_axes(ax)
    rows = list(band.rows)
    ax.plot(range(len(rows)), [r.normalized_loss for r in rows], marker="o", linestyle="none",
            label="seeds")
    ax.axhline(band.mean, color="black", label=f"mean {band.mean:.3g}")
    ax.axhspan(band.low, band.high, color="tab:blue", alpha=0.15, linewidth=0,
               label="min–max")
    ax.set_xticks(range(len(rows)), [str(r.seed) for r in rows])
    ax.set_xlabel("seed")
    ax.set_ylabel("normalised loss $L_{norm}$")
    ax.legend(fontsize="small")
    return ax
