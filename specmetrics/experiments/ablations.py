"""The user's ablation grid (seed 003) as one resumable run: allocation variants × methods.

Seed 003 compares "ww" allocations (AlphaPruning ratios applied to chosen module types, split
attention/MLP budgets, ε) under magnitude, Wanda and SparseGPT at 70 % on LLaMA. :func:`ablation`
runs such a grid on any causal LM: every variant is an :func:`~specmetrics.allocate` call with
its options (our reading of the notes' labels: :data:`~specmetrics.allocation.SEED003_VARIANTS`),
every cell prunes a fresh copy of the dense model and scores its perplexity on held-out text. The
spectra, the calibration windows and the held-out tokens are computed once.

Resumable: with ``out=``, every finished cell is appended to ``out/cells.jsonl`` as soon as it is
done; a later call with the same ``out`` and the same settings skips the cells already there
(a call with other settings refuses the folder rather than mixing grids).
"""
from __future__ import annotations

import copy
import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from .._results import KeyedResult, jsonable
from .._validation import check_bool, check_interval, check_real, fail
from ..allocation import AlphaPruningConfig, allocate
from ..allocation.variants import SEED003_VARIANTS, seed003_variant
from ..calibration.windows import calibration_set
from ..exceptions import ParameterError
from ..pruning import prune
from ..pruning.registry import method_label, resolve_method
from ..spectrum import esd
from .evaluate import EvalText

__all__ = ["ablation", "AblationResult", "AblationCell", "SEED003_GRID", "check_variants"]

logger = logging.getLogger(__name__)

#: The labels of the LLaMA-7B grid of seed 003, in the notes' column order, plus ``uniform``
#: (every matrix at the target: the baseline the notes leave implicit).
SEED003_GRID = ("uniform", "ww", "QKV", "OUT", "V", "OUT V", "K", "Q", "Q OUT GATE", "Gate",
                "QK", "QK OUT", "QKVoutg", "QKVout", "QKVout + split")


@dataclass(frozen=True)
class AblationCell:
    """One (variant, method) cell.

    Attributes
    ----------
    variant, method : str
    perplexity : float
    achieved : float
        Parameter-weighted achieved sparsity of the prunable matrices.
    options : mapping
        The allocate options of the variant (``None`` for ``uniform``).
    time_s : float
        Seconds for the cell (allocation, pruning, evaluation).
    """

    variant: str
    method: str
    perplexity: float
    achieved: float
    options: Optional[Mapping]
    time_s: float


class AblationResult(KeyedResult):
    """The grid of :func:`ablation`, keyed by ``(variant, method)``.

    ``to_frame()`` has the notes' shape: methods as rows, variants as columns, perplexity
    cells; ``to_frame(long=True)`` one row per cell with ``achieved`` and ``time_s``.
    """

    def __init__(self, cells, *, dense_perplexity: float, settings: Mapping):
        cells = tuple(cells)
        self._init_result({(c.variant, c.method): c for c in cells}, settings)
        object.__setattr__(self, "cells", cells)
        object.__setattr__(self, "dense_perplexity", dense_perplexity)

    def __repr__(self) -> str:
        return (f"AblationResult(n_cells={len(self)}, dense_perplexity="
                f"{self.dense_perplexity:.4g})")

    def to_frame(self, *, long: bool = False):
        import pandas as pd

        check_bool(long, name="long", func="AblationResult.to_frame")
        if long:
            return pd.DataFrame([{"variant": c.variant, "method": c.method,
                                  "perplexity": c.perplexity, "achieved": c.achieved,
                                  "time_s": c.time_s} for c in self.cells]
                                ).set_index(["variant", "method"])
        variants = list(dict.fromkeys(c.variant for c in self.cells))
        methods = list(dict.fromkeys(c.method for c in self.cells))
        frame = pd.DataFrame(index=methods, columns=variants, dtype=float)
        for c in self.cells:
            frame.loc[c.method, c.variant] = c.perplexity
        frame.index.name = "method"
        frame.columns.name = "variant"
        return frame

    def plot(self, ax=None):
        """The grid as a heat map of log perplexity (annotated with the perplexities)."""
        from ..plotting.experiments import plot_ablation

        return plot_ablation(self, ax)

    def _to_payload(self) -> Any:
        return {"dense_perplexity": self.dense_perplexity,
                "cells": [_cell_payload(c) for c in self.cells]}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "AblationResult":
        return cls([_cell_from(c) for c in data["cells"]],
                   dense_perplexity=_float(data["dense_perplexity"]), settings=settings)


