"""Triton kernel of the activation-sparse GEMV and its host wrapper.

``y = x_masked @ W.T`` for ``x`` (M, K) with a few rows (decode: M = 1) and ``W`` (N, K).

Weight layout
-------------
The kernel reads, for every *kept* input ``k`` (``|x[m, k]| > t`` for some row ``m``), the
``k``-th column of ``W``: ``N`` values. Stored K-major (``W.T`` contiguous, i.e. the logical
(N, K) tensor with strides ``(1, N)``; :func:`specmetrics.kernels.prepare_weight`), that column
is one contiguous run of ``N`` values, so each kept input costs coalesced reads of whole cache
lines and each skipped input costs no memory traffic at all: the loads of its row are masked
off. A row-major ``W`` gives the same values through its strides, but then every kept input
reads one value per cache line and nothing is saved.

Work split
----------
Program ``(n, s, m)`` owns ``BLOCK_N`` outputs, one slice of ``K`` (split-K) and ``BLOCK_M``
rows. Each step loads a ``BLOCK_M x BLOCK_K`` tile of ``x`` (float32 in registers), masks it by
the threshold, and loads the ``BLOCK_K x BLOCK_N`` tile of ``W.T`` with the rows that no row of
``x`` keeps masked off (predicated loads: no bytes move for them); products accumulate in
float32 element-wise and are reduced once at the end. One row (``BLOCK_M == 1``, decoding) has
its own 2-D path (``x`` as a column); several rows use a 3-D accumulator. With ``split_k > 1`` the programs write
float32 partial sums, which a second kernel adds in a fixed order (deterministic, no atomics)
and casts to the output dtype; with ``split_k == 1`` the result is cast and stored directly.

Interpreter (``TRITON_INTERPRET=1``, reference §7)
--------------------------------------------------
Every value is loaded in its own dtype and converted to float32 before any arithmetic (the
interpreter's bfloat16 arithmetic is wrong; ``tl.dot`` is not used). Index arithmetic is done in
int64 and pointers are advanced incrementally, because the interpreter checks every int32
operation for overflow at a high cost; :func:`default_config` picks large tiles there, since it
costs per operation rather than per element. Out-of-bounds loads are not caught by the
interpreter: every load is masked.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import triton
import triton.language as tl

__all__ = ["INTERPRETED", "GemvConfig", "default_config", "gemv"]


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, y_ptr, t, M, N, K,
                 stride_xm, stride_xk, stride_wn, stride_wk,
                 stride_ys, stride_ym, stride_yn, K_PER_SPLIT,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0).to(tl.int64)
    pid_s = tl.program_id(1).to(tl.int64)
    pid_m = tl.program_id(2).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N).to(tl.int64)
    k_start = pid_s * K_PER_SPLIT
    offs_k = k_start + tl.arange(0, BLOCK_K).to(tl.int64)
    k_end = tl.minimum(k_start + K_PER_SPLIT, K)
    m_in = offs_m < M
    n_in = offs_n < N
    w_ptrs = w_ptr + offs_k[:, None] * stride_wk + offs_n[None, :] * stride_wn
    if BLOCK_M == 1:
        # one row (decode): x as a column, a 2-D (BLOCK_K, BLOCK_N) accumulator
        x_ptrs = x_ptr + pid_m * stride_xm + offs_k[:, None] * stride_xk
        acc2 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
        for _ in range(0, K_PER_SPLIT, BLOCK_K):
            k_in = (offs_k < k_end)[:, None]
            xv = tl.load(x_ptrs, mask=k_in, other=0.0).to(tl.float32)
            # zero |x| <= t; NaN compares False and is kept, as in the dense product
            keep = k_in & ~(tl.abs(xv) <= t)
            xv = tl.where(keep, xv, 0.0)
            w = tl.load(w_ptrs, mask=keep & n_in[None, :], other=0.0).to(tl.float32)
            acc2 += xv * w
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
            offs_k += BLOCK_K
        y = tl.reshape(tl.sum(acc2, axis=0), (1, BLOCK_N))
    else:
        # a few rows: a weight row is loaded once if any row keeps its input
        x_ptrs = x_ptr + offs_m[:, None] * stride_xm + offs_k[None, :] * stride_xk
        acc3 = tl.zeros((BLOCK_M, BLOCK_K, BLOCK_N), dtype=tl.float32)
        for _ in range(0, K_PER_SPLIT, BLOCK_K):
            x_in = m_in[:, None] & (offs_k < k_end)[None, :]
            xv = tl.load(x_ptrs, mask=x_in, other=0.0).to(tl.float32)
            keep = x_in & ~(tl.abs(xv) <= t)
            xv = tl.where(keep, xv, 0.0)
            row = tl.reshape(tl.max(keep.to(tl.int8), axis=0) > 0, (BLOCK_K, 1))
            w = tl.load(w_ptrs, mask=row & n_in[None, :], other=0.0).to(tl.float32)
            acc3 += xv[:, :, None] * w[None, :, :]
            x_ptrs += BLOCK_K * stride_xk
            w_ptrs += BLOCK_K * stride_wk
            offs_k += BLOCK_K
        y = tl.sum(acc3, axis=1)
    y_ptrs = y_ptr + pid_s * stride_ys + offs_m[:, None] * stride_ym + offs_n[None, :] * stride_yn
    tl.store(y_ptrs, y.to(y_ptr.dtype.element_ty), mask=m_in[:, None] & n_in[None, :])


@triton.jit
def _splitk_reduce_kernel(p_ptr, y_ptr, M, N, S, stride_ym, stride_yn, BLOCK: tl.constexpr):
    """``y[m, n] = sum_s p[s, m, n]`` (float32, in order of ``s``), cast to ``y``'s dtype."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    total = M * N  # < 2**31: M is a handful of rows
    inside = offs < total
    ptrs = p_ptr + offs
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for _ in range(0, S):
        acc += tl.load(ptrs, mask=inside, other=0.0)
        ptrs += total
    m = offs // N
    n = offs - m * N
    tl.store(y_ptr + m * stride_ym + n * stride_yn, acc.to(y_ptr.dtype.element_ty), mask=inside)


