"""TEAL's greedy allocation of activation sparsity across the projections of a block.

Uniform TEAL gives every linear-layer input of a block the same sparsity. TEAL's greedy search
(``teal/greedyopt.py`` in the TEAL repository) instead spends a *block* budget: the block's
sparsity is the parameter-weighted mean of its projections' input sparsities (a zero input
skips one column of the weight, so the weighted mean is the fraction of the block's weights not
read), and the search raises it in small steps, each time giving the step to the projection
whose increase adds the least error to the block's output.

Here the projections are the four TEAL sites of a block (``qkv``, ``o``, ``gate_up``, ``down``),
weighted by the parameters of the matrices that read them (q+k+v, with grouped-query attention
k and v are smaller; o; gate+up; down), read from the modules' weight shapes (for a LLaMA
config: ``d(h + 2 h_kv) d_head``, ``h d_head d``, ``2 d d_ff``, ``d_ff d``).

The step rule (as TEAL's ``step_sizes = base_step / weight``): one greedy step raises a
projection of size ``n_k`` by ``step · n_min / n_k`` (the smallest projection by ``step``, the
others by less), so every step adds the same ``δ = step · n_min / N`` to the block's weighted
sparsity and the candidates compared at a step cost the same budget. Unlike TEAL, which stops
*after* crossing the target, the search stops *before* a step that would cross it: the result
never exceeds the budget and falls short of it by less than ``δ <= step``.

Pure core: :func:`greedy_path` / :func:`greedy_allocation` take an error function (or additive
error tables) and the sizes. Model level: :func:`teal_greedy_search` measures each block's output
error on calibration sequences (the block run alone on its dense inputs, as TEAL's
``layer_forward``; thresholds from the calibration statistics' ``|x|`` quantiles) and
:func:`teal_greedy_targets` returns ``{site name: target sparsity}`` for
:func:`~specmetrics.activations.activation_thresholds`.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Callable, Optional, Union

import numpy as np
import torch
from torch import nn

from .._validation import check_interval, check_positive_int, fail
from ..calibration.text import model_tokenizer_text
from ..models.blocks import block_device, find_blocks, weight_out_in
from ..calibration.runner import capture_block_inputs, move_to, output_tensor
from .capture import ActivationStats
from .sites import TEAL_KINDS
from .sparsify import TorchThreshold, site_consumers, sparsify_activations
from .thresholds import ActivationThresholds

__all__ = ["GreedyPath", "greedy_path", "greedy_allocation", "projection_sizes",
           "GreedySearch", "teal_greedy_search", "teal_greedy_targets"]

logger = logging.getLogger(__name__)

_TOL = 1e-12

ErrorsLike = Union[Callable[[Mapping[str, float]], float], Mapping[str, Any]]


# ----------------------------------------------------------------------------------------------
# the pure core

@dataclass(frozen=True)
class GreedyPath:
    """The states a greedy allocation passes through, from all-dense up to its budget limit.

    Attributes
    ----------
    kinds : tuple of str
        The projections, in the order ties are broken.
    sizes : mapping of str to float
        Their parameter counts (weights of the block average).
    step : float
        Sparsity increment of the smallest projection per greedy step.
    delta : float
        Block-sparsity increment per greedy step, ``step * min(sizes) / sum(sizes)``.
    max_target : float
        The budget the path was grown to.
    max_sparsity : float
        Cap on each projection's sparsity.
    sparsities : tuple of mapping of str to float
        Per-projection sparsity after each step (entry 0: all zero).
    budgets : tuple of float
        Weighted block sparsity after each step.
    errors : tuple of float
        Block error after each step (entry 0: the error of the dense block).
    chosen : tuple of str
        The projection each step raised (``len(sparsities) - 1`` entries).
    """

    kinds: tuple[str, ...]
    sizes: Mapping[str, float]
    step: float
    delta: float
    max_target: float
    max_sparsity: float
    sparsities: tuple = field(repr=False)
    budgets: tuple = field(repr=False)
    errors: tuple = field(repr=False)
    chosen: tuple = field(repr=False)

    def __post_init__(self):
        object.__setattr__(self, "sizes", MappingProxyType(dict(self.sizes)))

    @property
    def complete(self) -> bool:
        """Whether every projection reached :attr:`max_sparsity` (the path cannot go further)."""
        return all(v >= self.max_sparsity for v in self.sparsities[-1].values())

    def at(self, target: float) -> dict[str, float]:
        """The allocation for a block budget ``target``: the last state whose budget is within it.

        ``target`` must not exceed :attr:`max_target` (unless the path is complete).
        """
        target = check_interval(target, 0.0, 1.0, name="target", func="GreedyPath.at",
                                closed="both")
        if target > self.max_target + _TOL and not self.complete:
            raise fail("target", "GreedyPath.at", f"at most the path's max_target "
                       f"({self.max_target:g})", target)
        index = int(np.searchsorted(np.asarray(self.budgets), target + _TOL, side="right")) - 1
        return dict(self.sparsities[max(index, 0)])

    def to_frame(self):
        """One row per state: ``budget``, ``error``, ``chosen`` and one column per projection."""
        import pandas as pd

        rows = []
        for i, (sp, budget, err) in enumerate(zip(self.sparsities, self.budgets, self.errors)):
            rows.append({"step": i, "budget": budget, "error": err,
                         "chosen": self.chosen[i - 1] if i else None, **sp})
        return pd.DataFrame(rows).set_index("step")


def _weighted(sparsities: Mapping[str, float], sizes: Mapping[str, float], total: float) -> float:
    return sum(sizes[k] * sparsities[k] for k in sizes) / total


def _table_errors(tables: Mapping[str, Any], kinds: Sequence[str], func: str
                  ) -> Callable[[Mapping[str, float]], float]:
    grids = {}
    for k in kinds:
        if k not in tables:
            raise fail("errors", func, "tables for every projection of sizes",
                       f"no table for {k!r}")
        table = np.asarray(tables[k], dtype=np.float64).reshape(-1)
        if table.size < 2 or not np.all(np.isfinite(table)):
            raise fail("errors", func, "finite tables of at least 2 values (errors at sparsities "
                       "evenly spaced on [0, 1])", f"{k!r}: {tables[k]!r}")
        grids[k] = (np.linspace(0.0, 1.0, table.size), table)

    def errors(sparsities: Mapping[str, float]) -> float:
        return float(sum(np.interp(sparsities[k], *grids[k]) for k in kinds))
    return errors


def greedy_path(errors: ErrorsLike, sizes: Mapping[str, float], *, step: float = 0.05,
                max_target: float = 1.0, max_sparsity: float = 1.0) -> GreedyPath:
    """Grow a greedy per-projection sparsity allocation up to a block budget.

    Parameters
    ----------
    errors : callable or mapping of str to array_like
        ``errors(sparsities) -> float``: the block's output error when projection ``k`` has
        input sparsity ``sparsities[k]`` (lower is better). Or error *tables*: ``{k: e_k}``
        with ``e_k[i]`` the error contribution of projection ``k`` at sparsity
        ``i / (len(e_k) - 1)``; the block error is then ``sum_k e_k(s_k)``, interpolated
        linearly.
    sizes : mapping of str to float
        Parameter count of each projection (> 0); the block budget is the size-weighted mean.
    step : float, default 0.05
        Sparsity increment of the smallest projection per greedy step, in (0, 1]; a projection
        of size ``n_k`` moves by ``step * min(sizes) / n_k`` (capped at 1), so each step adds
        ``delta = step * min(sizes) / sum(sizes)`` to the budget.
    max_target : float, default 1.0
        Stop before the step that would take the weighted sparsity above this.
    max_sparsity : float, default 1.0
        Cap on each projection's sparsity, in (0, 1].

    Returns
    -------
    GreedyPath
        Its last state has weighted sparsity in ``(max_target - delta, max_target]`` (or every
        projection at ``max_sparsity``).

    Notes
    -----
    At each step every projection below sparsity 1 is tried one increment up and the one with
    the least error is taken (ties: the first in ``sizes`` order); the search stops when that
    best increment would exceed ``max_target``. The number of error evaluations is about
    ``len(sizes) * max_target / delta``.
    """
    func = "greedy_path"
    if not isinstance(sizes, Mapping) or not sizes:
        raise fail("sizes", func, "a non-empty mapping of projection to parameter count", sizes)
    kinds = tuple(str(k) for k in sizes)
    clean: dict[str, float] = {}
    for k in kinds:
        v = sizes[k]
        try:
            fv = float(v)
        except (TypeError, ValueError):
            raise fail("sizes", func, "a mapping to finite sizes > 0", f"{k}: {v!r}") from None
        if isinstance(v, bool) or not math.isfinite(fv) or fv <= 0:
            raise fail("sizes", func, "a mapping to finite sizes > 0", f"{k}: {v!r}")
        clean[k] = fv
    step = check_interval(step, 0.0, 1.0, name="step", func=func, closed="right")
    max_target = check_interval(max_target, 0.0, 1.0, name="max_target", func=func,
                                closed="both")
    cap = check_interval(max_sparsity, 0.0, 1.0, name="max_sparsity", func=func,
                         closed="right")
    if isinstance(errors, Mapping):
        error_fn = _table_errors(errors, kinds, func)
    elif callable(errors):
        error_fn = errors
    else:
        raise fail("errors", func, "a callable sparsities -> error or a mapping of error tables",
                   type(errors).__name__)

    total = sum(clean.values())
    smallest = min(clean.values())
    increment = {k: step * smallest / clean[k] for k in kinds}
    delta = step * smallest / total
    levels = {k: 0 for k in kinds}
    current = {k: 0.0 for k in kinds}

    def value(err) -> float:
        e = float(err)
        return math.inf if math.isnan(e) else e

    sparsities = [dict(current)]
    budgets = [0.0]
    errs = [value(error_fn(dict(current)))]
    chosen: list[str] = []
    while True:
        best = None
        for k in kinds:
            if current[k] >= cap:
                continue
            trial = dict(current)
            raised = (levels[k] + 1) * increment[k]
            trial[k] = cap if raised >= cap - 1e-9 else raised  # no float crumbs below the cap
            e = value(error_fn(trial))
            if best is None or e < best[1]:
                best = (k, e, trial)
        if best is None:
            break
        k, e, trial = best
        budget = _weighted(trial, clean, total)
        if budget > max_target + _TOL:
            break
        levels[k] += 1
        current = trial
        sparsities.append(dict(current))
        budgets.append(budget)
        errs.append(e)
        chosen.append(k)
    return GreedyPath(kinds=kinds, sizes=clean, step=step, delta=delta, max_target=max_target,
                      max_sparsity=cap, sparsities=tuple(sparsities), budgets=tuple(budgets),
                      errors=tuple(errs),
                      chosen=tuple(chosen))


def greedy_allocation(errors: ErrorsLike, sizes: Mapping[str, float], target: float, *,
                      step: float = 0.05, max_sparsity: float = 1.0) -> dict[str, float]:
    """Per-projection sparsities whose size-weighted mean spends the block budget ``target``.

    TEAL's greedy search (see the module notes): each step raises the projection whose increase
    adds the least block error. The weighted mean of the result is never above ``target`` and
    is above ``target - step * min(sizes) / sum(sizes)`` (unless every projection is at
    ``max_sparsity``).

    Parameters
    ----------
    errors : callable or mapping of str to array_like
        As for :func:`greedy_path`.
    sizes : mapping of str to float
        Parameter count of each projection.
    target : float
        Block budget in [0, 1].
    step : float, default 0.05
        Sparsity increment of the smallest projection per step.
    max_sparsity : float, default 1.0
        Cap on each projection's sparsity.

    Returns
    -------
    dict of str to float
        ``{projection: sparsity}``, in the order of ``sizes``.

    Examples
    --------
    >>> sizes = {"qkv": 3.0, "o": 1.0}
    >>> tables = {"qkv": [0.0, 1.0], "o": [0.0, 10.0]}     # errors linear in sparsity
    >>> alloc = greedy_allocation(tables, sizes, 0.5, step=0.1)
    >>> round(alloc["o"], 6), round(alloc["qkv"], 6)      # the cheap projection takes it all
    (0.0, 0.666667)
    """
    target = check_interval(target, 0.0, 1.0, name="target", func="greedy_allocation",
                            closed="both")
    return greedy_path(errors, sizes, step=step, max_target=target,
                       max_sparsity=max_sparsity).at(target)


# ----------------------------------------------------------------------------------------------
# model level

def projection_sizes(model: nn.Module, sites: Mapping[str, Any]) -> dict[str, int]:
    """Parameters read through each input site: the weights of the modules that consume it.

    Parameters
    ----------
    model : nn.Module
    sites : mapping of str to Site
        Input sites (``qkv``, ``o``, ``gate_up``, ``down``).

    Returns
    -------
    dict of str to int
        ``{site name: sum of out_features * in_features of its consumers}``; for ``qkv`` with
        grouped-query attention, ``d (h + 2 h_kv) d_head``.
    """
    out = {}
    for name, site in sites.items():
        out[name] = int(sum(weight_out_in(m).numel()
                            for m in site_consumers(model, site).values()))
    return out


@dataclass(frozen=True)
class GreedySearch:
    """Greedy paths of every block of a model (from :func:`teal_greedy_search`).

    Attributes
    ----------
    paths : mapping of str to GreedyPath
        Keyed by block name (``"model.layers.3"``); the projections of a path are site kinds.
    sites : mapping of str to mapping of str to str
        ``{block name: {kind: site name}}``.
    settings : mapping
        ``step``, ``max_target``, ``nsamples``, ``seqlen``, ``seed``, ``error``.
    """

    paths: Mapping[str, GreedyPath]
    sites: Mapping[str, Mapping[str, str]]
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "paths", MappingProxyType(dict(self.paths)))
        object.__setattr__(self, "sites", MappingProxyType(
            {b: MappingProxyType(dict(v)) for b, v in self.sites.items()}))
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def targets(self, target: float) -> dict[str, float]:
        """``{site name: sparsity}`` for block budget ``target`` (every block the same budget)."""
        out: dict[str, float] = {}
        for block, path in self.paths.items():
            for kind, s in path.at(target).items():
                out[self.sites[block][kind]] = s
        return out

    def to_frame(self, target: float):
        """One row per block at budget ``target``: the per-kind sparsities and the budget."""
        import pandas as pd

        rows = []
        for block, path in self.paths.items():
            alloc = path.at(target)
            rows.append({"block": block, **alloc,
                         "budget": _weighted(alloc, path.sizes, sum(path.sizes.values()))})
        return pd.DataFrame(rows).set_index("block")


class _BlockError:
    """Relative output error of one block under per-site thresholds, on fixed inputs.

    The block is run on all sequences at once when that reproduces the one-at-a-time outputs
    of the layer-sequential capture exactly (checked once, on the dense block); otherwise one
    sequence at a time.
    """

    def __init__(self, model, block, inputs, args, kwargs, site_names: dict[str, str],
                 stats: ActivationStats):
        self.model = model
        self.block = block
        self.inputs = inputs
        self.args = args
        self.kwargs = kwargs
        self.site_names = site_names  # kind -> site name
        self.stats = stats
        self.appliers = {kind: TorchThreshold(count=False) for kind in TEAL_KINDS}
        self._thresholds: dict[tuple[str, float], float] = {}
        self.batched = False
        with torch.no_grad():
            self.reference = self._run()
            self.batched = self._batched_matches()
        self.scale = float(self.reference.float().pow(2).sum()) or 1.0

    def _run(self) -> torch.Tensor:
        if self.batched:
            return output_tensor(self.block(self.inputs, *self.args, **self.kwargs))
        return torch.cat([output_tensor(self.block(self.inputs[i:i + 1], *self.args,
                                                    **self.kwargs))
                          for i in range(self.inputs.shape[0])], dim=0)

    def _batched_matches(self) -> bool:
        if self.inputs.shape[0] == 1:
            return False
        try:
            out = output_tensor(self.block(self.inputs, *self.args, **self.kwargs))
        except Exception as err:  # noqa: BLE001 - a block that cannot take a batch: one by one
            logger.debug("block %s runs one sequence at a time: %s", type(self.block).__name__,
                         err)
            return False
        return out.shape == self.reference.shape and torch.allclose(
            out, self.reference, rtol=1e-4, atol=1e-5 * float(self.reference.abs().max()))

    def threshold(self, name: str, s: float) -> float:
        key = (name, round(s, 12))
        if key not in self._thresholds:
            self._thresholds[key] = 0.0 if s <= 0 else self.stats[name].abs_quantile(min(s, 1.0))
        return self._thresholds[key]

    @torch.no_grad()
    def __call__(self, sparsities: Mapping[str, float]) -> float:
        targets = {self.site_names[k]: s for k, s in sparsities.items() if s > 0}
        if not targets:
            return 0.0
        thresholds = ActivationThresholds(
            thresholds={n: self.threshold(n, s) for n, s in targets.items()}, targets=targets,
            style="teal", sites={n: self.stats[n].site for n in targets})
        with sparsify_activations(self.model, thresholds, appliers=self.appliers):
            out = self._run()
        return float((out.float() - self.reference.float()).pow(2).sum()) / self.scale


@model_tokenizer_text(old=("stats", "calibration"), new=("calibration", "stats"))
def teal_greedy_search(model: nn.Module, tokenizer, calibration, stats: ActivationStats, *,
                       max_target: float, step: float = 0.05,
                       max_sparsity: float = 0.99, nsamples: int = 4,
                       seqlen: Optional[int] = None, seed: int = 0, device=None,
                       progress: bool = False) -> GreedySearch:
    """TEAL's greedy search on every block of a model, grown up to a budget.

    For each block: its dense inputs on ``nsamples`` calibration windows are captured (the
    layer-sequential capture of pruning), the dense block output is the reference, and
    :func:`greedy_path` is grown with the error ``||y(s) - y||² / ||y||²`` of the block run on
    those inputs with its four TEAL sites thresholded at the ``|x|`` quantiles of ``stats`` for
    the trial sparsities. Every block gets the same budget; the paths can be read at any budget
    up to ``max_target`` (:meth:`GreedySearch.targets`).

    Parameters
    ----------
    model : nn.Module
        A Hugging Face decoder; left unchanged.
    tokenizer : callable or None
        Required for text.
    calibration : str, pathlib.Path, list of str, torch.Tensor or CalibrationSet
        Text or token ids for the block inputs (the one text rule, as
        :func:`~specmetrics.calibration.load_calibration`); usually the text ``stats`` was
        computed on.
    stats : ActivationStats
        Calibration statistics holding the ``qkv``, ``o``, ``gate_up`` and ``down`` sites.
    max_target : float
        Block budget in [0, 1] the paths are grown to.
    step : float, default 0.05
        Greedy step (see :func:`greedy_path`); with LLaMA's shapes the smallest projection is
        ``o``, so this is TEAL's ``base_step_size`` (its unit is ``q``, the same size).
    max_sparsity : float, default 0.99
        Cap on each site's sparsity (thresholds are fitted for targets below 1).
    nsamples : int, default 4
        Calibration windows the block errors are measured on.
    seqlen : int, optional
        Tokens per window (default: the model's maximum positions, at most 2048).
    seed : int, default 0
    device : torch.device or str, optional
        Where the blocks run (default: where their parameters are).
    progress : bool, default False
        A tqdm bar over the blocks.

    Returns
    -------
    GreedySearch
    """
    from ..calibration.windows import calibration_set

    func = "teal_greedy_search"
    if not isinstance(stats, ActivationStats):
        raise fail("stats", func, "an ActivationStats (from activation_stats)",
                   type(stats).__name__)
    max_target = check_interval(max_target, 0.0, 1.0, name="max_target", func=func,
                                closed="both")
    step = check_interval(step, 0.0, 1.0, name="step", func=func, closed="right")
    check_positive_int(nsamples, name="nsamples", func=func)
    layout = find_blocks(model, func=func)
    by_block: dict[int, dict[str, str]] = {}
    site_objs = {}
    for name, st in stats.items():
        if st.site.kind in TEAL_KINDS:
            by_block.setdefault(st.site.block, {})[st.site.kind] = name
            site_objs[name] = st.site
    if not by_block:
        raise fail("stats", func, f"statistics holding TEAL sites ({', '.join(TEAL_KINDS)})",
                   f"sites of kinds {sorted({s.site.kind for s in stats.values()})}")
    sizes_by_site = projection_sizes(model, site_objs)
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                             seqlen=seqlen, seed=seed, func=func)

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    paths: dict[str, GreedyPath] = {}
    sites: dict[str, dict[str, str]] = {}
    try:
        with torch.no_grad():
            captured = capture_block_inputs(model, layout, calib.input_ids,
                                            device=torch.device(device) if device else None)
            hidden = captured.inputs
            for index in tqdm(range(len(layout)), desc=func, unit="block", disable=not progress):
                block = layout.blocks[index]
                where = block_device(block) or hidden.device
                moved = None
                if device is not None and where != torch.device(device):
                    moved = where
                    block.to(device)
                    where = torch.device(device)
                hidden = hidden.to(where)
                args = move_to(captured.args[index], where)
                kwargs = move_to(captured.kwargs[index], where)
                names = by_block.get(index)
                try:
                    meter = _BlockError(model, block, hidden, args, kwargs, names or {}, stats)
                    if names:
                        block_name = layout.names[index]
                        sizes = {k: sizes_by_site[names[k]] for k in TEAL_KINDS if k in names}
                        paths[block_name] = greedy_path(meter, sizes, step=step,
                                                        max_target=max_target,
                                                        max_sparsity=max_sparsity)
                        sites[block_name] = dict(names)
                    hidden = meter.reference
                finally:
                    if moved is not None:
                        block.to(moved)
    finally:
        model.train(was_training)
    settings = {"step": step, "max_target": max_target, "max_sparsity": max_sparsity,
                "nsamples": calib.nsamples,
                "seqlen": calib.seqlen, "seed": seed, "source": calib.source,
                "error": "||y(s) - y||^2 / ||y||^2 of the block output on dense inputs"}
    return GreedySearch(paths=paths, sites=sites, settings=settings)


@model_tokenizer_text(old=("stats", "target", "calibration"),
                      new=("calibration", "stats", "target"))
def teal_greedy_targets(model: nn.Module, tokenizer, calibration, stats: ActivationStats,
                        target: float, *, step: float = 0.05, max_sparsity: float = 0.99,
                        nsamples: int = 4, seqlen: Optional[int] = None, seed: int = 0,
                        device=None, progress: bool = False) -> dict[str, float]:
    """Per-site TEAL sparsities from the greedy search, every block spending budget ``target``.

    Parameters are those of :func:`teal_greedy_search` (``max_target = target``).

    Returns
    -------
    dict of str to float
        ``{site name: sparsity}`` over the ``qkv``, ``o``, ``gate_up`` and ``down`` sites; pass
        it to :func:`~specmetrics.activations.activation_thresholds` (``style="teal"``).

    Examples
    --------
    >>> targets = teal_greedy_targets(model, tok, Path("valid.txt"), stats,
    ...                               0.5)                                     # doctest: +SKIP
    >>> thresholds = sequential_thresholds(model, tok, Path("valid.txt"),
    ...                                    targets)                            # doctest: +SKIP
    """
    target = check_interval(target, 0.0, 1.0, name="target", func="teal_greedy_targets",
                            closed="both")
    search = teal_greedy_search(model, tokenizer, calibration, stats, max_target=target,
                                step=step, max_sparsity=max_sparsity, nsamples=nsamples,
                                seqlen=seqlen, seed=seed, device=device, progress=progress)
    return search.targets(target)
