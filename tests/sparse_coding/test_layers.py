"""layer_sparsity on tiny random models (every site kind, keys, JSON, plot, scale invariance)
and, marked shared + slow, on tiny-llama-wt."""
from __future__ import annotations

import math

import pytest
import torch

from tiny_models import build, one_torch_thread, token_windows  # noqa: F401
from specmetrics import ParameterError
from specmetrics.sparse_coding import LayerSparsity, SiteSparsity, layer_sparsity

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# random-weight models have dense activations: cap the greedy steps to keep the tests fast
FAST = dict(steps=20, batch_size=64, max_tokens=160, n_features=64, max_atoms=24,
            controls=("gaussian",), warn=False)


@pytest.fixture(scope="module")
def llama():
    return build("llama")


@pytest.fixture(scope="module")
def ids():
    return token_windows(4, 48)


@pytest.fixture(scope="module")
def profile(llama, ids):
    return layer_sparsity(llama, None, ids, **FAST)


def test_sites_keys_and_layers(profile):
    assert list(profile) == ["embeddings", "model.layers.0.mlp_out", "model.layers.0.residual",
                             "model.layers.1.mlp_out", "model.layers.1.residual"]
    assert [s.layer for s in profile.values()] == [0, 1, 1, 2, 2]
    emb = profile["embeddings"]
    assert isinstance(emb, SiteSparsity) and emb.block == -1 and emb.width == 64
    mlp = profile["model.layers.1.mlp_out"]
    assert mlp.module == "model.layers.1.mlp.down_proj" and mlp.kind == "mlp_out"
    for s in profile.values():
        assert s.n_tokens == 160 and 1 <= s.s1 <= s.normalized_loss and s.n0 >= 1
    assert set(profile.controls) == {"gaussian"} and 64 in profile.controls["gaussian"]
    assert profile.profile("residual") == {0: emb.normalized_loss,
                                           1: profile["model.layers.0.residual"].normalized_loss,
                                           2: profile["model.layers.1.residual"].normalized_loss}
    assert profile.settings["n_tokens"] == 160 and profile.settings["skip_first"] is True


def test_frame_json_and_plot(profile, tmp_path):
    frame = profile.to_frame()
    assert list(frame.index) == list(profile)
    assert {"kind", "layer", "normalized_loss", "control_gaussian"} <= set(frame.columns)
    back = LayerSparsity.from_json(profile.to_json(tmp_path / "p.json"))
    assert back == profile and dict(back.controls["gaussian"]) == dict(profile.controls["gaussian"])
    assert back.settings == profile.settings
    import matplotlib

    matplotlib.use("Agg")
    ax = profile.plot()
    assert ax.get_xlabel().startswith("layer")
    assert len(ax.lines) >= 3  # residual, mlp_out, the control
    import matplotlib.pyplot as plt

    plt.close("all")


def test_embeddings_site_is_scale_invariant(ids):
    base = build("llama", seed=1)
    scaled = build("llama", seed=1)
    with torch.no_grad():
        scaled.model.embed_tokens.weight.mul_(4.0)  # the embeddings site sees 4 x the data
    a = layer_sparsity(base, None, ids, sites="embeddings", **{**FAST, "controls": ()})
    b = layer_sparsity(scaled, None, ids, sites="embeddings", **{**FAST, "controls": ()})
    assert b["embeddings"].normalized_loss == a["embeddings"].normalized_loss
    assert b["embeddings"].loss == pytest.approx(16 * a["embeddings"].loss, rel=1e-9)


def test_seeded_and_token_sampling(llama, ids, profile):
    again = layer_sparsity(llama, None, ids, **FAST)
    assert again == profile
    keep = layer_sparsity(llama, None, ids, sites="residual", skip_first=False,
                          **{**FAST, "max_tokens": 10_000, "controls": ()})
    assert keep["model.layers.0.residual"].n_tokens == 4 * 48
    skip = layer_sparsity(llama, None, ids, sites="residual",
                          **{**FAST, "max_tokens": 10_000, "controls": ()})
    assert skip["model.layers.0.residual"].n_tokens == 4 * 47


