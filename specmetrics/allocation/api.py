"""``allocate()``: layer-wise sparsity ratios from per-layer scores."""
from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .._validation import check_choice, check_interval, fail, is_integer, is_real_number
from ..exceptions import DegenerateMetricWarning
from ..models.blocks import is_prunable
from ..models.matrices import list_weight_matrices, name_filter
from ..models.naming import (FUSED_TYPES, MODULE_TYPES, block_of, module_group, module_type, parse_type_set,
                             type_in)
from ..spectrum.results import SpectrumReport
from .configs import (AlphaPruningConfig, config_settings,
                      resolve_method)
from .farms_metric import FarmsMetric, check_metric, resolve_farms_metric
from .mapping import solve_budget
from .result import AllocatedMatrix, Allocation

__all__ = ["allocate", "DegenerateMetricWarning", "UNITS", "BUDGETS", "DEGENERATE_POLICIES"]

logger = logging.getLogger(__name__)

UNITS = ("block", "matrix", "split")
BUDGETS = ("global", "per_group")
DEGENERATE_POLICIES = ("target", "mean", "raise")
_FUNC = "allocate"

@dataclass
class _Row:
    name: str
    metric: float
    block: tuple[str, int] | None
    mtype: str | None
    group: str
    unit: str = ""


# ----------------------------------------------------------------------------------------------
# parameter checks

def _check_clip(clip, target: float):
    if clip is None:
        return None
    try:
        lo, hi = clip
    except (TypeError, ValueError):
        raise fail("clip", _FUNC, "None or a pair (lo, hi) with 0 <= lo <= hi <= 1", clip) from None
    lo = check_interval(lo, 0, 1, name="clip", func=_FUNC, closed="both")
    hi = check_interval(hi, 0, 1, name="clip", func=_FUNC, closed="both")
    if lo > hi:
        raise fail("clip", _FUNC, "None or a pair (lo, hi) with 0 <= lo <= hi <= 1", clip)
    if not lo <= target <= hi:
        raise fail("target", _FUNC, f"within clip=({lo!r}, {hi!r})", target)
    return (lo, hi)


def _is_score_value(value) -> bool:
    """A score: a real number (numpy scalars too), ``None`` (JSON's null: a failed score), or a
    0-d tensor holding a real number."""
    if value is None or is_real_number(value):
        return True
    dim = getattr(value, "dim", None)
    return callable(dim) and type(value).__module__.startswith("torch") and value.dim() == 0 \
        and (value.is_floating_point() or not value.dtype.is_complex)


def _is_score_mapping(source) -> bool:
    """A non-empty mapping with string keys that is not a state dict (a state dict holds tensors
    of one or more dimensions). Its values are checked as scores by :func:`_score`."""
    if not (isinstance(source, Mapping) and len(source) > 0
            and all(isinstance(k, str) for k in source)):
        return False
    return not any(callable(getattr(v, "dim", None)) and v.dim() > 0 for v in source.values())


def _score(value, name: str) -> float:
    """One score as a float (NaN for ``None``); numeric strings are refused with the name."""
    if value is None:
        return float("nan")
    if isinstance(value, str) or not _is_score_value(value):
        raise fail("source", _FUNC, "a mapping {module name: real number or None} of scores",
                   {name: value})
    return float(value)


def _metric_label(metric) -> str:
    if isinstance(metric, str):
        return metric
    if isinstance(metric, FarmsMetric):
        return metric.label
    return getattr(metric, "__qualname__", None) or getattr(metric, "__name__", repr(metric))


# ----------------------------------------------------------------------------------------------
# gathering names, parameter counts and metric values from the source

def _counts(names, given, default) -> dict[str, int]:
    """Parameter counts: ``given`` (the n_params option) where set, else ``default``."""
    out = {}
    missing = []
    for name in names:
        if given is not None:
            if name not in given:
                missing.append(name)
                continue
            value = given[name]
        else:
            value = default[name]
        if not is_integer(value) or int(value) <= 0:
            if is_real_number(value) and float(value).is_integer() and float(value) > 0:
                value = int(value)
            else:
                raise fail("n_params", _FUNC, "a mapping of module names to positive integers",
                           {name: value})
        out[name] = int(value)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:3]) + (" ..." if len(missing) > 3 else "")
        raise fail("n_params", _FUNC, f"a count for every prunable module (missing {shown})",
                   f"{len(given)} entries")
    return out


