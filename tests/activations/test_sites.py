"""Activation sites on tiny LLaMA, Mistral, Qwen2, GPT-NeoX, GPT-2 and OPT configurations."""
from __future__ import annotations

import pytest

from tiny_models import build
from specmetrics import ParameterError
from specmetrics.activations import SITE_KINDS, Site, find_sites

HIDDEN, INTER = 64, 128

#: arch -> (block prefix, kind -> (module suffix inside the block, hook))
EXPECTED = {
    "llama": ("model.layers", {
        "qkv": ("self_attn.q_proj", "input"), "o": ("self_attn.o_proj", "input"),
        "gate_up": ("mlp.gate_proj", "input"), "silu_gate": ("mlp.act_fn", "output"),
        "down": ("mlp.down_proj", "input"), "residual": ("", "output")}),
    "mistral": ("model.layers", {
        "qkv": ("self_attn.q_proj", "input"), "o": ("self_attn.o_proj", "input"),
        "gate_up": ("mlp.gate_proj", "input"), "silu_gate": ("mlp.act_fn", "output"),
        "down": ("mlp.down_proj", "input"), "residual": ("", "output")}),
    "qwen2": ("model.layers", {
        "qkv": ("self_attn.q_proj", "input"), "o": ("self_attn.o_proj", "input"),
        "gate_up": ("mlp.gate_proj", "input"), "silu_gate": ("mlp.act_fn", "output"),
        "down": ("mlp.down_proj", "input"), "residual": ("", "output")}),
    "gpt_neox": ("gpt_neox.layers", {
        "qkv": ("attention.query_key_value", "input"), "o": ("attention.dense", "input"),
        "gate_up": ("mlp.dense_h_to_4h", "input"), "silu_gate": ("mlp.act", "output"),
        "down": ("mlp.dense_4h_to_h", "input"), "residual": ("", "output")}),
    "gpt2": ("transformer.h", {
        "qkv": ("attn.c_attn", "input"), "o": ("attn.c_proj", "input"),
        "gate_up": ("mlp.c_fc", "input"), "silu_gate": ("mlp.act", "output"),
        "down": ("mlp.c_proj", "input"), "residual": ("", "output")}),
    "opt": ("model.decoder.layers", {
        "qkv": ("self_attn.q_proj", "input"), "o": ("self_attn.out_proj", "input"),
        "gate_up": ("fc1", "input"), "silu_gate": ("activation_fn", "output"),
        "down": ("fc2", "input"), "residual": ("", "output")}),
}
WIDTHS = {"qkv": HIDDEN, "o": HIDDEN, "gate_up": HIDDEN, "silu_gate": INTER, "down": INTER,
          "residual": HIDDEN}


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_sites_of_each_architecture(arch):
    model = build(arch)
    prefix, kinds = EXPECTED[arch]
    sites = find_sites(model)
    expected = []
    for block in range(2):
        for kind in SITE_KINDS:
            suffix, hook = kinds[kind]
            module = f"{prefix}.{block}" + (f".{suffix}" if suffix else "")
            expected.append(Site(f"{prefix}.{block}.{kind}", kind, block, module, hook,
                                 WIDTHS[kind]))
    assert list(sites.values()) == expected
    assert list(sites) == [s.name for s in expected]  # keyed by name, model order
    for site in sites.values():
        assert site.block_name == f"{prefix}.{site.block}"
        model.get_submodule(site.module)  # exists


def test_widths_follow_the_config_not_the_hidden_size():
    # GQA (2 kv heads) keeps the shared q/k/v input at the hidden size; an explicit head_dim
    # makes the o input heads * head_dim = 128 wide
    model = build("llama", num_key_value_heads=1, head_dim=32, hidden_size=48,
                  intermediate_size=80)
    sites = find_sites(model, sites=["qkv", "o", "silu_gate", "residual"])
    widths = {s.kind: s.width for s in sites.values() if s.block == 0}
    assert widths == {"qkv": 48, "o": 4 * 32, "silu_gate": 80, "residual": 48}
    config = model.config
    assert widths["qkv"] == config.hidden_size
    assert widths["o"] == config.num_attention_heads * config.head_dim
    assert widths["silu_gate"] == config.intermediate_size


def test_kind_selection_and_errors():
    model = build("gpt2")
    assert [s.kind for s in find_sites(model, sites="down,qkv").values()] == ["qkv", "down"] * 2
    assert len(find_sites(model, sites=("residual",))) == 2
    with pytest.raises(ParameterError, match=r"^The 'sites' parameter of find_sites must be None "
                                             r"or a non-empty selection of site kinds"):
        find_sites(model, sites="mlp")
    with pytest.raises(ParameterError, match="'model' parameter of find_sites"):
        find_sites(object())


def test_a_gated_mlp_without_activation_module_has_no_silu_gate(caplog):
    model = build("llama")
    for layer in model.model.layers:
        del layer.mlp.act_fn  # a functional activation: nothing to hook
    sites = find_sites(model)
    assert not any(s.kind == "silu_gate" for s in sites.values())
    assert "no silu_gate site" in caplog.text
    with pytest.raises(ParameterError, match="silu_gate sites"):
        find_sites(model, sites="silu_gate")
