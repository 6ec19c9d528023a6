"""top_eigenvalues: the dense Hessian's eigenvalues, planted spectra, Ritz residuals."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import orthonormal_columns, seeds

from specmetrics import ParameterError, SpecmetricsWarning
from specmetrics.hessian import HessianEigen, top_eigenvalues
from specmetrics.hessian._lanczos import lanczos, ritz
from specmetrics.hessian._linear import as_linear


@st.composite
def planted_symmetric(draw, min_n=2, max_n=60):
    """``U diag(lam) U^T`` with Haar ``U`` and eigenvalues spread over 3 decades, with signs and
    some exact multiplicities."""
    n = draw(st.integers(min_n, max_n))
    rng = np.random.default_rng(draw(seeds))
    lam = np.sign(rng.standard_normal(n)) * 10.0 ** rng.uniform(-1.5, 1.5, n)
    repeats = draw(st.integers(0, n // 3))
    if repeats:
        lam[:repeats] = lam[-1]  # the same eigenvalue several times
    U = orthonormal_columns(rng, n, n)
    A = (U * lam) @ U.T
    return (A + A.T) / 2, np.sort(lam)


@pytest.mark.parametrize("method", ["lanczos", "arpack"])
def test_mlp_top5_equal_the_dense_hessian(mlp, mlp_operator, method):
    _, _, _, _, H = mlp
    exact = np.sort(np.linalg.eigvalsh(H.numpy()))[::-1]
    eig = top_eigenvalues(mlp_operator, k=5, method=method)
    assert isinstance(eig, HessianEigen) and eig.k == 5
    assert np.max(np.abs(eig.values - exact[:5])) <= 1e-8
    assert eig.all_converged and np.all(eig.residuals <= eig.tol * np.abs(eig.values))
    assert eig.n_matvecs > 0 and eig.dim == H.shape[0]
    low = top_eigenvalues(mlp_operator, k=3, which="SA", method=method)
    assert np.max(np.abs(low.values - exact[::-1][:3])) <= 1e-8
    big = top_eigenvalues(mlp_operator, k=3, which="LM", method=method)
    by_mag = exact[np.argsort(-np.abs(exact), kind="stable")][:3]
    assert np.max(np.abs(big.values - by_mag)) <= 1e-8


@settings(max_examples=25, deadline=None)
@given(planted_symmetric())
def test_full_lanczos_recovers_a_planted_spectrum(case):
    A, lam = case
    n = lam.shape[0]
    eig = top_eigenvalues(torch.as_tensor(A), k=n, which="SA", max_steps=n)
    scale = np.abs(lam).max()
    assert np.max(np.abs(eig.values - lam)) <= 1e-9 * scale
    assert eig.all_converged


@settings(max_examples=15, deadline=None)
@given(planted_symmetric(min_n=30, max_n=80), st.integers(3, 25))
def test_ritz_residual_identity(case, m):
    """||A y_i - theta_i y_i|| = beta_m |e_m^T s_i| for every Ritz pair after m steps."""
    A, _ = case
    At = torch.as_tensor(A)
    lin = as_linear(At, func="test")
    v0 = torch.randn(A.shape[0], generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lanczos(lin, v0, m)
    theta, S = ritz(run.alphas, run.betas[:-1])
    Y = run.basis.combine(S)
    explicit = torch.linalg.vector_norm(At @ Y - Y * torch.as_tensor(theta)[None, :], dim=0)
    bound = np.abs(run.betas[-1] * S[-1, :])
    assert np.allclose(explicit.numpy(), bound, rtol=0, atol=1e-9 * np.abs(A).max())
    # and the basis stays orthonormal (full reorthogonalisation)
    Q = run.basis.combine(np.eye(run.m))
    assert torch.allclose(Q.T @ Q, torch.eye(run.m, dtype=torch.float64), atol=1e-12)


def test_returned_residuals_and_vectors_are_true_residuals():
    rng = np.random.default_rng(3)
    U = orthonormal_columns(rng, 200, 200)
    A = torch.as_tensor((U * np.linspace(0.0, 1.0, 200) ** 3) @ U.T)
    with pytest.warns(SpecmetricsWarning, match="did not converge"):
        eig = top_eigenvalues(A, k=6, max_steps=12, return_vectors=True)
    assert not eig.all_converged
    Y = eig.vectors
    explicit = torch.linalg.vector_norm(A @ Y - Y * torch.as_tensor(eig.values)[None, :], dim=0)
    assert np.allclose(explicit.numpy(), eig.residuals, atol=1e-12)
    assert torch.allclose(torch.linalg.vector_norm(Y, dim=0), torch.ones(6, dtype=torch.float64))


def test_seeded_and_lanczos_uses_fewer_products_than_arpack():
    rng = np.random.default_rng(4)
    U = orthonormal_columns(rng, 300, 300)
    lam = np.arange(1, 301, dtype=np.float64) ** -1.0  # a power-law Hessian-like spectrum
    A = torch.as_tensor((U * lam) @ U.T)
    a = top_eigenvalues(A, k=10, seed=7)
    b = top_eigenvalues(A, k=10, seed=7)
    assert np.array_equal(a.values, b.values) and a.n_matvecs == b.n_matvecs
    c = top_eigenvalues(A, k=10, seed=8)
    assert np.allclose(a.values, c.values, atol=1e-10) and not np.array_equal(a.values, c.values)
    arpack = top_eigenvalues(A, k=10, method="arpack", seed=7)
    assert np.allclose(a.values, lam[:10], atol=1e-10)
    assert np.allclose(arpack.values, lam[:10], atol=1e-10)
    assert a.n_matvecs < arpack.n_matvecs


def test_float32_operator_converges_to_its_default_tolerance():
    rng = np.random.default_rng(5)
    U = orthonormal_columns(rng, 120, 120)
    lam = np.linspace(-1.0, 5.0, 120)
    A = torch.as_tensor((U * lam) @ U.T, dtype=torch.float32)
    A = (A + A.T) / 2
    eig = top_eigenvalues(A, k=4)
    assert eig.tol == pytest.approx(math.sqrt(torch.finfo(torch.float32).eps))
    assert eig.all_converged
    assert np.allclose(eig.values, lam[::-1][:4], atol=1e-3)


def test_other_operator_kinds(mlp, mlp_operator):
    _, _, _, _, H = mlp
    exact = np.sort(np.linalg.eigvalsh(H.numpy()))[::-1][:3]
    for op in (H.numpy(), mlp_operator.linop, mlp_operator.to_scipy()):
        eig = top_eigenvalues(op, k=3)
        assert np.max(np.abs(eig.values - exact)) <= 1e-8


def test_json_round_trip_frame_and_plot(mlp_operator, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("pandas")
    eig = top_eigenvalues(mlp_operator, k=4)
    path = tmp_path / "eig.json"
    eig.to_json(path)
    back = HessianEigen.from_json(path)
    assert back == eig and back.vectors is None
    assert np.array_equal(back.values, eig.values)
    assert tuple(back.settings["params"]) == mlp_operator.names
    frame = eig.to_frame()
    assert list(frame.columns) == ["eigenvalue", "residual", "converged"] and len(frame) == 4
    with pytest.raises(AttributeError):
        eig.k = 3
    with pytest.raises(ValueError):
        eig.values[0] = 1.0
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    ax = Figure().subplots()
    assert eig.plot(ax=ax) is ax
    with pytest.raises(ParameterError, match="'source'"):
        HessianEigen.from_json('{"format": "specmetrics.HessianTrace", "version": 1}')


def test_bad_inputs(mlp_operator):
    def bad(match, *args, **kwargs):
        with pytest.raises(ParameterError, match=match) as info:
            top_eigenvalues(*args, **kwargs)
        assert "top_eigenvalues" in str(info.value)

    op = mlp_operator
    before = op.n_matvecs
    bad("'k'", op, k=0)
    bad("'k'", op, k=op.dim + 1)
    bad("'k'", op, k=op.dim, method="arpack")
    bad("'k'", op, k=2.0)
    bad("'which'", op, k=2, which="BE")
    bad("'seed'", op, k=2, seed=-1)
    bad("'tol'", op, k=2, tol=0.0)
    bad("'tol'", op, k=2, tol=1.0)
    bad("'tol'", op, k=2, tol=float("nan"))
    bad("'method'", op, k=2, method="power")
    bad("'max_steps'", op, k=5, max_steps=4)
    bad("'return_vectors'", op, k=2, return_vectors="yes")
    bad("'progress'", op, k=2, progress=1)
    bad("'operator'", "H", k=2)
    bad("'operator'", torch.zeros(3, 4), k=2)
    bad("'operator'", torch.tensor([[1.0, 2.0], [0.0, 1.0]]), k=1)
    bad("'operator'", torch.tensor([[1.0, float("nan")], [float("nan"), 1.0]]), k=1)
    bad("'operator'", torch.eye(3, dtype=torch.int64), k=1)
    assert op.n_matvecs == before  # nothing computed


def test_accepts_numpy_scalars(mlp_operator):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        eig = top_eigenvalues(mlp_operator, k=np.int64(2), seed=np.int32(1), tol=np.float64(1e-9))
    assert eig.k == 2


@pytest.mark.slow
@pytest.mark.shared
def test_tiny_llama_wt_top_eigenvalues_agree_between_solvers(tiny_llama_dir):
    """A real trained model: Lanczos and ARPACK agree on the top of its last MLP's Hessian, and
    the Ritz residuals are honest (checked with explicit products)."""
    from specmetrics.calibration import load_text
    from specmetrics.hessian import hessian_operator
    from specmetrics.models import load_model

    model, tok = load_model(tiny_llama_dir)
    op = hessian_operator(model, load_text("calibration"), tokenizer=tok, nsamples=2, seqlen=32,
                          params="model.layers.5.mlp.down_proj.weight")
    a = top_eigenvalues(op, k=5, return_vectors=True)
    b = top_eigenvalues(op, k=5, method="arpack")
    assert a.all_converged
    assert np.allclose(a.values, b.values, rtol=1e-3)
    Y = a.vectors
    explicit = torch.linalg.vector_norm(op @ Y - Y * torch.as_tensor(a.values,
                                                                    dtype=Y.dtype)[None, :], dim=0)
    assert np.all(explicit.numpy() <= a.residuals + 1e-5 * a.values[0])


def test_reorthogonalisation_keeps_the_basis_orthonormal_over_many_steps():
    """150 steps on a spectrum spread over 6 decades: the stored basis stays orthonormal to
    rounding (and converged Ritz values have no ghost copies); without reorthogonalisation the
    three-term recurrence alone loses orthogonality completely."""
    rng = np.random.default_rng(9)
    n = 400
    lam = 10.0 ** rng.uniform(-6, 0, n)
    lam[:3] = [3.0, 2.0, 1.5]
    A = torch.as_tensor((lambda U: (U * lam) @ U.T)(orthonormal_columns(rng, n, n)))
    lin = as_linear((A + A.T) / 2, func="test")
    v0 = torch.randn(n, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    run = lanczos(lin, v0, 150)
    Q = run.basis.combine(np.eye(run.m))
    assert float((Q.T @ Q - torch.eye(run.m, dtype=torch.float64)).abs().max()) <= 1e-12
    theta, _ = ritz(run.alphas, run.betas[:-1])
    assert np.sum(np.abs(theta - 3.0) < 1e-8) == 1  # one copy of the top eigenvalue
    plain = lanczos(lin, v0, 150, reorthogonalize=False)
    theta_plain, _ = ritz(plain.alphas, plain.betas[:-1])
    assert np.sum(np.abs(theta_plain - 3.0) < 1e-8) > 1  # ghosts
