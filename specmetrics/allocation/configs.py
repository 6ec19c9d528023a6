"""Frozen configurations of the allocators, behind one small protocol.

Every allocator is a frozen config with:

``name`` (class attribute)
    Its one name, the key of :data:`ALLOCATORS` (``allocate(method="owl")``, the CLI's
    ``--allocation``, the grid runners).
``inputs`` (class attribute)
    What its unit scores come from: ``"spectrum"`` (a metric of the weight spectra, e.g.
    ``alpha_peak``), ``"activations"`` (computed from calibration activations of the dense model by
    ``unit_scores``), or ``None`` (no scores: uniform, or a depth trend).
``relative`` (class attribute)
    Whether the per-unit value before the budget is a ``"slope"`` (ratios ``s = t · r``, a scale)
    or a ``"base"`` (``s = t + d``, a shift); shown as the ``relative`` column.
``map_units(scores, *, depth) -> (base, slope)``
    Pure: unit scores (and each unit's depth in [0, 1]) to the per-unit line ``base + t · slope``
    whose parameter ``t`` :func:`~specmetrics.allocation.mapping.solve_budget` solves for the
    target (with clipping).
``unit_scores(model, units, input_sq_norms) -> {unit: score}`` (``inputs == "activations"``)
    The unit scores from the dense model and per-input-channel squared norms of calibration
    activations.

Options that apply to every allocator (units, budget, clipping, ...) stay keyword arguments of
:func:`~specmetrics.allocate`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import numpy as np

from .._validation import check_choice, check_interval, fail
from .mapping import NORMALIZATIONS, alphapruning_ratios, owl_offsets

__all__ = ["AlphaPruningConfig", "OWLConfig", "UniformConfig", "ALLOCATORS", "register",
           "resolve_method"]


@dataclass(frozen=True)
class AlphaPruningConfig:
    """AlphaPruning: ratios linear in the normalised heavy-tailed metric.

    Each unit's score is normalised to [0, 1], mapped to ``r`` in ``[1 - ε, 1 + ε]`` and scaled so
    that the parameter-weighted mean ratio is the target (``s = η r``). With the default
    ``normalize="minmax"`` and no clipping this is AlphaPruning's ``ww_sparsity`` exactly.

    Parameters
    ----------
    epsilon : float, default 0.2
        Half-width ε of the relative band, in [0, 1]. ε = 0 gives uniform ratios. 0.2 is what the
        AlphaPruning scripts use for Wanda and SparseGPT on LLaMA-7B at 70 % (their ``main.py``
        default is 0.3).
    normalize : {"minmax", "rank"}, default "minmax"
        ``"minmax"`` as AlphaPruning; ``"rank"`` uses each unit's rank, so one outlying score cannot
        squeeze every other unit into a narrow part of the band.
    invert : bool, default False
        ``False``: a higher metric gives more sparsity (AlphaPruning's direction for alpha: a large
        alpha means a less trained layer). ``True`` reverses it (e.g. for ``stable_rank``).

    References
    ----------
    .. [1] H. Lu et al., "AlphaPruning: Using Heavy-Tailed Self Regularization Theory for Improved
       Layer-wise Pruning of Large Language Models", NeurIPS 2024.
    """

    name: ClassVar[str] = "alphapruning"
    #: what the scores are computed from: the spectra of the weights
    inputs: ClassVar[str] = "spectrum"
    relative: ClassVar[str] = "slope"

    epsilon: float = 0.2
    normalize: str = "minmax"
    invert: bool = False

    def __post_init__(self):
        object.__setattr__(self, "epsilon", check_interval(
            self.epsilon, 0, 1, name="epsilon", func="AlphaPruningConfig", closed="both"))
        check_choice(self.normalize, NORMALIZATIONS, name="normalize", func="AlphaPruningConfig")
        check_choice(self.invert, (False, True), name="invert", func="AlphaPruningConfig")

    def map_units(self, scores, *, depth=None):
        """``(0, r)``: ratios ``η r`` with AlphaPruning's relative ratios ``r`` of the scores."""
        r = alphapruning_ratios(scores, self.epsilon, normalize=self.normalize,
                                invert=self.invert)
        return np.zeros_like(r), r


