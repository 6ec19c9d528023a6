"""Mask functions (exact counts, tie rule, N:M groups), apply_mask, patterns and configs."""
from __future__ import annotations

import math

import dataclasses
import re

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from strategies import random_matrices

from specmetrics import ParameterError
from specmetrics.pruning import (
    MagnitudeConfig,
    SparseGPTConfig,
    WandaConfig,
    apply_mask,
    matrix_threshold_mask,
    nm_mask,
    parse_pattern,
    row_topk_mask,
    spread_counts,
)

sparsities = st.floats(0.0, 1.0, allow_nan=False)


@st.composite
def score_matrices(draw, *, min_side=1, max_side=40):
    """Random score matrices; half of them rounded to a few integers, so ties abound."""
    scores = draw(random_matrices(min_side=min_side, max_side=max_side))
    if draw(st.booleans()):
        scores = np.round(scores)
    return torch.from_numpy(scores)


def stable_lowest(values: np.ndarray, k: int) -> np.ndarray:
    """Brute force: mask of the first ``k`` indices of a stable ascending argsort (1-D)."""
    mask = np.zeros(values.shape, dtype=bool)
    mask[np.argsort(values, kind="stable")[:k]] = True
    return mask


# --- hand-computed cases -----------------------------------------------------------------------

def test_two_four_on_one_to_eight():
    mask = nm_mask(torch.arange(1.0, 9.0).reshape(1, 8), 2, 4)
    assert mask.tolist() == [[True, True, False, False, True, True, False, False]]


def test_four_eight_and_one_four_hand_cases():
    row = torch.tensor([[8.0, 1.0, 7.0, 2.0, 6.0, 3.0, 5.0, 4.0]])
    assert nm_mask(row, 4, 8).tolist() == [[False, True, False, True, False, True, False, True]]
    assert nm_mask(row, 1, 4).tolist() == [[False, True, False, False, False, True, False, False]]


def test_ties_go_to_the_lower_index():
    scores = torch.tensor([[1.0, 1.0, 1.0, 1.0], [2.0, 1.0, 1.0, 0.0]])
    assert row_topk_mask(scores, 0.5).tolist() == [[True, True, False, False],
                                                  [False, True, False, True]]
    assert matrix_threshold_mask(scores, 0.25).tolist() == [[True, False, False, False],
                                                           [False, False, False, True]]
    assert matrix_threshold_mask(scores, 0.5).tolist() == [[True, True, True, False],
                                                          [False, False, False, True]]


def test_counts_land_on_the_target_to_one_weight_per_matrix():
    scores = torch.arange(10.0).reshape(1, 10)
    assert int(row_topk_mask(scores, 0.29).sum()) == 3  # round(10 * 0.29) = 3 (the floor: 2)
    assert int(row_topk_mask(scores, 0.3).sum()) == 3
    assert int(matrix_threshold_mask(scores, 0.99).sum()) == 10
    assert row_topk_mask(scores, 0.0).sum() == 0 and bool(row_topk_mask(scores, 1.0).all())
    # 70 % of 256 columns: the reference's floor gives 179 per row (0.6992); spread, the
    # matrix lands on round(numel * 0.7) and every row is within one of 179.2
    big = torch.rand(64, 256, generator=torch.Generator().manual_seed(0))
    mask = row_topk_mask(big, 0.7)
    assert int(mask.sum()) == round(64 * 256 * 0.7)
    assert set(mask.sum(dim=1).tolist()) <= {179, 180}


@given(st.lists(st.integers(1, 50), min_size=1, max_size=30), sparsities)
def test_spread_counts_are_exact_and_even(sizes, sparsity):
    counts = spread_counts(sizes, sparsity)
    assert sum(counts) == math.floor(sum(sizes) * sparsity + 0.5)
    for k, n in zip(counts, sizes):
        assert 0 <= k <= n and abs(k - n * sparsity) < 1 + 1e-9
    if all(float(n * sparsity).is_integer() for n in sizes):  # the reference's counts
        assert counts == [int(n * sparsity) for n in sizes]


def test_low_precision_and_integer_scores():
    scores = torch.tensor([[3, 1, 2, 0]])
    assert row_topk_mask(scores, 0.5).tolist() == [[False, True, False, True]]
    half = torch.tensor([[3.0, 1.0, 2.0, 0.0]], dtype=torch.bfloat16)
    assert nm_mask(half, 2, 4).tolist() == [[False, True, False, True]]


# --- properties ----------------------------------------------------------------------------------

@given(score_matrices(), sparsities)
def test_row_topk_mask_is_the_stable_lowest_k_of_each_row(scores, sparsity):
    mask = row_topk_mask(scores, sparsity)
    ks = spread_counts([scores.shape[1]] * scores.shape[0], sparsity)
    assert mask.dtype == torch.bool and mask.shape == scores.shape
    assert mask.sum(dim=1).tolist() == ks
    expected = np.stack([stable_lowest(row, k) for row, k in zip(scores.numpy(), ks)])
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert torch.equal(mask, row_topk_mask(scores, sparsity))  # deterministic


