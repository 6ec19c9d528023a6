"""Result objects of :func:`specmetrics.esd`: one :class:`LayerSpectrum` per matrix."""
from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Optional

import numpy as np

from .._results import KeyedResult, freeze, nan_if_none
from .backends.base import WW_COLUMNS
from .powerlaw import PowerLawFit

__all__ = ["LayerSpectrum", "SpectrumReport", "WW_COLUMNS"]


@dataclasses.dataclass(frozen=True)
class LayerSpectrum:
    """The spectrum of one weight matrix and everything measured on it (read-only).

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
        Ascending eigenvalues of ``W^T W`` (pooled over kernel positions), read-only; ``None``
        when the backend does not expose them.
    fits : Mapping[str, PowerLawFit]
        ``"alpha"`` (WeightWatcher's KS fit), ``"alpha_peak"``, ``"alpha_mid"`` and, where asked
        for, more.
    metrics : Mapping[str, object]
        The row of :meth:`SpectrumReport.to_frame` for this matrix (WeightWatcher's column names
        plus ``alpha_peak``, ``alpha_mid``, ``n_params``...), read-only.
    """

    name: str
    kind: str
    shape: tuple
    n_params: int
    eigenvalues: Optional[np.ndarray]
    fits: Mapping
    metrics: Mapping

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(self.shape))
        object.__setattr__(self, "fits", MappingProxyType(dict(self.fits)))
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))
        if self.eigenvalues is not None:
            object.__setattr__(self, "eigenvalues", freeze(np.asarray(self.eigenvalues,
                                                                      dtype=np.float64)))

    @property
    def fit(self) -> PowerLawFit:
        """The main (WeightWatcher-style) power-law fit."""
        return self.fits["alpha"]

    @property
    def alpha(self) -> float:
        return float(self.metrics.get("alpha", math.nan))

    def plot(self, ax=None, *, fit: str = "alpha"):
        """Log-log ESD histogram with the fitted power-law tail and ``xmin``.

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
        from ..plotting.spectrum import plot_layer_spectrum

        return plot_layer_spectrum(self, ax=ax, fit=fit)

    # -- JSON --------------------------------------------------------------------------------
    def _payload(self, eigenvalues: bool) -> dict:
        return {
            "name": self.name, "kind": self.kind, "shape": list(self.shape),
            "n_params": self.n_params,
            "eigenvalues": None if (self.eigenvalues is None or not eigenvalues)
            else self.eigenvalues.tolist(),
            "fits": {k: dataclasses.asdict(v) for k, v in self.fits.items()},
            "metrics": dict(self.metrics),
        }

    @classmethod
    def _from_payload(cls, data: Mapping) -> "LayerSpectrum":
        fits = {}
        for key, f in data["fits"].items():
            fields = {k: (nan_if_none(v) if k in _FIT_FLOATS else v) for k, v in f.items()}
            fits[key] = PowerLawFit(**fields)
        metrics = {k: (math.nan if v is None else v) for k, v in data["metrics"].items()}
        ev = data.get("eigenvalues")
        return cls(data["name"], data["kind"], tuple(data["shape"]), int(data["n_params"]),
                   None if ev is None else np.array([nan_if_none(v) for v in ev]), fits, metrics)


_FIT_FLOATS = {"alpha", "xmin", "xmax", "ks_distance", "sigma", "truncation"}


class SpectrumReport(KeyedResult):
    """Read-only mapping ``module name -> LayerSpectrum`` in model order.

    Attributes
    ----------
    backend : str
        ``"torch"`` or ``"weightwatcher"``.
    skipped : Mapping[str, str]
        Matrices not analysed, with the reason (too small, too large...).
    settings : Mapping[str, object]
        The options the report was computed with.
    """

    def __init__(self, layers: Mapping, *, backend: str, skipped: Mapping | None = None,
                 settings: Mapping | None = None, options: Mapping | None = None):
        if options is not None:  # the earlier keyword
            warnings.warn("SpectrumReport(options=...) is now settings=...", DeprecationWarning,
                          stacklevel=2)
            settings = options if settings is None else settings
        self._init_result(layers, {"backend": backend, **dict(settings or {})})
        object.__setattr__(self, "backend", backend)
        object.__setattr__(self, "skipped", MappingProxyType(dict(skipped or {})))

    def __repr__(self) -> str:
        return (f"SpectrumReport({len(self)} layers, backend={self.backend!r}, "
                f"skipped={len(self.skipped)})")

    @property
    def options(self) -> Mapping:
        """Deprecated spelling of :attr:`settings`."""
        warnings.warn("SpectrumReport.options is now .settings", DeprecationWarning, stacklevel=2)
        return self.settings

    def to_frame(self):
        """One row per matrix, indexed by module name (model order), WeightWatcher's column
        names plus ``alpha_peak``, ``alpha_mid``, ``n_params``, ``fit_message`` (see the
        glossary in the docs for every column).

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        rows = {name: dict(layer.metrics) for name, layer in self.items()}
        frame = pd.DataFrame.from_dict(rows, orient="index")
        frame.index.name = "name"
        return frame

    def column(self, name: str) -> dict[str, Any]:
        """``{module name: value}`` of one column."""
        return {k: v.metrics.get(name, math.nan) for k, v in self.items()}

    def plot(self, ax=None, *, metric: str = "alpha"):
        """A metric (default ``alpha``) by layer, in model order.

        Parameters
        ----------
        ax : matplotlib Axes, optional
        metric : str, default "alpha"
            A column of :meth:`to_frame`.

        Returns
        -------
        matplotlib.axes.Axes
        """
        if isinstance(ax, str):  # the earlier signature plot(metric, ax)
            warnings.warn("SpectrumReport.plot(metric) is now plot(ax=None, *, metric=...)",
                          DeprecationWarning, stacklevel=2)
            ax, metric = None, ax
        from ..plotting.spectrum import plot_report

        return plot_report(self, metric=metric, ax=ax)

    # -- JSON --------------------------------------------------------------------------------
    def to_json(self, path=None, *, indent: int | None = 2, eigenvalues: bool = True) -> str:
        """Serialise to JSON (see :meth:`KeyedResult.to_json`); ``eigenvalues=False`` leaves the
        eigenvalues out (they are most of the size)."""
        from .._validation import check_bool

        keep = check_bool(eigenvalues, name="eigenvalues", func="SpectrumReport.to_json")
        return self._write_json(self._to_payload(keep), path, indent)

    def _to_payload(self, eigenvalues: bool = True) -> Any:
        return {"layers": [layer._payload(eigenvalues) for layer in self.values()],
                "skipped": dict(self.skipped)}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "SpectrumReport":
        layers = {d["name"]: LayerSpectrum._from_payload(d) for d in data["layers"]}
        settings = dict(settings)
        backend = settings.pop("backend", "torch")
        return cls(layers, backend=backend, skipped=data.get("skipped"), settings=settings)
