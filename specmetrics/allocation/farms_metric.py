"""FARMS alpha as a per-matrix metric of :func:`~specmetrics.allocate`.

``allocate(model, S, method="alphapruning", metric="alpha_peak_farms")`` scores every prunable
matrix by the power-law alpha of its FARMS spectrum (the pooled ESD of fixed-aspect-ratio
submatrices, :func:`specmetrics.spectrum.farms.farms_alpha`) instead of the ESD of the whole
matrix, removing the aspect-ratio bias that makes a square attention projection and a 1 : 2.7
MLP projection incomparable; the paper's LLM-pruning setting is AlphaPruning's mapping on these
alphas (``alpha_peak_farms``: 2000 × 2000 windows, 15 positions per dimension, the
``alpha_peak`` fit). The alphas are computed from the weights only when such a metric is asked
for (about 1-2 s per 1536 × 576 SmolLM2 MLP matrix on one CPU core; see
:mod:`specmetrics.spectrum.farms` for the cost at LLaMA-7B scale), never by :func:`~specmetrics.esd`.

A square matrix no larger than the window is its own single window, so its FARMS alpha is the
``alpha_peak`` fit of its whole ESD. The FARMS fit keeps every positive eigenvalue
(``thresh=None``, the reference's ``filter_zeros=False``) while ``esd``'s ``alpha_peak`` drops
eigenvalues at or below 1e-5 (WeightWatcher's threshold): the two agree on a square matrix
whose eigenvalues all exceed 1e-5, or with ``FarmsMetric(thresh=1e-5)``.

References
----------
.. [1] Y. Hu, K. Goel, V. Killiakov, Y. Yang, "Eigenspectrum Analysis of Neural Networks without
   Aspect Ratio Bias", ICML 2025, arXiv:2506.06280 (code: github.com/HUST-AI-HYZ/FARMS,
   ``LLM_Pruning``, metric ``alpha_peak_farms``).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import torch

from .._validation import (check_device, check_float_dtype, check_interval, check_positive_int,
                           fail)
from ..spectrum.farms import (FARMS_ASPECT_RATIO, FARMS_WINDOW, FARMS_WINDOWS_PER_DIM,
                              farms_alpha)
from ..spectrum.powerlaw import check_xmin

__all__ = ["FarmsMetric", "FARMS_METRICS", "resolve_farms_metric"]

logger = logging.getLogger(__name__)

_DTYPES = (torch.float64, torch.float32)


@dataclass(frozen=True)
class FarmsMetric:
    """The FARMS alpha of each matrix, as ``allocate``'s ``metric``.

    ``metric="alpha_peak_farms"`` is ``FarmsMetric()``; pass an instance for other windows, a
    device or a dtype.

    Parameters
    ----------
    window : int, default 2000
        Rows of each submatrix (at most the matrix's smaller side).
    aspect_ratio : float, default 1.0
        Columns per row of each submatrix, > 0.
    windows_per_dim : int, default 15
        Window positions along each dimension.
    xmin : str or float, default "peak"
        ``xmin`` policy of the fit (``"peak"``: AlphaPruning's ``alpha_peak``).
    thresh : float or None, default None
        Eigenvalues at or below it are dropped before the fit (``None``: the reference's
        ``filter_zeros=False``; ``esd``'s fits use 1e-5).
    dtype : {"float64", "float32"} or torch.dtype, default "float64"
        Compute dtype of the eigenvalues.
    device : str, torch.device or None, default None
        Where the eigenvalues are computed (default: where each weight lives).

    Attributes
    ----------
    label : str
        ``"alpha_peak_farms"`` for the peak fit, else ``"alpha_farms"``: the metric's label in
        the allocation's settings and tables.
    """

    window: int = FARMS_WINDOW
    aspect_ratio: float = FARMS_ASPECT_RATIO
    windows_per_dim: int = FARMS_WINDOWS_PER_DIM
    xmin: Any = "peak"
    thresh: Optional[float] = None
    dtype: Any = "float64"
    device: Any = None

    def __post_init__(self):
        func = "FarmsMetric"
        object.__setattr__(self, "window", check_positive_int(self.window, name="window",
                                                               func=func))
        object.__setattr__(self, "aspect_ratio", check_interval(
            self.aspect_ratio, 0, math.inf, name="aspect_ratio", func=func, closed="neither"))
        object.__setattr__(self, "windows_per_dim", check_positive_int(
            self.windows_per_dim, name="windows_per_dim", func=func))
        object.__setattr__(self, "xmin", check_xmin(self.xmin, func=func))
        if self.thresh is not None:
            object.__setattr__(self, "thresh", check_interval(
                self.thresh, 0, math.inf, name="thresh", func=func))
        dtype = check_float_dtype(self.dtype, _DTYPES, func=func)
        object.__setattr__(self, "dtype", str(dtype).replace("torch.", ""))
        device = check_device(self.device, func=func)
        object.__setattr__(self, "device", None if device is None else str(device))

    @property
    def label(self) -> str:
        return "alpha_peak_farms" if self.xmin == "peak" else "alpha_farms"

    def settings(self) -> dict[str, Any]:
        """The JSON-able options (recorded in the allocation's settings)."""
        return {"window": self.window, "aspect_ratio": self.aspect_ratio,
                "windows_per_dim": self.windows_per_dim, "xmin": self.xmin,
                "thresh": self.thresh, "dtype": self.dtype}

    def value(self, weight: torch.Tensor, *, kind: str = "linear") -> float:
        """The FARMS alpha of one weight (NaN for a weight that is not a matrix or whose fit
        fails; no warning here, the allocation's degenerate-metric policy reports it).

        Parameters
        ----------
        weight : torch.Tensor
            ``(out_features, in_features)`` for a Linear; a GPT-2 ``Conv1D`` weight (``kind
            "conv1d"``, stored ``(in, out)``) is transposed first.
        kind : str, default "linear"
            The :class:`~specmetrics.models.WeightMatrix` kind.
        """
        if weight.dim() != 2:
            return math.nan
        if kind == "conv1d":
            weight = weight.T
        fit = farms_alpha(weight, window=self.window, aspect_ratio=self.aspect_ratio,
                          windows_per_dim=self.windows_per_dim, xmin=self.xmin,
                          thresh=self.thresh, dtype=self.dtype, device=self.device, warn=False)
        return float(fit.alpha) if fit.success else math.nan

    def values(self, matrices) -> dict[str, float]:
        """``{name: FARMS alpha}`` of :class:`~specmetrics.models.WeightMatrix` records."""
        out = {}
        for w in matrices:
            out[w.name] = self.value(w.load(), kind=w.kind)
            logger.debug("FARMS %s %s: alpha %.4g", w.name, w.shape, out[w.name])
        return out


#: metric names of ``allocate`` computed by FARMS -> their settings
FARMS_METRICS: dict[str, FarmsMetric] = {"alpha_peak_farms": FarmsMetric()}


def resolve_farms_metric(metric) -> Optional[FarmsMetric]:
    """The :class:`FarmsMetric` a ``metric`` argument names (``None`` when it is another
    metric)."""
    if isinstance(metric, FarmsMetric):
        return metric
    if isinstance(metric, str) and metric in FARMS_METRICS:
        return FARMS_METRICS[metric]
    return None


def check_metric(metric, func: str):
    """``metric`` as ``allocate`` accepts it: a column name, a callable or a FarmsMetric."""
    if not (isinstance(metric, (str, FarmsMetric)) or callable(metric)):
        raise fail("metric", func, "a column name, a callable or a FarmsMetric", metric)
    return metric
