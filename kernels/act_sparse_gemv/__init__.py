"""Activation-sparse GEMV: ``x_masked @ W.T``, skipping the weight rows of zeroed inputs (TEAL).

:func:`sparse_gemv` checks its parameters, picks the backend (:mod:`specmetrics.kernels`
dispatch rule) and runs either the torch reference (``reference.py``) or the Triton kernel
(``triton.py``) through the ``torch.library`` custom op ``specmetrics::sparse_gemv``, whose fake
implementation lets ``torch.compile`` trace callers without running it. :func:`prepare_weight`
converts a weight once to the K-major layout the kernel reads coalesced.
"""
from __future__ import annotations

from typing import Optional

import torch

from .._dispatch import (check_backend, check_grad, check_like, check_max_rows, check_tensor,
                         check_threshold, resolve_backend, rounded_threshold)
from specmetrics._validation import fail
from . import reference

__all__ = ["sparse_gemv", "prepare_weight", "is_prepared"]


def _triton_impl():
    from . import triton as impl  # the kernels (and triton), at first use

    return impl


def _triton_gemv(x: torch.Tensor, weight: torch.Tensor, threshold: float, max_rows: int,
                 out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The Triton backend on (..., K) inputs: the kernel up to ``max_rows`` rows, else dense."""
    K = x.shape[-1]
    N = weight.shape[0]
    lead = x.shape[:-1]
    M = x.numel() // K if K else int(torch.Size(lead).numel())
    if M > max_rows:
        y = reference.sparse_gemv(x, weight, threshold)
        if out is not None:
            out.copy_(y)
            return out
        return y
    x2 = x.reshape(M, K)
    out2 = None
    if out is not None:
        try:
            out2 = out.view(M, N)
        except RuntimeError:
            out2 = None
    y2 = _triton_impl().gemv(x2, weight, threshold, out=out2)
    if out is not None:
        if out2 is None:
            out.copy_(y2.view(out.shape))
        return out
    return y2.view(*lead, N)


# ----------------------------------------------------------------------------------------------
# the custom ops (torch.compile sees one opaque node with a fake implementation)

if hasattr(torch.library, "custom_op"):
    @torch.library.custom_op("specmetrics::sparse_gemv", mutates_args=())
    def _op(x: torch.Tensor, weight: torch.Tensor, threshold: float,
            max_rows: int) -> torch.Tensor:
        return _triton_gemv(x, weight, threshold, max_rows)

    @_op.register_fake
    def _op_fake(x, weight, threshold, max_rows):
        return x.new_empty((*x.shape[:-1], weight.shape[0]))

    def _op_setup(ctx, inputs, output):
        x, weight, threshold, _ = inputs
        ctx.save_for_backward(x, weight)
        ctx.threshold = threshold

    def _op_backward(ctx, grad):
        # the mask is piecewise constant: d/dx = (grad @ W) on the kept entries, d/dW = grad^T x_m
        x, weight = ctx.saved_tensors
        keep = ~(x.abs() <= ctx.threshold)
        gx = (grad @ weight).masked_fill(~keep, 0) if ctx.needs_input_grad[0] else None
        gw = None
        if ctx.needs_input_grad[1]:
            xm = x.masked_fill(~keep, 0)
            gw = grad.reshape(-1, grad.shape[-1]).t() @ xm.reshape(-1, xm.shape[-1])
        return gx, gw, None, None

    _op.register_autograd(_op_backward, setup_context=_op_setup)

    @torch.library.custom_op("specmetrics::sparse_gemv_out", mutates_args=("out",))
    def _op_out(x: torch.Tensor, weight: torch.Tensor, threshold: float, max_rows: int,
                out: torch.Tensor) -> None:
        _triton_gemv(x, weight, threshold, max_rows, out=out)

    @_op_out.register_fake
    def _op_out_fake(x, weight, threshold, max_rows, out):
        return None

    def _call(x, weight, threshold, max_rows):
        return torch.ops.specmetrics.sparse_gemv(x, weight, threshold, max_rows)

    def _call_out(x, weight, threshold, max_rows, out):
        torch.ops.specmetrics.sparse_gemv_out(x, weight, threshold, max_rows, out)
        return out
else:  # torch < 2.4: no custom ops, the kernel is called directly (no torch.compile support)
    def _call(x, weight, threshold, max_rows):
        return _triton_gemv(x, weight, threshold, max_rows)

    def _call_out(x, weight, threshold, max_rows, out):
        return _triton_gemv(x, weight, threshold, max_rows, out=out)


def gemv_unchecked(x: torch.Tensor, weight: torch.Tensor, threshold: float, *, backend: str,
                   max_rows: int) -> torch.Tensor:
    """:func:`sparse_gemv` without the checks, for callers that checked once (model wrappers).

    ``backend`` is ``"torch"`` or ``"triton"`` (resolved), ``threshold`` already rounded to
    ``x``'s dtype.
    """
    if backend == "torch":
        return reference.sparse_gemv(x, weight, threshold)
    return _call(x, weight, threshold, max_rows)


# ----------------------------------------------------------------------------------------------
# public functions

def sparse_gemv(x: torch.Tensor, weight: torch.Tensor, threshold, *, backend: Optional[str] = None,
                out: Optional[torch.Tensor] = None, max_rows: Optional[int] = None
                ) -> torch.Tensor:
    """Activation-sparse matrix-vector product: ``x_masked @ weight.T``.

    ``x_masked`` is ``x`` with the entries ``|x| <= threshold`` set to zero (strictly: an entry
    equal to the threshold is zeroed; NaN is kept). The Triton kernel reads only the weight
    columns of the kept inputs.

    Parameters
    ----------
    x : torch.Tensor, shape (..., K)
        float16, bfloat16 or float32; any strides (copied to a (M, K) view only where the
        leading dimensions cannot be flattened without a copy).
    weight : torch.Tensor, shape (N, K)
        Same dtype and device as ``x``. Any layout gives the same values; the kernel reads it
        coalesced in the K-major layout of :func:`prepare_weight` (convert once, reuse).
    threshold : float
        Finite, ``>= 0``; rounded to ``x``'s dtype before comparing (as torch does when it
        compares a tensor with a Python number), so ties behave the same in every backend.
    backend : {None, "torch", "triton"}, default None
        ``None``: Triton for CUDA tensors when ``triton`` is installed, else the reference.
        ``"torch"``: the reference (``F.linear`` on the masked input; the oracle).
        ``"triton"``: the kernel (on CPU tensors through the interpreter, which needs
        ``TRITON_INTERPRET=1`` before the kernels are first loaded).
    out : torch.Tensor, shape (..., N), optional
        Written in place and returned: dtype and device of ``x``, sharing no memory with ``x``
        or ``weight``. Not with autograd.
    max_rows : int, optional
        Rows of ``x`` (its elements divided by ``K``) up to which the Triton backend runs the
        sparse kernel; above it, the dense product of the masked input (cuBLAS), where skipping
        rows no longer pays. Default :data:`~specmetrics.kernels.DENSE_FALLBACK_ROWS`.

    Returns
    -------
    torch.Tensor, shape (..., N)
        Dtype of ``x``. Accumulated in float32 by the kernel.

    Raises
    ------
    ParameterError
        A non-tensor, meta tensor or unsupported dtype; ``weight`` not 2-D, or its ``K`` not the
        last dimension of ``x``; dtypes or devices that differ; a negative, NaN or infinite
        threshold; a bad ``backend``, ``out`` or ``max_rows``; ``backend="triton"`` for CPU
        tensors without the interpreter.
    ImportError
        ``backend="triton"`` where ``triton`` is not installed.

    Examples
    --------
    >>> import torch
    >>> from specmetrics.kernels import prepare_weight, sparse_gemv
    >>> w = prepare_weight(torch.randn(8, 4))
    >>> x = torch.tensor([[0.5, -2.0, 0.1, 3.0]])
    >>> torch.allclose(sparse_gemv(x, w, 1.0), torch.tensor([[0.0, -2.0, 0.0, 3.0]]) @ w.T)
    True
    """
    func = "sparse_gemv"
    check_tensor(x, "x", func)
    check_tensor(weight, "weight", func, ndim=2)
    if weight.shape[1] != x.shape[-1]:
        raise fail("weight", func, f"of shape (N, {x.shape[-1]}) to match the last dimension "
                   "of 'x'", f"shape {tuple(weight.shape)}")
    check_like(weight, "weight", x, "x", func)
    t = check_threshold(threshold, func)
    chosen = check_backend(backend, func)
    rows = check_max_rows(max_rows, func)
    if out is not None:
        _check_out(out, x, weight, (*x.shape[:-1], weight.shape[0]), func)
    which = resolve_backend(chosen, x.device, func)
    t = rounded_threshold(t, x.dtype)
    if out is not None:
        if which == "torch":
            out.copy_(reference.sparse_gemv(x, weight, t))
            return out
        return _call_out(x, weight, t, rows, out)
    return gemv_unchecked(x, weight, t, backend=which, max_rows=rows)


def _check_out(out, x, weight, shape, func) -> None:
    if not isinstance(out, torch.Tensor):
        raise fail("out", func, "None or a torch.Tensor", type(out).__name__)
    if out.is_meta:
        raise fail("out", func, "a tensor with data (not on the 'meta' device)",
                   f"a meta tensor of shape {tuple(out.shape)}")
    if tuple(out.shape) != tuple(shape):
        raise fail("out", func, f"of shape {tuple(shape)}", f"shape {tuple(out.shape)}")
    check_like(out, "out", x, "x", func)
    compiling = getattr(getattr(torch, "compiler", None), "is_compiling", lambda: False)()
    storage = None if compiling else out.untyped_storage().data_ptr()  # no data when tracing
    if storage is not None and out.numel() and any(t.numel() and t.untyped_storage().data_ptr() == storage
                           for t in (x, weight)):
        raise fail("out", func, "a tensor sharing no memory with 'x' or 'weight'",
                   "a tensor on the same storage")
    if check_grad(func, x, weight):
        raise fail("out", func, "None when autograd records through 'x' or 'weight' "
                   "(run under torch.no_grad())", "a tensor")


def is_prepared(weight: torch.Tensor) -> bool:
    """Whether a (N, K) weight is stored K-major (``weight.T`` contiguous): the kernel's layout."""
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        return False
    n, k = weight.shape
    return (weight.stride(0) == 1 or n <= 1) and (weight.stride(1) == n or k <= 1)


def prepare_weight(weight: torch.Tensor) -> torch.Tensor:
    """The same (N, K) weight stored K-major, the layout the sparse GEMV reads coalesced.

    Returns ``weight.T.contiguous().T``: identical values and logical shape (a drop-in for
    ``F.linear`` and for :func:`sparse_gemv` with any backend; cuBLAS reads it as a transposed
    operand at the same speed), but column ``k`` (what input ``k`` multiplies) is ``N``
    consecutive values. One copy of the weight, made once; returned as is when already
    prepared.

    Parameters
    ----------
    weight : torch.Tensor, shape (N, K)
        float16, bfloat16 or float32 (an ``nn.Linear`` weight; a transformers ``Conv1D`` weight
        ``w`` is already prepared as ``w.T``).

    Returns
    -------
    torch.Tensor, shape (N, K)
        ``stride() == (1, N)``.

    Raises
    ------
    ParameterError
        Not a 2-D float tensor with data.
    """
    check_tensor(weight, "weight", "prepare_weight", ndim=2)
    if is_prepared(weight):
        return weight
    return weight.t().contiguous().t()
