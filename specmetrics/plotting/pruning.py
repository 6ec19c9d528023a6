"""Plots of a :class:`~specmetrics.pruning.PruneReport`."""
from __future__ import annotations

import math

from .axes import new_axes

__all__ = ["plot_prune_report"]


def plot_prune_report(report, ax=None):
    """Target and achieved sparsity by block (parameter-weighted), and the mean relative
    reconstruction error per block on a second y axis where it was measured.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = new_axes(ax)
    blocks: dict[int, list] = {}
    for m in report.modules:
        blocks.setdefault(m.block, []).append(m)
    xs = sorted(blocks)

    def weighted(values, weights):
        pairs = [(v, w) for v, w in zip(values, weights) if math.isfinite(v)]
        total = sum(w for _, w in pairs)
        return math.fsum(v * w for v, w in pairs) / total if total else math.nan

    target = [weighted([m.target for m in blocks[b]], [m.n_params for m in blocks[b]]) for b in xs]
    achieved = [weighted([m.achieved for m in blocks[b]], [m.n_params for m in blocks[b]])
                for b in xs]
    ax.plot(xs, target, linestyle="--", color="0.4", label="target")
    ax.plot(xs, achieved, marker="o", markersize=3, label="achieved")
    ax.set_xlabel("block")
    ax.set_ylabel("sparsity")
    errors = [weighted([m.error for m in blocks[b]], [m.n_params for m in blocks[b]]) for b in xs]
    if any(math.isfinite(e) for e in errors):
        twin = ax.twinx()
        twin.plot(xs, errors, color="C3", marker=".", label="relative error")
        twin.set_ylabel("relative reconstruction error", color="C3")
    ax.legend(fontsize="small", loc="best")
    name = getattr(report.method, "name", str(report.method))
    ax.set_title(f"{name}: achieved {report.achieved:.4f}")
    return ax
