"""FARMS (fixed-aspect-ratio submatrix ESD): the windows of the paper's rule, the pooled
spectrum against an explicit slicing oracle, planted spectra recovered, the aspect-ratio
dependence of the ESD removed, and the boundary checks.

The oracle below re-derives the window positions from the rule as the paper's code states it
(``fixed_sampling``: step ``max(1, (L - w) // (k - 1))``, ``min(k, (L - w) // step + 1)``
positions) one dimension at a time and takes ``svdvals(S)²`` of each slice; none of the
module's batching or Gram route.
"""
from __future__ import annotations

import math
import re
import warnings

import numpy as np
import pytest
import torch

from specmetrics import DegenerateSpectrumWarning, ParameterError
from specmetrics.spectrum import eigenvalues, fit_power_law
from specmetrics.spectrum.farms import (FARMS_ASPECT_RATIO, FARMS_WINDOW, FARMS_WINDOWS_PER_DIM,
                                        farms_alpha, farms_eigenvalues, farms_windows)

PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of \w+ must be .+\. Got .+ instead\.$")


def oracle_eigenvalues(w: torch.Tensor, p: int, q: int, k: int) -> torch.Tensor:
    def starts(length, size):
        if k == 1:
            return [0]
        step = max(1, (length - size) // (k - 1))
        return [i * step for i in range(min(k, max(1, (length - size) // step + 1)))]

    out = []
    for r in starts(w.shape[0], p):
        for c in starts(w.shape[1], q):
            out.append(torch.linalg.svdvals(w[r:r + p, c:c + q].double()) ** 2)
    return torch.sort(torch.cat(out)).values


def gaussian(rows, cols, seed=0):
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed),
                       dtype=torch.float64)


def orthogonal(n, g):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


# --- the windows ---------------------------------------------------------------------------------

def test_defaults_are_the_papers_llm_setting():
    assert (FARMS_WINDOW, FARMS_ASPECT_RATIO, FARMS_WINDOWS_PER_DIM) == (2000, 1.0, 15)
    # LLaMA-7B q_proj: 2000 x 2000 windows, 15 positions per dimension with step 2096 // 14
    p, q, starts = farms_windows((4096, 4096))
    assert (p, q, len(starts)) == (2000, 2000, 225)
    assert sorted({r for r, _ in starts}) == [149 * i for i in range(15)]
    # a SmolLM2 MLP matrix (1536 x 576): 576 x 576 windows, 15 along the rows, 1 along the cols
    p, q, starts = farms_windows((1536, 576))
    assert (p, q) == (576, 576)
    assert starts == tuple((68 * i, 0) for i in range(15))


@pytest.mark.parametrize("shape, kwargs, expected", [
    # hand-computed: rows (10 - 4) // 2 = 3 -> 0, 3, 6; cols (30 - 4) // 2 = 13 -> 0, 13, 26
    ((10, 30), dict(window=4, windows_per_dim=3),
     (4, 4, [(r, c) for r in (0, 3, 6) for c in (0, 13, 26)])),
    # little room: step max(1, 2 // 4) = 1, min(5, 2 // 1 + 1) = 3 positions
    ((6, 8), dict(window=6, windows_per_dim=5), (6, 6, [(0, 0), (0, 1), (0, 2)])),
    # one position per dimension
    ((50, 70), dict(window=20, windows_per_dim=1), (20, 20, [(0, 0)])),
    # aspect ratio 2: 5 x 10 windows; cols (40 - 10) // 2 = 15 -> 0, 15, 30
    ((12, 40), dict(window=5, aspect_ratio=2.0, windows_per_dim=3),
     (5, 10, [(r, c) for r in (0, 3, 6) for c in (0, 15, 30)])),
    # q = int(p · Q) would exceed the columns: p shrinks to int(9 / 2) = 4
    ((20, 9), dict(window=8, aspect_ratio=2.0, windows_per_dim=2),
     (4, 8, [(r, c) for r in (0, 16) for c in (0, 1)])),
    # int() floors the columns as the reference does: int(7 · 1.5) = 10
    ((30, 30), dict(window=7, aspect_ratio=1.5, windows_per_dim=2),
     (7, 10, [(r, c) for r in (0, 23) for c in (0, 20)])),
])
def test_windows_follow_the_papers_rule(shape, kwargs, expected):
    p, q, starts = farms_windows(shape, **kwargs)
    assert (p, q, list(starts)) == (expected[0], expected[1], expected[2])
    rows, cols = shape
    assert all(0 <= r <= rows - p and 0 <= c <= cols - q for r, c in starts)


# --- the pooled spectrum -------------------------------------------------------------------------

@pytest.mark.parametrize("shape, window, q_ratio, k", [
    ((40, 96), 24, 1.0, 4), ((96, 40), 24, 1.0, 4), ((33, 70), 10, 2.0, 3), ((64, 64), 64, 1.0, 5),
    ((50, 120), 16, 0.5, 6),
])
@pytest.mark.parametrize("method", ["gram", "svd"])
def test_pooled_spectrum_matches_the_slicing_oracle(shape, window, q_ratio, k, method):
    w = gaussian(*shape, seed=3)
    p, q, _ = farms_windows(shape, window=window, aspect_ratio=q_ratio, windows_per_dim=k)
    got = farms_eigenvalues(w, window=window, aspect_ratio=q_ratio, windows_per_dim=k,
                            method=method)
    want = oracle_eigenvalues(w, p, q, k)
    assert got.dtype == torch.float64 and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want[-1]))


def test_square_matrix_within_the_window_is_its_own_esd():
    w = gaussian(80, 80, seed=1) @ torch.diag(torch.linspace(0.2, 6.0, 80, dtype=torch.float64))
    torch.testing.assert_close(farms_eigenvalues(w), eigenvalues(w))
    fit = farms_alpha(w, warn=False)
    plain = fit_power_law(eigenvalues(w), xmin="peak", thresh=None, warn=False)
    assert fit == plain


def test_transposition_gives_the_same_pooled_spectrum():
    w = gaussian(45, 110, seed=2)
    torch.testing.assert_close(farms_eigenvalues(w, window=20, windows_per_dim=5),
                               farms_eigenvalues(w.T, window=20, windows_per_dim=5))


def test_planted_block_spectra_are_recovered_and_alpha_loses_the_shape():
    """A p x 4p matrix made of 4 independently rotated p x p blocks with the same planted
    singular values: windows aligned with the blocks give back the planted spectrum 4 times,
    so its FARMS alpha is the fit of the planted spectrum, whereas the whole matrix's own ESD
    (a sum of four rotated copies) is a different spectrum."""
    g = torch.Generator().manual_seed(0)
    p, k = 96, 4
    lam = (1 - torch.rand(p, generator=g, dtype=torch.float64)) ** (-1 / 2.0)  # density x^-3
    blocks = [orthogonal(p, g) @ torch.diag(lam.sqrt()) @ orthogonal(p, g).T for _ in range(k)]
    wide = torch.cat(blocks, dim=1)
    assert farms_windows(wide.shape, window=p, windows_per_dim=k)[2] == tuple(
        (0, p * i) for i in range(k))
    pooled = farms_eigenvalues(wide, window=p, windows_per_dim=k)
    torch.testing.assert_close(pooled, torch.sort(lam.repeat(k)).values, rtol=1e-8, atol=0)
    fit = farms_alpha(wide, window=p, windows_per_dim=k, warn=False)
    planted = fit_power_law(lam.repeat(k), xmin="peak", thresh=None, warn=False)
    assert fit.success and fit.n_tail == planted.n_tail
    assert fit.alpha == pytest.approx(planted.alpha, rel=1e-9)
    assert not torch.allclose(eigenvalues(wide), torch.sort(lam).values * k, rtol=0.05)


def _ks_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = np.sort(a.numpy()), np.sort(b.numpy())
    grid = np.concatenate([a, b])
    fa = np.searchsorted(a, grid, side="right") / len(a)
    fb = np.searchsorted(b, grid, side="right") / len(b)
    return float(np.max(np.abs(fa - fb)))


def test_fixed_aspect_ratio_removes_the_shape_dependence_of_the_esd():
    """i.i.d. Gaussian matrices of aspect ratio 1, 4 and 1/4: their own ESDs (scaled by their
    mean) are Marchenko-Pastur laws of different Q, far apart; their FARMS spectra are all
    pooled from 48 x 48 windows, one law (Q = 1), and agree."""
    shapes = [(192, 192), (96, 384), (384, 96)]
    plain = [eigenvalues(gaussian(*s, seed=i)) for i, s in enumerate(shapes)]
    farms = [farms_eigenvalues(gaussian(*s, seed=i), window=48, windows_per_dim=6)
             for i, s in enumerate(shapes)]
    plain = [e / e.mean() for e in plain]
    farms = [e / e.mean() for e in farms]
    assert _ks_distance(plain[0], plain[1]) > 0.2
    assert _ks_distance(plain[0], plain[2]) > 0.2
    assert _ks_distance(farms[0], farms[1]) < 0.06
    assert _ks_distance(farms[0], farms[2]) < 0.06
    assert _ks_distance(farms[1], farms[2]) < 0.06


def test_batching_dtype_and_device_options():
    w = gaussian(60, 130, seed=4).float()
    whole = farms_eigenvalues(w, window=30, windows_per_dim=4)
    tiny = farms_eigenvalues(w, window=30, windows_per_dim=4, batch_bytes=1)  # one by one
    torch.testing.assert_close(tiny, whole, rtol=0, atol=0)
    single = farms_eigenvalues(w, window=30, windows_per_dim=4, dtype="float32", device="cpu")
    assert single.dtype == torch.float32
    torch.testing.assert_close(single.double(), whole, rtol=1e-4, atol=1e-4 * float(whole[-1]))
    half = farms_eigenvalues(w.half(), window=30, windows_per_dim=4)
    assert half.dtype == torch.float64 and half.shape == whole.shape


def test_farms_alpha_passes_its_fit_options_through():
    g = torch.Generator().manual_seed(5)
    w = torch.randn(256, 64, generator=g, dtype=torch.float64) @ torch.diag(
        torch.rand(64, generator=g, dtype=torch.float64) ** -1.5)
    evals = farms_eigenvalues(w, window=32, windows_per_dim=4)
    for xmin in ("peak", "ks", "mid"):
        assert farms_alpha(w, window=32, windows_per_dim=4, xmin=xmin, warn=False) == \
            fit_power_law(evals, xmin=xmin, thresh=None, warn=False)
    assert farms_alpha(w, window=32, windows_per_dim=4, thresh=1e-5, warn=False) == \
        fit_power_law(evals, xmin="peak", thresh=1e-5, warn=False)


def test_non_finite_weight_fails_the_fit_cleanly():
    w = gaussian(40, 40)
    w[3, 5] = math.nan
    evals = farms_eigenvalues(w, window=20, windows_per_dim=2)
    assert evals.shape == (4 * 20,) and bool(torch.isnan(evals).all())
    with pytest.warns(DegenerateSpectrumWarning):
        fit = farms_alpha(w, window=20, windows_per_dim=2)
    assert not fit.success and math.isnan(fit.alpha)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert not farms_alpha(w, window=20, windows_per_dim=2, warn=False).success


# --- boundary checks -----------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, name", [
    (dict(window=0), "window"), (dict(window=2.5), "window"), (dict(window=True), "window"),
    (dict(aspect_ratio=0), "aspect_ratio"), (dict(aspect_ratio=-1.0), "aspect_ratio"),
    (dict(aspect_ratio=math.inf), "aspect_ratio"), (dict(aspect_ratio="1"), "aspect_ratio"),
    (dict(aspect_ratio=0.01), "aspect_ratio"),  # int(8 · 0.01) = 0 columns
    (dict(windows_per_dim=0), "windows_per_dim"), (dict(windows_per_dim=None), "windows_per_dim"),
])
def test_window_options_are_checked(kwargs, name):
    opts = {**dict(window=8, windows_per_dim=2), **kwargs}
    for call in (lambda: farms_windows((16, 16), **opts),
                 lambda: farms_eigenvalues(gaussian(16, 16), **opts),
                 lambda: farms_alpha(gaussian(16, 16), **opts)):
        with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
            call()
        assert info.value.parameter == name


