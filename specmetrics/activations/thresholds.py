"""Magnitude thresholds for activation sparsity (TEAL, CATS), as pure functions and a result.

Definitions (``s`` is the target sparsity, the fraction of values to zero):

- :func:`abs_threshold`: ``t`` with ``P(|x| <= t) = s``, the ``s``-quantile of ``|x|``. Zeroing
  ``|x| <= t`` zeroes a fraction ``s`` of the values whatever the distribution's shape. This is
  what specmetrics uses for both TEAL and CATS.
- :func:`pos_threshold`, :func:`neg_threshold`: the ``s``-quantile of ``x`` given ``x > 0`` and of
  ``|x|`` given ``x < 0`` (the seed-000 table's "positive" and "negative" thresholds). Because
  ``P(|x| <= t)`` is the mixture ``p F₊(t) + (1 - p) F₋(t)`` of the two conditional CDFs, the
  ``|x|`` threshold always lies between them: ``min(t₊, t₋) <= t <= max(t₊, t₋)``.
- :func:`teal_signed_threshold`: TEAL's code, ``t = F⁻¹(0.5 + s/2)`` of the *signed* values. It
  equals :func:`abs_threshold` when ``x`` is symmetric about zero (the projection inputs TEAL
  sparsifies are nearly so) and is wrong for skewed tensors. On ``SiLU(Z)`` at a 50 % target it
  realises 75 % for ``Z ~ N(0, 1)``, 13.8 % for ``Z ~ N(-0.5, 1)`` and 0 % for ``Z ~ N(-1, 1)``
  (the threshold is then negative); on the ``silu_gate`` sites of tiny-llama-wt, 75 %, 0 %, 3 %,
  3 %, 3 % and 15 % for layers 0-5 (see ``tests/activations/test_thresholds.py`` and
  ``docs/activations.rst``).

Exact sample versions use the inverted empirical CDF: ``t`` is the ``k``-th smallest value with
``k = ceil(s n)`` (``0.0`` for ``k = 0``), so exactly ``k`` values satisfy ``|x| <= t`` when there
are no ties. :func:`activation_thresholds` reads the same quantities from the streaming
histograms of :func:`~specmetrics.activations.activation_stats`.
"""
from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Union

import numpy as np
import torch

from .._results import KeyedResult
from .._validation import check_choice, check_interval, fail
from .capture import ActivationStats
from .sites import CATS_KINDS, TEAL_KINDS, Site

__all__ = ["abs_threshold", "pos_threshold", "neg_threshold", "teal_signed_threshold",
           "fraction_at_or_below", "activation_thresholds", "ActivationThresholds", "STYLES"]

#: threshold styles and the site kinds they threshold
STYLES: dict[str, tuple[str, ...]] = {"teal": TEAL_KINDS, "cats": CATS_KINDS}



# ----------------------------------------------------------------------------------------------
# pure functions on a sample

