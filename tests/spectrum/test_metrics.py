"""Norm metrics (specmetrics.metrics.norm_metrics / matrix_rank / matrix_entropy) against
matrices with known singular values, hand-computed cases and degenerate spectra.

Definitions (WeightWatcher's, reference §1): lambda = s**2; norm = sum lambda = ||W||_F**2;
spectral_norm = lambda_max; stable_rank = norm / lambda_max; alpha_weighted = alpha log10
lambda_max; log_alpha_norm = log10 sum lambda**alpha; entropy = -sum p ln p / ln rank with
p = lambda / sum lambda (+1e-10); rank_loss = M - rank; weak_rank_loss = #(lambda < 1e-6).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import known_spectrum_matrices

import specmetrics
from specmetrics.spectrum.metrics import WEAK_RANK_TOLERANCE, matrix_entropy, matrix_rank, norm_metrics
from specmetrics.spectrum import eigenvalues

#: The +1e-10 inside WeightWatcher's entropy lets a flat spectrum exceed 1 by ~M * 1e-10.
ENTROPY_SLACK = 1e-6


def _evals(w: np.ndarray, method: str) -> np.ndarray:
    return eigenvalues(torch.from_numpy(w), method=method).numpy()


@settings(max_examples=40)
@given(known_spectrum_matrices(), st.sampled_from(["gram", "svd"]), st.floats(1.2, 8.0))
def test_norm_metrics_of_known_singular_values(planted, method, alpha):
    w, s = planted
    lam = s**2
    n, m = max(w.shape), min(w.shape)
    ev = _evals(w, method)
    got = norm_metrics(ev, n, alpha)
    fro2 = float(np.sum(w**2))
    assert got["norm"] == pytest.approx(fro2, rel=1e-10)
    assert got["norm"] == pytest.approx(lam.sum(), rel=1e-10)
    assert got["log_norm"] == pytest.approx(math.log10(lam.sum()), rel=1e-10, abs=1e-12)
    assert got["spectral_norm"] == pytest.approx(lam.max(), rel=1e-10)
    assert got["spectral_norm"] == pytest.approx(np.linalg.norm(w, 2) ** 2, rel=1e-10)
    assert got["lambda_max"] == got["spectral_norm"]
    assert got["sv_max"] == pytest.approx(s.max(), rel=1e-10)
    assert got["log_spectral_norm"] == pytest.approx(math.log10(lam.max()), rel=1e-10, abs=1e-12)
    assert got["stable_rank"] == pytest.approx(lam.sum() / lam.max(), rel=1e-9)
    assert 1.0 - 1e-9 <= got["stable_rank"] <= m * (1 + 1e-9)
    assert got["alpha_weighted"] == pytest.approx(alpha * math.log10(lam.max()), rel=1e-9, abs=1e-9)
    assert got["log_alpha_norm"] == pytest.approx(math.log10(np.sum(lam**alpha)), rel=1e-8, abs=1e-9)
    rank = np.linalg.matrix_rank(w)
    assert got["matrix_rank"] == rank == np.count_nonzero(s)
    assert got["rank_loss"] == m - rank
    assert got["weak_rank_loss"] == int(np.count_nonzero(ev < WEAK_RANK_TOLERANCE))
    assert got["num_evals"] == m
    assert 0.0 <= got["entropy"] <= 1.0 + ENTROPY_SLACK


@settings(max_examples=20)
@given(known_spectrum_matrices(kinds=("equal",)))
def test_entropy_of_equal_singular_values_is_one(planted):
    got = norm_metrics(_evals(planted.matrix, "gram"), max(planted.matrix.shape), math.nan)
    assert got["entropy"] == pytest.approx(1.0, abs=ENTROPY_SLACK)
    assert got["stable_rank"] == pytest.approx(min(planted.matrix.shape), rel=1e-9)
    assert math.isnan(got["alpha_weighted"]) and math.isnan(got["log_alpha_norm"])


@settings(max_examples=20)
@given(known_spectrum_matrices(kinds=("rank_one",)))
def test_rank_one_matrix(planted):
    """Rank one: entropy 0 (WeightWatcher divides by ln(1 + 1e-10) and reports ~200)."""
    w = planted.matrix
    got = norm_metrics(_evals(w, "gram"), max(w.shape), 2.0)
    assert got["matrix_rank"] == 1
    assert got["rank_loss"] == min(w.shape) - 1
    assert got["entropy"] == 0.0
    assert got["stable_rank"] == pytest.approx(1.0, rel=1e-9)


def test_entropy_hand_computed():
    lam = np.array([1.0, 1.0, 2.0])  # p = 1/4, 1/4, 1/2
    expected = -(2 * 0.25 * math.log(0.25) + 0.5 * math.log(0.5)) / math.log(3)
    assert matrix_entropy(lam, 3) == pytest.approx(expected, rel=1e-8)
    assert expected == pytest.approx(0.9464, abs=1e-4)


def test_entropy_orders_spectra_by_spread():
    flat = np.ones(50)
    mild = np.linspace(1.0, 10.0, 50)
    spiky = np.r_[np.full(49, 1e-3), 100.0]
    e = [matrix_entropy(x, 100) for x in (flat, mild, spiky)]
    assert e[0] > e[1] > e[2] > 0.0


def test_matrix_rank_tolerance_is_numpy_s():
    """``#(s > s_max * N * eps)``: numpy.linalg.matrix_rank's default tolerance."""
    n = 100
    tol = n * np.finfo(np.float64).eps
    s = np.array([1.0, 0.5, tol * 1.01, tol * 0.99, 0.0])
    assert matrix_rank(s**2, n) == 3
    assert matrix_rank(np.zeros(5), n) == 0
    assert matrix_rank(np.array([]), n) == 0


