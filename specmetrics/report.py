"""Result objects of :func:`specmetrics.esd`: one :class:`LayerSpectrum` per matrix."""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Iterator, Optional

import numpy as np

from .powerlaw import PowerLawFit

__all__ = ["LayerSpectrum", "SpectrumReport", "WW_COLUMNS"]

# WeightWatcher's analyze() columns, in its order, that both backends report.
WW_COLUMNS = (
    "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes",
    "alpha_weighted", "log_alpha_norm", "norm", "log_norm", "spectral_norm", "log_spectral_norm",
    "stable_rank", "matrix_rank", "entropy", "rank_loss", "weak_rank_loss",
    "lambda_max", "sv_max", "sv_min", "num_evals", "N", "M", "Q", "rf", "layer_type", "status", "warning",
)


@dataclasses.dataclass(frozen=True)
class LayerSpectrum:
    """The spectrum of one weight matrix and everything measured on it.

    Attributes
    ----------
    name : str
        Qualified module name.
    kind : str
        ``"linear"``, ``"conv1d"``, ``"conv2d"``, ``"embedding"`` or ``"tensor"``.
    shape : tuple of int
        Shape of the weight as stored.
    n_params : int
        Number of weights.
    eigenvalues : ndarray of float64, shape (M * rf,) or None
        Ascending eigenvalues of ``W^T W`` (pooled over kernel positions); ``None``
        when the backend does not expose them.
    fits : Mapping[str, PowerLawFit]
        ``"alpha"`` (WeightWatcher's KS fit), ``"alpha_peak"``, ``"alpha_mid"`` and,
        where asked for, more.
    metrics : Mapping[str, object]
        The row of :meth:`SpectrumReport.to_frame` for this matrix (WeightWatcher's
        column names plus ``alpha_peak``, ``alpha_mid``, ``n_params``...).
    """

    name: str
    kind: str
    shape: tuple
    n_params: int
    eigenvalues: Optional[np.ndarray]
    fits: Mapping
    metrics: Mapping

    @property
    def fit(self) -> PowerLawFit:
        """The main (WeightWatcher-style) power-law fit."""
        return self.fits["alpha"]

    @property
    def alpha(self) -> float:
        return float(self.metrics.get("alpha", math.nan))

    def plot(self, ax=None, *, fit: str = "alpha"):
        """Log-log ESD histogram with the fitted power-law tail.

        Parameters
        ----------
        ax : matplotlib Axes, optional
            Where to draw; a new figure when omitted.
        fit : str, default "alpha"
            Which fit of :attr:`fits` to draw.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from .plotting import plot_layer_spectrum

        return plot_layer_spectrum(self, ax=ax, fit=fit)


class SpectrumReport(Mapping):
    """Immutable mapping ``module name -> LayerSpectrum`` in model order.

    Attributes
    ----------
    backend : str
        ``"torch"`` or ``"weightwatcher"``.
    skipped : Mapping[str, str]
        Matrices not analysed, with the reason (too small, too large...).
    options : Mapping[str, object]
        The options the report was computed with.
    """

    def __init__(self, layers: Mapping, *, backend: str, skipped: Mapping | None = None, options: Mapping | None = None):
        self._layers = MappingProxyType(dict(layers))
        self.backend = backend
        self.skipped = MappingProxyType(dict(skipped or {}))
        self.options = MappingProxyType(dict(options or {}))

    def __getitem__(self, name: str) -> LayerSpectrum:
        return self._layers[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._layers)

    def __len__(self) -> int:
        return len(self._layers)

    def __repr__(self) -> str:
        return f"SpectrumReport({len(self)} layers, backend={self.backend!r}, skipped={len(self.skipped)})"

    def to_frame(self):
        """One row per matrix, indexed by module name, WeightWatcher's column names.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        rows = {name: dict(layer.metrics) for name, layer in self._layers.items()}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "name"
        return frame

    def column(self, name: str) -> dict[str, Any]:
        """``{module name: value}`` of one column."""
        return {k: v.metrics.get(name, math.nan) for k, v in self._layers.items()}

    def plot(self, metric: str = "alpha", ax=None):
        """A metric (default ``alpha``) by layer, in model order.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from .plotting import plot_report

        return plot_report(self, metric=metric, ax=ax)
