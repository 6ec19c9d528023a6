"""The native backend: batched eigenvalues in torch, vectorised fits, pure metrics."""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import torch

from ..._threads import map_single_threaded
from ...models.matrices import WeightMatrix, list_weight_matrices, split_matrices
from .. import metrics as M
from ..eigen import eigenvalues, layer_eigenvalues, plan_batches
from ..powerlaw import PowerLawFit, fit_power_law
from ..results import LayerSpectrum, SpectrumReport
from .base import WW_TYPES, EsdOptions, skip_reason, warn_failed_fits, ww_warning

__all__ = ["analyze", "layer_row"]


def layer_row(
    w: WeightMatrix,
    evals: np.ndarray,
    *,
    xmin: Any = "ks",
    clip_xmax: bool = False,
    distribution: str = "power_law",
) -> tuple[dict[str, PowerLawFit], dict[str, Any]]:
    """All fits and metrics of one matrix from its eigenvalues (pure function).

    Returns
    -------
    fits : dict
        ``"alpha"``, ``"alpha_peak"``, ``"alpha_mid"`` -> :class:`PowerLawFit`.
    row : dict
        WeightWatcher's columns plus ``alpha_peak``, ``alpha_mid``, ``n_params``.
    """
    n, m, rf = w.n_m_rf
    # warn=False: no warning is raised here (thread-safe; the caller warns once for the report)
    fits = {
        "alpha": fit_power_law(evals, xmin=xmin, clip_xmax=clip_xmax, distribution=distribution,
                               warn=False),
        "alpha_peak": fit_power_law(evals, xmin="peak", warn=False),
        "alpha_mid": fit_power_law(evals, xmin="mid", warn=False),
    }
    main = fits["alpha"]
    row: dict[str, Any] = {
        "alpha": main.alpha,
        "xmin": main.xmin,
        "xmax": main.xmax,
        "D": main.ks_distance,
        "sigma": main.sigma,
        "num_pl_spikes": main.n_tail if main.success else 0,
    }
    row.update(M.norm_metrics(evals, n, main.alpha))
    row.update(
        N=n, M=m, Q=n / m, rf=rf, layer_type=WW_TYPES[w.kind], has_esd=True,
        status="success" if main.success else "failed", warning=ww_warning(main.alpha),
        alpha_peak=fits["alpha_peak"].alpha, alpha_mid=fits["alpha_mid"].alpha,
        n_params=w.n_params, fit_message=main.message,
    )
    if distribution == "truncated_power_law":
        row["Lambda"] = main.truncation
    if clip_xmax:
        row["num_fingers"] = main.n_fingers
    return fits, row


def _random_eigenvalues(w: WeightMatrix, *, seed: int, dtype, device, method: str) -> np.ndarray:
    """Eigenvalues of an element-shuffled copy of ``w`` (seeded)."""
    weight = w.load().to(device=device, dtype=dtype)
    if not bool(torch.isfinite(weight).all()):
        return np.full(w.n_m_rf[1] * w.n_m_rf[2], np.nan)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    perm = torch.randperm(weight.numel(), generator=gen).to(device)
    shuffled = weight.reshape(-1)[perm].reshape(weight.shape)
    mats, scale = split_matrices(shuffled, w.kind)
    ev = (eigenvalues(mats, method=method) * scale).reshape(-1)
    return np.sort(ev.to(torch.float64).cpu().numpy())


def _plan(source: Any, opts: EsdOptions) -> tuple[list[WeightMatrix], dict[str, str]]:
    """The matrices to analyse, in model order, and the skipped ones with the reason."""
    matrices = list_weight_matrices(source, include=opts.include, exclude=opts.exclude, func="esd")
    skipped: dict[str, str] = {}
    todo: list[WeightMatrix] = []
    for w in matrices:
        reason = skip_reason(w, opts.min_evals, opts.max_evals, opts.max_n)
        if reason is None:
            todo.append(w)
        else:
            skipped[w.name] = reason
    return todo, skipped


