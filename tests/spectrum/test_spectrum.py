"""Eigenvalues of W^T W (specmetrics.spectrum.eigenvalues) and the esd() pipeline: planted spectra
recovered, gram/svd/batched/dtype agreement, invariances, and degenerate matrices handled
without crashing the loop over layers."""
from __future__ import annotations

import math
import re
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from strategies import planted_spectrum_matrices, seeds, weight_matrices

import specmetrics
from specmetrics import DegenerateSpectrumWarning, ParameterError, esd, fit_power_law
from specmetrics.spectrum import eigenvalues

PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of \w+ must be .+\. Got .+ instead\.$")
NUMERIC = ("alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "alpha_peak", "alpha_mid", "norm",
           "spectral_norm", "stable_rank", "matrix_rank", "entropy", "alpha_weighted", "log_alpha_norm",
           "N", "M", "num_evals")


def _well_conditioned(rng: np.random.Generator, m: int, wide: bool) -> torch.Tensor:
    """Gaussian with N >= 2.5 M: condition number of W below ~(1 + 0.64) / (1 - 0.64) ~ 5."""
    n = int(2.5 * m) + int(rng.integers(0, m))
    w = rng.standard_normal((n, m))
    return torch.from_numpy(w.T.copy() if wide else w)


# ---------------------------------------------------------------------------
# eigenvalues()
# ---------------------------------------------------------------------------


@settings(max_examples=25)
@given(st.integers(5, 120), st.booleans(), seeds)
def test_gram_equals_svd_on_well_conditioned_matrices(m, wide, seed):
    w = _well_conditioned(np.random.default_rng(seed), m, wide)
    gram = eigenvalues(w, method="gram")
    svd = eigenvalues(w, method="svd")
    assert gram.shape == svd.shape == (m,)
    assert gram.dtype == torch.float64
    torch.testing.assert_close(gram, svd, rtol=1e-10, atol=0)
    assert bool((gram[1:] >= gram[:-1]).all()) and bool((gram >= 0).all())


@settings(max_examples=25)
@given(weight_matrices(min_side=2, max_side=90, dtype=np.float64), st.sampled_from(["gram", "svd"]))
def test_transpose_has_the_same_eigenvalues(w, method):
    """n < m and n > m: W^T W and W W^T share their min(n, m) nonzero eigenvalues."""
    a = eigenvalues(torch.from_numpy(w), method=method)
    b = eigenvalues(torch.from_numpy(w.T.copy()), method=method)
    assert a.shape == b.shape == (min(w.shape),)
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12 * float(a[-1]))


@settings(max_examples=15)
@given(st.integers(1, 6), st.integers(3, 40), st.integers(3, 40), seeds, st.sampled_from(["gram", "svd"]))
def test_batched_equals_one_by_one(batch, n, m, seed, method):
    w = torch.from_numpy(np.random.default_rng(seed).standard_t(3.0, (batch, 2, n, m)))
    together = eigenvalues(w, method=method)
    assert together.shape == (batch, 2, min(n, m))
    for b in range(batch):
        for k in range(2):
            alone = eigenvalues(w[b, k], method=method)
            torch.testing.assert_close(together[b, k], alone, rtol=1e-12, atol=1e-12 * float(alone[-1]))


def test_eigenvalues_rejects_unknown_method():
    with pytest.raises(ParameterError, match=PARAM_MESSAGE):
        eigenvalues(torch.ones(3, 3), method="qr")


#: The float32 tolerance of the alpha fits (eigenvalues in float32, fits in float64).
#: Measured on 60 matrices of 512 x 1024 and 1024 x 512 (Student-t with 2-5 degrees of freedom,
#: symmetric Pareto with index 2-5, Gaussian, Gaussian plus 8 spikes; scaled by 0.01-3): the
#: largest relative difference from float64 was 5.5e-5 for "ks" (a tail of ~20 eigenvalues),
#: 6.4e-6 for "peak"/"peak_corrected" and 1.9e-6 for "mid". The Gram route in float32 resolves
#: eigenvalues only down to ~M * 1.2e-7 * lambda_max: matrices whose bulk lies below that
#: (e.g. Cauchy entries, lambda_max / lambda_bulk ~ 1e6) lose their bulk in float32 — use
#: method="svd" (float32 SVD stayed within 1e-5 there) or float64 for them.
FLOAT32_ALPHA_RTOL = 1e-3


