"""Synthetic sparse linear data and controls: the planted truth is what the docs say."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import one_torch_thread  # noqa: F401
from specmetrics import ParameterError
from specmetrics.sparse_coding import CONTROL_KINDS, make_control, make_sparse_linear
from specmetrics.sparse_coding.strategies import control_data, sparse_linear_data

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@settings(max_examples=25)
@given(sparse_linear_data())
def test_planted_structure(syn):
    d, m = syn.d, syn.n_features
    assert syn.data.shape == (syn.n, d)
    assert syn.dictionary.shape == (d, m) and m == 4 * d
    assert syn.coefficients.shape == (syn.n, m)
    assert torch.allclose(syn.dictionary.norm(dim=0), torch.ones(m), atol=1e-6)
    assert bool((syn.coefficients >= 0).all()) and bool((syn.coefficients < 1).all())
    assert torch.isfinite(syn.data).all()


def test_data_is_centred_planted_combination_plus_noise():
    syn = make_sparse_linear(32, 4000, 3.0, sigma=0.1, seed=3, dtype=torch.float64)
    clean = syn.coefficients @ syn.dictionary.T
    clean = clean - clean.mean(dim=0, keepdim=True)
    noise = syn.data - clean
    # noise variance a sigma^2 / d per coordinate (chi-square: relative sd sqrt(2 / (n d)))
    var = float(noise.var())
    expected = 3.0 * 0.01 / 32
    assert abs(var / expected - 1) < 5 * math.sqrt(2 / noise.numel())
    # without noise the data are exactly the centred combination
    quiet = make_sparse_linear(32, 500, 3.0, sigma=0.0, seed=3, dtype=torch.float64)
    comb = quiet.coefficients @ quiet.dictionary.T
    assert torch.allclose(quiet.data, comb - comb.mean(dim=0, keepdim=True), atol=1e-12)


def test_active_count_and_values():
    syn = make_sparse_linear(64, 20000, 5.0, seed=1, dtype=torch.float64)
    active = syn.coefficients > 0
    counts = active.sum(dim=1).to(torch.float64)
    # Binomial(m, a/m): mean a, variance a (1 - a/m)
    m = syn.n_features
    sd = math.sqrt(5.0 * (1 - 5.0 / m) / syn.n)
    assert abs(float(counts.mean()) - 5.0) < 5 * sd
    values = syn.coefficients[active]
    assert abs(float(values.mean()) - 0.5) < 5 * math.sqrt(1 / 12 / values.numel())


def test_seeded_and_dtype():
    a = make_sparse_linear(16, 100, 2.0, seed=7)
    b = make_sparse_linear(16, 100, 2.0, seed=7)
    c = make_sparse_linear(16, 100, 2.0, seed=8)
    assert torch.equal(a.data, b.data) and not torch.equal(a.data, c.data)
    assert a.data.dtype == torch.float32
    assert make_sparse_linear(16, 100, 2.0, dtype=torch.float64).data.dtype == torch.float64
    assert make_sparse_linear(16, 100, 2.0, n_features=10).dictionary.shape == (16, 10)
    assert "a=2" in repr(a)


@settings(max_examples=20)
@given(control_data(n=st.integers(2, 300)))
def test_controls_have_no_truth(ctl):
    assert ctl.kind in CONTROL_KINDS
    assert ctl.dictionary is None and ctl.coefficients is None and ctl.a is None
    assert torch.isfinite(ctl.data).all()


def test_control_distributions():
    d, n = 16, 20000
    g = make_control("gaussian", d, n, seed=0, dtype=torch.float64).data
    cov = torch.cov(g.T)
    assert torch.allclose(cov, torch.eye(d, dtype=torch.float64), atol=0.06)
    r = make_control("rademacher", d, n, seed=0).data
    assert set(r.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(r.mean())) < 0.01
    c = make_control("cauchy_norm", d, n, seed=0, dtype=torch.float64).data
    norms = c.norm(dim=1)
    # |Cauchy| has median 1, so the norms have median sqrt(d); directions are uniform
    assert abs(float(norms.median()) / math.sqrt(d) - 1) < 0.05
    directions = c / norms[:, None]
    assert float(directions.mean(dim=0).abs().max()) < 0.03
    assert float(norms.max()) > 100 * math.sqrt(d)  # heavy tail


@pytest.mark.parametrize("kwargs, name", [
    (dict(d=1, n=10, a=1.0), "d"),
    (dict(d=8, n=1, a=1.0), "n"),
    (dict(d=8, n=10, a=0.0), "a"),
    (dict(d=8, n=10, a=33.0), "a"),
    (dict(d=8, n=10, a=float("nan")), "a"),
    (dict(d=8, n=10, a="2"), "a"),
    (dict(d=8, n=10, a=2.0, sigma=-0.1), "sigma"),
    (dict(d=8, n=10, a=2.0, seed=-1), "seed"),
    (dict(d=8, n=10, a=2.0, n_features=0), "n_features"),
    (dict(d=8, n=10, a=2.0, dtype=torch.float16), "dtype"),
    (dict(d=8.0, n=10, a=2.0), "d"),
    (dict(d=True, n=10, a=2.0), "d"),
])
def test_make_sparse_linear_rejects(kwargs, name):
    with pytest.raises(ParameterError, match=f"'{name}' parameter of make_sparse_linear"):
        make_sparse_linear(**kwargs)


def test_numpy_scalars_accepted():
    syn = make_sparse_linear(np.int64(8), np.int32(50), np.float32(2.0), sigma=np.float64(0.1))
    assert syn.data.shape == (50, 8)


@pytest.mark.parametrize("args, name", [
    (("uniform", 8, 10), "kind"),
    (("gaussian", 1, 10), "d"),
    (("gaussian", 8, 0), "n"),
])
def test_make_control_rejects(args, name):
    with pytest.raises(ParameterError, match=f"'{name}' parameter of make_control"):
        make_control(*args)
