"""fit_hessian_power_law: planted exponents recovered, Marchenko-Pastur rejected, the library's
PowerLawFit returned."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import seeds

from specmetrics import DegenerateSpectrumWarning, ParameterError
from specmetrics.hessian import HessianEigen, HessianPowerLaw, fit_hessian_power_law
from specmetrics.hessian.powerlaw import ks_two_sided
from specmetrics.spectrum import PowerLawFit


def _pareto(s, K, seed, scale=1.0):
    """K samples of the density ~ lambda^-(1 + 1/s) above `scale`."""
    rng = np.random.default_rng(seed)
    return scale * (1.0 - rng.random(K)) ** (-s)


@pytest.mark.parametrize("s", [0.5, 1.0, 1.5])
def test_planted_s_is_recovered_within_its_standard_error(s):
    hits = passes = 0
    for seed in range(30):
        fit = fit_hessian_power_law(_pareto(s, 100, seed))
        hits += abs(fit.s - s) <= 2 * fit.s_error
        passes += fit.power_law
    assert hits >= 25  # about 95 % expected
    assert passes >= 25  # the KS test at 5 % keeps a true power law about 95 % of the time


@settings(max_examples=30, deadline=None)
@given(st.floats(0.3, 2.5), st.integers(8, 400), st.floats(-3, 3))
def test_exact_rank_power_law_gives_the_hill_value(s, K, log_scale):
    """For lambda_k = c k^-s exactly, the MLE is s (ln K - ln K! / K): s times a known bias
    factor (1 - ln(2 pi K) / (2K) approximately), and it passes the KS test."""
    lam = 10.0 ** log_scale * np.arange(1, K + 1, dtype=np.float64) ** -s
    fit = fit_hessian_power_law(lam)
    expected = s * (math.log(K) - math.lgamma(K + 1) / K)
    assert fit.s == pytest.approx(expected, rel=1e-9)
    assert fit.power_law and fit.ks_distance < fit.ks_threshold


@settings(max_examples=30, deadline=None)
@given(seeds, st.integers(8, 300), st.floats(0.3, 2.0))
def test_fields_follow_the_reference_formulas(seed, K, s):
    lam = _pareto(s, K, seed, scale=0.01)
    fit = fit_hessian_power_law(np.random.default_rng(seed).permutation(lam))
    top = np.sort(lam)[::-1]
    beta = 1.0 + K / np.sum(np.log(top / top[-1]))
    assert fit.success and fit.k == K
    assert fit.beta == pytest.approx(beta, rel=1e-10)
    assert fit.s == pytest.approx(1.0 / (beta - 1.0), rel=1e-10)
    assert fit.beta_error == pytest.approx((beta - 1.0) / math.sqrt(K), rel=1e-10)
    assert fit.s_error == pytest.approx(fit.s / math.sqrt(K), rel=1e-10)
    assert fit.ks_threshold == pytest.approx(1.36 / math.sqrt(K))
    assert fit.ks_distance == pytest.approx(ks_two_sided(top, beta))
    assert np.array_equal(fit.eigenvalues, top)
    # the library's PowerLawFit, with alpha = beta, xmin = lambda_K, n_tail = K
    assert isinstance(fit.fit, PowerLawFit)
    assert fit.fit.alpha == pytest.approx(beta, rel=1e-10)
    assert fit.fit.xmin == top[-1] and fit.fit.xmax == top[0] and fit.fit.n_tail == K
    assert fit.fit.sigma == pytest.approx(fit.beta_error)
    assert fit.fit.ks_distance == fit.ks_distance


@settings(max_examples=20, deadline=None)
@given(seeds, st.floats(-6, 6))
def test_scale_invariant(seed, log_c):
    lam = _pareto(1.0, 60, seed)
    a = fit_hessian_power_law(lam)
    b = fit_hessian_power_law(10.0 ** log_c * lam)
    assert b.s == pytest.approx(a.s, rel=1e-9)
    assert b.ks_distance == pytest.approx(a.ks_distance, abs=1e-9)


def test_two_sided_ks_is_at_least_the_one_sided_distance():
    from specmetrics.spectrum import fit_power_law

    lam = np.sort(_pareto(1.0, 50, 3))[::-1]
    ours = fit_hessian_power_law(lam)
    library = fit_power_law(lam.copy(), xmin=float(lam[-1]), thresh=None)
    assert library.alpha == pytest.approx(ours.beta)
    assert ours.ks_distance >= library.ks_distance - 1e-12
    assert ours.ks_distance <= library.ks_distance + 1.0 / 50 + 1e-12


def test_rejects_a_marchenko_pastur_spectrum():
    """The top half of a Wishart (Marchenko-Pastur) spectrum is not a power law. The test has
    little power for a short top (top 20 of 500 passes): a documented limitation."""
    rejected = 0
    for seed in range(5):
        rng = np.random.default_rng(seed)
        W = rng.standard_normal((800, 400))
        ev = np.linalg.eigvalsh(W.T @ W / 800)
        fit = fit_hessian_power_law(ev, k=200)
        rejected += not fit.power_law
        assert fit.ks_distance > 1.5 * fit.ks_threshold
    assert rejected == 5
    short = fit_hessian_power_law(ev, k=20)
    assert short.s < 0.1  # a nearly flat top: passes KS only with a tiny exponent


def test_k_selects_the_largest_and_nonpositive_are_dropped():
    lam = np.concatenate([np.arange(1, 31, dtype=np.float64) ** -1.0, [0.0, -1.0, -5.0]])
    fit = fit_hessian_power_law(lam, k=10)
    assert fit.k == 10 and np.array_equal(fit.eigenvalues, np.arange(1, 11.0) ** -1.0)
    assert fit_hessian_power_law(lam).k == 30


def test_from_hessian_eigen(mlp_operator):
    from specmetrics.hessian import top_eigenvalues

    eig = top_eigenvalues(mlp_operator, k=10)
    fit = fit_hessian_power_law(eig)
    assert fit.k == int((eig.values > 0).sum())
    assert eig.fit_power_law() == fit
    low = top_eigenvalues(mlp_operator, k=3, which="SA")
    with pytest.raises(ParameterError, match="'eigenvalues'"):
        fit_hessian_power_law(low)


def test_degenerate_spectra_fail_with_a_message():
    with pytest.warns(DegenerateSpectrumWarning):
        tiny = fit_hessian_power_law([3.0, 2.0, 1.0])
    assert not tiny.success and math.isnan(tiny.s) and "8" in tiny.message
    with pytest.warns(DegenerateSpectrumWarning):
        flat = fit_hessian_power_law(np.ones(20))
    assert not flat.success and not flat.power_law
    with pytest.warns(DegenerateSpectrumWarning):
        bad = fit_hessian_power_law([1.0, float("nan"), 2.0])
    assert not bad.success
    with pytest.warns(DegenerateSpectrumWarning):
        neg = fit_hessian_power_law(-np.arange(1, 20.0))
    assert not neg.success and neg.k == 0
    quiet = fit_hessian_power_law([3.0, 2.0, 1.0], warn=False)
    assert not quiet.success


def test_bad_inputs():
    def bad(match, *args, **kwargs):
        with pytest.raises(ParameterError, match=match) as info:
            fit_hessian_power_law(*args, **kwargs)
        assert "fit_hessian_power_law" in str(info.value)

    lam = np.arange(1, 21.0) ** -1.0
    bad("'eigenvalues'", np.ones((4, 5)))
    bad("'eigenvalues'", ["a", "b"])
    bad("'eigenvalues'", "1 2 3")
    bad("'eigenvalues'", {"a": 1.0})
    bad("'k'", lam, k=1)
    bad("'k'", lam, k=21)
    bad("'k'", lam, k=5.0)
    bad("'warn'", lam, warn="yes")


def test_json_round_trip_and_plot(tmp_path):
    pytest.importorskip("matplotlib")
    fit = fit_hessian_power_law(_pareto(1.0, 40, 0))
    path = tmp_path / "fit.json"
    fit.to_json(path)
    back = HessianPowerLaw.from_json(path)
    assert back == fit and isinstance(back.fit, PowerLawFit) and back.fit == fit.fit
    failed = fit_hessian_power_law([1.0, 2.0], warn=False)
    assert HessianPowerLaw.from_json(failed.to_json()) == failed
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    assert fit.plot(ax=ax) is ax
    from specmetrics.plotting.hessian import plot_hessian_eigenvalues

    eig = HessianEigen(values=fit.eigenvalues, residuals=np.zeros(40),
                       converged=np.ones(40, dtype=bool), which="LA", method="lanczos",
                       tol=1e-8, n_matvecs=0, n_steps=0, dim=40)
    ax2 = Figure().subplots()
    assert plot_hessian_eigenvalues(eig, ax=ax2, fit=fit) is ax2
    assert len(ax2.get_lines()) == 2
