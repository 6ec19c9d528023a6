"""Output error of the three methods on a seeded family of random layers at 50 % sparsity.

Calibration inputs are made like LLM activations: correlated channels (a random mixing of a
lower-dimensional latent plus noise) and a handful of outlier channels with 10-100x scale. The
expected order, SparseGPT < Wanda < magnitude, is the papers' headline result: Wanda beats
magnitude by keeping the weights of the outlier channels, SparseGPT beats Wanda by refitting the
remaining weights to the correlated inputs. Errors are measured on the calibration inputs and on
held-out inputs from the same distribution.
"""
from __future__ import annotations

import pytest
import torch

from specmetrics.calibration import HessianStats, SquaredNormStats
from specmetrics.pruning import (
    apply_mask,
    magnitude_mask,
    sparsegpt_prune,
    wanda_mask,
)

N_LAYERS = 50
SPARSITY = 0.5


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny kernels: one thread is faster on a shared machine than contended threads."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def random_layer(g: torch.Generator):
    """Weight (out, in), calibration inputs and held-out inputs, each (8, 64, in)."""
    out_features = int(torch.randint(32, 129, (1,), generator=g))
    in_features = 8 * int(torch.randint(8, 33, (1,), generator=g))  # 64 .. 256
    weight = torch.randn(out_features, in_features, generator=g)
    latent = in_features // 2
    mix = torch.randn(latent, in_features, generator=g) / latent ** 0.5
    scale = torch.exp(0.3 * torch.randn(in_features, generator=g))
    outliers = torch.randperm(in_features, generator=g)[:4]
    scale[outliers] *= 10 ** (1 + torch.rand(4, generator=g))  # 10x .. 100x

    def inputs():
        z = torch.randn(8, 64, latent, generator=g) @ mix
        return (z + 0.3 * torch.randn(8, 64, in_features, generator=g)) * scale

    return weight, inputs(), inputs()


def output_error(weight, pruned, x):
    tokens = x.reshape(-1, x.shape[-1])
    return float(torch.linalg.matrix_norm(tokens @ (weight - pruned).T))


def test_sparsegpt_beats_wanda_beats_magnitude():
    g = torch.Generator().manual_seed(2024)
    errors = []  # rows: (sparsegpt, wanda, magnitude) on calibration, then held-out inputs
    for _ in range(N_LAYERS):
        weight, calib, held_out = random_layer(g)
        hessian, sq_norms = HessianStats(), SquaredNormStats()
        hessian.update(calib)
        sq_norms.update(calib)
        pruned = [
            sparsegpt_prune(weight, hessian.value, SPARSITY).weight,
            apply_mask(weight, wanda_mask(weight, sq_norms.value, SPARSITY)),
            apply_mask(weight, magnitude_mask(weight, SPARSITY)),
        ]
        for w in pruned:  # every method reaches the target sparsity
            assert int((w == 0).sum()) >= int(weight.numel() * SPARSITY)
        errors.append([output_error(weight, w, x) for x in (calib, held_out) for w in pruned])
    errors = torch.tensor(errors)
    for offset, data in [(0, "calibration"), (3, "held-out")]:
        sgpt, wanda, mag = errors[:, offset], errors[:, offset + 1], errors[:, offset + 2]
        assert (sgpt < wanda).float().mean() >= 0.9, f"SparseGPT < Wanda on {data} inputs"
        assert (wanda < mag).float().mean() >= 0.9, f"Wanda < magnitude on {data} inputs"
        assert sgpt.mean() < wanda.mean() < mag.mean(), f"mean errors on {data} inputs"
