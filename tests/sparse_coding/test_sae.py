"""SAE metrics: L0, dead/dense latents, FVE about the mean (with the known mistakes as foils),
loss recovered, and the small trainer end to end."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import build, one_torch_thread, token_windows  # noqa: F401
from specmetrics import ParameterError, SpecmetricsWarning
from specmetrics.sparse_coding import (fraction_of_variance_explained, loss_recovered,
                                       make_sparse_linear, recovered_fraction, sae_metrics,
                                       train_sae)
from specmetrics.sparse_coding.strategies import seeds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- fraction of variance explained -------------------------------------------------------------

def foil_about_zero(x, x_hat):
    """Mistake 1: variance about zero instead of about the mean."""
    x, x_hat = x.double(), x_hat.double()
    return 1 - float((x - x_hat).pow(2).sum()) / float(x.pow(2).sum())


def foil_variance_of_per_dimension_mean(x, x_hat):
    """Mistake 2: the denominator is the variance of the per-dimension means, Var_i(mean_t x_ti),
    which measures how the mean vector's entries differ, not how the tokens spread."""
    x, x_hat = x.double(), x_hat.double()
    mse = float((x - x_hat).pow(2).mean())
    return 1 - mse / float(x.mean(dim=0).var())


def foil_mean_of_token_ratios(x, x_hat):
    """Mistake 3: per-token ratios averaged afterwards."""
    x, x_hat = x.double(), x_hat.double()
    resid = (x - x_hat).pow(2).sum(dim=1)
    total = (x - x.mean(dim=0)).pow(2).sum(dim=1)
    return float((1 - resid / total).mean())


def check_fve_properties(fve, x):
    """The two anchors: the mean predictor explains nothing, the identity everything."""
    mean_predictor = x.double().mean(dim=0, keepdim=True).expand_as(x).to(x.dtype)
    assert abs(fve(x, mean_predictor)) <= 1e-9, "mean predictor must give FVE 0"
    assert abs(fve(x, x) - 1) <= 1e-12, "identity must give FVE 1"


def _offset_data(seed, n=200, d=6):
    g = torch.Generator().manual_seed(seed)
    # a non-zero, non-constant mean vector and unequal spreads
    mean = torch.linspace(-3.0, 5.0, d)
    return mean + torch.randn((n, d), generator=g) * torch.linspace(0.5, 2.0, d)


@settings(max_examples=30)
@given(seed=seeds, n=st.integers(2, 300), d=st.integers(1, 12))
def test_fve_anchors_hold(seed, n, d):
    x = _offset_data(seed, n, d)
    if n > 1:
        check_fve_properties(fraction_of_variance_explained, x)


@pytest.mark.parametrize("foil", [foil_about_zero, foil_variance_of_per_dimension_mean,
                                  foil_mean_of_token_ratios])
def test_the_anchor_test_fails_for_each_known_mistake(foil):
    with pytest.raises(AssertionError):
        check_fve_properties(foil, _offset_data(0))


def test_fve_is_float64_over_all_tokens():
    # float32 data with a large offset: summing in float32 would lose the variance
    g = torch.Generator().manual_seed(0)
    x = (1e4 + torch.randn((5000, 8), generator=g)).to(torch.float32)
    x_hat = x + 0.1 * torch.randn((5000, 8), generator=g)
    xn, hn = x.numpy().astype(np.float64), x_hat.numpy().astype(np.float64)
    want = 1 - ((xn - hn) ** 2).sum() / ((xn - xn.mean(0)) ** 2).sum()
    assert fraction_of_variance_explained(x, x_hat) == pytest.approx(want, abs=1e-12)
    # leading dimensions are tokens: (batch, seq, d) gives the same number
    assert fraction_of_variance_explained(x.reshape(50, 100, 8), x_hat.reshape(50, 100, 8)) \
        == pytest.approx(want, abs=1e-12)


def test_fve_of_constant_inputs_is_nan():
    with pytest.warns(SpecmetricsWarning, match="zero variance"):
        assert math.isnan(fraction_of_variance_explained(torch.ones(4, 3), torch.zeros(4, 3)))


# -- L0, dead and dense latents -----------------------------------------------------------------

def test_l0_dead_dense_by_hand():
    z = torch.zeros(10, 4)
    z[:, 0] = 1.0          # dense: active on every token
    z[:3, 1] = 0.5         # active on 30 % of the tokens
    z[9, 2] = -2.0         # active on the last token only (|z| counts)
    x = torch.randn(10, 3)
    m = sae_metrics(x, x, z)
    assert m.l0 == pytest.approx((10 + 3 + 1) / 10)
    assert m.dead_fraction == 0.25 and m.dense_fraction == 0.5
    assert m.frequencies.tolist() == [1.0, 0.3, 0.1, 0.0]
    assert m.fve == 1.0 and m.mse == 0.0 and m.n_latents == 4 and m.n_tokens == 10
    # over the last 5 tokens latent 1 is dead too
    recent = sae_metrics(x, x, z, window=5)
    assert recent.dead_fraction == 0.5 and recent.window == 5
    assert sae_metrics(x, x, z, active_threshold=0.7).l0 == pytest.approx(1.1)
    assert sae_metrics(x, x, z, dense_threshold=0.2).dense_fraction == 0.5
    assert not m.frequencies.flags.writeable
    assert set(m.to_frame().columns) >= {"l0", "dead_fraction", "dense_fraction", "fve"}