def _realistic(seed: int, shape: tuple) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    kind = seed % 4
    if kind == 0:
        w = rng.standard_t(rng.uniform(2.0, 5.0), shape)
    elif kind == 1:
        w = rng.pareto(rng.uniform(2.0, 5.0), shape) * rng.choice([-1.0, 1.0], shape)
    elif kind == 2:
        w = rng.standard_normal(shape)
    else:
        spikes = (rng.standard_normal((shape[0], 8)) * rng.uniform(0.05, 0.3, 8)) @ rng.standard_normal((8, shape[1]))
        w = rng.standard_normal(shape) * 0.02 + 0.1 * spikes
    return torch.from_numpy(w * rng.uniform(0.01, 3.0)).float()


def _check_float32(seed: int, shape: tuple) -> None:
    w = _realistic(seed, shape)
    r64 = esd(w, dtype=torch.float64)["weight"]
    r32 = esd(w, dtype=torch.float32)["weight"]
    ev64, ev32 = eigenvalues(w.double()), eigenvalues(w).double()
    # the tail (top tenth) is accurate to a few float32 ulps of lambda_max
    top = slice(-len(ev64) // 10, None)
    torch.testing.assert_close(ev32[top], ev64[top], rtol=1e-4, atol=0)
    for col in ("alpha", "alpha_peak", "alpha_mid"):
        a64, a32 = r64.metrics[col], r32.metrics[col]
        assert abs(a32 - a64) <= FLOAT32_ALPHA_RTOL * abs(a64), (col, a64, a32)
    for policy in ("ks", "peak_corrected", "mid"):
        a64 = fit_power_law(ev64, xmin=policy).alpha
        a32 = fit_power_law(ev32, xmin=policy).alpha
        assert abs(a32 - a64) <= FLOAT32_ALPHA_RTOL * abs(a64), (policy, a64, a32)


@pytest.mark.parametrize("seed, shape", [(0, (512, 1024)), (1, (1024, 512)), (2, (512, 1024)), (3, (1024, 512))])
def test_float32_alpha_within_tolerance(seed, shape):
    _check_float32(seed, shape)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(4, 40))
def test_float32_alpha_within_tolerance_many(seed):
    _check_float32(seed, (512, 1024) if seed % 2 else (1024, 512))


# ---------------------------------------------------------------------------
# planted spectra through esd()
# ---------------------------------------------------------------------------


def _ks_tolerance(alpha: float, n_true: int, n_fit: int) -> float:
    return 5.0 * (alpha - 1.0) / math.sqrt(max(min(n_true, n_fit), n_true / 10))


