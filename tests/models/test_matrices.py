"""Sources of weight matrices (specmetrics.layers): modules, state dicts, safetensors files and
shards, single tensors; tied weights, GPT-2 Conv1D, convolutions, name filters, bad sources; and a
real checkpoint (shared/models/tiny-llama-wt) read from disk and through transformers."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from specmetrics import ParameterError, esd
from specmetrics.models import list_weight_matrices
from specmetrics.spectrum import eigenvalues

PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of \w+ must be .+\. Got .+ instead\.$")
#: Columns that depend on the numbers only (layer_type also depends on how a source names kinds).
NUMERIC = ("alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes", "alpha_peak", "alpha_mid", "norm",
           "log_norm", "spectral_norm", "stable_rank", "matrix_rank", "entropy", "alpha_weighted",
           "log_alpha_norm", "rank_loss", "weak_rank_loss", "sv_min", "N", "M", "Q", "rf", "num_evals",
           "n_params")


class Toy(nn.Module):
    """Embedding, linear layers (two of one shape), a 2-D convolution and an untied head."""

    def __init__(self, vocab: int = 50, hidden: int = 24, tied: bool = False):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.conv = nn.Conv2d(4, 12, 3)
        self.blocks = nn.ModuleList([nn.ModuleDict({"up": nn.Linear(hidden, 40), "down": nn.Linear(40, hidden)})
                                     for _ in range(2)])
        self.norm = nn.LayerNorm(hidden)
        self.head = nn.Linear(hidden, vocab, bias=False)
        if tied:
            self.head.weight = self.embed.weight


@pytest.fixture
def toy() -> Toy:
    torch.manual_seed(0)
    return Toy()


def assert_same_layer(a, b, columns=NUMERIC) -> None:
    np.testing.assert_array_equal(a.eigenvalues, b.eigenvalues)
    for col in columns:
        x, y = a.metrics[col], b.metrics[col]
        assert x == y or (x != x and y != y), (a.name, b.name, col, x, y)


def assert_same_reports(a, b, *, ordered: bool = True, columns=NUMERIC) -> None:
    assert (list(a) == list(b)) if ordered else (sorted(a) == sorted(b)), (list(a), list(b))
    for name in a:
        assert_same_layer(a[name], b[name], columns)
    assert dict(a.skipped) == dict(b.skipped)


# ---------------------------------------------------------------------------
# modules, state dicts, safetensors
# ---------------------------------------------------------------------------


def test_module_names_and_kinds(toy):
    mats = {m.name: m for m in list_weight_matrices(toy)}
    assert list(mats) == ["embed", "conv", "blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down", "head"]
    assert mats["embed"].kind == "embedding" and mats["conv"].kind == "conv2d" and mats["head"].kind == "linear"
    assert mats["conv"].n_m_rf == (12, 4, 9)
    assert mats["blocks.0.up"].n_params == 24 * 40


def test_state_dict_equals_module(toy):
    """Same names, order, kinds and numbers (the full frame)."""
    a, b = esd(toy), esd(toy.state_dict())
    assert_same_reports(a, b)
    fa, fb = a.to_frame(), b.to_frame()
    assert fa.columns.tolist() == fb.columns.tolist()
    assert fa.astype(str).equals(fb.astype(str))


def test_safetensors_file_and_shards_equal_module(toy, tmp_path):
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in toy.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    keys = list(state)
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    save_file({k: state[k] for k in keys[::2]}, str(shard_dir / "model-00001-of-00002.safetensors"))
    save_file({k: state[k] for k in keys[1::2]}, str(shard_dir / "model-00002-of-00002.safetensors"))
    ref = esd(toy)
    cols = NUMERIC + ("layer_type",)
    assert_same_reports(esd(tmp_path / "model.safetensors"), ref, ordered=False, columns=cols)
    assert_same_reports(esd(str(tmp_path / "model.safetensors")), ref, ordered=False, columns=cols)
    assert_same_reports(esd(shard_dir), ref, ordered=False, columns=cols)
    # reading the files does not build the model: nothing but the weights is needed
    assert {m.name for m in list_weight_matrices(shard_dir)} == set(ref)


def test_single_tensor_is_named_weight():
    w = torch.randn(30, 20, generator=torch.Generator().manual_seed(0))
    report = esd(w)
    assert list(report) == ["weight"]
    assert report["weight"].kind == "tensor" and report["weight"].metrics["layer_type"] == "dense"
    assert_same_reports(report, esd({"weight": w}))
    linear = nn.Linear(20, 30)
    linear.weight.data = w.clone()
    assert_same_layer(report["weight"], esd(nn.Sequential(linear))["0"])


def test_tied_weights_are_counted_once():
    torch.manual_seed(0)
    model = Toy(tied=True)
    assert model.head.weight is model.embed.weight
    report = esd(model)
    assert "embed" in report and "head" not in report and "head" not in report.skipped
    assert_same_reports(report, esd(model.state_dict()))
    # the same storage under two names in a plain dict, too
    shared = torch.randn(40, 20)
    assert list(esd({"a.weight": shared, "b.weight": shared, "c.weight": shared.clone()})) == ["a", "c"]


def test_gpt2_conv1d_is_one_matrix():
    from transformers.pytorch_utils import Conv1D

    torch.manual_seed(0)
    fused = Conv1D(3 * 32, 32)  # GPT-2 c_attn: weight (in=32, out=96)
    model = nn.ModuleDict({"c_attn": fused})
    mats = list_weight_matrices(model)
    assert [(m.name, m.kind, m.shape) for m in mats] == [("c_attn", "conv1d", (32, 96))]
    layer = esd(model)["c_attn"]
    assert layer.metrics["layer_type"] == "conv1d" and layer.metrics["rf"] == 1
    assert (layer.metrics["N"], layer.metrics["M"]) == (96, 32)
    transposed = eigenvalues(fused.weight.detach().T.double()).numpy()
    np.testing.assert_allclose(layer.eigenvalues, transposed, rtol=1e-10, atol=1e-12 * transposed[-1])
    linear = nn.Linear(32, 96)
    linear.weight.data = fused.weight.detach().T.clone()
    assert esd(linear)[""].alpha == pytest.approx(layer.alpha, rel=1e-9)


def test_convolutions_pool_kernel_positions_halved():
    """WeightWatcher's conv convention: one matrix per kernel position, eigenvalues pooled, x0.5."""
    torch.manual_seed(0)
    conv2 = nn.Conv2d(6, 10, (3, 2))
    conv1 = nn.Conv1d(5, 9, 4)
    for conv in (conv2, conv1):
        w = conv.weight.detach().double()
        slices = w.reshape(w.shape[0], w.shape[1], -1).permute(2, 0, 1)
        expected = np.sort(np.concatenate([0.5 * np.linalg.svd(s.numpy(), compute_uv=False) ** 2 for s in slices]))
        layer = esd(nn.Sequential(conv), min_evals=2)["0"]
        np.testing.assert_allclose(layer.eigenvalues, expected, rtol=1e-10)
        assert layer.metrics["rf"] == len(slices)


