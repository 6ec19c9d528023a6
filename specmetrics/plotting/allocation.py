"""Plots of an :class:`~specmetrics.Allocation`: ratio by block and the metric that drove it."""
from __future__ import annotations

import math
from typing import Any

from .axes import new_axes
from .._validation import check_choice

__all__ = ["plot_allocation", "plot_allocation_ratios", "plot_allocation_metric",
           "plot_allocations"]

# canonical module types, for a stable legend order (no import of models: plotting is a base)
_TYPE_ORDER = {t: i for i, t in enumerate(("q", "k", "v", "o", "qkv", "gate", "up", "down",
                                           "gate_up"))}


def _sort_key(label: str) -> tuple:
    return (_TYPE_ORDER.get(label, 99), label)


def _series_of(alloc, m) -> str:
    units = alloc.settings.get("units")
    if units == "matrix":
        return m.module_type or "other"
    if units == "split" or alloc.settings.get("budget") == "per_group":
        return m.group
    return "block"


def plot_allocation_ratios(alloc, ax=None):
    """The sparsity ratio per block, one line per series (module type for ``units="matrix"``,
    group for ``"split"`` or a per-group budget, else the block), target dashed, clip dotted."""
    ax = new_axes(ax)
    series: dict[str, dict[int, list]] = {}
    for m in alloc.matrices:
        if m.block is not None and m.applied:
            series.setdefault(_series_of(alloc, m), {}).setdefault(m.block, []).append(m)
    for label in sorted(series, key=_sort_key):
        by_block = series[label]
        xs = sorted(by_block)
        ys = [math.fsum(m.ratio * m.n_params for m in by_block[b])
              / sum(m.n_params for m in by_block[b]) for b in xs]
        ax.plot(xs, ys, marker="o", markersize=3, label=label)
    ax.axhline(alloc.target, color="0.4", linestyle="--", linewidth=1,
               label=f"target {alloc.target:g}")
    clip = alloc.settings.get("clip")
    if clip is not None:
        for bound in clip:
            ax.axhline(bound, color="0.75", linestyle=":", linewidth=1)
    ax.set_ylabel("sparsity ratio")
    ax.set_xlabel("block")
    ax.legend(fontsize="small", ncol=4, loc="best")
    return ax


def plot_allocation_metric(alloc, ax=None):
    """Each matrix's metric by block and module type (markers) and the unit score (line): the
    numbers that drove the ratios, labelled with the metric's name (e.g. ``alpha_peak``)."""
    ax = new_axes(ax)
    units = alloc.settings.get("units")
    blocks = [m for m in alloc.matrices if m.block is not None]
    by_type: dict[str, list] = {}
    for m in blocks:
        if math.isfinite(m.metric):
            by_type.setdefault(m.module_type or "other", []).append(m)
    for label in sorted(by_type, key=_sort_key):
        ms = by_type[label]
        ax.plot([m.block for m in ms], [m.metric for m in ms], linestyle="none", marker=".",
                alpha=0.6, label=label)
    scores: dict[str, dict[int, float]] = {}
    if units != "matrix":
        for m in blocks:
            if math.isfinite(m.score):
                key = "unit score" if units == "block" else f"{m.group} score"
                scores.setdefault(key, {})[m.block] = m.score
    for label, values in scores.items():
        xs = sorted(values)
        ax.plot(xs, [values[x] for x in xs], linewidth=1.5, label=label)
    ax.set_ylabel(str(alloc.settings.get("metric") or "metric"))
    ax.set_xlabel("block")
    if by_type or scores:
        ax.legend(fontsize="small", ncol=4, loc="best")
    return ax


def plot_allocation(alloc, ax=None, *, panel: str = "ratio", figsize=(8.0, 5.5),
                    title: str | None = None):
    """Sparsity ratio and metric by block.

    Parameters
    ----------
    alloc : Allocation
    ax : matplotlib Axes, optional
        Draw ``panel`` there. When omitted, a new figure with both panels (ratio on top, the
        metric below, sharing the block axis) is made.
    panel : {"ratio", "metric"}, default "ratio"
        What to draw on a given ``ax``.
    figsize : tuple of float, default (8.0, 5.5)
        Size of a new figure.
    title : str, optional
        Figure title (default: a summary of the settings).

    Returns
    -------
    matplotlib.axes.Axes
        The ratio panel (or ``ax``); ``.figure`` is the whole figure.
    """
    check_choice(panel, ("ratio", "metric"), name="panel", func="Allocation.plot")
    if ax is not None:
        return (plot_allocation_ratios if panel == "ratio" else plot_allocation_metric)(alloc, ax)
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=figsize, constrained_layout=True)
    plot_allocation_ratios(alloc, top)
    top.set_xlabel("")
    plot_allocation_metric(alloc, bottom)
    method = alloc.settings.get("method", {})
    fig.suptitle(title if title is not None else
                 f"{method.get('name', '')} · metric={alloc.settings.get('metric')} · "
                 f"units={alloc.settings.get('units')} · achieved {alloc.achieved:.4f}")
    return top


def plot_allocations(allocations: Any, ax=None, *, labels=None):
    """Several allocations' block ratios on one axes (e.g. uniform vs OWL vs AlphaPruning).

    Parameters
    ----------
    allocations : mapping of str to Allocation, or sequence of Allocation
    ax : matplotlib Axes, optional
    labels : sequence of str, optional
        Legend labels for a sequence (default: each allocation's method name).

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = new_axes(ax)
    if hasattr(allocations, "items"):
        pairs = list(allocations.items())
    else:
        items = list(allocations)
        names = list(labels) if labels is not None else [
            a.settings.get("method", {}).get("name", str(i)) for i, a in enumerate(items)]
        pairs = list(zip(names, items))
    for label, alloc in pairs:
        by_block: dict[int, list] = {}
        for m in alloc.matrices:
            if m.block is not None:
                by_block.setdefault(m.block, []).append(m)
        xs = sorted(by_block)
        ys = [math.fsum(m.ratio * m.n_params for m in by_block[b])
              / sum(m.n_params for m in by_block[b]) for b in xs]
        ax.plot(xs, ys, marker="o", markersize=3, label=str(label))
    ax.set_xlabel("block")
    ax.set_ylabel("sparsity ratio")
    ax.legend(fontsize="small", loc="best")
    return ax