def _select(candidates, keep_default, include, exclude) -> list[str]:
    """``include`` replaces the default selection; ``exclude`` applies to either."""
    keep = name_filter(include, exclude, func=_FUNC)
    return [name for name in candidates if keep(name) and (include is not None or keep_default(name))]


def _from_scores(source, metric, include, exclude, n_params):
    if n_params is None:
        raise fail("n_params", _FUNC, "a mapping {module name: parameter count} when the source "
                   "is a mapping of scores", None)
    if not isinstance(metric, str):
        raise fail("metric", _FUNC, "a column name (a label only) when the source is a mapping "
                   "of scores", metric)
    names = _select(list(source), lambda n: True, include, exclude)
    counts = _counts(names, n_params, None)
    values = {n: _score(source[n], n) for n in names}
    return names, counts, values


def _from_report(report, metric, include, exclude, n_params, need_metric: bool):
    def keep(name):
        return is_prunable(report[name])

    names = _select(list(report), keep, include, exclude)
    counts = _counts(names, n_params, {n: report[n].n_params for n in names})
    if not need_metric:
        return names, counts, dict.fromkeys(names, float("nan"))
    farms = resolve_farms_metric(metric)
    if farms is not None:
        label = farms.label
        if isinstance(metric, FarmsMetric) or not any(label in report[n].metrics for n in names
                                                      if n in report):
            raise fail("metric", _FUNC, f"a column of the spectrum report ({label!r} is computed "
                       "from the weights: pass the model or its weights as the source)", label)
        metric = label
    return names, counts, _metric_values(report, names, metric)


def _metric_values(report, names, metric) -> dict[str, float]:
    """``{name: metric value}``; NaN for a name the report lacks (a matrix ``esd`` skipped)."""
    present = [n for n in names if n in report]
    if callable(metric):
        values = {n: float(metric(report[n])) for n in present}
    else:
        columns = list(dict.fromkeys(c for n in present for c in report[n].metrics))
        if present and metric not in columns:
            numeric = [c for c in columns if isinstance(report[present[0]].metrics.get(c), float)]
            raise fail("metric", _FUNC, "a column of the spectrum report (one of "
                       + ", ".join(repr(c) for c in numeric) + ") or a callable", metric)
        values = {}
        for n in present:
            value = report[n].metrics.get(metric, float("nan"))
            try:
                values[n] = float("nan") if value is None else float(value)
            except (TypeError, ValueError):
                raise fail("metric", _FUNC, "a numeric column of the spectrum report",
                           metric) from None
    missing = [n for n in names if n not in report]
    if missing:
        skipped = getattr(report, "skipped", {})
        logger.info("no spectrum for %d prunable matrices (%s); their metric is NaN",
                    len(missing), "; ".join(f"{n}: {skipped.get(n, 'absent')}" for n in missing[:5]))
    return {n: values.get(n, float("nan")) for n in names}


def _from_weights(source, metric, include, exclude, n_params, need_metric, esd_options):
    matrices = {m.name: m for m in list_weight_matrices(source, func=_FUNC)}

    def keep(name):
        return is_prunable(matrices[name])

    names = _select(list(matrices), keep, include, exclude)
    counts = _counts(names, n_params, {n: matrices[n].n_params for n in names})
    if not need_metric or not names:
        return names, counts, dict.fromkeys(names, float("nan"))
    farms = resolve_farms_metric(metric)
    if farms is not None:  # FARMS alphas from the weights, only when asked for (no esd)
        return names, counts, farms.values(matrices[n] for n in names)
    from ..spectrum.api import esd

    options = dict(esd_options or {})
    if "include" in options or "exclude" in options:
        raise fail("esd_options", _FUNC, "free of 'include'/'exclude' (pass them to allocate)",
                   sorted(options))
    report = esd(source, include=[f"^{re.escape(n)}$" for n in names], **options)
    return names, counts, _metric_values(report, names, metric)


