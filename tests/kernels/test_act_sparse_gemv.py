"""The activation-sparse GEMV kernel against its torch reference (the oracle).

Every comparison is with the float32 reference on the same inputs (the threshold rounded to
the input dtype, which is the op's semantics) within a bound that holds for any summation
order: one rounding to the output dtype plus ``2 K eps32`` times the absolute products.
"""
from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton", reason="the kernel tests need the 'triton' package "
                    "(pip install 'specmetrics[triton]')")

from specmetrics.kernels import prepare_weight, rounded_threshold, sparse_gemv  # noqa: E402
from specmetrics.kernels.act_sparse_gemv import is_prepared, reference as gemv_ref  # noqa: E402
from specmetrics.kernels.act_sparse_gemv import triton as impl  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EPS32 = torch.finfo(torch.float32).eps
SMALL = impl.GemvConfig(block_m=4, block_n=16, block_k=16, split_k=2)  # several programs


def randn(*shape, dtype=torch.float32, device="cpu", seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)


def quantile_threshold(values: torch.Tensor, s: float) -> float:
    """A threshold zeroing exactly ``ceil(s n)`` of distinct values (``|v| <= t``)."""
    a = values.detach().abs().float().flatten().sort().values
    k = math.ceil(s * a.numel())
    return 0.0 if k == 0 else float(a[k - 1])


def oracle(x, w, t):
    return gemv_ref.sparse_gemv(x.float().cpu(), w.float().cpu(), rounded_threshold(t, x.dtype))


def tolerance(x, w, t, expected):
    eps_d = torch.finfo(x.dtype).eps
    xm = gemv_ref.mask_input(x.float().cpu(), rounded_threshold(t, x.dtype)).abs()
    return (eps_d * expected.abs() + 2 * x.shape[-1] * EPS32 * (xm @ w.float().cpu().abs().t())
            + 1e-30)


def assert_matches(got, x, w, t):
    expected = oracle(x, w, t)
    tol = tolerance(x, w, t, expected)
    got = got.float().cpu()
    assert got.shape == expected.shape
    nan_both = torch.isnan(got) & torch.isnan(expected)
    err = (got - expected).abs()
    bad = ~nan_both & ~(err <= tol)
    assert not bad.any(), (f"{int(bad.sum())}/{bad.numel()} entries off; worst "
                           f"{float(err[bad].max()):.3g} (tolerance there "
                           f"{float(tol[bad].min()):.3g})")


