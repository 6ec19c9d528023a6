"""The result of :func:`~specmetrics.allocate`: a frozen mapping from module name to ratio."""
from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterator

from .module_types import MODULE_TYPES

__all__ = ["AllocatedMatrix", "Allocation"]

_FORMAT = "specmetrics.Allocation"
_VERSION = 1


@dataclass(frozen=True)
class AllocatedMatrix:
    """One prunable weight matrix in an :class:`Allocation`.

    Attributes
    ----------
    name : str
        Qualified module name.
    n_params : int
        Parameter count used as its weight in the mean.
    unit : str
        The unit it belongs to: its own name (``units="matrix"``), its block prefix
        (``"model.layers.3"``) or block and group (``"model.layers.3:attention"``).
    block : int or None
        Index of its repeated block; ``None`` outside the blocks.
    group : str
        ``"attention"``, ``"mlp"`` or ``"other"``.
    module_type : str or None
        One of ``q k v o qkv gate up down gate_up``, or ``None`` when not recognised.
    metric : float
        Its own metric value (NaN where none was computed: uniform, OWL from calibration).
    score : float
        Its unit's score (mean metric of the unit's scoring matrices, or OWL's outlier ratio).
    relative : float
        Its unit's mapped value before the budget: the relative ratio ``r`` (AlphaPruning,
        uniform) or the offset ``d`` (OWL); NaN when the matrix is held at the target.
    ratio : float
        Its sparsity ratio.
    applied : bool
        Whether it got a score-based ratio (``False``: held at the target, by ``apply_to`` or by
        the degenerate-metric policy).
    degenerate : bool
        Whether its unit's score was not finite.
    """

    name: str
    n_params: int
    unit: str
    block: int | None
    group: str
    module_type: str | None
    metric: float
    score: float
    relative: float
    ratio: float
    applied: bool
    degenerate: bool


def _jsonable(value: float) -> float | None:
    return None if isinstance(value, float) and not math.isfinite(value) else value