# ----------------------------------------------------------------------------------------------
# the allocation proper (pure, given rows)

def _unit_key(row: _Row, units: str) -> str:
    if units == "matrix" or row.block is None:
        return row.name
    if units == "block":
        return row.block[0]
    return f"{row.block[0]}:{row.group}"


def _degenerate_units(unit_members, values, policy) -> tuple[dict[str, float], set[str], bool]:
    """Unit scores (mean of the members' values), the degenerate units, and whether they are
    held at the target (policy "target")."""
    scores: dict[str, float] = {}
    bad: set[str] = set()
    bad_names: list[str] = []
    for unit, members in unit_members.items():
        vals = np.array([values[n] for n in members], dtype=np.float64)
        finite = np.isfinite(vals)
        # fsum is exactly rounded, so the score does not depend on the order of the members
        if finite.all():
            scores[unit] = math.fsum(vals) / vals.size
            continue
        bad.add(unit)
        bad_names.extend(n for n, ok in zip(members, finite) if not ok)
        scores[unit] = math.fsum(vals[finite]) / finite.sum() \
            if (policy == "mean" and finite.any()) else float("nan")
    if bad:
        shown = ", ".join(repr(n) for n in bad_names[:5]) + (" ..." if len(bad_names) > 5 else "")
        if policy == "raise":
            raise ValueError(f"{len(bad_names)} matrices have a non-finite score ({shown}); pass "
                             f"on_degenerate='target' or 'mean' to allocate anyway.")
        if policy == "mean":
            finite_scores = [s for s in scores.values() if math.isfinite(s)]
            if not finite_scores:
                raise ValueError("every unit has a non-finite score; nothing to allocate from.")
            fill = math.fsum(finite_scores) / len(finite_scores)
            for unit in bad:
                if not math.isfinite(scores[unit]):
                    scores[unit] = fill
            what = "scored from their finite matrices or the mean unit score"
        else:
            what = "held at the target ratio"
        warnings.warn(f"{len(bad)} units have a non-finite score from {len(bad_names)} matrices "
                      f"({shown}); they are {what} (on_degenerate={policy!r}).",
                      DegenerateMetricWarning, stacklevel=3)
    return scores, bad, policy == "target"


def _map_units(config, scores: np.ndarray, depth: np.ndarray, **context):
    """(base, slope, chosen) per unit: ratio = clip(base + t · slope) with t solved for the
    budget; ``chosen`` is what a self-tuning allocator recorded of its choice (else None).

    ``context`` (unit names, unit weights, target, clip, number of blocks) is passed to
    allocators that accept it.
    """
    import inspect

    accepted = inspect.signature(config.map_units).parameters
    extra = {k: v for k, v in context.items() if k in accepted}
    out = config.map_units(scores, depth=depth, **extra)
    base, slope = out[0], out[1]
    chosen = out[2] if len(out) > 2 else None
    return np.asarray(base, dtype=np.float64), np.asarray(slope, dtype=np.float64), chosen


def _unit_depth(members, unit_names, n_blocks: int) -> np.ndarray:
    """Each unit's depth in [0, 1]: its block index over the last block index (0.5 outside the
    blocks), what depth-trend allocators (ATP) map from."""
    block = {}
    for r in members:
        block.setdefault(r.unit, None if r.block is None else r.block[1])
    last = max(1, n_blocks - 1)
    return np.array([0.5 if block[u] is None else block[u] / last for u in unit_names])


