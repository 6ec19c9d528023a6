"""Figures of the circuit analyses (:mod:`specmetrics.circuits`), matplotlib imported lazily.

Each function reads its result duck-typed through ``to_frame()`` (no result module is
imported), draws on the given ``Axes`` or a new figure, and returns the ``Axes``;
:func:`save_circuit_plot` writes one PNG through ``matplotlib.figure.Figure`` (no pyplot state).
"""
from __future__ import annotations

from pathlib import Path

from .._validation import check_bool, fail
from .axes import new_axes

__all__ = ["plot_qk_ov", "plot_congruence", "plot_output_variance", "plot_mp_distance",
           "save_circuit_plot"]

_QK_COLOR, _OV_COLOR = "tab:blue", "tab:orange"


def _column(frame, metric: str, func: str, allowed=None):
    cols = [c for c in frame.columns if allowed is None or c in allowed]
    if not isinstance(metric, str) or metric not in frame.columns:
        raise fail("metric", func, f"a column of the result's table ({', '.join(cols[:12])}"
                   f"{' ...' if len(cols) > 12 else ''})", metric)
    return frame[metric]


def plot_qk_ov(result, ax=None, *, metric: str = "effective_rank"):
    """A metric of the QK and OV products by layer: every head a dot, the layer mean a line.

    Parameters
    ----------
    result : QKOVSpectra
    ax : matplotlib Axes, optional
    metric : str, default "effective_rank"
        A per-product metric (``rank_fraction``, ``effective_rank``, ``stable_rank``,
        ``entropy``, ``alpha``, ...): the ``qk_<metric>`` and ``ov_<metric>`` columns are drawn.

    Returns
    -------
    matplotlib.axes.Axes
    """
    func = "plot_qk_ov"
    frame = result.to_frame()
    if not isinstance(metric, str) or f"qk_{metric}" not in frame.columns:
        names = sorted({c[3:] for c in frame.columns if c.startswith("qk_")
                        and not c.endswith("_tokens")})
        raise fail("metric", func, f"one of {', '.join(names)}", metric)
    ax = new_axes(ax)
    for prefix, color, label in (("qk", _QK_COLOR, "QK  $W_Q^T W_K$"),
                                 ("ov", _OV_COLOR, "OV  $W_O W_V$")):
        col = frame[f"{prefix}_{metric}"].astype(float)
        offset = -0.08 if prefix == "qk" else 0.08
        ax.scatter(frame["block"] + offset, col, s=8, alpha=0.35, color=color)
        means = col.groupby(frame["block"]).mean()
        ax.plot(means.index, means.values, marker="o", color=color, label=f"{label} (mean)")
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.set_title(f"per-head {metric} of the QK and OV circuits")
    ax.legend(fontsize="small")
    return ax


def plot_congruence(result, ax=None, *, metric: str = "ratio_mean"):
    """A column of a :class:`~specmetrics.circuits.TokenCongruence` table by layer, one line
    per kind (``mlp_in`` gate and up separately, ``mlp_out``, ``ov``); the random baseline
    (ratio 1) dashed.

    Returns
    -------
    matplotlib.axes.Axes
    """
    func = "plot_congruence"
    frame = result.to_frame()
    _column(frame, metric, func)
    ax = new_axes(ax)
    labels = []
    for name in frame.index:
        leaf = name.rpartition(".")[2]
        labels.append(f"{frame.loc[name, 'kind']} ({leaf})")
    frame = frame.assign(_label=labels)
    for label, part in frame.groupby("_label", sort=False):
        ax.plot(part["block"], part[metric].astype(float), marker="o", label=label)
    if metric.startswith("ratio"):
        ax.axhline(1.0, color="grey", linestyle="--", linewidth=1, label="random direction")
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.set_title(f"token congruence: {metric}")
    ax.legend(fontsize="small")
    return ax


def plot_output_variance(result, ax=None, *, log: bool = True):
    """The variances of an :class:`~specmetrics.circuits.OutputVariance` by layer: attention,
    MLP, their sum, and the change with each pruned projection set.

    Returns
    -------
    matplotlib.axes.Axes
    """
    log = check_bool(log, name="log", func="plot_output_variance")
    frame = result.to_frame()
    ax = new_axes(ax)
    styles = {"var_attention": "-", "var_mlp": "-", "var_sum": "-", "var_output": ":"}
    for col in frame.columns:
        if col in styles or col.startswith("var_delta_"):
            values = frame[col].astype(float)
            if values.notna().any():
                ax.plot(frame["block"], values, marker="o", linestyle=styles.get(col, "--"),
                        label=col.replace("var_delta_", "Var(change) ").replace("var_", "Var "))
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("variance (trace Cov / d)")
    prune = getattr(result, "settings", {}).get("prune")
    ax.set_title("output variance by layer" + (f" (pruned at {prune:g})" if prune else ""))
    ax.legend(fontsize="small")
    return ax


def plot_mp_distance(result, ax=None, *, metric: str = "distance"):
    """The distance from Marchenko-Pastur (or another column) by layer, one line per module type;
    with ``metric="distance"``, WeightWatcher's ``rand_distance`` dashed beside it where present.

    Returns
    -------
    matplotlib.axes.Axes
    """
    func = "plot_mp_distance"
    frame = result.to_frame()
    _column(frame, metric, func)
    ax = new_axes(ax)
    for mtype, part in frame.groupby(frame["module_type"].fillna("other"), sort=False):
        line, = ax.plot(part["block"], part[metric].astype(float), marker="o",
                        label=f"{mtype}: {metric}")
        if metric == "distance" and "rand_distance" in part and \
                part["rand_distance"].astype(float).notna().any():
            ax.plot(part["block"], part["rand_distance"].astype(float), linestyle="--",
                    color=line.get_color(), alpha=0.7, label=f"{mtype}: rand_distance")
    ax.set_xlabel("layer")
    ax.set_ylabel(metric)
    ax.set_title("distance of the ESD from the fitted Marchenko-Pastur law")
    ax.legend(fontsize="small", ncol=2)
    return ax


def save_circuit_plot(result, path, *, dpi: int = 100, **kwargs) -> Path:
    """Draw ``result.plot(ax=..., **kwargs)`` on a new ``Figure`` and write it to ``path`` (PNG).

    Returns
    -------
    pathlib.Path
    """
    from matplotlib.figure import Figure

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(result) if hasattr(result, "__len__") else 0
    fig = Figure(figsize=(max(6.4, min(14.0, 4.0 + 0.08 * n)), 4.8), layout="constrained")
    result.plot(ax=fig.add_subplot(), **kwargs)
    fig.savefig(path, dpi=dpi)
    return path

