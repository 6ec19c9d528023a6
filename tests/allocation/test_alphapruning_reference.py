"""AlphaPruning's ``ww_sparsity`` reproduced from its published LLaMA-7B ``alpha_peak`` values.

``REFERENCE_BLOCKS`` are the 32 block sparsities printed by the reference function
(``lib/prune.py::ww_sparsity`` of haiquanlu/AlphaPruning, run unmodified on these alphas with
LLaMA-7B's Linear parameter counts, sparsity 0.7, s1 = 0.8, s2 = 1.2, ``block_wise``).

The reference computes ``torch.sum(prunables) * sparsity_ratio`` as an int64 tensor times a Python
float, which torch evaluates in float32: its scale carries a relative rounding error of
6.78e-8 (its own weighted mean is 0.69999995, not 0.7). Our ratios are the reference formula in
float64 (checked to 1e-12), and equal the reference's output times that one constant factor
(checked to 1e-12 relative); the absolute difference to the printed values is below 6e-8.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from specmetrics.allocation import AlphaPruningConfig, allocate
from strategies import LLAMA_TYPES, llama_names

pytestmark = pytest.mark.shared

REFERENCE_BLOCKS = np.array([
    0.5704216391582921, 0.6175979065230245, 0.6315311134021712, 0.63073798430222,
    0.6528562766509912, 0.6482450644429272, 0.630059084469774, 0.5921672264880588,
    0.5973896520010152, 0.5680346477770044, 0.5870822926101193, 0.5893719793566115,
    0.5989924147186312, 0.6108631780536286, 0.6187749397074546, 0.6681279669076623,
    0.6586799587434269, 0.715605636774056, 0.7905723791106716, 0.7437890573053035,
    0.7946148156301167, 0.8248370662418976, 0.7700518080995601, 0.7629245631882605,
    0.8121659598322973, 0.8520519716655066, 0.8312613327298182, 0.8414706432822104,
    0.786920823585466, 0.8296729559500053, 0.8414231102711958, 0.7317030330478232,
])
#: min and max of the reference's ``layer_wise`` mapping (every matrix its own score), same setup
REFERENCE_LAYERWISE_RANGE = (0.5832202082560907, 0.8748303123841359)

HIDDEN, INTER, N_BLOCKS = 4096, 11008, 32
COUNTS = [HIDDEN * HIDDEN] * 4 + [HIDDEN * INTER] * 3


def _float32_factor() -> float:
    """Σp·S exact over the reference's float32 evaluation of it."""
    total = sum(COUNTS) * N_BLOCKS
    f32 = float(torch.tensor(total) * 0.7)  # the reference's expression, evaluated by torch
    return total * 0.7 / f32


@pytest.fixture(scope="module")
def llama7b(shared_dir):
    alphas = np.load(shared_dir / "data/reference/alphapruning-alphas/llama-7b-hf.alpha_peak.npy")
    assert alphas.shape == (N_BLOCKS * 7,)
    names = llama_names(N_BLOCKS)
    return (dict(zip(names, alphas.tolist())),
            {n: COUNTS[j % 7] for j, n in enumerate(names)}, alphas)


def test_block_sparsities_match_ww_sparsity(llama7b):
    scores, counts, alphas = llama7b
    alloc = allocate(scores, 0.7, method=AlphaPruningConfig(epsilon=0.2), units="block",
                     clip=None, n_params=counts)
    ours = np.array([[alloc[f"model.layers.{i}.{t}"] for t in LLAMA_TYPES] for i in range(N_BLOCKS)])
    # one ratio per block
    assert np.all(ours == ours[:, :1])
    blocks = ours[:, 0]

    # the reference formula in float64
    m = alphas.reshape(N_BLOCKS, 7).mean(axis=1)
    r = (m - m.min()) / (m.max() - m.min()) * ((1 + 0.2) - (1 - 0.2)) + (1 - 0.2)
    p = np.full(N_BLOCKS, float(sum(COUNTS)))  # every block has the same parameter count
    assert np.max(np.abs(blocks - r * (0.7 * p.sum() / (p * r).sum()))) < 1e-12

    # the reference's printed output, up to its float32-rounded scale
    np.testing.assert_allclose(blocks / REFERENCE_BLOCKS, _float32_factor(), rtol=1e-12, atol=0)
    assert np.max(np.abs(blocks - REFERENCE_BLOCKS)) < 6e-8

    # the range the reference document quotes: about [0.568, 0.852]
    assert blocks.min() == pytest.approx(0.568035, abs=1e-6)
    assert blocks.max() == pytest.approx(0.852052, abs=1e-6)
    assert alloc.achieved == pytest.approx(0.7, abs=1e-12)


def test_layerwise_mapping_matches_reference_range(llama7b):
    scores, counts, _ = llama7b
    alloc = allocate(scores, 0.7, method=AlphaPruningConfig(epsilon=0.2), units="matrix",
                     clip=None, n_params=counts)
    values = np.array(list(alloc.values()))
    factor = _float32_factor()
    assert values.min() / REFERENCE_LAYERWISE_RANGE[0] == pytest.approx(factor, rel=1e-12)
    assert values.max() / REFERENCE_LAYERWISE_RANGE[1] == pytest.approx(factor, rel=1e-12)
    assert alloc.achieved == pytest.approx(0.7, abs=1e-12)


def test_clipping_changes_nothing_inside_the_bounds(llama7b):
    scores, counts, _ = llama7b
    free = allocate(scores, 0.7, clip=None, n_params=counts)
    clipped = allocate(scores, 0.7, clip=(0.0, 0.99), n_params=counts)
    assert max(abs(free[n] - clipped[n]) for n in free) < 1e-15


def test_large_epsilon_is_clipped_and_exact(llama7b):
    # AlphaPruning unclipped at eps = 0.5 gives ratios above 1 for LLaMA-7B at 70 %
    scores, counts, _ = llama7b
    with pytest.warns(UserWarning, match="outside"):
        free = allocate(scores, 0.7, method=AlphaPruningConfig(epsilon=0.5), clip=None,
                        n_params=counts)
    assert max(free.values()) > 1.0
    alloc = allocate(scores, 0.7, method=AlphaPruningConfig(epsilon=0.5), n_params=counts)
    assert max(alloc.values()) == pytest.approx(0.99, abs=1e-15)
    assert alloc.achieved == pytest.approx(0.7, abs=1e-12)


@pytest.mark.parametrize("model", ["llama-13b-hf", "llama2-7b-hf", "llama2-70b-hf"])
def test_other_published_alphas_allocate_exactly(shared_dir, model):
    alphas = np.load(shared_dir / f"data/reference/alphapruning-alphas/{model}.alpha_peak.npy")
    n_blocks = alphas.size // 7
    names = llama_names(n_blocks)
    # shapes do not matter for exactness: LLaMA-13B-like counts
    counts = {n: [5120 * 5120] * 4 + [5120 * 13824] * 3 for n in names}
    counts = {n: c[j % 7] for j, (n, c) in enumerate(counts.items())}
    alloc = allocate(dict(zip(names, alphas.tolist())), 0.7, n_params=counts)
    assert alloc.achieved == pytest.approx(0.7, abs=1e-12)
    assert 0.0 <= min(alloc.values()) and max(alloc.values()) <= 0.99
