"""The front door of the spectrum engine: :func:`esd`."""
from __future__ import annotations

from typing import Any, Optional

import torch

from .._validation import (check_bool, check_choice, check_device, check_float_dtype,
                           check_not_meta, check_positive_int, check_seed, fail)
from ..models.matrices import Pattern, name_filter
from .backends import BACKENDS
from .backends.base import EsdOptions
from .distributed import check_distributed
from .powerlaw import check_xmin
from .results import SpectrumReport

__all__ = ["esd"]


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
    distributed: bool = False,
) -> SpectrumReport:
    """Heavy-tailed ESD metrics of every weight matrix of ``source``.

    Parameters
    ----------
    source : nn.Module, str, os.PathLike, Mapping or torch.Tensor
        A model; a Hugging Face hub id or local folder; a ``.safetensors`` file or
        a folder of shards (read matrix by matrix, the model is not built); a state
        dict; or one tensor (named ``"weight"``). See :mod:`specmetrics.models.matrices`.
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
        See :func:`~specmetrics.spectrum.eigenvalues`.
    xmin : str or float, default "ks"
        ``xmin`` policy of the main ``alpha`` fit (see :func:`~specmetrics.fit_power_law`);
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
        Memory budget of one batched eigen-decomposition: matrices of equal shape are stacked
        while their weights and Gram matrices in ``dtype`` fit in it (a larger matrix is a batch
        of its own). Weights are read one matrix at a time into the batch (a safetensors source
        is memory-mapped) and every buffer of a batch is freed before the next is read, so peak
        memory is about ``batch_bytes`` plus one matrix as stored plus the ``eigvalsh`` copy of
        the Gram matrices (measured: ``benchmarks/RESULTS-streaming.md``). On a GPU, raise it
        (e.g. ``8 << 30``) for larger batches.
    progress : bool, default False
        Show a progress bar (on rank 0 only when ``distributed``).
    distributed : bool, default False
        Share the matrices among the ranks of ``torch.distributed`` (run under ``torchrun``, or
        after ``init_process_group``): each rank lists ``source`` itself, computes a share
        balanced by cost, and **every rank returns the same full report**, equal to the
        single-process one. Ranks that see different matrices raise ``ParameterError``. See
        :mod:`specmetrics.spectrum.distributed`. The ``"torch"`` backend only.

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
    check_choice(backend, tuple(BACKENDS), name="backend", func=func)
    check_choice(method, ("gram", "svd"), name="method", func=func)
    check_choice(distribution, ("power_law", "truncated_power_law"), name="distribution",
                 func=func)
    sizes = {label: check_positive_int(value, name=label, func=func) for label, value in
             (("min_evals", min_evals), ("max_evals", max_evals), ("max_n", max_n),
              ("batch_bytes", batch_bytes))}
    seed = check_seed(seed, func=func)
    dtype = torch.float64 if dtype is None else check_float_dtype(
        dtype, (torch.float64, torch.float32), func=func)
    device = check_device(device, func=func) or torch.device("cpu")
    xmin = check_xmin(xmin, func=func)
    flags = {label: check_bool(value, name=label, func=func) for label, value in
             (("clip_xmax", clip_xmax), ("mp_fit", mp_fit), ("randomize", randomize),
              ("progress", progress), ("distributed", distributed))}
    if flags["distributed"]:
        if backend != "torch":
            raise fail("distributed", func, "False with backend='weightwatcher' (only the torch "
                       "backend shards matrices across ranks)", distributed)
        check_distributed(func=func)
    name_filter(include, exclude, func=func)  # reject bad patterns before any work
    check_not_meta(source, name="source", func=func)
    options = EsdOptions(
        include=include, exclude=exclude, dtype=dtype, device=device, method=method, xmin=xmin,
        distribution=distribution, seed=seed, **sizes, **flags,
    )
    return BACKENDS[backend]()(source, options)