@given(score_matrices(), sparsities)
def test_matrix_threshold_mask_is_one_threshold_with_exact_count(scores, sparsity):
    mask = matrix_threshold_mask(scores, sparsity)
    k = math.floor(scores.numel() * sparsity + 0.5)
    assert int(mask.sum()) == k
    if 0 < k < scores.numel():
        assert scores[mask].max() <= scores[~mask].min()
    expected = stable_lowest(scores.numpy().ravel(), k).reshape(scores.shape)
    np.testing.assert_array_equal(mask.numpy(), expected)
    assert torch.equal(mask, matrix_threshold_mask(scores, sparsity))


@given(score_matrices(min_side=8), st.sampled_from([(1, 2), (2, 4), (1, 4), (3, 4), (4, 8),
                                                     (2, 8)]))
def test_nm_mask_prunes_exactly_n_lowest_per_group(scores, nm):
    n, m = nm
    scores = scores[:, : scores.shape[1] // m * m]
    mask = nm_mask(scores, n, m)
    groups = mask.reshape(scores.shape[0], -1, m)
    assert (groups.sum(dim=-1) == n).all()
    values = scores.reshape(scores.shape[0], -1, m)
    expected = np.stack([stable_lowest(group, n) for group in values.reshape(-1, m).numpy()])
    np.testing.assert_array_equal(groups.reshape(-1, m).numpy(), expected)
    assert torch.equal(mask, nm_mask(scores, n, m))


@given(score_matrices(), sparsities)
def test_apply_mask_zeroes_exactly_the_masked_entries(scores, sparsity):
    weight = scores.float()
    before = weight.clone()
    mask = row_topk_mask(scores, sparsity)
    out = apply_mask(weight, mask)
    assert out.dtype == weight.dtype and torch.equal(weight, before)
    assert (out[mask] == 0).all() and torch.equal(out[~mask], weight[~mask])


# --- bad parameters ------------------------------------------------------------------------------

def test_bad_mask_parameters_raise_parameter_error():
    scores = torch.randn(3, 6)
    with pytest.raises(ParameterError, match=re.escape(
            "The 'sparsity' parameter of row_topk_mask must be in [0, 1]. Got 1.2 instead.")):
        row_topk_mask(scores, 1.2)
    with pytest.raises(ParameterError, match="The 'scores' parameter of nm_mask must be .*"
                                              "divisible by m = 4"):
        nm_mask(scores, 2, 4)
    with pytest.raises(ParameterError, match="The 'n' parameter of nm_mask"):
        nm_mask(scores, 3, 3)
    with pytest.raises(ParameterError, match="The 'scores' parameter of matrix_threshold_mask"):
        matrix_threshold_mask(torch.randn(6), 0.5)
    with pytest.raises(ParameterError, match="finite"):
        row_topk_mask(torch.tensor([[0.0, float("nan")]]), 0.5)
    with pytest.raises(ParameterError, match="The 'mask' parameter of apply_mask"):
        apply_mask(scores, torch.zeros(3, 5, dtype=torch.bool))


# --- patterns and configs ------------------------------------------------------------------------

def test_parse_pattern():
    assert parse_pattern("unstructured") is None
    assert parse_pattern("2:4") == (2, 4) and parse_pattern("4:8") == (4, 8)
    for bad in ("4:2", "0:4", "2:2", "2-4", "2:4:8", " 2:4", "", None, (2, 4)):
        with pytest.raises(ParameterError, match="The 'pattern' parameter of parse_pattern"):
            parse_pattern(bad)


def test_configs_validate_and_describe_themselves():
    assert MagnitudeConfig().nm is None and not MagnitudeConfig().needs_calibration
    assert WandaConfig("2:4").nm == (2, 4) and WandaConfig().needs_calibration
    cfg = SparseGPTConfig(pattern="4:8")
    assert cfg.nm == (4, 8) and cfg.needs_calibration
    assert (cfg.blocksize, cfg.percdamp, cfg.max_damp_retries, cfg.damp_growth) == \
        (128, 0.01, 5, 10.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.blocksize = 64
    with pytest.raises(ParameterError, match="The 'pattern' parameter of WandaConfig"):
        WandaConfig("5:4")
    with pytest.raises(ParameterError, match="The 'pattern' parameter of MagnitudeConfig"):
        MagnitudeConfig("structured")
    bad = [dict(blocksize=0), dict(blocksize=2.0), dict(percdamp=-0.1),
           dict(max_damp_retries=-1), dict(damp_growth=1.0), dict(pattern="2:4", blocksize=6)]
    for kwargs in bad:
        name = "blocksize" if "pattern" in kwargs else next(iter(kwargs))
        with pytest.raises(ParameterError, match=f"The '{name}' parameter of SparseGPTConfig"):
            SparseGPTConfig(**kwargs)
