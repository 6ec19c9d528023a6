"""Plots of the grid runners' results (:class:`~specmetrics.experiments.ComparisonResult`)."""
from __future__ import annotations

from typing import Optional

from .axes import new_axes

__all__ = ["plot_comparison", "plot_ablation"]


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


def plot_ablation(result, ax=None):
    """The ablation grid as a heat map: methods as rows, variants as columns, colour = log10
    perplexity, each cell annotated with its perplexity; the dense perplexity in the title.

    Returns
    -------
    matplotlib.axes.Axes
    """
    import numpy as np

    ax = new_axes(ax, figsize=(max(6.0, 0.9 * len({k[0] for k in result}) + 2), 3.2))
    frame = result.to_frame()
    values = np.log10(frame.to_numpy(dtype=float))
    image = ax.imshow(values, cmap="viridis_r", aspect="auto")
    ax.set_xticks(range(frame.shape[1]), [str(c) for c in frame.columns], rotation=45,
                  ha="right")
    ax.set_yticks(range(frame.shape[0]), [str(i) for i in frame.index])
    for i in range(frame.shape[0]):
        for j in range(frame.shape[1]):
            v = frame.iat[i, j]
            if np.isfinite(v):
                ax.text(j, i, f"{v:.3g}", ha="center", va="center", fontsize="small",
                        color="white" if values[i, j] > np.nanmean(values) else "black")
    ax.figure.colorbar(image, ax=ax, label="log10 perplexity")
    ax.set_title(f"target {result.settings.get('target')}: perplexity by variant "
                 f"(dense {result.dense_perplexity:.4g})")
    return ax
