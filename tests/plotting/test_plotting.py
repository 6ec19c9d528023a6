"""specmetrics.plotting: ESD and report plots draw what they say and leave matplotlib's state alone."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg", force=True)  # headless; set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

import specmetrics  # noqa: E402
from specmetrics import LayerSpectrum, ParameterError, PowerLawFit, SpectrumReport  # noqa: E402
from specmetrics.plotting import (  # noqa: E402
    ALPHA_BOUNDS, plot_layer_spectrum, plot_report, save_report_plots, short_names,
)


def _heavy_tailed(n: int, m: int, seed: int) -> torch.Tensor:
    """A matrix whose ESD has a clear power-law tail (Student-t entries)."""
    gen = torch.Generator().manual_seed(seed)
    g = torch.randn(n, m, generator=gen, dtype=torch.float64)
    chi = torch.randn(n, m, 3, generator=gen, dtype=torch.float64).pow(2).mean(-1)
    return (g / chi.sqrt()).float()


@pytest.fixture(scope="module")
def report() -> SpectrumReport:
    state = {
        "model.embed_tokens.weight": _heavy_tailed(200, 48, 0),
        "model.layers.0.self_attn.q_proj.weight": _heavy_tailed(48, 48, 1),
        "model.layers.0.mlp.up_proj.weight": _heavy_tailed(96, 48, 2),
        "model.layers.1.self_attn.q_proj.weight": _heavy_tailed(48, 48, 3),
        "model.layers.1.mlp.up_proj.weight": _heavy_tailed(96, 48, 4),
        "lm_head.weight": _heavy_tailed(200, 48, 5),
    }
    return specmetrics.esd(state)


@pytest.fixture()
def figure_axes() -> Axes:
    return Figure().add_subplot()


def _failed_layer(layer: LayerSpectrum) -> LayerSpectrum:
    bad = PowerLawFit(math.nan, math.nan, math.nan, math.nan, math.nan, 0, False, "no xmin candidate gives alpha > 1")
    return LayerSpectrum(layer.name, layer.kind, layer.shape, layer.n_params, layer.eigenvalues,
                         {**layer.fits, "alpha": bad}, {**layer.metrics, "alpha": math.nan})


def _labels(ax: Axes) -> list[str]:
    return [line.get_label() for line in ax.get_lines()]


# ---------------------------------------------------------------------------------------------
# plot_layer_spectrum


def test_layer_plot_draws_histogram_fit_and_xmin(report, figure_axes):
    layer = report["model.layers.0.mlp.up_proj"]
    fit = layer.fit
    assert fit.success
    ax = plot_layer_spectrum(layer, ax=figure_axes)
    assert ax is figure_axes
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    assert len(ax.patches) >= 1  # the histogram
    power = [ln for ln in ax.get_lines() if ln.get_label().startswith("power law")]
    assert len(power) == 1
    xs, ys = power[0].get_data()
    assert xs[0] == pytest.approx(fit.xmin) and xs[-1] == pytest.approx(fit.xmax)
    # the drawn density is (alpha - 1)/xmin (x/xmin)^-alpha times the tail fraction
    frac = fit.n_tail / np.count_nonzero(layer.eigenvalues > 0)
    assert ys[0] == pytest.approx(frac * (fit.alpha - 1) / fit.xmin)
    slope = np.polyfit(np.log(xs), np.log(ys), 1)[0]
    assert slope == pytest.approx(-fit.alpha)
    vertical = [ln for ln in ax.get_lines() if ln.get_label().startswith("xmin")]
    assert len(vertical) == 1 and np.allclose(vertical[0].get_xdata(), fit.xmin)
    title = ax.get_title()
    assert layer.name in title and f"{fit.alpha:.3g}" in title and "D=" in title


def test_layer_plot_other_fit(report, figure_axes):
    layer = report["model.layers.0.mlp.up_proj"]
    ax = plot_layer_spectrum(layer, ax=figure_axes, fit="alpha_peak")
    assert "alpha peak" in ax.get_title()
    assert f"{layer.fits['alpha_peak'].alpha:.3g}" in ax.get_title()


def test_layer_plot_failed_fit_draws_no_line(report, figure_axes):
    layer = _failed_layer(report["model.layers.0.mlp.up_proj"])
    ax = plot_layer_spectrum(layer, ax=figure_axes)
    assert not any(lbl.startswith(("power law", "xmin")) for lbl in _labels(ax))
    assert len(ax.patches) >= 1  # the histogram is still there
    assert "fit failed" in ax.get_title() and "no xmin candidate" in ax.get_title()


def test_layer_plot_without_eigenvalues_raises(report):
    layer = report["model.layers.0.mlp.up_proj"]
    bare = LayerSpectrum(layer.name, layer.kind, layer.shape, layer.n_params, None, layer.fits, layer.metrics)
    with pytest.raises(ParameterError, match="eigenvalues") as info:
        plot_layer_spectrum(bare)
    assert isinstance(info.value, ValueError)
    assert str(info.value).startswith("The 'layer' parameter of plot_layer_spectrum must be")


def test_layer_plot_unknown_fit_raises(report):
    with pytest.raises(ParameterError, match="The 'fit' parameter of plot_layer_spectrum"):
        plot_layer_spectrum(report["model.layers.0.mlp.up_proj"], fit="beta")


def test_layer_plot_new_figure_and_method(report):
    layer = report["model.layers.1.self_attn.q_proj"]
    ax = layer.plot()
    try:
        assert isinstance(ax, Axes)
        assert layer.name in ax.get_title()
    finally:
        plt.close(ax.figure)


# ---------------------------------------------------------------------------------------------
# plot_report


def test_report_plot_alpha_with_reference_lines(report, figure_axes):
    ax = plot_report(report, ax=figure_axes)
    assert ax is figure_axes
    series = [ln for ln in ax.get_lines() if ln.get_label() == "alpha"]
    assert len(series) == 1
    names = list(report)
    ys = series[0].get_ydata()
    assert len(ys) == len(names)
    # model order: embeddings, blocks by index, the rest
    order = ["model.embed_tokens", "model.layers.0.self_attn.q_proj", "model.layers.0.mlp.up_proj",
             "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.up_proj", "lm_head"]
    assert np.allclose(ys, [report[n].alpha for n in order])
    ticks = [t.get_text() for t in ax.get_xticklabels()]
    assert ticks == ["model.embed_tokens", "0.q_proj", "0.up_proj", "1.q_proj", "1.up_proj", "lm_head"]
    horizontal = sorted(float(ln.get_ydata()[0]) for ln in ax.get_lines() if ln.get_label() != "alpha")
    assert horizontal == list(ALPHA_BOUNDS)
    assert "alpha" in ax.get_ylabel()


def test_report_plot_other_metric_has_no_alpha_lines(report, figure_axes):
    ax = plot_report(report, metric="stable_rank", ax=figure_axes)
    assert _labels(ax) == ["stable_rank"]
    assert ax.get_ylabel() == "stable_rank"


def test_report_plot_alpha_peak_is_alpha_like(report, figure_axes):
    ax = plot_report(report, metric="alpha_peak", ax=figure_axes)
    assert len(ax.get_lines()) == 3


def test_report_plot_blocks_sorted_by_index(figure_axes):
    """A safetensors file lists keys alphabetically (layers.10 before layers.2); plots do not."""
    state = {f"layers.{i}.fc.weight": _heavy_tailed(40, 32, i) for i in (0, 1, 10, 11, 2, 3)}
    rep = specmetrics.esd(dict(sorted(state.items())))
    ax = plot_report(rep, ax=figure_axes)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.fc", "1.fc", "2.fc", "3.fc", "10.fc", "11.fc"]


def test_report_plot_many_layers_labels_blocks(figure_axes):
    state = {f"h.{i}.{leaf}.weight": _heavy_tailed(24, 16, 10 * i + j)
             for i in range(20) for j, leaf in enumerate(("a", "b", "c", "d"))}
    rep = specmetrics.esd(state)
    ax = plot_report(rep, ax=figure_axes)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == [str(i) for i in range(20)] and ax.get_xlabel() == "block"


def test_report_plot_nan_values_left_out(report, figure_axes):
    layers = {n: report[n] for n in report}
    layers["lm_head"] = _failed_layer(report["lm_head"])
    rep = SpectrumReport(layers, backend="torch")
    ax = plot_report(rep, ax=figure_axes)
    series = [ln for ln in ax.get_lines() if ln.get_label() == "alpha"][0]
    assert len(series.get_ydata()) == len(rep) - 1
    assert "1 not finite" in ax.get_title()


def test_report_plot_unknown_metric_raises(report):
    with pytest.raises(ParameterError, match="The 'metric' parameter of plot_report must be"):
        plot_report(report, metric="nope")


def test_report_plot_method_new_figure(report):
    ax = report.plot("entropy")
    try:
        assert isinstance(ax, Axes) and ax.get_ylabel() == "entropy"
    finally:
        plt.close(ax.figure)


# ---------------------------------------------------------------------------------------------
# files and global state


def test_save_report_plots_writes_pngs_without_pyplot(report, tmp_path):
    before = plt.get_fignums()
    files = save_report_plots(report, tmp_path / "plots")
    assert plt.get_fignums() == before  # Figure objects, nothing registered with pyplot
    assert files[0] == tmp_path / "plots" / "report_alpha.png"
    per_layer = sorted(p.name for p in (tmp_path / "plots" / "esd").iterdir())
    assert per_layer == sorted(f"{n}.png" for n in report)
    for f in files:
        assert f.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_save_report_plots_report_only(report, tmp_path):
    files = save_report_plots(report, tmp_path, metric="alpha_peak", layers=False)
    assert [f.name for f in files] == ["report_alpha_peak.png"]
    assert not (tmp_path / "esd").exists()


def test_no_global_matplotlib_state_changed(report, tmp_path):
    plt.get_backend()  # resolve the backend before the snapshot
    before = dict(matplotlib.rcParams)
    figs = plt.get_fignums()
    ax1 = plot_layer_spectrum(report["lm_head"])
    ax2 = plot_report(report)
    plot_layer_spectrum(report["lm_head"], ax=Figure().add_subplot())
    save_report_plots(report, tmp_path)
    plt.close(ax1.figure)
    plt.close(ax2.figure)
    after = dict(matplotlib.rcParams)
    changed = {k for k in before if before[k] != after[k]}
    assert not changed
    assert plt.get_fignums() == figs


def test_short_names():
    bert = ["encoder.layer.0.attention.self.query", "encoder.layer.0.attention.output.dense",
            "encoder.layer.0.intermediate.dense", "encoder.layer.0.output.dense", "pooler.dense"]
    assert short_names(bert) == {
        "encoder.layer.0.attention.self.query": "0.query",
        "encoder.layer.0.attention.output.dense": "0.attention.output.dense",
        "encoder.layer.0.intermediate.dense": "0.intermediate.dense",
        "encoder.layer.0.output.dense": "0.output.dense",
        "pooler.dense": "pooler.dense",
    }
    labels = short_names(["model.layers.3.self_attn.q_proj", "model.layers.3.mlp.down_proj", "lm_head"])
    assert labels == {"model.layers.3.self_attn.q_proj": "3.q_proj",
                      "model.layers.3.mlp.down_proj": "3.down_proj", "lm_head": "lm_head"}


def test_histogram_counts_every_positive_eigenvalue(report, figure_axes):
    """Log-spaced edges rebuilt from log10 can round past the extremes; none may be dropped."""
    layer = report["model.layers.0.mlp.up_proj"]
    ev = np.array([1.11961409e-07, 3.69284501e-05, 5.08352102e-05, 1.0e-3, 0.1, 2.0, 15.845404530337737])
    odd = LayerSpectrum(layer.name, layer.kind, layer.shape, layer.n_params, ev, layer.fits, layer.metrics)
    ax = plot_layer_spectrum(odd, ax=figure_axes)
    x, y = ax.patches[0].get_xy().T  # the outline of a density histogram: its area is 1
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    assert area == pytest.approx(1.0)
