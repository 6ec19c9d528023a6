"""Residual-stream similarity and lookahead predictability (the DejaVu question)."""
from __future__ import annotations

import math

import pytest
import torch

from tiny_models import build, one_torch_thread, token_windows  # noqa: F401
from specmetrics import ParameterError
from specmetrics.activations import (LookaheadResult, SimilarityResult, lookahead_predictability,
                                     residual_similarity)
from specmetrics.activations.similarity import (mask_recall_precision, mean_cosine,
                                                threshold_mask, topk_mask)

IDS = token_windows(3, 16)
COMMON = dict(nsamples=3, seqlen=16, max_tokens=40)


def _zero_updates(model, names):
    """Zero the weights (and biases) of the named output projections: every block is then the
    identity on the residual stream."""
    with torch.no_grad():
        for name, module in model.named_modules():
            if name.split(".")[-1] in names and hasattr(module, "weight"):
                module.weight.zero_()
                if getattr(module, "bias", None) is not None:
                    module.bias.zero_()
    return model


# ----------------------------------------------------------------------------------------------
# pure functions

def test_mean_cosine():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [2.0, 0.0]])
    b = torch.tensor([[3.0, 0.0], [-1.0, -1.0], [0.0, 0.0], [0.0, 5.0]])
    # rows: 1, -1, (both zero) 1, 0
    assert mean_cosine(a, b) == pytest.approx(0.25)
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(0))
    assert mean_cosine(x, 3.0 * x) == pytest.approx(1.0)


def test_masks_and_recall():
    x = torch.tensor([[0.1, -5.0, 2.0, 0.3], [1.0, 0.0, -0.5, 4.0]])
    assert topk_mask(x, 2).tolist() == [[False, True, True, False], [True, False, False, True]]
    assert topk_mask(x, 0).sum() == 0
    assert threshold_mask(x, 0.5).tolist() == [[False, True, True, False],
                                               [True, False, False, True]]
    truth = torch.tensor([[True, True, False, False]])
    pred = torch.tensor([[True, False, True, True]])
    recall, precision = mask_recall_precision(truth, pred)
    assert (recall, precision) == (0.5, pytest.approx(1 / 3))
    assert all(math.isnan(v) for v in mask_recall_precision(truth & False, pred & False))


# ----------------------------------------------------------------------------------------------
# residual similarity

def test_identity_blocks_give_cosine_one(one_torch_thread):  # noqa: F811
    model = _zero_updates(build("llama", num_hidden_layers=4), {"o_proj", "down_proj"})
    result = residual_similarity(model, None, IDS, max_k=3, **COMMON)
    assert isinstance(result, SimilarityResult)
    assert result.blocks == tuple(f"model.layers.{i}" for i in range(4))
    assert dict(result.cosine["model.layers.0"]) == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})
    assert dict(result.cosine["model.layers.2"]) == pytest.approx({1: 1.0})
    assert result.by_k() == pytest.approx({1: 1.0, 2: 1.0, 3: 1.0})
    assert result.n_tokens == 40
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "k1", "k2", "k3"]
    assert math.isnan(frame.loc["model.layers.3", "k1"])


def test_random_blocks_change_the_residual_stream(one_torch_thread):  # noqa: F811
    model = build("llama", num_hidden_layers=3, initializer_range=0.5)
    result = residual_similarity(model, None, IDS, max_k=2, **COMMON)
    values = [v for row in result.cosine.values() for v in row.values()]
    assert all(-1.0 <= v < 0.99 for v in values)


def test_gpt2_identity_blocks(one_torch_thread):  # noqa: F811
    model = _zero_updates(build("gpt2", n_layer=3), {"c_proj"})
    result = residual_similarity(model, None, IDS, max_k=2, **COMMON)
    assert result.by_k() == pytest.approx({1: 1.0, 2: 1.0})


# ----------------------------------------------------------------------------------------------
# lookahead

@pytest.mark.parametrize("kind", ["silu_gate", "gate_up"])
def test_lookahead_is_exact_when_the_residual_stream_does_not_change(
        kind, one_torch_thread):  # noqa: F811
    # blocks are identities on the residual stream, so block l+1's MLP input is exactly its
    # pre-MLP norm of block l's input: the predictor is the truth
    model = _zero_updates(build("llama", num_hidden_layers=3), {"o_proj", "down_proj"})
    result = lookahead_predictability(model, None, IDS, sites=kind, top_frac=0.1, **COMMON)
    assert isinstance(result, LookaheadResult)
    assert list(result) == ["model.layers.1", "model.layers.2"]
    for layer in result.layers.values():
        assert layer.recall == pytest.approx(1.0) and layer.recall_own_input == pytest.approx(1.0)
        assert layer.precision == pytest.approx(1.0)
        assert layer.active_fraction == pytest.approx(math.ceil(0.1 * (128 if kind == "silu_gate"
                                                                      else 64)) /
                                                      (128 if kind == "silu_gate" else 64))
    thresholded = lookahead_predictability(model, None, IDS, sites=kind, target=0.5, **COMMON)
    assert thresholded.top_frac is None and thresholded.target == 0.5
    for layer in thresholded.layers.values():
        assert layer.recall == pytest.approx(1.0) and layer.precision == pytest.approx(1.0)
        assert layer.active_fraction == pytest.approx(0.5, abs=0.01)


def test_lookahead_on_a_random_model_is_imperfect_but_better_than_chance(
        one_torch_thread):  # noqa: F811
    model = build("llama", num_hidden_layers=3, initializer_range=0.2)
    result = lookahead_predictability(model, None, IDS, top_frac=0.25, **COMMON)
    for layer in result.layers.values():
        assert layer.active_fraction == pytest.approx(0.25)
        assert layer.recall < 0.99
        assert layer.recall_own_input < 0.99
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "source_block", "recall", "precision",
                                   "recall_own_input", "precision_own_input", "active_fraction"]


def test_parallel_residual_mlp_reads_the_block_input(one_torch_thread):  # noqa: F811
    # GPT-NeoX (use_parallel_residual): the MLP input is post_attention_layernorm(block input),
    # so the "own input" predictor is exact; this checks the traced pre-MLP norm is that module
    # (not input_layernorm) and that GELU models work
    model = build("gpt_neox", num_hidden_layers=3, use_parallel_residual=True)
    result = lookahead_predictability(model, None, IDS, top_frac=0.2, **COMMON)
    for layer in result.layers.values():
        assert layer.recall_own_input == pytest.approx(1.0)


def test_lookahead_parameters(one_torch_thread):  # noqa: F811
    model = build("llama")
    with pytest.raises(ParameterError, match="'sites' parameter of lookahead_predictability"):
        lookahead_predictability(model, None, IDS, sites="qkv", **COMMON)
    with pytest.raises(ParameterError, match="'top_frac' parameter"):
        lookahead_predictability(model, None, IDS, top_frac=0.0, **COMMON)
    with pytest.raises(ParameterError, match="'max_k' parameter of residual_similarity"):
        residual_similarity(model, None, IDS, max_k=0, **COMMON)


def test_plots(one_torch_thread):  # noqa: F811
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    model = build("llama", num_hidden_layers=3)
    ax = residual_similarity(model, None, IDS, max_k=2, **COMMON).plot()
    assert [line.get_label() for line in ax.get_lines()] == ["k = 1", "k = 2"]
    plt.close(ax.figure)
    ax = lookahead_predictability(model, None, IDS, **COMMON).plot()
    assert len(ax.get_lines()) == 3
    plt.close(ax.figure)
