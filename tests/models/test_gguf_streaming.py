"""GGUF sources are read one tensor at a time: listing dequantises nothing and writes no cache,
each matrix is dequantised when loaded, and the values, names and order are those of
transformers' own GGUF load (the tiny LLaMA GGUF of test_gguf.py, Q4_1 tensors included)."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from specmetrics.models import gguf_cache_dir
from specmetrics.models.matrices import list_weight_matrices

gguf = pytest.importorskip("gguf")
transformers = pytest.importorskip("transformers")


def _write_tiny_gguf():
    spec = importlib.util.spec_from_file_location("_tiny_gguf_writer",
                                                  Path(__file__).with_name("test_gguf.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.write_tiny_gguf


@pytest.fixture()
def tiny_gguf(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECMETRICS_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny.gguf"
    _write_tiny_gguf()(path)
    return path


def test_gguf_matrices_are_dequantised_one_at_a_time(tiny_gguf, monkeypatch):
    calls = []
    real = gguf.dequantize

    def counting(data, qtype):
        calls.append(qtype)
        return real(data, qtype)

    monkeypatch.setattr(gguf, "dequantize", counting)
    matrices = list_weight_matrices(tiny_gguf)
    assert calls == []  # listing reads shapes from the header only
    assert not gguf_cache_dir().exists() or not any(gguf_cache_dir().iterdir())
    matrices[1].load()
    assert len(calls) == 1


def test_gguf_stream_equals_transformers_load(tiny_gguf):
    reference = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_gguf.parent),
                                                                  gguf_file=tiny_gguf.name)
    expected = list_weight_matrices(reference)
    got = list_weight_matrices(tiny_gguf)
    assert [w.name for w in got] == [w.name for w in expected]  # the model's module order
    assert [w.kind for w in got] == [w.kind for w in expected]
    for w, ref in zip(got, expected):
        assert w.shape == ref.shape, w.name
        assert torch.equal(w.load(), ref.load()), w.name  # q/k rows un-permuted as transformers does
    assert not gguf_cache_dir().exists() or not any(gguf_cache_dir().iterdir())