@settings(max_examples=6, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(planted_spectrum_matrices(min_m=150, max_m=300))
def test_esd_recovers_planted_power_law(planted):
    """W = U diag(s) V^T with s**2 a Pareto tail over a bulk: esd() returns those eigenvalues and
    recovers alpha (within 5 standard errors of the tail it keeps)."""
    layer = esd(torch.from_numpy(planted.matrix))["weight"]
    expected = np.sort(planted.eigenvalues)
    np.testing.assert_allclose(layer.eigenvalues, expected, rtol=1e-9, atol=1e-12 * expected[-1] * len(expected))
    fit = layer.fit
    assert fit.success
    assert fit.alpha == pytest.approx(fit_power_law(planted.eigenvalues).alpha, rel=1e-6)
    assert abs(fit.alpha - planted.alpha) <= _ks_tolerance(planted.alpha, planted.n_tail, fit.n_tail)
    assert layer.metrics["M"] == len(expected) and layer.metrics["N"] == max(planted.matrix.shape)


@settings(max_examples=5, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(planted_spectrum_matrices(min_m=150, max_m=300, pure=True))
def test_esd_recovers_pure_pareto_singular_values(planted):
    """All M eigenvalues from one Pareto law: alpha recovered, fixed xmin at the planted bound too."""
    w = torch.from_numpy(planted.matrix)
    layer = esd(w, xmin=planted.xmin * (1 - 1e-9))["weight"]
    m = len(planted.eigenvalues)
    assert layer.fit.n_tail == m
    assert abs(layer.alpha - planted.alpha) <= 4.5 * (planted.alpha - 1.0) / math.sqrt(m)
    ks = esd(w)["weight"].fit
    assert abs(ks.alpha - planted.alpha) <= _ks_tolerance(planted.alpha, m, ks.n_tail)


# ---------------------------------------------------------------------------
# 4. invariances
# ---------------------------------------------------------------------------

SCALE_FREE = ("alpha", "alpha_mid", "D", "num_pl_spikes", "stable_rank", "matrix_rank", "entropy", "N", "M")


@settings(max_examples=15)
@given(weight_matrices(min_side=20, max_side=120, dtype=np.float64, min_aspect=3.0), st.floats(0.1, 10.0))
def test_alpha_is_invariant_to_scaling(w, c):
    """esd(c W): alpha and the other scale-free columns unchanged; eigenvalues scale by c**2.

    N >= 3 M keeps the smallest eigenvalue above ~0.18 N var(w), far above the 1e-5 floor for
    c >= 0.1. ("alpha_peak" is not scale-invariant by construction: its lower bound
    log10(0.95 p) mixes units.)
    """
    t = torch.from_numpy(w)
    a = esd(t)["weight"]
    b = esd(t * c)["weight"]
    assert a.eigenvalues[0] * min(c, 1.0) ** 2 > 1e-4
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues * c**2, rtol=1e-9)
    for col in SCALE_FREE:
        assert b.metrics[col] == pytest.approx(a.metrics[col], rel=1e-9, nan_ok=True), col
    assert b.metrics["xmin"] == pytest.approx(a.metrics["xmin"] * c**2, rel=1e-9, nan_ok=True)
    assert b.metrics["norm"] == pytest.approx(a.metrics["norm"] * c**2, rel=1e-12)
    corrected_a = fit_power_law(a.eigenvalues, xmin="peak_corrected", warn=False)
    corrected_b = fit_power_law(b.eigenvalues, xmin="peak_corrected", warn=False)
    if corrected_a.success:  # the histogram moves with the data: same window up to bin-edge rounding
        assert corrected_b.alpha == pytest.approx(corrected_a.alpha, rel=1e-9)


@settings(max_examples=15)
@given(weight_matrices(min_side=10, max_side=150, dtype=np.float64))
def test_alpha_is_invariant_to_transposition(w):
    a = esd(torch.from_numpy(w))["weight"]
    b = esd(torch.from_numpy(w.T.copy()))["weight"]
    np.testing.assert_allclose(b.eigenvalues, a.eigenvalues, rtol=1e-9, atol=1e-12 * a.eigenvalues[-1])
    for col in NUMERIC:
        assert b.metrics[col] == pytest.approx(a.metrics[col], rel=1e-9, nan_ok=True), col


@settings(max_examples=8, deadline=None)
@given(seeds, st.randoms(use_true_random=False))
def test_layer_order_does_not_change_per_name_results(seed, random):
    """A ModuleDict in a permuted order (several layers of one shape, batched together) gives the
    same result for every name, and the report follows the model's order."""
    torch.manual_seed(seed % 2**31)
    shapes = [(40, 30), (40, 30), (30, 40), (64, 16), (40, 30), (16, 64)]
    layers = [(f"layer{i}", torch.nn.Linear(m, n).double()) for i, (n, m) in enumerate(shapes)]
    shuffled = list(layers)
    random.shuffle(shuffled)
    a = esd(torch.nn.ModuleDict(OrderedDict(layers)))
    b = esd(torch.nn.ModuleDict(OrderedDict(shuffled)), batch_bytes=2 * 40 * 30 * 8)  # other batches too
    assert list(a) == [name for name, _ in layers]
    assert list(b) == [name for name, _ in shuffled]
    for name in a:
        np.testing.assert_allclose(b[name].eigenvalues, a[name].eigenvalues, rtol=1e-12, atol=0)
        for col in NUMERIC:
            assert b[name].metrics[col] == pytest.approx(a[name].metrics[col], rel=1e-12, nan_ok=True)


# ---------------------------------------------------------------------------
# 5. degenerate matrices
# ---------------------------------------------------------------------------


def _no_sentinels(report) -> None:
    frame = report.to_frame()
    numeric = frame.select_dtypes("number")
    assert not (numeric == -1).any().any(), "a -1 sentinel in the report"


@pytest.mark.parametrize(
    "weight, why",
    [
        (torch.zeros(30, 20), "too few"),
        (torch.outer(torch.arange(1.0, 31.0), torch.arange(1.0, 21.0)), "too few"),  # rank 1
        (torch.ones(30, 20), "too few"),  # rank 1, constant
    ],
    ids=["zero", "rank1", "ones"],
)
def test_degenerate_matrix_fails_cleanly(weight, why):
    with pytest.warns(DegenerateSpectrumWarning, match="alpha is NaN"):
        report = esd(weight)
    layer = report["weight"]
    assert not layer.fit.success and why in layer.fit.message
    assert math.isnan(layer.alpha) and math.isnan(layer.metrics["alpha_peak"]) and math.isnan(layer.metrics["alpha_mid"])
    assert layer.metrics["status"] == "failed" and layer.metrics["warning"] == "failed"
    _no_sentinels(report)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_one_non_finite_layer_does_not_stop_the_others(bad, method):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 40), torch.nn.Linear(40, 50), torch.nn.Linear(50, 40), torch.nn.Linear(40, 50))
    with torch.no_grad():
        net[1].weight[3, 7] = bad  # net[1] and net[3] share a shape: one batch
    with pytest.warns(DegenerateSpectrumWarning, match=r"failed on 1 matrices \(1\)"):
        report = esd(net, method=method)
    assert list(report) == ["0", "1", "2", "3"]
    broken = report["1"]
    assert math.isnan(broken.alpha) and not broken.fit.success
    assert "NaN or inf" in broken.fit.message
    assert broken.metrics["status"] == "failed"
    assert math.isnan(broken.metrics["norm"])
    for name in ("0", "2", "3"):
        assert report[name].fit.success and math.isfinite(report[name].alpha)
    clean = esd(net[3].weight.detach(), method=method)["weight"]
    assert report["3"].alpha == pytest.approx(clean.alpha, rel=1e-12)
    _no_sentinels(report)


