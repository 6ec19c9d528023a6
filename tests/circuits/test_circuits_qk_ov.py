"""QK/OV spectra: planted ranks and spectra recovered, GQA pairing against transformers'
repeat_kv, agreement with the directly formed products, invariances, directions as tokens."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specmetrics import ParameterError, UnsupportedModelError
from specmetrics.circuits import QKOVSpectra, embedding_directions, qk_ov_spectra
from specmetrics.circuits._common import attention_weights, product_svd, singular_metrics
from tiny_models import build, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

HEAD_DIM = 16  # tiny llama: hidden 64, 4 query heads, 2 KV heads


class FakeTokenizer:
    def convert_ids_to_tokens(self, ids):
        return [f"tok{i}" for i in ids]


def _orthonormal(d: int, r: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=gen, dtype=torch.float64))
    return q  # (d, r)


def _plant_qk(model, sigma: np.ndarray, *, head: int = 0, layer: int = 0):
    """W_Q^T W_K of ``head`` (and of the other query head of its KV group) = U diag(sigma) V^T."""
    attn = model.model.layers[layer].self_attn
    d = attn.q_proj.weight.shape[1]
    r = len(sigma)
    u, v = _orthonormal(d, r, 1), _orthonormal(d, r, 2)
    g = head // 2
    with torch.no_grad():
        q_rows = torch.zeros(HEAD_DIM, d, dtype=torch.float64)
        q_rows[:r] = torch.as_tensor(sigma)[:, None] * u.T
        k_rows = torch.zeros(HEAD_DIM, d, dtype=torch.float64)
        k_rows[:r] = v.T
        attn.q_proj.weight[head * HEAD_DIM:(head + 1) * HEAD_DIM] = q_rows.float()
        attn.k_proj.weight[g * HEAD_DIM:(g + 1) * HEAD_DIM] = k_rows.float()
    return u, v


def _entropy(sigma):
    lam = np.asarray(sigma, dtype=np.float64) ** 2
    p = lam / lam.sum()
    return float(-(p * np.log(p)).sum())


def test_rank_r_qk_product_gives_rank_r_and_its_entropy():
    model = build("llama")
    sigma = np.array([5.0, 3.0, 2.0, 1.0, 0.5])
    _plant_qk(model, sigma, head=0)
    res = qk_ov_spectra(model, layers=0, heads=[0])
    head = res["model.layers.0.self_attn.heads.0"]
    m = head.qk.metrics
    assert m["rank"] == 5
    assert m["rank_fraction"] == pytest.approx(5 / HEAD_DIM)
    np.testing.assert_allclose(head.qk.singular_values[:5], sigma, rtol=1e-6)
    assert np.all(head.qk.singular_values[5:] < 1e-5)
    assert m["entropy"] == pytest.approx(_entropy(sigma), rel=1e-6)
    assert m["entropy_normalized"] == pytest.approx(_entropy(sigma) / math.log(HEAD_DIM), rel=1e-6)
    p = sigma / sigma.sum()
    assert m["effective_rank"] == pytest.approx(math.exp(-(p * np.log(p)).sum()), rel=1e-6)
    assert m["stable_rank"] == pytest.approx((sigma ** 2).sum() / 25.0, rel=1e-6)
    # a flat rank-r spectrum: entropy ln r, effective rank r
    model2 = build("llama")
    _plant_qk(model2, np.ones(7), head=2)
    m2 = qk_ov_spectra(model2, layers=[0], heads=[2])["model.layers.0.self_attn.heads.2"].qk.metrics
    assert m2["rank"] == 7 and m2["entropy"] == pytest.approx(math.log(7), rel=1e-6)
    assert m2["effective_rank"] == pytest.approx(7, rel=1e-6)


def test_rank_r_ov_product():
    model = build("llama")
    attn = model.model.layers[1].self_attn
    d = 64
    r = 3
    u, v = _orthonormal(d, r, 3), _orthonormal(d, r, 4)
    sigma = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    with torch.no_grad():  # head 3 reads KV head 1
        o_cols = torch.zeros(d, HEAD_DIM, dtype=torch.float64)
        o_cols[:, :r] = u * sigma
        v_rows = torch.zeros(HEAD_DIM, d, dtype=torch.float64)
        v_rows[:r] = v.T
        attn.o_proj.weight[:, 3 * HEAD_DIM:4 * HEAD_DIM] = o_cols.float()
        attn.v_proj.weight[HEAD_DIM:2 * HEAD_DIM] = v_rows.float()
    m = qk_ov_spectra(model, layers=1, heads=3)["model.layers.1.self_attn.heads.3"].ov
    assert m.metrics["rank"] == 3
    np.testing.assert_allclose(m.singular_values[:3], sigma.numpy(), rtol=1e-6)


def test_gqa_pairing_with_four_query_heads_and_two_kv_heads():
    model = build("llama")  # 4 query heads, 2 KV heads
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == 2
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.k_proj.weight[HEAD_DIM:] = 0  # KV head 1: query heads 2, 3 have a zero QK product
        attn.v_proj.weight[:HEAD_DIM] = 0  # KV head 0: query heads 0, 1 have a zero OV product
    res = qk_ov_spectra(model, layers=0)
    rows = res.to_frame()
    assert rows["kv_head"].tolist() == [0, 0, 1, 1]
    assert rows["qk_rank"].tolist() == [HEAD_DIM, HEAD_DIM, 0, 0]
    assert rows["ov_rank"].tolist() == [0, 0, HEAD_DIM, HEAD_DIM]


def test_gqa_products_agree_with_transformers_repeat_kv():
    from transformers.models.llama.modeling_llama import repeat_kv

    model = build("llama", seed=3)
    res = qk_ov_spectra(model)
    for layer in range(2):
        attn = model.model.layers[layer].self_attn
        wq, wk = attn.q_proj.weight.detach().double(), attn.k_proj.weight.detach().double()
        wv, wo = attn.v_proj.weight.detach().double(), attn.o_proj.weight.detach().double()
        d = wq.shape[1]
        # repeat_kv takes (batch, n_kv, seq, head_dim): the "sequence" here is the d input dims
        k_rep = repeat_kv(wk.reshape(2, HEAD_DIM, d).transpose(1, 2)[None], 2)[0]
        v_rep = repeat_kv(wv.reshape(2, HEAD_DIM, d).transpose(1, 2)[None], 2)[0]
        for h in range(4):
            q_h = wq[h * HEAD_DIM:(h + 1) * HEAD_DIM]
            qk = q_h.T @ k_rep[h].T
            ov = wo[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] @ v_rep[h].T
            entry = res[f"model.layers.{layer}.self_attn.heads.{h}"]
            np.testing.assert_allclose(entry.qk.singular_values,
                                       torch.linalg.svdvals(qk)[:HEAD_DIM].numpy(), rtol=1e-9,
                                       atol=1e-12)
            np.testing.assert_allclose(entry.ov.singular_values,
                                       torch.linalg.svdvals(ov)[:HEAD_DIM].numpy(), rtol=1e-9,
                                       atol=1e-12)


def test_qk_product_is_the_attention_logit_bilinear_form():
    """x_i^T W_QK x_j equals q_i . k_j of the head (no rotary: same position for both)."""
    model = build("llama", seed=5)
    a = attention_weights(model, func="test")[0]
    x = torch.randn(6, 64, dtype=torch.float64)
    q = x @ a.q.double().T
    k = x @ a.k.double().T
    for h in range(4):
        g = a.kv_head(h)
        logits = q[:, h * HEAD_DIM:(h + 1) * HEAD_DIM] @ k[:, g * HEAD_DIM:(g + 1) * HEAD_DIM].T
        w_qk = a.q_head(h).double().T @ a.k_head(g).double()
        torch.testing.assert_close(logits, x @ w_qk @ x.T)


@pytest.mark.parametrize("arch", ["gpt2", "gpt_neox", "opt", "bert", "qwen2"])
def test_every_architecture_agrees_with_the_direct_product(arch):
    model = build(arch, seed=1)
    res = qk_ov_spectra(model, layers=1, fit=False)
    a = attention_weights(model, func="test")[1]
    assert len(res) == a.n_heads
    for name, entry in res.items():
        h, g = entry.head, entry.kv_head
        assert g == a.kv_head(h) and name.endswith(f".heads.{h}")
        qk = a.q_head(h).double().T @ a.k_head(g).double()
        ov = a.o_head(h).double() @ a.v_head(g).double()
        np.testing.assert_allclose(entry.qk.singular_values,
                                   torch.linalg.svdvals(qk)[:a.head_dim].numpy(), rtol=1e-8,
                                   atol=1e-10)
        np.testing.assert_allclose(entry.ov.singular_values,
                                   torch.linalg.svdvals(ov)[:a.head_dim].numpy(), rtol=1e-8,
                                   atol=1e-10)


def test_fused_qkv_split_matches_the_model():
    """GPT-2's c_attn thirds and GPT-NeoX's per-head interleaving give the model's own q/k/v."""
    for arch in ("gpt2", "gpt_neox"):
        model = build(arch, seed=2)
        a = attention_weights(model, func="test")[0]
        x = torch.randn(1, 5, 64)
        captured = {}
        if arch == "gpt2":
            mod = model.transformer.h[0].attn.c_attn
        else:
            mod = model.gpt_neox.layers[0].attention.query_key_value
        handle = mod.register_forward_hook(lambda m, i, o: captured.setdefault("o", o))
        with torch.no_grad():
            mod(x)
        handle.remove()
        out = captured["o"][0]
        if arch == "gpt2":
            q_ref = out[:, :64]
        else:
            q_ref = out.reshape(5, 4, 3 * HEAD_DIM)[:, :, :HEAD_DIM].reshape(5, 64)
        bias = mod.bias.detach()
        bias_q = bias[:64] if arch == "gpt2" else \
            bias.reshape(4, 3 * HEAD_DIM)[:, :HEAD_DIM].reshape(64)
        torch.testing.assert_close(x[0] @ a.q.T + bias_q, q_ref, rtol=1e-5, atol=1e-5)


