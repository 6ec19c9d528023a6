"""Power-law fits (specmetrics.powerlaw): planted tails recovered, the WeightWatcher and
AlphaPruning algorithms re-derived as plain loops (the oracles below) and matched, and
degenerate spectra failing cleanly.

The oracles are written from the formulas in docs/reference.md §1-2 (and, for the small-N
path, from WeightWatcher 0.7.7's ``WW_powerlaw.py``), one candidate at a time, with none of
the engine's vectorisation (suffix sums, chunked KS matrix, searchsorted windows).
"""
from __future__ import annotations

import contextlib
import io
import logging
import math
import re
import warnings

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from strategies import (
    planted_power_laws,
    positive_spectra,
    seeds,
    tails_over_bulk,
    weight_matrices,
)

from specmetrics import DegenerateSpectrumWarning, ParameterError, PowerLawFit, fit_power_law
from specmetrics.spectrum.powerlaw import EVALS_THRESH, MIN_TAIL, SMALL_N

PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of \w+ must be .+\. Got .+ instead\.$")

# ---------------------------------------------------------------------------
# oracles
# ---------------------------------------------------------------------------


def ww_oracle(evals: np.ndarray) -> dict:
    """WeightWatcher's default fit (reference §1), one candidate xmin at a time (N >= 20)."""
    raw = np.asarray(evals, dtype=np.float64)
    x = np.sort(raw[raw > EVALS_THRESH])
    n_all = len(x)
    alphas, ds = [], []
    for i in range(n_all - 1):
        n = n_all - i
        with np.errstate(divide="ignore"):  # a tail of equal values: alpha = inf
            alpha = 1.0 + n / (np.sum(np.log(x[i:])) - n * np.log(x[i]))
        d = 1.0
        if alpha > 1.0:
            j = np.arange(i, n_all)
            d = np.max(np.abs(1.0 - (x[j] / x[i]) ** (1.0 - alpha) - (j - i) / n))
        alphas.append(alpha)
        ds.append(d)
    k = int(np.argmin(ds))
    return {
        "alpha": alphas[k],
        "xmin": x[k],
        "D": ds[k],
        "sigma": (alphas[k] - 1.0) / math.sqrt(n_all - k),
        "n_tail": int(np.sum(raw >= x[k])),
    }


def ww_small_n_oracle(evals: np.ndarray, k_min: int = 8) -> dict:
    """WeightWatcher 0.7.7 below 20 eigenvalues, as ``WWFit`` reports it.

    ``fit_powerlaw_smallN`` fills, for every candidate with a tail of at least ``k_min``,
    the bias-corrected ``alpha = 1 + (n - 1) / sum ln(x / xmin)`` and its KS distance (D stays 1
    where the tail is degenerate or alpha <= 1); with no such candidate it fits the whole
    spectrum. ``WWFit.__init__`` then reports the candidate of smallest D (first on ties).
    """
    raw = np.asarray(evals, dtype=np.float64)
    x = np.sort(raw[raw > EVALS_THRESH])
    n_all = len(x)
    logs = np.log(x)
    alphas = np.zeros(n_all - 1)
    ds = np.ones(n_all - 1)
    computed = False
    for i in range(n_all - 1):
        n = n_all - i
        if n < k_min:
            continue
        s = np.sum(logs[i:]) - n * logs[i]
        if s <= 1e-12:
            continue
        alphas[i] = 1.0 + (n - 1.0) / s
        if alphas[i] <= 1.0:
            continue
        ds[i] = np.max(np.abs(np.arange(n) / n - (1.0 - (x[i:] / x[i]) ** (1.0 - alphas[i]))))
        computed = True
    if not computed:
        s = np.sum(logs) - n_all * logs[0]
        if s > 1e-12:
            alphas[0] = 1.0 + (n_all - 1.0) / s
            ds[0] = np.max(np.abs(np.arange(n_all) / n_all - (1.0 - (x / x[0]) ** (1.0 - alphas[0]))))
    k = int(np.argmin(ds))
    return {"alpha": alphas[k], "xmin": x[k], "D": ds[k], "sigma": (alphas[k] - 1.0) / math.sqrt(n_all - k)}


