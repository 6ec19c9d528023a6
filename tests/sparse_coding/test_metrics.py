"""The metric definitions: the closed-form oracle, its inverse, ratios of means."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specmetrics import ParameterError
from specmetrics.sparse_coding import coefficient_s1, implied_a, oracle_s1, ratio_of_means
from specmetrics.sparse_coding.coding import CodeSummary
from specmetrics.sparse_coding.metrics import metrics_from_summary


def test_oracle_closed_form_values():
    # (a/2) / (1 - (1 - e^-a)/a): 1.7615 at a = 2 (reference §8 quotes 1.77)
    assert oracle_s1(2.0) == pytest.approx(1.76159, abs=1e-5)
    assert oracle_s1(1e-9) == pytest.approx(1.0, abs=1e-6)
    # large a: about a/2 + 1/2
    assert oracle_s1(200.0) == pytest.approx(100.0 / (1 - 1 / 200), rel=1e-12)


@settings(max_examples=50)
@given(a=st.floats(0.01, 50.0))
def test_binomial_form_tends_to_poisson(a):
    m = 10**6
    assert oracle_s1(a, n_features=m) == pytest.approx(oracle_s1(a), rel=1e-4)


def test_binomial_form_matches_direct_sum():
    from scipy.stats import binom

    for a, m in [(2.0, 8), (5.0, 40), (1.0, 1024), (3.0, 4)]:
        k = np.arange(m + 1)
        mean_max = float((binom.pmf(k, m, a / m) * k / (k + 1)).sum())
        assert oracle_s1(a, n_features=m) == pytest.approx((a / 2) / mean_max, rel=1e-10)


@settings(max_examples=50)
@given(a=st.floats(0.05, 60.0))
def test_implied_a_inverts_the_oracle(a):
    assert implied_a(oracle_s1(a)) == pytest.approx(a, rel=1e-8)
    assert implied_a(oracle_s1(a, n_features=256), n_features=256) == pytest.approx(a, rel=1e-8)


def test_implied_a_edges():
    assert math.isnan(implied_a(0.9))
    assert implied_a(1.0) < 1e-6
    assert math.isnan(implied_a(oracle_s1(10.0) + 50, n_features=10))


def test_ratio_of_means_and_error():
    num = torch.tensor([1.0, 2.0, 3.0, 4.0])
    den = torch.tensor([1.0, 1.0, 2.0, 2.0])
    r, se = ratio_of_means(num, den)
    assert r == pytest.approx(10 / 6)
    resid = num.double() - r * den.double()
    assert se == pytest.approx(math.sqrt(float(resid.var()) / 4) / 1.5)
    assert all(math.isnan(v) for v in ratio_of_means(num, torch.zeros(4)))
    assert math.isnan(ratio_of_means(num[:1], den[:1])[1])


def test_ratio_error_matches_the_spread_over_repeats():
    # the delta-method error predicts the spread of the ratio over independent samples
    rng = np.random.default_rng(0)
    ratios, errors = [], []
    for _ in range(300):
        den = torch.from_numpy(rng.exponential(1.0, 400))
        num = 3 * den + torch.from_numpy(rng.normal(0, 1, 400))
        r, se = ratio_of_means(num, den)
        ratios.append(r)
        errors.append(se)
    assert float(np.std(ratios)) == pytest.approx(float(np.mean(errors)), rel=0.15)


def test_coefficient_s1_is_a_ratio_of_means():
    alpha = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0], [0.2, 0.2, 0.2]])
    s1, _ = coefficient_s1(alpha)
    assert s1 == pytest.approx((1.5 + 0 + 0.6) / (1.0 + 0 + 0.2))
    with pytest.raises(ParameterError, match="'coefficients' parameter of coefficient_s1"):
        coefficient_s1(-alpha)


def test_normalised_loss_equals_s1_under_perfect_reconstruction():
    l1 = torch.tensor([3.0, 1.0, 2.0], dtype=torch.float64)
    mx = torch.tensor([1.0, 0.5, 1.0], dtype=torch.float64)
    summary = CodeSummary(l1=l1, max=mx, nnz=torch.tensor([3.0, 2.0, 2.0]),
                          residual=torch.zeros(3, dtype=torch.float64),
                          capped=torch.zeros(3, dtype=torch.bool),
                          usage=torch.tensor([1.0, 0.0]))
    m = metrics_from_summary(summary, 0.25, scale=2.0, total_energy=10.0)
    assert m.normalized_loss == pytest.approx(m.s1) and m.s1 == pytest.approx(6 / 2.5)
    assert m.loss == pytest.approx(0.25 * 2 * 4)  # lam * mean l1, times scale^2
    assert m.lam == 0.5 and m.unused_fraction == 0.5 and m.relative_mse == 0.0
    # with a residual the normalised loss is larger
    worse = metrics_from_summary(CodeSummary(**{**summary.__dict__,
                                                "residual": torch.ones(3, dtype=torch.float64)}),
                                 0.25)
    assert worse.normalized_loss > worse.s1


@pytest.mark.parametrize("call, name", [
    (lambda: oracle_s1(0.0), "a"),
    (lambda: oracle_s1(5.0, n_features=4), "a"),
    (lambda: oracle_s1(1.0, n_features=0), "n_features"),
    (lambda: implied_a("2"), "s1"),
    (lambda: implied_a(2.0, rtol=0.0), "rtol"),
])
def test_metric_functions_reject(call, name):
    with pytest.raises(ParameterError, match=f"'{name}' parameter"):
        call()
