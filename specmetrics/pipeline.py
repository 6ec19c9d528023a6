"""The main job as functions: spectra → allocation → pruning → evaluation.

Plumbing over the public functions only (:func:`~specmetrics.esd`,
:func:`~specmetrics.allocate`, :func:`~specmetrics.prune`, :func:`~specmetrics.perplexity`,
:func:`~specmetrics.embedding_fidelity`):

- :func:`prune_and_evaluate`: one pruning run (an allocation, a method, a target) and its
  evaluation against the dense model: perplexity for a causal LM, embedding fidelity for an
  encoder.
- :func:`compare_allocations`: the grid of the main job, uniform vs spectrum-guided
  (AlphaPruning) allocation × pruning methods × targets, each cell pruned from a fresh copy of
  the dense model; the spectra and the calibration windows are computed once.
- :func:`load_model`: a Hugging Face model and its tokenizer, with the right ``Auto`` class.

transformers is imported only where a model is loaded.
"""
from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional

from torch import nn

from ._checks import check_choice, check_interval, check_positive_int, fail

__all__ = [
    "ALLOCATIONS",
    "METHODS",
    "PruningEvaluation",
    "PruneRun",
    "ComparisonResult",
    "compare_allocations",
    "prune_and_evaluate",
    "evaluate_pruned",
    "method_config",
    "is_causal_lm",
    "load_model",
]

logger = logging.getLogger(__name__)

#: Allocation names understood by :func:`prune_and_evaluate` and :func:`compare_allocations`.
ALLOCATIONS = ("uniform", "alpha")
#: Pruning method names (each maps to the config of the same name).
METHODS = ("magnitude", "wanda", "sparsegpt")
_KINDS = ("perplexity", "fidelity")
_NAN = math.nan


# ----------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class PruningEvaluation:
    """How a pruned model compares with its dense original.

    Attributes
    ----------
    kind : {"perplexity", "fidelity"}
        ``"perplexity"`` for a causal LM (:func:`~specmetrics.perplexity` of both models on the
        same text), ``"fidelity"`` for an encoder (:func:`~specmetrics.embedding_fidelity`).
    perplexity_dense, perplexity : float
        Perplexity of the dense and of the pruned model (NaN for ``"fidelity"``).
    cosine, cosine_min, nn_agreement : float
        Mean and smallest cosine similarity between each text's dense and pruned embedding, and
        the nearest-neighbour agreement at ``k`` (NaN for ``"perplexity"``).
    n_texts : int
        Texts embedded (``"fidelity"``) or windows scored (``"perplexity"``).
    seqlen : int or None
        Perplexity window length (``None`` for ``"fidelity"``).
    k : int or None
        Neighbours per text (``None`` for ``"perplexity"``).
    """

    kind: str
    perplexity_dense: float = _NAN
    perplexity: float = _NAN
    cosine: float = _NAN
    cosine_min: float = _NAN
    nn_agreement: float = _NAN
    n_texts: int = 0
    seqlen: Optional[int] = None
    k: Optional[int] = None

    def summary(self) -> dict[str, Any]:
        """The numbers that apply to ``kind``, as a plain dict."""
        if self.kind == "perplexity":
            return {"perplexity_dense": self.perplexity_dense, "perplexity": self.perplexity,
                    "n_windows": self.n_texts, "seqlen": self.seqlen}
        return {"cosine": self.cosine, "cosine_min": self.cosine_min,
                "nn_agreement": self.nn_agreement, "k": self.k, "n_texts": self.n_texts}


