"""Streaming statistics: the float-bit histogram, its accuracy, and the capture on tiny models."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import build, one_torch_thread, token_windows  # noqa: F401
from strategies import activation_samples, seeds, sparsity_targets
from specmetrics import ParameterError
from specmetrics.models import find_blocks
from specmetrics.activations import (ActivationStats, abs_threshold, activation_stats,
                                     find_sites, fraction_at_or_below, neg_threshold,
                                     pos_threshold, teal_signed_threshold)
from specmetrics.activations.capture import (float_histogram, histogram_cdf, histogram_edges,
                                             histogram_quantile, mantissa_bits,
                                             sample_token_index, site_stats)

M = 6  # the default resolution, bins=4096


# ----------------------------------------------------------------------------------------------
# the histogram, against an independent reference (frexp instead of bit manipulation)

def _reference_cells(x: np.ndarray, m: int) -> np.ndarray:
    counts = np.zeros((2, 256 << m), np.int64)
    for v in x.astype(np.float32):
        row = 1 if np.signbit(v) else 0
        a = abs(float(v))
        if not math.isfinite(a):
            cell = 255 << m
        elif a < 2.0 ** -126:
            cell = 0
        else:
            mant, exp = math.frexp(a)  # a = mant * 2**exp, mant in [0.5, 1)
            e = exp - 1
            j = int((a / 2.0 ** e - 1.0) * (1 << m))
            cell = ((e + 127) << m) + j
        counts[row, cell] += 1
    return counts


@settings(max_examples=30)
@given(seed=seeds, m=st.integers(0, 8), n=st.integers(1, 300))
def test_float_histogram_matches_a_frexp_reference(seed, m, n):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(n) * 10.0 ** rng.uniform(-30, 30, n)).astype(np.float32)
    x[rng.random(n) < 0.05] = 0.0
    x[rng.random(n) < 0.02] = -0.0
    x[rng.random(n) < 0.02] = np.inf
    x[rng.random(n) < 0.02] = np.nan
    x[rng.random(n) < 0.02] = np.float32(1e-40)  # subnormal
    got = float_histogram(torch.from_numpy(x), m).numpy()
    ref = _reference_cells(x, m)
    # zeros and subnormals share the e = 0 cells, non-finite values the e = 255 cells
    per = 1 << m
    for row in range(2):
        assert got[row, :per].sum() == ref[row, :per].sum()
        assert got[row, 255 * per:].sum() == ref[row, 255 * per:].sum()
        np.testing.assert_array_equal(got[row, per:255 * per], ref[row, per:255 * per])


@settings(max_examples=30)
@given(seed=seeds, m=st.integers(0, 8))
def test_edges_contain_the_values_of_their_cell(seed, m):
    rng = np.random.default_rng(seed)
    x = np.abs(rng.standard_normal(500) * 10.0 ** rng.uniform(-30, 30, 500)).astype(np.float32)
    edges = histogram_edges(m)
    counts = float_histogram(torch.from_numpy(x), m).numpy()[0, 1 << m:255 << m]
    per_cell = np.searchsorted(edges, x.astype(np.float64), side="right") - 1
    np.testing.assert_array_equal(np.bincount(per_cell, minlength=len(counts)), counts)
    assert edges[0] == 2.0 ** -126 and edges[-1] == 2.0 ** 128
    assert np.all(np.diff(edges) / edges[:-1] <= 2.0 ** -m + 1e-15)


@given(seed=seeds, s=sparsity_targets)
def test_histogram_quantile_and_cdf_are_inverse(seed, s):
    rng = np.random.default_rng(seed)
    edges = histogram_edges(2)
    counts = np.zeros(len(edges) - 1, np.int64)
    counts[rng.integers(100, 700, 20)] += rng.integers(0, 50, 20)
    if counts.sum() == 0:
        counts[300] = 1
    vmax = edges[np.nonzero(counts)[0].max() + 1] * 0.999
    t = histogram_quantile(counts, edges, s, vmax=vmax)
    assert histogram_cdf(counts, edges, t, vmax=vmax) == pytest.approx(s * counts.sum(),
                                                                       abs=1e-6 * counts.sum())


def test_mantissa_bits_checks_bins():
    assert mantissa_bits(4096) == 6 and mantissa_bits(64) == 0
    with pytest.raises(ParameterError, match=r"^The 'bins' parameter of activation_stats must be "
                                             r"64 times a power of two"):
        mantissa_bits(1000)


# ----------------------------------------------------------------------------------------------
# accuracy of the estimates against exact sample quantiles

def _cell_mass(values: np.ndarray, t: float, m: int) -> float:
    """Fraction of values in the cell holding t."""
    if t <= 0:
        return 0.0
    edges = histogram_edges(m)
    cell = np.searchsorted(edges, t, side="right") - 1
    a = np.abs(values.astype(np.float64))
    return float(((a >= edges[cell]) & (a < edges[cell + 1])).mean())


@given(sample=activation_samples(), s=sparsity_targets)
def test_estimates_are_in_the_cell_of_the_exact_quantile(sample, s):
    """The documented accuracy: relative error below 2**-m = 64 / bins."""
    x = sample.values
    stats = site_stats(torch.from_numpy(x).reshape(-1, 1))
    rel = 2.0 ** -M + 1e-6
    for est, exact in ((stats.abs_quantile(s), abs_threshold(x, s)),
                       (stats.pos_quantile(s), pos_threshold(x, s)),
                       (stats.neg_quantile(s), neg_threshold(x, s)),
                       (stats.teal_quantile(s), teal_signed_threshold(x, s))):
        if math.isnan(exact):
            assert math.isnan(est)
        else:
            assert est == pytest.approx(exact, rel=rel, abs=1e-30)
    # P(|x| <= t): error at most the mass of t's cell
    for t in (abs_threshold(x, s), float(np.median(np.abs(x))) * 1.003, 0.0):
        exact = fraction_at_or_below(x, t)
        assert abs(stats.fraction_at_or_below(t) - exact) <= _cell_mass(x, t, M) + 1e-12
    assert stats.count == x.size and stats.zeros == int((x == 0).sum())
    assert stats.n_pos == int((x > 0).sum()) and stats.n_neg == int((x < 0).sum())
    assert stats.mean_abs == pytest.approx(float(np.abs(x.astype(np.float64)).mean()), rel=1e-5)


def test_fraction_error_is_far_below_half_a_point_on_smooth_data():
    x = np.random.default_rng(0).standard_normal(1_000_000).astype(np.float32)
    stats = site_stats(torch.from_numpy(x).reshape(-1, 1))
    a = np.sort(np.abs(x))
    worst = 0.0
    for s in np.linspace(0.01, 0.99, 99):
        t = stats.abs_quantile(float(s))
        exact = np.searchsorted(a, t, side="right") / a.size
        worst = max(worst, abs(exact - s))
    assert worst < 2e-4  # 0.02 point; measured 1e-4 (in-cell sampling noise)


def test_site_stats_handles_zeros_and_non_finite_values():
    x = torch.tensor([[0.0, -0.0, 1.0, -2.0, float("inf"), float("nan"), 3.0, 1e-40]])
    stats = site_stats(x)
    assert stats.count == 6 and stats.zeros == 3 and stats.non_finite == 2
    assert stats.abs_quantile(0.5) == 0.0
    assert stats.fraction_at_or_below(0.0) == pytest.approx(0.5)
    assert stats.abs_quantile(1.0) == pytest.approx(3.0)
    assert stats.pos_quantile(1.0) == pytest.approx(3.0)
    assert stats.neg_quantile(0.5) == pytest.approx(2.0, rel=2.0 ** -M)


# ----------------------------------------------------------------------------------------------
# the capture on tiny models

def _plain_forward_sites(model, ids, sites):
    """Every site's full tensor from an ordinary forward pass with hooks."""
    got = {name: [] for name in sites}
    handles = []
    for name, site in sites.items():
        def hook(_m, args, kwargs, output, name=name, site=site):
            x = output if site.hook == "output" else (args[0] if args else
                                                      next(iter(kwargs.values())))
            if isinstance(x, tuple):
                x = x[0]
            got[name].append(x.detach().reshape(1, -1, x.shape[-1]).clone())  # OPT: (L, w)
        handles.append(model.get_submodule(site.module).register_forward_hook(hook,
                                                                              with_kwargs=True))
    try:
        with torch.no_grad():
            for i in range(ids.shape[0]):
                model(ids[i:i + 1])
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v, dim=0) for n, v in got.items()}  # (nsamples, seqlen, width)


