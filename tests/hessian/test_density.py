"""spectral_density: Gauss-quadrature moments exact, weights = squared first components of the
Lanczos eigenvectors, sigma a standard deviation in eigenvalue units, SLQ close (KS) to the exact
ESD of GOE and Wishart matrices."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from strategies import orthonormal_columns

from specmetrics import ParameterError, SpecmetricsWarning
from specmetrics.hessian import SpectralDensity, lanczos_quadrature, spectral_density
from specmetrics.hessian._lanczos import lanczos
from specmetrics.hessian._linear import as_linear, probes, seeded_generator


def _rotated(lam, seed):
    n = len(lam)
    U = orthonormal_columns(np.random.default_rng(seed), n, n)
    A = (U * np.asarray(lam)) @ U.T
    return torch.as_tensor((A + A.T) / 2)


def _start_vectors(seed, n, repeats):
    """The start vectors spectral_density draws for ``seed`` (normalised Rademacher)."""
    gen = seeded_generator(seed)
    out = []
    for _ in range(repeats):
        u = probes(gen, n, 1, "rademacher", torch.float64, torch.device("cpu"))[:, 0]
        out.append(u / torch.linalg.vector_norm(u))
    return out


def _plain_lanczos_T(A: np.ndarray, u: np.ndarray, m: int) -> np.ndarray:
    """An independent textbook Lanczos (numpy, full reorthogonalisation): the m x m T."""
    n = A.shape[0]
    Q = np.zeros((n, m))
    T = np.zeros((m, m))
    q = u / np.linalg.norm(u)
    beta = 0.0
    q_prev = np.zeros(n)
    for j in range(m):
        Q[:, j] = q
        w = A @ q - beta * q_prev
        alpha = q @ w
        w -= alpha * q
        w -= Q[:, :j + 1] @ (Q[:, :j + 1].T @ w)
        w -= Q[:, :j + 1] @ (Q[:, :j + 1].T @ w)
        T[j, j] = alpha
        beta = np.linalg.norm(w)
        if j + 1 < m:
            T[j, j + 1] = T[j + 1, j] = beta
        q_prev, q = q, w / beta
    return T


@pytest.mark.parametrize("m", [3, 6, 10])
def test_gauss_quadrature_moments_are_exact(m):
    """sum_i tau_i theta_i^j = u^T A^j u for j <= 2m - 1 (and not, in general, for j = 2m)."""
    n = 60
    A = _rotated(np.random.default_rng(0).uniform(-1.0, 2.0, n), seed=1)
    d = spectral_density(A, n_steps=m, n_repeats=2, seed=3)
    (u1, u2) = _start_vectors(3, n, 2)
    An = A.numpy()
    for j in range(0, 2 * m):
        exact = np.mean([float(u @ np.linalg.matrix_power(An, j) @ u) for u in (u1, u2)])
        assert d.moment(j) == pytest.approx(exact, rel=1e-9, abs=1e-12), j
    j = 2 * m
    exact = np.mean([float(u @ np.linalg.matrix_power(An, j) @ u) for u in (u1, u2)])
    assert abs(d.moment(j) - exact) > 1e-8 * abs(exact)  # 10x the tolerance above


def test_weights_are_squared_first_components_of_the_eigenvectors():
    """The PyHessian bug: the weights are S[0, :]^2 (first *row* of the eigenvector matrix of
    T), not S[:, 0]^2; checked against an independent Lanczos and eigendecomposition."""
    n, m = 50, 8
    A = _rotated(np.random.default_rng(2).standard_normal(n), seed=3)
    d = spectral_density(A, n_steps=m, seed=11)
    (u,) = _start_vectors(11, n, 1)
    T = _plain_lanczos_T(A.numpy(), u.numpy(), m)
    theta, S = np.linalg.eigh(T)
    assert np.allclose(d.nodes[0], theta, atol=1e-10)
    assert np.allclose(d.weights[0], S[0, :] ** 2, atol=1e-10)
    assert d.weights[0].sum() == pytest.approx(1.0)
    wrong = S[:, 0] ** 2  # the components of the first eigenvector
    assert not np.allclose(d.weights[0], wrong, atol=1e-3)
    # the wrong weights also break the first moment: sum tau theta = u^T A u
    assert abs(float(wrong @ theta) - float(u @ A @ u)) > 1e-3
    assert float(d.weights[0] @ theta) == pytest.approx(float(u @ A @ u), abs=1e-12)
    # lanczos_quadrature is the same map from T
    nodes, weights = lanczos_quadrature(np.diag(T), np.diag(T, 1))
    assert np.allclose(weights, S[0, :] ** 2, atol=1e-12)


@pytest.mark.parametrize("c, sigma", [(3.0, 0.25), (-200.0, 7.5), (1e-4, 1e-6)])
def test_sigma_is_a_standard_deviation_in_eigenvalue_units(c, sigma):
    """For A = c I the quadrature is one node at c with weight 1, so the density must be exactly
    the normal pdf N(c, sigma^2), whatever the scale of c (no rescaling, no variance)."""
    from scipy.stats import norm

    A = c * torch.eye(30, dtype=torch.float64)
    d = spectral_density(A, n_steps=10, sigma=sigma, n_points=801)
    assert d.n_matvecs == 1  # an invariant Krylov space after one step
    assert np.allclose(d.density, norm(c, sigma).pdf(d.grid), rtol=1e-10,
                       atol=1e-12 * d.density.max())
    mean = np.trapezoid(d.grid * d.density, d.grid)
    var = np.trapezoid((d.grid - mean) ** 2 * d.density, d.grid)
    assert mean == pytest.approx(c, abs=1e-6 * sigma + 1e-12 * abs(c))
    assert math.sqrt(var) == pytest.approx(sigma, rel=1e-6)
    assert d.integral == pytest.approx(1.0, abs=1e-8)


def _ks_to_exact(d: SpectralDensity, eigenvalues: np.ndarray) -> float:
    """sup |F_SLQ - F_exact| over every jump of either distribution function."""
    ev = np.sort(eigenvalues)
    pts = np.concatenate([ev, d.nodes[d.weights > 0]])
    tiny = 1e-12 * np.abs(pts).max()
    hi = np.abs(np.searchsorted(ev, pts, side="right") / ev.size - d.cdf(pts))
    lo = np.abs(np.searchsorted(ev, pts, side="left") / ev.size - d.cdf(pts - tiny))
    return float(max(hi.max(), lo.max()))


@pytest.mark.parametrize("kind", ["goe", "wishart"])
def test_slq_is_close_to_the_exact_esd(kind):
    n = 400
    rng = np.random.default_rng(0)
    if kind == "goe":
        G = rng.standard_normal((n, n))
        M = (G + G.T) / np.sqrt(2 * n)
    else:
        X = rng.standard_normal((2 * n, n))
        M = X.T @ X / (2 * n)
    exact = np.linalg.eigvalsh(M)
    d = spectral_density(torch.as_tensor(M), n_steps=50, n_repeats=10, seed=1)
    assert _ks_to_exact(d, exact) < 0.05  # measured 0.030
    assert d.integral == pytest.approx(1.0, abs=1e-6)
    # the SLQ trace is Hutchinson's estimate: within 4 of its standard errors
    assert abs(d.trace - np.trace(M)) <= 4 * np.sqrt(2 * (M ** 2).sum() / 10)
    # the test can fail: a spectrum stretched by 50 % is far in KS
    assert _ks_to_exact(d, 1.5 * exact) > 0.1


def test_mlp_hessian_density(mlp, mlp_operator):
    pytest.importorskip("matplotlib")
    _, _, _, _, H = mlp
    d = spectral_density(mlp_operator, n_steps=mlp_operator.dim, n_repeats=2, seed=0)
    exact = np.linalg.eigvalsh(H.numpy())
    # full Lanczos: each repeat's nodes are the distinct eigenvalues it sees
    assert d.nodes[0, d.weights[0] > 1e-8].min() == pytest.approx(exact.min(), abs=1e-8)
    assert d.nodes[0].max() == pytest.approx(exact.max(), abs=1e-8)
    assert d.integral == pytest.approx(1.0, abs=1e-6)
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    assert d.plot(ax=ax) is ax
    assert ax.get_yscale() == "log"


def test_no_reorthogonalisation_keeps_quadrature_usable():
    n = 300
    A = _rotated(np.linspace(0.0, 1.0, n) ** 4, seed=5)
    full = spectral_density(A, n_steps=80, seed=2)
    plain = spectral_density(A, n_steps=80, seed=2, reorthogonalize=False)
    assert plain.integral == pytest.approx(1.0, abs=1e-6)
    assert plain.moment(1) == pytest.approx(full.moment(1), rel=1e-8)
    assert plain.moment(2) == pytest.approx(full.moment(2), rel=1e-6)


def test_seeded_and_json(tmp_path):
    A = _rotated(np.linspace(-1, 1, 40), seed=6)
    a = spectral_density(A, n_steps=12, n_repeats=3, seed=4)
    b = spectral_density(A, n_steps=12, n_repeats=3, seed=4)
    c = spectral_density(A, n_steps=12, n_repeats=3, seed=5)
    assert a == b and a != c
    back = SpectralDensity.from_json(a.to_json())
    assert back == a and np.array_equal(back.density, a.density)
    assert np.array_equal(back.weights, a.weights)
    assert back.settings["n_repeats"] == 3
    frame = a.to_frame()
    assert list(frame.columns) == ["eigenvalue", "density"]


def test_undersampled_grid_warns():
    A = _rotated(np.linspace(0, 100, 40), seed=7)
    with pytest.warns(SpecmetricsWarning, match="undersampled"):
        spectral_density(A, n_steps=10, sigma=0.01, n_points=50)


def test_bad_inputs():
    A = torch.eye(5, dtype=torch.float64)

    def bad(match, **kwargs):
        with pytest.raises(ParameterError, match=match) as info:
            spectral_density(A, **kwargs)
        assert "spectral_density" in str(info.value)

    bad("'n_steps'", n_steps=1)
    bad("'n_steps'", n_steps=10.5)
    bad("'n_repeats'", n_repeats=0)
    bad("'sigma'", sigma=0.0)
    bad("'sigma'", sigma=-1.0)
    bad("'sigma'", sigma=float("inf"))
    bad("'sigma'", sigma="wide")
    bad("'n_points'", n_points=1)
    bad("'seed'", seed=-3)
    bad("'reorthogonalize'", reorthogonalize="no")
    bad("'progress'", progress=None)
    with pytest.raises(ParameterError, match="'operator'"):
        spectral_density(np.ones((3, 2)))


def test_lanczos_stops_at_an_invariant_subspace():
    A = torch.diag(torch.tensor([1.0, 1.0, 2.0, 2.0, 3.0], dtype=torch.float64))
    lin = as_linear(A, func="test")
    run = lanczos(lin, torch.ones(5, dtype=torch.float64), 5)
    assert run.exhausted and run.m == 3  # three distinct eigenvalues
