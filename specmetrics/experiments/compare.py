"""The main job as functions: spectra → allocation → pruning → evaluation.

Plumbing over the public functions only (:func:`~specmetrics.esd`, :func:`~specmetrics.allocate`,
:func:`~specmetrics.prune`, :func:`~specmetrics.perplexity`, :func:`~specmetrics.embedding_fidelity`):

- :func:`prune_and_evaluate`: one pruning run (an allocation, a method, a target) and its
  evaluation against the dense model: perplexity for a causal LM, embedding fidelity for an
  encoder.
- :func:`compare_allocations`: the grid of the main job, allocators × pruning methods × targets,
  each cell pruned from a fresh copy of the dense model; the spectra, the calibration windows,
  OWL's activation statistics and the held-out tokens are computed once.

Allocators are named by their config's ``name`` (``"uniform"``, ``"alphapruning"``, ``"owl"``,
...) or given as configs; options every allocator shares (``metric``, ``units``, ``clip``...)
go in ``allocate_options``, passed to :func:`~specmetrics.allocate` unchanged.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Optional

from torch import nn

from .._results import KeyedResult, jsonable
from .._validation import check_bool, check_device, check_interval, fail
from ..allocation import Allocation, allocate
from ..allocation.configs import ALLOCATORS, UniformConfig, resolve_method as resolve_allocator
from ..allocation.farms_metric import resolve_farms_metric
from ..allocation.owl import calibration_input_norms
from ..calibration.windows import calibration_set
from ..models.blocks import find_blocks
from ..models.loading import is_causal_lm
from ..pruning import prune
from ..pruning.registry import method_label, resolve_method
from ..spectrum import SpectrumReport, esd
from .evaluate import EvalText, PruningEvaluation, evaluate_pruned

__all__ = ["PruneRun", "ComparisonResult", "compare_allocations", "prune_and_evaluate",
           "method_config", "evaluate_pruned", "PruningEvaluation", "ALLOCATIONS", "METHODS"]

logger = logging.getLogger(__name__)

_NAN = math.nan


def __getattr__(name):
    if name in ("ALLOCATIONS", "METHODS"):
        from ..pruning.registry import method_names

        return tuple(ALLOCATORS) if name == "ALLOCATIONS" else method_names()
    raise AttributeError(name)


# ----------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class PruneRun:
    """One pruning run of :func:`prune_and_evaluate`, or one cell of :func:`compare_allocations`.

    Attributes
    ----------
    target : float
        The requested parameter-weighted mean sparsity.
    allocation_name : str
        The allocator's name (``"uniform"``, ``"alphapruning"``, ``"owl"``, ...) or ``"given"``
        (an :class:`~specmetrics.Allocation` passed in).
    allocation : Allocation or None
        The per-matrix ratios used (``None`` for a uniform ratio).
    method : pruning method config
    report : PruneReport
        What :func:`~specmetrics.prune` did to each matrix.
    evaluation : PruningEvaluation or None
        The comparison with the dense model (``None`` without evaluation texts).
    model : torch.nn.Module or None
        The pruned model (``None`` in the cells of :func:`compare_allocations`).
    time_s : float
        Wall-clock seconds of the run (allocation, pruning and evaluation).
    """

    target: float
    allocation_name: str
    allocation: Any
    method: Any
    report: Any
    evaluation: Optional[PruningEvaluation]
    model: Optional[nn.Module] = field(default=None, repr=False, compare=False)
    time_s: float = 0.0

    @property
    def achieved(self) -> float:
        """Parameter-weighted achieved sparsity of the prunable matrices."""
        return self.report.achieved

    @property
    def error(self) -> float:
        """Parameter-weighted mean relative reconstruction error over the pruned matrices whose
        error was measured (NaN when none was)."""
        pairs = [(m.error, m.n_params) for m in self.report.modules if math.isfinite(m.error)]
        total = sum(n for _, n in pairs)
        return math.fsum(e * n for e, n in pairs) / total if total else _NAN

    def row(self) -> dict[str, Any]:
        """The run as one flat row (see :meth:`ComparisonResult.to_frame` for the columns)."""
        out = {"target": self.target, "allocation": self.allocation_name,
               "method": method_label(self.method), "sparsity": self.achieved,
               "error": self.error, "prune_s": self.report.time_s, "cell_s": self.time_s}
        if self.evaluation is not None:
            out.update(self.evaluation.columns())
        return out


class ComparisonResult(KeyedResult):
    """The grid of :func:`compare_allocations`, keyed by ``(target, allocation, method)``.

    A read-only mapping ``{(target, allocation name, method label): PruneRun}`` in grid order,
    e.g. ``result[0.7, "alphapruning", "wanda"].evaluation.perplexity``.

    Attributes
    ----------
    runs : tuple of PruneRun
        One per cell (their ``model`` is ``None``).
    dense : PruningEvaluation
        The dense reference: its perplexity for a causal LM; for an encoder, cosine and
        nearest-neighbour agreement of 1.0 (the dense model compared with itself, by definition).
    dense_sparsity : float
        Fraction of zeros in the dense model's prunable matrices.
    spectrum : SpectrumReport or None
        The spectra the spectral allocations were computed from (``None`` without them).
    allocations : mapping
        ``{(target, allocation name): Allocation}`` of every non-uniform allocation of the grid.
    settings : Settings
        The options of the call (targets, methods, allocations, calibration, evaluation).
    time_s : float
        Wall-clock seconds of the whole call.
    """

    def __init__(self, runs, *, dense: PruningEvaluation, dense_sparsity: float, spectrum=None,
                 allocations: Mapping | None = None, settings: Mapping | None = None,
                 time_s: float = 0.0):
        runs = tuple(runs)
        by_key = {(r.target, r.allocation_name, method_label(r.method)): r for r in runs}
        if len(by_key) != len(runs):
            raise ValueError("the cells of a ComparisonResult must be unique.")
        self._init_result(by_key, settings)
        for name, value in (("runs", runs), ("dense", dense), ("dense_sparsity", dense_sparsity),
                            ("spectrum", spectrum), ("time_s", time_s)):
            object.__setattr__(self, name, value)
        from types import MappingProxyType

        object.__setattr__(self, "allocations", MappingProxyType(dict(allocations or {})))

    def __repr__(self) -> str:
        return (f"ComparisonResult(n_cells={len(self)}, kind={self.dense.kind!r}, "
                f"targets={list(self.settings.get('targets', []))}, time_s={self.time_s:.3g})")

    def to_frame(self, *, dense: bool = True):
        """One row per cell, indexed by ``(target, allocation, method)``.

        Parameters
        ----------
        dense : bool, default True
            Start with the dense reference row, indexed ``(0.0, "dense", "dense")``.

        Returns
        -------
        pandas.DataFrame
            ``sparsity`` (achieved parameter-weighted fraction of zeros in the prunable
            matrices), ``error`` (parameter-weighted mean relative reconstruction error on the
            calibration windows), ``prune_s`` (seconds in :func:`~specmetrics.prune`),
            ``cell_s`` (seconds for the whole cell: allocation, pruning, evaluation), then
            ``perplexity`` (causal LM) or ``cosine``, ``cosine_min``, ``nn_agreement`` (encoder).
        """
        import pandas as pd

        check_bool(dense, name="dense", func="ComparisonResult.to_frame")
        rows = [r.row() for r in self.runs]
        if dense:
            reference = {"target": 0.0, "allocation": "dense", "method": "dense",
                         "sparsity": self.dense_sparsity, "error": _NAN, "prune_s": _NAN,
                         "cell_s": _NAN}
            if self.dense.kind == "perplexity":
                reference["perplexity"] = self.dense.perplexity_dense
            else:
                reference.update(self.dense.columns())
            rows.insert(0, reference)
        return pd.DataFrame(rows).set_index(["target", "allocation", "method"])

    def plot(self, ax=None, *, metric: Optional[str] = None):
        """The evaluation metric by target, one line per (allocation, method).

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.experiments import plot_comparison

        return plot_comparison(self, ax, metric=metric)

    # -- JSON --------------------------------------------------------------------------------
    def _to_payload(self) -> Any:
        return {
            "dense": dataclasses.asdict(self.dense), "dense_sparsity": self.dense_sparsity,
            "time_s": self.time_s,
            "runs": [{"target": r.target, "allocation_name": r.allocation_name,
                      "report": {"settings": jsonable(r.report.settings),
                                 "data": r.report._to_payload()},
                      "allocation": None if r.allocation is None else {
                          "settings": jsonable(r.allocation.settings),
                          "data": r.allocation._to_payload()},
                      "evaluation": None if r.evaluation is None
                      else dataclasses.asdict(r.evaluation), "time_s": r.time_s}
                     for r in self.runs],
        }

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "ComparisonResult":
        from .._results import nan_if_none
        from ..pruning.report import PruneReport

        def evaluation(d):
            if d is None:
                return None
            return PruningEvaluation(**{k: (nan_if_none(v) if k in _EVAL_FLOATS else v)
                                        for k, v in d.items()})

        runs, allocations = [], {}
        for r in data["runs"]:
            report = PruneReport._from_payload(r["report"]["data"], r["report"]["settings"])
            alloc = None
            if r["allocation"] is not None:
                alloc = Allocation._from_payload(r["allocation"]["data"],
                                                 r["allocation"]["settings"])
                allocations[(r["target"], r["allocation_name"])] = alloc
            runs.append(PruneRun(target=r["target"], allocation_name=r["allocation_name"],
                                 allocation=alloc, method=report.method, report=report,
                                 evaluation=evaluation(r["evaluation"]), time_s=r["time_s"]))
        return cls(runs, dense=evaluation(data["dense"]),
                   dense_sparsity=nan_if_none(data["dense_sparsity"]), allocations=allocations,
                   settings=settings, time_s=data["time_s"])