def test_hand_computed_diagonal_matrix():
    w = np.zeros((6, 4))
    w[np.arange(4), np.arange(4)] = [3.0, 2.0, 1.0, 0.0]
    got = norm_metrics(_evals(w, "svd"), 6, 2.0)
    assert got["norm"] == pytest.approx(14.0)
    assert got["spectral_norm"] == pytest.approx(9.0)
    assert got["stable_rank"] == pytest.approx(14.0 / 9.0)
    assert got["matrix_rank"] == 3 and got["rank_loss"] == 1 and got["weak_rank_loss"] == 1
    assert got["alpha_weighted"] == pytest.approx(2.0 * math.log10(9.0))
    assert got["log_alpha_norm"] == pytest.approx(math.log10(81.0 + 16.0 + 1.0))
    assert got["sv_max"] == pytest.approx(3.0) and got["sv_min"] == 0.0


def test_esd_row_matches_norm_metrics():
    """The report columns are norm_metrics of the report's eigenvalues with the fitted alpha."""
    rng = np.random.default_rng(3)
    w = torch.from_numpy(rng.standard_t(3.0, (120, 70)))
    layer = specmetrics.esd(w)["weight"]
    expected = norm_metrics(layer.eigenvalues, 120, layer.alpha)
    for key, value in expected.items():
        assert layer.metrics[key] == pytest.approx(value, rel=1e-14), key
    assert layer.metrics["norm"] == pytest.approx(float((w**2).sum()), rel=1e-12)


# ---------------------------------------------------------------------------
# degenerate spectra
# ---------------------------------------------------------------------------


def test_all_zero_spectrum():
    got = norm_metrics(np.zeros(10), 20, math.nan)
    assert got["norm"] == 0.0 and got["spectral_norm"] == 0.0
    assert got["log_norm"] == -math.inf and got["log_spectral_norm"] == -math.inf
    assert got["matrix_rank"] == 0 and got["rank_loss"] == 10 and got["weak_rank_loss"] == 10
    for key in ("stable_rank", "entropy", "alpha_weighted", "log_alpha_norm"):
        assert math.isnan(got[key]), key
    assert -1 not in got.values()


@pytest.mark.parametrize("evals", [np.array([]), np.array([1.0, np.nan, 2.0]), np.array([1.0, np.inf])])
def test_undefined_spectrum_gives_nan(evals):
    got = norm_metrics(evals, 20, 2.0)
    assert got["num_evals"] == len(evals)
    for key, value in got.items():
        if key != "num_evals":
            assert math.isnan(value), key


def test_integer_eigenvalues_are_accepted():
    a = norm_metrics(np.array([1, 2, 3, 4]), 8, 2.0)
    b = norm_metrics(np.array([1.0, 2.0, 3.0, 4.0]), 8, 2.0)
    assert a == b