@pytest.mark.parametrize("change, name", [
    (dict(x_hat=torch.zeros(10, 2)), "x_hat"),
    (dict(x_hat=torch.zeros(9, 3)), "x_hat"),
    (dict(latents=torch.zeros(9, 4)), "latents"),
    (dict(latents=[1, 2]), "latents"),
    (dict(window=0), "window"),
    (dict(window=11), "window"),
    (dict(dense_threshold=1.0), "dense_threshold"),
    (dict(active_threshold=-1.0), "active_threshold"),
])
def test_sae_metrics_rejects(change, name):
    args = dict(x=torch.randn(10, 3), x_hat=torch.randn(10, 3), latents=torch.zeros(10, 4))
    args.update(change)
    with pytest.raises(ParameterError, match=f"'{name}' parameter of sae_metrics"):
        sae_metrics(args.pop("x"), args.pop("x_hat"), args.pop("latents"), **args)


# -- loss recovered -----------------------------------------------------------------------------

def test_recovered_fraction_formula():
    assert recovered_fraction(2.0, 2.0, 5.0) == 1.0
    assert recovered_fraction(2.0, 5.0, 5.0) == 0.0
    assert recovered_fraction(2.0, 3.0, 6.0) == pytest.approx(0.75)
    with pytest.warns(SpecmetricsWarning, match="does not change"):
        assert math.isnan(recovered_fraction(2.0, 2.0, 2.0))


@pytest.fixture(scope="module")
def tiny_llama():
    return build("llama")


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_loss_recovered_is_one_at_the_original_and_zero_at_the_ablation(tiny_llama, ablation):
    ids = token_windows(3, 16)
    module = "model.layers.0.mlp"
    same = loss_recovered(tiny_llama, ids, module, lambda a: a, ablation=ablation)
    assert same.recovered == 1.0 and same.patched == same.orig
    if ablation == "zero":
        ablate = torch.zeros_like
    else:
        ablate = None  # the mean over every token, computed here independently

        holder = {}

        def grab(_m, _a, out):
            holder.setdefault("all", []).append(out.detach().reshape(-1, out.shape[-1]))
        h = tiny_llama.get_submodule(module).register_forward_hook(grab)
        with torch.no_grad():
            tiny_llama(ids)
        h.remove()
        mean = torch.cat(holder["all"]).double().mean(dim=0)
        ablate = lambda a: mean.to(a.dtype).expand_as(a).clone()  # noqa: E731
    worst = loss_recovered(tiny_llama, ids, module, ablate, ablation=ablation)
    assert worst.ablated != worst.orig
    assert worst.recovered == pytest.approx(0.0, abs=1e-9)
    half = loss_recovered(tiny_llama, ids, module, lambda a: 0.5 * a, ablation=ablation)
    assert half.n_tokens == 3 * 15 and half.ablation == ablation and half.module == module


def test_loss_recovered_rejects(tiny_llama):
    ids = token_windows(2, 8)
    with pytest.raises(ParameterError, match="'module' parameter of loss_recovered"):
        loss_recovered(tiny_llama, ids, "model.nope", lambda a: a)
    with pytest.raises(ParameterError, match="'ablation' parameter of loss_recovered"):
        loss_recovered(tiny_llama, ids, "model.layers.0.mlp", lambda a: a, ablation="random")
    with pytest.raises(ParameterError, match="'input_ids' parameter of loss_recovered"):
        loss_recovered(tiny_llama, ids.float(), "model.layers.0.mlp", lambda a: a)
    with pytest.raises(ParameterError, match="'reconstruct' parameter of loss_recovered"):
        loss_recovered(tiny_llama, ids, "model.layers.0.mlp", None)


# -- the small trainer, end to end --------------------------------------------------------------

@pytest.mark.parametrize("kind", ["topk", "l1"])
def test_train_sae_end_to_end(kind):
    syn = make_sparse_linear(16, 4000, 2.0, sigma=0.02, seed=0)
    x = syn.data * 7.0 + 1.5  # any scale and offset
    options = dict(k=4) if kind == "topk" else dict(l1_coefficient=3e-3)
    sae = train_sae(x, n_latents=96, steps=400, batch_size=256, lr=3e-3, **options)
    with torch.no_grad():
        z = sae.encode(x)
        x_hat = sae.decode(z)
    m = sae_metrics(x, x_hat, z)
    assert m.fve > 0.8, m
    if kind == "topk":
        assert m.l0 <= 4.0
    else:
        assert m.l0 < 30
    assert len(sae.history) == 400 and sae.history[-1] < sae.history[0]
    assert torch.allclose(sae.decoder.weight.norm(dim=0), torch.ones(96), atol=1e-5)


def test_train_sae_rejects():
    x = torch.randn(50, 4)
    with pytest.raises(ParameterError, match="'k' parameter of train_sae"):
        train_sae(x, n_latents=8)
    with pytest.raises(ParameterError, match="'k' parameter of train_sae"):
        train_sae(x, n_latents=8, k=2, l1_coefficient=0.1)
    with pytest.raises(ParameterError, match="'k' parameter of train_sae"):
        train_sae(x, n_latents=8, k=9)
    with pytest.raises(ParameterError, match="'x' parameter of train_sae"):
        train_sae(torch.zeros(5, 4), n_latents=8, k=2)