# ----------------------------------------------------------------------------------------------
# agreement with the reference

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("s", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_matches_reference_irregular_shape(device, dtype, s, batch):
    x = randn(batch, 53, dtype=dtype, device=device, seed=batch)
    w = prepare_weight(randn(37, 53, dtype=dtype, device=device, seed=7))
    t = quantile_threshold(x, s)
    zeros = int((gemv_ref.mask_input(x, rounded_threshold(t, dtype)) == 0).sum())
    assert math.ceil(s * x.numel()) <= zeros <= s * x.numel() + 0.05 * x.numel()  # ties
    y = sparse_gemv(x, w, t, backend="triton", max_rows=8)
    assert y.dtype == dtype and y.device == x.device
    assert_matches(y, x, w, t)
    if s == 1.0:
        assert torch.count_nonzero(y) == 0  # nothing kept: exactly zero


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("batch", [3, 8])
def test_multi_program_tiling_matches_reference(device, dtype, batch):
    """Small tiles: several output blocks, row blocks, and split-K with its reduction."""
    x = randn(batch, 53, dtype=dtype, device=device, seed=batch + 20)
    w = prepare_weight(randn(37, 53, dtype=dtype, device=device, seed=17))
    t = quantile_threshold(x, 0.5)
    y = impl.gemv(x, w, rounded_threshold(t, dtype), config=SMALL)
    assert y.dtype == dtype
    assert_matches(y, x, w, t)


@pytest.mark.parametrize("batch", range(1, 9))
def test_every_batch_size_one_to_eight(device, batch):
    x = randn(batch, 45, device=device, seed=batch)
    w = prepare_weight(randn(29, 45, device=device, seed=1))
    t = quantile_threshold(x, 0.5)
    assert_matches(sparse_gemv(x, w, t, backend="triton", max_rows=8), x, w, t)


def test_1823_by_781_fp32_batch_1(device):
    x = randn(1, 781, device=device, seed=3)
    w = prepare_weight(randn(1823, 781, device=device, seed=4))
    t = quantile_threshold(x, 0.5)
    assert_matches(sparse_gemv(x, w, t, backend="triton"), x, w, t)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", [(1823, 781), (781, 1823)])
@pytest.mark.parametrize("batch", [1, 5, 8])
def test_1823_by_781_every_dtype_and_batch(device, dtype, shape, batch):
    n, k = shape
    x = randn(batch, k, dtype=dtype, device=device, seed=batch)
    w = prepare_weight(randn(n, k, dtype=dtype, device=device, seed=5))
    for s in (0.0, 0.5, 0.99):
        t = quantile_threshold(x, s)
        assert_matches(sparse_gemv(x, w, t, backend="triton", max_rows=8), x, w, t)
    cfg = impl.GemvConfig(block_m=8, block_n=128, block_k=64, split_k=4)
    t = quantile_threshold(x, 0.5)
    assert_matches(impl.gemv(x, w, rounded_threshold(t, dtype), config=cfg), x, w, t)


# ----------------------------------------------------------------------------------------------
# what is skipped, exactly

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_threshold_equal_to_activation_values_zeroes_them(device, dtype):
    """Strict ``|x| > t``: entries equal to the threshold are dropped, in every dtype.

    Values on a grid of 1/4 and small integer weights make every product and sum exact in
    float32, so the kernel's output is the exact sum rounded once: it must equal the float64
    reference rounded to the dtype, entry for entry.
    """
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(-4, 5, (4, 61), generator=g) / 4).to(dtype)   # |x| in {0, .25, ..., 1}
    w = torch.randint(-3, 4, (23, 61), generator=g).to(dtype)
    x, w = x.to(device), prepare_weight(w.to(device))
    for t in (0.25, 0.5, 1.0):
        assert bool(((x.abs() == t).any()))
        exact = (torch.where(x.double().abs() > t, x.double(), 0.0).cpu()
                 @ w.double().cpu().t()).to(dtype)
        for y in (sparse_gemv(x, w, t, backend="triton", max_rows=8),
                  impl.gemv(x, w, t, config=SMALL)):
            assert torch.equal(y.cpu(), exact), t
        assert torch.equal(sparse_gemv(x, w, t, backend="torch").cpu(), exact)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_threshold_is_rounded_to_the_input_dtype_like_torch(device, dtype):
    """``t = 0.1`` is not representable: an input equal to ``round(0.1)`` is a tie."""
    v = float(torch.tensor(0.1, dtype=dtype))
    x = torch.tensor([[v, -v, 0.2, 0.05]], dtype=dtype, device=device)
    w = prepare_weight(torch.ones(3, 4, dtype=dtype, device=device))
    expected = x.masked_fill(x.abs() <= 0.1, 0).float() @ w.float().t()  # torch's own rounding
    y = sparse_gemv(x, w, 0.1, backend="triton")
    assert torch.equal(y.float(), expected)
    assert float(expected[0, 0]) == float(torch.tensor(0.2, dtype=dtype))


def test_weight_rows_of_dropped_inputs_are_never_read(device):
    """NaN in the weight columns of inputs no row keeps: the kernel's output stays finite.

    (A masked product ``0 * NaN`` would be NaN: this proves the rows are skipped, not zeroed.)
    """
    x = randn(3, 40, device=device, seed=2)
    dropped = torch.zeros(40, dtype=torch.bool)
    dropped[::3] = True
    x[:, dropped.to(device)] = 0.01
    w = randn(17, 40, device=device, seed=3)
    clean = prepare_weight(w.clone())
    w[:, dropped.to(device)] = float("nan")
    w = prepare_weight(w)
    y = sparse_gemv(x, w, 0.05, backend="triton")
    assert torch.isfinite(y).all()
    assert_matches(y, x, clean, 0.05)
    assert torch.isnan(sparse_gemv(x, w, 0.05, backend="torch")).all()  # the dense product