_EVAL_FLOATS = {"perplexity_dense", "perplexity", "cosine", "cosine_min", "nn_agreement"}


# ----------------------------------------------------------------------------------------------
# helpers


def method_config(method="wanda", pattern: str = "unstructured"):
    """The config of a pruning method, by name, with a sparsity pattern.

    Parameters
    ----------
    method : str or config, default "wanda"
        A registered name (:data:`specmetrics.pruning.METHODS`) or a config (returned as is;
        ``pattern`` must then be ``"unstructured"`` or the config's own).
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``).

    Examples
    --------
    >>> from specmetrics.experiments import method_config
    >>> method_config("sparsegpt", "2:4").nm
    (2, 4)
    """
    return resolve_method(method, func="method_config", pattern=pattern)


def _allocator(name_or_config, func: str, name: str = "allocations"):
    """``(name, config)`` of an allocator given by name or config (``"alpha"`` is deprecated)."""
    if isinstance(name_or_config, str) and name_or_config == "alpha":
        warnings.warn("the allocation name 'alpha' is now 'alphapruning' (the name of "
                      "AlphaPruningConfig)", DeprecationWarning, stacklevel=4)
        name_or_config = "alphapruning"
    config = resolve_allocator(name_or_config, func=func, name=name)
    return config.name, config


