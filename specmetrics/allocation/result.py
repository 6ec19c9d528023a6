"""The result of :func:`~specmetrics.allocate`: a frozen mapping from module name to ratio."""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from .._results import KeyedResult, nan_if_none

__all__ = ["AllocatedMatrix", "Allocation"]

_FLOAT_FIELDS = ("metric", "score", "relative", "ratio")


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


@dataclass(frozen=True, eq=False)
class Allocation(KeyedResult):
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

    _json_version = 2

    def __post_init__(self):
        object.__setattr__(self, "matrices", tuple(self.matrices))
        ratios = {m.name: m.ratio for m in self.matrices}
        if len(ratios) != len(self.matrices):
            raise ValueError("module names in an Allocation must be unique.")
        self._init_result(ratios, self.settings)

    def __repr__(self) -> str:
        return (f"Allocation(target={self.target!r}, achieved={self.achieved:.6g}, "
                f"n_matrices={len(self)}, method={self.settings.get('method', {}).get('name')!r}, "
                f"units={self.settings.get('units')!r}, budget={self.settings.get('budget')!r})")

    # -- summaries ---------------------------------------------------------------------------
    @property
    def ratios(self) -> dict[str, float]:
        """A plain ``dict`` copy of ``{module name: ratio}``."""
        return dict(self._items)

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

        from .._validation import check_choice

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
    def _to_payload(self) -> Any:
        return {"target": self.target, "achieved": self.achieved, "ratios": dict(self._items),
                "matrices": [asdict(m) for m in self.matrices]}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "Allocation":
        matrices = []
        for row in data["matrices"]:
            row = {k: (nan_if_none(v) if k in _FLOAT_FIELDS else v) for k, v in row.items()}
            matrices.append(AllocatedMatrix(**row))
        settings = dict(settings)
        if isinstance(settings.get("clip"), list):
            settings["clip"] = tuple(settings["clip"])
        return cls(matrices=tuple(matrices), target=data["target"], settings=settings)

    @classmethod
    def from_json(cls, source: str | os.PathLike) -> "Allocation":
        """Read an allocation written by :meth:`to_json` (this version's layout or the earlier
        one, version 1).

        Parameters
        ----------
        source : str or path-like
            JSON text (a ``str`` starting with ``{``), or the path of a file holding it.
        """
        from .._results import read_json_source

        payload = read_json_source(source, func="Allocation.from_json")
        if isinstance(payload, dict) and payload.get("format") == cls._json_format() \
                and payload.get("version") == 1:
            return cls._from_payload(payload, payload.get("settings", {}))
        return super().from_json(source)

    # -- plotting ----------------------------------------------------------------------------
    def plot(self, ax=None, *, panel: str = "ratio", figsize=(8.0, 5.5), title: str | None = None):
        """Sparsity ratio and the metric that drove it, by block.

        With ``ax`` omitted, a new figure with two panels: the ratio of the score-based matrices
        per block (one line per series; the target dashed, the clip bounds dotted) and, below,
        each matrix's metric (``settings["metric"]``, e.g. ``alpha_peak``) by module type with
        the unit score. With ``ax`` given, the ``panel`` (``"ratio"`` or ``"metric"``) is drawn
        there. See :func:`specmetrics.plotting.plot_allocation`.

        Returns
        -------
        matplotlib.axes.Axes
            The ratio panel (or ``ax``); ``.figure`` is the whole figure.
        """
        from ..plotting.allocation import plot_allocation

        return plot_allocation(self, ax, panel=panel, figsize=figsize, title=title)