def test_nan_inputs_are_kept_like_the_dense_product(device):
    x = randn(2, 30, device=device, seed=4)
    x[0, 5] = float("nan")
    w = prepare_weight(randn(11, 30, device=device, seed=5))
    y = sparse_gemv(x, w, 0.5, backend="triton")
    assert torch.isnan(y[0]).all() and torch.isfinite(y[1]).all()
    assert_matches(y, x, w, 0.5)


# ----------------------------------------------------------------------------------------------
# layouts and shapes

def test_non_contiguous_inputs_and_weights(device):
    big = randn(6, 120, device=device, seed=6)
    w_rows = randn(33, 60, device=device, seed=7)
    wide = randn(33, 120, device=device, seed=8)
    cases = {
        "strided x": big[::2, ::2],                       # (3, 60), strides (240, 2)
        "transposed x": randn(60, 3, device=device, seed=9).t(),
        "3-D x, unflattenable": randn(4, 3, 60, device=device, seed=10).transpose(0, 1),
    }
    weights = {"row-major": w_rows, "prepared": prepare_weight(w_rows),
               "strided": wide[:, ::2]}
    for xname, x in cases.items():
        assert not x.is_contiguous(), xname
        t = quantile_threshold(x, 0.4)
        for wname, w in weights.items():
            y = sparse_gemv(x, w, t, backend="triton", max_rows=16)
            assert y.shape == (*x.shape[:-1], 33)
            assert_matches(y, x, w, t)


def test_leading_dimensions_and_empty_shapes(device):
    w = prepare_weight(randn(9, 12, device=device))
    x = randn(2, 2, 12, device=device, seed=1)
    y = sparse_gemv(x, w, 0.3, backend="triton")
    assert y.shape == (2, 2, 9)
    assert_matches(y, x, w, 0.3)
    assert sparse_gemv(randn(0, 12, device=device), w, 0.3, backend="triton").shape == (0, 9)
    zero_k = sparse_gemv(torch.ones(2, 0, device=device), torch.ones(5, 0, device=device), 0.0,
                         backend="triton")
    assert zero_k.shape == (2, 5) and torch.count_nonzero(zero_k) == 0
    assert sparse_gemv(x, torch.ones(0, 12, device=device), 0.3,
                       backend="triton").shape == (2, 2, 0)


def test_dense_fallback_above_max_rows(device):
    x = randn(6, 20, device=device, seed=11)
    w = prepare_weight(randn(7, 20, device=device, seed=12))
    t = quantile_threshold(x, 0.5)
    for rows in (0, 5, 6):
        assert_matches(sparse_gemv(x, w, t, backend="triton", max_rows=rows), x, w, t)


def test_out_is_written_in_place(device):
    x = randn(3, 20, device=device, seed=13)
    w = prepare_weight(randn(8, 20, device=device, seed=14))
    for out in (torch.empty(3, 8, device=device), torch.empty(3, 16, device=device)[:, ::2]):
        got = sparse_gemv(x, w, 0.4, backend="triton", out=out)
        assert got is out
        assert_matches(out, x, w, 0.4)
    out = torch.empty(3, 8, device=device)
    assert sparse_gemv(x, w, 0.4, backend="torch", out=out) is out
    assert_matches(out, x, w, 0.4)


def test_prepare_weight_keeps_values_and_shape():
    w = randn(5, 7)
    p = prepare_weight(w)
    assert p.shape == w.shape and torch.equal(p, w) and p.stride() == (1, 5)
    assert is_prepared(p) and not is_prepared(w)
    assert prepare_weight(p) is p
    conv1d_weight = randn(7, 5)  # transformers Conv1D stores (in, out)
    assert is_prepared(conv1d_weight.t())
