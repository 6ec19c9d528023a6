"""SparseGPT: the OBS update is a least-squares refit, masks, damping retries, HessianStats."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from specmetrics import ParameterError
from specmetrics.calibration import HessianStats
from specmetrics.pruning import CholeskyError, SparseGPTResult, sparsegpt_prune, spread_counts


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny kernels: one thread is faster on a shared machine than contended threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def correlated_inputs(seed, in_features, batch=4, seq=64):
    """Calibration inputs (batch, seq, in) with correlated channels, as real activations."""
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(in_features, in_features, generator=g) / in_features ** 0.5
    mix += 0.5 * torch.eye(in_features)
    return torch.randn(batch, seq, in_features, generator=g) @ mix


def hessian_of(x):
    stats = HessianStats()
    stats.update(x)
    return stats


# --- the statistic -------------------------------------------------------------------------------

def test_hessian_stats_is_two_over_n_sum_of_outer_products():
    g = torch.Generator().manual_seed(0)
    batches = [torch.randn(2, 16, 12, generator=g), torch.randn(9, 12, generator=g),
               torch.randn(3, 4, 12, generator=g).to(torch.float16)]
    stats = HessianStats()
    for x in batches:
        stats.update(x)
    assert stats.nsamples == 6 and stats.value.dtype == torch.float32
    tokens = torch.cat([x.reshape(-1, 12).double() for x in batches])
    torch.testing.assert_close(stats.value.double(), 2 / 6 * tokens.T @ tokens, rtol=1e-5,
                               atol=1e-5)
    with pytest.raises(RuntimeError, match="no calibration data"):
        HessianStats(12).value


# --- the update ----------------------------------------------------------------------------------

def test_zero_sparsity_leaves_the_weight_unchanged():
    x = correlated_inputs(1, 40)
    hessian = hessian_of(x).value
    weight = torch.randn(24, 40, generator=torch.Generator().manual_seed(2))
    for w in (weight, weight.to(torch.float16), weight.to(torch.bfloat16)):
        result = sparsegpt_prune(w, hessian, 0.0, blocksize=16)
        assert isinstance(result, SparseGPTResult)
        assert result.weight.dtype == w.dtype and not result.mask.any()
        torch.testing.assert_close(result.weight, w, rtol=1e-6, atol=1e-6)


def test_pruning_the_first_column_refits_the_others_by_least_squares():
    """With λ ≈ 0 the update must equal argmin_v ‖w X − v X'‖ over the remaining columns X'."""
    d = 6
    x = correlated_inputs(3, d, batch=3, seq=100)
    w = torch.randn(1, d, generator=torch.Generator().manual_seed(4))
    w[0, 0] = 1e-3  # the least salient weight by far: pruned, and first in column order
    result = sparsegpt_prune(w, hessian_of(x).value, 1.0 / d, percdamp=1e-7)
    assert result.mask.tolist() == [[True] + [False] * (d - 1)]
    X = x.reshape(-1, d).double().numpy().T  # (d, tokens)
    target = w.double().numpy() @ X
    refit, *_ = np.linalg.lstsq(X[1:].T, target.ravel(), rcond=None)
    np.testing.assert_allclose(result.weight[0, 1:].double().numpy(), refit, rtol=1e-3,
                               atol=1e-3 * np.abs(refit).max())
    assert result.weight[0, 0] == 0


@pytest.mark.parametrize("seed", [5, 6, 7])
def test_single_pruned_weight_update_is_the_exact_damped_obs_solution(seed):
    """Pruning column p: columns < p stay, columns > p minimise (w' − w)(H + λI)(w' − w)ᵀ."""
    d = 10
    x = correlated_inputs(seed, d)
    stats = hessian_of(x)
    w = torch.randn(1, d, generator=torch.Generator().manual_seed(seed + 100))
    result = sparsegpt_prune(w, stats.value, 0.1)  # round(10 · 0.1) = 1 weight
    assert int(result.mask.sum()) == 1
    p = int(result.mask[0].nonzero())
    tokens = x.reshape(-1, d).double()
    h = 2 / stats.nsamples * tokens.T @ tokens + result.damp * torch.eye(d, dtype=torch.float64)
    # The pruned weight is the one of least OBS saliency w_j² / [U_jj]², U = chol((H + λI)⁻¹).
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    w64 = w[0].double()
    assert p == int(torch.argmin(w64 ** 2 / torch.diagonal(u) ** 2))
    expected = w64.clone()
    expected[p] = 0
    expected[p + 1:] += w64[p] * torch.linalg.solve(h[p + 1:, p + 1:], h[p + 1:, p])
    torch.testing.assert_close(result.weight[0].double(), expected, rtol=1e-4, atol=1e-5)
    # ... which is better on the calibration objective than zeroing the weight alone.
    zeroed = w64.clone()
    zeroed[p] = 0
    loss = lambda v: float((v - w64) @ h @ (v - w64))  # noqa: E731
    assert loss(result.weight[0].double()) < loss(zeroed)


def test_dead_inputs_are_zeroed_and_counted():
    x = correlated_inputs(8, 16)
    x[..., [2, 9]] = 0.0
    weight = torch.randn(8, 16, generator=torch.Generator().manual_seed(9))
    result = sparsegpt_prune(weight, hessian_of(x).value, 0.0)
    assert result.dead_inputs == 2 and result.retries == 0
    assert result.mask[:, [2, 9]].all() and int(result.mask.sum()) == 16
    assert (result.weight[:, [2, 9]] == 0).all()
    torch.testing.assert_close(result.weight[:, 3], weight[:, 3])


def test_unstructured_prunes_an_exact_fraction_of_each_block_tile():
    x = correlated_inputs(10, 80)
    weight = torch.randn(12, 80, generator=torch.Generator().manual_seed(11))
    result = sparsegpt_prune(weight, hessian_of(x).value, 0.6, blocksize=32)
    counts = spread_counts([12 * 32, 12 * 32, 12 * 16], 0.6)  # 230.4, 230.4, 115.2 -> 230, 231, 115
    assert sum(counts) == round(12 * 80 * 0.6)
    for (lo, hi), k in zip([(0, 32), (32, 64), (64, 80)], counts):
        assert int(result.mask[:, lo:hi].sum()) == k
        assert abs(k - 12 * (hi - lo) * 0.6) < 1
    assert (result.weight[result.mask] == 0).all()
    assert torch.isfinite(result.weight).all() and result.weight.dtype == torch.float32


@pytest.mark.parametrize("pattern", ["2:4", "4:8"])
def test_nm_counts_and_independence_of_the_block_size(pattern):
    n, m = map(int, pattern.split(":"))
    x = correlated_inputs(12, 64)
    hessian = hessian_of(x).value
    weight = torch.randn(16, 64, generator=torch.Generator().manual_seed(13))
    big = sparsegpt_prune(weight, hessian, n / m, pattern=pattern)
    small = sparsegpt_prune(weight, hessian, n / m, pattern=pattern, blocksize=m)
    assert (big.mask.reshape(16, -1, m).sum(-1) == n).all()
    assert (big.weight[big.mask] == 0).all()
    # Lazy batch updates are exact: the result cannot depend on the block size.
    assert torch.equal(big.mask, small.mask)
    torch.testing.assert_close(big.weight, small.weight, rtol=1e-4, atol=1e-4)


# --- damping and failure ---------------------------------------------------------------------------

def test_indefinite_hessian_raises_cholesky_error():
    weight = torch.randn(4, 8)
    with pytest.raises(CholeskyError, match="not positive definite"):
        sparsegpt_prune(weight, -torch.eye(8), 0.5, max_damp_retries=0)
    with pytest.raises(CholeskyError, match="cannot help"):  # λ < 0: growing it cannot help
        sparsegpt_prune(weight, -torch.eye(8), 0.5)
    singular = torch.ones(8, 8)  # positive semi-definite, rank 1, and no damping
    with pytest.raises(CholeskyError, match="not positive"):
        sparsegpt_prune(weight, singular, 0.5, percdamp=0.0)
    assert issubclass(CholeskyError, RuntimeError)


def test_hessian_needing_more_damping_succeeds_after_retries():
    d = 32
    v = torch.ones(d) / d ** 0.5
    hessian = torch.eye(d) - 1.5 * torch.outer(v, v)  # one eigenvalue -0.5, diagonal ≈ 0.95
    weight = torch.randn(6, d, generator=torch.Generator().manual_seed(14))
    result = sparsegpt_prune(weight, hessian, 0.5)  # λ = 0.0095, 0.095 fail; 0.95 works
    mean_diag = float(torch.diagonal(hessian).mean())
    assert result.retries == 2
    assert result.damp == pytest.approx(0.01 * mean_diag * 100)
    assert torch.isfinite(result.weight).all() and int(result.mask.sum()) == 6 * d // 2
    with pytest.raises(CholeskyError, match="after 1 retries"):
        sparsegpt_prune(weight, hessian, 0.5, max_damp_retries=1)


def test_bad_parameters_raise_parameter_error():
    weight, hessian = torch.randn(4, 8), torch.eye(8)
    with pytest.raises(ParameterError, match="The 'hessian' parameter of sparsegpt_prune"):
        sparsegpt_prune(weight, torch.eye(7), 0.5)
    with pytest.raises(ParameterError, match="The 'hessian' parameter of sparsegpt_prune must "
                                             "be finite"):
        sparsegpt_prune(weight, hessian * float("nan"), 0.5)
    with pytest.raises(ParameterError, match="The 'blocksize' parameter of sparsegpt_prune"):
        sparsegpt_prune(weight, hessian, 0.5, pattern="2:4", blocksize=6)
    with pytest.raises(ParameterError, match="The 'sparsity' parameter of sparsegpt_prune"):
        sparsegpt_prune(weight, hessian, 0.5, pattern="1:4")
    with pytest.raises(ParameterError, match="The 'weight' parameter of sparsegpt_prune"):
        sparsegpt_prune(torch.randn(4, 6), torch.eye(6), 0.5, pattern="2:4")
    with pytest.raises(ParameterError, match="The 'damp_growth' parameter of sparsegpt_prune"):
        sparsegpt_prune(weight, hessian, 0.5, damp_growth=0.5)