@dataclass(frozen=True)
class PruneRun:
    """One pruning run of :func:`prune_and_evaluate`, or one cell of :func:`compare_allocations`.

    Attributes
    ----------
    target : float
        The requested parameter-weighted mean sparsity.
    allocation_name : str
        ``"uniform"``, ``"alpha"`` or ``"given"`` (an :class:`~specmetrics.Allocation` passed in).
    allocation : Allocation or None
        The per-matrix ratios used (``None`` for a uniform ratio).
    method : MagnitudeConfig, WandaConfig or SparseGPTConfig
        The pruning method.
    report : PruneReport
        What :func:`~specmetrics.prune` did to each matrix.
    evaluation : PruningEvaluation or None
        The comparison with the dense model (``None`` without evaluation texts).
    model : torch.nn.Module or None
        The pruned model (``None`` in the cells of :func:`compare_allocations`, which keep no
        models).
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
        """The run as one flat row (used by :meth:`ComparisonResult.to_frame`)."""
        out = {"target": self.target, "allocation": self.allocation_name,
               "method": _method_label(self.method), "sparsity": self.achieved,
               "error": self.error, "prune_s": self.report.time_s}
        if self.evaluation is not None:
            out.update(_eval_columns(self.evaluation))
        return out


def _eval_columns(evaluation: PruningEvaluation) -> dict[str, float]:
    if evaluation.kind == "perplexity":
        return {"perplexity": evaluation.perplexity}
    return {"cosine": evaluation.cosine, "cosine_min": evaluation.cosine_min,
            "nn_agreement": evaluation.nn_agreement}


def _method_label(config) -> str:
    pattern = getattr(config, "pattern", "unstructured")
    return config.name if pattern == "unstructured" else f"{config.name} {pattern}"


@dataclass(frozen=True, eq=False)
class ComparisonResult(Mapping):
    """The grid of :func:`compare_allocations`, keyed by ``(target, allocation, method)``.

    A read-only mapping ``{(target, allocation name, method name): PruneRun}`` in grid order,
    e.g. ``result[0.7, "alpha", "wanda"].evaluation.cosine``.

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
        The spectra the alpha allocations were computed from (``None`` without them).
    allocations : mapping
        ``{target: Allocation}`` of the alpha allocations.
    settings : mapping
        The options of the call (epsilon, metric, units, calibration, evaluation), JSON-able.
    time_s : float
        Wall-clock seconds of the whole call.
    """

    runs: tuple
    dense: PruningEvaluation
    dense_sparsity: float
    spectrum: Any
    allocations: Mapping
    settings: Mapping
    time_s: float = 0.0
    _by_key: Mapping = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "runs", tuple(self.runs))
        by_key = {(r.target, r.allocation_name, r.method.name): r for r in self.runs}
        if len(by_key) != len(self.runs):
            raise ValueError("the cells of a ComparisonResult must be unique.")
        object.__setattr__(self, "_by_key", MappingProxyType(by_key))
        object.__setattr__(self, "allocations", MappingProxyType(dict(self.allocations)))
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))

    def __getitem__(self, key) -> PruneRun:
        return self._by_key[key]

    def __iter__(self):
        return iter(self._by_key)

    def __len__(self) -> int:
        return len(self._by_key)

    def __repr__(self) -> str:
        return (f"ComparisonResult(n_cells={len(self)}, kind={self.dense.kind!r}, "
                f"targets={list(self.settings.get('targets', []))}, "
                f"time_s={self.time_s:.3g})")

    def to_frame(self, *, dense: bool = True):
        """One row per cell, indexed by ``(target, allocation, method)``.

        Parameters
        ----------
        dense : bool, default True
            Start with the dense reference row, indexed ``(0.0, "dense", "dense")``.

        Returns
        -------
        pandas.DataFrame
            Columns ``sparsity`` (achieved), ``error`` (parameter-weighted mean relative
            reconstruction error), ``prune_s`` (seconds in :func:`~specmetrics.prune`), then
            ``perplexity`` (causal LM) or ``cosine``, ``cosine_min``, ``nn_agreement`` (encoder).
        """
        import pandas as pd

        rows = [r.row() for r in self.runs]
        if dense:
            reference = {"target": 0.0, "allocation": "dense", "method": "dense",
                         "sparsity": self.dense_sparsity, "error": _NAN, "prune_s": _NAN}
            if self.dense.kind == "perplexity":
                reference["perplexity"] = self.dense.perplexity_dense
            else:
                reference.update(_eval_columns(self.dense))
            rows.insert(0, reference)
        return pd.DataFrame(rows).set_index(["target", "allocation", "method"])


# ----------------------------------------------------------------------------------------------
# small public helpers


def method_config(method="wanda", pattern: str = "unstructured"):
    """The config of a pruning method, by name, with a sparsity pattern.

    Parameters
    ----------
    method : {"magnitude", "wanda", "sparsegpt"} or config, default "wanda"
        A name, or a :class:`~specmetrics.MagnitudeConfig` / :class:`~specmetrics.WandaConfig` /
        :class:`~specmetrics.SparseGPTConfig` (returned as is; ``pattern`` must then be
        ``"unstructured"`` or the config's own).
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (e.g. ``"2:4"``).

    Returns
    -------
    MagnitudeConfig, WandaConfig or SparseGPTConfig

    Examples
    --------
    >>> from specmetrics.pipeline import method_config
    >>> method_config("sparsegpt", "2:4").nm
    (2, 4)
    """
    from .pruning import MagnitudeConfig, SparseGPTConfig, WandaConfig

    configs = {"magnitude": MagnitudeConfig, "wanda": WandaConfig, "sparsegpt": SparseGPTConfig}
    if isinstance(method, tuple(configs.values())):
        if pattern not in ("unstructured", method.pattern):
            raise fail("pattern", "method_config", f"'unstructured' or {method.pattern!r} (the "
                       "config's own) when method is a config", pattern)
        return method
    check_choice(method, METHODS, name="method", func="method_config")
    return configs[method](pattern=pattern)


def is_causal_lm(model: nn.Module) -> bool:
    """Whether ``model`` is a causal language model (evaluated by perplexity) rather than an
    encoder (evaluated by embedding fidelity).

    A Hugging Face model class registered for causal language modelling (``LlamaForCausalLM``,
    ``GPT2LMHeadModel``, ...) or named ``*ForCausalLM`` / ``*LMHeadModel``.
    """
    name = type(model).__name__
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is an optional extra
        registered = set()
    else:
        registered = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return name in registered or name.endswith(("ForCausalLM", "LMHeadModel"))


def _config_is_causal(config) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in architectures)
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = getattr(config, "model_type", None)
    return (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def load_model(source, *, dtype=None):
    """A Hugging Face model and its tokenizer, from a hub id or a local folder.

    ``AutoModelForCausalLM`` when the config describes a causal LM (its ``architectures`` name a
    ``*ForCausalLM`` / ``*LMHeadModel`` class, or, without ``architectures``, its model type is a
    decoder-only one), else ``AutoModel`` (an encoder such as BERT / MiniLM). The tokenizer is
    ``AutoTokenizer`` from the same source.

    Parameters
    ----------
    source : str or path
        Hub id or folder with ``config.json``, the weights and the tokenizer files.
    dtype : torch.dtype, optional
        Load the weights in this dtype (default: as stored / float32).

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on the CPU.
    tokenizer : transformers tokenizer
    """
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer

    source = os.fspath(source)
    config = AutoConfig.from_pretrained(source)
    auto = AutoModelForCausalLM if _config_is_causal(config) else AutoModel
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = auto.from_pretrained(source, **kwargs)
    tokenizer = AutoTokenizer.from_pretrained(source)
    logger.info("loaded %s (%s) from %s", type(model).__name__, auto.__name__, source)
    return model.eval(), tokenizer


# ----------------------------------------------------------------------------------------------
# evaluation


def _read_eval_text(texts, func: str):
    """A str, the text of a file (os.PathLike), or a list of str."""
    if isinstance(texts, os.PathLike):
        path = os.fspath(texts)
        if not os.path.isfile(path):
            raise fail("eval_texts", func, "a text, a list of texts or the path of a text file",
                       path)
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    if isinstance(texts, str):
        return texts
    if isinstance(texts, Sequence) and texts and all(isinstance(t, str) for t in texts):
        return list(texts)
    raise fail("eval_texts", func, "a text, a non-empty list of texts or the os.PathLike of a "
               "text file", texts if not isinstance(texts, Sequence) else type(texts).__name__)


def _paragraphs(text: str) -> list[str]:
    return [p.strip() for p in text.replace("\r\n", "\n").split("\n\n") if p.strip()]


def _eval_seqlen(model, seqlen, func: str) -> int:
    from .pruning.calibration import default_seqlen

    return default_seqlen(model, func=func) if seqlen is None else seqlen


def evaluate_pruned(dense: nn.Module, pruned: nn.Module, tokenizer, texts, *, seqlen=None, k=5,
                    max_windows=None, progress=False) -> PruningEvaluation:
    """Compare a pruned model with its dense original on held-out text.

    A causal LM (:func:`is_causal_lm`) is scored by :func:`~specmetrics.perplexity` (both models,
    the same non-overlapping windows); an encoder by :func:`~specmetrics.embedding_fidelity`
    (mean-pooled sentence embeddings: cosine similarity and nearest-neighbour agreement).

    Parameters
    ----------
    dense, pruned : torch.nn.Module
        The original and the pruned model (same architecture and tokenizer); neither is changed.
    tokenizer : Hugging Face tokenizer
    texts : str, os.PathLike or sequence of str
        The held-out text. Causal LM: a text, a file, or texts joined with ``"\\n\\n"``.
        Encoder: a list of texts, or a text / file split into paragraphs at blank lines.
    seqlen : int, optional
        Perplexity window; default the model's maximum positions capped at 2048.
    k : int, default 5
        Neighbours per text for the nearest-neighbour agreement.
    max_windows : int, optional
        Score only the first ``max_windows`` perplexity windows (all by default).
    progress : bool, default False
        Progress bars over the perplexity windows.

    Returns
    -------
    PruningEvaluation
    """
    return _evaluate(dense, pruned, tokenizer, texts, seqlen=seqlen, k=k, max_windows=max_windows,
                     progress=progress, dense_ppl=None, func="evaluate_pruned")


def _perplexity_inputs(model, tokenizer, texts, seqlen, func):
    """(token ids, window length) of the held-out text, tokenised once for every model."""
    from .evaluation.perplexity import tokenize_text

    text = "\n\n".join(texts) if isinstance(texts, list) else texts
    return tokenize_text(tokenizer, text, func=func), _eval_seqlen(model, seqlen, func)


def _dense_perplexity(model, tokenizer, texts, *, seqlen, max_windows, progress, func) -> float:
    from .evaluation import perplexity

    ids, window = _perplexity_inputs(model, tokenizer, texts, seqlen, func)
    return perplexity(model, None, ids, seqlen=window, max_windows=max_windows, progress=progress)


def _evaluate(dense, pruned, tokenizer, texts, *, seqlen, k, progress, dense_ppl, func,
              max_windows=None) -> PruningEvaluation:
    from .evaluation import embedding_fidelity, perplexity

    texts = _read_eval_text(texts, func)
    if is_causal_lm(dense):
        ids, window = _perplexity_inputs(dense, tokenizer, texts, seqlen, func)
        options = dict(seqlen=window, max_windows=max_windows, progress=progress)
        if dense_ppl is None:
            dense_ppl = perplexity(dense, None, ids, **options)
        ppl = perplexity(pruned, None, ids, **options)
        n_windows = int(ids.numel()) // window
        return PruningEvaluation("perplexity", perplexity_dense=dense_ppl, perplexity=ppl,
                                 n_texts=n_windows if max_windows is None
                                 else min(n_windows, max_windows), seqlen=window)
    paragraphs = texts if isinstance(texts, list) else _paragraphs(texts)
    result = embedding_fidelity(dense, pruned, tokenizer, paragraphs, k=k)
    return PruningEvaluation("fidelity", cosine=result.cosine, cosine_min=result.cosine_min,
                             nn_agreement=result.nn_agreement, n_texts=result.n_texts, k=result.k)


# ----------------------------------------------------------------------------------------------
# one run


def _check_allocation(allocation, func: str) -> str:
    from .allocation import Allocation

    if isinstance(allocation, Allocation):
        return "given"
    check_choice(allocation, ALLOCATIONS, name="allocation", func=func)
    return allocation


def _check_target(target, config, allocation, allocation_name, func: str) -> float:
    nm = config.nm
    if allocation_name == "given":
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
        if allocation_name != "uniform":
            raise fail("allocation", func, f"'uniform' with the N:M pattern {config.pattern!r} "
                       "(every matrix gets N/M)", allocation_name)
        if not math.isclose(target, nm[0] / nm[1], rel_tol=0.0, abs_tol=1e-9):
            raise fail("target", func, f"{nm[0] / nm[1]:g} (N/M) with the N:M pattern "
                       f"{config.pattern!r}", target)
    return target


def _alpha_allocation(source, target, *, epsilon, metric, units, progress):
    from .allocation import AlphaPruningConfig, allocate
    from .report import SpectrumReport

    options = {} if isinstance(source, SpectrumReport) else {"esd_options": {"progress": progress}}
    return allocate(source, target, method=AlphaPruningConfig(epsilon=epsilon), metric=metric,
                    units=units, **options)


def prune_and_evaluate(model, tokenizer, target, *, method="wanda", allocation="uniform",
                       epsilon=0.2, metric="alpha_peak", units="block", spectrum=None,
                       calibration=None, eval_texts=None, nsamples=128, seqlen=None, seed=0, k=5,
                       max_windows=None, inplace=False, device=None, progress=False) -> PruneRun:
    """Prune a model with a uniform or spectrum-guided allocation and evaluate it.

    Allocation (:func:`~specmetrics.allocate` with
    :class:`~specmetrics.AlphaPruningConfig` for ``"alpha"``), pruning
    (:func:`~specmetrics.prune`) and evaluation against the dense model
    (:func:`evaluate_pruned`) in one call.

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
        ``"magnitude"``, ``"wanda"``, ``"sparsegpt"`` or a method config (see
        :func:`method_config` for N:M patterns).
    allocation : {"uniform", "alpha"} or Allocation, default "uniform"
        ``"uniform"``: every prunable matrix at ``target``; ``"alpha"``: AlphaPruning ratios
        from the spectra (N:M patterns take ``"uniform"`` only); or ratios computed beforehand.
    epsilon : float, default 0.2
        AlphaPruning's half-width of the ratio band.
    metric : str, default "alpha_peak"
        Per-matrix spectral metric of the alpha allocation.
    units : {"block", "matrix", "split"}, default "block"
        What gets one ratio in the alpha allocation.
    spectrum : SpectrumReport, optional
        Spectra of ``model`` computed beforehand (else :func:`~specmetrics.esd` runs here when
        the alpha allocation needs them).
    calibration : str, path, list of str, tensor or CalibrationSet, optional
        Calibration data for :func:`~specmetrics.prune` (required by Wanda and SparseGPT).
    eval_texts : str, os.PathLike or sequence of str, optional
        Held-out text for :func:`evaluate_pruned`; no evaluation without it.
    nsamples : int, default 128
        Calibration windows.
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
    config = method_config(method)
    allocation_name = _check_allocation(allocation, func)
    target = _check_target(target, config, allocation, allocation_name, func)
    check_choice(inplace, (False, True), name="inplace", func=func)
    if calibration is None and config.needs_calibration:
        raise fail("calibration", func, f"given for {type(config).__name__} (a text file, a list "
                   "of texts or a tensor of token ids)", None)
    if max_windows is not None:
        check_positive_int(max_windows, name="max_windows", func=func)
    if eval_texts is not None:
        eval_texts = _read_eval_text(eval_texts, func)
    return _run(model, tokenizer, target, config=config, allocation=allocation,
                allocation_name=allocation_name, epsilon=epsilon, metric=metric, units=units,
                spectrum=spectrum, calibration=calibration, eval_texts=eval_texts,
                nsamples=nsamples, seqlen=seqlen, seed=seed, k=k, inplace=inplace, device=device,
                progress=progress, keep_model=True, dense_ppl=None, alloc=None,
                max_windows=max_windows, started=started)


def _run(model, tokenizer, target, *, config, allocation, allocation_name, epsilon, metric, units,
         spectrum, calibration, eval_texts, nsamples, seqlen, seed, k, inplace, device, progress,
         keep_model, dense_ppl, alloc, started, max_windows=None) -> PruneRun:
    from .pruning import prune

    func = "prune_and_evaluate"
    if allocation_name == "alpha":
        if alloc is None:
            alloc = _alpha_allocation(model if spectrum is None else spectrum, target,
                                      epsilon=epsilon, metric=metric, units=units,
                                      progress=progress)
        sparsity = alloc
    elif allocation_name == "given":
        alloc = sparsity = allocation
    else:
        alloc, sparsity = None, (None if config.nm is not None else target)
    causal = is_causal_lm(model)
    dense = model
    if inplace:
        if eval_texts is not None and causal and dense_ppl is None:
            dense_ppl = _dense_perplexity(model, tokenizer, eval_texts, seqlen=seqlen,
                                          max_windows=max_windows, progress=progress, func=func)
        if eval_texts is not None and not causal:
            dense = copy.deepcopy(model)
        pruned = model
    else:
        pruned = copy.deepcopy(model)
    report = prune(pruned, sparsity, method=config, calibration=calibration, tokenizer=tokenizer,
                   nsamples=nsamples, seqlen=seqlen, seed=seed, device=device, progress=progress)
    evaluation = None
    if eval_texts is not None:
        evaluation = _evaluate(dense, pruned, tokenizer, eval_texts, seqlen=seqlen, k=k,
                               max_windows=max_windows, progress=progress, dense_ppl=dense_ppl,
                               func=func)
    return PruneRun(target=target, allocation_name=allocation_name, allocation=alloc,
                    method=config, report=report, evaluation=evaluation,
                    model=pruned if keep_model else None,
                    time_s=time.perf_counter() - started)


# ----------------------------------------------------------------------------------------------
# the grid


def _dense_sparsity(model) -> float:
    from .pruning import find_blocks

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
    if len(set(values)) != len(values):
        raise fail(name, func, "a sequence without repeats", values)
    return tuple(values)


def compare_allocations(model, tokenizer, *, targets=(0.5, 0.7),
                        methods=("magnitude", "wanda", "sparsegpt"),
                        allocations=("uniform", "alpha"), epsilon=0.2, metric="alpha_peak",
                        units="block", spectrum=None, calibration=None, eval_texts=None,
                        nsamples=128, seqlen=None, seed=0, k=5, max_windows=None, device=None,
                        progress=False) -> ComparisonResult:
    """Uniform vs spectrum-guided allocation × pruning methods × targets, each evaluated.

    The spectra (:func:`~specmetrics.esd`) and each target's AlphaPruning allocation are computed
    once, the calibration windows are drawn once (the same windows for every cell); then every
    cell deep-copies the dense model, prunes the copy (:func:`~specmetrics.prune`) and compares it
    with the dense model (:func:`evaluate_pruned`: perplexity for a causal LM, embedding fidelity
    for an encoder). ``model`` is left unchanged and no pruned model is kept.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face causal LM or BERT-style encoder.
    tokenizer : Hugging Face tokenizer
    targets : sequence of float, default (0.5, 0.7)
        Mean sparsities, each in [0, 1).
    methods : sequence of str or configs, default ("magnitude", "wanda", "sparsegpt")
        Unstructured pruning methods (names or configs; N:M patterns do not take an allocation).
    allocations : sequence of {"uniform", "alpha"}, default ("uniform", "alpha")
    epsilon, metric, units
        The AlphaPruning allocation (see :func:`~specmetrics.allocate`).
    spectrum : SpectrumReport, optional
        Spectra of ``model`` computed beforehand.
    calibration : str, path, list of str, tensor or CalibrationSet
        Calibration data (required by Wanda and SparseGPT; used by magnitude pruning to measure
        reconstruction errors).
    eval_texts : str, os.PathLike or sequence of str
        Held-out text (see :func:`evaluate_pruned`).
    nsamples : int, default 128
        Calibration windows.
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
        Progress bars: spectra, then one bar over the cells.

    Returns
    -------
    ComparisonResult
        ``{(target, allocation, method): PruneRun}`` with ``to_frame()``; ``dense`` holds the
        reference.

    Raises
    ------
    ParameterError
        For bad options, found before any pruning.

    Examples
    --------
    .. code-block:: python

        from specmetrics import compare_allocations, load_text
        from specmetrics.evaluation import load_paragraphs

        result = compare_allocations(model, tokenizer, targets=(0.5, 0.7),
                                     calibration=[load_text("calibration")],
                                     eval_texts=load_paragraphs("evaluation"),
                                     nsamples=32, seqlen=128)
        print(result.to_frame())
    """
    func = "compare_allocations"
    started = time.perf_counter()
    targets = tuple(check_interval(t, 0, 1, name="targets", func=func, closed="left")
                    for t in _as_tuple(targets, "targets", func))
    configs = tuple(method_config(m) for m in _as_tuple(methods, "methods", func))
    if any(c.nm is not None for c in configs):
        raise fail("methods", func, "unstructured methods (an N:M pattern takes no allocation)",
                   methods)
    if len({c.name for c in configs}) != len(configs):
        raise fail("methods", func, "one config per method", methods)
    allocations = _as_tuple(allocations, "allocations", func)
    for name in allocations:
        check_choice(name, ALLOCATIONS, name="allocations", func=func)
    check_positive_int(k, name="k", func=func)
    if max_windows is not None:
        check_positive_int(max_windows, name="max_windows", func=func)
    if eval_texts is None:
        raise fail("eval_texts", func, "given (the held-out text to evaluate on)", None)
    eval_texts = _read_eval_text(eval_texts, func)

    from .pruning import load_calibration
    from .pruning.calibration import model_max_positions

    calib = None
    if calibration is not None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        calib = load_calibration(calibration, tokenizer=tokenizer, nsamples=nsamples,
                                 seqlen=_eval_seqlen(model, seqlen, func), seed=seed,
                                 max_positions=model_max_positions(model),
                                 vocab_size=vocab if isinstance(vocab, int) else None, func=func)
    elif any(c.needs_calibration for c in configs):
        raise fail("calibration", func, "given for Wanda and SparseGPT (a text file, a list of "
                   "texts or a tensor of token ids)", None)

    causal = is_causal_lm(model)
    if causal:
        from .evaluation import perplexity

        ids, window = _perplexity_inputs(model, tokenizer, eval_texts, seqlen, func)
        ppl = perplexity(model, None, ids, seqlen=window, max_windows=max_windows)
        n_windows = int(ids.numel()) // window
        dense = PruningEvaluation("perplexity", perplexity_dense=ppl, perplexity=ppl,
                                  n_texts=n_windows if max_windows is None
                                  else min(n_windows, max_windows), seqlen=window)
    else:  # the dense encoder against itself: 1.0 by definition
        n = len(eval_texts) if isinstance(eval_texts, list) else len(_paragraphs(eval_texts))
        if k > n - 1:
            raise fail("k", func, f"an integer in [1, number of texts - 1] = [1, {n - 1}]", k)
        dense = PruningEvaluation("fidelity", cosine=1.0, cosine_min=1.0, nn_agreement=1.0,
                                  n_texts=n, k=k)

    alphas = {}
    if "alpha" in allocations:
        if spectrum is None:
            from .spectrum import esd

            spectrum = esd(model, progress=progress)
        for target in targets:
            alphas[target] = _alpha_allocation(spectrum, target, epsilon=epsilon, metric=metric,
                                               units=units, progress=progress)

    from tqdm.auto import tqdm

    cells = [(t, a, c) for t in targets for a in allocations for c in configs]
    runs = []
    bar = tqdm(cells, desc=func, disable=not progress)
    try:
        for target, name, config in bar:
            bar.set_postfix_str(f"{target:g} {name} {config.name}")
            cell_started = time.perf_counter()
            run = _run(model, tokenizer, target, config=config, allocation=name,
                       allocation_name=name, alloc=alphas.get(target), epsilon=epsilon,
                       metric=metric, units=units,
                       spectrum=spectrum, calibration=calib, eval_texts=eval_texts,
                       nsamples=nsamples, seqlen=seqlen, seed=seed, k=k, inplace=False,
                       device=device, progress=False, keep_model=False,
                       dense_ppl=dense.perplexity_dense if causal else None,
                       max_windows=max_windows, started=cell_started)
            logger.info("cell %g / %s / %s: %s", target, name, config.name, run.row())
            runs.append(run)
    finally:
        bar.close()

    settings = {
        "targets": list(targets),
        "methods": [_method_label(c) for c in configs],
        "allocations": list(allocations),
        "epsilon": epsilon,
        "metric": metric,
        "units": units,
        "calibration": None if calib is None else calib.settings(),
        "evaluation": dense.kind,
        "n_texts": dense.n_texts,
        "k": None if causal else k,
        "seqlen": dense.seqlen if causal else None,
    }
    return ComparisonResult(runs=tuple(runs), dense=dense, dense_sparsity=_dense_sparsity(model),
                            spectrum=spectrum, allocations=alphas, settings=settings,
                            time_s=time.perf_counter() - started)
