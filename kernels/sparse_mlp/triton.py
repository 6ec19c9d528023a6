"""Triton kernels of the CATS-style sparse MLP and their host wrapper.

``y = down(a ⊙ m ⊙ up(x))``, ``a = SiLU(gate(x))``, ``m = |a| > t``, for ``x`` (M, H) with a few
rows, ``gate`` and ``up`` (I, H), ``down`` (H, I).

Two launches (three with split-K in the second):

1. **gate, mask and up, fused** (``_gate_up_kernel``): program ``i`` owns ``BLOCK_I``
   intermediate channels. It computes their gate pre-activations densely (all of ``gate``'s
   rows are needed: the mask is not known before), ``a = SiLU`` and the mask, all in float32
   registers, then reads only the ``up`` rows of channels that some row of ``x`` keeps (masked
   loads: no traffic for the others) and writes ``h = a ⊙ m ⊙ up(x)`` in float32, with exact
   zeros on the dropped channels. ``gate`` and ``up`` are read row-major, as ``nn.Linear``
   stores them: a channel's row is ``H`` consecutive values.
2. **down over the kept channels**: the activation-sparse GEMV of
   :mod:`specmetrics.kernels.act_sparse_gemv` on ``h`` with threshold 0 (it skips the zero
   channels), reading ``down`` K-major (:func:`specmetrics.kernels.prepare_weight`).

Fusing the down projection into the first kernel as well would need every program to add its
``BLOCK_I`` channels' contributions into all ``H`` outputs (atomics from hundreds of programs,
in no fixed order): it saves one launch and the float32 ``h`` round trip (``4 M I`` bytes,
about 0.05 % of the weights read for LLaMA-7B), at the cost of determinism and heavy atomic
traffic. It is not done.

Interpreter: as for the GEMV (loads converted to float32 at once, int64 index arithmetic,
pointer increments, one large program per tile on the CPU).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

from ..act_sparse_gemv import triton as gemv_impl

__all__ = ["INTERPRETED", "MlpConfig", "default_config", "gate_up", "sparse_mlp"]


@triton.jit
def _silu(g):
    """``g * sigmoid(g)`` with ``exp`` of a non-positive number only (no overflow)."""
    e = tl.exp(-tl.abs(g))
    return g * tl.where(g >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _gate_up_kernel(x_ptr, g_ptr, u_ptr, h_ptr, t, M, I, H,
                    stride_xm, stride_xh, stride_gi, stride_gh, stride_ui, stride_uh,
                    stride_hm, stride_hi,
                    BLOCK_M: tl.constexpr, BLOCK_I: tl.constexpr, BLOCK_H: tl.constexpr):
    pid_i = tl.program_id(0).to(tl.int64)
    pid_m = tl.program_id(1).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_i = pid_i * BLOCK_I + tl.arange(0, BLOCK_I).to(tl.int64)
    offs_h = tl.arange(0, BLOCK_H).to(tl.int64)
    m_in = offs_m < M
    i_in = offs_i < I
    x_base = x_ptr + offs_m[:, None] * stride_xm + offs_h[None, :] * stride_xh  # (BM, BH)
    g_base = g_ptr + offs_i[:, None] * stride_gi + offs_h[None, :] * stride_gh  # (BI, BH)
    u_base = u_ptr + offs_i[:, None] * stride_ui + offs_h[None, :] * stride_uh
    if BLOCK_M == 1:
        # one row (decode): 2-D (BLOCK_I, BLOCK_H) accumulators, x broadcast along channels
        x_ptrs = x_base
        w_ptrs = g_base
        h_pos = offs_h
        acc = tl.zeros((BLOCK_I, BLOCK_H), dtype=tl.float32)
        for _ in range(0, H, BLOCK_H):
            h_in = (h_pos < H)[None, :]
            xv = tl.load(x_ptrs, mask=h_in, other=0.0).to(tl.float32)
            w = tl.load(w_ptrs, mask=i_in[:, None] & h_in, other=0.0).to(tl.float32)
            acc += xv * w
            x_ptrs += BLOCK_H * stride_xh
            w_ptrs += BLOCK_H * stride_gh
            h_pos += BLOCK_H
        a = _silu(tl.sum(acc, axis=1))
        # zero |a| <= t; NaN compares False and is kept, as in the dense MLP
        keep = i_in & ~(tl.abs(a) <= t)
        # up over the kept channels only: the other rows are never loaded
        x_ptrs = x_base
        w_ptrs = u_base
        h_pos = offs_h
        acc = tl.zeros((BLOCK_I, BLOCK_H), dtype=tl.float32)
        for _ in range(0, H, BLOCK_H):
            h_in = (h_pos < H)[None, :]
            xv = tl.load(x_ptrs, mask=h_in, other=0.0).to(tl.float32)
            w = tl.load(w_ptrs, mask=keep[:, None] & h_in, other=0.0).to(tl.float32)
            acc += xv * w
            x_ptrs += BLOCK_H * stride_xh
            w_ptrs += BLOCK_H * stride_uh
            h_pos += BLOCK_H
        h = tl.reshape(tl.where(keep, a * tl.sum(acc, axis=1), 0.0), (1, BLOCK_I))
        out_mask = m_in[:, None] & i_in[None, :]
    else:
        # a few rows: 3-D (BLOCK_M, BLOCK_I, BLOCK_H) accumulators
        x_ptrs = x_base
        w_ptrs = g_base
        h_pos = offs_h
        acc3 = tl.zeros((BLOCK_M, BLOCK_I, BLOCK_H), dtype=tl.float32)
        for _ in range(0, H, BLOCK_H):
            h_in = h_pos < H
            xv = tl.load(x_ptrs, mask=m_in[:, None] & h_in[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_ptrs, mask=i_in[:, None] & h_in[None, :], other=0.0).to(tl.float32)
            acc3 += xv[:, None, :] * w[None, :, :]
            x_ptrs += BLOCK_H * stride_xh
            w_ptrs += BLOCK_H * stride_gh
            h_pos += BLOCK_H
        a2 = _silu(tl.sum(acc3, axis=2))
        keep2 = m_in[:, None] & i_in[None, :] & ~(tl.abs(a2) <= t)
        row = tl.reshape(tl.max(keep2.to(tl.int8), axis=0) > 0, (BLOCK_I, 1))
        x_ptrs = x_base
        w_ptrs = u_base
        h_pos = offs_h
        acc3 = tl.zeros((BLOCK_M, BLOCK_I, BLOCK_H), dtype=tl.float32)
        for _ in range(0, H, BLOCK_H):
            h_in = h_pos < H
            xv = tl.load(x_ptrs, mask=m_in[:, None] & h_in[None, :], other=0.0).to(tl.float32)
            w = tl.load(w_ptrs, mask=row & h_in[None, :], other=0.0).to(tl.float32)
            acc3 += xv[:, None, :] * w[None, :, :]
            x_ptrs += BLOCK_H * stride_xh
            w_ptrs += BLOCK_H * stride_uh
            h_pos += BLOCK_H
        h = tl.where(keep2, a2 * tl.sum(acc3, axis=2), 0.0)
        out_mask = m_in[:, None] & i_in[None, :]
    h_ptrs = h_ptr + offs_m[:, None] * stride_hm + offs_i[None, :] * stride_hi
    tl.store(h_ptrs, h, mask=out_mask)


#: Whether the kernels were built by the Triton interpreter (see the GEMV module).
INTERPRETED: bool = type(_gate_up_kernel).__name__ == "InterpretedFunction"


@dataclass(frozen=True)
class MlpConfig:
    """Tiles of the fused gate/up kernel (powers of two) and the down GEMV's configuration.

    ``down=None``: :func:`specmetrics.kernels.act_sparse_gemv.triton.default_config`.
    """

    block_m: int
    block_i: int
    block_h: int
    num_warps: int = 4
    down: Optional[gemv_impl.GemvConfig] = None

    def __post_init__(self):
        for name in ("block_m", "block_i", "block_h"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"MlpConfig.{name} must be a power of two >= 1, got {v!r}")


def default_config(M: int, I: int, H: int, device: torch.device) -> MlpConfig:
    """GPU: 16 channels x 256 columns per step (512-byte rows of float16), at most 4096 partial
    products per row of ``x``; interpreter: tiles as large as it allows. A heuristic, swept by
    ``benchmarks/bench_kernels.py``."""
    p2 = triton.next_power_of_2
    if device.type != "cuda" or INTERPRETED:
        # few programs (each costs milliseconds), tiles of at most 2**18 partial products
        block_m = min(p2(max(M, 1)), 64)
        block_i = min(p2(max(I, 1)), 1024, max(16, (1 << 18) // (block_m * 16)))
        block_h = min(p2(max(H, 1)), max(16, (1 << 18) // (block_m * block_i)))
        return MlpConfig(block_m, block_i, block_h)
    block_m = min(p2(max(M, 1)), 16)
    block_h = min(256, max(16, p2(max(H, 1))))
    block_i = max(1, min(16, 4096 // (block_m * block_h)))
    return MlpConfig(block_m, block_i, block_h)


def gate_up(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, threshold: float, *,
            config: Optional[MlpConfig] = None) -> torch.Tensor:
    """Launch the fused kernel: ``h = SiLU(x gate^T) ⊙ m ⊙ (x up^T)``, float32 (M, I)."""
    M, H = x.shape
    I = gate.shape[0]
    h = torch.empty((M, I), dtype=torch.float32, device=x.device)
    if M == 0 or I == 0:
        return h
    if H == 0:
        return h.zero_()
    cfg = config or default_config(M, I, H, x.device)
    grid = (triton.cdiv(I, cfg.block_i), triton.cdiv(M, cfg.block_m))
    _gate_up_kernel[grid](x, gate, up, h, threshold, M, I, H,
                          x.stride(0), x.stride(1), gate.stride(0), gate.stride(1),
                          up.stride(0), up.stride(1), h.stride(0), h.stride(1),
                          BLOCK_M=cfg.block_m, BLOCK_I=cfg.block_i, BLOCK_H=cfg.block_h,
                          num_warps=cfg.num_warps)
    return h


def sparse_mlp(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor, down: torch.Tensor,
               threshold: float, *, config: Optional[MlpConfig] = None, count: bool = False
               ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Both launches on (M, H) ``x`` (no parameter checks).

    Returns
    -------
    y : Tensor (M, H)
        Dtype of ``x``.
    zeros : Tensor () of int64, or None
        With ``count=True``: the entries of ``h`` that are zero (the dropped channels, summed
        over the rows; a kept channel whose up projection is exactly 0 counts too).
    """
    h = gate_up(x, gate, up, threshold, config=config)
    y = gemv_impl.gemv(h, down, 0.0, out_dtype=x.dtype,
                       config=None if config is None else config.down)
    zeros = (h == 0).sum() if count else None
    return y, zeros
