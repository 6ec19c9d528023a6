"""Token congruence: a neuron planted along one token's embedding ranks that token first, far
above the random baseline; random neurons sit at the baseline; the OV circuit's copying."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specmetrics import ParameterError
from specmetrics.circuits import TokenCongruence, token_congruence
from specmetrics.circuits._common import random_baseline, scan_vocab
from tiny_models import build, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TOKEN, NEURON = 42, 7


class FakeTokenizer:
    def convert_ids_to_tokens(self, ids):
        return [f"tok{i}" for i in ids]


@pytest.fixture(scope="module")
def wide_llama():
    """hidden 256 (so that single-token alignment stands far above chance), vocab 256."""
    model = build("llama", hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                  intermediate_size=96)
    w_e = model.model.embed_tokens.weight.detach()
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight[NEURON] = 3.0 * w_e[TOKEN]
        model.model.layers[1].mlp.down_proj.weight[:, NEURON] = -0.5 * w_e[TOKEN]
    return model


def test_aligned_neuron_ranks_its_token_first_far_above_random(wide_llama):
    res = token_congruence(wide_llama, FakeTokenizer(), top_k=1, kinds=["mlp_in", "mlp_out"])
    entry = res["model.layers.0.mlp.up_proj"]
    assert entry.kind == "mlp_in" and entry.vocab == "embedding"
    best = entry.top_units[0]
    assert best.index == NEURON and best.token_ids[0] == TOKEN and best.tokens[0] == f"tok{TOKEN}"
    others = np.delete(entry.ratios, NEURON)
    # random neurons sit at the baseline, the planted one far above it
    assert abs(others.mean() - 1.0) < 0.1
    assert entry.ratios[NEURON] > 3.5 and entry.ratios[NEURON] > 2 * others.max()
    assert entry.z[NEURON] > 15 and abs(np.delete(entry.z, NEURON).mean()) < 1.0
    assert entry.peaks[NEURON] > 1.5 * np.delete(entry.peaks, NEURON).max()
    # the ratio of an exact multiple of e_t is ||e_t|| / B_1
    b = res.baselines["embedding"]
    e = wide_llama.model.embed_tokens.weight.detach()[TOKEN]
    assert entry.ratios[NEURON] == pytest.approx(float(e.norm()) / b["mean"], rel=1e-5)
    # a negative multiple points away from the token: its positive end is not the token
    down = res["model.layers.1.mlp.down_proj"]
    assert down.kind == "mlp_out" and down.ratios[NEURON] < 1.0


def test_default_top_k_and_cosine(wide_llama):
    res = token_congruence(wide_llama, None, kinds="mlp_in", layers=[0])
    entry = res["model.layers.0.mlp.up_proj"]
    assert entry.top_units[0].index == NEURON and entry.top_units[0].tokens[0] == f"#{TOKEN}"
    assert entry.z[NEURON] > 10
    cos = token_congruence(wide_llama, None, kinds="mlp_in", layers=[0], cosine=True)
    assert cos["model.layers.0.mlp.up_proj"].top_units[0].token_ids[0] == TOKEN
    frame = res.to_frame()
    assert list(frame.index) == ["model.layers.0.mlp.gate_proj", "model.layers.0.mlp.up_proj"]
    assert frame.loc["model.layers.0.mlp.up_proj", "best_unit"] == f"neuron {NEURON}"


def test_ratio_is_scale_free_and_the_baseline_is_reproducible(wide_llama):
    w_e = wide_llama.model.embed_tokens.weight.detach()
    b1 = random_baseline(w_e, 5, 64, 0)
    b2 = random_baseline(w_e, 5, 64, 0)
    assert b1 == b2 and b1.sd > 0
    scaled = build("llama", hidden_size=256, num_attention_heads=4, num_key_value_heads=4,
                   intermediate_size=96)
    scaled.load_state_dict(wide_llama.state_dict())
    with torch.no_grad():
        scaled.model.layers[0].mlp.up_proj.weight.mul_(7.0)
    a = token_congruence(wide_llama, None, kinds=["mlp_in"], layers=0)
    b = token_congruence(scaled, None, kinds=["mlp_in"], layers=0)
    np.testing.assert_allclose(a["model.layers.0.mlp.up_proj"].ratios,
                               b["model.layers.0.mlp.up_proj"].ratios, rtol=1e-5)


def test_scan_vocab_matches_a_full_topk():
    gen = torch.Generator().manual_seed(0)
    m = torch.randn(3000, 16, generator=gen)
    x = torch.randn(700, 16, generator=gen)  # forces several vocabulary chunks
    scan = scan_vocab(m, x, 4, reference=torch.zeros(700), lowest=True)
    full = m @ x.T
    ref_v, ref_i = torch.topk(full, 4, dim=0)
    torch.testing.assert_close(scan.values, ref_v.T)
    assert torch.equal(scan.ids, ref_i.T)
    tol = 1e-5 * x.norm(dim=1) * m.norm(dim=1).max()
    assert torch.equal(scan.greater, (full > tol).sum(dim=0))
    torch.testing.assert_close(scan.low_values, torch.topk(full, 4, dim=0, largest=False).values.T)
    torch.testing.assert_close(scan.rms, full.double().square().mean(dim=0).sqrt())
    torch.testing.assert_close(scan.peak, ref_v.double().mean(dim=0) / scan.rms)


def test_peak_is_scale_free_and_near_the_gaussian_maximum_for_random_directions():
    gen = torch.Generator().manual_seed(1)
    m = torch.randn(4000, 64, generator=gen)
    b = random_baseline(m, 1, 64, 0)
    # the largest of 4000 near-Gaussian scores: about sqrt(2 ln 4000) minus a small correction
    assert 3.0 < b.peak_mean < math.sqrt(2 * math.log(4000))
    anisotropic = m + 5.0 * torch.ones(1, 64)  # a common direction lifts every token's score
    common = torch.ones(1, 64) / 8.0
    scan = scan_vocab(anisotropic, common, 1)
    base = random_baseline(anisotropic, 1, 64, 0)
    ratio = float(scan.top_mean[0]) / base.mean
    assert ratio > 5  # the ratio rewards the common direction ...
    assert float(scan.peak[0]) < 1.2  # ... the peak does not: every score is about the same
    assert float(scan_vocab(3 * m, common, 1).peak[0]) == pytest.approx(
        float(scan_vocab(m, common, 1).peak[0]), rel=1e-5)


def test_ov_copying_circuit_maps_each_token_to_itself():
    model = build("llama", num_key_value_heads=4, tie_word_embeddings=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.v_proj.weight.copy_(torch.eye(64))
        attn.o_proj.weight.copy_(torch.eye(64))  # W_O W_V = I: "OV without QK" copies
    res = token_congruence(model, None, kinds=["ov"], top_k=1, ov_tokens=64)
    copy = res["model.layers.0.self_attn.ov"]
    rand = res["model.layers.1.self_attn.ov"]
    assert copy.kind == "ov" and copy.vocab == "unembedding" and len(copy.unit_ids) == 64
    assert np.mean(copy.self_rank == 0) > 0.95
    assert np.mean(rand.self_rank == 0) < 0.2
    frame = res.to_frame()
    assert frame.loc["model.layers.0.self_attn.ov", "self_top_k_fraction"] > 0.95
    assert copy.ratios.mean() > 1.5 * rand.ratios.mean()
    assert res.settings["unembedding"] == "tied"  # W_U is W_E


def test_units_frame_and_sampled_sources():
    model = build("llama")
    res = token_congruence(model, FakeTokenizer(), ov_tokens=32, top_units=2, seed=3)
    ov = res["model.layers.0.self_attn.ov"]
    assert len(ov.unit_ids) == 32 and len(set(ov.unit_ids.tolist())) == 32
    again = token_congruence(model, FakeTokenizer(), ov_tokens=32, top_units=2, seed=3)
    assert np.array_equal(again["model.layers.0.self_attn.ov"].unit_ids, ov.unit_ids)
    units = res.units_frame()
    assert set(units["kind"]) == {"mlp_in", "mlp_out", "ov"}
    assert (units.groupby("name").size() <= 2).all()
    assert isinstance(res, TokenCongruence) and len(res) == 2 * 4  # gate, up, down, ov per block


def test_encoder_uses_the_embedding_for_both_ends():
    res = token_congruence(build("bert"), None, top_k=3)
    assert res.settings["unembedding"] == "embedding"
    kinds = res.to_frame()["kind"].tolist()
    assert kinds == ["mlp_in", "mlp_out", "ov"] * 2


@pytest.mark.parametrize("kwargs, param", [
    ({"kinds": ["mlp"]}, "kinds"), ({"kinds": []}, "kinds"), ({"kinds": 3}, "kinds"),
    ({"kinds": ["ov", "ov"]}, "kinds"), ({"top_k": 0}, "top_k"), ({"n_random": 1}, "n_random"),
    ({"top_units": -1}, "top_units"), ({"ov_tokens": 0}, "ov_tokens"),
    ({"cosine": "no"}, "cosine"), ({"seed": 1.5}, "seed"), ({"layers": 5}, "layers"),
    ({"progress": 1}, "progress"),
])
def test_bad_parameters(kwargs, param):
    model = build("llama")
    with pytest.raises(ParameterError, match=rf"^The '{param}' parameter of token_congruence"):
        token_congruence(model, None, **kwargs)


def test_bad_tokenizer_and_model():
    with pytest.raises(ParameterError, match="'tokenizer' parameter of token_congruence"):
        token_congruence(build("llama"), 12)
    with pytest.raises(ParameterError, match="'model' parameter of token_congruence"):
        token_congruence(None, None)
