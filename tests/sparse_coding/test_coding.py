"""The greedy non-negative coding step: the vectorised version is the per-sample algorithm."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import one_torch_thread  # noqa: F401
from specmetrics import ParameterError
from specmetrics.sparse_coding import greedy_code
from specmetrics.sparse_coding.coding import _argmax_rows, _BLOCK, code_summary, padded_gram
from specmetrics.sparse_coding.strategies import seeds

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def reference_greedy(x: torch.Tensor, phi: torch.Tensor, lam: float, *, max_atoms: int = 10_000,
                     step_tol: float = 0.0) -> torch.Tensor:
    """The paper's rule, one sample at a time, dot products recomputed from the residual."""
    out = torch.zeros((x.shape[0], phi.shape[1]), dtype=x.dtype)
    for j in range(x.shape[0]):
        r = x[j].clone()
        objective = float(r @ r)
        for _ in range(max_atoms):
            dots = r @ phi
            i = int(torch.argmax(dots))
            c = float(dots[i]) - lam / 2
            if c <= step_tol * lam:
                break
            out[j, i] += c
            r -= c * phi[:, i]
            new = float(r @ r) + lam * float(out[j].sum())
            # each step lowers ||x - phi a||^2 + lam |a|_1 by exactly c^2
            assert abs((objective - new) - c * c) <= 1e-9 * max(1.0, objective)
            objective = new
    return out


def _dictionary(d: int, m: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    phi = torch.randn((d, m), generator=g, dtype=torch.float64)
    return phi / phi.norm(dim=0, keepdim=True)


@settings(max_examples=20)
@given(seed=seeds, d=st.integers(2, 12), m=st.integers(1, 30), n=st.integers(1, 8),
       step_tol=st.sampled_from([0.0, 1e-2]))
def test_vectorised_equals_reference(seed, d, m, n, step_tol):
    phi = _dictionary(d, m, seed)
    x = torch.randn((n, d), generator=torch.Generator().manual_seed(seed + 1),
                    dtype=torch.float64)
    lam = 0.1 * float((x @ phi).amax(dim=1).clamp_min(0).mean()) + 1e-3
    # (with step_tol=0 nearly parallel atoms may alternate down to rounding: cap both alike)
    got = greedy_code(x, phi, lam, max_atoms=200, step_tol=step_tol)
    want = reference_greedy(x, phi, lam, max_atoms=200, step_tol=step_tol)
    assert got.shape == (n, m) and bool((got >= 0).all())
    assert torch.allclose(got, want, atol=1e-9, rtol=1e-9)


@settings(max_examples=20)
@given(seed=seeds, d=st.integers(1, 20), lam=st.floats(1e-3, 2.0))
def test_orthonormal_dictionary_is_soft_threshold(seed, d, lam):
    x = torch.randn((5, d), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    got = greedy_code(x, torch.eye(d, dtype=torch.float64), lam, step_tol=0.0)
    assert torch.allclose(got, (x - lam / 2).clamp_min(0), atol=1e-12)


def test_chunking_does_not_change_codes():
    phi = _dictionary(16, 70, 0)
    x = torch.randn((37, 16), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    full = greedy_code(x, phi, 0.05)
    for chunk in (1, 5, 36):
        assert torch.allclose(greedy_code(x, phi, 0.05, chunk_size=chunk), full, atol=1e-12)


@settings(max_examples=30)
@given(seed=seeds, n=st.integers(1, 20), width=st.integers(1, 4).map(lambda k: k * _BLOCK))
def test_two_level_argmax_matches_torch_max(seed, n, width):
    # small integers: many ties, and the first maximum must win as in torch.max
    g = torch.Generator().manual_seed(seed)
    dots = torch.randint(-3, 4, (n, width), generator=g).to(torch.float32)
    best, index = _argmax_rows(dots)
    want = dots.max(dim=1)
    assert torch.equal(best, want.values)
    assert torch.equal(index, torch.tensor([int(np.argmax(row)) for row in dots.numpy()]))


def test_padded_gram_shape():
    phi = _dictionary(4, 33, 0)
    gram = padded_gram(phi)
    assert gram.shape == (33, 2 * _BLOCK)
    assert torch.equal(gram[:, 33:], torch.zeros(33, 2 * _BLOCK - 33, dtype=gram.dtype))


def test_cap_is_reported():
    # a random overcomplete dictionary in 3 dimensions: the greedy step needs many small steps
    g = torch.Generator().manual_seed(0)
    phi = torch.randn((3, 6), generator=g, dtype=torch.float64)
    phi /= phi.norm(dim=0)
    x = torch.randn((1, 3), generator=g, dtype=torch.float64)
    summary = code_summary(x, phi, 1e-4, max_atoms=5, chunk_size=8, step_tol=0.0)
    assert bool(summary.capped.all())
    free = code_summary(x, phi, 1e-4, max_atoms=100_000, chunk_size=8, step_tol=1e-2)
    assert not bool(free.capped.any())
    assert float(summary.residual[0]) > float(free.residual[0])
    assert greedy_code(x, phi, 1e-4, max_atoms=1).count_nonzero() == 1


def test_zero_sample_gets_empty_code():
    phi = _dictionary(8, 20, 3)
    x = torch.zeros((2, 8), dtype=torch.float64)
    assert greedy_code(x, phi, 0.1).count_nonzero() == 0


def test_float32_and_numpy_inputs():
    phi = _dictionary(8, 20, 3)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(0))
    out32 = greedy_code(x, phi.float(), 0.05)
    assert out32.dtype == torch.float32
    out_np = greedy_code(x.numpy(), phi.numpy(), 0.05)
    assert out_np.dtype == torch.float64
    assert torch.allclose(out_np.float(), out32, atol=1e-4)


@pytest.mark.parametrize("change, name", [
    (dict(lam=0.0), "lam"),
    (dict(lam=-1.0), "lam"),
    (dict(lam=float("inf")), "lam"),
    (dict(lam=True), "lam"),
    (dict(x=torch.ones(3)), "x"),
    (dict(x=torch.full((2, 4), float("nan"))), "x"),
    (dict(x=torch.ones(2, 4, device="meta")), "x"),
    (dict(x="data"), "x"),
    (dict(dictionary=torch.ones(5, 3)), "dictionary"),
    (dict(max_atoms=0), "max_atoms"),
    (dict(step_tol=1.5), "step_tol"),
    (dict(chunk_size=0), "chunk_size"),
])
def test_greedy_code_rejects(change, name):
    args = dict(x=torch.ones(2, 4), dictionary=torch.eye(4), lam=0.1)
    args.update(change)
    x, phi, lam = args.pop("x"), args.pop("dictionary"), args.pop("lam")
    with pytest.raises(ParameterError, match=f"'{name}' parameter of greedy_code"):
        greedy_code(x, phi, lam, **args)
