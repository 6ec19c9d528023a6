"""Eigenvalues of ``W^T W``, batched over matrices of equal shape.

Numerics
--------
The ESD is the set of ``M = min(N, M)`` eigenvalues of ``W^T W`` (or ``W W^T``),
i.e. the squared singular values of the raw weight matrix. The default
``method="gram"`` forms the smaller Gram matrix and calls ``eigvalsh``, batched
over matrices of equal shape; ``method="svd"`` squares ``svdvals`` (slower, but
accurate for eigenvalues near ``eps * lambda_max``, which the Gram route resolves
only to about ``M * eps * lambda_max``; those are set to zero).

``dtype=torch.float64`` (default) reproduces WeightWatcher's float64 SVD to about
1e-13 relative on the tail. ``dtype=torch.float32`` is about twice as fast on a CPU
and far faster on a GPU; the fitted ``alpha`` then agrees with float64 to about
1e-3 relative (the tail eigenvalues carry ~1e-6 relative error; see the tests).
In float32 the Gram route resolves eigenvalues only down to ``~M * 1.2e-7 *
lambda_max``: where the bulk lies below that (``lambda_max / lambda_bulk`` beyond
~1e5, e.g. Cauchy-like weights) use ``method="svd"`` or float64.
"""
from __future__ import annotations

import logging
import math
from collections import defaultdict

import torch

from .._validation import check_choice, fail
from ..models.matrices import WeightMatrix, split_matrices

__all__ = ["eigenvalues", "layer_eigenvalues"]

log = logging.getLogger(__name__)


def _lower_gram(a: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """Lower triangle (block-wise) of ``a^T a``; the strict upper blocks stay zero.

    ``eigvalsh`` reads only the lower triangle, so computing the column blocks on and
    below the diagonal does ``(blocks + 1) / (2 blocks)`` of the work of ``a.mT @ a``
    (what BLAS ``syrk`` would do; torch does not expose it).
    """
    m = a.shape[-1]
    if m < 256:
        return a.mT @ a
    edges = [round(m * b / blocks) for b in range(blocks + 1)]
    gram = a.new_zeros(a.shape[:-2] + (m, m))
    for p, q in zip(edges[:-1], edges[1:]):
        gram[..., p:q, :q] = a[..., :, p:q].mT @ a[..., :, :q]
    return gram


def eigenvalues(mats: torch.Tensor, *, method: str = "gram") -> torch.Tensor:
    """Eigenvalues of ``W^T W`` for a batch of matrices, ascending.

    Parameters
    ----------
    mats : torch.Tensor, shape (..., n, m)
        Real matrices, in the dtype and on the device to compute in.
    method : {"gram", "svd"}, default "gram"
        ``eigvalsh`` of the smaller Gram matrix, or squared ``svdvals``.

    Returns
    -------
    torch.Tensor, shape (..., min(n, m))
        Non-negative eigenvalues, ascending.
    """
    check_choice(method, ("gram", "svd"), name="method", func="eigenvalues")
    n, m = mats.shape[-2:]
    if method == "svd":
        return torch.sort(torch.linalg.svdvals(mats) ** 2, dim=-1).values
    ev = torch.linalg.eigvalsh(_lower_gram(mats if n >= m else mats.mT))
    # below M * eps * lambda_max the Gram route carries no information: zero it
    floor = ev[..., -1:].clamp_min(0) * min(n, m) * torch.finfo(ev.dtype).eps
    return torch.where(ev > floor, ev, torch.zeros((), dtype=ev.dtype, device=ev.device))


def layer_eigenvalues(
    matrices: list[WeightMatrix],
    *,
    dtype: torch.dtype,
    device: torch.device,
    method: str,
    batch_bytes: int,
    progress: bool = False,
):
    """Yield ``(WeightMatrix, eigenvalues)`` for each matrix, batched by shape.

    Matrices of equal shape are stacked (at most ``batch_bytes`` of ``dtype`` at a
    time) and go through one batched Gram + ``eigvalsh``; the eigenvalues of a
    convolution's kernel positions are pooled and halved. Yields in batch order;
    eigenvalues are ascending float64 numpy arrays, all NaN for a matrix with a
    NaN or inf weight.
    """
    groups: dict[tuple, list[WeightMatrix]] = defaultdict(list)
    for w in matrices:
        groups[(w.kind, w.shape)].append(w)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(matrices), desc="eigenvalues", unit="matrix")
    itemsize = torch.empty((), dtype=dtype).element_size()
    try:
        for (kind, shape), items in groups.items():
            per = max(1, math.prod(shape)) * itemsize
            step = max(1, batch_bytes // per)
            for start in range(0, len(items), step):
                chunk = items[start : start + step]
                stacks, scale = [], 1.0
                for w in chunk:
                    weight = w.load()
                    if not torch.is_floating_point(weight):
                        raise fail("source", "esd", "floating-point weights", f"{w.name} of dtype {weight.dtype}")
                    mats, scale = split_matrices(weight, kind)
                    stacks.append(mats.to(device=device, dtype=dtype))
                batch = torch.stack(stacks)  # (B, rf, n, m)
                # a NaN/inf weight would make the batched eigensolver raise for the whole
                # batch: such matrices get NaN eigenvalues (their fit then fails cleanly)
                finite = torch.isfinite(batch).flatten(1).all(dim=1)
                if bool(finite.all()):
                    ev = eigenvalues(batch, method=method) * scale
                else:
                    ev = torch.full(batch.shape[:2] + (min(batch.shape[-2:]),), math.nan, dtype=dtype, device=device)
                    if bool(finite.any()):
                        ev[finite] = eigenvalues(batch[finite], method=method) * scale
                ev = ev.reshape(len(chunk), -1)
                ev = torch.sort(ev, dim=-1).values.to(torch.float64).cpu().numpy()
                for w, e in zip(chunk, ev):
                    yield w, e
                if bar is not None:
                    bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
