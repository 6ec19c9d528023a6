"""hessian_trace: exact on the MLP, stochastic estimates within their own standard errors,
Hutchinson's mean and variance on rotated matrices."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from strategies import orthonormal_columns

from specmetrics import ParameterError
from specmetrics.hessian import HessianTrace, hessian_trace


def _rotated(n, lam, seed):
    rng = np.random.default_rng(seed)
    U = orthonormal_columns(rng, n, n)
    A = (U * lam) @ U.T
    return torch.as_tensor((A + A.T) / 2)


def test_exact_trace_of_the_mlp_hessian(mlp, mlp_operator):
    _, _, _, _, H = mlp
    result = hessian_trace(mlp_operator, method="exact")
    assert abs(result.value - float(torch.trace(H))) <= 1e-8
    assert result.stderr == 0.0 and result.n_matvecs == H.shape[0]


@pytest.mark.parametrize("method", ["hutchinson", "hutch++", "xtrace"])
def test_stochastic_traces_lie_within_their_standard_errors_over_seeds(mlp, method):
    from specmetrics.hessian import hessian_operator

    net, X, y, loss, H = mlp
    op = hessian_operator(net, [(X, y)], loss=loss)  # one batch: half the cost of two
    exact = float(torch.trace(H))
    z = []
    for seed in range(40):
        r = hessian_trace(op, method=method, n_probes=24, seed=seed)
        assert r.n_matvecs == 24 and r.stderr > 0
        z.append((r.value - exact) / r.stderr)
    z = np.asarray(z)
    # a t-like statistic from 8-24 samples: about 90-95 % within 2, nearly all within 3;
    # XTrace's leave-one-out estimates are correlated, so its standard error is ~30 % optimistic
    assert np.mean(np.abs(z) <= 2.0) >= 0.75
    assert np.mean(np.abs(z) <= 3.0) >= 0.9
    assert abs(z.mean()) <= 0.6  # unbiased: mean z near 0 (its s.e. is about 0.2)
    assert 0.5 <= z.std() <= 1.7  # the standard error is the estimate's spread


@pytest.mark.parametrize("distribution", ["rademacher", "normal"])
def test_hutchinson_mean_and_variance_on_a_rotated_matrix(distribution):
    """Per-probe variance 2 (||A||_F^2 - sum A_ii^2) for Rademacher, 2 ||A||_F^2 for Gaussian
    probes: on a rotated (not diagonal) matrix the off-diagonal mass is what matters."""
    n = 40
    A = _rotated(n, np.linspace(-2.0, 5.0, n), seed=0)
    fro2 = float((A ** 2).sum())
    diag2 = float((torch.diagonal(A) ** 2).sum())
    expected_var = 2 * (fro2 - diag2) if distribution == "rademacher" else 2 * fro2
    N = 12_000
    r = hessian_trace(A, method="hutchinson", n_probes=N, seed=1, distribution=distribution)
    samples = r.samples
    assert samples.shape == (N,)
    tr = float(torch.trace(A))
    assert abs(samples.mean() - tr) <= 4 * np.sqrt(expected_var / N)
    # the sample variance of N probes has relative s.e. about sqrt(2 / N) (Gaussian-like)
    assert samples.var(ddof=1) == pytest.approx(expected_var, rel=0.08)
    assert r.stderr == pytest.approx(np.sqrt(expected_var / N), rel=0.05)
    # the diagonal of the same spectrum has no Rademacher variance at all: rotation matters
    D = torch.diag(torch.as_tensor(np.linspace(-2.0, 5.0, n)))
    flat = hessian_trace(D, method="hutchinson", n_probes=50, seed=1)
    if distribution == "rademacher":
        assert np.allclose(flat.samples, float(torch.trace(D)))


def test_xtrace_leave_one_out_estimates_match_their_definition():
    """Each XTrace sample is tr(Q_i^T A Q_i) + w_i^T P_i A P_i w_i with Q_i = orth(A W_{-i}),
    P_i = I - Q_i Q_i^T (computed here by brute force; the estimator uses small matrices)."""
    import math

    from specmetrics.hessian._linear import probes, seeded_generator

    n = 50
    A = _rotated(n, np.random.default_rng(0).standard_normal(n), seed=4)
    r = hessian_trace(A, method="xtrace", n_probes=12, seed=5)
    W = probes(seeded_generator(5), n, 6, "rademacher", torch.float64, torch.device("cpu"))
    W = W * (math.sqrt(n) / torch.linalg.vector_norm(W, dim=0))[None, :]
    brute = []
    for i in range(6):
        Q, _ = torch.linalg.qr(A @ torch.cat([W[:, :i], W[:, i + 1:]], 1))
        P = torch.eye(n, dtype=torch.float64) - Q @ Q.T
        brute.append(float(torch.trace(Q.T @ A @ Q) + W[:, i] @ P @ A @ P @ W[:, i]))
    assert np.allclose(r.samples, brute, rtol=0, atol=1e-10)
    assert r.value == pytest.approx(np.mean(brute), abs=1e-10)


def test_hutchpp_and_xtrace_are_exact_on_low_rank():
    n, rank = 80, 5
    lam = np.zeros(n)
    lam[:rank] = [9.0, 4.0, -3.0, 2.0, 1.0]
    A = _rotated(n, lam, seed=2)
    for method in ("hutch++", "xtrace"):
        r = hessian_trace(A, method=method, n_probes=30, seed=0)
        assert abs(r.value - lam.sum()) <= 1e-9
        assert r.stderr <= 1e-9
    assert "rank-deficient" in hessian_trace(A, method="xtrace", n_probes=30).message


def test_variance_reduction_on_a_decaying_spectrum():
    """On lambda_k ~ k^-2 (most of the trace in a few directions) Hutch++ and XTrace beat
    Hutchinson at the same number of products."""
    n = 200
    A = _rotated(n, np.arange(1, n + 1, dtype=np.float64) ** -2.0, seed=3)
    se = {m: hessian_trace(A, method=m, n_probes=60, seed=0).stderr
          for m in ("hutchinson", "hutch++", "xtrace")}
    assert se["hutch++"] < se["hutchinson"] / 3
    assert se["xtrace"] < se["hutchinson"] / 3


def test_seeded(mlp_operator):
    a = hessian_trace(mlp_operator, n_probes=12, seed=3)
    b = hessian_trace(mlp_operator, n_probes=12, seed=3)
    c = hessian_trace(mlp_operator, n_probes=12, seed=4)
    assert a.value == b.value and a.value != c.value
    assert float(a) == a.value
    lo, hi = a.interval()
    assert lo < a.value < hi


def test_json_round_trip(mlp_operator, tmp_path):
    r = hessian_trace(mlp_operator, method="xtrace", n_probes=10, seed=0)
    back = HessianTrace.from_json(r.to_json())
    assert back == r and np.array_equal(back.samples, r.samples)
    assert back.settings["method"] == "xtrace"
    r.to_json(tmp_path / "t.json")
    assert HessianTrace.from_json(tmp_path / "t.json") == r


def test_bad_inputs(mlp_operator):
    def bad(match, **kwargs):
        with pytest.raises(ParameterError, match=match) as info:
            hessian_trace(mlp_operator, **kwargs)
        assert "hessian_trace" in str(info.value)

    before = mlp_operator.n_matvecs
    bad("'method'", method="hutch")
    bad("'n_probes'", method="hutchinson", n_probes=1)
    bad("'n_probes'", method="hutch++", n_probes=10)
    bad("'n_probes'", method="hutch++", n_probes=3)
    bad("'n_probes'", method="hutch++", n_probes=3 * mlp_operator.dim + 3)
    bad("'n_probes'", method="xtrace", n_probes=7)
    bad("'n_probes'", method="xtrace", n_probes=2 * mlp_operator.dim + 2)
    bad("'n_probes'", method="exact", n_probes=10)
    bad("'n_probes'", n_probes=12.0)
    bad("'distribution'", distribution="uniform")
    bad("'seed'", seed=None)
    with pytest.raises(ParameterError, match="'operator'"):
        hessian_trace([[1.0, 2.0], [3.0, 4.0]])
    assert mlp_operator.n_matvecs == before