def _fold_deprecated(allocate_options, epsilon, metric, units, func) -> dict:
    options = dict(allocate_options or {})
    for label, value in (("metric", metric), ("units", units)):
        if value is not None:
            warnings.warn(f"{func}({label}=...) is now allocate_options={{{label!r}: ...}}",
                          DeprecationWarning, stacklevel=3)
            options[label] = value
    if epsilon is not None:
        warnings.warn(f"{func}(epsilon=...) is now allocations=(AlphaPruningConfig(epsilon=...),)",
                      DeprecationWarning, stacklevel=3)
    for bad in ("method", "include", "n_params"):
        if bad in options:
            raise fail("allocate_options", func, f"free of {bad!r} (the allocator is chosen by "
                       "'allocations')", sorted(options))
    return options


def _with_epsilon(config, epsilon):
    if epsilon is None or not hasattr(config, "epsilon"):
        return config
    return dataclasses.replace(config, epsilon=epsilon)


class _Inputs:
    """What the allocators of a grid need, computed once: spectra, OWL's activation norms."""

    def __init__(self, model, *, spectrum, calib, device, progress, func):
        self.model, self.spectrum, self.calib = model, spectrum, calib
        self.device, self.progress, self.func = device, progress, func
        self._norms = None
        self._probes: dict = {}
        self._farms: dict = {}

    def probe(self, config, target):
        """The block-sensitivity probe of a self-checking allocator (alphaprobe), once per
        set of ratios."""
        from .probe import block_sensitivity

        if self.calib is None:
            raise fail("calibration", self.func, f"given for the {config.name!r} allocation "
                       "(its probe measures the calibration loss)", None)
        ratios = config.probe_ratios_for(target)
        key = (ratios, config.probe_nsamples)
        if key not in self._probes:
            self._probes[key] = block_sensitivity(
                self.model, None, self.calib, ratios, nsamples=min(config.probe_nsamples,
                                                                   self.calib.nsamples),
                progress=self.progress)
        return self._probes[key]

    def spectra(self) -> SpectrumReport:
        if self.spectrum is None:
            self.spectrum = esd(self.model, progress=self.progress)
        return self.spectrum

    def norms(self):
        if self._norms is None:
            if self.calib is None:
                raise fail("calibration", self.func, "given for the OWL allocation (its outlier "
                           "scores come from calibration activations)", None)
            self._norms = calibration_input_norms(self.model, None, self.calib, device=self.device,
                                                  progress=self.progress)
        return self._norms

    def allocate_farms(self, config, target, options) -> Allocation:
        """A spectral allocation on FARMS alphas, computed from the weights once per grid
        (the later targets reuse them as a scores mapping)."""
        farms = resolve_farms_metric(options["metric"])
        if farms not in self._farms:
            alloc = allocate(self.model, target, method=config, **options)
            self._farms[farms] = ({m.name: m.metric for m in alloc.matrices},
                                  {m.name: m.n_params for m in alloc.matrices},
                                  alloc.settings.get("metric_options"))
            return alloc
        values, counts, recorded = self._farms[farms]
        alloc = allocate(values, target, method=config, n_params=counts,
                         **{**options, "metric": farms.label})
        return Allocation(matrices=alloc.matrices, target=alloc.target,
                          settings={**alloc.settings, "metric_options": recorded})

    def search(self, config, target, options):
        """ATP's step chosen by :func:`~specmetrics.experiments.atp_search` on the grid's
        calibration windows."""
        from .atp_search import atp_search

        if self.calib is None:
            raise fail("calibration", self.func, f"given for the {config.name!r} allocation "
                       "(its step is chosen by the calibration loss)", None)
        return atp_search(self.model, None, self.calib, target, config=config,
                          allocate_options=options, device=self.device,
                          progress=self.progress).config

    def allocate(self, config, target, options) -> Allocation:
        needs = getattr(config, "inputs", "spectrum")
        if getattr(config, "needs_probe", False) and config.sensitivity is None:
            config = dataclasses.replace(config, sensitivity=self.probe(config, target))
        if getattr(config, "needs_search", False) and config.step is None:
            config = self.search(config, target, options)
        if needs == "spectrum" and resolve_farms_metric(options.get("metric")) is not None:
            return self.allocate_farms(config, target, options)
        if needs is None:  # no scores (a depth trend): no spectra to compute
            return allocate(self.model, target, method=config, **options)
        if needs == "activations":
            config = dataclasses.replace(config, calibration=self.norms())
            return allocate(self.model, target, method=config, **options)
        if needs == "model":
            return allocate(self.model, target, method=config, calibration=self.calib,
                            **options)
        return allocate(self.spectra(), target, method=config, **options)


