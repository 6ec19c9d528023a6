"""CATS-style sparse MLP: ``down(SiLU(gate x) ⊙ m ⊙ up x)`` with ``m = |SiLU(gate x)| > t``.

:func:`sparse_mlp` checks its parameters, picks the backend (:mod:`specmetrics.kernels`
dispatch rule) and runs either the torch reference (``reference.py``) or the Triton kernels
(``triton.py``: fused gate/mask/up, then the sparse down GEMV) through the ``torch.library``
custom op ``specmetrics::sparse_mlp`` (with a fake implementation for ``torch.compile``).
"""
from __future__ import annotations

from typing import Optional

import torch

from .._dispatch import (check_backend, check_like, check_max_rows, check_tensor,
                         check_threshold, resolve_backend, rounded_threshold)
from specmetrics._validation import fail
from . import reference

__all__ = ["sparse_mlp"]


def _triton_impl():
    from . import triton as impl  # the kernels (and triton), at first use

    return impl


def _dense(x, gate, up, down, threshold, count):
    """The reference, and the number of zeroed activations when ``count``."""
    a = reference.masked_activation(x, gate, threshold)
    y = torch.nn.functional.linear(a * torch.nn.functional.linear(x, up), down)
    return y, ((a == 0).sum() if count else None)


def _triton_mlp(x, gate, up, down, threshold, max_rows, count):
    """The Triton backend on (..., H) inputs: the kernels up to ``max_rows`` rows, else dense.

    Returns ``(y, zeros)``; ``zeros`` is a 0-d int64 tensor (``-1`` when not counted).
    """
    H = x.shape[-1]
    lead = x.shape[:-1]
    M = int(torch.Size(lead).numel())
    if M > max_rows:
        y, zeros = _dense(x, gate, up, down, threshold, count)
    else:
        y2, zeros = _triton_impl().sparse_mlp(x.reshape(M, H), gate, up, down, threshold,
                                              count=count)
        y = y2.view(*lead, down.shape[0])
    if zeros is None:
        zeros = torch.full((), -1, dtype=torch.int64, device=x.device)
    return y, zeros


if hasattr(torch.library, "custom_op"):
    @torch.library.custom_op("specmetrics::sparse_mlp", mutates_args=())
    def _op(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
            threshold: float, max_rows: int, count: bool) -> tuple[torch.Tensor, torch.Tensor]:
        return _triton_mlp(x, gate, up, down, threshold, max_rows, count)

    @_op.register_fake
    def _op_fake(x, gate, up, down, threshold, max_rows, count):
        return (x.new_empty((*x.shape[:-1], down.shape[0])),
                x.new_empty((), dtype=torch.int64))

    def _op_setup(ctx, inputs, output):
        x, gate, up, down, threshold, _, _ = inputs
        ctx.save_for_backward(x, gate, up, down)
        ctx.threshold = threshold

    def _op_backward(ctx, grad_y, _grad_zeros):
        # recompute the reference under autograd: the mask is piecewise constant, so its
        # gradient is the dense one on the kept channels and zero on the dropped ones
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[:4]
        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(n) for t, n in zip(saved, needs)]
            y = reference.sparse_mlp(*leaves, ctx.threshold)
            wanted = [leaf for leaf, n in zip(leaves, needs) if n]
            grads = iter(torch.autograd.grad(y, wanted, grad_y)) if wanted else iter(())
        return (*[next(grads) if n else None for n in needs], None, None, None)

    _op.register_autograd(_op_backward, setup_context=_op_setup)

    def _call(x, gate, up, down, threshold, max_rows, count):
        return torch.ops.specmetrics.sparse_mlp(x, gate, up, down, threshold, max_rows, count)
else:  # torch < 2.4: no custom ops (no torch.compile support)
    def _call(x, gate, up, down, threshold, max_rows, count):
        return _triton_mlp(x, gate, up, down, threshold, max_rows, count)