@dataclass(frozen=True, eq=False)
class Allocation(Mapping):
    """Layer-wise sparsity ratios keyed by qualified module name.

    A read-only mapping ``{module name: ratio}`` (``alloc["model.layers.3.mlp.up_proj"]``) with
    the per-matrix details kept alongside. Two allocations compare equal when their ratios do
    (as mappings).

    Parameters
    ----------
    matrices : tuple of AllocatedMatrix
        One entry per prunable matrix, in model order.
    target : float
        The requested parameter-weighted mean ratio.
    settings : mapping
        The options that produced it (method and its config, metric, units, budget, clip,
        score_from, apply_to, on_degenerate), JSON-able.
    """

    matrices: tuple[AllocatedMatrix, ...]
    target: float
    settings: Mapping[str, Any] = field(default_factory=dict)
    _ratios: Mapping[str, float] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "matrices", tuple(self.matrices))
        object.__setattr__(self, "settings", MappingProxyType(dict(self.settings)))
        ratios = {m.name: m.ratio for m in self.matrices}
        if len(ratios) != len(self.matrices):
            raise ValueError("module names in an Allocation must be unique.")
        object.__setattr__(self, "_ratios", MappingProxyType(ratios))

    # -- mapping protocol -------------------------------------------------------------------
    def __getitem__(self, name: str) -> float:
        return self._ratios[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._ratios)

    def __len__(self) -> int:
        return len(self._ratios)

    def __repr__(self) -> str:
        return (f"Allocation(target={self.target!r}, achieved={self.achieved:.6g}, "
                f"n_matrices={len(self)}, method={self.settings.get('method', {}).get('name')!r}, "
                f"units={self.settings.get('units')!r}, budget={self.settings.get('budget')!r})")

    # -- summaries ---------------------------------------------------------------------------
    @property
    def ratios(self) -> dict[str, float]:
        """A plain ``dict`` copy of ``{module name: ratio}``."""
        return dict(self._ratios)

    @property
    def achieved(self) -> float:
        """The parameter-weighted mean ratio actually allocated (equals ``target`` to rounding)."""
        total = sum(m.n_params for m in self.matrices)
        if total == 0:
            return float("nan")
        return math.fsum(m.ratio * m.n_params for m in self.matrices) / total

    def achieved_by_group(self) -> dict[str, float]:
        """Parameter-weighted mean ratio of each group (``attention``, ``mlp``, ``other``)."""
        out: dict[str, float] = {}
        for group in dict.fromkeys(m.group for m in self.matrices):
            members = [m for m in self.matrices if m.group == group]
            total = sum(m.n_params for m in members)
            out[group] = math.fsum(m.ratio * m.n_params for m in members) / total
        return out

    def to_frame(self, level: str = "unit"):
        """The allocation as a pandas DataFrame.

        Parameters
        ----------
        level : {"unit", "matrix"}, default "unit"
            ``"unit"``: one row per unit, indexed by unit name, with ``block``, ``group``
            (``"attention+mlp"`` when a unit spans both), ``n_matrices``, ``n_params`` (sum),
            ``score``, ``relative``, ``ratio`` (parameter-weighted mean over the unit), ``applied``
            (all matrices applied) and ``degenerate``. ``"matrix"``: one row per matrix, indexed
            by module name, with every field of :class:`AllocatedMatrix`.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        from .._checks import check_choice

        check_choice(level, ("unit", "matrix"), name="level", func="Allocation.to_frame")
        rows = [asdict(m) for m in self.matrices]
        frame = pd.DataFrame(rows, columns=[f.name for f in fields(AllocatedMatrix)])
        if level == "matrix":
            return frame.set_index("name")
        out = []
        for unit in dict.fromkeys(m.unit for m in self.matrices):
            members = [m for m in self.matrices if m.unit == unit]
            total = sum(m.n_params for m in members)
            applied = [m for m in members if m.applied]
            rel = applied[0].relative if applied else float("nan")
            out.append({
                "unit": unit,
                "block": members[0].block,
                "group": "+".join(dict.fromkeys(m.group for m in members)),
                "n_matrices": len(members),
                "n_params": total,
                "score": members[0].score,
                "relative": rel,
                "ratio": math.fsum(m.ratio * m.n_params for m in members) / total,
                "applied": all(m.applied for m in members),
                "degenerate": members[0].degenerate,
            })
        return pd.DataFrame(out).set_index("unit")

    # -- serialisation -----------------------------------------------------------------------
    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 2) -> str:
        """Serialise to JSON (non-finite floats as ``null``); write to ``path`` if given.

        Parameters
        ----------
        path : str or path-like, optional
            File to write.
        indent : int or None, default 2

        Returns
        -------
        str
            The JSON text: ``{"format", "version", "target", "achieved", "settings", "ratios",
            "matrices"}``; ``ratios`` is the plain ``{module name: ratio}`` map.
        """
        payload = {
            "format": _FORMAT,
            "version": _VERSION,
            "target": self.target,
            "achieved": self.achieved,
            "settings": dict(self.settings),
            "ratios": dict(self._ratios),
            "matrices": [{k: _jsonable(v) for k, v in asdict(m).items()} for m in self.matrices],
        }
        text = json.dumps(payload, indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> "Allocation":
        """Read an allocation written by :meth:`to_json`.

        Parameters
        ----------
        source : str or path-like
            JSON text, or the path of a file holding it.

        Returns
        -------
        Allocation
        """
        if isinstance(source, os.PathLike) or not str(source).lstrip().startswith("{"):
            text = Path(source).read_text(encoding="utf-8")
        else:
            text = str(source)
        payload = json.loads(text)
        if payload.get("format") != _FORMAT:
            raise ValueError(f"not a serialised Allocation (format={payload.get('format')!r}).")
        float_fields = {"metric", "score", "relative", "ratio"}
        matrices = []
        for row in payload["matrices"]:
            row = {k: (float("nan") if (k in float_fields and v is None) else v)
                   for k, v in row.items()}
            matrices.append(AllocatedMatrix(**row))
        settings = payload.get("settings", {})
        if isinstance(settings.get("clip"), list):
            settings["clip"] = tuple(settings["clip"])
        return cls(matrices=tuple(matrices), target=payload["target"], settings=settings)

    # -- plotting ----------------------------------------------------------------------------
    def plot(self, *, figsize=(8.0, 5.5), title: str | None = None):
        """Sparsity ratio and metric by block.

        Top: the ratio of the score-based matrices per block, one line per series (the module
        type for ``units="matrix"``, the group for ``"split"`` or a per-group budget, else the
        block), with the target dashed. Bottom: each matrix's metric by module type (small
        markers) and the unit score (line). Matrices outside the repeated blocks are not drawn.

        Parameters
        ----------
        figsize : tuple of float, default (8.0, 5.5)
        title : str, optional
            Figure title (default: a summary of the settings).

        Returns
        -------
        matplotlib.figure.Figure
        """
        import matplotlib.pyplot as plt

        units = self.settings.get("units")
        per_group = self.settings.get("budget") == "per_group"
        blocks = [m for m in self.matrices if m.block is not None]
        fig, (ax_ratio, ax_metric) = plt.subplots(2, 1, sharex=True, figsize=figsize,
                                                  constrained_layout=True)

        def series_of(m: AllocatedMatrix) -> str:
            if units == "matrix":
                return m.module_type or "other"
            if units == "split" or per_group:
                return m.group
            return "block"

        type_order = {t: i for i, t in enumerate(MODULE_TYPES)}
        series: dict[str, dict[int, list[AllocatedMatrix]]] = {}
        for m in blocks:
            if m.applied:
                series.setdefault(series_of(m), {}).setdefault(m.block, []).append(m)
        for label in sorted(series, key=lambda s: (type_order.get(s, 99), s)):
            by_block = series[label]
            xs = sorted(by_block)
            ys = [math.fsum(m.ratio * m.n_params for m in by_block[b])
                  / sum(m.n_params for m in by_block[b]) for b in xs]
            ax_ratio.plot(xs, ys, marker="o", markersize=3, label=label)
        ax_ratio.axhline(self.target, color="0.4", linestyle="--", linewidth=1,
                         label=f"target {self.target:g}")
        clip = self.settings.get("clip")
        if clip is not None:
            for bound in clip:
                ax_ratio.axhline(bound, color="0.75", linestyle=":", linewidth=1)
        ax_ratio.set_ylabel("sparsity ratio")
        ax_ratio.legend(fontsize="small", ncol=4, loc="best")

        metric_name = self.settings.get("metric") or "metric"
        by_type: dict[str, list[AllocatedMatrix]] = {}
        for m in blocks:
            if math.isfinite(m.metric):
                by_type.setdefault(m.module_type or "other", []).append(m)
        for label in sorted(by_type, key=lambda s: (type_order.get(s, 99), s)):
            ms = by_type[label]
            ax_metric.plot([m.block for m in ms], [m.metric for m in ms], linestyle="none",
                           marker=".", alpha=0.6, label=label)
        unit_scores: dict[str, dict[int, float]] = {}
        if units != "matrix":
            for m in blocks:
                if math.isfinite(m.score):
                    key = "unit score" if units == "block" else f"{m.group} score"
                    unit_scores.setdefault(key, {})[m.block] = m.score
        for label, values in unit_scores.items():
            xs = sorted(values)
            ax_metric.plot(xs, [values[x] for x in xs], linewidth=1.5, label=label)
        ax_metric.set_ylabel(str(metric_name))
        ax_metric.set_xlabel("block")
        if by_type or unit_scores:
            ax_metric.legend(fontsize="small", ncol=4, loc="best")
        method = self.settings.get("method", {})
        fig.suptitle(title if title is not None else
                     f"{method.get('name', '')} · units={units} · budget="
                     f"{self.settings.get('budget')} · achieved {self.achieved:.4f}")
        return fig