def ap_peak_window(ev32: torch.Tensor, bins: int = 100) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AlphaPruning's peak ``p`` and its window bounds, float32 (reference §2)."""
    h = torch.log10(ev32)
    lo, hi = h.min(), h.max()
    counts = torch.histc(h, bins, min=float(lo), max=float(hi))
    edges = torch.linspace(lo, hi, bins + 1)
    p = 10 ** edges[torch.argmax(counts)]
    return p, torch.log10(0.95 * p), 1.5 * p


def ap_loop(ev32: torch.Tensor, *, exponents: str = "float32", lower: str = "log") -> dict:
    """AlphaPruning ``net_esd_estimator(fix_fingers='xmin_peak')`` on sorted float32 eigenvalues.

    No zero filtering; the window is computed in float32 as AlphaPruning does; candidates are
    skipped while ``lambda < log10(0.95 p)`` (``lower="log"``; ``"linear"``: ``0.95 p``) and the
    loop stops at the first ``lambda > 1.5 p``; non-candidates keep ``D = 1`` and ``alpha = 0``;
    the first argmin of D wins. ``exponents="float32"`` is AlphaPruning's arithmetic,
    ``"float64"`` the same loop with float64 exponents and distances.
    """
    n_all = ev32.shape[0]
    p, low, high = ap_peak_window(ev32)
    if lower == "linear":
        low = 0.95 * p
    x = ev32 if exponents == "float32" else ev32.double()
    logs = torch.log(x)
    alphas = torch.zeros(n_all - 1, dtype=x.dtype)
    ds = torch.ones(n_all - 1, dtype=x.dtype)
    for i in range(n_all - 1):
        if ev32[i] < low:
            continue
        if ev32[i] > high:
            break
        n = float(n_all - i)
        seq = torch.arange(n, dtype=x.dtype)
        alpha = 1 + n / (torch.sum(logs[i:]) - n * logs[i])
        alphas[i] = alpha
        if alpha > 1:
            ds[i] = torch.max(torch.abs(1 - (x[i:] / x[i]) ** (-alpha + 1) - seq / n))
    k = int(torch.argmin(ds))
    return {"alpha": float(alphas[k]), "index": k, "D": float(ds[k]), "Ds": ds, "p": float(p),
            "candidate": bool(ds[k] < 1)}


def ap_mid(ev32: torch.Tensor, *, exponents: str = "float32") -> float:
    """AlphaPruning ``fix_fingers='xmin_mid'``: one Hill estimate from index ``int(N / 2)``."""
    x = ev32 if exponents == "float32" else ev32.double()
    logs = torch.log(x)
    i = int(x.shape[0] / 2)
    n = float(x.shape[0] - i)
    return float(1 + n / (torch.sum(logs[i:]) - n * logs[i]))


def float32_spectrum(w: np.ndarray) -> torch.Tensor:
    """AlphaPruning's eigenvalues: ``svdvals(W.float())**2``, sorted ascending, float32."""
    return torch.sort(torch.linalg.svdvals(torch.from_numpy(w).float()) ** 2).values


def same_fit(*fits: PowerLawFit) -> bool:
    """Field-by-field equality, NaN equal to NaN."""
    first = fits[0].as_dict()
    for other in fits[1:]:
        np.testing.assert_equal(other.as_dict(), first)
    return True


def rel(a: float, b: float) -> float:
    return abs(a - b) / abs(b)


# ---------------------------------------------------------------------------
# 1. planted tails
# ---------------------------------------------------------------------------


