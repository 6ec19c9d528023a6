"""ATP's one hyperparameter, the common difference ``β``, chosen by a small grid search.

ATP (:class:`~specmetrics.allocation.ATPConfig`) gives block ``l`` the sparsity ``c + β l``;
its reference picks ``β`` by pruning the model at ``β = 0.002, 0.004, ...`` (while every ratio
stays in [0, 1]) and keeping the step of least WikiText perplexity. :func:`atp_search` does the
same on a few candidates and on the *calibration* loss, so no evaluation text is used for the
choice: for each candidate step it allocates (:func:`~specmetrics.allocate`), prunes a copy of
the dense model (:func:`~specmetrics.prune`) and measures the mean token NLL of the pruned copy
on the calibration windows (:func:`~specmetrics.experiments.mean_nll`).

Cost: one prune of the model and one forward pass over the calibration windows per candidate
(five by default), on a deep copy of the model (the model itself is left unchanged).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from .._validation import check_bool, check_device, check_interval, check_positive_int, fail
from ..allocation import Allocation, allocate
from ..allocation.atp import ATPConfig, atp_step_grid
from ..calibration.windows import CalibrationSet, calibration_set
from ..models.blocks import find_blocks
from ..pruning import prune
from ..pruning.registry import method_label, resolve_method
from .probe import mean_nll

__all__ = ["atp_search", "ATPSearchResult"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ATPSearchResult:
    """The outcome of :func:`atp_search`.

    Attributes
    ----------
    step : float
        The chosen common difference (least calibration loss; the smaller step on a tie).
    config : ATPConfig
        ``ATPConfig(step=step)`` (with the search settings of the config searched for).
    allocation : Allocation
        The allocation of the chosen step.
    losses : tuple of (float, float)
        ``(step, mean NLL of the pruned model on the calibration windows)`` per candidate, in
        the order tried.
    dense_loss : float
        The dense model's mean NLL on the same windows.
    settings : dict
        Target, method, candidate steps, calibration windows.
    time_s : float
        Wall-clock seconds of the search.
    """

    step: float
    config: ATPConfig
    allocation: Allocation = field(repr=False)
    losses: tuple
    dense_loss: float
    settings: dict = field(repr=False)
    time_s: float = 0.0

    def to_frame(self):
        """One row per candidate step: ``loss``, ``delta`` (loss - dense loss), ``chosen``."""
        import pandas as pd

        rows = [{"step": s, "loss": loss, "delta": loss - self.dense_loss,
                 "chosen": s == self.step} for s, loss in self.losses]
        return pd.DataFrame(rows).set_index("step")


def _check_steps(steps, func: str) -> Optional[tuple]:
    if steps is None:
        return None
    if isinstance(steps, (str, bytes)) or not isinstance(steps, Sequence) or not steps:
        raise fail("steps", func, "None or a non-empty sequence of steps in [0, 1]", steps)
    return tuple(check_interval(s, 0, 1, name="steps", func=func, closed="both") for s in steps)


def atp_search(model, tokenizer, calibration, target, *, steps=None, n_grid=5, method="wanda",
               nsamples=None, seqlen=None, seed=0, allocate_options=None, config=None,
               device=None, progress=False) -> ATPSearchResult:
    """ATP's common difference chosen by the calibration loss after pruning.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM; left unchanged (each candidate prunes a deep copy).
    tokenizer : tokenizer or None
        For text calibration (``None`` for token ids or a ``CalibrationSet``).
    calibration : str, pathlib.Path, list of str, tensor or CalibrationSet
        The windows every candidate is pruned with and scored on (the one text rule).
    target : float
        Parameter-weighted mean sparsity in [0, 1).
    steps : sequence of float, optional
        Candidate steps in [0, 1]; default :func:`~specmetrics.allocation.atp_step_grid`
        (``n_grid`` legal steps up to :func:`~specmetrics.allocation.atp_max_step`), or the
        ``steps`` of ``config``.
    n_grid : int, default 5
        Number of default candidates.
    method : str or pruning config, default "wanda"
        How each candidate is pruned (default: ``config.search_method`` when ``config`` is
        given).
    nsamples, seqlen, seed
        The calibration windows (:func:`~specmetrics.prune`'s rule; default
        ``config.search_nsamples`` when given). The draw is seeded, so the search is
        deterministic.
    allocate_options : mapping, optional
        Keyword arguments of :func:`~specmetrics.allocate` (``units``, ``clip``, ``budget``...).
    config : ATPConfig, optional
        The config searched for; its ``steps``, ``search_method`` and ``search_nsamples`` are
        the defaults of the options above, and the result's ``config`` keeps them.
    device : str or torch.device, optional
        Where each block is pruned.
    progress : bool, default False
        A progress bar over the candidates.

    Returns
    -------
    ATPSearchResult

    Raises
    ------
    ParameterError
        For bad options, found before any pruning.

    Examples
    --------
    >>> from specmetrics.experiments import atp_search  # doctest: +SKIP
    >>> found = atp_search(model, tokenizer, "calibration text ...", 0.7)  # doctest: +SKIP
    >>> found.step, found.to_frame()  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    func = "atp_search"
    started = time.perf_counter()
    target = check_interval(target, 0, 1, name="target", func=func, closed="left")
    if config is not None and not isinstance(config, ATPConfig):
        raise fail("config", func, "None or an ATPConfig", type(config).__name__)
    base = config if config is not None else ATPConfig()
    steps = _check_steps(steps if steps is not None else base.steps, func)
    n_grid = check_positive_int(n_grid, name="n_grid", func=func)
    if config is not None and method == "wanda":
        method = config.search_method
    pruner = resolve_method(method, func=func)
    if pruner.nm is not None:
        raise fail("method", func, "an unstructured method (ATP allocates per block)", method)
    if nsamples is None and config is not None:
        nsamples = config.search_nsamples
    if not isinstance(allocate_options, (Mapping, type(None))):
        raise fail("allocate_options", func, "None or a mapping of allocate() keyword arguments",
                   allocate_options)
    options = dict(allocate_options or {})
    if "method" in options:
        raise fail("allocate_options", func, "free of 'method' (the allocator is ATP)",
                   sorted(options))
    progress = check_bool(progress, name="progress", func=func)
    device = check_device(device, func=func)
    if seqlen is None and isinstance(calibration, CalibrationSet):
        seqlen = calibration.seqlen  # its windows as they are, whatever the model's config says
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                            seqlen=seqlen, seed=seed, func=func)
    if steps is None:
        steps = atp_step_grid(target, len(find_blocks(model, func=func)), n=n_grid)
    # every candidate's allocation first: a bad allocate option fails before any pruning
    candidates = [(s, allocate(model, target, method=ATPConfig(step=s), **options))
                  for s in steps]

    dense_loss = mean_nll(model, calib.input_ids)
    losses, best = [], None
    bar = tqdm(candidates, desc=func, unit="step", disable=not progress)
    try:
        for step, alloc in bar:
            pruned = copy.deepcopy(model)
            prune(pruned, alloc, method=pruner, calibration=calib, device=device)
            loss = mean_nll(pruned, calib.input_ids)
            del pruned
            losses.append((step, loss))
            logger.info("atp_search: step %.6g -> calibration loss %.6g (dense %.6g)", step,
                        loss, dense_loss)
            if math.isfinite(loss) and (best is None or (loss, step) < (best[1], best[0])):
                best = (step, loss, alloc)
    finally:
        bar.close()
    if best is None:
        raise ValueError("every candidate step gave a non-finite calibration loss: "
                         f"{losses}")
    step, _, alloc = best
    chosen = ATPConfig(step=step, steps=base.steps, search_method=base.search_method,
                       search_nsamples=base.search_nsamples)
    settings = {"target": target, "method": method_label(pruner), "steps": list(steps),
                "allocate_options": options,
                "calibration": calib.settings()}
    return ATPSearchResult(step=step, config=chosen, allocation=alloc, losses=tuple(losses),
                           dense_loss=dense_loss, settings=settings,
                           time_s=time.perf_counter() - started)