def test_include_exclude(toy):
    names = lambda **kw: [m.name for m in list_weight_matrices(toy, **kw)]  # noqa: E731
    assert names(include=r"blocks\.\d+\.up") == ["blocks.0.up", "blocks.1.up"]
    assert names(include=["^embed$", "head"]) == ["embed", "head"]
    assert names(include=lambda n: n.endswith("down")) == ["blocks.0.down", "blocks.1.down"]
    assert names(exclude="blocks") == ["embed", "conv", "head"]
    assert names(exclude=("embed", "conv", "head")) == ["blocks.0.up", "blocks.0.down", "blocks.1.up", "blocks.1.down"]
    assert names(include="blocks", exclude=lambda n: n.startswith("blocks.1")) == ["blocks.0.up", "blocks.0.down"]
    assert names(include="nothing-matches") == []
    assert list(esd(toy, include="up")) == ["blocks.0.up", "blocks.1.up"]
    assert list(esd(toy.state_dict(), exclude=["embed", "head"])) == ["conv", "blocks.0.up", "blocks.0.down",
                                                                       "blocks.1.up", "blocks.1.down"]


@pytest.mark.parametrize("pattern", ["(", ["ok", "[unclosed"], 3])
@pytest.mark.parametrize("which", ["include", "exclude"])
def test_bad_pattern_raises_parameter_error(toy, pattern, which):
    with pytest.raises(ParameterError) as info:
        esd(toy, **{which: pattern})
    assert PARAM_MESSAGE.match(str(info.value)) and f"'{which}'" in str(info.value)


@pytest.mark.parametrize(
    "source",
    [3, 2.5, None, [torch.randn(10, 10)], (torch.randn(10, 10),), object(), np.ones((10, 10)),
     torch.ones(20), torch.tensor(1.0)],
    ids=["int", "float", "None", "list", "tuple", "object", "ndarray", "1-D tensor", "0-D tensor"],
)
def test_bad_source_raises_parameter_error(source):
    with pytest.raises(ParameterError) as info:
        esd(source)
    assert PARAM_MESSAGE.match(str(info.value)), str(info.value)
    assert "'source' parameter of esd" in str(info.value)