@given(planted_power_laws(min_n=500, max_n=5000))
def test_fixed_xmin_recovers_planted_alpha(planted):
    """Hill estimate at the true xmin: within 4.5 standard errors (alpha - 1) / sqrt(n)."""
    fit = fit_power_law(planted.values, xmin=planted.xmin)
    n = len(planted.values)
    assert fit.success and fit.method == "fixed"
    assert fit.n_tail == n
    assert fit.xmin == planted.values.min()
    assert fit.xmax == planted.values.max()
    sigma = (planted.alpha - 1.0) / math.sqrt(n)
    assert abs(fit.alpha - planted.alpha) <= 4.5 * sigma, (fit.alpha, planted.alpha, sigma)
    assert fit.sigma == pytest.approx((fit.alpha - 1.0) / math.sqrt(n), rel=1e-12)


def _ks_tolerance(alpha: float, n_true: int, n_fit: int) -> float:
    """5 standard errors of the tail the KS scan kept (at least a tenth of the planted tail)."""
    return 5.0 * (alpha - 1.0) / math.sqrt(max(min(n_true, n_fit), n_true / 10))


def _check_ks_recovery(planted) -> None:
    fit = fit_power_law(planted.values, xmin="ks")
    assert fit.success
    tol = _ks_tolerance(planted.alpha, planted.n_tail, fit.n_tail)
    assert abs(fit.alpha - planted.alpha) <= tol, (fit, planted.alpha, planted.n_tail)


@settings(max_examples=12)
@given(tails_over_bulk(min_n=500, max_n=5000))
def test_ks_recovers_tail_over_bulk(planted):
    """xmin="ks" finds a planted Pareto tail above a uniform or Marchenko-Pastur bulk."""
    _check_ks_recovery(planted)


@pytest.mark.slow
@settings(max_examples=100)
@given(tails_over_bulk(min_n=500, max_n=5000))
def test_ks_recovers_tail_over_bulk_many(planted):
    _check_ks_recovery(planted)


def test_fixed_xmin_between_eigenvalues_starts_at_next_one():
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0, 8.0, 13.0, 21.0, 34.0, 55.0, 89.0])
    fit = fit_power_law(x, xmin=2.5)
    assert fit.xmin == 3.0 and fit.n_tail == 9
    n = 9
    expected = 1.0 + n / np.sum(np.log(x[2:] / 3.0))
    assert fit.alpha == pytest.approx(expected, rel=1e-13)


def test_fixed_xmin_above_spectrum_fails():
    with pytest.warns(DegenerateSpectrumWarning):
        fit = fit_power_law(np.arange(1.0, 30.0), xmin=100.0)
    assert not fit.success and math.isnan(fit.alpha) and fit.message


# ---------------------------------------------------------------------------
# 2. WeightWatcher's algorithm
# ---------------------------------------------------------------------------


def _short(fit: PowerLawFit, n_tail: int) -> bool:
    """A reference fit whose tail is shorter than MIN_TAIL is reported as a failure here (the
    shared minimum tail rule); True when that is the case (and checked)."""
    if n_tail >= MIN_TAIL:
        return False
    assert not fit.success and math.isnan(fit.alpha) and "MIN_TAIL" in fit.message, fit
    return True


def _assert_matches(fit: PowerLawFit, ref: dict, *, tol: float = 1e-12, x=None) -> None:
    if x is not None:
        xs = np.asarray(x, dtype=np.float64)
        if _short(fit, int(ref.get("n_tail", np.sum(xs >= ref["xmin"])))):
            return
    assert fit.success, fit.message
    assert fit.alpha == pytest.approx(ref["alpha"], rel=tol, abs=0)
    assert fit.xmin == ref["xmin"]
    assert fit.ks_distance == pytest.approx(ref["D"], rel=tol, abs=1e-15)
    assert fit.sigma == pytest.approx(ref["sigma"], rel=tol, abs=0)
    if "n_tail" in ref:
        assert fit.n_tail == ref["n_tail"]


