"""The ``torch.library`` custom ops: registration checks, autograd, and ``torch.compile``."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton", reason="the kernel tests need the 'triton' package "
                    "(pip install 'specmetrics[triton]')")

import specmetrics.kernels as kernels  # noqa: E402
from specmetrics.kernels import prepare_weight, sparse_gemv, sparse_mlp  # noqa: E402
from specmetrics.kernels.act_sparse_gemv import reference as gemv_ref  # noqa: E402
from specmetrics.kernels.sparse_mlp import reference as mlp_ref  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(torch.library, "custom_op"),
                                reason="torch.library.custom_op needs torch >= 2.4")


def data(device, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 24, generator=g).to(device)
    w = prepare_weight(torch.randn(10, 24, generator=g).to(device))
    gate = torch.randn(12, 24, generator=g).to(device)
    up = torch.randn(12, 24, generator=g).to(device)
    down = prepare_weight(torch.randn(24, 12, generator=g).to(device))
    return x, w, gate, up, down


def test_opcheck_sparse_gemv(device):
    x, w, *_ = data(device)
    result = torch.library.opcheck(torch.ops.specmetrics.sparse_gemv.default,
                                   (x, w.clone().requires_grad_(), 0.3, 4))
    assert set(result.values()) == {"SUCCESS"}, result


def test_opcheck_sparse_gemv_out(device):
    x, w, *_ = data(device)
    out = torch.empty(2, 10, device=device)
    result = torch.library.opcheck(torch.ops.specmetrics.sparse_gemv_out.default,
                                   (x, w, 0.3, 4, out),
                                   test_utils=("test_schema", "test_faketensor"))
    assert set(result.values()) == {"SUCCESS"}, result


def test_opcheck_sparse_mlp(device):
    x, _, gate, up, down = data(device)
    result = torch.library.opcheck(torch.ops.specmetrics.sparse_mlp.default,
                                   (x, gate.clone().requires_grad_(), up, down, 0.1, 4, True),
                                   test_utils=("test_schema", "test_faketensor",
                                               "test_autograd_registration"))
    assert set(result.values()) == {"SUCCESS"}, result


def test_gradients_are_those_of_the_reference(device):
    x, w, gate, up, down = data(device, seed=1)
    leaves = [t.clone().requires_grad_() for t in (x, w)]
    sparse_gemv(*leaves, 0.3, backend="triton").square().sum().backward()
    ref = [t.clone().requires_grad_() for t in (x, w)]
    gemv_ref.sparse_gemv(*ref, 0.3).square().sum().backward()
    for got, want in zip(leaves, ref):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-5, atol=1e-5)
    leaves = [t.clone().requires_grad_() for t in (x, gate, up, down)]
    sparse_mlp(*leaves, 0.1, backend="triton").square().sum().backward()
    ref = [t.clone().requires_grad_() for t in (x, gate, up, down)]
    mlp_ref.sparse_mlp(*ref, 0.1).square().sum().backward()
    for got, want in zip(leaves, ref):
        # float32 sums in another order: absolute error relative to the gradient's scale
        scale = float(want.grad.abs().max())
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-4, atol=1e-5 * scale)


def test_torch_compile_traces_the_public_functions_without_graph_breaks(device):
    x, w, gate, up, down = data(device, seed=2)

    def f(x):
        h = sparse_gemv(x, w, 0.3, backend="triton")
        return sparse_mlp(h @ w, gate, up, down, 0.1, backend="triton") * 2

    eager = f(x)
    explained = torch._dynamo.explain(f)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(f, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), eager, rtol=1e-5, atol=1e-5)
    ops = [str(node.target) for g in explained.graphs for node in g.graph.nodes]
    assert any("specmetrics.sparse_gemv" in op for op in ops), ops
    assert any("specmetrics.sparse_mlp" in op for op in ops), ops


@pytest.mark.slow
def test_torch_compile_inductor(device):
    x, w, *_ = data(device, seed=3)
    f = torch.compile(lambda x: sparse_gemv(x, w, 0.3, backend="triton") + 1, fullgraph=True)
    torch.testing.assert_close(f(x), sparse_gemv(x, w, 0.3, backend="torch") + 1,
                               rtol=1e-5, atol=1e-5)


def test_registered_ops_and_public_names():
    for name in ("sparse_gemv", "sparse_gemv_out", "sparse_mlp"):
        assert hasattr(torch.ops.specmetrics, name)
    assert set(kernels.__all__) >= {"sparse_gemv", "sparse_mlp", "prepare_weight"}