#: Whether the kernels were built by the Triton interpreter (``TRITON_INTERPRET=1`` was set
#: when this module was first imported): then they run on CPU tensors, slowly.
INTERPRETED: bool = type(_gemv_kernel).__name__ == "InterpretedFunction"


@dataclass(frozen=True)
class GemvConfig:
    """Tile sizes of one launch (powers of two) and the number of K slices.

    Attributes
    ----------
    block_m, block_n, block_k : int
        Rows of ``x``, outputs and inputs per program and step.
    split_k : int
        Programs sharing one output tile along ``K`` (float32 partials, then one reduction).
    num_warps : int
        Warps per program (ignored by the interpreter).
    """

    block_m: int
    block_n: int
    block_k: int
    split_k: int = 1
    num_warps: int = 4

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_k"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1 or v & (v - 1):
                raise ValueError(f"GemvConfig.{name} must be a power of two >= 1, got {v!r}")
        if not isinstance(self.split_k, int) or self.split_k < 1:
            raise ValueError(f"GemvConfig.split_k must be an integer >= 1, got {self.split_k!r}")


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def _sm_count(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 1


def default_config(M: int, N: int, K: int, device: torch.device) -> GemvConfig:
    """The launch configuration used when none is given.

    GPU: ``BLOCK_N = 128`` outputs (256-byte rows of float16), at most 8192 float32 partial
    products per program (``BLOCK_M * BLOCK_K * BLOCK_N``), and split-K so that about four
    programs per SM stream the weight, each over at least four ``BLOCK_K`` steps. A heuristic,
    not a tuned table: ``benchmarks/bench_kernels.py`` sweeps alternatives on the GPU.
    Interpreter (CPU): one program as large as the interpreter allows (it costs per operation).
    """
    if device.type != "cuda" or INTERPRETED:
        # few programs (each costs milliseconds), tiles of at most 2**18 partial products
        block_m = min(_pow2(M), 64)
        block_n = min(_pow2(N), 1024, max(16, (1 << 18) // (block_m * 16)))
        block_k = min(_pow2(K), max(16, (1 << 18) // (block_m * block_n)))
        return GemvConfig(block_m, block_n, block_k, 1)
    block_m = min(_pow2(M), 16)
    block_n = min(max(_pow2(N), 16), 128)
    block_k = max(8, 8192 // (block_m * block_n))
    if block_k < 16 and block_n > 64:
        block_n = 64
        block_k = max(8, 8192 // (block_m * block_n))
    block_k = min(block_k, max(8, _pow2(K)))
    tiles = triton.cdiv(N, block_n) * triton.cdiv(M, block_m)
    target = 4 * _sm_count(device)
    split = max(1, min(triton.cdiv(target, tiles), triton.cdiv(K, 4 * block_k)))
    return GemvConfig(block_m, block_n, block_k, split)


def gemv(x: torch.Tensor, weight: torch.Tensor, threshold: float, *,
         out: Optional[torch.Tensor] = None, out_dtype: Optional[torch.dtype] = None,
         config: Optional[GemvConfig] = None) -> torch.Tensor:
    """Launch the kernel: ``out[m] = x_masked[m] @ weight.T`` (no parameter checks).

    Parameters
    ----------
    x : Tensor (M, K)
        Any strides, float16/bfloat16/float32.
    weight : Tensor (N, K)
        Any strides; K-major storage (``weight.stride(0) == 1``) for coalesced reads.
    threshold : float
        Entries with ``|x| <= threshold`` are skipped (float32 comparison: round it to ``x``'s
        dtype beforehand for the dtype's semantics).
    out : Tensor (M, N), optional
        Written in place (any strides); default a new contiguous tensor.
    out_dtype : torch.dtype, optional
        Dtype of a new output (default ``x.dtype``).
    config : GemvConfig, optional
        Default :func:`default_config`.

    Returns
    -------
    Tensor (M, N)
    """
    M, K = x.shape
    N = weight.shape[0]
    if out is None:
        out = torch.empty((M, N), dtype=out_dtype or x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out
    if K == 0:
        return out.zero_()
    cfg = config or default_config(M, N, K, x.device)
    k_per_split = triton.cdiv(triton.cdiv(K, cfg.split_k), cfg.block_k) * cfg.block_k
    splits = triton.cdiv(K, k_per_split)
    grid = (triton.cdiv(N, cfg.block_n), splits, triton.cdiv(M, cfg.block_m))
    if splits == 1:
        _gemv_kernel[grid](x, weight, out, threshold, M, N, K,
                           x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
                           0, out.stride(0), out.stride(1), k_per_split,
                           BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                           num_warps=cfg.num_warps)
        return out
    partial = torch.empty((splits, M, N), dtype=torch.float32, device=x.device)
    _gemv_kernel[grid](x, weight, partial, threshold, M, N, K,
                       x.stride(0), x.stride(1), weight.stride(0), weight.stride(1),
                       M * N, N, 1, k_per_split,
                       BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=cfg.block_k,
                       num_warps=cfg.num_warps)
    block = 1024
    _splitk_reduce_kernel[(triton.cdiv(M * N, block),)](
        partial, out, M, N, splits, out.stride(0), out.stride(1), BLOCK=block, num_warps=4)
    return out