@settings(max_examples=30)
@given(positive_spectra(min_n=SMALL_N, max_n=200), st.integers(0, 20))
def test_ks_equals_weightwatcher_formula(x, n_zeros):
    """fit_power_law(xmin="ks") is WeightWatcher's WWFit, candidate by candidate, to 1e-12.

    Zeros (below the 1e-5 floor) are dropped before fitting and not counted in n_tail.
    """
    x = np.concatenate([x, np.zeros(n_zeros)])
    ref = ww_oracle(x)
    assume(ref["alpha"] > 1.0)
    fit = fit_power_law(x, xmin="ks", warn=False)
    _assert_matches(fit, ref, x=x)
    if not fit.success:
        return
    assert fit.xmax == x.max()
    assert fit.method == "ks"


def _tied_top(n_tied: int) -> np.ndarray:
    rng = np.random.default_rng(n_tied)
    return np.concatenate([np.round(rng.lognormal(0.0, 1.0, 60), 1) + 0.1, np.full(n_tied, 9.5)])


@pytest.mark.parametrize("n_tied", [2, 3, 7])
def test_tied_top_eigenvalues(n_tied):
    """Equal top eigenvalues give candidates with alpha = inf; their D is computed with
    1**(-inf) = 1 as WeightWatcher does (a NaN there used to win the argmin)."""
    x = _tied_top(n_tied)
    _assert_matches(fit_power_law(x, warn=False), ww_oracle(x), x=x)


@settings(max_examples=60)
@given(positive_spectra(min_n=2, max_n=SMALL_N - 1))
def test_small_n_equals_weightwatcher_small_n(x):
    """Below 20 eigenvalues the bias-corrected small-sample fit (WeightWatcher 0.7.7) is used."""
    ref = ww_small_n_oracle(x)
    fit = fit_power_law(x, xmin="ks", warn=False)
    if ref["alpha"] > 1.0 and len(np.unique(x)) > 1:
        _assert_matches(fit, ref, x=x)
        if fit.success:
            assert "small-sample" in fit.message
    else:  # WeightWatcher reports alpha <= 1 (or 0): we report a failure, never a number <= 1
        assert not fit.success and math.isnan(fit.alpha) and fit.message


@pytest.fixture(scope="module")
def wwfit():
    """``weightwatcher.WW_powerlaw.WWFit``, imported with its logging/warnings changes undone.

    Importing weightwatcher calls ``logging.basicConfig(level=INFO)`` and
    ``warnings.simplefilter("ignore")`` (reference §1); both are restored here and checked.
    """
    root = logging.getLogger()
    saved = (list(warnings.filters), warnings.showwarning, root.level, list(root.handlers), logging.root.manager.disable)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            from weightwatcher.WW_powerlaw import WWFit
    except ImportError as err:  # pragma: no cover - the test extra installs it
        WWFit = None
        reason = f"weightwatcher is not importable: {err}"
    finally:
        warnings.filters[:] = saved[0]
        getattr(warnings, "_filters_mutated", lambda: None)()  # in-place edits need this (CPython)
        warnings.showwarning = saved[1]
        root.setLevel(saved[2])
        root.handlers[:] = saved[3]
        logging.disable(saved[4])
    if WWFit is None:
        pytest.skip(reason)
    assert warnings.filters == saved[0] and root.level == saved[2] and root.handlers == saved[3]

    def fit(x: np.ndarray):
        # WWFit prints "SMALL N PL FIT" and divides by zero on tails of equal values
        with contextlib.redirect_stdout(io.StringIO()), np.errstate(divide="ignore"):
            return WWFit(x)

    return fit


@pytest.mark.parametrize("n_tied", [2, 3, 7])
def test_tied_top_eigenvalues_wwfit(n_tied, wwfit):
    x = _tied_top(n_tied)
    fit, ww = fit_power_law(x), wwfit(x)
    assert fit.alpha == pytest.approx(ww.alpha, rel=1e-12) and fit.xmin == ww.xmin


