"""Parameter checks and the backend rule of the public kernel functions."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from specmetrics import ParameterError, SpecmetricsWarning
from specmetrics.kernels import (DENSE_FALLBACK_ROWS, prepare_weight, resolve_backend,
                                 rounded_threshold, sparse_gemv, sparse_mlp)
from specmetrics.kernels.act_sparse_gemv import reference as gemv_ref

def tensors(dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, generator=g).to(dtype)
    w = torch.randn(5, 8, generator=g).to(dtype)
    gate, up = torch.randn(6, 8, generator=g).to(dtype), torch.randn(6, 8, generator=g).to(dtype)
    down = torch.randn(8, 6, generator=g).to(dtype)
    return x, w, gate, up, down


def raises_named(parameter, func, call):
    with pytest.raises(ParameterError) as info:
        call()
    err = info.value
    assert err.parameter == parameter and err.function == func, str(err)
    assert f"The '{parameter}' parameter of {func} must be" in str(err)
    return err


# ----------------------------------------------------------------------------------------------
# sparse_gemv

def test_gemv_bad_inputs_name_the_parameter():
    x, w, *_ = tensors()
    meta = torch.empty(2, 8, device="meta")
    cases = {
        "x": [lambda: sparse_gemv(x.numpy(), w, 0.1),
              lambda: sparse_gemv(x.double(), w.double(), 0.1),
              lambda: sparse_gemv(x.to(torch.int32), w, 0.1),
              lambda: sparse_gemv(torch.tensor(1.0), w, 0.1),
              lambda: sparse_gemv(meta, w, 0.1)],
        "weight": [lambda: sparse_gemv(x, w[:, :7], 0.1),         # K mismatch
                   lambda: sparse_gemv(x, w[0], 0.1),             # 1-D
                   lambda: sparse_gemv(x, w.half(), 0.1),         # dtype differs
                   lambda: sparse_gemv(x, torch.empty(5, 8, device="meta"), 0.1)],
        "threshold": [lambda: sparse_gemv(x, w, -0.1), lambda: sparse_gemv(x, w, float("nan")),
                      lambda: sparse_gemv(x, w, float("inf")), lambda: sparse_gemv(x, w, True),
                      lambda: sparse_gemv(x, w, "0.1"), lambda: sparse_gemv(x, w, None),
                      lambda: sparse_gemv(x, w, torch.tensor(0.1))],
        "backend": [lambda: sparse_gemv(x, w, 0.1, backend="cuda"),
                    lambda: sparse_gemv(x, w, 0.1, backend="Triton"),
                    lambda: sparse_gemv(x, w, 0.1, backend=True)],
        "max_rows": [lambda: sparse_gemv(x, w, 0.1, max_rows=-1),
                     lambda: sparse_gemv(x, w, 0.1, max_rows=2.0),
                     lambda: sparse_gemv(x, w, 0.1, max_rows=True)],
        "out": [lambda: sparse_gemv(x, w, 0.1, out=torch.empty(2, 4)),
                lambda: sparse_gemv(x, w, 0.1, out=torch.empty(2, 5, dtype=torch.float16)),
                lambda: sparse_gemv(x, w, 0.1, out=[0.0]),
                lambda: sparse_gemv(x, w, 0.1, out=torch.empty(2, 5, device="meta"))],
    }
    for name, calls in cases.items():
        for call in calls:
            raises_named(name, "sparse_gemv", call)


def test_gemv_out_may_not_alias_the_inputs_or_record_gradients():
    buf = torch.randn(2, 13)
    x, out = buf[:, :8], buf[:, 8:]
    w = torch.randn(5, 8)
    raises_named("out", "sparse_gemv", lambda: sparse_gemv(x, w, 0.1, out=out))
    wg = w.clone().requires_grad_()
    raises_named("out", "sparse_gemv", lambda: sparse_gemv(x.clone(), wg, 0.1,
                                                           out=torch.empty(2, 5)))


def test_gemv_accepts_numpy_numbers_and_leaves_inputs_unchanged():
    x, w, *_ = tensors()
    x0, w0 = x.clone(), w.clone()
    y = sparse_gemv(x, w, np.float32(0.5), max_rows=np.int64(3))
    assert torch.equal(y, gemv_ref.sparse_gemv(x, w, float(np.float32(0.5))))
    assert torch.equal(x, x0) and torch.equal(w, w0)


def test_auto_backend_on_cpu_is_the_reference_bit_for_bit():
    x, w, *_ = tensors(torch.bfloat16)
    assert torch.equal(sparse_gemv(x, w, 0.3), gemv_ref.sparse_gemv(x, w, 0.30078125))
    assert resolve_backend(None, torch.device("cpu"), "f") == "torch"
    assert resolve_backend("torch", torch.device("cuda"), "f") == "torch"


def test_rounded_threshold_is_torchs_rounding():
    """Pure-Python rounding (traceable by torch.compile) against torch's own conversion, on
    random magnitudes, exact ties between neighbours, subnormals and overflow."""
    g = torch.Generator().manual_seed(0)
    values = (torch.rand(3000, generator=g, dtype=torch.float64)
              * 2.0 ** torch.randint(-30, 20, (3000,), generator=g)).tolist()
    for dtype in (torch.float16, torch.bfloat16):
        lo = torch.rand(500, generator=g).mul(100).to(dtype)
        hi = torch.nextafter(lo, torch.full_like(lo, float("inf")))
        mids = ((lo.double() + hi.double()) / 2).tolist()
        values += mids + [m * (1 + 1e-9) for m in mids] + [m * (1 - 1e-9) for m in mids]
    values += [65504.0, 65519.9, 65520.0, 6e-8, 2.0 ** -25, 1e-40, 3.4e38, 0.0]
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        wrong = [v for v in values
                 if rounded_threshold(v, dtype) != float(torch.tensor(v, dtype=dtype))]
        assert not wrong, (dtype, wrong[:5])


def test_default_rows_of_the_sparse_path():
    assert isinstance(DENSE_FALLBACK_ROWS, int) and DENSE_FALLBACK_ROWS >= 1


# ----------------------------------------------------------------------------------------------
# sparse_mlp

def test_mlp_bad_inputs_name_the_parameter():
    x, _, gate, up, down = tensors()
    cases = {
        "x": [lambda: sparse_mlp(x.double(), gate, up, down, 0.1),
              lambda: sparse_mlp(torch.empty(2, 8, device="meta"), gate, up, down, 0.1)],
        "gate": [lambda: sparse_mlp(x, gate[:, :7], up, down, 0.1),
                 lambda: sparse_mlp(x, gate.half(), up, down, 0.1),
                 lambda: sparse_mlp(x, gate[0], up, down, 0.1)],
        "up": [lambda: sparse_mlp(x, gate, up[:5], down, 0.1),
               lambda: sparse_mlp(x, gate, up.t(), down, 0.1),
               lambda: sparse_mlp(x, gate, up.bfloat16(), down, 0.1),
               lambda: sparse_mlp(x, gate, torch.empty(6, 8, device="meta"), down, 0.1)],
        "down": [lambda: sparse_mlp(x, gate, up, down.t(), 0.1),
                 lambda: sparse_mlp(x, gate, up, down.half(), 0.1)],
        "threshold": [lambda: sparse_mlp(x, gate, up, down, -1.0),
                      lambda: sparse_mlp(x, gate, up, down, float("nan"))],
        "backend": [lambda: sparse_mlp(x, gate, up, down, 0.1, backend="cats")],
        "max_rows": [lambda: sparse_mlp(x, gate, up, down, 0.1, max_rows=-2)],
    }
    for name, calls in cases.items():
        for call in calls:
            raises_named(name, "sparse_mlp", call)


def test_prepare_weight_checks_its_input():
    raises_named("weight", "prepare_weight", lambda: prepare_weight(torch.ones(3)))
    raises_named("weight", "prepare_weight", lambda: prepare_weight(torch.ones(3, 2).long()))
    raises_named("weight", "prepare_weight",
                 lambda: prepare_weight(torch.empty(3, 2, device="meta")))


# ----------------------------------------------------------------------------------------------
# the Triton backend where it cannot run

@pytest.fixture
def no_triton(monkeypatch):
    """``import triton`` fails, as on a machine without it."""
    monkeypatch.setitem(sys.modules, "triton", None)
    monkeypatch.setitem(sys.modules, "triton.language", None)


def test_triton_backend_without_triton_raises_a_clear_import_error(no_triton):
    x, w, gate, up, down = tensors()
    for call in (lambda: sparse_gemv(x, w, 0.1, backend="triton"),
                 lambda: sparse_mlp(x, gate, up, down, 0.1, backend="triton")):
        with pytest.raises(ImportError, match=r"backend='triton' needs the 'triton' package"):
            call()
    # the reference and the automatic choice on a CPU still work
    assert torch.equal(sparse_gemv(x, w, 0.1), sparse_gemv(x, w, 0.1, backend="torch"))


def test_auto_backend_on_cuda_without_triton_warns_and_uses_the_reference(no_triton):
    with pytest.warns(SpecmetricsWarning, match="triton"):
        chosen = resolve_backend(None, torch.device("cuda"), "sparse_gemv")
    assert chosen == "torch"


def test_triton_backend_on_cpu_needs_the_interpreter(monkeypatch):
    pytest.importorskip("triton")
    from specmetrics.kernels.act_sparse_gemv import triton as gemv_impl
    from specmetrics.kernels.sparse_mlp import triton as mlp_impl

    for impl in (gemv_impl, mlp_impl):  # as if TRITON_INTERPRET had not been set
        monkeypatch.setattr(impl, "INTERPRETED", False)
    x, w, *_ = tensors()
    err = raises_named("backend", "sparse_gemv", lambda: sparse_gemv(x, w, 0.1,
                                                                     backend="triton"))
    assert "TRITON_INTERPRET=1" in str(err)
