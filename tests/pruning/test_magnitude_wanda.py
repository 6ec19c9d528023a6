"""Magnitude and Wanda masks, and Wanda's calibration statistic, on single linear layers."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from specmetrics import ParameterError
from specmetrics.calibration import SquaredNormStats
from specmetrics.pruning import magnitude_mask, spread_counts, wanda_mask, wanda_scores


def linear_with_inputs(seed=0, in_features=48, out_features=20):
    """A seeded nn.Linear and calibration batches of mixed shapes (one with outlier channels)."""
    g = torch.Generator().manual_seed(seed)
    layer = nn.Linear(in_features, out_features)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out_features, in_features, generator=g))
    scale = torch.ones(in_features)
    scale[[3, 17]] = 30.0
    batches = [torch.randn(2, 10, in_features, generator=g) * scale,
               torch.randn(7, in_features, generator=g) * scale,  # (tokens, in): one sample
               torch.randn(3, 5, in_features, generator=g) * scale]
    return layer, batches


def captured_sq_norms(layer, batches):
    stats = SquaredNormStats()
    handle = layer.register_forward_hook(lambda mod, args, out: stats.update(args[0]))
    with torch.no_grad():
        for x in batches:
            layer(x)
    handle.remove()
    return stats


# --- the statistic -------------------------------------------------------------------------------

def test_sq_norms_are_the_mean_over_samples_of_token_sums():
    layer, batches = linear_with_inputs()
    stats = captured_sq_norms(layer, batches)
    assert stats.nsamples == 2 + 1 + 3  # batch dimensions; a 2-D input is one sample
    tokens = torch.cat([x.reshape(-1, x.shape[-1]) for x in batches]).double()
    expected = (tokens ** 2).sum(0) / 6
    assert stats.value.dtype == torch.float32
    torch.testing.assert_close(stats.value.double(), expected, rtol=1e-5, atol=0)


def test_sq_norms_running_mean_is_independent_of_batching():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(6, 4, 8, generator=g)
    one, split = SquaredNormStats(), SquaredNormStats(8)
    one.update(x)
    for part in (x[:1], x[1:3], x[3:]):  # 1 + 2 + 3 samples: weighted by their batch sizes
        split.update(part)
    torch.testing.assert_close(split.value, one.value, rtol=1e-6, atol=0)
    assert split.nsamples == one.nsamples == 6
    half = SquaredNormStats()
    half.update(x.to(torch.float16))  # accumulated in float32 all the same
    assert half.value.dtype == torch.float32


def test_stats_reject_bad_inputs():
    stats = SquaredNormStats()
    with pytest.raises(RuntimeError, match="no calibration data"):
        stats.value
    with pytest.raises(ParameterError, match="The 'x' parameter of SquaredNormStats.update"):
        stats.update(torch.randn(8))
    stats.update(torch.randn(2, 3, 8))
    with pytest.raises(ParameterError, match="in_features = 8"):
        stats.update(torch.randn(2, 3, 9))


# --- Wanda -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 1.0])
def test_wanda_prunes_the_lowest_weight_times_input_norm_of_each_row(sparsity):
    layer, batches = linear_with_inputs()
    stats = captured_sq_norms(layer, batches)
    mask = wanda_mask(layer.weight, stats.value, sparsity)
    ks = spread_counts([layer.in_features] * layer.out_features, sparsity)
    assert mask.sum(dim=1).tolist() == ks  # exact total, each row within one of C_in * s
    # Brute force from the raw inputs, in float64: |W_ij| · ‖X_j‖ sorted per row.
    tokens = np.concatenate([x.reshape(-1, x.shape[-1]).numpy() for x in batches]).astype(float)
    scores = np.abs(layer.weight.detach().numpy().astype(float)) * np.linalg.norm(tokens, axis=0)
    expected = np.zeros(scores.shape, dtype=bool)
    for i, row in enumerate(scores):
        expected[i, np.argsort(row, kind="stable")[:ks[i]]] = True
    np.testing.assert_array_equal(mask.numpy(), expected)


def test_wanda_differs_from_magnitude_where_inputs_are_large():
    weight = torch.arange(1.0, 9.0).reshape(1, 8)
    sq_norms = torch.tensor([16.0, 1, 1, 1, 1, 1, 1, 1])  # scores [4, 2, 3, 4, 5, 6, 7, 8]
    torch.testing.assert_close(wanda_scores(weight, sq_norms),
                               torch.tensor([[4.0, 2, 3, 4, 5, 6, 7, 8]]))
    assert wanda_mask(weight, sq_norms, 0.5, pattern="2:4").tolist() == \
        [[False, True, True, False, True, True, False, False]]
    assert wanda_mask(weight, sq_norms, 0.25).tolist() == \
        [[False, True, True, False, False, False, False, False]]


@pytest.mark.parametrize("pattern", ["2:4", "4:8", "1:4"])
def test_wanda_nm_has_exactly_n_zeros_in_every_group(pattern):
    n, m = map(int, pattern.split(":"))
    layer, batches = linear_with_inputs(seed=2)
    stats = captured_sq_norms(layer, batches)
    mask = wanda_mask(layer.weight, stats.value, n / m, pattern=pattern)
    assert (mask.reshape(layer.out_features, -1, m).sum(-1) == n).all()


def test_wanda_scores_are_float32_for_low_precision_weights():
    layer, batches = linear_with_inputs()
    stats = captured_sq_norms(layer, batches)
    scores = wanda_scores(layer.weight.to(torch.bfloat16), stats.value)
    assert scores.dtype == torch.float32 and not scores.requires_grad


# --- magnitude -------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.25, 0.5, 0.9])
def test_magnitude_prunes_exact_count_under_one_threshold(sparsity):
    g = torch.Generator().manual_seed(3)
    weight = torch.randn(16, 24, generator=g) * torch.logspace(-1, 1, 16).reshape(-1, 1)
    mask = magnitude_mask(weight, sparsity)
    k = math.floor(weight.numel() * sparsity + 0.5)
    assert int(mask.sum()) == k
    if k:
        assert weight.abs()[mask].max() <= weight.abs()[~mask].min()
    if sparsity == 0.5:  # one threshold for the matrix, not a count per row: small rows go
        counts = mask.sum(dim=1)
        assert counts[0] == 24 and counts[-1] <= 4


def test_magnitude_two_four_hand_case():
    weight = torch.tensor([[1.0, 2, 3, 4, 5, 6, 7, 8], [-8.0, 1, -2, 7, 0, -0.5, 3, -3]])
    assert magnitude_mask(weight, 0.5, pattern="2:4").tolist() == [
        [True, True, False, False, True, True, False, False],
        [False, True, True, False, True, True, False, False],
    ]
    assert magnitude_mask(weight.half(), 0.5, pattern="2:4").tolist() == \
        magnitude_mask(weight, 0.5, pattern="2:4").tolist()


def test_bad_parameters_raise_parameter_error():
    weight, sq = torch.randn(4, 8), torch.ones(8)
    with pytest.raises(ParameterError, match=r"The 'sparsity' parameter of wanda_mask must be "
                                             r"0\.5 \(N/M for pattern '2:4'\)\. Got 0\.6 instead"):
        wanda_mask(weight, sq, 0.6, pattern="2:4")
    with pytest.raises(ParameterError, match="The 'sq_norms' parameter of wanda_scores"):
        wanda_scores(weight, torch.ones(7))
    with pytest.raises(ParameterError, match="The 'sq_norms' parameter of wanda_scores"):
        wanda_scores(weight, -torch.ones(8))
    with pytest.raises(ParameterError, match="The 'pattern' parameter of magnitude_mask"):
        magnitude_mask(weight, 0.5, pattern="2:2")
    with pytest.raises(ParameterError, match="The 'weight' parameter of magnitude_mask"):
        magnitude_mask(torch.randn(8), 0.5)
