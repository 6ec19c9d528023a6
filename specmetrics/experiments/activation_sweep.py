"""Perplexity against activation sparsity: TEAL (uniform and greedy) and CATS, side by side.

:func:`activation_sparsity_sweep` fits thresholds on calibration text, then scores held-out text
with each style's thresholds installed by
:func:`~specmetrics.activations.sparsify.sparsify_activations`, and records the perplexity and the
sparsity each site actually realised on the held-out tokens.

Styles
------
``"teal"`` (``"teal_uniform"`` is its deprecated name)
    The four TEAL sites of every block (inputs of q/k/v, o, gate/up, down) at the target.
``"teal_greedy"``
    The same sites with per-site sparsities from TEAL's greedy search
    (:func:`~specmetrics.activations.greedy.teal_greedy_search`), every block spending the target
    as its parameter-weighted budget.
``"cats"``
    CATS: ``SiLU(gate(x))`` of every block at the target (the MLP only; attention stays dense).

Columns of the result
---------------------
``realised_mean`` / ``_min`` / ``_max`` are over the style's sites. ``weights_skipped`` makes
the styles comparable: the fraction of the blocks' linear-layer parameters a sparse kernel would
not read, ``Σ realised(site) · params(site) / Σ params(block linear layers)``, where a TEAL site
counts the matrices reading it and a CATS site the up (if gated) and down matrices whose rows /
columns its zeros skip. At a target ``s`` TEAL skips about ``s`` of the weights, CATS about
``s · (up + down) / all``, i.e. ``0.45 s`` for LLaMA shapes (``d_ff / d = 2.6875``).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Optional, Sequence

from torch import nn

from .._results import KeyedResult
from .._validation import check_choice, check_interval, check_positive_int, fail
from ..activations.capture import activation_stats
from ..activations.greedy import projection_sizes, teal_greedy_search
from ..activations.sites import (CATS_KINDS, TEAL_KINDS, Site, find_sites,
                                 mlp_gate_and_activation)
from ..activations.sparsify import sequential_thresholds, sparsify_activations
from ..activations.thresholds import ActivationThresholds, activation_thresholds
from ..evaluation.perplexity import perplexity, tokenize_text
from ..models.blocks import find_blocks
from ..models.naming import module_type

__all__ = ["SWEEP_STYLES", "SweepRow", "SweepResult", "activation_sparsity_sweep",
           "skippable_weights", "ActivationReport", "activation_report"]

logger = logging.getLogger(__name__)

#: Styles of :func:`activation_sparsity_sweep`.
SWEEP_STYLES: tuple[str, ...] = ("teal", "teal_greedy", "cats")


@dataclass(frozen=True)
class SweepRow:
    """One (style, target) point of a sweep.

    Attributes
    ----------
    style : str
    target : float
    perplexity : float
    realised : mapping of str to float
        Per site, the fraction of zeros among the held-out values that reached it.
    weights_skipped : float
        Fraction of the blocks' linear-layer parameters a sparse kernel would skip.
    thresholds : ActivationThresholds
    """

    style: str
    target: float
    perplexity: float
    realised: Mapping[str, float] = field(repr=False)
    weights_skipped: float
    thresholds: ActivationThresholds = field(repr=False)

    def __post_init__(self):
        object.__setattr__(self, "realised", MappingProxyType(dict(self.realised)))

    @property
    def realised_mean(self) -> float:
        values = [v for v in self.realised.values() if not math.isnan(v)]
        return sum(values) / len(values) if values else math.nan


@dataclass(frozen=True, eq=False)
class SweepResult(KeyedResult):
    """Perplexity of a model with activation sparsity, per style and target.

    A read-only mapping ``{(style, target): SweepRow}``.

    Attributes
    ----------
    dense_perplexity : float
    rows : tuple of SweepRow
        In the order styles × targets.
    settings : mapping
        ``seqlen``, ``max_windows``, ``n_windows``, ``nsamples``, ``seed``, greedy settings and
        the calibration source.
    """

    dense_perplexity: float
    rows: tuple
    settings: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        object.__setattr__(self, "rows", tuple(self.rows))
        self._init_result({(r.style, r.target): r for r in self.rows}, self.settings)

    def __repr__(self) -> str:
        return (f"SweepResult(dense_perplexity={self.dense_perplexity:.4g}, "
                f"n_points={len(self.rows)})")

    def _to_payload(self) -> Any:
        return {"dense_perplexity": self.dense_perplexity, "rows": [
            {"style": r.style, "target": r.target, "perplexity": r.perplexity,
             "realised": dict(r.realised), "weights_skipped": r.weights_skipped,
             "thresholds": {"settings": dict(r.thresholds.settings),
                            "data": r.thresholds._to_payload()}} for r in self.rows]}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "SweepResult":
        rows = []
        for r in data["rows"]:
            thr = ActivationThresholds._from_payload(r["thresholds"]["data"],
                                                     r["thresholds"]["settings"])
            realised = {k: (math.nan if v is None else v) for k, v in r["realised"].items()}
            rows.append(SweepRow(style=r["style"], target=r["target"],
                                 perplexity=math.nan if r["perplexity"] is None
                                 else r["perplexity"], realised=realised,
                                 weights_skipped=r["weights_skipped"], thresholds=thr))
        return cls(dense_perplexity=data["dense_perplexity"], rows=tuple(rows),
                   settings=dict(settings))

    def row(self, style: str, target: float) -> SweepRow:
        """The row of one style and target."""
        for r in self.rows:
            if r.style == style and math.isclose(r.target, target, abs_tol=1e-12):
                return r
        raise KeyError((style, target))

    def to_frame(self):
        """One row per point plus a ``dense`` row (target 0), indexed by ``(style, target)``.

        Columns: ``perplexity``, ``realised_mean``, ``realised_min``, ``realised_max``,
        ``weights_skipped``, ``n_sites``.
        """
        import pandas as pd

        records = [{"style": "dense", "target": 0.0, "perplexity": self.dense_perplexity,
                    "realised_mean": 0.0, "realised_min": 0.0, "realised_max": 0.0,
                    "weights_skipped": 0.0, "n_sites": 0}]
        for r in self.rows:
            values = [v for v in r.realised.values() if not math.isnan(v)]
            records.append({"style": r.style, "target": r.target, "perplexity": r.perplexity,
                            "realised_mean": r.realised_mean,
                            "realised_min": min(values) if values else math.nan,
                            "realised_max": max(values) if values else math.nan,
                            "weights_skipped": r.weights_skipped, "n_sites": len(r.realised)})
        return pd.DataFrame(records).set_index(["style", "target"])

    def realised_frame(self):
        """Per-site realised sparsity: rows are sites, columns ``(style, target)``."""
        import pandas as pd

        columns = {(r.style, r.target): pd.Series(dict(r.realised), dtype=float)
                   for r in self.rows}
        return pd.DataFrame(columns)

    def plot(self, ax=None, *, x: str = "target"):
        """Perplexity against ``x`` (``"target"`` or ``"weights_skipped"``), one line per style.

        Returns
        -------
        matplotlib.axes.Axes
        """
        check_choice(x, ("target", "weights_skipped"), name="x", func="SweepResult.plot")
        from ..plotting.axes import new_axes

        ax = new_axes(ax)
        styles = list(dict.fromkeys(r.style for r in self.rows))
        for style in styles:
            rows = [r for r in self.rows if r.style == style]
            xs = [0.0] + [r.target if x == "target" else r.weights_skipped for r in rows]
            ax.plot(xs, [self.dense_perplexity] + [r.perplexity for r in rows], marker="o",
                    label=style)
        ax.axhline(self.dense_perplexity, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xlabel("target sparsity" if x == "target" else "fraction of weights skipped")
        ax.set_ylabel("perplexity")
        ax.legend()
        return ax


def skippable_weights(model: nn.Module, sites: Mapping[str, Site]) -> tuple[dict[str, int], int]:
    """Parameters each site's zeros let a kernel skip, and the blocks' linear parameters.

    TEAL sites: the matrices reading the site (q+k+v, o, gate+up, down). ``silu_gate``: the down
    projection plus, for a gated MLP, the up projection (the gate must be computed to find the
    zeros).

    Returns
    -------
    (dict of str to int, int)
        ``{site name: parameters}`` and the total parameters of the blocks' linear layers.
    """
    layout = find_blocks(model, func="skippable_weights")
    total = sum(pm.n_params for pm in layout.modules.values())
    out: dict[str, int] = {}
    teal = {n: s for n, s in sites.items() if s.kind in TEAL_KINDS}
    out.update(projection_sizes(model, teal))
    for name, site in sites.items():
        if site.kind != "silu_gate":
            continue
        modules = layout.modules_of(site.block)
        _, _, gated = mlp_gate_and_activation(model, layout, site.block)
        wanted = {"down", "up"} if gated else {"down"}
        out[name] = sum(pm.n_params for n, pm in modules.items() if module_type(n) in wanted)
    return out, total


def _weights_skipped(realised: Mapping[str, float], params: Mapping[str, int], total: int
                     ) -> float:
    if total <= 0:
        return math.nan
    return sum(params[n] * v for n, v in realised.items() if not math.isnan(v)) / total


def activation_sparsity_sweep(model: nn.Module, tokenizer, calibration, eval_text, *,
                              targets: Sequence[float] = (0.25, 0.40, 0.50, 0.65),
                              styles: Sequence[str] = SWEEP_STYLES, seqlen: int,
                              max_windows: Optional[int] = None, nsamples: int = 32,
                              seed: int = 0, greedy_step: float = 0.05,
                              greedy_nsamples: int = 4, fit: str = "sequential", device=None,
                              progress: bool = False) -> SweepResult:
    """Perplexity on held-out text with TEAL / CATS activation sparsity at several targets.

    Thresholds are fitted on calibration windows (``|x|`` quantiles; see ``fit``); each
    (style, target) is then scored with
    :func:`~specmetrics.perplexity` while :func:`sparsify_activations` holds the thresholds, which
    also counts the realised sparsity per site.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face causal LM; its weights are not changed.
    tokenizer : Hugging Face tokenizer or None
        Tokenises the calibration and evaluation text (``None`` if both are token ids).
    calibration : str, os.PathLike, list of str, torch.Tensor or CalibrationSet
        Calibration text or ids (:func:`~specmetrics.pruning.load_calibration`): ``nsamples``
        windows of ``seqlen`` tokens drawn with ``seed``.
    eval_text : str, os.PathLike or torch.Tensor
        Held-out text (as :func:`~specmetrics.perplexity`: a ``str`` is the text itself, a
        ``pathlib.Path`` a file).
    targets : sequence of float, default (0.25, 0.40, 0.50, 0.65)
        Target sparsities in [0, 1).
    styles : sequence of str, default ("teal", "teal_greedy", "cats")
        Among :data:`SWEEP_STYLES`.
    seqlen : int
        Tokens per window, for calibration and evaluation.
    max_windows : int, optional
        Score only the first ``max_windows`` evaluation windows.
    nsamples : int, default 32
        Calibration windows for the statistics.
    seed : int, default 0
    greedy_step : float, default 0.05
        Step of the greedy search (:func:`~specmetrics.activations.greedy.greedy_path`).
    greedy_nsamples : int, default 4
        Calibration windows (the first ones) the greedy search measures block errors on.
    fit : {"sequential", "dense"}, default "sequential"
        ``"sequential"``: each threshold fitted on the activations it sees with the earlier
        sites already thresholded (:func:`~specmetrics.activations.sparsify.sequential_thresholds`),
        so every site realises its target; ``"dense"``: all thresholds from the dense model's
        statistics (:func:`activation_thresholds`, TEAL's and CATS' own procedure), which
        over-sparsify the sites downstream of other thresholded sites.
    device : torch.device or str, optional
        Where blocks run during calibration (default: where their parameters are).
    progress : bool, default False
        Progress bars.

    Returns
    -------
    SweepResult
    """
    from ..calibration.windows import calibration_set

    func = "activation_sparsity_sweep"
    if isinstance(styles, str):
        styles = (styles,)
    styles = tuple(styles)
    if "teal_uniform" in styles:
        import warnings

        warnings.warn("the style 'teal_uniform' is now 'teal'", DeprecationWarning, stacklevel=2)
        styles = tuple("teal" if s == "teal_uniform" else s for s in styles)
    if not styles:
        raise fail("styles", func, f"a non-empty selection of {SWEEP_STYLES}", styles)
    for style in styles:
        check_choice(style, SWEEP_STYLES, name="styles", func=func)
    try:
        targets = tuple(float(check_interval(t, 0.0, 1.0, name="targets", func=func))
                        for t in targets)
    except TypeError:
        raise fail("targets", func, "a sequence of floats in [0, 1)", targets) from None
    if not targets:
        raise fail("targets", func, "a non-empty sequence of floats in [0, 1)", targets)
    check_positive_int(seqlen, name="seqlen", func=func, minimum=2)
    check_positive_int(nsamples, name="nsamples", func=func)
    check_positive_int(greedy_nsamples, name="greedy_nsamples", func=func)
    check_choice(fit, ("sequential", "dense"), name="fit", func=func)
    if greedy_nsamples > nsamples:
        raise fail("greedy_nsamples", func, f"at most nsamples ({nsamples})", greedy_nsamples)

    kinds = set()
    for style in styles:
        kinds.update(CATS_KINDS if style == "cats" else TEAL_KINDS)
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                             seqlen=seqlen, seed=seed, func=func)
    stats = None
    if fit == "dense" or "teal_greedy" in styles:
        stats = activation_stats(model, None, calib, sites=sorted(kinds), nsamples=nsamples,
                                 seqlen=seqlen, seed=seed, device=device, progress=progress)
    eval_ids = tokenize_text(tokenizer, eval_text, func=func)
    n_windows = eval_ids.numel() // seqlen
    if max_windows is not None:
        check_positive_int(max_windows, name="max_windows", func=func)
        n_windows = min(n_windows, max_windows)

    def score() -> float:
        return perplexity(model, None, eval_ids, seqlen=seqlen, max_windows=max_windows,
                          progress=progress)

    dense = score()
    params, total = skippable_weights(model, find_sites(model, sites=sorted(kinds), func=func))
    search = None
    if "teal_greedy" in styles:
        search = teal_greedy_search(model, None, calib, stats, max_target=max(targets),
                                    step=greedy_step, nsamples=greedy_nsamples, seqlen=seqlen,
                                    seed=seed, device=device, progress=progress)

    from tqdm.auto import tqdm

    rows = []
    points = [(style, t) for style in styles for t in targets]
    for style, target in tqdm(points, desc=func, disable=not progress):
        goal = search.targets(target) if style == "teal_greedy" else target
        kind = "cats" if style == "cats" else "teal"
        if fit == "dense":
            thresholds = activation_thresholds(stats, goal, style=kind)
        else:
            thresholds = sequential_thresholds(model, None, calib, goal, style=kind, nsamples=nsamples,
                                               seqlen=seqlen, seed=seed, device=device)
        with sparsify_activations(model, thresholds) as handle:
            ppl = score()
        realised = handle.realised()
        rows.append(SweepRow(style=style, target=target, perplexity=ppl, realised=realised,
                             weights_skipped=_weights_skipped(realised, params, total),
                             thresholds=thresholds))
        logger.info("%s at %.2f: perplexity %.3f (dense %.3f)", style, target, ppl, dense)
    settings = {"seqlen": seqlen, "max_windows": max_windows, "n_windows": int(n_windows),
                "nsamples": nsamples, "seed": seed, "source": calib.source,
                "greedy_step": greedy_step, "greedy_nsamples": greedy_nsamples,
                "definition": "abs", "fit": fit}
    return SweepResult(dense_perplexity=dense, rows=tuple(rows), settings=settings)


@dataclass(frozen=True)
class ActivationReport:
    """What ``specmetrics activations`` computes: the per-layer threshold table of every site
    kind and the perplexity with one style's thresholds applied.

    Attributes
    ----------
    tables : mapping of str to pandas.DataFrame
        ``{site kind: threshold_table(...)}``.
    table : pandas.DataFrame
        All of them, with a ``kind`` column.
    sweep : SweepResult
        Dense and sparsified perplexity (one style, one target).
    seqlen : int
    """

    tables: Mapping
    table: Any
    sweep: SweepResult
    seqlen: int


def activation_report(model: nn.Module, tokenizer, calibration, eval_text, *, target: float = 0.5,
                      style: str = "teal", fit: str = "sequential", nsamples: int = 32,
                      seqlen: Optional[int] = None, max_windows: Optional[int] = None,
                      seed: int = 0, device=None, progress: bool = False) -> ActivationReport:
    """Thresholds for ``target`` sparsity fitted on calibration text, the per-layer table of the
    style's site kinds on held-out text, and the perplexity with the thresholds applied.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face causal LM (left unchanged).
    tokenizer : Hugging Face tokenizer
    calibration, eval_text : str, pathlib.Path or list of str
        Fit and held-out text (the one text rule).
    target : float, default 0.5
    style : {"teal", "teal_greedy", "cats"}, default "teal"
    fit : {"sequential", "dense"}, default "sequential"
    nsamples, seqlen, max_windows, seed, device, progress
        As for :func:`activation_sparsity_sweep`.
    """
    import pandas as pd

    from ..activations import activation_stats, threshold_table
    from ..activations.sites import CATS_KINDS, TEAL_KINDS
    from ..calibration.windows import default_seqlen

    func = "activation_report"
    target = check_interval(target, 0.0, 1.0, name="target", func=func)
    check_choice(style, SWEEP_STYLES, name="style", func=func)
    seqlen = default_seqlen(model, func=func) if seqlen is None else check_positive_int(
        seqlen, name="seqlen", func=func, minimum=2)
    kinds = CATS_KINDS if style == "cats" else TEAL_KINDS
    common = dict(sites=list(kinds), nsamples=nsamples, seqlen=seqlen,
                  seed=seed, device=device, progress=progress)
    fitted = activation_stats(model, tokenizer, calibration, **common)
    held_out = activation_stats(model, tokenizer, eval_text, **common)
    tables = {kind: threshold_table(fitted, held_out, target, sites=kind) for kind in kinds}
    table = pd.concat([t.assign(kind=k) for k, t in tables.items()])
    sweep = activation_sparsity_sweep(
        model, tokenizer, calibration, eval_text, targets=(target,), styles=(style,),
        seqlen=seqlen, max_windows=max_windows, nsamples=nsamples,
        greedy_nsamples=min(4, nsamples), seed=seed, fit=fit, device=device, progress=progress)
    return ActivationReport(tables=tables, table=table, sweep=sweep, seqlen=seqlen)