@pytest.mark.parametrize("shape", [(4,), (0, 3), (3, -1), (2.0, 3), "8x8", (True, 3), None])
def test_farms_windows_rejects_bad_shapes(shape):
    with pytest.raises(ParameterError, match="'shape' parameter of farms_windows"):
        farms_windows(shape)
    assert farms_windows((np.int64(8), np.int32(8)), window=4) == farms_windows((8, 8), window=4)


@pytest.mark.parametrize("weight", [torch.randn(8), torch.randn(2, 3, 4), torch.ones(4, 4,
                                    dtype=torch.int64), torch.empty(0, 4), np.ones((4, 4)),
                                    torch.empty(4, 4, device="meta")])
def test_bad_weights_are_rejected(weight):
    for func in (farms_eigenvalues, farms_alpha):
        with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
            func(weight)
        assert info.value.parameter == "weight"


@pytest.mark.parametrize("kwargs, name", [
    (dict(dtype=torch.float16), "dtype"), (dict(dtype="double64"), "dtype"),
    (dict(method="qr"), "method"), (dict(device="banana"), "device"),
    (dict(batch_bytes=0), "batch_bytes"),
])
def test_compute_options_are_checked(kwargs, name):
    for func in (farms_eigenvalues, farms_alpha):
        with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
            func(gaussian(16, 16), window=8, **kwargs)
        assert info.value.parameter == name


@pytest.mark.parametrize("kwargs, name", [
    (dict(xmin="peaky"), "xmin"), (dict(xmin=-1.0), "xmin"), (dict(thresh=-1.0), "thresh"),
    (dict(thresh=math.nan), "thresh"), (dict(warn="no"), "warn"), (dict(warn=1), "warn"),
])
def test_fit_options_are_checked(kwargs, name):
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        farms_alpha(gaussian(16, 16), window=8, **kwargs)
    assert info.value.parameter == name