def _solve(rows: list[_Row], counts, unit_scores, held: set[str], degenerate: set[str], *,
           config, target, apply_to, budget, clip) -> list[AllocatedMatrix]:
    n_blocks = 1 + max((r.block[1] for r in rows if r.block is not None), default=0)
    chosen: dict = {}
    applied = {r.name: (r.unit not in held) and type_in(r.mtype, apply_to) for r in rows}
    ratio = {r.name: float(target) for r in rows}
    relative = {r.name: float("nan") for r in rows}
    problems: dict[str, list[_Row]] = {}
    for r in rows:
        if applied[r.name]:
            problems.setdefault("all" if budget == "global" else r.group, []).append(r)
    for key, members in problems.items():
        unit_names = list(dict.fromkeys(r.unit for r in members))
        scores = np.array([unit_scores[u] for u in unit_names], dtype=np.float64)
        depth = _unit_depth(members, unit_names, n_blocks)
        unit_weights = np.zeros(len(unit_names))
        index = {u: i for i, u in enumerate(unit_names)}
        for r in members:
            unit_weights[index[r.unit]] += counts[r.name]
        base_u, slope_u, picked = _map_units(config, scores, depth, units=unit_names,
                                             weights=unit_weights, target=target, clip=clip,
                                             n_blocks=n_blocks)
        if picked is not None:
            chosen[key] = picked
        base = np.array([base_u[index[r.unit]] for r in members])
        slope = np.array([slope_u[index[r.unit]] for r in members])
        weights = np.array([counts[r.name] for r in members], dtype=np.float64)
        solved, t = solve_budget(base, slope, weights, target, clip=clip)
        logger.debug("budget %r: %d matrices in %d units, t=%r", key, len(members),
                     len(unit_names), t)
        for r, value, b, s in zip(members, solved, base, slope):
            ratio[r.name] = float(value)
            relative[r.name] = float(b if config.relative == "base" else s)
    return chosen, [
        AllocatedMatrix(
            name=r.name, n_params=counts[r.name], unit=r.unit,
            block=None if r.block is None else r.block[1], group=r.group, module_type=r.mtype,
            metric=r.metric, score=unit_scores.get(r.unit, float("nan")),
            relative=relative[r.name], ratio=ratio[r.name], applied=applied[r.name],
            degenerate=r.unit in degenerate,
        )
        for r in rows
    ]


# ----------------------------------------------------------------------------------------------