@settings(max_examples=40)
@given(positive_spectra(min_n=2, max_n=120))
def test_ks_equals_weightwatcher_wwfit(wwfit, x):
    """Direct comparison with WeightWatcher's own WWFit (both the N >= 20 and the small-N path)."""
    ww = wwfit(x)
    fit = fit_power_law(x, xmin="ks", warn=False)
    if ww.alpha > 1.0 and len(np.unique(x)) > 1:
        sigma = ww.sigma
        if len(x) < 8:  # WW's whole-spectrum fallback keeps a stale sigma of -1/sqrt(N)
            assert sigma == pytest.approx(-1.0 / math.sqrt(len(x)))
            sigma = (ww.alpha - 1.0) / math.sqrt(len(x))
        _assert_matches(fit, {"alpha": ww.alpha, "xmin": ww.xmin, "D": ww.D, "sigma": sigma},
                        x=x)
        if fit.success:
            assert fit.n_tail == int(np.sum(x >= ww.xmin))  # analyze()'s num_pl_spikes
    else:
        assert not fit.success and math.isnan(fit.alpha)


# ---------------------------------------------------------------------------
# 3. AlphaPruning's alpha_peak / alpha_mid
# ---------------------------------------------------------------------------

#: The issue's bound on the difference from AlphaPruning given the same eigenvalues. With
#: ``precision="float32"`` the engine runs AlphaPruning's own float32 arithmetic (window,
#: per-candidate sums and powers), so the two agree to float32 rounding or better.
AP_RTOL = 1e-6


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(weight_matrices(min_side=20, max_side=200))
def test_peak_equals_alphapruning(w):
    ev = float32_spectrum(w)
    fit = fit_power_law(ev, xmin="peak", thresh=None, precision="float32", warn=False)
    ref = ap_loop(ev, exponents="float32")
    if not ref["candidate"]:  # AlphaPruning would report alphas[0] (0 or a bogus value)
        assert not fit.success and math.isnan(fit.alpha)
        return
    if _short(fit, len(ev) - ref["index"]):
        return
    assert fit.success, fit.message
    assert fit.xmin == float(ev[ref["index"]])
    assert rel(fit.alpha, ref["alpha"]) <= AP_RTOL
    assert fit.ks_distance == pytest.approx(ref["D"], rel=AP_RTOL, abs=1e-7)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(weight_matrices(min_side=20, max_side=200))
def test_peak_float64_is_the_same_algorithm(w):
    """The default float64 fit is AlphaPruning's algorithm with float64 exponents: same
    candidate (unless two D's tie to float32 precision), exponents equal to the float64 loop."""
    ev = float32_spectrum(w)
    ref64 = ap_loop(ev, exponents="float64")
    fit = fit_power_law(ev, xmin="peak", thresh=None, precision="float64", warn=False)
    if not ref64["candidate"] or not fit.success:
        return
    if fit.xmin == float(ev[ref64["index"]]):
        assert fit.alpha == pytest.approx(ref64["alpha"], rel=1e-12, abs=0)
    else:  # the float64 histogram put the window edge elsewhere: the alphas still agree closely
        assert rel(fit.alpha, ref64["alpha"]) <= 1e-2


@settings(max_examples=20)
@given(weight_matrices(min_side=20, max_side=200))
def test_mid_equals_alphapruning(w):
    ev = float32_spectrum(w)
    fit = fit_power_law(ev, xmin="mid", thresh=None, precision="float32")
    assert fit.success
    assert fit.xmin == float(ev[int(len(ev) / 2)])
    assert rel(fit.alpha, ap_mid(ev)) <= AP_RTOL
    fit64 = fit_power_law(ev, xmin="mid", thresh=None)
    assert fit64.alpha == pytest.approx(ap_mid(ev, exponents="float64"), rel=1e-12, abs=0)