@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt"])
def test_capture_matches_hooks_on_a_plain_forward(arch, one_torch_thread):  # noqa: F811
    model = build(arch)
    ids = token_windows(3, 16)
    reference_out = model(ids).logits
    stats = activation_stats(model, None, ids, nsamples=3, seqlen=16, reservoir=20, seed=3)
    sites = find_sites(model)
    assert list(stats) == list(sites)
    full = _plain_forward_sites(model, ids, sites)
    index = stats.token_index
    assert index.shape == (20, 2)
    for name, stat in stats.items():
        x = full[name]
        assert stat.count == x.numel() and stat.site == sites[name]
        # the sample: the same tokens for every site, in token_index order
        torch.testing.assert_close(stat.sample, x[index[:, 0], index[:, 1]], rtol=1e-4,
                                   atol=1e-5)
        for s in (0.1, 0.5, 0.9):
            assert stat.abs_quantile(s) == pytest.approx(abs_threshold(x, s),
                                                         rel=2.0 ** -M + 1e-3)
        assert stat.mean_abs == pytest.approx(float(x.abs().mean()), rel=1e-4)
    # the model is left as it was: same outputs, no hooks
    torch.testing.assert_close(model(ids).logits, reference_out)
    assert not any(m._forward_hooks for m in model.modules())
    assert not any("forward" in b.__dict__ for b in find_blocks(model).blocks)