def test_small_matrices_are_skipped_with_a_reason():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 40), torch.nn.Linear(40, 30))
    report = esd(net)
    assert list(report) == ["2"]
    assert set(report.skipped) == {"0", "1"}
    assert "min_evals" in report.skipped["0"] and "M*rf=2" in report.skipped["0"]
    assert list(esd(net, min_evals=2)) == ["0", "1", "2"]
    assert list(esd(torch.randn(2, 2))) == [] and "weight" in esd(torch.randn(2, 2)).skipped
    assert "weight" in esd(torch.empty(0, 30)).skipped


def test_large_matrices_are_skipped_with_a_reason():
    report = esd({"big.weight": torch.randn(60, 20), "wide.weight": torch.randn(20, 30)}, max_n=50, max_evals=15)
    assert "N=60 > max_n=50" == report.skipped["big"]
    assert "max_evals" in report.skipped["wide"]


def test_half_precision_weights_are_analysed():
    w = torch.randn(60, 40, generator=torch.Generator().manual_seed(0))
    ref = esd(w.double())["weight"]
    for dtype in (torch.float16, torch.bfloat16):
        rounded = w.to(dtype)
        got = esd(rounded)["weight"]
        assert got.alpha == pytest.approx(esd(rounded.double())["weight"].alpha, rel=1e-12)
        assert got.fit.success and abs(got.alpha - ref.alpha) < 0.5


@pytest.mark.parametrize("dtype", [torch.int64, torch.int8, torch.bool])
def test_integer_weights_raise_parameter_error(dtype):
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        esd(torch.ones(30, 20, dtype=dtype))
    assert "floating-point" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"dtype": torch.float16},
        {"method": "qr"},
        {"backend": "numpy"},
        {"distribution": "lognormal"},
        {"min_evals": 0},
        {"max_n": 2.5},
        {"batch_bytes": -1},
        {"seed": "0"},
        {"seed": True},
        {"xmin": "median"},
    ],
)
def test_bad_esd_parameters_raise_parameter_error(kwargs):
    with pytest.raises(ParameterError) as info:
        esd(torch.randn(30, 20), **kwargs)
    assert PARAM_MESSAGE.match(str(info.value)), str(info.value)


def _heavy_tailed(n: int, m: int, seed: int) -> torch.Tensor:
    """A matrix whose squared singular values follow a Pareto tail (alpha = 3): a trained-like
    ESD with a long power-law tail."""
    g = torch.Generator().manual_seed(seed)
    k = min(n, m)
    u, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
    lam = (1.0 - torch.rand(k, generator=g, dtype=torch.float64)) ** (-1 / 2.0)
    return (u * lam.sqrt()) @ v.T


def test_esd_does_not_warn_on_healthy_models():
    net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 32))
    with torch.no_grad():
        net[0].weight.copy_(_heavy_tailed(128, 64, 0))
        net[1].weight.copy_(_heavy_tailed(32, 128, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = esd(net)
    assert all(layer.fit.success for layer in report.values())
    assert isinstance(report, specmetrics.SpectrumReport)
