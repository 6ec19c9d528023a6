"""Activation-sparse inference: what the hooks zero, what they count, and that they go away."""
from __future__ import annotations

import math

import pytest
import torch

from tiny_models import build, one_torch_thread, token_windows  # noqa: F401
from specmetrics import ParameterError
from specmetrics.activations import find_sites
from specmetrics.activations.sparsify import (SPARSIFIABLE_KINDS, TorchThreshold, apply_threshold,
                                              replace_forward, sequential_thresholds,
                                              site_consumers, sparsify_activations)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def logits(model, ids):
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def sparsifiable(model, kinds=SPARSIFIABLE_KINDS):
    return {n: s for n, s in find_sites(model).items() if s.kind in kinds}


class Recorder:
    """Forward hooks that keep copies of a module's input and output."""

    def __init__(self, module):
        self.inputs, self.outputs = [], []
        self.handle = module.register_forward_hook(self)

    def __call__(self, _m, args, out):
        self.inputs.append(args[0].detach().clone())
        self.outputs.append(out.detach().clone())

    def remove(self):
        self.handle.remove()


# ----------------------------------------------------------------------------------------------
# the pure operation

def test_apply_threshold_zeroes_exactly_the_small_entries():
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0])
    assert apply_threshold(x, 1.0).tolist() == [-3.0, 0.0, 0.0, 0.0, 0.0, 0.0, 2.0]
    assert torch.equal(apply_threshold(x, 0.0), x)
    assert x.tolist() == [-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 2.0]  # not in place


# ----------------------------------------------------------------------------------------------
# consumers

def test_consumers_of_the_shared_inputs_gqa():
    model = build("llama")  # 4 heads, 2 key/value heads
    sites = find_sites(model)
    assert list(site_consumers(model, sites["model.layers.0.qkv"])) == [
        "model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj",
        "model.layers.0.self_attn.v_proj"]
    assert list(site_consumers(model, sites["model.layers.1.gate_up"])) == [
        "model.layers.1.mlp.gate_proj", "model.layers.1.mlp.up_proj"]
    assert list(site_consumers(model, sites["model.layers.1.down"])) == [
        "model.layers.1.mlp.down_proj"]
    assert list(site_consumers(model, sites["model.layers.0.silu_gate"])) == [
        "model.layers.0.mlp.act_fn"]


def test_consumers_of_fused_qkv_gpt2():
    model = build("gpt2")
    sites = find_sites(model)
    assert list(site_consumers(model, sites["transformer.h.0.qkv"])) == [
        "transformer.h.0.attn.c_attn"]
    assert list(site_consumers(model, sites["transformer.h.0.gate_up"])) == [
        "transformer.h.0.mlp.c_fc"]


# ----------------------------------------------------------------------------------------------
# thresholds of 0; removal

@pytest.mark.parametrize("arch", ["llama", "gpt2", "opt", "gpt_neox"])
def test_zero_thresholds_leave_outputs_unchanged(arch):
    model = build(arch)
    ids = token_windows(2, 16)
    dense = logits(model, ids)
    sites = sparsifiable(model)
    with sparsify_activations(model, {n: 0.0 for n in sites}) as handle:
        got = logits(model, ids)
    assert torch.equal(got, dense)
    realised = handle.realised()
    assert set(realised) == set(sites)
    # t = 0 "zeroes" only exact zeros: none in random-weight tensors, except after OPT's ReLU
    exact = {n for n, s in sites.items() if arch == "opt" and s.kind in ("silu_gate", "down")}
    assert all(v == 0.0 for n, v in realised.items() if n not in exact)
    assert all(0.3 < realised[n] < 0.7 for n in exact)


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_remove_restores_exact_dense_outputs(arch):
    model = build(arch)
    ids = token_windows(2, 16)
    dense = logits(model, ids)
    sites = sparsifiable(model, ("qkv", "o", "gate_up", "down"))
    handle = sparsify_activations(model, {n: 0.05 for n in sites})
    sparse = logits(model, ids)
    assert not torch.allclose(sparse, dense)
    assert handle.active
    handle.remove()
    handle.remove()  # idempotent
    assert not handle.active
    assert torch.equal(logits(model, ids), dense)
    # the context manager removes on exit, also on an exception
    with pytest.raises(RuntimeError, match="boom"):
        with sparsify_activations(model, {n: 0.05 for n in sites}):
            raise RuntimeError("boom")
    assert torch.equal(logits(model, ids), dense)
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


