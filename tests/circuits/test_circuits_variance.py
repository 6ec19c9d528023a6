"""Output variance: agreement with a whole-model forward pass, the pruned columns against an
independent computation, exact restoration, the magnitude mask."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specmetrics import ParameterError
from specmetrics.circuits import (OutputVariance, RunningVariance, magnitude_prune,
                                  output_variance)
from tiny_models import VOCAB, build, one_torch_thread, token_windows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _var(rows: torch.Tensor) -> float:
    """trace(Cov) / d of (tokens, d) rows, population variance."""
    rows = rows.double().reshape(-1, rows.shape[-1])
    return float(rows.var(dim=0, unbiased=False).mean())


def _reference(model, ids, layer_names, *, zero=None):
    """Whole-model forward per window; outputs of the o / down projections and the blocks."""
    outs: dict[str, list] = {}
    handles = []
    for name in layer_names:
        for key, mod in (("o", model.get_submodule(name).self_attn.o_proj),
                         ("down", model.get_submodule(name).mlp.down_proj),
                         ("block", model.get_submodule(name))):
            def hook(_m, _a, out, key=(name, key)):
                out = out[0] if isinstance(out, tuple) else out
                outs.setdefault(key, []).append(out[0].detach().clone())
            handles.append(mod.register_forward_hook(hook))
    saved = {}
    if zero is not None:
        for n in zero:
            w = model.get_submodule(n).weight
            saved[n] = w.detach().clone()
            with torch.no_grad():
                w.copy_(magnitude_prune(w, 0.5))
    try:
        with torch.no_grad():
            for i in range(ids.shape[0]):
                model(ids[i:i + 1], use_cache=False)
    finally:
        for h in handles:
            h.remove()
        for n, w in saved.items():
            with torch.no_grad():
                model.get_submodule(n).weight.copy_(w)
    return {k: torch.cat(v) for k, v in outs.items()}


def test_variances_agree_with_a_whole_model_forward():
    model = build("llama", seed=1)
    ids = token_windows(3, 24, seed=2)
    res = output_variance(model, None, ids)
    names = ["model.layers.0", "model.layers.1"]
    ref = _reference(model, ids, names)
    assert list(res) == names and isinstance(res, OutputVariance)
    for name in names:
        b = res[name]
        assert b.n_tokens == 3 * 24
        assert b.var_attention == pytest.approx(_var(ref[(name, "o")]), rel=1e-4)
        assert b.var_mlp == pytest.approx(_var(ref[(name, "down")]), rel=1e-4)
        assert b.var_sum == pytest.approx(_var(ref[(name, "o")] + ref[(name, "down")]), rel=1e-4)
        assert b.var_output == pytest.approx(_var(ref[(name, "block")]), rel=1e-4)
        assert dict(b.pruned) == {}


def test_pruned_columns_agree_with_pruning_one_block_in_the_whole_model():
    model = build("llama", seed=1)
    ids = token_windows(2, 16, seed=4)
    res = output_variance(model, None, ids, prune=0.5)
    names = ["model.layers.0", "model.layers.1"]
    dense = _reference(model, ids, names)
    for name in names:
        attn = f"{name}.self_attn"
        for label, parts in (("q+o", ("q_proj", "o_proj")),
                             ("q+k+v+o", ("q_proj", "k_proj", "v_proj", "o_proj"))):
            pruned = _reference(model, ids, [name], zero=[f"{attn}.{p}" for p in parts])
            delta = pruned[(name, "block")] - dense[(name, "block")]
            assert res[name].pruned[label] == pytest.approx(_var(delta), rel=1e-3)
            assert res[name].pruned_modules[label] == tuple(f"{attn}.{p}" for p in parts)
    frame = res.to_frame()
    assert list(frame.columns) == ["block", "var_attention", "var_mlp", "var_sum", "var_output",
                                   "var_delta_q+o", "var_delta_q+k+v+o", "n_tokens"]
    # pruning more projections changes the block more
    assert (frame["var_delta_q+k+v+o"] > frame["var_delta_q+o"]).all()


def test_model_restored_exactly_and_an_identity_pruner_changes_nothing():
    model = build("llama", seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = output_variance(model, None, token_windows(2, 16), prune=0.3,
                          pruner=lambda w, r: w, sets=["q+o", ("v", "o"), "mlp"])
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    for b in res.values():
        assert set(b.pruned) == {"q+o", "v+o", "gate+up+down"}
        assert all(v == 0.0 for v in b.pruned.values())
    assert not model.training


def test_failing_pruner_restores_the_weights_and_names_itself():
    model = build("llama", seed=1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    calls = []

    def bad(w, r):
        calls.append(w.shape)
        return w if len(calls) == 1 else w[:1]  # the second matrix gets a wrong shape

    with pytest.raises(ParameterError, match=r"^The 'pruner' parameter of output_variance"):
        output_variance(model, None, token_windows(2, 16), prune=0.5, pruner=bad)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_gpt2_fused_qkv_and_bert():
    gpt2 = build("gpt2")
    res = output_variance(gpt2, None, token_windows(2, 16), prune=0.5)
    b = res["transformer.h.0"]
    assert b.pruned_modules["q+o"] == ("transformer.h.0.attn.c_proj",)  # c_attn is not only q
    assert b.pruned_modules["q+k+v+o"] == ("transformer.h.0.attn.c_attn",
                                           "transformer.h.0.attn.c_proj")
    bert = output_variance(build("bert"), None, token_windows(2, 16), prune=0.5)
    assert all(math.isfinite(v.var_attention) and math.isfinite(v.var_mlp) and v.var_output > 0
               for v in bert.values())


def test_text_through_a_tokenizer():
    model = build("llama")

    def tok(text):  # a callable tokenizer: bytes as token ids
        return list(text.encode("utf-8"))

    res = output_variance(model, tok, "The quick brown fox jumps over the lazy dog. " * 20,
                          nsamples=2, seqlen=32)
    assert res.settings["nsamples"] == 2 and res.settings["seqlen"] == 32
    assert res.settings["source"] == "text"


def test_magnitude_prune():
    w = torch.tensor([[0.5, -3.0, 1.0, 0.0], [2.0, -0.1, 0.5, 4.0]])
    out = magnitude_prune(w, 0.5)
    assert torch.equal(out, torch.tensor([[0.0, -3.0, 1.0, 0.0], [2.0, 0.0, 0.0, 4.0]]))
    assert w[0, 0] == 0.5  # input untouched
    gen = torch.Generator().manual_seed(0)
    big = torch.randn(37, 53, generator=gen)
    for ratio in (0.0, 0.25, 0.7, 1.0):
        pruned = magnitude_prune(big, ratio)
        k = math.floor(ratio * big.numel())
        assert int((pruned == 0).sum()) == k
        kept = pruned[pruned != 0].abs()
        if k and kept.numel():
            assert float(kept.min()) >= float(big.abs().flatten().sort().values[k - 1])
    ties = torch.ones(10)
    assert int((magnitude_prune(ties, 0.3) == 0).sum()) == 3


def test_running_variance_merges_chunks():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(500, 7, generator=gen, dtype=torch.float64) * 3 + 10
    acc = RunningVariance()
    for part in torch.split(x, [1, 99, 200, 200]):
        acc.update(part)
    assert acc.value == pytest.approx(_var(x), rel=1e-12)
    assert math.isnan(RunningVariance().value)


@pytest.mark.parametrize("kwargs, param", [
    ({"prune": 1.0}, "prune"), ({"prune": 0}, "prune"), ({"prune": True}, "prune"),
    ({"prune": "0.5"}, "prune"), ({"sets": "banana"}, "sets"), ({"sets": []}, "sets"),
    ({"sets": ["q+o", "o+q"]}, "sets"), ({"pruner": "magnitude"}, "pruner"),
    ({"nsamples": 0}, "nsamples"), ({"nsamples": 9}, "nsamples"), ({"seqlen": 0}, "seqlen"),
    ({"seed": -2}, "seed"), ({"device": "banana"}, "device"), ({"progress": "yes"}, "progress"),
])
def test_bad_parameters(kwargs, param):
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ParameterError, match=rf"^The '{param}' parameter of output_variance"):
        output_variance(model, None, token_windows(4, 16), **kwargs)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_bad_text():
    model = build("llama")
    with pytest.raises(ParameterError, match="'tokenizer' parameter of output_variance"):
        output_variance(model, None, "some text")
    with pytest.raises(ParameterError, match="'calibration' parameter of output_variance"):
        output_variance(model, None, torch.full((2, 8), VOCAB + 5))
    with pytest.raises(ParameterError, match="'model' parameter of output_variance"):
        output_variance(np.zeros(3), None, token_windows(2, 8))