def _float(value) -> float:
    return math.nan if value is None else float(value)


def _cell_payload(c: AblationCell) -> dict:
    return {"variant": c.variant, "method": c.method, "perplexity": c.perplexity,
            "achieved": c.achieved, "options": jsonable(c.options), "time_s": c.time_s}


def _cell_from(d: Mapping) -> AblationCell:
    return AblationCell(variant=d["variant"], method=d["method"],
                        perplexity=_float(d["perplexity"]), achieved=_float(d["achieved"]),
                        options=d.get("options"), time_s=float(d.get("time_s", 0.0)))


def check_variants(variants, func: str) -> dict[str, Optional[dict]]:
    """``{label: allocate options or None (uniform)}``."""
    if isinstance(variants, str):
        if variants != "seed003":
            raise fail("variants", func, "'seed003', a sequence of seed-003 labels or a mapping "
                       "{label: allocate options}", variants)
        variants = SEED003_GRID
    if isinstance(variants, Mapping):
        out = {}
        for label, options in variants.items():
            if not isinstance(label, str) or not (options is None or isinstance(options,
                                                                                 Mapping)):
                raise fail("variants", func, "a mapping {label: allocate options or None}",
                           {label: options})
            out[label] = None if options is None else dict(options)
        return out
    if not isinstance(variants, Sequence) or not variants:
        raise fail("variants", func, "'seed003' or a non-empty sequence of labels", variants)
    out = {}
    for label in variants:
        if label == "uniform":
            out[label] = None
        elif label in SEED003_VARIANTS:
            out[label] = dict(SEED003_VARIANTS[label])
        else:
            try:
                out[label] = seed003_variant(label)
            except ParameterError:
                raise fail("variants", func, "'uniform' or seed-003 labels (" + ", ".join(
                    repr(k) for k in SEED003_VARIANTS) + ", optionally + split)",
                           label) from None
    return out