def _values(x, func: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(np.asarray(x, dtype=np.float64))
        except (TypeError, ValueError):
            raise fail("x", func, "a tensor or array of real values", type(x).__name__) from None
    if not (x.is_floating_point() or x.dtype in (torch.int8, torch.int16, torch.int32,
                                                 torch.int64, torch.uint8)):
        raise fail("x", func, "a tensor or array of real values", f"dtype {x.dtype}")
    flat = x.detach().reshape(-1)
    if not flat.is_floating_point():
        flat = flat.double()
    if flat.numel() == 0:
        raise fail("x", func, "a non-empty tensor", "an empty tensor")
    if bool(torch.isnan(flat).any()):
        raise fail("x", func, "free of NaN", "a tensor with NaN")
    return flat


def _rank(s: float, n: int) -> int:
    """``ceil(s n)`` robust to the float error of ``s n`` (0.3 * 10 = 3.0000000000000004)."""
    return min(n, max(0, math.ceil(round(s * n, 9))))


def _kth(values: torch.Tensor, s: float) -> float:
    n = int(values.numel())
    if n == 0:
        return float("nan")
    k = _rank(s, n)
    if k == 0:
        return 0.0
    return float(torch.kthvalue(values.cpu(), k).values)


def abs_threshold(x, s: float) -> float:
    """The magnitude threshold that zeroes a fraction ``s`` of ``x``: the ``s``-quantile of ``|x|``.

    Parameters
    ----------
    x : torch.Tensor or array_like
        Activations, any shape.
    s : float
        Target sparsity in [0, 1].

    Returns
    -------
    float
        The ``ceil(s n)``-th smallest ``|x|``; ``0.0`` when ``ceil(s n) = 0``.

    Examples
    --------
    >>> abs_threshold([-4.0, -1.0, 0.5, 2.0, 3.0], 0.4)
    1.0
    """
    s = check_interval(s, 0.0, 1.0, name="s", func="abs_threshold", closed="both")
    return _kth(_values(x, "abs_threshold").abs(), s)


def pos_threshold(x, s: float) -> float:
    """The ``s``-quantile of ``x`` given ``x > 0`` (NaN without positive values).

    Examples
    --------
    >>> pos_threshold([-4.0, -1.0, 0.5, 2.0, 3.0], 0.5)
    2.0
    """
    s = check_interval(s, 0.0, 1.0, name="s", func="pos_threshold", closed="both")
    flat = _values(x, "pos_threshold")
    return _kth(flat[flat > 0], s)


def neg_threshold(x, s: float) -> float:
    """The ``s``-quantile of ``|x|`` given ``x < 0`` (NaN without negative values).

    Examples
    --------
    >>> neg_threshold([-4.0, -1.0, 0.5, 2.0, 3.0], 0.5)
    1.0
    """
    s = check_interval(s, 0.0, 1.0, name="s", func="neg_threshold", closed="both")
    flat = _values(x, "neg_threshold")
    return _kth(-flat[flat < 0], s)


def teal_signed_threshold(x, s: float) -> float:
    """TEAL's threshold: the signed ``(0.5 + s/2)``-quantile of ``x``.

    TEAL (``SparsifyFn``) computes ``distr.icdf(0.5 + s/2)`` of a 10,000-bin histogram of the
    signed activations and zeroes ``|x| <= t``. This is the ``s``-quantile of ``|x|`` only when
    ``x`` is symmetric about zero; for skewed tensors (``SiLU(gate)``) it misses the target and
    can even be negative (then nothing is zeroed). Kept for comparison; use
    :func:`abs_threshold`.

    Examples
    --------
    >>> teal_signed_threshold([-3.0, -1.0, 1.0, 3.0], 0.5)
    1.0
    """
    s = check_interval(s, 0.0, 1.0, name="s", func="teal_signed_threshold", closed="both")
    flat = _values(x, "teal_signed_threshold")
    k = max(1, _rank(0.5 + s / 2, int(flat.numel())))
    return float(torch.kthvalue(flat.cpu(), k).values)


def fraction_at_or_below(x, t: float) -> float:
    """``P(|x| <= t)``: the sparsity that thresholding ``x`` at ``t`` realises.

    Examples
    --------
    >>> fraction_at_or_below([-4.0, -1.0, 0.5, 2.0, 3.0], 1.0)
    0.4
    """
    flat = _values(x, "fraction_at_or_below")
    return float((flat.abs() <= float(t)).double().mean())


# ----------------------------------------------------------------------------------------------
# the result

@dataclass(frozen=True, eq=False)
class ActivationThresholds(KeyedResult):
    """Per-site magnitude thresholds, keyed by site name (``thr["model.layers.3.qkv"]``).

    A read-only mapping ``{site name: t}``: activations with ``|x| <= t`` are to be zeroed.

    Attributes
    ----------
    thresholds : mapping of str to float
    targets : mapping of str to float
        The target sparsity each threshold was fitted for.
    style : str
        ``"teal"`` (inputs of q/k/v, o, gate/up, down) or ``"cats"`` (``SiLU(gate)``).
    sites : mapping of str to Site
        Where each threshold applies (module, hook, width).
    settings : mapping
        ``definition`` (``"abs"`` or ``"teal"``) and the statistics' settings (calibration).
    """

    thresholds: Mapping[str, float]
    targets: Mapping[str, float]
    style: str
    sites: Mapping[str, Site] = field(default_factory=dict)
    settings: Mapping[str, Any] = field(default_factory=dict)

    _json_version = 2

    def __post_init__(self):
        thresholds = {str(k): float(v) for k, v in self.thresholds.items()}
        targets = {str(k): float(v) for k, v in self.targets.items()}
        if set(targets) != set(thresholds):
            raise ValueError("thresholds and targets must name the same sites.")
        check_choice(self.style, tuple(STYLES), name="style", func="ActivationThresholds")
        object.__setattr__(self, "thresholds", MappingProxyType(thresholds))
        object.__setattr__(self, "targets", MappingProxyType(targets))
        object.__setattr__(self, "sites", MappingProxyType(dict(self.sites)))
        self._init_result(thresholds, self.settings)

    def __eq__(self, other) -> bool:
        if not isinstance(other, ActivationThresholds):
            return NotImplemented
        return (dict(self.thresholds) == dict(other.thresholds)
                and dict(self.targets) == dict(other.targets) and self.style == other.style)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        targets = sorted(set(self.targets.values()))
        shown = targets if len(targets) <= 3 else f"{len(targets)} values"
        return (f"ActivationThresholds(style={self.style!r}, n_sites={len(self)}, "
                f"targets={shown})")

    def to_frame(self):
        """One row per site (indexed by name): ``kind``, ``block``, ``module``, ``hook``,
        ``width``, ``target``, ``threshold``."""
        import pandas as pd

        rows = []
        for name, t in self.thresholds.items():
            site = self.sites.get(name)
            rows.append({"site": name, "kind": site.kind if site else None,
                         "block": site.block if site else None,
                         "module": site.module if site else None,
                         "hook": site.hook if site else None,
                         "width": site.width if site else None,
                         "target": self.targets[name], "threshold": t})
        return pd.DataFrame(rows).set_index("site")

    def plot(self, ax=None):
        """The threshold by block, one line per site kind (log scale).

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.axes import new_axes

        ax = new_axes(ax)
        by_kind: dict[str, list] = {}
        for name, t in self.thresholds.items():
            site = self.sites.get(name)
            if site is not None:
                by_kind.setdefault(site.kind, []).append((site.block, t))
        for kind, points in by_kind.items():
            points.sort()
            ax.plot([b for b, _ in points], [t for _, t in points], marker="o", label=kind)
        ax.set_xlabel("block")
        ax.set_ylabel("|x| threshold")
        if any(t > 0 for t in self.thresholds.values()):
            ax.set_yscale("log")
        ax.legend(fontsize="small")
        ax.set_title(f"{self.style} thresholds")
        return ax

    # -- JSON --------------------------------------------------------------------------------
    def _to_payload(self) -> Any:
        return {"style": self.style, "sites": [
            {"name": name, "target": self.targets[name], "threshold": t,
             "site": asdict(self.sites[name]) if name in self.sites else None}
            for name, t in self.thresholds.items()]}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "ActivationThresholds":
        entries = data.get("sites", [])
        return cls(thresholds={e["name"]: e["threshold"] for e in entries},
                   targets={e["name"]: e["target"] for e in entries}, style=data["style"],
                   sites={e["name"]: Site(**e["site"]) for e in entries if e.get("site")},
                   settings=dict(settings))

    @classmethod
    def from_json(cls, source: Union[str, os.PathLike]) -> "ActivationThresholds":
        """Rebuild from :meth:`to_json` output (this version's or the earlier layout): a JSON
        text or the path of a file holding it."""
        from .._results import read_json_source

        doc = read_json_source(source, func="ActivationThresholds.from_json")
        if isinstance(doc, dict) and doc.get("format") == cls._json_format() \
                and doc.get("version") == 1:
            return cls._from_payload(doc, doc.get("settings", {}))
        return super().from_json(source)


def activation_thresholds(stats: ActivationStats, target, *, style: str = "teal",
                          definition: str = "abs") -> ActivationThresholds:
    """Per-site magnitude thresholds for a target sparsity, from calibration statistics.

    Parameters
    ----------
    stats : ActivationStats
        From :func:`~specmetrics.activations.activation_stats`; must hold the style's sites.
    target : float or mapping of str to float
        One sparsity in [0, 1) for every site of the style, or ``{site name: sparsity}`` for
        the named sites only (e.g. per-projection sparsities from a greedy search).
    style : {"teal", "cats"}, default "teal"
        ``"teal"``: the inputs of q/k/v, o, gate/up and down (sites ``qkv``, ``o``, ``gate_up``,
        ``down``); ``"cats"``: ``SiLU(gate(x))`` (site ``silu_gate``).
    definition : {"abs", "teal"}, default "abs"
        ``"abs"``: the ``s``-quantile of ``|x|`` (:func:`abs_threshold`); ``"teal"``: TEAL's
        signed ``(0.5 + s/2)``-quantile (:func:`teal_signed_threshold`), for comparison only.

    Returns
    -------
    ActivationThresholds
    """
    func = "activation_thresholds"
    if not isinstance(stats, ActivationStats):
        raise fail("stats", func, "an ActivationStats (from activation_stats)",
                   type(stats).__name__)
    check_choice(style, tuple(STYLES), name="style", func=func)
    check_choice(definition, ("abs", "teal"), name="definition", func=func)
    kinds = STYLES[style]
    eligible = {n: st for n, st in stats.items() if st.site.kind in kinds}
    if isinstance(target, Mapping):
        targets = {}
        for name, value in target.items():
            if name not in eligible:
                raise fail("target", func, f"a mapping over site names of kinds {kinds} present "
                           "in stats", name)
            targets[name] = check_interval(value, 0.0, 1.0, name="target", func=func)
    else:
        value = check_interval(target, 0.0, 1.0, name="target", func=func)
        if not eligible:
            present = sorted({s.site.kind for s in stats.values()})
            raise fail("stats", func, f"statistics holding sites of kinds {kinds} (style "
                       f"{style!r})", f"sites of kinds {present}")
        targets = {n: value for n in eligible}
    thresholds = {n: (eligible[n].abs_quantile(s) if definition == "abs"
                      else eligible[n].teal_quantile(s)) for n, s in targets.items()}
    return ActivationThresholds(thresholds=thresholds, targets=targets, style=style,
                                sites={n: eligible[n].site for n in targets},
                                settings={"definition": definition, **dict(stats.settings)})