def _dense_sparsity(model) -> float:
    layout = find_blocks(model, func="compare_allocations")
    zeros = total = 0
    for pm in layout.modules.values():
        weight = pm.module.weight
        zeros += int((weight == 0).sum())
        total += weight.numel()
    return zeros / total if total else _NAN


def _as_tuple(values, name: str, func: str) -> tuple:
    if isinstance(values, (str, float, int)) or not isinstance(values, Sequence) or not values:
        raise fail(name, func, "a non-empty sequence", values)
    return tuple(values)


# ----------------------------------------------------------------------------------------------
# one run


def prune_and_evaluate(model, tokenizer, target, *, method="wanda", allocation="uniform",
                       allocate_options=None, spectrum=None, calibration=None, eval_texts=None,
                       nsamples=None, seqlen=None, seed=0, k=5, max_windows=None, inplace=False,
                       device=None, progress=False, epsilon=None, metric=None,
                       units=None) -> PruneRun:
    """Prune a model with a uniform or score-based allocation and evaluate it.

    Allocation (:func:`~specmetrics.allocate`), pruning (:func:`~specmetrics.prune`) and
    evaluation against the dense model (:func:`evaluate_pruned`) in one call.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face causal LM or BERT-style encoder (see :func:`~specmetrics.prune`).
    tokenizer : Hugging Face tokenizer
        For text calibration and evaluation.
    target : float or None
        Parameter-weighted mean sparsity in [0, 1). ``None`` means N/M with an N:M pattern, and
        the allocation's own target with an :class:`~specmetrics.Allocation`.
    method : str or config, default "wanda"
        A pruning method name or config (see :func:`method_config` for N:M patterns).
    allocation : str, allocator config or Allocation, default "uniform"
        ``"uniform"``: every prunable matrix at ``target``; an allocator name (``"alphapruning"``,
        ``"owl"``, ...) or config; or ratios computed beforehand (N:M patterns take
        ``"uniform"`` only).
    allocate_options : mapping, optional
        Keyword arguments for :func:`~specmetrics.allocate` (``metric``, ``units``, ``clip``...).
    spectrum : SpectrumReport, optional
        Spectra of ``model`` computed beforehand (else :func:`~specmetrics.esd` runs here when
        the allocation needs them).
    calibration : str, pathlib.Path, list of str, tensor or CalibrationSet, optional
        Calibration data for :func:`~specmetrics.prune` (required by Wanda and SparseGPT).
    eval_texts : str, pathlib.Path or sequence of str, optional
        Held-out text for :func:`evaluate_pruned`; no evaluation without it.
    nsamples : int, optional
        Calibration windows: 128 by default, every row of a ``CalibrationSet`` or token-window
        tensor.
    seqlen : int, optional
        Tokens per calibration window and per perplexity window; default the model's maximum
        positions capped at 2048.
    seed : int, default 0
        Seed of the calibration window draw.
    k : int, default 5
        Neighbours per text for the encoder's nearest-neighbour agreement.
    max_windows : int, optional
        Score only the first ``max_windows`` perplexity windows (causal LM; all by default).
    inplace : bool, default False
        ``False``: prune a deep copy and leave ``model`` dense. ``True``: prune ``model`` itself
        (a causal LM's dense perplexity is measured first; an encoder still needs a dense copy
        for the comparison, kept only during the evaluation).
    device : str or torch.device, optional
        Where each block is pruned (see :func:`~specmetrics.prune`).
    progress : bool, default False
        Progress bars (spectra, pruning, perplexity).
    epsilon, metric, units : deprecated
        Use ``allocation=AlphaPruningConfig(epsilon=...)`` and ``allocate_options``.

    Returns
    -------
    PruneRun
        With the pruned model in ``model``.

    Raises
    ------
    ParameterError
        For bad options, found before any weight changes.
    """
    func = "prune_and_evaluate"
    started = time.perf_counter()
    config = resolve_method(method, func=func)
    options = _fold_deprecated(allocate_options, epsilon, metric, units, func)
    if isinstance(allocation, Allocation):
        name, allocator = "given", None
    else:
        name, allocator = _allocator(allocation, func, name="allocation")
        allocator = _with_epsilon(allocator, epsilon)
    target = _check_target(target, config, allocation, name, func)
    inplace = check_bool(inplace, name="inplace", func=func)
    progress = check_bool(progress, name="progress", func=func)
    device = check_device(device, func=func)
    if calibration is None and config.needs_calibration:
        raise fail("calibration", func, f"given for {type(config).__name__} (a text, a "
                   "pathlib.Path of a text file, a list of texts or a tensor of token ids)", None)
    calib = None if calibration is None else calibration_set(
        model, calibration, tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen, seed=seed,
        func=func)
    held_out = None if eval_texts is None else EvalText(
        model, tokenizer, eval_texts, seqlen=seqlen, k=k, max_windows=max_windows, func=func)

    if name == "given":
        alloc, sparsity = allocation, allocation
    elif isinstance(allocator, UniformConfig):
        alloc, sparsity = None, (None if config.nm is not None else target)
    else:
        inputs = _Inputs(model, spectrum=spectrum, calib=calib, device=device, progress=progress,
                         func=func)
        alloc = sparsity = inputs.allocate(allocator, target, options)

    dense, dense_ppl = model, None
    if inplace:
        if held_out is not None and held_out.causal:
            dense_ppl = held_out.perplexity(model, progress=progress)
        elif held_out is not None:
            dense = copy.deepcopy(model)
        pruned = model
    else:
        pruned = copy.deepcopy(model)
    report = prune(pruned, sparsity, method=config, calibration=calib, tokenizer=tokenizer,
                   device=device, progress=progress)
    evaluation = None if held_out is None else held_out.compare(dense, pruned,
                                                                dense_ppl=dense_ppl,
                                                                progress=progress)
    return PruneRun(target=target, allocation_name=name, allocation=alloc, method=config,
                    report=report, evaluation=evaluation, model=pruned,
                    time_s=time.perf_counter() - started)