def test_invariant_to_a_rotation_inside_the_head():
    model = build("llama", seed=4)
    before = qk_ov_spectra(model, fit=False)
    rot = _orthonormal(HEAD_DIM, HEAD_DIM, 9).float()
    with torch.no_grad():
        for layer in model.model.layers:
            attn = layer.self_attn
            for g in range(2):  # the same rotation for a KV head and its query heads
                ks = slice(g * HEAD_DIM, (g + 1) * HEAD_DIM)
                attn.k_proj.weight[ks] = rot @ attn.k_proj.weight[ks]
                attn.v_proj.weight[ks] = rot @ attn.v_proj.weight[ks]
                for h in (2 * g, 2 * g + 1):
                    qs = slice(h * HEAD_DIM, (h + 1) * HEAD_DIM)
                    attn.q_proj.weight[qs] = rot @ attn.q_proj.weight[qs]
                    attn.o_proj.weight[:, qs] = attn.o_proj.weight[:, qs] @ rot.T
    after = qk_ov_spectra(model, fit=False)
    for name in before:
        np.testing.assert_allclose(after[name].qk.singular_values,
                                   before[name].qk.singular_values, rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(after[name].ov.singular_values,
                                   before[name].ov.singular_values, rtol=1e-5, atol=1e-7)


def test_planted_ov_direction_maps_to_its_tokens():
    model = build("llama", seed=0)
    w_e = model.model.embed_tokens.weight.detach()
    w_u = model.lm_head.weight.detach()
    src, dst = 17, 99
    attn = model.model.layers[0].self_attn
    with torch.no_grad():
        attn.v_proj.weight[:HEAD_DIM] = 0
        attn.v_proj.weight[0] = 10 * w_e[src] / w_e[src].norm()
        attn.o_proj.weight[:, :HEAD_DIM] = 0
        attn.o_proj.weight[:, 0] = 10 * w_u[dst] / w_u[dst].norm()
    res = qk_ov_spectra(model, layers=0, heads=0, tokenizer=FakeTokenizer(), directions=2,
                        top_k=1)
    ov = res["model.layers.0.self_attn.heads.0"].ov
    first = {d.side: d for d in ov.directions if d.index == 0}
    assert ov.metrics["rank"] == 1
    assert first["source"].token_ids[0] == src and first["source"].tokens[0] == f"tok{src}"
    assert first["output"].token_ids[0] == dst
    # a single-token direction is far more token-aligned than a random one
    assert first["source"].ratio > 1.8 and first["source"].z > 5
    assert res.settings["unembedding"] == "lm_head"
    frame = res.to_frame()
    assert frame.loc["model.layers.0.self_attn.heads.0", "ov_source_tokens"].startswith(
        f"tok{src}")


def test_embedding_directions_are_its_singular_vectors():
    model = build("llama", seed=0)
    w_e = model.model.embed_tokens.weight.detach()
    s, v = embedding_directions(w_e, 4)
    np.testing.assert_allclose(s, torch.linalg.svdvals(w_e.double())[:4].numpy(), rtol=1e-8)
    res = qk_ov_spectra(model, layers=0, tokenizer=FakeTokenizer(), directions=4, top_k=3)
    assert [d.index for d in res.embedding] == [0, 1, 2, 3]
    np.testing.assert_allclose([d.singular_value for d in res.embedding], s, rtol=1e-8)
    for d, vec in zip(res.embedding, v):
        scores = w_e.double() @ vec
        top = scores.abs().argmax()
        # sign convention: the largest-magnitude score is at the positive end
        assert int(top) in (d.token_ids[0], d.negative_token_ids[0])
        assert d.scores[0] >= 0 and d.scores[0] == pytest.approx(float(scores.abs().max()),
                                                                 rel=1e-5)
    assert set(res.baselines) == {"embedding", "unembedding"}


def test_layer_summary_and_v_readings():
    model = build("llama", seed=0)
    res = qk_ov_spectra(model)
    summary = res.summary()
    assert list(summary.index) == ["model.layers.0", "model.layers.1"]
    for name, row in summary.iterrows():
        wv = model.get_submodule(name).self_attn.v_proj.weight.detach().double()
        s = torch.linalg.svdvals(wv).numpy()
        ref = singular_metrics(s, max_rank=min(wv.shape), n=max(wv.shape))
        assert row["v_rank_fraction"] == 1.0  # a random (or trained) W_V is full rank
        assert row["v_entropy"] == pytest.approx(ref["entropy"])
        assert row["v_entropy_sv"] == pytest.approx(math.log(ref["effective_rank"]))
        assert row["qk_entropy_mean"] == pytest.approx(
            res.to_frame().query("block == @row.block")["qk_entropy"].mean())
        assert row["n_heads"] == 4 and row["n_kv_heads"] == 2 and row["head_dim"] == HEAD_DIM


def test_alpha_where_a_tail_fits():
    model = build("llama", hidden_size=128, num_attention_heads=2, num_key_value_heads=2)
    res = qk_ov_spectra(model, layers=0)
    m = res["model.layers.0.self_attn.heads.0"].qk.metrics
    assert math.isfinite(m["alpha"]) and m["alpha"] > 1 and m["alpha_n_tail"] >= 8
    none = qk_ov_spectra(model, layers=0, fit=False)
    assert math.isnan(none["model.layers.0.self_attn.heads.0"].qk.metrics["alpha"])


def test_product_svd_vectors_reconstruct_the_product():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(3, 40, 6, generator=gen, dtype=torch.float64)
    b = torch.randn(3, 6, 30, generator=gen, dtype=torch.float64)
    s, u, v = product_svd(a, b, vectors=True)
    torch.testing.assert_close(u @ torch.diag_embed(s) @ v.transpose(-1, -2), a @ b)
    torch.testing.assert_close(s, torch.linalg.svdvals(a @ b)[:, :6])


@pytest.mark.parametrize("kwargs, param", [
    ({"layers": 2}, "layers"), ({"layers": [0, 0]}, "layers"), ({"layers": "0"}, "layers"),
    ({"layers": []}, "layers"), ({"layers": np.zeros((1, 1), dtype=int)}, "layers"),
    ({"layers": [0.0]}, "layers"), ({"heads": 4}, "heads"), ({"heads": [-1]}, "heads"),
    ({"directions": -1}, "directions"), ({"directions": 1.5}, "directions"),
    ({"top_k": 0}, "top_k"), ({"n_random": 1}, "n_random"), ({"seed": -1}, "seed"),
    ({"fit": "yes"}, "fit"), ({"fit": 1}, "fit"), ({"progress": None}, "progress"),
    ({"tokenizer": "gpt2"}, "tokenizer"),
])
def test_bad_parameters(kwargs, param):
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ParameterError, match=rf"^The '{param}' parameter of qk_ov_spectra"):
        qk_ov_spectra(model, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_numpy_scalars_accepted_and_bad_models():
    model = build("llama")
    res = qk_ov_spectra(model, layers=np.int64(1), heads=[np.int32(0)], top_k=np.int64(3))
    assert list(res) == ["model.layers.1.self_attn.heads.0"]
    res = qk_ov_spectra(model, layers=np.array([1, 0]), heads=range(2))
    assert [(h.block, h.head) for h in res.values()] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    with pytest.raises(ParameterError, match="'model' parameter of qk_ov_spectra"):
        qk_ov_spectra("llama")
    with pytest.raises(UnsupportedModelError):
        qk_ov_spectra(torch.nn.Sequential(torch.nn.Linear(4, 4)))
    model.config.num_key_value_heads = 3  # disagrees with the k_proj shape
    with pytest.raises(UnsupportedModelError, match="do not match the config"):
        qk_ov_spectra(model)


def test_result_is_keyed_and_read_only():
    res = qk_ov_spectra(build("llama"))
    assert isinstance(res, QKOVSpectra) and len(res) == 8
    assert list(res)[:2] == ["model.layers.0.self_attn.heads.0",
                             "model.layers.0.self_attn.heads.1"]
    with pytest.raises(AttributeError):
        res.layers = {}
    with pytest.raises(ValueError):
        res["model.layers.0.self_attn.heads.0"].qk.singular_values[0] = 1.0


def test_half_precision_models():
    model = build("llama", seed=6)
    ref = qk_ov_spectra(model, fit=False).to_frame()
    half = qk_ov_spectra(model.to(torch.bfloat16), fit=False).to_frame()
    assert (half["qk_rank"] == ref["qk_rank"]).all()
    np.testing.assert_allclose(half["qk_entropy"], ref["qk_entropy"], rtol=0.02)
    np.testing.assert_allclose(half["ov_stable_rank"], ref["ov_stable_rank"], rtol=0.05)