def allocate(source, target=0.5, *, method=AlphaPruningConfig(), metric="alpha_peak",
             units="block", score_from=None, apply_to=None, budget="global", clip=(0.0, 0.99),
             n_params=None, include=None, exclude=None, on_degenerate="target",
             esd_options=None) -> Allocation:
    """Layer-wise sparsity ratios from per-layer spectral (or outlier) scores.

    Every prunable weight matrix gets a sparsity ratio; their parameter-weighted mean is exactly
    ``target``. Matrices are grouped into *units* (a matrix, a block, or a block's attention or
    MLP half); each unit gets a score from its matrices' metric; a method maps the scores to
    ratios (AlphaPruning: linear in the normalised score, higher alpha → more sparsity; OWL: more
    outliers → less sparsity; uniform) and one scale or shift per budget is solved so that the mean
    is the target with every ratio inside ``clip``.

    Parameters
    ----------
    source : nn.Module, str, path, state dict, tensor, SpectrumReport or mapping
        Anything :func:`specmetrics.esd` accepts (a model, a Hugging Face id or path, a safetensors
        file or folder, a state dict, a tensor); a :class:`~specmetrics.SpectrumReport` already
        computed; or a mapping ``{module name: score}`` of precomputed scores (e.g. published
        alphas), which needs ``n_params``.
    target : float, default 0.5
        Parameter-weighted mean sparsity, in [0, 1).
    method : allocator config or str, default AlphaPruningConfig()
        The mapping from scores to ratios; ``"alphapruning"``, ``"owl"``, ``"dlp"``, ``"atp"``
        and ``"uniform"`` mean the default config of each (see
        :data:`~specmetrics.allocation.ALLOCATORS`). OWL and DLP need an ``nn.Module`` source
        and ``calibration=...`` in their config, or precomputed scores as a scores mapping; ATP
        needs ``ATPConfig(step=...)``.
    metric : str, callable or FarmsMetric, default "alpha_peak"
        Per-matrix metric: a column of the spectrum report (``"alpha_peak"`` as AlphaPruning,
        ``"alpha"`` as WeightWatcher, ``"alpha_mid"``, ``"alpha_weighted"``, ``"stable_rank"``,
        ``"entropy"``, ...) or a callable ``f(LayerSpectrum) -> float``; or
        ``"alpha_peak_farms"`` (a :class:`~specmetrics.allocation.FarmsMetric` for other
        options): the FARMS alpha of each matrix, computed from the weights instead of
        :func:`~specmetrics.esd` (a model or weights source; ``esd_options`` do not apply). For
        a scores mapping it is only the label shown in tables and plots. Not used by OWL, DLP
        (activation scores), ATP and uniform.
    units : {"block", "matrix", "split"}, default "block"
        ``"block"``: one unit per repeated block (decoder or encoder layer), scored by the mean
        metric of its matrices (AlphaPruning's block-wise mode); ``"matrix"``: every matrix its own
        unit; ``"split"``: the attention and the MLP matrices of each block are separate units.
        Matrices outside the blocks (only when selected with ``include``) are their own unit.
    score_from : None, str or sequence of str, default None
        Module types whose metric forms a block or split unit's score (``None``: all of the
        unit's matrices). Types are ``q k v o qkv gate up down gate_up`` or spellings such as
        ``"out"``, ``"o_proj"``, ``"attention"``, ``"mlp"``; a string may list several
        (``"q,k"``). A unit holding none of these types is scored from all of its matrices (shown
        in ``to_frame(level="matrix")``). Not allowed with ``units="matrix"``.
    apply_to : None, str or sequence of str, default None
        Module types that get score-based ratios (``None``: all). The others are held at
        ``target`` and the budget is solved over the rest, so the overall mean stays exact.
        A fused type counts when the selection holds all its parts (``qkv`` for ``q,k,v``).
    budget : {"global", "per_group"}, default "global"
        ``"global"``: one scale (or shift) for all matrices, scores normalised across all units.
        ``"per_group"``: the attention and the MLP matrices (and ``"other"``) each form an
        independent allocation, normalised and averaging ``target`` on their own.
    clip : tuple of (float, float) or None, default (0.0, 0.99)
        Bounds of every ratio; the budget is re-solved so the target stays exact. ``None``: no
        clipping (AlphaPruning's behaviour; ratios can exceed 1 at large ε, with a warning).
    n_params : mapping of str to int, optional
        Parameter count of each module: required for a scores mapping, an override otherwise.
    include, exclude : None, str, sequence of str or callable, optional
        Which matrices are prunable: regexes (``re.search`` on the name, any of several) or a
        predicate on the name. By default the prunable matrices are the Linear (and GPT-2
        Conv1D) weights inside the repeated blocks, so embeddings, ``lm_head`` and poolers are
        excluded; ``include`` replaces that default (e.g. ``include=[r"layers\\.", "lm_head"]``)
        and ``exclude`` removes matches. For a scores mapping every key is prunable by default.
    on_degenerate : {"target", "mean", "raise"}, default "target"
        What to do with units whose score is not finite (a failed fit gives NaN):
        ``"target"`` holds their matrices at the target ratio, ``"mean"`` scores them from their
        finite matrices (or the mean unit score when none), ``"raise"`` raises ``ValueError``.
        The first two warn with :class:`~specmetrics.allocation.DegenerateMetricWarning`.
    esd_options : mapping, optional
        Keyword arguments for :func:`specmetrics.esd` (backend, device, ...) when spectra are
        computed here.

    Returns
    -------
    Allocation
        Read-only mapping ``{module name: ratio}`` with ``achieved``, ``to_frame()``,
        ``to_json()`` and ``plot()``.

    Raises
    ------
    ParameterError
        For a bad option, no prunable matrix, or a target that the clip bounds cannot reach.
    ValueError
        For non-finite scores with ``on_degenerate="raise"``.

    See Also
    --------
    specmetrics.allocation.SEED003_VARIANTS : the seed-003 ablation labels as ``allocate`` options.

    Notes
    -----
    AlphaPruning [1]_: with block units, no clipping and ``normalize="minmax"``, the ratios are
    ``s_i = η r_i``, ``r_i = (m_i - min m) / (max m - min m) · 2ε + 1 - ε``,
    ``η = S Σ p_i / Σ p_i r_i`` (``m_i`` the block's mean metric, ``p_i`` the parameter counts),
    exactly as its ``ww_sparsity``. With clipping, ``η`` is solved on the clipped ratios.
    OWL [2]_: ``s_l = c - 2λ u_l`` with ``u_l`` the min-max normalised outlier ratio and ``c``
    solved for the target (for blocks of equal size, OWL's own formula).
    DLP [3]_: ``s_l = c - 2α u_l`` with ``u_l`` the min-max normalised ``1 - U_l / Σ U``,
    ``U_l`` the median Wanda score of block ``l``. ATP [4]_: ``s_l = c + β l``.

    References
    ----------
    .. [1] H. Lu et al., "AlphaPruning: Using Heavy-Tailed Self Regularization Theory for
       Improved Layer-wise Pruning of Large Language Models", NeurIPS 2024.
    .. [2] L. Yin et al., "Outlier Weighed Layerwise Sparsity (OWL)", ICML 2024.
    .. [3] Y. Chen et al., "DLP: Dynamic Layerwise Pruning in Large Language Models", ICML 2025.
    .. [4] W. Huang et al., "Determining Layer-wise Sparsity for Large Language Models Through a
       Theoretical Perspective" (ATP), ICML 2025.

    Examples
    --------
    Published-style scores fed in directly, two blocks of two matrices:

    >>> import specmetrics
    >>> scores = {"layers.0.attn.q_proj": 2.0, "layers.0.mlp.up_proj": 3.0,
    ...           "layers.1.attn.q_proj": 4.0, "layers.1.mlp.up_proj": 5.0}
    >>> alloc = specmetrics.allocate(scores, 0.5, n_params=dict.fromkeys(scores, 100),
    ...                              method=specmetrics.AlphaPruningConfig(epsilon=0.2))
    >>> [round(alloc[n], 6) for n in scores], round(alloc.achieved, 12)
    ([0.4, 0.4, 0.6, 0.6], 0.5)
    """
    target = check_interval(target, 0, 1, name="target", func=_FUNC, closed="left")
    config = resolve_method(method)
    check_choice(units, UNITS, name="units", func=_FUNC)
    check_choice(budget, BUDGETS, name="budget", func=_FUNC)
    check_choice(on_degenerate, DEGENERATE_POLICIES, name="on_degenerate", func=_FUNC)
    clip = _check_clip(clip, target)
    score_types = parse_type_set(score_from, name="score_from")
    apply_types = parse_type_set(apply_to, name="apply_to")
    if score_types is not None and units == "matrix":
        raise fail("score_from", _FUNC, "None when units='matrix' (each matrix is scored by its "
                   "own metric)", score_from)
    check_metric(metric, _FUNC)
    if n_params is not None and not isinstance(n_params, Mapping):
        raise fail("n_params", _FUNC, "None or a mapping {module name: parameter count}",
                   type(n_params).__name__)
    if esd_options is not None and not isinstance(esd_options, Mapping):
        raise fail("esd_options", _FUNC, "None or a mapping of esd() keyword arguments",
                   esd_options)

    is_report = isinstance(source, SpectrumReport)
    is_scores = not is_report and _is_score_mapping(source)
    # activation-based allocators (OWL, DLP) compute their own scores from a model; given
    # scores are used as they are
    scores_from_model = config.inputs == "activations" and not (is_scores or is_report)
    need_metric = config.inputs == "spectrum" or (
        config.inputs == "activations" and not scores_from_model)
    metric_label: str | None = _metric_label(metric)
    if is_scores:
        names, counts, values = _from_scores(source, metric, include, exclude, n_params)
    elif is_report:
        names, counts, values = _from_report(source, metric, include, exclude, n_params,
                                             need_metric)
    elif isinstance(source, Mapping) and len(source) == 0:
        raise fail("source", _FUNC, "a model, weights, a SpectrumReport or a non-empty mapping",
                   "an empty mapping")
    else:
        names, counts, values = _from_weights(source, metric, include, exclude, n_params,
                                              need_metric, esd_options)
    if not names:
        raise fail("include", _FUNC, "a selection that matches at least one weight matrix "
                   "(none is prunable by default: no Linear inside repeated blocks)", include)

    rows = []
    for name in names:
        mtype = module_type(name)
        row = _Row(name=name, metric=values[name], block=block_of(name),
                   mtype=mtype, group=module_group(name, mtype))
        row.unit = _unit_key(row, units)
        rows.append(row)
    for label, value, types in (("apply_to", apply_to, apply_types),
                                ("score_from", score_from, score_types)):
        _check_types_present(label, value, types, rows)

    # the matrices that score each unit: those of a score_from type, else all of the unit's
    by_unit: dict[str, list[_Row]] = {}
    for r in rows:
        by_unit.setdefault(r.unit, []).append(r)
    unit_members = {
        unit: [r.name for r in members if type_in(r.mtype, score_types)]
        or [r.name for r in members]
        for unit, members in by_unit.items()
    }

    degenerate: set[str] = set()
    hold = False
    if config.inputs is None:  # no scores: uniform, or a depth trend (ATP)
        unit_scores = dict.fromkeys(unit_members, float("nan"))
        metric_label = None
    elif scores_from_model:
        ratios = _activation_unit_scores(source, config, unit_members, names)
        metric_label = config.score_label
        unit_scores, degenerate, hold = _degenerate_units({u: [u] for u in ratios}, ratios,
                                                          on_degenerate)
    else:
        unit_scores, degenerate, hold = _degenerate_units(unit_members, values, on_degenerate)

    chosen, matrices = _solve(rows, counts, unit_scores, degenerate if hold else set(), degenerate,
                      config=config, target=target, apply_to=apply_types, budget=budget,
                      clip=clip)
    if clip is None and any(not 0.0 <= m.ratio <= 1.0 for m in matrices):
        warnings.warn("some ratios fall outside [0, 1] (clip=None); pass clip=(lo, hi) to bound "
                      "them.", UserWarning, stacklevel=2)

    method_settings = config_settings(config)
    if chosen:
        method_settings["chosen"] = chosen["all"] if list(chosen) == ["all"] else chosen
    settings = {
        "method": method_settings,
        "metric": metric_label,
        "units": units,
        "budget": budget,
        "clip": clip,
        "score_from": _ordered(score_types),
        "apply_to": _ordered(apply_types),
        "on_degenerate": on_degenerate,
    }
    farms = resolve_farms_metric(metric)
    if farms is not None and need_metric and not (is_scores or is_report):
        settings["metric_options"] = farms.settings()  # FARMS computed here, with these options
    alloc = Allocation(matrices=tuple(matrices), target=target, settings=settings)
    logger.info("allocated %d matrices in %d units: target %.6g, achieved %.12g",
                len(matrices), len(unit_members), target, alloc.achieved)
    return alloc