@settings(max_examples=25, suppress_health_check=[HealthCheck.too_slow])
@given(weight_matrices(min_side=20, max_side=200))
def test_peak_corrected_window(w):
    """"peak_corrected" takes xmin in [0.95 p, 1.5 p] (linear units) and is otherwise the same loop."""
    ev = float32_spectrum(w)
    fit = fit_power_law(ev, xmin="peak_corrected", thresh=None, precision="float32", warn=False)
    ref = ap_loop(ev, exponents="float32", lower="linear")
    p = ref["p"]
    if not ref["candidate"]:
        assert not fit.success and fit.message
        return
    if _short(fit, len(ev) - ref["index"]):
        return
    assert fit.success
    assert np.float32(0.95) * np.float32(p) <= fit.xmin <= np.float32(1.5) * np.float32(p)
    assert fit.xmin == float(ev[ref["index"]])
    assert rel(fit.alpha, ref["alpha"]) <= AP_RTOL


def test_peak_window_lower_bound_is_in_log_units():
    """AlphaPruning's quirk, kept by "peak": the lower bound of the window is log10(0.95 p).

    A Pareto sample from 1 (alpha = 2.5) plus a tight cluster of 300 eigenvalues at 100: the
    log-ESD peaks at p ~ 96, so "peak" may start the tail anywhere in [log10(0.95 p), 1.5 p]
    ~ [1.96, 144] and picks a start near 2, "peak_corrected" only in [0.95 p, 1.5 p].
    """
    rng = np.random.default_rng(0)
    x = np.concatenate([(1.0 - rng.random(2000)) ** (-1 / 1.5), 100.0 * (1.0 + rng.random(300) * 1e-3)])
    x32 = torch.sort(torch.from_numpy(x).float()).values
    p = ap_loop(x32)["p"]
    assert 90.0 < p < 100.0
    loose = fit_power_law(x32, xmin="peak", thresh=None, precision="float32")
    strict = fit_power_law(x32, xmin="peak_corrected", thresh=None, precision="float32",
                           warn=False)
    assert math.log10(0.95 * p) <= loose.xmin < 3.0
    assert rel(loose.alpha, ap_loop(x32)["alpha"]) <= AP_RTOL
    ref = ap_loop(x32, lower="linear")
    if _short(strict, len(x32) - ref["index"]):  # the corrected window picks a tiny top tail
        return
    assert 0.95 * p <= strict.xmin <= 1.5 * p
    assert loose.ks_distance < strict.ks_distance
    assert rel(strict.alpha, ref["alpha"]) <= AP_RTOL


@pytest.mark.parametrize("policy", ["peak", "peak_corrected"])
def test_peak_fails_when_window_is_empty(policy):
    """Log-ESD over 20 decades: the fullest bin (0.2 decades wide) starts below 1.5 p only at p
    itself, and every eigenvalue of that bin lies above 1.5 p, so no xmin candidate exists."""
    x = np.concatenate([[1e-10], 1e10 * (1.0 + np.arange(50) * 1e-6)])
    with pytest.warns(DegenerateSpectrumWarning):
        fit = fit_power_law(x, xmin=policy, thresh=None)
    assert not fit.success and math.isnan(fit.alpha)
    assert "peak window" in fit.message


# ---------------------------------------------------------------------------
# order, scale, dtype
# ---------------------------------------------------------------------------


@settings(max_examples=20)
@given(positive_spectra(min_n=20, max_n=200), seeds, st.sampled_from(["ks", "peak_corrected", "mid"]))
def test_fit_ignores_order_and_container(x, seed, policy):
    rng = np.random.default_rng(seed)
    a = fit_power_law(x, xmin=policy, warn=False)
    b = fit_power_law(rng.permutation(x), xmin=policy, warn=False)
    c = fit_power_law(torch.from_numpy(x), xmin=policy, warn=False)
    d = fit_power_law(list(x), xmin=policy, warn=False)
    assert same_fit(a, b, c, d)


