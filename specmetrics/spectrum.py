"""Eigenvalues of ``W^T W`` and the :func:`esd` entry point.

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

import dataclasses
import logging
import math
from collections import defaultdict
from typing import Any, Optional

import numpy as np
import torch

from ._checks import check_choice, check_positive_int, fail
from .layers import Pattern, WeightMatrix, list_weight_matrices, split_matrices
from .report import SpectrumReport

__all__ = ["eigenvalues", "esd", "EsdOptions"]

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class EsdOptions:
    """The options of :func:`esd`, validated; what every backend's ``analyze`` receives.

    Backends implement ``analyze(source, options: EsdOptions) -> SpectrumReport``.
    """

    include: Pattern = None
    exclude: Pattern = None
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    method: str = "gram"
    xmin: Any = "ks"
    clip_xmax: bool = False
    distribution: str = "power_law"
    mp_fit: bool = False
    randomize: bool = False
    seed: int = 0
    min_evals: int = 8
    max_evals: int = 15000
    max_n: int = 50000
    batch_bytes: int = 1 << 28
    progress: bool = False

    def summary(self) -> dict:
        """The options that shape the numbers, as plain values (stored on the report)."""
        return dict(
            dtype=str(self.dtype), device=str(self.device), method=self.method, xmin=self.xmin,
            clip_xmax=self.clip_xmax, distribution=self.distribution, mp_fit=self.mp_fit,
            randomize=self.randomize, seed=self.seed,
        )


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


def _skip_reason(w: WeightMatrix, min_evals: int, max_evals: int, max_n: int) -> Optional[str]:
    n, m, rf = w.n_m_rf
    if n > max_n:
        return f"N={n} > max_n={max_n}"
    if m * rf < min_evals:
        return f"M*rf={m * rf} < min_evals={min_evals}"
    if m * rf > max_evals:
        return f"M*rf={m * rf} > max_evals={max_evals}"
    return None


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


def esd(
    source: Any,
    *,
    backend: str = "torch",
    include: Pattern = None,
    exclude: Pattern = None,
    dtype: Optional[torch.dtype] = None,
    device: Any = None,
    method: str = "gram",
    xmin: Any = "ks",
    clip_xmax: bool = False,
    distribution: str = "power_law",
    mp_fit: bool = False,
    randomize: bool = False,
    seed: int = 0,
    min_evals: int = 8,
    max_evals: int = 15000,
    max_n: int = 50000,
    batch_bytes: int = 1 << 28,
    progress: bool = False,
) -> SpectrumReport:
    """Heavy-tailed ESD metrics of every weight matrix of ``source``.

    Parameters
    ----------
    source : nn.Module, str, os.PathLike, Mapping or torch.Tensor
        A model; a Hugging Face hub id or local folder; a ``.safetensors`` file or
        a folder of shards (read matrix by matrix, the model is not built); a state
        dict; or one tensor (named ``"weight"``). See :mod:`specmetrics.layers`.
    backend : {"torch", "weightwatcher"}, default "torch"
        The native engine, or WeightWatcher's ``analyze()`` (reference; needs the
        ``ww`` extra; its logging and warning side effects are undone).
    include, exclude : str, sequence of str or callable, optional
        Regular expressions (``re.search``) on qualified names, or a predicate.
        Embeddings are included by default, as in WeightWatcher.
    dtype : torch.dtype, optional
        Compute dtype of the eigenvalues; default ``torch.float64``.
    device : str or torch.device, optional
        Where to compute (default ``"cpu"``); weights are moved batch by batch.
    method : {"gram", "svd"}, default "gram"
        See :func:`eigenvalues`.
    xmin : str or float, default "ks"
        ``xmin`` policy of the main ``alpha`` fit (see :func:`fit_power_law`);
        ``alpha_peak`` and ``alpha_mid`` are always reported too.
    clip_xmax : bool, default False
        WeightWatcher's ``fix_fingers="clip_xmax"`` for the main fit.
    distribution : {"power_law", "truncated_power_law"}, default "power_law"
        Family of the main fit.
    mp_fit : bool, default False
        Add the Marchenko-Pastur bulk columns (``num_spikes``, ``sigma_mp``,
        ``mp_softrank``, ``bulk_max``, ``bulk_min``, ``W_scale``).
    randomize : bool, default False
        Add ``rand_distance``, ``ww_softrank`` and ``max_rand_eval`` from an
        element-shuffled copy of each matrix, shuffled with ``seed``.
    seed : int, default 0
        Seed of ``randomize``.
    min_evals, max_evals, max_n : int
        Skip matrices with ``M * rf < min_evals`` or ``> max_evals``, or with
        ``N > max_n`` (WeightWatcher 0.7.7's defaults 8, 15000, 50000).
    batch_bytes : int, default 256 MiB
        Upper bound on the weights stacked into one batched eigen-decomposition.
    progress : bool, default False
        Show a progress bar.

    Returns
    -------
    SpectrumReport
        Keyed by qualified module name; ``.to_frame()`` has WeightWatcher's columns.

    Examples
    --------
    >>> import torch, specmetrics
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.Linear(128, 32))
    >>> report = specmetrics.esd(net)
    >>> list(report)
    ['0', '1']
    >>> bool(report["0"].fit.success)
    True
    """
    func = "esd"
    check_choice(backend, ("torch", "weightwatcher"), name="backend", func=func)
    check_choice(method, ("gram", "svd"), name="method", func=func)
    check_choice(distribution, ("power_law", "truncated_power_law"), name="distribution", func=func)
    for label, value in (("min_evals", min_evals), ("max_evals", max_evals), ("max_n", max_n), ("batch_bytes", batch_bytes)):
        check_positive_int(value, name=label, func=func)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise fail("seed", func, "an integer", seed)
    if dtype is None:
        dtype = torch.float64
    if dtype not in (torch.float64, torch.float32):
        raise fail("dtype", func, "torch.float64 or torch.float32", dtype)
    options = EsdOptions(
        include=include, exclude=exclude, dtype=dtype, device=torch.device(device or "cpu"), method=method,
        xmin=xmin, clip_xmax=clip_xmax, distribution=distribution, mp_fit=mp_fit, randomize=randomize,
        seed=seed, min_evals=min_evals, max_evals=max_evals, max_n=max_n, batch_bytes=batch_bytes,
        progress=progress,
    )
    if backend == "weightwatcher":
        from .backends.weightwatcher import analyze as ww_analyze

        return ww_analyze(source, options)
    from .backends.torch import analyze

    return analyze(source, options)