# ----------------------------------------------------------------------------------------------
# what is zeroed and what is counted

def test_cats_zeroes_exactly_the_channels_at_or_below_the_threshold():
    model = build("llama")
    ids = token_windows(2, 16)
    mlp = model.model.layers[1].mlp
    raw = Recorder(mlp.act_fn)  # registered first: sees the activation before thresholding
    site = "model.layers.1.silu_gate"
    t = 0.02
    with sparsify_activations(model, {site: t}) as handle:
        after = Recorder(mlp.act_fn)  # registered after: sees the thresholded output
        down = Recorder(mlp.down_proj)
        up = Recorder(mlp.up_proj)
        logits(model, ids)
    for r in (raw, after, down, up):
        r.remove()
    a = torch.cat(raw.outputs)
    small = a.abs() <= t
    assert 0.05 < small.float().mean() < 0.95
    assert torch.equal(torch.cat(after.outputs), a.masked_fill(small, 0.0))
    down_in = torch.cat(down.inputs)
    assert torch.equal(down_in == 0, small)  # up(x) has no exact zeros
    assert torch.equal(down_in, a.masked_fill(small, 0.0) * torch.cat(up.outputs))
    zeros, total = handle.counts()[site]
    assert total == a.numel() and zeros == int(small.sum())
    assert math.isclose(handle.realised()[site], float(small.float().mean()))


def test_teal_qkv_threshold_is_shared_by_q_k_v_and_counted_once():
    model = build("llama")
    ids = token_windows(2, 16)
    attn = model.model.layers[0].self_attn
    raw = Recorder(model.model.layers[0].input_layernorm)
    site = "model.layers.0.qkv"
    t = 0.5
    with sparsify_activations(model, {site: t}) as handle:
        seen = [Recorder(getattr(attn, p)) for p in ("q_proj", "k_proj", "v_proj")]
        logits(model, ids)
    x = torch.cat(raw.outputs)
    expected = x.masked_fill(x.abs() <= t, 0.0)
    for r in seen:
        assert torch.equal(torch.cat(r.inputs), expected)
    zeros, total = handle.counts()[site]
    assert total == x.numel()  # one count for the three consumers
    assert zeros == int((x.abs() <= t).sum())


def test_realised_sparsity_per_site_and_reset():
    model = build("llama")
    ids = token_windows(2, 16)
    o_proj = model.model.layers[0].self_attn.o_proj
    raw = Recorder(o_proj)
    site = "model.layers.0.o"
    with sparsify_activations(model, {site: 0.01}) as handle:
        logits(model, ids)
        raw.remove()
        x = torch.cat(raw.inputs)
        assert handle.realised()[site] == pytest.approx(float((x.abs() <= 0.01).float().mean()))
        handle.reset()
        assert math.isnan(handle.realised()[site])


def test_an_applier_replacing_forward_plugs_into_the_same_wrapper():
    """A kernel-like applier (replaces the Linear's forward) gives the reference outputs."""

    class GatherLinear:
        """Computes ``W[:, keep] x[keep]`` per token: skips the weight columns of zero inputs."""

        def __init__(self):
            self.calls = 0

        def install(self, model, site, threshold, counter):
            handles = []
            for module in site_consumers(model, site).values():
                def forward(x, module=module):
                    self.calls += 1
                    keep = x.abs() > threshold
                    counter.add((~keep).sum(), keep.numel())
                    y = torch.einsum("...i,oi->...o", torch.where(keep, x, 0.0), module.weight)
                    return y if module.bias is None else y + module.bias
                handles.append(replace_forward(module, forward))
            return handles

    model = build("llama")
    ids = token_windows(2, 16)
    sites = sparsifiable(model, ("o", "down"))
    thresholds = {n: 0.02 for n in sites}
    with sparsify_activations(model, thresholds) as ref:
        expected = logits(model, ids)
    kernel = GatherLinear()
    with sparsify_activations(model, thresholds, appliers={"o": kernel, "down": kernel}) as got:
        out = logits(model, ids)
    assert kernel.calls == len(sites)  # one batched forward pass
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)
    assert got.realised() == pytest.approx(ref.realised())
    assert "forward" not in model.model.layers[0].self_attn.o_proj.__dict__
    assert torch.equal(logits(model, ids), logits(build("llama"), ids))


