"""Plots of spectra and reports (matplotlib, imported lazily).

The functions draw on a given ``Axes`` or, when ``ax`` is omitted, on a new figure
from ``matplotlib.pyplot.subplots`` (so that it shows in notebooks); they change no
global matplotlib state (no ``rcParams``, style or backend changes). Batch writers
such as :func:`save_report_plots` use ``matplotlib.figure.Figure`` directly, which
registers nothing with pyplot and works on any (headless) backend.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from .axes import new_axes
from .._validation import fail
from ..exceptions import ParameterError

if TYPE_CHECKING:  # pragma: no cover
    from ..spectrum.results import LayerSpectrum, SpectrumReport

__all__ = ["plot_layer_spectrum", "plot_report", "save_report_plots", "short_names", "ALPHA_BOUNDS"]

#: WeightWatcher's reading of alpha: below 2 "over-trained", above 6 "under-trained".
ALPHA_BOUNDS = (2.0, 6.0)
_ALPHA_LIKE = ("alpha", "alpha_peak", "alpha_mid")
# containers of repeated blocks (``model.layers.3``, ``encoder.layer.3``, ``h.3``, ``blocks.3``)
_BLOCK_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?:\.|$)")
_HIST_BINS = (20, 100)  # bounds of the histogram's bin count, 2 sqrt(n) in between


def _is_alpha_like(metric: str) -> bool:
    return metric in _ALPHA_LIKE or (metric.startswith("alpha_") and metric != "alpha_weighted")


def _fmt(value) -> str:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return f"{v:.3g}" if math.isfinite(v) else "nan"


def plot_layer_spectrum(layer: "LayerSpectrum", ax=None, fit: str = "alpha"):
    """Log-log histogram of one matrix's ESD with its fitted power-law tail.

    The histogram is a density over log-spaced bins (``2 sqrt(n)`` of them, between 20
    and 100) of the positive eigenvalues. The
    fitted tail density ``p(x) = (alpha - 1) / xmin * (x / xmin) ** -alpha`` is drawn
    over ``[xmin, xmax]``, multiplied by the fraction of eigenvalues in the tail
    (``n_tail / N``) so that it sits on the histogram of the whole spectrum; a
    vertical line marks ``xmin``. A failed fit draws no line and says so in the title.

    Parameters
    ----------
    layer : LayerSpectrum
        One entry of a :class:`~specmetrics.SpectrumReport`, with eigenvalues.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when omitted.
    fit : str, default "alpha"
        Which fit of ``layer.fits`` to draw (``"alpha"``, ``"alpha_peak"``, ``"alpha_mid"``...).

    Returns
    -------
    matplotlib.axes.Axes

    Raises
    ------
    ParameterError
        If the layer has no eigenvalues (a backend that does not expose them), none of
        them is positive, or ``fit`` is not one of its fits.
    """
    func = "plot_layer_spectrum"
    ev = getattr(layer, "eigenvalues", None)
    if ev is None:
        raise ParameterError(
            f"The 'layer' parameter of {func} must be a LayerSpectrum with eigenvalues (the backend that "
            f"made it did not keep them; use backend='torch'). Got {getattr(layer, 'name', layer)!r} "
            "with eigenvalues=None instead."
        )
    fits = getattr(layer, "fits", {})
    if fit not in fits:
        raise fail("fit", func, "one of " + ", ".join(repr(k) for k in fits), fit)
    ev = np.asarray(ev, dtype=np.float64).reshape(-1)
    x = ev[np.isfinite(ev) & (ev > 0)]
    if x.size == 0:
        raise ParameterError(
            f"The 'layer' parameter of {func} must be a LayerSpectrum with positive eigenvalues. "
            f"Got {layer.name!r} with none instead."
        )
    result = fits[fit]

    ax = new_axes(ax)
    lo, hi = float(x.min()), float(x.max())
    if hi <= lo:  # a single distinct value: one bin around it
        lo, hi = lo / 1.5, hi * 1.5
    n_bins = int(min(_HIST_BINS[1], max(_HIST_BINS[0], 2 * math.sqrt(x.size))))
    bins = np.logspace(math.log10(lo), math.log10(hi), n_bins + 1)
    bins[0], bins[-1] = lo, hi  # 10**log10(x) may round past x and drop the extreme eigenvalues
    ax.hist(x, bins=bins, density=True, histtype="stepfilled", alpha=0.5, color="C0", label="ESD")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue λ of WᵀW")
    ax.set_ylabel("density")

    label = fit.replace("_", " ")
    if result.success and math.isfinite(result.alpha) and result.xmin > 0:
        alpha, xmin, xmax = float(result.alpha), float(result.xmin), float(result.xmax)
        frac = min(1.0, int(result.n_tail) / x.size) if result.n_tail else 1.0
        if xmax > xmin:
            xs = np.logspace(math.log10(xmin), math.log10(xmax), 200)
            pdf = frac * (alpha - 1.0) / xmin * (xs / xmin) ** (-alpha)
            ax.plot(xs, pdf, color="C3", linewidth=2, label=f"power law α={alpha:.3g}")
        ax.axvline(xmin, color="C2", linestyle="--", linewidth=1, label=f"xmin={xmin:.3g}")
        title = f"{layer.name}\n{label}={alpha:.3g}, D={_fmt(result.ks_distance)}"
    else:
        reason = result.message or "fit failed"
        title = f"{layer.name}\n{label}: fit failed ({reason})"
    ax.set_title(title, fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    return ax


def _block(name: str) -> Optional[tuple[str, int]]:
    m = _BLOCK_RE.search(name)
    if m is None:
        return None
    return name[: m.end(1)], int(m.group(1))


def short_names(names) -> dict[str, str]:
    """Short, unique labels for qualified names: ``"3.q_proj"`` for ``model.layers.3.self_attn.q_proj``.

    Inside repeated blocks a label is the block index and the fewest trailing name
    components that tell the matrix apart from the other matrices of its block
    (``"0.query"``, ``"0.attention.output.dense"``, ``"0.output.dense"``); names
    outside the blocks are kept whole.
    """
    names = list(names)
    parsed = {}
    for n in names:
        b = _block(n)
        if b is not None and len(n) > len(b[0]) + 1:
            parsed[n] = (b[1], n[len(b[0]) + 1:].split("."))
    labels = {n: n for n in names}
    for n, (idx, comps) in parsed.items():
        peers = [c for m, (j, c) in parsed.items() if j == idx and m != n]
        for k in range(1, len(comps) + 1):
            tail = comps[-k:]
            if not any(p[-k:] == tail for p in peers):
                break
        labels[n] = f"{idx}." + ".".join(comps[-k:])
    if len(set(labels.values())) != len(labels):
        return {n: n for n in names}
    return labels


def _model_order(names: list[str]) -> list[str]:
    """Report order, with repeated blocks sorted by their index (a safetensors file lists keys
    alphabetically: ``layers.10`` before ``layers.2``); matrices outside the blocks whose name
    contains ``embed`` come first, the other ones last. Stable within a block."""
    def key(item):
        pos, name = item
        b = _block(name)
        if b is not None:
            return (1, b[1], pos)
        return (0 if "embed" in name.rsplit(".", 1)[-1] or "embed" in name else 2, 0, pos)

    return [n for _, n in sorted(enumerate(names), key=key)]


def plot_report(report: "SpectrumReport", metric: str = "alpha", ax=None):
    """One metric of every matrix, by layer in model order.

    Layers are on the x axis (ordered by block index), labelled with short names when
    there are at most 64, else by block; alternate blocks are shaded. For alpha-like
    metrics (``alpha``, ``alpha_peak``, ``alpha_mid``) dotted lines mark alpha = 2 and
    alpha = 6 (WeightWatcher's over- and under-trained bounds). Non-finite values (failed
    fits) are left out and counted in the title.

    Parameters
    ----------
    report : SpectrumReport
    metric : str, default "alpha"
        A numeric column of ``report.to_frame()``.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure when omitted.

    Returns
    -------
    matplotlib.axes.Axes
    """
    func = "plot_report"
    if len(report) == 0:
        raise fail("report", func, "a SpectrumReport with at least one layer", report)
    names = _model_order(list(report))
    if not any(metric in report[n].metrics for n in names):
        available = sorted({k for n in names for k, v in report[n].metrics.items()
                            if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)})
        raise fail("metric", func, "a numeric column of the report (" + ", ".join(available) + ")", metric)
    values = []
    for n in names:
        v = report[n].metrics.get(metric, math.nan)
        try:
            values.append(float(v))
        except (TypeError, ValueError):
            raise ParameterError(
                f"The 'metric' parameter of {func} must be a numeric column. Got {metric!r} instead."
            ) from None
    y = np.asarray(values)
    xs = np.arange(len(names))
    ax = new_axes(ax)

    blocks = [_block(n) for n in names]
    starts = {}  # block index -> first x
    for i, b in enumerate(blocks):
        if b is not None:
            starts.setdefault(b[1], i)
    for j, (bidx, first) in enumerate(sorted(starts.items(), key=lambda kv: kv[1])):
        last = max(i for i, b in enumerate(blocks) if b is not None and b[1] == bidx)
        if j % 2 == 0:
            ax.axvspan(first - 0.5, last + 0.5, color="0.92", zorder=0, linewidth=0)

    ok = np.isfinite(y)
    ax.plot(xs[ok], y[ok], marker="o", markersize=4, linestyle="-", linewidth=0.8, color="C0", label=metric)
    if _is_alpha_like(metric):
        lo, hi = ALPHA_BOUNDS
        ax.axhline(lo, color="C3", linestyle=":", linewidth=1, label=f"{metric} = {lo:g}")
        ax.axhline(hi, color="C1", linestyle=":", linewidth=1, label=f"{metric} = {hi:g}")
    if len(names) <= 64:
        labels = short_names(names)
        ax.set_xticks(xs)
        ax.set_xticklabels([labels[n] for n in names], rotation=90, fontsize="x-small")
        ax.set_xlabel("layer")
    else:
        ticks = sorted(starts.items(), key=lambda kv: kv[1])
        step = max(1, math.ceil(len(ticks) / 32))
        ticks = ticks[::step]
        ax.set_xticks([first for _, first in ticks])
        ax.set_xticklabels([str(b) for b, _ in ticks], fontsize="x-small")
        ax.set_xlabel("block")
    ax.set_xlim(-0.5, len(names) - 0.5)
    ax.set_ylabel(metric)
    n_bad = int((~ok).sum())
    note = f", {n_bad} not finite" if n_bad else ""
    ax.set_title(f"{metric} by layer ({len(names)} matrices, {report.backend} backend{note})", fontsize="medium")
    ax.legend(fontsize="small", loc="best")
    return ax


def _file_stem(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "layer"


def save_report_plots(
    report: "SpectrumReport",
    directory,
    *,
    metric: str = "alpha",
    metrics=None,
    layers: bool = True,
    fit: str = "alpha",
    dpi: int = 100,
    progress: bool = False,
) -> list[Path]:
    """Write the report plot and one ESD plot per layer as PNG files.

    Parameters
    ----------
    report : SpectrumReport
    directory : str or path-like
        Created if missing. Files: ``report_<metric>.png`` and ``esd/<name>.png`` (the
        qualified name with unsafe characters replaced by ``_``).
    metric : str, default "alpha"
        Metric of the report plot.
    metrics : sequence of str, optional
        Several report plots, one per metric (e.g. ``("alpha", "alpha_peak")``); overrides
        ``metric``.
    layers : bool, default True
        Also write the per-layer ESD plots (layers without eigenvalues are left out).
    fit : str, default "alpha"
        The fit drawn on the per-layer plots.
    dpi : int, default 100
    progress : bool, default False
        Show a progress bar over the layers.

    Returns
    -------
    list of pathlib.Path
        The files written.
    """
    from matplotlib.figure import Figure

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (metrics if metrics is not None else (metric,)):
        fig = Figure(figsize=(max(6.4, 0.18 * min(len(report), 64) + 2), 4.8),
                     layout="constrained")
        plot_report(report, metric=name, ax=fig.add_subplot())
        path = out / f"report_{_file_stem(name)}.png"
        fig.savefig(path, dpi=dpi)
        written.append(path)
    if not layers:
        return written
    todo = [n for n in report if report[n].eigenvalues is not None]
    if todo:
        (out / "esd").mkdir(exist_ok=True)
    iterator = todo
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(todo, desc="plots", unit="layer")
    used: set = set()
    for name in iterator:
        stem = _file_stem(name)
        while stem in used:
            stem += "_"
        used.add(stem)
        fig = Figure()  # fixed margins: a layout engine would double the drawing time
        fig.subplots_adjust(left=0.12, right=0.97, bottom=0.11, top=0.88)
        ax = plot_layer_spectrum(report[name], ax=fig.add_subplot(), fit=fit)
        ax.minorticks_off()  # log-axis minor ticks are most of the drawing time of a small plot
        path = out / "esd" / f"{stem}.png"
        fig.savefig(path, dpi=dpi)
        written.append(path)
    return written