@pytest.mark.parametrize("arch", ["gpt2", "bert", "qwen2"])
def test_other_architectures(arch, ids):
    model = build(arch)
    out = layer_sparsity(model, None, ids, sites="embeddings,residual,mlp_out,silu_gate",
                         **{**FAST, "controls": ()})
    kinds = [s.kind for s in out.values()]
    assert kinds.count("residual") == 2 and kinds.count("mlp_out") == 2
    assert kinds.count("silu_gate") == 2 and kinds[0] == "embeddings"
    assert all(math.isfinite(s.normalized_loss) for s in out.values())


def test_site_names_select(llama, ids):
    out = layer_sparsity(llama, None, ids, sites=["model.layers.1.residual", "qkv"],
                         **{**FAST, "controls": ()})
    assert list(out) == ["model.layers.0.qkv", "model.layers.1.qkv", "model.layers.1.residual"]


def test_model_left_unchanged(llama, ids):
    before = {k: v.clone() for k, v in llama.state_dict().items()}
    layer_sparsity(llama, None, ids, sites="residual", **{**FAST, "controls": ()})
    assert all(torch.equal(before[k], v) for k, v in llama.state_dict().items())
    assert not llama.training


@pytest.mark.parametrize("change, name", [
    (dict(sites="attention"), "sites"),
    (dict(sites=[]), "sites"),
    (dict(sites=[3]), "sites"),
    (dict(nsamples=0), "nsamples"),
    (dict(nsamples=5), "nsamples"),  # more than the 4 rows given
    (dict(seqlen=1), "seqlen"),
    (dict(max_tokens=1), "max_tokens"),
    (dict(skip_first="no"), "skip_first"),
    (dict(center=1), "center"),
    (dict(controls=("uniform",)), "controls"),
    (dict(controls=("gaussian", "gaussian")), "controls"),
    (dict(steps=0), "steps"),
    (dict(n_features=0), "n_features"),
    (dict(lr=-1.0), "lr"),
    (dict(device="cuda:3"), "device"),
    (dict(progress="yes"), "progress"),
])
def test_layer_sparsity_rejects_before_work(llama, ids, change, name):
    with pytest.raises(ParameterError, match=f"'{name}' parameter of layer_sparsity"):
        layer_sparsity(llama, None, ids, **{**FAST, **change})


def test_text_needs_tokenizer(llama):
    with pytest.raises(ParameterError, match="layer_sparsity"):
        layer_sparsity(llama, None, "some text " * 50, **FAST)


@pytest.mark.shared
@pytest.mark.slow
def test_tiny_llama_wt_profile(tiny_llama_dir, shared_dir):
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    tok = AutoTokenizer.from_pretrained(str(tiny_llama_dir))
    text = Path(shared_dir / "data" / "wikitext-2-tokenized" / "valid.txt")
    out = layer_sparsity(model, tok, text, sites="embeddings,residual", nsamples=8, seqlen=256,
                         max_tokens=2048, steps=120, batch_size=256)
    control = out.controls["gaussian"][256]
    # trained-LM activations are far sparser than Gaussian data of the same shape
    assert all(s.normalized_loss < 0.8 * control for s in out.values())


def test_constant_site_is_reported_not_raised(ids):
    from specmetrics.sparse_coding import ConvergenceWarning

    model = build("llama", seed=2)
    with torch.no_grad():
        model.model.layers[1].mlp.down_proj.weight.zero_()
    with pytest.warns(ConvergenceWarning, match="model.layers.1.mlp_out: every sampled"):
        out = layer_sparsity(model, None, ids, sites="mlp_out",
                             **{**FAST, "controls": (), "warn": True})
    dead = out["model.layers.1.mlp_out"]
    assert math.isnan(dead.normalized_loss) and not dead.converged
    assert math.isfinite(out["model.layers.0.mlp_out"].normalized_loss)
    back = LayerSparsity.from_json(out.to_json())
    assert math.isnan(back["model.layers.1.mlp_out"].normalized_loss)
