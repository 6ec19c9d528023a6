"""End to end through the public path on real models: tiny-llama-wt (LLaMA) and all-MiniLM-L6-v2
(BERT), from a module, a SpectrumReport and a safetensors file."""
from __future__ import annotations

import numpy as np
import pytest

import specmetrics
from specmetrics.allocation import allocate

transformers = pytest.importorskip("transformers")

LLAMA_TYPES = ["q", "k", "v", "o", "gate", "up", "down"]


@pytest.fixture(scope="module")
def tiny_llama(tiny_llama_dir):
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    model.eval()
    return model


@pytest.fixture(scope="module")
def tiny_llama_alloc(tiny_llama):
    return allocate(tiny_llama, target=0.5)


FIRST_TWO = r"^model\.layers\.[01]\."


@pytest.fixture(scope="module")
def tiny_llama_report(tiny_llama):
    """The spectra of the first two blocks (14 matrices), computed once."""
    return specmetrics.esd(tiny_llama, include=FIRST_TWO)


@pytest.mark.shared
def test_tiny_llama_end_to_end(tiny_llama, tiny_llama_alloc, tiny_llama_report):
    alloc = tiny_llama_alloc
    n_layers = tiny_llama.config.num_hidden_layers
    assert len(alloc) == 7 * n_layers
    assert not any(n.startswith(("lm_head", "model.embed_tokens")) for n in alloc)
    assert alloc.achieved == pytest.approx(0.5, abs=1e-9)
    assert all(0.0 <= r <= 0.99 for r in alloc.values())
    matrices = alloc.to_frame(level="matrix")
    assert matrices["module_type"].tolist() == LLAMA_TYPES * n_layers
    assert matrices["n_params"].tolist()[:7] == [256 * 256] * 4 + [256 * 688] * 3
    # block score = mean alpha_peak of the block's matrices, as esd() reports them
    units = alloc.to_frame()
    for i in range(2):
        block = [n for n in tiny_llama_report if n.startswith(f"model.layers.{i}.")]
        expected = np.mean([tiny_llama_report[n].metrics["alpha_peak"] for n in block])
        assert units.loc[f"model.layers.{i}", "score"] == pytest.approx(expected, rel=1e-12)
    # ratios increase with the block score (AlphaPruning's direction)
    order = np.argsort(units["score"].to_numpy())
    assert np.all(np.diff(units["ratio"].to_numpy()[order]) >= -1e-12)
    assert units["ratio"].max() > units["ratio"].min()


@pytest.mark.shared
def test_tiny_llama_report_and_safetensors_sources(tiny_llama_dir, tiny_llama_alloc,
                                                   tiny_llama_report):
    # a report computed once, and the safetensors file read without building the model, give
    # what the module gives (same weights, same selection)
    from_report = allocate(tiny_llama_report, 0.5)
    from_file = allocate(tiny_llama_dir / "model.safetensors", 0.5, include=FIRST_TWO)
    assert len(from_report) == 14 and set(from_file) == set(from_report)  # file order is sorted
    assert max(abs(from_file[n] - from_report[n]) for n in from_report) < 1e-9
    # the same block scores as the full allocation from the module
    full = tiny_llama_alloc.to_frame()
    assert np.allclose(from_report.to_frame()["score"], full["score"].iloc[:2], rtol=1e-12)
    # other metrics and variants from the same report
    for metric in ("alpha", "alpha_mid", "stable_rank", "entropy", lambda s: s.metrics["alpha"]):
        alloc = allocate(tiny_llama_report, 0.7, metric=metric, units="split",
                         budget="per_group", apply_to="q,k,v,o")
        assert alloc.achieved == pytest.approx(0.7, abs=1e-9)
    with pytest.raises(specmetrics.ParameterError, match="The 'metric' parameter of allocate"):
        allocate(tiny_llama_report, 0.5, metric="no_such_column")


@pytest.mark.shared
def test_tiny_llama_include_lm_head(tiny_llama):
    alloc = allocate(tiny_llama, 0.5, method="uniform", include=[r"layers\.", "lm_head"])
    assert "lm_head" in alloc and len(alloc) == 43
    row = alloc.to_frame(level="matrix").loc["lm_head"]
    assert row["unit"] == "lm_head" and row["group"] == "other" and np.isnan(row["block"])


def test_minilm_end_to_end(minilm_dir):
    model = transformers.AutoModel.from_pretrained(str(minilm_dir))
    alloc = allocate(model, target=0.5)
    assert len(alloc) == 36  # 6 layers x (query, key, value, attention out, intermediate, output)
    assert not any(n.startswith(("embeddings", "pooler")) for n in alloc)
    assert alloc.achieved == pytest.approx(0.5, abs=1e-9)
    matrices = alloc.to_frame(level="matrix")
    assert matrices["module_type"].tolist() == ["q", "k", "v", "o", "up", "down"] * 6
    units = alloc.to_frame()
    assert list(units.index) == [f"encoder.layer.{i}" for i in range(6)]
    assert units["ratio"].max() > units["ratio"].min()


def test_gpt2_conv1d_modules():
    import torch

    from specmetrics.allocation import OWLConfig

    config = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=64, n_positions=32)
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(config).eval()
    alloc = allocate(model, 0.5, method="uniform")
    assert list(alloc) == [f"transformer.h.{i}.{m}" for i in range(2)
                           for m in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    frame = alloc.to_frame(level="matrix")
    assert frame["module_type"].tolist() == ["qkv", "o", "up", "down"] * 2
    # a fused qkv matrix gets a score-based ratio only when q, k and v all do
    ids = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))
    owl = OWLConfig(m=3.0, calibration=ids)
    partial = allocate(model, 0.5, method=owl, apply_to="q,k,o")
    assert not partial.to_frame(level="matrix").loc["transformer.h.0.attn.c_attn", "applied"]
    full = allocate(model, 0.5, method=owl, apply_to="q,k,v,o", clip=None)
    assert full.to_frame(level="matrix").loc["transformer.h.0.attn.c_attn", "applied"]
    assert full.achieved == pytest.approx(0.5, abs=1e-12)
    assert all(np.isfinite(full.to_frame()["score"]))