def test_sample_is_seeded_and_uniform_without_replacement():
    a = sample_token_index(8, 32, 50, seed=0)
    assert torch.equal(a, sample_token_index(8, 32, 50, seed=0))
    assert not torch.equal(a, sample_token_index(8, 32, 50, seed=1))
    flat = a[:, 0] * 32 + a[:, 1]
    assert len(set(flat.tolist())) == 50 and torch.all(flat[1:] > flat[:-1])
    everything = sample_token_index(2, 4, 100, seed=0)
    assert everything.tolist() == [[i, j] for i in range(2) for j in range(4)]


def test_site_selection_and_to_frame(one_torch_thread):  # noqa: F811
    model = build("llama")
    ids = token_windows(2, 8)
    stats = activation_stats(model, None, ids, nsamples=2, seqlen=8, sites=["silu_gate",
                                                                       "model.layers.0.qkv"],
                             reservoir=0)
    assert list(stats) == ["model.layers.0.qkv", "model.layers.0.silu_gate",
                           "model.layers.1.silu_gate"]
    assert isinstance(stats, ActivationStats) and stats["model.layers.0.qkv"].sample.shape == (0,
                                                                                              64)
    frame = stats.to_frame(quantiles=(0.25, 0.5))
    assert {"kind", "block", "count", "zero_fraction", "pos_fraction", "mean_abs", "abs_q0.5",
            "pos_q0.25", "neg_q0.5", "teal_q0.5"} <= set(frame.columns)
    assert frame.loc["model.layers.1.silu_gate", "count"] == 2 * 8 * 128
    assert stats.settings["nsamples"] == 2 and stats.settings["bins"] == 4096
    with pytest.raises(ParameterError, match="'sites' parameter of activation_stats"):
        activation_stats(model, None, ids, nsamples=2, seqlen=8, sites="attention")
    with pytest.raises(ParameterError, match="'reservoir' parameter of activation_stats"):
        activation_stats(model, None, ids, nsamples=2, seqlen=8, reservoir=-1)


def test_plot_draws_one_line_per_kind(one_torch_thread):  # noqa: F811
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    stats = activation_stats(build("llama"), None, token_windows(2, 8), nsamples=2, seqlen=8,
                             sites="qkv,down", reservoir=0)
    ax = stats.plot(s=0.5)
    assert [line.get_label() for line in ax.get_lines()] == ["qkv", "down"]
    plt.close(ax.figure)
    _, given = plt.subplots()
    assert stats.plot(given, sites="down") is given
    assert [line.get_label() for line in given.get_lines()] == ["down"]
    with pytest.warns(DeprecationWarning, match="plot"):
        old = stats.plot(0.5, kinds=["qkv"])
    assert [line.get_label() for line in old.get_lines()] == ["qkv"]
    plt.close("all")
