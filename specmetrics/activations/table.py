"""The seed-000 table: per-layer thresholds and the sparsity they realise on held-out tokens.

The user's notes (seed 000) print, for each of 32 layers, "Average distributions", "Abs
threshold", "positive threshold" and "Negative threshold" without saying which tensor or which
definitions. Our reading (documented in ``docs/activations.rst``):

- ``abs_threshold``: the ``target``-quantile of ``|x|`` fitted on calibration tokens
  (:meth:`SiteStats.abs_quantile`);
- ``pos_threshold`` / ``neg_threshold``: the ``target``-quantile of ``x`` given ``x > 0`` and of
  ``|x|`` given ``x < 0`` on the same tokens;
- ``realised_sparsity`` ("average distributions"): the fraction of *held-out* values with
  ``|x| <= abs_threshold``.

The table also carries ``pos_fraction``, the share of held-out values above zero: on the
``silu_gate`` site of tiny-llama-wt it is 0.40 at layer 0 and 0.24-0.30 after, the range of
the notes' "average distributions" (0.24-0.51, 0.64 at the last layer), whereas the realised
sparsity of a fitted ``|x|`` threshold is the target to within a point. The notes may have
printed that share (see ``docs/activations.rst``).
"""
from __future__ import annotations

from .._validation import check_choice, check_interval, fail, renamed_keywords
from .capture import ActivationStats
from .sites import SITE_KINDS

__all__ = ["threshold_table", "plot_threshold_table"]


@renamed_keywords(kind="sites")
def threshold_table(stats_fit: ActivationStats, stats_heldout: ActivationStats, target: float,
                    *, sites: str = "silu_gate"):
    """Per-layer thresholds fitted on one set of tokens and the sparsity realised on another.

    Parameters
    ----------
    stats_fit : ActivationStats
        Calibration statistics the thresholds are fitted on.
    stats_heldout : ActivationStats
        Statistics of held-out tokens (same model, same sites).
    target : float
        Target sparsity in [0, 1].
    sites : str, default "silu_gate"
        The site kind tabulated (one of :data:`~specmetrics.activations.sites.SITE_KINDS`;
        ``kind`` is the deprecated spelling).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``layer`` (block index), columns ``site``, ``realised_sparsity``,
        ``abs_threshold``, ``pos_threshold``, ``neg_threshold``, ``pos_fraction`` (share of
        held-out values ``> 0``: another possible reading of the notes' "average distributions"),
        ``teal_threshold`` (TEAL's signed definition, for comparison) and
        ``teal_realised_sparsity`` (held-out sparsity at it). ``frame.attrs`` holds ``target``
        and ``kind``.
    """
    import pandas as pd

    func = "threshold_table"
    for name, value in (("stats_fit", stats_fit), ("stats_heldout", stats_heldout)):
        if not isinstance(value, ActivationStats):
            raise fail(name, func, "an ActivationStats", type(value).__name__)
    target = check_interval(target, 0.0, 1.0, name="target", func=func, closed="both")
    kind = check_choice(sites, SITE_KINDS, name="sites", func=func)
    fit = stats_fit.of_kind(kind)
    if not fit:
        raise fail("stats_fit", func, f"statistics holding {kind!r} sites", list(stats_fit)[:3])
    missing = [n for n in fit if n not in stats_heldout]
    if missing:
        raise fail("stats_heldout", func, "statistics of the same sites as stats_fit",
                   f"missing {missing[:3]}")
    rows = []
    for name, st in fit.items():
        t_abs = st.abs_quantile(target)
        t_teal = st.teal_quantile(target)
        held = stats_heldout[name]
        rows.append({"layer": st.site.block, "site": name,
                     "realised_sparsity": held.fraction_at_or_below(t_abs),
                     "abs_threshold": t_abs, "pos_threshold": st.pos_quantile(target),
                     "neg_threshold": st.neg_quantile(target),
                     "pos_fraction": held.n_pos / held.count if held.count else float("nan"),
                     "teal_threshold": t_teal,
                     "teal_realised_sparsity": held.fraction_at_or_below(t_teal)})
    frame = pd.DataFrame(rows).set_index("layer")
    frame.attrs.update({"target": target, "kind": kind})
    return frame


def plot_threshold_table(frame, ax=None):
    """Thresholds by layer (left axis) and realised sparsity (right axis) of a
    :func:`threshold_table`.

    Returns
    -------
    matplotlib.axes.Axes
        The thresholds' axes (the sparsity twin is ``ax.right_ax``-like: the second axes of the
        figure).
    """
    if ax is None:
        import matplotlib.pyplot as plt

        _, ax = plt.subplots()
    layers = frame.index.to_numpy()
    for column, style in (("abs_threshold", "-o"), ("pos_threshold", "--^"),
                          ("neg_threshold", "--v")):
        ax.plot(layers, frame[column].to_numpy(), style, label=column.replace("_", " "))
    ax.set_xlabel("layer")
    ax.set_ylabel("threshold")
    twin = ax.twinx()
    twin.plot(layers, frame["realised_sparsity"].to_numpy(), ":s", color="black",
              label="realised sparsity")
    target = frame.attrs.get("target")
    if target is not None:
        twin.axhline(target, color="grey", linewidth=0.8)
    twin.set_ylabel("realised sparsity (held-out)")
    twin.set_ylim(0, 1)
    lines = ax.get_legend_handles_labels()
    more = twin.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="best")
    title = frame.attrs.get("kind")
    if title:
        ax.set_title(f"{title}, target {target:g}" if target is not None else title)
    return ax
