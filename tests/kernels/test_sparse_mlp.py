"""The CATS-style sparse MLP kernels against their torch reference (the oracle).

The oracle is the float32 reference on the same inputs. The threshold is chosen in a gap of the
float32 activations (:func:`gap_threshold`) so that no channel can fall on the other side of it
through a summation-order difference, and the bound carries one rounding to the output dtype
plus the float32 error through gate/up and down.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton", reason="the kernel tests need the 'triton' package "
                    "(pip install 'specmetrics[triton]')")

from specmetrics.kernels import prepare_weight, rounded_threshold, sparse_mlp  # noqa: E402
from specmetrics.kernels.sparse_mlp import reference as mlp_ref  # noqa: E402
from specmetrics.kernels.sparse_mlp import triton as impl  # noqa: E402
from specmetrics.kernels.act_sparse_gemv import triton as gemv_impl  # noqa: E402

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
EPS32 = torch.finfo(torch.float32).eps
H, I = 53, 91
SMALL = impl.MlpConfig(block_m=4, block_i=32, block_h=32,
                       down=gemv_impl.GemvConfig(block_m=4, block_n=32, block_k=64, split_k=2))


def randn(*shape, dtype=torch.float32, device="cpu", seed=0, scale=1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(*shape, generator=g)).to(device=device, dtype=dtype)


def weights(dtype, device, seed=0):
    s = H ** -0.5
    gate = randn(I, H, dtype=dtype, device=device, seed=seed, scale=4 * s)
    up = randn(I, H, dtype=dtype, device=device, seed=seed + 1, scale=s)
    down = prepare_weight(randn(H, I, dtype=dtype, device=device, seed=seed + 2,
                                scale=I ** -0.5))
    return gate, up, down


def parts(x, gate, up, t):
    """float32 activations, mask and ``h`` of the oracle."""
    xf, rt = x.float().cpu(), rounded_threshold(t, x.dtype)
    a = F.silu(xf @ gate.float().cpu().t())
    keep = ~(a.abs() <= rt)
    return a, keep, torch.where(keep, a * (xf @ up.float().cpu().t()), torch.zeros(()))


def oracle(x, gate, up, down, t):
    return mlp_ref.sparse_mlp(x.float().cpu(), gate.float().cpu(), up.float().cpu(),
                              down.float().cpu(), rounded_threshold(t, x.dtype))


def tolerance(x, gate, up, down, t, expected):
    eps_d = torch.finfo(x.dtype).eps
    xf = x.float().cpu().abs()
    a, keep, _ = parts(x, gate, up, t)
    g_abs = xf @ gate.float().cpu().abs().t()
    u_abs = xf @ up.float().cpu().abs().t()
    h_abs = torch.where(keep, (a.abs() + 1.1 * g_abs) * u_abs, torch.zeros(()))
    chain = h_abs @ down.float().cpu().abs().t()
    return eps_d * expected.abs() + 4 * (H + I) * EPS32 * chain + 1e-30


def assert_matches(got, x, gate, up, down, t):
    expected = oracle(x, gate, up, down, t)
    tol = tolerance(x, gate, up, down, t, expected)
    got = got.float().cpu()
    assert got.shape == expected.shape
    err = (got - expected).abs()
    bad = ~(err <= tol)
    assert not bad.any(), (f"{int(bad.sum())}/{bad.numel()} entries off; worst "
                           f"{float(err[bad].max()):.3g} (tolerance {float(tol[bad].min()):.3g})")


def gap_threshold(values: torch.Tensor, s: float, dtype: torch.dtype) -> float:
    """Near the ``s``-quantile of ``|values|``, representable in ``dtype``, and at least 1e-4
    (relative) from every value."""
    a = values.abs().float().flatten().sort().values
    if s <= 0:
        return 0.0
    if s >= 1:
        return rounded_threshold(2 * float(a[-1]) + 1, dtype)
    k = min(max(round(s * a.numel()), 1), a.numel() - 1)
    for j in [*range(k, a.numel()), *range(k - 1, 0, -1)]:
        lo, hi = float(a[j - 1]), float(a[j])
        t = rounded_threshold((lo + hi) / 2, dtype)
        if lo * (1 + 1e-4) < t < hi * (1 - 1e-4):
            return t
    raise AssertionError("no gap between the activations")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("s", [0.0, 0.5, 0.99, 1.0])
@pytest.mark.parametrize("batch", [1, 3, 8])
def test_matches_reference_irregular_shape(device, dtype, s, batch):
    x = randn(batch, H, dtype=dtype, device=device, seed=batch)
    gate, up, down = weights(dtype, device)
    a, _, _ = parts(x, gate, up, 0.0)
    t = gap_threshold(a, s, dtype)
    _, keep, h = parts(x, gate, up, t)
    assert abs(float((~keep).float().mean()) - s) <= 0.02  # the realised sparsity
    y, zeros = impl.sparse_mlp(x, gate, up, down, t, count=True)
    assert y.dtype == dtype and y.shape == (batch, H)
    assert_matches(y, x, gate, up, down, t)
    assert int(zeros) == int((h == 0).sum())
    y = sparse_mlp(x, gate, up, down, t, backend="triton", max_rows=8)
    assert y.dtype == dtype
    assert_matches(y, x, gate, up, down, t)
    if s == 1.0:
        assert torch.count_nonzero(y) == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_multi_program_tiling_matches_reference(device, dtype):
    """Small tiles: several channel blocks, row blocks with a partial one, split-K down."""
    x = randn(6, H, dtype=dtype, device=device, seed=21)
    gate, up, down = weights(dtype, device, seed=8)
    a, _, _ = parts(x, gate, up, 0.0)
    t = gap_threshold(a, 0.5, dtype)
    y, zeros = impl.sparse_mlp(x, gate, up, down, t, config=SMALL, count=True)
    assert_matches(y, x, gate, up, down, t)
    assert int(zeros) == int((parts(x, gate, up, t)[2] == 0).sum())


def test_dropped_channels_of_up_and_down_are_never_read(device):
    """Exact zero gate rows give ``a = 0``, dropped at ``t = 0`` (a tie: ``|0| <= 0``). NaN in
    their ``up`` rows and ``down`` columns must not reach the output."""
    x = randn(3, H, device=device, seed=5)
    gate, up, down = weights(torch.float32, device, seed=3)
    dead = torch.zeros(I, dtype=torch.bool)
    dead[::4] = True
    gate[dead.to(device)] = 0.0
    clean_up, clean_down = up.clone(), down.clone()
    up[dead.to(device)] = float("nan")
    down[:, dead.to(device)] = float("nan")
    for y in (sparse_mlp(x, gate, up, down, 0.0, backend="triton"),
              impl.sparse_mlp(x, gate, up, down, 0.0, config=SMALL)[0]):
        assert torch.isfinite(y).all()
        assert_matches(y, x, gate, clean_up, clean_down, 0.0)
    assert torch.isnan(sparse_mlp(x, gate, up, down, 0.0, backend="torch")).all()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dense_fallback_and_leading_dimensions(device, dtype):
    x = randn(2, 3, H, dtype=dtype, device=device, seed=9)
    gate, up, down = weights(dtype, device, seed=4)
    a, _, _ = parts(x.reshape(-1, H), gate, up, 0.0)
    t = gap_threshold(a, 0.5, dtype)
    for rows in (0, 6):  # dense reference in x's dtype / the kernels
        y = sparse_mlp(x, gate, up, down, t, backend="triton", max_rows=rows)
        assert y.shape == (2, 3, H) and y.dtype == dtype
        if rows:
            assert_matches(y.reshape(-1, H), x.reshape(-1, H), gate, up, down, t)
    ref = sparse_mlp(x, gate, up, down, t, backend="torch")
    expected = mlp_ref.sparse_mlp(x, gate, up, down, rounded_threshold(t, dtype))
    assert torch.equal(ref, expected)


def test_non_contiguous_inputs_and_layouts(device):
    big = randn(6, 2 * H, device=device, seed=11)
    x = big[::2, ::2]
    gate, up, down = weights(torch.float32, device, seed=6)
    a, _, _ = parts(x, gate, up, 0.0)
    t = gap_threshold(a, 0.6, torch.float32)
    layouts = {
        "row-major down": (gate, up, down.contiguous()),
        "prepared gate/up": (prepare_weight(gate), prepare_weight(up), down),
        "strided": (torch.cat([gate, gate], 1)[:, ::2], up, down),
    }
    for name, (g, u, d) in layouts.items():
        y = sparse_mlp(x, g, u, d, t, backend="triton", max_rows=8)
        assert_matches(y, x, g, u, d, t)


def test_empty_rows(device):
    gate, up, down = weights(torch.float32, device)
    y = sparse_mlp(torch.empty(0, H, device=device), gate, up, down, 0.1, backend="triton")
    assert y.shape == (0, H)