def _check_target(target, config, allocation, name: str, func: str) -> float:
    nm = config.nm
    if name == "given":
        if target is None:
            target = allocation.target
        elif not math.isclose(float(target), allocation.target, rel_tol=0.0, abs_tol=1e-9):
            raise fail("target", func, f"None or the given allocation's target "
                       f"{allocation.target!r}", target)
    if target is None:
        if nm is None:
            raise fail("target", func, "a float in [0, 1) (None only with an N:M pattern)", None)
        target = nm[0] / nm[1]
    target = check_interval(target, 0, 1, name="target", func=func, closed="left")
    if nm is not None:
        if name != "uniform":
            raise fail("allocation", func, f"'uniform' with the N:M pattern {config.pattern!r} "
                       "(every matrix gets N/M)", name)
        if not math.isclose(target, nm[0] / nm[1], rel_tol=0.0, abs_tol=1e-9):
            raise fail("target", func, f"{nm[0] / nm[1]:g} (N/M) with the N:M pattern "
                       f"{config.pattern!r}", target)
    return target


# ----------------------------------------------------------------------------------------------
# the grid


def compare_allocations(model, tokenizer, *, targets=(0.5, 0.7),
                        methods=("magnitude", "wanda", "sparsegpt"),
                        allocations=("uniform", "alphapruning"), allocate_options=None,
                        spectrum=None, calibration=None, eval_texts=None, nsamples=None,
                        seqlen=None, seed=0, k=5, max_windows=None, device=None, progress=False,
                        epsilon=None, metric=None, units=None) -> ComparisonResult:
    """Allocators × pruning methods × targets, each cell pruned from the dense model and
    evaluated.

    The spectra (:func:`~specmetrics.esd`), OWL's activation statistics and each (target,
    allocator) allocation are computed once, the calibration windows are drawn once (the same
    windows for every cell) and the held-out text is tokenised once; then every cell deep-copies
    the dense model, prunes the copy (:func:`~specmetrics.prune`) and compares it with the dense
    model (perplexity for a causal LM, embedding fidelity for an encoder). ``model`` is left
    unchanged and no pruned model is kept.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face causal LM or BERT-style encoder.
    tokenizer : Hugging Face tokenizer
    targets : sequence of float, default (0.5, 0.7)
        Mean sparsities, each in [0, 1).
    methods : sequence of str or configs, default ("magnitude", "wanda", "sparsegpt")
        Unstructured pruning methods (registered names or configs).
    allocations : sequence of str or allocator configs, default ("uniform", "alphapruning")
        Allocator names (``"uniform"``, ``"alphapruning"``, ``"owl"``, ...) or configs
        (``AlphaPruningConfig(epsilon=0.3)``); names must be distinct.
    allocate_options : mapping, optional
        Keyword arguments for every :func:`~specmetrics.allocate` call (``metric``, ``units``,
        ``clip``, ...).
    spectrum : SpectrumReport, optional
        Spectra of ``model`` computed beforehand.
    calibration : str, pathlib.Path, list of str, tensor or CalibrationSet
        Calibration data (required by Wanda and SparseGPT and the OWL allocation).
    eval_texts : str, pathlib.Path or sequence of str
        Held-out text (see :func:`evaluate_pruned`).
    nsamples : int, optional
        Calibration windows: 128 by default, every row of a ``CalibrationSet`` or token-window
        tensor.
    seqlen : int, optional
        Tokens per calibration and perplexity window; default the model's maximum positions
        capped at 2048.
    seed : int, default 0
        Seed of the calibration window draw.
    k : int, default 5
        Neighbours per text (encoders).
    max_windows : int, optional
        Score only the first ``max_windows`` perplexity windows (causal LMs; all by default).
    device : str or torch.device, optional
        Where each block is pruned.
    progress : bool, default False
        Progress bars: spectra, then one bar over the cells (and per block inside each cell).
    epsilon, metric, units : deprecated
        Use ``allocations=(..., AlphaPruningConfig(epsilon=...))`` and ``allocate_options``.

    Returns
    -------
    ComparisonResult
        ``{(target, allocation, method): PruneRun}`` with ``to_frame()``; ``dense`` holds the
        reference.

    Raises
    ------
    ParameterError
        For bad options, found before any pruning.
    """
    func = "compare_allocations"
    started = time.perf_counter()
    targets = tuple(check_interval(t, 0, 1, name="targets", func=func, closed="left")
                    for t in _as_tuple(targets, "targets", func))
    if len(set(targets)) != len(targets):
        raise fail("targets", func, "a sequence without repeats", targets)
    configs = tuple(resolve_method(m, func=func) for m in _as_tuple(methods, "methods", func))
    if any(c.nm is not None for c in configs):
        raise fail("methods", func, "unstructured methods (an N:M pattern takes no allocation)",
                   methods)
    if len({c.name for c in configs}) != len(configs):
        raise fail("methods", func, "one config per method", methods)
    options = _fold_deprecated(allocate_options, epsilon, metric, units, func)
    allocators = [_allocator(a, func) for a in _as_tuple(allocations, "allocations", func)]
    allocators = [(n, _with_epsilon(c, epsilon)) for n, c in allocators]
    if len({n for n, _ in allocators}) != len(allocators):
        raise fail("allocations", func, "allocators with distinct names", allocations)
    progress = check_bool(progress, name="progress", func=func)
    device = check_device(device, func=func)
    if spectrum is not None and not isinstance(spectrum, SpectrumReport):
        raise fail("spectrum", func, "None or a SpectrumReport of the model",
                   type(spectrum).__name__)
    if eval_texts is None:
        raise fail("eval_texts", func, "given (the held-out text to evaluate on)", None)
    held_out = EvalText(model, tokenizer, eval_texts, seqlen=seqlen, k=k,
                        max_windows=max_windows, func=func)
    calib = None
    if calibration is not None:
        calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                                seqlen=seqlen, seed=seed, func=func)
    elif any(c.needs_calibration for c in configs):
        raise fail("calibration", func, "given for Wanda and SparseGPT (a text, a pathlib.Path of "
                   "a text file, a list of texts or a tensor of token ids)", None)
    for name, allocator in allocators:
        if (getattr(allocator, "inputs", None) in ("activations", "model")
                or getattr(allocator, "needs_probe", False)
                or (getattr(allocator, "needs_search", False) and allocator.step is None)) \
                and calib is None:
            raise fail("calibration", func, f"given for the {name!r} allocation (it is computed "
                       "from calibration activations)", None)

    dense = held_out.dense(model, progress=progress)
    inputs = _Inputs(model, spectrum=spectrum, calib=calib, device=device, progress=progress,
                     func=func)
    allocations_out: dict = {}
    for target in targets:
        for name, allocator in allocators:
            if not isinstance(allocator, UniformConfig):
                allocations_out[(target, name)] = inputs.allocate(allocator, target, options)

    from tqdm.auto import tqdm

    cells = [(t, n, c) for t in targets for n, _ in allocators for c in configs]
    runs = []
    bar = tqdm(cells, desc=func, unit="cell", disable=not progress)
    try:
        for target, name, config in bar:
            bar.set_postfix_str(f"{target:g} {name} {config.name}")
            cell_started = time.perf_counter()
            alloc = allocations_out.get((target, name))
            pruned = copy.deepcopy(model)
            report = prune(pruned, target if alloc is None else alloc, method=config,
                           calibration=calib, tokenizer=tokenizer, device=device,
                           progress=progress)
            evaluation = held_out.compare(model, pruned, dense_ppl=dense.perplexity_dense
                                          if held_out.causal else None)
            del pruned
            run = PruneRun(target=target, allocation_name=name, allocation=alloc, method=config,
                           report=report, evaluation=evaluation,
                           time_s=time.perf_counter() - cell_started)
            logger.info("cell %g / %s / %s: %s", target, name, config.name, run.row())
            runs.append(run)
    finally:
        bar.close()

    settings = {
        "targets": list(targets),
        "methods": [method_label(c) for c in configs],
        "allocations": {n: jsonable(c) for n, c in allocators},
        "allocate_options": jsonable(options),
        "calibration": None if calib is None else calib.settings(),
        "evaluation": dense.kind,
        "n_texts": dense.n_texts,
        "k": held_out.k,
        "seqlen": held_out.seqlen,
    }
    return ComparisonResult(runs, dense=dense, dense_sparsity=_dense_sparsity(model),
                            spectrum=inputs.spectrum, allocations=allocations_out,
                            settings=settings, time_s=time.perf_counter() - started)
