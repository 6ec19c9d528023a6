"""Distance from Marchenko-Pastur: the closed-form CDF, a matrix drawn from the MP law within
sampling error of zero, heavy tails far from it, scale-freeness, eigenvalue input, bad input."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specmetrics import ParameterError
from specmetrics.circuits import MPDistance, MPDistanceReport, mp_cdf, mp_distance, mp_distances
from strategies import random_matrices
from tiny_models import build, one_torch_thread  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _gauss(n, m, seed):
    return torch.randn(n, m, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("y", [0.05, 0.3, 0.5, 0.9, 1.0])
def test_cdf_is_the_integral_of_the_mp_density(y):
    from scipy import integrate

    sy = math.sqrt(y)
    a, b = (1 - sy) ** 2, (1 + sy) ** 2

    def density(x):
        return math.sqrt(max((b - x) * (x - a), 0.0)) / (2 * math.pi * y * x)

    for frac in (0.02, 0.3, 0.5, 0.77, 0.99):
        x = a + frac * (b - a)
        ref = integrate.quad(density, a, x, limit=200)[0]
        assert float(mp_cdf(x, y)) == pytest.approx(ref, abs=1e-8)
    assert float(mp_cdf(a * 0.5, y)) == 0.0 and float(mp_cdf(b * 1.01, y)) == 1.0
    grid = np.linspace(0, b * 1.2, 400)
    assert np.all(np.diff(mp_cdf(grid, y)) >= -1e-12)


def test_mp_matrix_is_within_sampling_error_of_zero():
    w = _gauss(600, 200, seed=11)
    d = mp_distance(w, null_draws=12, seed=1)
    assert isinstance(d, MPDistance) and d.fit == "ks"
    assert d.distance < 0.03  # KS distance in [0, 1]
    assert abs(d.distance - d.null_mean) < 4 * d.null_sd + 1e-3
    assert abs(d.z) < 4
    assert d.sigma2 == pytest.approx(1.0, rel=0.02)  # the entries' variance
    assert d.n_spikes <= 2 and d.y == pytest.approx(1 / 3)


def test_heavy_tailed_matrix_is_far_from_mp():
    gen = torch.Generator().manual_seed(5)
    u = torch.rand(600, 200, generator=gen, dtype=torch.float64)
    sign = torch.where(torch.rand(600, 200, generator=gen) < 0.5, -1.0, 1.0).double()
    w = sign * u ** (-1 / 1.2)  # Pareto tails, index 1.2: infinite variance
    d = mp_distance(w, null_draws=5)
    gauss = mp_distance(_gauss(600, 200, seed=3), null_draws=0)
    assert d.distance > 0.2 and d.distance > 10 * gauss.distance
    assert d.z > 50
    assert d.spike_fraction > 0.05
    assert d.rand_distance >= 0 and math.isfinite(d.rand_distance)


def test_one_spike_moves_the_fitted_distance_by_about_one_over_m():
    w = _gauss(800, 200, seed=2)
    u = torch.randn(800, 1, dtype=torch.float64)
    v = torch.randn(1, 200, dtype=torch.float64)
    spiked = w + 20 * (u / u.norm()) @ (v / v.norm()) * math.sqrt(800)
    a = mp_distance(w, null_draws=0, randomize=False)
    b = mp_distance(spiked, null_draws=0, randomize=False)
    assert b.n_spikes >= 1
    assert abs(b.distance - a.distance) < 2.5 / 200


def test_scale_free_and_transpose_invariant():
    w = _gauss(300, 120, seed=7) ** 3  # not MP, so the distance is not trivially small
    base = mp_distance(w, null_draws=0, randomize=False)
    for other in (mp_distance(1e-3 * w, null_draws=0, randomize=False),
                  mp_distance(250.0 * w, null_draws=0, randomize=False),
                  mp_distance(w.T, null_draws=0, randomize=False)):
        assert other.distance == pytest.approx(base.distance, rel=1e-5, abs=1e-7)
    assert mp_distance(250.0 * w, null_draws=0, randomize=False).sigma2 == \
        pytest.approx(base.sigma2 * 250.0 ** 2, rel=1e-4)
    for fit in ("moment", "ks"):
        assert mp_distance(3 * w, fit=fit, null_draws=0, randomize=False).distance == \
            pytest.approx(mp_distance(w, fit=fit, null_draws=0, randomize=False).distance,
                          rel=1e-5, abs=1e-7)
    # the KS fit is never worse than the moment fit
    assert base.distance <= mp_distance(w, fit="moment", null_draws=0,
                                        randomize=False).distance + 1e-12


def test_eigenvalue_input_equals_matrix_input():
    w = _gauss(150, 60, seed=1)
    ev = torch.linalg.svdvals(w).numpy() ** 2
    a = mp_distance(w, null_draws=2, randomize=False)
    b = mp_distance(ev, shape=(60, 150), null_draws=2)
    c = mp_distance(np.concatenate([ev, np.zeros(90)]), shape=(150, 60), null_draws=2)
    for other in (b, c):
        assert other.distance == pytest.approx(a.distance, rel=1e-9)
        assert other.null_mean == pytest.approx(a.null_mean, rel=1e-9)
    assert math.isnan(b.rand_distance)
    assert mp_distance(list(ev), shape=[150, 60], null_draws=0).distance == \
        pytest.approx(a.distance, rel=1e-9)


def test_report_on_a_model():
    model = build("llama", seed=0)
    rep = mp_distances(model, null_draws=2)
    assert isinstance(rep, MPDistanceReport) and len(rep) == 14
    frame = rep.to_frame()
    assert frame.index[0] == "model.layers.0.self_attn.q_proj"
    assert set(frame["module_type"]) == {"q", "k", "v", "o", "gate", "up", "down"}
    assert (frame["distance"] < 0.15).all()  # random init: near MP
    sub = mp_distances(model, types="q,gate", layers=[1], null_draws=0, randomize=False)
    assert list(sub) == ["model.layers.1.self_attn.q_proj", "model.layers.1.mlp.gate_proj"]
    assert sub["model.layers.1.mlp.gate_proj"].distance == pytest.approx(
        rep["model.layers.1.mlp.gate_proj"].distance)
    assert sub["model.layers.1.mlp.gate_proj"].block == 1


@pytest.mark.parametrize("value, kwargs, param", [
    (torch.full((4, 4), math.nan), {}, "weight_or_eigenvalues"),
    (torch.zeros(2, 3, 4), {}, "weight_or_eigenvalues"),
    (torch.zeros(1, 5), {}, "weight_or_eigenvalues"),
    ("matrix", {}, "weight_or_eigenvalues"),
    (torch.zeros(3, 3, dtype=torch.complex64), {}, "weight_or_eigenvalues"),
    (np.array([1.0, 2.0, -3.0]), {"shape": (3, 5)}, "weight_or_eigenvalues"),
    (np.array([1.0, 2.0, 3.0]), {}, "shape"),
    (np.array([1.0, 2.0, 3.0]), {"shape": (4, 5)}, "shape"),
    (np.array([1.0, 2.0, 3.0]), {"shape": (3, 5.0)}, "shape"),
    (torch.randn(5, 4), {"shape": (5, 4)}, "shape"),
    (torch.randn(5, 4), {"fit": "l2"}, "fit"),
    (torch.randn(5, 4), {"null_draws": -1}, "null_draws"),
    (torch.randn(5, 4), {"randomize": "yes"}, "randomize"),
    (torch.randn(5, 4), {"seed": -1}, "seed"),
])
def test_bad_input(value, kwargs, param):
    with pytest.raises(ParameterError, match=rf"^The '{param}' parameter of mp_distance"):
        mp_distance(value, **kwargs)


def test_bad_model_input():
    model = build("llama")
    with pytest.raises(ParameterError, match="'types' parameter of mp_distances"):
        mp_distances(model, types="banana")
    with pytest.raises(ParameterError, match="'layers' parameter of mp_distances"):
        mp_distances(model, layers=[3])
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[0, 0] = math.inf
    with pytest.raises(ParameterError, match="finite weights. Got NaN or inf in "
                                             "'model.layers.1.mlp.up_proj'"):
        mp_distances(model)


@settings(max_examples=25, deadline=None)
@given(matrix=random_matrices(min_side=8, max_side=50),
       scale=st.floats(min_value=1e-3, max_value=1e3))
def test_distance_is_scale_free_and_in_the_unit_interval(matrix, scale):
    w = torch.from_numpy(matrix)
    a = mp_distance(w, null_draws=0, randomize=False)
    b = mp_distance(scale * w.T, null_draws=0, randomize=False)
    assert 0.0 <= a.distance <= 1.0
    assert b.distance == pytest.approx(a.distance, rel=1e-4, abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(y=st.floats(min_value=0.01, max_value=1.0),
       x=st.lists(st.floats(min_value=0.0, max_value=5.0), min_size=2, max_size=20))
def test_cdf_is_monotone_and_bounded(y, x):
    xs = np.sort(np.asarray(x))
    f = mp_cdf(xs, y)
    assert np.all((f >= 0) & (f <= 1)) and np.all(np.diff(f) >= -1e-12)
