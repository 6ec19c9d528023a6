"""Module types, groups and blocks recognised from qualified names across architectures."""
from __future__ import annotations

import pytest

from specmetrics import ParameterError
from specmetrics.models.naming import (block_of, module_group, module_type,
                                                 parse_type_set, type_in)

# (name, type, group) as transformers names them
CASES = [
    # LLaMA / Mistral / Qwen2
    ("model.layers.3.self_attn.q_proj", "q", "attention"),
    ("model.layers.3.self_attn.k_proj", "k", "attention"),
    ("model.layers.3.self_attn.v_proj", "v", "attention"),
    ("model.layers.3.self_attn.o_proj", "o", "attention"),
    ("model.layers.3.mlp.gate_proj", "gate", "mlp"),
    ("model.layers.3.mlp.up_proj", "up", "mlp"),
    ("model.layers.3.mlp.down_proj", "down", "mlp"),
    # GPT-NeoX
    ("gpt_neox.layers.0.attention.query_key_value", "qkv", "attention"),
    ("gpt_neox.layers.0.attention.dense", "o", "attention"),
    ("gpt_neox.layers.0.mlp.dense_h_to_4h", "up", "mlp"),
    ("gpt_neox.layers.0.mlp.dense_4h_to_h", "down", "mlp"),
    # GPT-2 (Conv1D; c_proj means two things)
    ("transformer.h.11.attn.c_attn", "qkv", "attention"),
    ("transformer.h.11.attn.c_proj", "o", "attention"),
    ("transformer.h.11.mlp.c_fc", "up", "mlp"),
    ("transformer.h.11.mlp.c_proj", "down", "mlp"),
    # OPT
    ("model.decoder.layers.5.self_attn.q_proj", "q", "attention"),
    ("model.decoder.layers.5.self_attn.out_proj", "o", "attention"),
    ("model.decoder.layers.5.fc1", "up", "mlp"),
    ("model.decoder.layers.5.fc2", "down", "mlp"),
    # BERT (attention.output.dense vs output.dense)
    ("encoder.layer.2.attention.self.query", "q", "attention"),
    ("encoder.layer.2.attention.self.key", "k", "attention"),
    ("encoder.layer.2.attention.self.value", "v", "attention"),
    ("encoder.layer.2.attention.output.dense", "o", "attention"),
    ("encoder.layer.2.intermediate.dense", "up", "mlp"),
    ("encoder.layer.2.output.dense", "down", "mlp"),
    # Falcon / BLOOM, Phi, GPT-J, DistilBERT, Mixtral experts, T5
    ("transformer.h.0.self_attention.query_key_value", "qkv", "attention"),
    ("transformer.h.0.self_attention.dense", "o", "attention"),
    ("model.layers.0.self_attn.dense", "o", "attention"),
    ("model.layers.0.mlp.fc1", "up", "mlp"),
    ("transformer.h.0.attn.out_proj", "o", "attention"),
    ("transformer.h.0.mlp.fc_in", "up", "mlp"),
    ("transformer.h.0.mlp.fc_out", "down", "mlp"),
    ("distilbert.transformer.layer.0.attention.q_lin", "q", "attention"),
    ("distilbert.transformer.layer.0.attention.out_lin", "o", "attention"),
    ("distilbert.transformer.layer.0.ffn.lin1", "up", "mlp"),
    ("model.layers.0.block_sparse_moe.experts.3.w1", "gate", "mlp"),
    ("model.layers.0.block_sparse_moe.experts.3.w3", "up", "mlp"),
    ("model.layers.0.block_sparse_moe.experts.3.w2", "down", "mlp"),
    ("encoder.block.0.layer.0.SelfAttention.q", "q", "attention"),
    ("encoder.block.0.layer.1.DenseReluDense.wo", "down", "mlp"),
    ("model.layers.0.mlp.gate_up_proj", "gate_up", "mlp"),
]


@pytest.mark.parametrize("name, mtype, group", CASES)
def test_module_type_and_group(name, mtype, group):
    assert module_type(name) == mtype
    assert module_group(name) == group


@pytest.mark.parametrize("name", ["lm_head", "model.embed_tokens", "pooler.dense",
                                  "model.layers.0.block_sparse_moe.gate"])
def test_unrecognised_types(name):
    assert module_type(name) is None


def test_unknown_type_grouped_by_parent():
    assert module_group("model.layers.0.block_sparse_moe.gate") == "mlp"
    assert module_group("model.layers.0.self_attn.rotary") == "attention"
    assert module_group("lm_head") == "other"


@pytest.mark.parametrize("name, expected", [
    ("model.layers.3.mlp.up_proj", ("model.layers.3", 3)),
    ("encoder.layer.10.output.dense", ("encoder.layer.10", 10)),
    ("transformer.h.0.attn.c_attn", ("transformer.h.0", 0)),
    ("vision.blocks.7.attn.qkv", ("vision.blocks.7", 7)),
    ("model.decoder.layers.5.fc1", ("model.decoder.layers.5", 5)),
    ("encoder.block.2.layer.1.DenseReluDense.wo", ("encoder.block.2", 2)),  # outermost container
    ("stages.4.conv", ("stages.4", 4)),  # fallback: first numeric component
    ("lm_head", None),
    ("model.embed_tokens", None),
    ("pooler.dense", None),
])
def test_block_of(name, expected):
    assert block_of(name) == expected


def test_parse_type_set_spellings():
    assert parse_type_set(None, name="apply_to") is None
    assert parse_type_set("q,k,v,o", name="apply_to") == {"q", "k", "v", "o"}
    assert parse_type_set("Q+OUT", name="apply_to") == {"q", "o"}
    assert parse_type_set(["v_proj", "o_proj", "gate_proj"], name="apply_to") == {"v", "o", "gate"}
    assert parse_type_set("attention", name="apply_to") == {"q", "k", "v", "o", "qkv"}
    assert parse_type_set("mlp", name="apply_to") == {"gate", "up", "down", "gate_up"}


@pytest.mark.parametrize("bad", ["q,z", ["q", 3], "", 5])
def test_parse_type_set_rejects(bad):
    with pytest.raises(ParameterError, match="The 'apply_to' parameter of allocate must be"):
        parse_type_set(bad, name="apply_to")


def test_fused_types_need_all_their_parts():
    assert type_in("qkv", {"q", "k", "v"})
    assert type_in("qkv", {"qkv"})
    assert not type_in("qkv", {"q", "k"})
    assert type_in("gate_up", {"gate", "up", "down"})
    assert not type_in("gate_up", {"gate"})
    assert type_in(None, None) and not type_in(None, {"q"})
