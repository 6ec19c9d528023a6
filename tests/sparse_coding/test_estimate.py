"""estimate_sparsity, learn_dictionary, dictionary_metrics and sparsity_band: the API."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from tiny_models import one_torch_thread  # noqa: F401
from specmetrics import ParameterError
from specmetrics.sparse_coding import (ConvergenceWarning, SparsityBand, dictionary_metrics,
                                       estimate_sparsity, implied_a, learn_dictionary,
                                       make_control, make_sparse_linear, sparsity_band)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = dict(steps=40, batch_size=128)


@pytest.fixture(scope="module")
def syn():
    return make_sparse_linear(16, 600, 1.0, sigma=0.02, seed=4)


@pytest.fixture(scope="module")
def estimate(syn):
    return estimate_sparsity(syn, **FAST)


def test_estimate_fields(estimate, syn):
    assert estimate.dictionary.shape == (16, 128)  # 8 d atoms by default
    assert torch.allclose(estimate.dictionary.norm(dim=0), torch.ones(128), atol=1e-5)
    assert 1 <= estimate.s1 <= estimate.normalized_loss
    assert estimate.n0 >= 1 and estimate.loss > 0
    assert estimate.normalized_loss == estimate.metrics.normalized_loss
    assert len(estimate.history) == FAST["steps"]
    assert estimate.settings["n_features"] == 128 and estimate.settings["n_samples"] == 600
    assert estimate.a_estimate == pytest.approx(implied_a(estimate.normalized_loss))
    assert isinstance(estimate.converged, bool) and estimate.message
    frame = estimate.to_frame()
    assert frame.shape[0] == 1
    assert {"n0", "loss", "s1", "normalized_loss", "converged", "lam"} <= set(frame.columns)


def test_estimate_is_seeded(syn, estimate):
    again = estimate_sparsity(syn, **FAST)
    assert again.normalized_loss == estimate.normalized_loss
    assert torch.equal(again.dictionary, estimate.dictionary)
    other = estimate_sparsity(syn, seed=1, **FAST)
    assert not torch.equal(other.dictionary, estimate.dictionary)


def test_estimate_invariant_to_rescaling(syn, estimate):
    # a power of two: every step is the same computation on the same normalised data
    exact = estimate_sparsity(syn.data * 8.0, **FAST)
    assert exact.normalized_loss == estimate.normalized_loss
    assert exact.loss == pytest.approx(estimate.loss * 64, rel=1e-12)
    # any factor: float rounding changes the SGD path slightly, the measure hardly
    other = estimate_sparsity(syn.data * 0.37, **FAST)
    assert other.normalized_loss == pytest.approx(estimate.normalized_loss, rel=0.02)


def test_estimate_accepts_numpy_and_float64(syn):
    est = estimate_sparsity(syn.data.numpy().astype(np.float64), dtype=torch.float64, **FAST)
    assert est.dictionary.dtype == torch.float64 and math.isfinite(est.normalized_loss)


def test_center_option(syn):
    shifted = syn.data + 5.0
    raw = estimate_sparsity(shifted, **FAST)
    centred = estimate_sparsity(shifted, center=True, **FAST)
    base = estimate_sparsity(syn.data, center=True, **FAST)
    assert centred.normalized_loss == pytest.approx(base.normalized_loss, rel=1e-3)
    assert raw.normalized_loss != pytest.approx(centred.normalized_loss, rel=1e-3)


def test_too_few_steps_is_reported(syn):
    with pytest.warns(ConvergenceWarning, match="too few steps"):
        est = estimate_sparsity(syn, steps=5, batch_size=64)
    assert not est.converged and "too few steps" in est.message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet = estimate_sparsity(syn, steps=5, batch_size=64, warn=False)
    assert not quiet.converged


def test_cap_is_reported(syn):
    with pytest.warns(ConvergenceWarning, match="max_atoms"):
        est = estimate_sparsity(syn, max_atoms=1, **FAST)
    assert not est.converged and est.metrics.capped_fraction > 0


def test_few_samples_per_atom_warns(syn):
    from specmetrics.sparse_coding import SampleSizeWarning

    with pytest.warns(SampleSizeWarning, match="per atom"):
        estimate_sparsity(syn.data[:200], **FAST)  # 200 samples, 128 atoms
    with warnings.catch_warnings():
        warnings.simplefilter("error", SampleSizeWarning)
        estimate_sparsity(syn.data[:200], n_features=50, **FAST)


def test_eval_samples(syn):
    est = estimate_sparsity(syn, eval_samples=100, **FAST)
    assert est.metrics.n_samples == 100 and est.settings["eval_samples"] == 100


def test_learn_dictionary_returns_unit_atoms(syn):
    learned = learn_dictionary(syn.data, n_features=40, steps=30, batch_size=100, warn=False)
    assert learned.dictionary.shape == (16, 40)
    assert torch.allclose(learned.dictionary.norm(dim=0), torch.ones(40), atol=1e-5)
    assert learned.lam > 0 and learned.scale > 0 and len(learned.history) == 30
    rnd = learn_dictionary(syn.data, n_features=40, steps=30, batch_size=100, init="random",
                           warn=False)
    assert not torch.equal(rnd.dictionary, learned.dictionary)


def test_dictionary_metrics_oracle_and_fixed_lambda(syn):
    oracle = dictionary_metrics(syn, syn.dictionary)
    assert oracle.lambda_ratio == 0.1 and oracle.lambda_iterations >= 2
    # the adaptive lambda is the fixed point of lam = 0.1 * mean max alpha
    assert oracle.lam == pytest.approx(0.1 * oracle.mean_max, rel=1e-3)
    fixed = dictionary_metrics(syn, syn.dictionary, lam=oracle.lam)
    assert fixed.lambda_ratio is None and fixed.lambda_iterations == 0
    assert fixed.normalized_loss == pytest.approx(oracle.normalized_loss, rel=1e-3)
    # the dictionary is normalised: scaling its columns changes nothing
    again = dictionary_metrics(syn, syn.dictionary * 3.0)
    assert again.normalized_loss == pytest.approx(oracle.normalized_loss, rel=1e-9)


def test_sparsity_band(syn):
    band = sparsity_band(syn, seeds=(0, 1, 2), **FAST)
    assert isinstance(band, SparsityBand) and list(band) == ["seed=0", "seed=1", "seed=2"]
    values = [r.normalized_loss for r in band.rows]
    assert band.low == min(values) <= band.mean <= band.high == max(values)
    assert band.std == pytest.approx(float(np.std(values, ddof=1)))
    assert band.settings["seeds"] == (0, 1, 2) and band.settings["steps"] == FAST["steps"]
    assert band.to_frame().shape == (3, 6)
    back = SparsityBand.from_json(band.to_json())
    assert back == band and back.settings == band.settings


def test_sparsity_band_rejects_before_work(syn):
    with pytest.raises(ParameterError, match="'seeds' parameter of sparsity_band"):
        sparsity_band(syn, seeds=(1, 1))
    with pytest.raises(ParameterError, match="'seeds' parameter of sparsity_band"):
        sparsity_band(syn, seeds=())
    with pytest.raises(ParameterError, match="'colour' parameter of sparsity_band"):
        sparsity_band(syn, colour="red")
    with pytest.raises(ParameterError, match="'steps' parameter of sparsity_band"):
        sparsity_band(syn, steps=0)


@pytest.mark.parametrize("change, name", [
    (dict(data=torch.ones(5)), "data"),
    (dict(data=torch.zeros(5, 4)), "data"),
    (dict(data=torch.ones(1, 4)), "data"),
    (dict(data=torch.tensor([[1.0, float("inf")], [0.0, 1.0]])), "data"),
    (dict(n_features=0), "n_features"),
    (dict(seed=-1), "seed"),
    (dict(device="cuda:7"), "device"),
    (dict(steps=0), "steps"),
    (dict(batch_size=0), "batch_size"),
    (dict(lr=0.0), "lr"),
    (dict(lr=3.0), "lr"),
    (dict(lambda_ratio=0.0), "lambda_ratio"),
    (dict(center="yes"), "center"),
    (dict(dtype=torch.int32), "dtype"),
    (dict(max_atoms=0), "max_atoms"),
    (dict(step_tol=-1.0), "step_tol"),
    (dict(tol=0.0), "tol"),
    (dict(eval_samples=0), "eval_samples"),
    (dict(progress=1), "progress"),
    (dict(warn=None), "warn"),
])
def test_estimate_rejects(change, name):
    data = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    before = data.clone()
    args = {"data": data, **change}
    with pytest.raises(ParameterError, match=f"'{name}' parameter of estimate_sparsity"):
        estimate_sparsity(args.pop("data"), **args)
    assert torch.equal(data, before)


@pytest.mark.parametrize("change, name", [
    (dict(data=torch.zeros(20, 4)), "data"),
    (dict(dictionary=torch.ones(3, 5)), "dictionary"),
    (dict(dictionary=torch.zeros(4, 5)), "dictionary"),
    (dict(lam=0.0), "lam"),
    (dict(lambda_ratio=1.5), "lambda_ratio"),
    (dict(lambda_tol=0.0), "lambda_tol"),
    (dict(max_lambda_iter=0), "max_lambda_iter"),
])
def test_dictionary_metrics_rejects(change, name):
    args = {"data": torch.randn(20, 4), "dictionary": torch.randn(4, 5), **change}
    with pytest.raises(ParameterError, match=f"'{name}' parameter of dictionary_metrics"):
        dictionary_metrics(args.pop("data"), args.pop("dictionary"), **args)


def test_controls_are_measurable():
    data = make_control("cauchy_norm", 8, 300, seed=0)
    est = estimate_sparsity(data, warn=False, **FAST)
    assert math.isfinite(est.normalized_loss) and est.normalized_loss >= 1
