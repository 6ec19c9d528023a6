"""``alphaprobe``: AlphaPruning's spectral prior, its settings chosen by a loss probe.

AlphaPruning maps each block's heavy-tailed metric (``alpha_peak``) to a ratio linear in the
normalised metric, ``r_b ∈ [1 − ε, 1 + ε]``, scaled to the target; its ε (0.2 or 0.3), its
direction (higher alpha → more sparsity) and its min-max normalisation are fixed by hand, and on
some models one outlying block squeezes every other into a corner of the band. ``alphaprobe``
keeps the spectral prior and checks it against the model: a probe measures, for each block
alone, how much the calibration loss rises when it is pruned at a few ratios
(:func:`specmetrics.experiments.block_sensitivity`, a few forward passes of the model), and among
the AlphaPruning allocations over a grid of

- ε (the half-width of the band),
- direction (higher metric → more or less sparsity),
- normalisation (min-max, or ranks, robust to one outlying block),
- a depth trend ``γ`` (ratios rising or falling linearly with depth, as ATP's schedule),

the one of least *predicted* loss increase ``Σ_b Δ_b(s_b)`` is kept, ``Δ_b`` interpolated
log-linearly between the probed ratios (and the dense model, ``Δ_b(0) = 0``). Every candidate is
solved for the exact budget with the clipping of :func:`~specmetrics.allocate`, so the chosen one
is an AlphaPruning allocation with the parameters it records in ``settings["method"]["chosen"]``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Optional

import numpy as np

from .._validation import check_interval, fail
from .configs import register
from .mapping import NORMALIZATIONS, alphapruning_ratios, solve_budget

__all__ = ["AlphaProbeConfig", "predicted_increase"]

_FLOOR = 1e-6  # nats: the loss increase assumed for an unpruned block (log-interpolation anchor)


def predicted_increase(deltas: Mapping[float, float], ratio: float) -> float:
    """A block's loss increase at ``ratio``, interpolated log-linearly between probed ratios.

    Parameters
    ----------
    deltas : mapping of float to float
        ``{probed ratio: measured increase of the mean NLL}``; ``Δ(0) = 0`` is added.
    ratio : float

    Returns
    -------
    float
        ``exp`` of the piecewise-linear interpolation of ``log max(Δ, 1e-6)`` in the ratio,
        extrapolated with the slope of the last segment above the largest probed ratio.
    """
    points = sorted((float(r), max(float(d), _FLOOR)) for r, d in deltas.items()
                    if math.isfinite(d))
    if not points:
        return math.nan
    xs = [0.0] + [r for r, _ in points]
    ys = [math.log(_FLOOR)] + [math.log(d) for _, d in points]
    if ratio <= xs[-1]:
        return math.exp(float(np.interp(ratio, xs, ys)))
    slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return math.exp(ys[-1] + slope * (ratio - xs[-1]))


@register
@dataclass(frozen=True)
class AlphaProbeConfig:
    """AlphaPruning with ε, direction, normalisation and depth trend chosen by a loss probe.

    Parameters
    ----------
    sensitivity : BlockSensitivity or mapping, optional
        ``{block name: {ratio: increase of the mean NLL}}`` from
        :func:`specmetrics.experiments.block_sensitivity`. The grid runners compute it when it
        is ``None``; :func:`~specmetrics.allocate` needs it.
    epsilons : tuple of float, default 0, 0.05, ..., 0.5
    normalizations : tuple of str, default ("minmax", "rank")
    directions : tuple of bool, default (False, True)
        ``invert`` values tried (``False``: higher metric, more sparsity: AlphaPruning's).
    trends : tuple of float, default (-0.3, -0.15, 0, 0.15, 0.3)
        Depth trends ``γ``: the relative ratio of block ``b`` becomes ``r_b + γ (d_b - 1/2)``,
        ``d_b`` its depth in [0, 1].
    probe_ratios : tuple of float or None, default None
        Ratios the runners probe at (``None``: the target and the target − 0.2).
    probe_nsamples : int, default 2
        Calibration windows of the probe.

    Notes
    -----
    Works with block units (``units="block"``) only: the probe measures blocks.
    """

    name: ClassVar[str] = "alphaprobe"
    inputs: ClassVar[str] = "spectrum"
    relative: ClassVar[str] = "slope"
    #: the grid runners run :func:`~specmetrics.experiments.block_sensitivity` for it
    needs_probe: ClassVar[bool] = True

    sensitivity: Any = field(default=None, compare=False, repr=False)
    epsilons: tuple = tuple(round(0.05 * i, 2) for i in range(11))
    normalizations: tuple = NORMALIZATIONS
    directions: tuple = (False, True)
    trends: tuple = (-0.3, -0.15, 0.0, 0.15, 0.3)
    probe_ratios: Optional[tuple] = None
    probe_nsamples: int = 2

    def __post_init__(self):
        func = "AlphaProbeConfig"
        for name, lo, hi in (("epsilons", 0, 1), ("trends", -1, 1)):
            values = getattr(self, name)
            if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__") or \
                    not len(tuple(values)):
                raise fail(name, func, "a non-empty tuple of numbers", values)
            object.__setattr__(self, name, tuple(
                check_interval(v, lo, hi, name=name, func=func, closed="both") for v in values))
        if not self.normalizations or any(n not in NORMALIZATIONS for n in self.normalizations):
            raise fail("normalizations", func, f"a non-empty tuple among {NORMALIZATIONS}",
                       self.normalizations)
        object.__setattr__(self, "normalizations", tuple(self.normalizations))
        if not self.directions or any(not isinstance(d, bool) for d in self.directions):
            raise fail("directions", func, "a non-empty tuple of True/False", self.directions)
        object.__setattr__(self, "directions", tuple(self.directions))
        if self.probe_ratios is not None:
            object.__setattr__(self, "probe_ratios", tuple(
                check_interval(r, 0, 1, name="probe_ratios", func=func, closed="neither")
                for r in self.probe_ratios))
        if isinstance(self.probe_nsamples, bool) or not isinstance(self.probe_nsamples, int) \
                or self.probe_nsamples < 1:
            raise fail("probe_nsamples", func, "an integer >= 1", self.probe_nsamples)
        if self.sensitivity is not None and not isinstance(self.sensitivity, Mapping):
            raise fail("sensitivity", func, "None, a BlockSensitivity or a mapping {block: "
                       "{ratio: loss increase}}", type(self.sensitivity).__name__)

    def probe_ratios_for(self, target: float) -> tuple:
        """The ratios the probe runs at for ``target``."""
        if self.probe_ratios is not None:
            return self.probe_ratios
        return tuple(sorted({round(max(0.05, target - 0.2), 6), round(target, 6)}))

    # -- the allocator protocol ---------------------------------------------------------------
    def map_units(self, scores, *, depth=None, units=None, weights=None, target=None, clip=None):
        """``(0, slope, chosen)``: the AlphaPruning relative ratios of the candidate of least
        predicted loss increase, and the record of the choice."""
        func = "allocate"
        if self.sensitivity is None:
            raise fail("method", func, "an AlphaProbeConfig with sensitivity (run "
                       "specmetrics.experiments.block_sensitivity, or use compare_allocations)",
                       self)
        scores = np.asarray(scores, dtype=np.float64)
        missing = [u for u in units if u not in self.sensitivity]
        if missing:
            raise fail("method", func, "an AlphaProbeConfig whose sensitivity names every unit "
                       f"(block units only; missing {missing[:3]})", sorted(self.sensitivity)[:3])
        depth = np.asarray(depth, dtype=np.float64)
        weights = np.asarray(weights, dtype=np.float64)
        centred = depth - float(np.average(depth, weights=weights))
        best = None
        table = []
        for eps in self.epsilons:
            for norm in self.normalizations:
                for invert in self.directions:
                    r = alphapruning_ratios(scores, eps, normalize=norm, invert=invert)
                    for trend in self.trends:
                        slope = np.maximum(r + trend * centred, 1e-3)
                        try:
                            ratios, _ = solve_budget(np.zeros_like(slope), slope, weights, target,
                                                     clip=clip)
                        except Exception:  # the clip cannot reach the target: not a candidate
                            continue
                        loss = math.fsum(predicted_increase(self.sensitivity[u], float(s))
                                         for u, s in zip(units, ratios))
                        key = (loss, abs(trend), eps, norm != "minmax", invert)
                        table.append({"epsilon": eps, "normalize": norm, "invert": invert,
                                      "trend": trend, "predicted": loss})
                        if best is None or key < best[0]:
                            best = (key, slope, dict(table[-1]))
        if best is None:
            raise fail("clip", func, "bounds within which some candidate reaches the target",
                       clip)
        uniform = math.fsum(predicted_increase(self.sensitivity[u], float(target))
                            for u in units)
        chosen = {**best[2], "predicted_uniform": uniform, "n_candidates": len(table)}
        return np.zeros_like(best[1]), best[1], chosen