def ablation(model, tokenizer, *, target: float = 0.7, variants="seed003",
             methods=("wanda", "sparsegpt"), epsilon: float = 0.2, metric: str = "alpha_peak",
             calibration=None, eval_texts=None, nsamples=None, seqlen=None, seed: int = 0,
             max_windows=None, out=None, device=None, progress: bool = False) -> AblationResult:
    """Allocation variants × pruning methods at one target, each cell's perplexity.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face causal LM (left unchanged).
    tokenizer : Hugging Face tokenizer
    target : float, default 0.7
    variants : "seed003", sequence of labels, or mapping, default "seed003"
        ``"seed003"``: :data:`SEED003_GRID`; labels of the notes (``"QKVout + split"``, read
        by :func:`~specmetrics.allocation.seed003_variant`) or ``"uniform"``; or ``{label:
        allocate options}`` (``None``: uniform).
    methods : sequence of str or configs, default ("wanda", "sparsegpt")
        Unstructured pruning methods.
    epsilon : float, default 0.2
        AlphaPruning's ε for every spectral variant (the notes' "0.2 ww").
    metric : str, default "alpha_peak"
    calibration, eval_texts
        Calibration and held-out text (the one text rule); default: the texts shipped in the
        package (:func:`~specmetrics.calibration.load_text`).
    nsamples, seqlen, seed, max_windows, device, progress
        As for :func:`~specmetrics.experiments.compare_allocations`.
    out : str or path, optional
        Folder of the resumable record (``cells.jsonl``, ``settings.json``).

    Returns
    -------
    AblationResult
    """
    from ..calibration import load_text
    from ..models.loading import is_causal_lm

    func = "ablation"
    target = check_interval(target, 0, 1, name="target", func=func, closed="left")
    epsilon = check_real(epsilon, name="epsilon", func=func)
    config = AlphaPruningConfig(epsilon=epsilon)
    grid = check_variants(variants, func)
    if isinstance(methods, str):
        methods = tuple(m.strip() for m in methods.split(",") if m.strip())
    if not isinstance(methods, Sequence) or not methods:
        raise fail("methods", func, "a non-empty sequence of pruning methods", methods)
    configs = [resolve_method(m, func=func, name="methods") for m in methods]
    if any(c.nm is not None for c in configs):
        raise fail("methods", func, "unstructured methods", methods)
    progress = check_bool(progress, name="progress", func=func)
    if not is_causal_lm(model):
        raise fail("model", func, "a causal LM (the grid is scored by perplexity)",
                   type(model).__name__)
    calibration = load_text("calibration") if calibration is None else calibration
    eval_texts = load_text("evaluation") if eval_texts is None else eval_texts
    held_out = EvalText(model, tokenizer, eval_texts, seqlen=seqlen, max_windows=max_windows,
                        func=func)
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                            seqlen=seqlen, seed=seed, func=func)
    settings = {"target": target, "epsilon": epsilon, "metric": metric,
                "variants": jsonable(grid), "methods": [method_label(c) for c in configs],
                "calibration": calib.settings(), "seqlen": held_out.seqlen,
                "n_windows": held_out.n_windows}
    record = _Record(out, settings, func) if out is not None else None

    done = record.cells() if record is not None else {}
    dense_ppl = record.dense() if record is not None else None
    if dense_ppl is None:
        dense_ppl = held_out.perplexity(model, progress=progress)
        if record is not None:
            record.write_dense(dense_ppl)
    spectrum = None
    from tqdm.auto import tqdm

    cells = [(label, c) for label in grid for c in configs]
    results = []
    bar = tqdm(cells, desc=func, unit="cell", disable=not progress)
    try:
        for label, method in bar:
            key = (label, method_label(method))
            if key in done:
                results.append(done[key])
                continue
            bar.set_postfix_str(f"{label} / {method.name}")
            started = time.perf_counter()
            options = grid[label]
            if options is None:
                sparsity = target
            else:
                if spectrum is None:
                    spectrum = esd(model)
                sparsity = allocate(spectrum, target, method=config, metric=metric, **options)
            pruned = copy.deepcopy(model)
            report = prune(pruned, sparsity, method=method, calibration=calib,
                           tokenizer=tokenizer, device=device, progress=progress)
            ppl = held_out.perplexity(pruned, progress=False)
            del pruned
            cell = AblationCell(variant=label, method=method_label(method), perplexity=ppl,
                                achieved=report.achieved, options=options,
                                time_s=time.perf_counter() - started)
            if record is not None:
                record.append(cell)
            results.append(cell)
            logger.info("ablation cell %s / %s: perplexity %.4g", label, method.name, ppl)
    finally:
        bar.close()
    return AblationResult(results, dense_perplexity=dense_ppl, settings=settings)


class _Record:
    """The resumable record of a grid in a folder: settings.json, dense.json, cells.jsonl."""

    def __init__(self, out, settings: Mapping, func: str):
        self.folder = Path(out)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.settings = json.loads(json.dumps(jsonable(settings)))
        path = self.folder / "settings.json"
        if path.is_file():
            previous = json.loads(path.read_text(encoding="utf-8"))
            if previous != self.settings:
                raise fail("out", func, "a folder of a run with the same settings (or a new "
                           f"folder): {path} records other settings", str(out))
        else:
            path.write_text(json.dumps(self.settings, indent=2) + "\n", encoding="utf-8")

    def cells(self) -> dict:
        path = self.folder / "cells.jsonl"
        if not path.is_file():
            return {}
        out = {}
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            try:
                cell = _cell_from(json.loads(line))
            except (ValueError, KeyError):  # a line cut by an interruption: recomputed
                continue
            out[(cell.variant, cell.method)] = cell
        return out

    def dense(self) -> Optional[float]:
        path = self.folder / "dense.json"
        if path.is_file():
            return float(json.loads(path.read_text(encoding="utf-8"))["perplexity"])
        return None

    def write_dense(self, ppl: float) -> None:
        (self.folder / "dense.json").write_text(json.dumps({"perplexity": ppl}) + "\n",
                                                encoding="utf-8")

    def append(self, cell: AblationCell) -> None:
        with open(self.folder / "cells.jsonl", "a", encoding="utf-8") as fh:
            fh.write(json.dumps(jsonable(_cell_payload(cell)), allow_nan=False) + "\n")
            fh.flush()