def mlp_unchecked(x, gate, up, down, threshold: float, *, backend: str, max_rows: int,
                  count: bool = False):
    """:func:`sparse_mlp` without the checks (for model wrappers that checked once).

    ``backend`` resolved, ``threshold`` already rounded to ``x``'s dtype. Returns ``(y, zeros)``
    with ``zeros`` the number of zeroed activations (0-d int64 tensor) or ``None``.
    """
    if backend == "torch":
        return _dense(x, gate, up, down, threshold, count)
    y, zeros = _call(x, gate, up, down, threshold, max_rows, count)
    return y, (zeros if count else None)


def sparse_mlp(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
               threshold, *, backend: Optional[str] = None, max_rows: Optional[int] = None
               ) -> torch.Tensor:
    """The CATS MLP: ``down(SiLU(gate x) ⊙ m ⊙ up x)`` with ``m = |SiLU(gate x)| > threshold``.

    The gate projection is dense (the mask depends on it); the Triton kernels then read only
    the rows of ``up`` and the columns of ``down`` of the kept channels.

    Parameters
    ----------
    x : torch.Tensor, shape (..., H)
        float16, bfloat16 or float32; any strides.
    gate, up : torch.Tensor, shape (I, H)
        As ``nn.Linear`` stores them (row-major: the kernel reads a channel's row coalesced).
    down : torch.Tensor, shape (H, I)
        Read coalesced in the K-major layout of :func:`~specmetrics.kernels.prepare_weight`
        (convert once); any layout gives the same values.
    threshold : float
        Finite, ``>= 0``, rounded to ``x``'s dtype. Channels with ``|SiLU(gate x)| <= t`` are
        dropped (strictly: a tie is dropped; NaN is kept).
    backend : {None, "torch", "triton"}, default None
        As for :func:`~specmetrics.kernels.sparse_gemv`.
    max_rows : int, optional
        Rows of ``x`` up to which the Triton backend runs the sparse kernels (above it: the
        dense reference). Default :data:`~specmetrics.kernels.DENSE_FALLBACK_ROWS`.

    Returns
    -------
    torch.Tensor, shape (..., H)
        Dtype of ``x``.

    Notes
    -----
    The reference computes in ``x``'s dtype (torch's products; the activation is rounded to
    that dtype before the comparison); the kernels keep the gate, the activation, the up
    projection and the product in float32 and compare the float32 activation with the rounded
    threshold. In float32 the two agree up to summation order; in float16/bfloat16 a channel
    whose activation lies within one rounding of the threshold can fall on different sides.

    Raises
    ------
    ParameterError
        As for :func:`~specmetrics.kernels.sparse_gemv`, for each of ``x``, ``gate``, ``up``,
        ``down`` (shapes (I, H), (I, H), (H, I); one dtype and device).
    ImportError
        ``backend="triton"`` where ``triton`` is not installed.
    """
    func = "sparse_mlp"
    check_tensor(x, "x", func)
    H = x.shape[-1]
    check_tensor(gate, "gate", func, ndim=2)
    if gate.shape[1] != H:
        raise fail("gate", func, f"of shape (I, {H}) to match the last dimension of 'x'",
                   f"shape {tuple(gate.shape)}")
    I = gate.shape[0]
    check_tensor(up, "up", func, ndim=2)
    if tuple(up.shape) != (I, H):
        raise fail("up", func, f"of shape {(I, H)} like 'gate'", f"shape {tuple(up.shape)}")
    check_tensor(down, "down", func, ndim=2)
    if tuple(down.shape) != (H, I):
        raise fail("down", func, f"of shape {(H, I)} (the transpose of 'gate')",
                   f"shape {tuple(down.shape)}")
    for name, t in (("gate", gate), ("up", up), ("down", down)):
        check_like(t, name, x, "x", func)
    t = check_threshold(threshold, func)
    chosen = check_backend(backend, func)
    rows = check_max_rows(max_rows, func)
    which = resolve_backend(chosen, x.device, func)
    y, _ = mlp_unchecked(x, gate, up, down, rounded_threshold(t, x.dtype), backend=which,
                         max_rows=rows)
    return y