def _compute(todo: list[WeightMatrix], batches, opts: EsdOptions, *, progress: bool,
             desc: str = "eigenvalues") -> list[LayerSpectrum]:
    """The :class:`LayerSpectrum` of the matrices in ``batches`` (indices into ``todo``)."""
    # phase 1: the eigenvalues, in large batched operations (all intra-op threads)
    position = {w.name: i for i, w in enumerate(todo)}  # the seed of randomize: global position
    spectra = []
    for w, ev in layer_eigenvalues(todo, dtype=opts.dtype, device=opts.device,
                                   method=opts.method, batch_bytes=opts.batch_bytes,
                                   progress=progress, batches=batches, desc=desc):
        rand = None
        if opts.randomize:
            rand = _random_eigenvalues(w, seed=opts.seed + position[w.name], dtype=opts.dtype,
                                       device=opts.device, method=opts.method)
        spectra.append((w, ev, rand))

    # phase 2: fits and metrics, many small operations per matrix: one intra-op thread per
    # worker, the matrices spread over the workers (no OpenMP barrier to stall on a busy
    # machine; see specmetrics._threads)
    def measure(item) -> LayerSpectrum:
        w, ev, rand = item
        fits, row = layer_row(w, ev, xmin=opts.xmin, clip_xmax=opts.clip_xmax,
                              distribution=opts.distribution)
        n, m, _ = w.n_m_rf
        if opts.mp_fit:
            row.update(M.mp_fit(ev, n, m))
        if rand is not None:
            row["rand_distance"] = M.rand_distance(ev, rand)
            row["max_rand_eval"] = float(rand.max())
            row["ww_softrank"] = float(rand.max() / ev.max())
        return LayerSpectrum(w.name, w.kind, w.shape, w.n_params, ev, fits, row)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(spectra), desc="fits", unit="matrix")
    try:
        # the truncated power law runs the `powerlaw` package, which is not thread-safe
        workers = 1 if opts.distribution == "truncated_power_law" else None
        return map_single_threaded(measure, spectra, workers=workers,
                                   on_done=None if bar is None else (lambda _: bar.update()))
    finally:
        if bar is not None:
            bar.close()


def _payload(layer: LayerSpectrum) -> tuple:
    """A picklable copy of a :class:`LayerSpectrum` (its mappings are read-only proxies)."""
    return (layer.name, layer.kind, layer.shape, layer.n_params, np.asarray(layer.eigenvalues),
            dict(layer.fits), dict(layer.metrics))


def _analyze_distributed(source: Any, opts: EsdOptions) -> tuple[dict, dict, bool]:
    """Layers of every matrix in model order, computed in shares by the ranks (see
    :mod:`specmetrics.spectrum.distributed`); returns ``(layers, skipped, is_rank_0)``."""
    from .. import distributed as D

    with D.process_group(opts.device) as (rank, world, device):
        local = dataclasses.replace(opts, device=device)
        plan: dict = {}

        def listing():
            plan["todo"], plan["skipped"] = _plan(source, local)
            settings = {k: v for k, v in opts.summary().items() if k != "device"}
            settings.update(min_evals=opts.min_evals, max_evals=opts.max_evals,
                            max_n=opts.max_n, batch_bytes=opts.batch_bytes)
            return D.fingerprint(plan["todo"], plan["skipped"], settings), len(plan["todo"])

        D.check_same_everywhere(D.gather_or_raise(listing))
        todo = plan["todo"]
        batches = plan_batches(todo, dtype=opts.dtype, batch_bytes=opts.batch_bytes)
        costs = [sum(D.matrix_cost(todo[i]) for i in b) for b in batches]
        share = [batches[j] for j in D.balanced_split(costs, world)[rank]]
        desc = f"eigenvalues (rank 0 of {world}: {sum(map(len, share))} of {len(todo)})"

        def compute():
            layers = _compute(todo, share, local, progress=opts.progress and rank == 0, desc=desc)
            return [_payload(layer) for layer in layers]

        gathered = D.gather_or_raise(compute)
    layers = {p[0]: LayerSpectrum(*p) for part in gathered for p in part}
    return {w.name: layers[w.name] for w in todo}, plan["skipped"], rank == 0


def analyze(source: Any, opts: EsdOptions) -> SpectrumReport:
    """Native implementation of :func:`specmetrics.esd` (see :class:`~specmetrics.spectrum.EsdOptions`)."""
    if opts.distributed:
        ordered, skipped, warn = _analyze_distributed(source, opts)
    else:
        todo, skipped = _plan(source, opts)
        layers = {layer.name: layer for layer in _compute(todo, None, opts, progress=opts.progress)}
        ordered, warn = {w.name: layers[w.name] for w in todo}, True
    if warn:  # rank 0 only under distributed=True
        warn_failed_fits(ordered)
    return SpectrumReport(ordered, backend="torch", skipped=skipped, settings=opts.summary())
