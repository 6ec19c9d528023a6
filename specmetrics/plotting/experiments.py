"""Plots of the grid runners' results (:class:`~specmetrics.experiments.ComparisonResult`)."""
from __future__ import annotations

from typing import Optional

from .axes import new_axes

__all__ = ["plot_comparison"]


def plot_comparison(result, ax=None, *, metric: Optional[str] = None):
    """The evaluation metric against the achieved sparsity, one line per (allocation, method),
    the dense model as a horizontal line; perplexity on a log axis.

    Parameters
    ----------
    result : ComparisonResult
    ax : matplotlib Axes, optional
    metric : str, optional
        A column of ``result.to_frame()``; default ``perplexity`` (causal LM) or ``cosine``.

    Returns
    -------
    matplotlib.axes.Axes
    """
    ax = new_axes(ax)
    frame = result.to_frame(dense=False)
    metric = metric or ("perplexity" if result.dense.kind == "perplexity" else "cosine")
    if metric not in frame.columns:
        from .._validation import fail

        raise fail("metric", "ComparisonResult.plot", f"a column of to_frame() "
                   f"({', '.join(map(str, frame.columns))})", metric)
    flat = frame.reset_index()
    for (alloc, method), group in flat.groupby(["allocation", "method"], sort=False):
        group = group.sort_values("sparsity")
        ax.plot(group["sparsity"], group[metric], marker="o", label=f"{alloc} · {method}")
    if result.dense.kind == "perplexity":
        ax.axhline(result.dense.perplexity_dense, color="0.4", linestyle="--", linewidth=1,
                   label="dense")
        ax.set_yscale("log")
    ax.set_xlabel("achieved sparsity")
    ax.set_ylabel(metric)
    ax.legend(fontsize="small", loc="best")
    return ax
