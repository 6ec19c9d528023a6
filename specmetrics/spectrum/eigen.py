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
from typing import Optional, Sequence

import torch

from .._validation import check_choice, fail
from ..models.matrices import WeightMatrix, split_matrices

__all__ = ["eigenvalues", "layer_eigenvalues", "plan_batches", "working_bytes"]

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
    # one 2-D product per matrix, accumulated in place into the Gram block: no temporary (a
    # batched product of column slices copies them, up to the size of the weights)
    for x, g in zip(a.reshape(-1, *a.shape[-2:]), gram.view(-1, m, m)):
        for p, q in zip(edges[:-1], edges[1:]):
            g[p:q, :q].addmm_(x[:, p:q].mT, x[:, :q])
    return gram


def _gram_eigenvalues(gram: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """``eigvalsh`` of Gram matrices (lower triangle read), with the round-off floor zeroed."""
    ev = torch.linalg.eigvalsh(gram)
    # below M * eps * lambda_max the Gram route carries no information: zero it
    floor = ev[..., -1:].clamp_min(0) * min(n, m) * torch.finfo(ev.dtype).eps
    return torch.where(ev > floor, ev, torch.zeros((), dtype=ev.dtype, device=ev.device))


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
    return _gram_eigenvalues(_lower_gram(mats if n >= m else mats.mT), n, m)


def _matrix_shape(w: WeightMatrix) -> tuple[int, int, int]:
    """``(rf, n, m)`` of the stack :func:`split_matrices` makes of ``w`` (rows, columns as stored)."""
    if len(w.shape) == 2:
        return 1, w.shape[0], w.shape[1]
    return math.prod(w.shape[2:]), w.shape[0], w.shape[1]


def working_bytes(w: WeightMatrix, dtype: torch.dtype) -> int:
    """Bytes one matrix occupies in a batch: its weights and its Gram matrix in ``dtype``."""
    rf, n, m = _matrix_shape(w)
    itemsize = torch.empty((), dtype=dtype).element_size()
    return max(1, rf * (n * m + min(n, m) ** 2) * itemsize)


def plan_batches(matrices: Sequence[WeightMatrix], *, dtype: torch.dtype,
                 batch_bytes: int) -> list[list[int]]:
    """Group matrices of equal kind and shape into batches of at most ``batch_bytes``.

    The budget covers what grows with the batch: the stacked weights and their Gram matrices in
    the compute ``dtype`` (:func:`working_bytes`); a matrix larger than the budget is a batch of
    its own. Groups follow the first appearance of each shape, the matrices keep their order.

    Returns
    -------
    list of list of int
        Indices into ``matrices``, one list per batch.
    """
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, w in enumerate(matrices):
        groups[(w.kind, tuple(w.shape))].append(i)
    batches = []
    for items in groups.values():
        step = max(1, batch_bytes // working_bytes(matrices[items[0]], dtype))
        batches.extend(items[start : start + step] for start in range(0, len(items), step))
    return batches


def _all_finite(t: torch.Tensor, chunk: int = 1 << 22) -> bool:
    """Whether every element is finite, checked in chunks (``torch.isfinite`` of a whole matrix
    makes temporaries larger than the matrix)."""
    return all(bool(torch.isfinite(part).all()) for part in t.reshape(-1).split(chunk))


def _batch_eigenvalues(chunk: Sequence[WeightMatrix], *, dtype, device, method) -> torch.Tensor:
    """Eigenvalues of one batch of equal-shape matrices, shape ``(len(chunk), rf * min(n, m))``.

    The weights are read one at a time straight into a preallocated batch in the compute dtype
    (the tensor read, often a memory-mapped view, is dropped at once); for the Gram route the
    batch is freed before ``eigvalsh``, so the working set is the batch, its Gram matrices and
    one matrix as read (see :func:`plan_batches`).
    """
    kind = chunk[0].kind
    rf, n, m = _matrix_shape(chunk[0])
    batch = torch.empty((len(chunk), rf, n, m), dtype=dtype, device=device)
    finite = torch.ones(len(chunk), dtype=torch.bool)
    scale = 1.0
    for i, w in enumerate(chunk):
        weight = w.load()
        if not torch.is_floating_point(weight):
            raise fail("source", "esd", "floating-point weights", f"{w.name} of dtype {weight.dtype}")
        mats, scale = split_matrices(weight, kind)
        batch[i].copy_(mats)
        del weight, mats
        # a NaN/inf weight would make the batched eigensolver raise for the whole batch: such
        # matrices get NaN eigenvalues (their fit then fails cleanly)
        finite[i] = _all_finite(batch[i])
    if not bool(finite.all()):
        ev = torch.full((len(chunk), rf, min(n, m)), math.nan, dtype=dtype, device=device)
        if bool(finite.any()):
            keep = finite.to(device)
            ev[keep] = eigenvalues(batch[keep], method=method) * scale
        return ev.reshape(len(chunk), -1)
    if method == "svd":
        ev = eigenvalues(batch, method=method)
    else:
        gram = _lower_gram(batch if n >= m else batch.mT)
        del batch  # the weights are not needed once their Gram matrices exist
        ev = _gram_eigenvalues(gram, n, m)
        del gram
    return (ev * scale).reshape(len(chunk), -1)


def layer_eigenvalues(
    matrices: list[WeightMatrix],
    *,
    dtype: torch.dtype,
    device: torch.device,
    method: str,
    batch_bytes: int,
    progress: bool = False,
    batches: Optional[Sequence[Sequence[int]]] = None,
    desc: str = "eigenvalues",
):
    """Yield ``(WeightMatrix, eigenvalues)`` for each matrix, batched by shape.

    Matrices of equal shape are stacked (at most ``batch_bytes`` of weights and Gram matrices in
    ``dtype`` at a time: :func:`plan_batches`) and go through one batched Gram + ``eigvalsh``;
    the eigenvalues of a convolution's kernel positions are pooled and halved. The weights are
    read one matrix at a time when the batch is filled (a safetensors source is memory-mapped,
    so nothing else of the checkpoint is resident), and every buffer of a batch is released
    before the next batch is read: peak memory is about one batch plus one matrix as stored.
    Yields in batch order; eigenvalues are ascending float64 numpy arrays, all NaN for a matrix
    with a NaN or inf weight.

    Parameters
    ----------
    batches : sequence of sequence of int, optional
        The batches to compute, as indices into ``matrices`` (default: all of them, from
        :func:`plan_batches`); equal-shape members only.
    desc : str
        Label of the progress bar.
    """
    if batches is None:
        batches = plan_batches(matrices, dtype=dtype, batch_bytes=batch_bytes)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(len(b) for b in batches), desc=desc, unit="matrix")
    try:
        for indices in batches:
            chunk = [matrices[i] for i in indices]
            ev = _batch_eigenvalues(chunk, dtype=dtype, device=device, method=method)
            ev = torch.sort(ev, dim=-1).values.to(torch.float64).cpu().numpy()
            for w, e in zip(chunk, ev):
                yield w, e
            del ev
            if bar is not None:
                bar.update(len(chunk))
    finally:
        if bar is not None:
            bar.close()