@pytest.mark.parametrize("path", ["/nonexistent/dir/model.safetensors", "./no/such/folder", "missing.safetensors"])
def test_missing_local_path_raises_parameter_error(path):
    """A path that cannot be a hub id is not looked up on the hub."""
    with pytest.raises(ParameterError, match=PARAM_MESSAGE):
        esd(path)
    with pytest.raises(ParameterError, match=PARAM_MESSAGE):
        esd(Path(path))


def test_file_that_is_not_safetensors_raises_parameter_error(tmp_path):
    bogus = tmp_path / "weights.txt"
    bogus.write_text("not weights")
    with pytest.raises(ParameterError, match=PARAM_MESSAGE):
        esd(bogus)


def test_non_weight_tensors_are_ignored():
    state = {
        "a.weight": torch.randn(30, 20),
        "a.bias": torch.randn(30),
        "norm.weight": torch.randn(20),  # 1-D: a norm, not a matrix
        "pos": torch.randn(30, 20),  # not a .weight
        "step": 3,  # not a tensor
    }
    assert list(esd(state)) == ["a"]


# ---------------------------------------------------------------------------
# Hugging Face checkpoints: tied embeddings on disk vs in the built model
# ---------------------------------------------------------------------------


def _tiny_llama(tied: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=64, max_position_embeddings=32,
                         tie_word_embeddings=tied)
    return LlamaForCausalLM(config)


@pytest.mark.parametrize("case", ["tied", "untied", "tied_head_stored_equal", "tied_head_stored_different"])
def test_checkpoint_equals_built_model(tmp_path, case):
    """esd(folder) reads the safetensors without building the model and matches esd on
    AutoModelForCausalLM.from_pretrained(folder), including how transformers ties lm_head."""
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    model = _tiny_llama(tied=case != "untied")
    model.save_pretrained(tmp_path)
    if case.startswith("tied_head_stored"):  # an older checkpoint storing the tied head as well
        state = {k: v.clone().contiguous() for k, v in model.state_dict().items()}
        if case.endswith("different"):
            state["lm_head.weight"] = torch.randn_like(state["lm_head.weight"])
        save_file(state, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        built = AutoModelForCausalLM.from_pretrained(tmp_path)
    finally:
        hf_logging.set_verbosity(verbosity)
    on_disk, in_memory = esd(tmp_path), esd(built)
    assert_same_reports(on_disk, in_memory, ordered=False, columns=NUMERIC + ("layer_type",))
    tied_in_memory = built.lm_head.weight is built.model.embed_tokens.weight
    assert ("lm_head" in in_memory) == (not tied_in_memory)
    assert tied_in_memory == (case in ("tied", "tied_head_stored_equal"))


# ---------------------------------------------------------------------------
# the real tiny LLaMA checkpoint
# ---------------------------------------------------------------------------


def _load_causal_lm(path: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        return AutoModelForCausalLM.from_pretrained(path)
    finally:
        hf_logging.set_verbosity(verbosity)


def _check_tiny_llama(tiny_llama_dir: Path, include) -> None:
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    model = _load_causal_lm(tiny_llama_dir)
    from_file = esd(tiny_llama_dir / "model.safetensors", include=include)
    from_model = esd(model, include=include)
    # tie_word_embeddings is false and the file stores lm_head.weight: both list it
    assert config["tie_word_embeddings"] is False
    assert model.lm_head.weight is not model.model.embed_tokens.weight
    assert sorted(from_file) == sorted(from_model)
    assert {m.name for m in list_weight_matrices(tiny_llama_dir, include=include)} == set(from_file)
    if include is None:
        assert len(from_model) == 2 + 7 * config["num_hidden_layers"]
    assert "lm_head" in from_model and "model.embed_tokens" in from_model
    assert from_model["model.embed_tokens"].metrics["layer_type"] == from_file["model.embed_tokens"].metrics["layer_type"] == "embedding"
    assert_same_reports(from_file, from_model, ordered=False, columns=NUMERIC + ("layer_type",))


@pytest.mark.shared
def test_tiny_llama_file_equals_model(tiny_llama_dir):
    """Embeddings, head and the first block (the rest in the slow test)."""
    _check_tiny_llama(tiny_llama_dir, include=r"^(lm_head|model\.embed_tokens|model\.layers\.0\.)")


@pytest.mark.slow
@pytest.mark.shared
def test_tiny_llama_file_equals_model_all_layers(tiny_llama_dir):
    _check_tiny_llama(tiny_llama_dir, include=None)