@settings(max_examples=15)
@given(positive_spectra(min_n=20, max_n=200), st.floats(0.1, 10.0))
def test_fit_is_scale_invariant(x, c):
    """Multiplying the eigenvalues by c leaves alpha, D and n_tail unchanged (KS and mid policies;
    no threshold, so that no eigenvalue crosses the 1e-5 floor)."""
    for policy in ("ks", "mid"):
        a = fit_power_law(x, xmin=policy, thresh=None, warn=False)
        b = fit_power_law(x * c, xmin=policy, thresh=None, warn=False)
        assume(a.success)
        assert b.success
        assert b.alpha == pytest.approx(a.alpha, rel=1e-9)
        assert b.xmin == pytest.approx(a.xmin * c, rel=1e-12)
        assert b.n_tail == a.n_tail


# ---------------------------------------------------------------------------
# 5. degenerate spectra and bad parameters
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "x, why",
    [
        (np.array([]), "too few"),
        (np.array([3.0]), "too few"),
        (np.zeros(50), "too few"),
        (np.full(50, 2.5), "equal"),
        (np.r_[np.zeros(49), 4.0], "too few"),  # rank 1
        (np.r_[np.arange(1.0, 40.0), np.nan], "NaN"),
        (np.r_[np.arange(1.0, 40.0), np.inf], "NaN or inf"),
        (np.r_[np.arange(1.0, 40.0), -np.inf], "NaN or inf"),
        (np.full(30, 1e-7), "too few"),  # everything under the 1e-5 floor
    ],
)
@pytest.mark.parametrize("policy", ["ks", "peak", "peak_corrected", "mid", 1.0])
def test_degenerate_spectrum_fails_cleanly(x, why, policy):
    with pytest.warns(DegenerateSpectrumWarning):
        fit = fit_power_law(x, xmin=policy)
    assert not fit.success
    assert math.isnan(fit.alpha) and fit.alpha != -1
    assert why in fit.message
    assert fit.n_tail == 0


def test_degenerate_spectrum_warn_false_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fit = fit_power_law(np.zeros(10), warn=False)
    assert not fit.success


def test_integer_eigenvalues_are_fitted_as_floats():
    x = np.arange(1, 60)
    assert same_fit(fit_power_law(x), fit_power_law(x.astype(np.float64)))
    assert same_fit(fit_power_law(torch.arange(1, 60, dtype=torch.int32)), fit_power_law(x.astype(np.float64)))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"eigenvalues": "abc"},
        {"eigenvalues": None},
        {"eigenvalues": np.array([1 + 1j, 2.0])},
        {"eigenvalues": np.array([True, False])},
        {"eigenvalues": np.ones((5, 5))},  # a weight matrix passed by mistake
        {"xmin": "median"},
        {"xmin": -1.0},
        {"xmin": 0.0},
        {"xmin": float("nan")},
        {"xmin": [1.0]},
        {"distribution": "lognormal"},
        {"precision": "float16"},
        {"bins": 1},
        {"bins": 2.5},
        {"max_fingers": 1},
        {"thresh": -1.0},
        {"thresh": float("inf")},
        {"thresh": "0"},
    ],
)
def test_bad_parameters_raise_parameter_error(kwargs):
    kwargs = dict(kwargs)
    evals = kwargs.pop("eigenvalues", np.arange(1.0, 50.0))
    with pytest.raises(ParameterError) as info:
        fit_power_law(evals, **kwargs)
    assert isinstance(info.value, ValueError)
    assert PARAM_MESSAGE.match(str(info.value)), str(info.value)


def test_column_vector_is_accepted():
    x = np.arange(1.0, 50.0)
    assert same_fit(fit_power_law(x[:, None]), fit_power_law(x))


def test_result_is_frozen_and_serialisable():
    fit = fit_power_law(np.arange(1.0, 50.0))
    with pytest.raises(Exception):
        fit.alpha = 3.0  # type: ignore[misc]
    d = fit.as_dict()
    assert set(d) >= {"alpha", "xmin", "xmax", "ks_distance", "sigma", "n_tail", "success", "message"}