@dataclass(frozen=True)
class OWLConfig:
    """OWL: outlier-weighed layer-wise sparsity from calibration activations.

    For each unit (a decoder block by default), the Wanda scores ``|W_ij| · ‖X_j‖₂`` of its
    matrices are concatenated and the outlier ratio ``D`` (percent above ``m`` times their mean) is
    taken; ``D`` is min-max normalised to ``u`` and the ratios are ``s = c - 2λ u`` with the shift
    ``c`` solved for the target: more outliers, less sparsity.

    Parameters
    ----------
    m : float, default 5.0
        Outlier threshold multiple ``M`` (> 0). 5 is what the OWL README scripts use for LLaMA
        (the argparse default is 3).
    lam : float, default 0.08
        λ in [0, 0.5]: the ratios of the units span at most ``2λ``.
    calibration : optional
        What the outlier ratios are computed from, when ``allocate`` gets an ``nn.Module``:
        a ``torch.Tensor`` of token ids of shape (n_samples, seq_len); an iterable of batches
        (token-id tensors, or dicts of model keyword arguments); or a mapping
        ``{module name: tensor of shape (in_features,)}`` of per-input-channel sums of squared
        activations already captured (e.g. by the pruning module). Not compared, hashed or shown
        in ``repr``. With a scores mapping or a ``SpectrumReport`` as source, calibration is not
        used: the given scores are taken as the outlier ratios.
    batch_size : int, default 1
        Sequences per forward pass when ``calibration`` is a token-id tensor.
    normalize : {"minmax", "rank"}, default "minmax"
        How ``D`` is mapped to [0, 1]; ``"minmax"`` is OWL's.

    References
    ----------
    .. [1] L. Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for
       Pruning LLMs to High Sparsity", ICML 2024.
    """

    name: ClassVar[str] = "owl"
    #: what the scores are computed from: calibration activations of the dense model
    inputs: ClassVar[str] = "activations"
    relative: ClassVar[str] = "base"
    #: the label of its scores in tables
    score_label: ClassVar[str] = "outlier_ratio"

    m: float = 5.0
    lam: float = 0.08
    calibration: Any = field(default=None, compare=False, repr=False)
    batch_size: int = 1
    normalize: str = "minmax"

    def __post_init__(self):
        m = check_interval(self.m, 0, float("inf"), name="m", func="OWLConfig", closed="neither")
        object.__setattr__(self, "m", m)
        lam = check_interval(self.lam, 0, 0.5, name="lam", func="OWLConfig", closed="both")
        object.__setattr__(self, "lam", lam)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or self.batch_size < 1:
            raise fail("batch_size", "OWLConfig", "an integer >= 1", self.batch_size)
        check_choice(self.normalize, NORMALIZATIONS, name="normalize", func="OWLConfig")

    def map_units(self, scores, *, depth=None):
        """``(d, 1)``: ratios ``c + d`` with OWL's offsets ``d = -2λ u`` (u: normalised outlier
        ratio), the shift ``c`` solved for the target."""
        d = owl_offsets(scores, self.lam, normalize=self.normalize)
        return d, np.ones_like(d)

    def unit_scores(self, model, units, input_sq_norms):
        """OWL's outlier ratio of each unit (its matrices' Wanda scores pooled)."""
        from .owl import unit_outlier_ratios

        return unit_outlier_ratios(model, units, input_sq_norms, self.m)


@dataclass(frozen=True)
class UniformConfig:
    """Uniform: every prunable matrix gets the target ratio (the baseline)."""

    name: ClassVar[str] = "uniform"
    #: no scores
    inputs: ClassVar[None] = None
    relative: ClassVar[str] = "slope"

    def map_units(self, scores, *, depth=None):
        """``(0, 1)``: every unit at the target."""
        ones = np.ones(len(scores))
        return np.zeros_like(ones), ones


#: name -> allocator config class (the one registry ``allocate``, the CLI and the grid runners
#: read)
ALLOCATORS: dict[str, type] = {"uniform": UniformConfig, "alphapruning": AlphaPruningConfig,
                               "owl": OWLConfig}


def register(config_cls: type) -> type:
    """Add an allocator config class under its ``name`` (usable as a class decorator)."""
    for attr in ("name", "inputs", "relative", "map_units"):
        if not hasattr(config_cls, attr):
            raise TypeError(f"{config_cls.__name__} lacks {attr!r} (see the allocator protocol)")
    if config_cls.inputs == "activations" and not hasattr(config_cls, "unit_scores"):
        raise TypeError(f"{config_cls.__name__} reads activations but has no unit_scores")
    ALLOCATORS[config_cls.name] = config_cls
    return config_cls


def resolve_method(method, *, func: str = "allocate", name: str = "method"):
    """An allocator config from a config instance or a registered name (the default config of
    that allocator)."""
    if isinstance(method, tuple(ALLOCATORS.values())):
        return method
    if isinstance(method, str) and method.lower() in ALLOCATORS:
        return ALLOCATORS[method.lower()]()
    classes = ", ".join(c.__name__ for c in ALLOCATORS.values())
    names = ", ".join(repr(n) for n in ALLOCATORS)
    raise fail(name, func, f"an allocator config ({classes}) or one of {names}", method)


def config_settings(config) -> dict[str, Any]:
    """The JSON-able settings of a config (data fields such as ``calibration`` or
    ``sensitivity``, declared with ``compare=False``, left out)."""
    out: dict[str, Any] = {"name": config.name}
    for f in fields(config):
        if f.compare:
            out[f.name] = getattr(config, f.name)
    return out