def test_torch_threshold_custom_mask_fn():
    model = build("llama")
    ids = token_windows(1, 8)
    calls = []

    def mask(x, t):
        calls.append(t)
        return apply_threshold(x, t)

    with sparsify_activations(model, {"model.layers.0.o": 0.1},
                              appliers={"o": TorchThreshold(mask)}):
        logits(model, ids)
    assert calls == [0.1]


# ----------------------------------------------------------------------------------------------
# parameter errors

def test_bad_thresholds_raise_parameter_error():
    model = build("llama")
    with pytest.raises(ParameterError, match="'thresholds' parameter of sparsify_activations"):
        sparsify_activations(model, {"model.layers.9.qkv": 0.1})
    with pytest.raises(ParameterError, match="kinds"):
        sparsify_activations(model, {"model.layers.0.residual": 0.1})
    for bad in (-0.1, float("nan"), float("inf"), "x"):
        with pytest.raises(ParameterError, match="finite thresholds"):
            sparsify_activations(model, {"model.layers.0.qkv": bad})
    with pytest.raises(ParameterError, match="appliers"):
        sparsify_activations(model, {"model.layers.0.qkv": 0.1}, appliers={"residual": None})
    with pytest.raises(ParameterError, match="'thresholds'"):
        sparsify_activations(model, [0.1])
    # nothing was left installed by the failed calls
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


# ----------------------------------------------------------------------------------------------
# sequential fitting

def test_sequential_thresholds_realise_the_target_on_the_calibration_tokens():
    model = build("llama")
    calib = token_windows(4, 32, seed=1)
    thr = sequential_thresholds(model, None, calib, 0.4, style="teal", nsamples=4, seqlen=32)
    assert thr.style == "teal" and thr.settings["fit"] == "sequential"
    assert {s.kind for s in thr.sites.values()} == {"qkv", "o", "gate_up", "down"}
    with sparsify_activations(model, thr) as handle:
        for i in range(4):
            logits(model, calib[i:i + 1])
    for name, value in handle.realised().items():
        # exact quantiles of the very values seen: ceil(0.4 n) of n values, ties aside
        assert value == pytest.approx(0.4, abs=2e-3), name
    cats = sequential_thresholds(model, None, calib, {"model.layers.1.silu_gate": 0.7}, style="cats",
                                 nsamples=4, seqlen=32)
    assert list(cats) == ["model.layers.1.silu_gate"]
    with pytest.raises(ParameterError, match="'target'"):
        sequential_thresholds(model, None, calib, {"model.layers.1.qkv": 0.7}, style="cats",
                              nsamples=4, seqlen=32)


# ----------------------------------------------------------------------------------------------
# tiny-llama-wt: held-out realised sparsity

@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir, shared_dir):
    """The model and WikiText-2 valid / test as token streams (tokenised once per module)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specmetrics.evaluation.perplexity import tokenize_text

    model = AutoModelForCausalLM.from_pretrained(tiny_llama_dir).eval()
    tok = AutoTokenizer.from_pretrained(tiny_llama_dir)
    data = shared_dir / "data" / "wikitext-2-tokenized"
    # calibration windows are drawn from the first 300 kB of valid (a third of it); the counts
    # are taken on the first windows of test (tokenising a prefix gives the same ids)
    valid = tokenize_text(tok, (data / "valid.txt").read_text(encoding="utf-8")[:300_000])
    test = tokenize_text(tok, (data / "test.txt").read_text(encoding="utf-8")[:40_000])
    return model, valid, test


@pytest.mark.shared
@pytest.mark.parametrize("style", ["teal", "cats"])
def test_realised_sparsity_on_held_out_tokens_is_within_two_points(tiny_llama, style):
    """Fit on WikiText-2 valid, count at inference on test: every site within ±2 points."""
    model, valid, test = tiny_llama
    target = 0.5
    thr = sequential_thresholds(model, None, valid, target, style=style, nsamples=8, seqlen=256)
    test_ids = test[: 6 * 256].reshape(6, 256)  # the first 6 perplexity windows
    with sparsify_activations(model, thr) as handle:
        logits(model, test_ids)
    realised = handle.realised()
    assert len(realised) == (24 if style == "teal" else 6)
    off = {n: round(v - target, 4) for n, v in realised.items() if abs(v - target) > 0.02}
    assert not off, off