def _check_types_present(label: str, value, types, rows) -> None:
    """``apply_to`` / ``score_from`` must select at least one prunable matrix of the model."""
    if types is None:
        return
    if any(type_in(r.mtype, types) for r in rows):
        return
    present = [t for t in MODULE_TYPES if any(r.mtype == t for r in rows)]
    fused = [t for t in present if t in FUSED_TYPES and FUSED_TYPES[t] & types]
    hint = ""
    if fused:
        hint = "; " + ", ".join(f"{t} is one fused matrix: name all of {sorted(FUSED_TYPES[t])} "
                                f"(or {t!r}) to select it" for t in fused)
    raise fail(label, _FUNC, "module types the model has (its prunable matrices are of types "
               f"{', '.join(present) or 'none recognised'}{hint})", value)


def _ordered(types):
    return None if types is None else [t for t in MODULE_TYPES if t in types]


def _activation_unit_scores(model, config, unit_members, names) -> dict[str, float]:
    """Unit scores of an activation-based allocator (OWL's outlier ratios, DLP's importance),
    from its ``calibration`` (captured input norms, or token ids run through the model)."""
    import torch

    from .owl import capture_input_sq_norms

    if not isinstance(model, torch.nn.Module):
        raise fail("source", _FUNC, f"an nn.Module (or a scores mapping) for {config.name}",
                   type(model).__name__)
    calibration = config.calibration
    if calibration is None:
        raise fail("method", _FUNC, f"a {type(config).__name__} with calibration inputs (token "
                   "ids, batches or captured input norms) for a model source", config)
    if isinstance(calibration, Mapping):
        norms = calibration
    else:
        norms = capture_input_sq_norms(model, names, calibration, batch_size=config.batch_size)
    return config.unit_scores(model, unit_members, norms)
