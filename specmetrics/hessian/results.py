"""Results of the Hessian estimators: frozen, with a JSON round trip and plots.

None of them is keyed by module name (each describes one operator), so they are frozen
dataclasses rather than :class:`~specmetrics._results.KeyedResult` s, with the same JSON layout
(``{"format": "specmetrics.<Class>", "version", "settings", "data"}``, non-finite floats as
``null``), ``.to_json(path=None)`` / ``cls.from_json(source)``, and ``.plot(ax=None)`` where a plot
exists (matplotlib imported when called). Numpy arrays inside are read-only; equality compares the
JSON content except wall times (eigenvectors, which are never serialised, are left out).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from .._results import Settings, freeze, jsonable, nan_if_none, read_json_source
from .._validation import fail

__all__ = ["HessianEigen", "HessianTrace", "SpectralDensity", "HessianPowerLaw"]


def _array(values, dtype=np.float64) -> np.ndarray:
    arr = np.array(values, dtype=dtype)
    arr.setflags(write=False)
    return arr


def _floats(values) -> np.ndarray:
    return _array([math.nan if v is None else v for v in values])


def _nested(values) -> np.ndarray:
    return _array([[math.nan if v is None else v for v in row] for row in values])


class _Saved:
    """JSON round trip and content equality of the frozen Hessian results."""

    _json_version: ClassVar[int] = 1

    def _to_payload(self) -> dict:  # pragma: no cover - every subclass implements it
        raise NotImplementedError

    @classmethod
    def _from_payload(cls, data: Mapping, settings: Mapping):  # pragma: no cover
        raise NotImplementedError

    def to_json(self, path: str | os.PathLike | None = None, *, indent: Optional[int] = 2) -> str:
        """Serialise to JSON; write it to ``path`` too when given (its folder must exist).

        Returns
        -------
        str
            ``{"format": "specmetrics.<Class>", "version", "settings", "data"}``.
        """
        payload = {"format": f"specmetrics.{type(self).__name__}", "version": self._json_version,
                   "settings": jsonable(self.settings), "data": jsonable(self._to_payload())}
        text = json.dumps(payload, indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike):
        """Read a result written by :meth:`to_json` (JSON text starting with ``{``, or a path)."""
        func = f"{cls.__name__}.from_json"
        payload = read_json_source(source, func=func)
        expected = f"specmetrics.{cls.__name__}"
        if not isinstance(payload, dict) or payload.get("format") != expected:
            got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise fail("source", func, f"a serialised {cls.__name__} (format {expected!r})", got)
        if payload.get("version") != cls._json_version:
            raise fail("source", func, f"version {cls._json_version} of the format",
                       payload.get("version"))
        return cls._from_payload(payload.get("data") or {}, payload.get("settings") or {})

    def _content(self) -> str:
        data = {k: v for k, v in self._to_payload().items() if k != "seconds"}
        return json.dumps({"settings": jsonable(self.settings), "data": jsonable(data)},
                          allow_nan=False)

    def __eq__(self, other: Any) -> bool:
        """Equal content: the same values and settings (wall times are not compared)."""
        if type(other) is not type(self):
            return NotImplemented
        return self._content() == other._content()

    __hash__ = None


def _freeze_fields(obj, names) -> None:
    for name in names:
        object.__setattr__(obj, name, freeze(getattr(obj, name)))
    settings = getattr(obj, "settings")
    object.__setattr__(obj, "settings", settings if isinstance(settings, Settings)
                       else Settings(settings))


# ---------------------------------------------------------------------------------------------
# top eigenvalues


@dataclasses.dataclass(frozen=True, eq=False)
class HessianEigen(_Saved):
    """Extreme eigenvalues of a Hessian (or GGN) operator, from :func:`top_eigenvalues`.

    Attributes
    ----------
    values : numpy.ndarray, shape (k,)
        Ritz values, in the order of ``which``: descending for ``"LA"`` and ``"LM"`` (by
        magnitude), ascending for ``"SA"``.
    residuals : numpy.ndarray, shape (k,)
        Ritz residual norms ``||A y_i - theta_i y_i||`` of the unit Ritz vectors; every eigenvalue
        of the operator lies within ``residuals[i]`` of some ``values[i]``
        (``|lambda - theta_i| <= residuals[i]``).
    converged : numpy.ndarray of bool, shape (k,)
        ``residuals[i] <= tol * max(|values[i]|, sqrt(eps) * norm)``, with ``norm`` the largest
        Ritz value in magnitude and ``eps`` that of the operator's dtype.
    which : {"LA", "SA", "LM"}
    method : {"lanczos", "arpack"}
    tol : float
    n_matvecs : int
        Hessian-vector products used (the residual check of ``"arpack"`` included).
    n_steps : int
        Lanczos steps (``"lanczos"``) or ARPACK's products before the residual check.
    dim : int
        Dimension of the operator (number of parameters).
    seconds : float
        Wall time of the call.
    settings : Mapping
        The operator's description and the options of the call.
    vectors : torch.Tensor or None, shape (dim, k)
        Unit Ritz vectors when asked for (``return_vectors=True``); never serialised.
    """

    values: np.ndarray
    residuals: np.ndarray
    converged: np.ndarray
    which: str
    method: str
    tol: float
    n_matvecs: int
    n_steps: int
    dim: int
    seconds: float = math.nan
    settings: Mapping = dataclasses.field(default_factory=dict, repr=False)
    vectors: Any = dataclasses.field(default=None, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "values", _array(self.values))
        object.__setattr__(self, "residuals", _array(self.residuals))
        object.__setattr__(self, "converged", _array(self.converged, dtype=bool))
        _freeze_fields(self, ())

    @property
    def k(self) -> int:
        return int(self.values.shape[0])

    @property
    def n_converged(self) -> int:
        return int(self.converged.sum())

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())

    def to_frame(self):
        """One row per eigenvalue: ``rank`` (index, from 1), ``eigenvalue``, ``residual``,
        ``converged``."""
        import pandas as pd

        frame = pd.DataFrame({"eigenvalue": self.values, "residual": self.residuals,
                              "converged": self.converged},
                             index=pd.RangeIndex(1, self.k + 1, name="rank"))
        return frame

    def fit_power_law(self, **kwargs) -> "HessianPowerLaw":
        """:func:`~specmetrics.hessian.fit_hessian_power_law` of these eigenvalues."""
        from .powerlaw import fit_hessian_power_law

        return fit_hessian_power_law(self, **kwargs)

    def plot(self, ax=None, **kwargs):
        """Rank plot of the eigenvalues (log-log); see
        :func:`~specmetrics.plotting.hessian.plot_hessian_eigenvalues`."""
        from ..plotting.hessian import plot_hessian_eigenvalues

        return plot_hessian_eigenvalues(self, ax=ax, **kwargs)

    def _to_payload(self) -> dict:
        return {"values": self.values, "residuals": self.residuals, "converged": self.converged,
                "which": self.which, "method": self.method, "tol": self.tol,
                "n_matvecs": self.n_matvecs, "n_steps": self.n_steps, "dim": self.dim,
                "seconds": self.seconds}

    @classmethod
    def _from_payload(cls, data: Mapping, settings: Mapping) -> "HessianEigen":
        return cls(values=_floats(data["values"]), residuals=_floats(data["residuals"]),
                   converged=_array(data["converged"], dtype=bool), which=data["which"],
                   method=data["method"], tol=nan_if_none(data["tol"]),
                   n_matvecs=int(data["n_matvecs"]), n_steps=int(data["n_steps"]),
                   dim=int(data["dim"]), seconds=nan_if_none(data.get("seconds")),
                   settings=dict(settings))


# ---------------------------------------------------------------------------------------------
# trace


@dataclasses.dataclass(frozen=True, eq=False)
class HessianTrace(_Saved):
    """A (stochastic) estimate of the trace of an operator, from :func:`hessian_trace`.

    Attributes
    ----------
    value : float
        The estimate.
    stderr : float
        Its standard error (0 for ``method="exact"``): ``"hutchinson"``: the sample standard
        deviation of the probe values over ``sqrt(n)``; ``"hutch++"``: that of the residual
        Hutchinson part (the sketch part is exact given the sketch); ``"xtrace"``: that of the
        ``n/2`` exchangeable leave-one-out estimates (Epperly, Tropp and Webber 2024).
    method : {"hutchinson", "hutch++", "xtrace", "exact"}
    distribution : {"rademacher", "normal"}
    n_matvecs : int
        Products used.
    dim : int
    samples : numpy.ndarray
        The values whose mean (plus ``exact_part``) is ``value`` and whose spread gives
        ``stderr``: probe values, residual probe values or leave-one-out estimates.
    exact_part : float
        ``"hutch++"``: ``tr(Q^T A Q)`` of the sketch; 0 otherwise.
    message : str
    seconds : float
    settings : Mapping
    """

    value: float
    stderr: float
    method: str
    distribution: str
    n_matvecs: int
    dim: int
    samples: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0), repr=False)
    exact_part: float = 0.0
    message: str = ""
    seconds: float = math.nan
    settings: Mapping = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "samples", _array(self.samples))
        _freeze_fields(self, ())

    def __float__(self) -> float:
        return float(self.value)

    def interval(self, z: float = 1.96) -> tuple[float, float]:
        """``(value - z stderr, value + z stderr)`` (a 95 % normal interval by default)."""
        return (self.value - z * self.stderr, self.value + z * self.stderr)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"value": self.value, "stderr": self.stderr, "method": self.method,
                              "n_matvecs": self.n_matvecs, "dim": self.dim}])

    def _to_payload(self) -> dict:
        return {"value": self.value, "stderr": self.stderr, "method": self.method,
                "distribution": self.distribution, "n_matvecs": self.n_matvecs,
                "dim": self.dim, "samples": self.samples, "exact_part": self.exact_part,
                "message": self.message, "seconds": self.seconds}

    @classmethod
    def _from_payload(cls, data: Mapping, settings: Mapping) -> "HessianTrace":
        return cls(value=nan_if_none(data["value"]), stderr=nan_if_none(data["stderr"]),
                   method=data["method"], distribution=data["distribution"],
                   n_matvecs=int(data["n_matvecs"]), dim=int(data["dim"]),
                   samples=_floats(data.get("samples", [])),
                   exact_part=nan_if_none(data.get("exact_part", 0.0)),
                   message=data.get("message", ""), seconds=nan_if_none(data.get("seconds")),
                   settings=dict(settings))


# ---------------------------------------------------------------------------------------------
# spectral density


@dataclasses.dataclass(frozen=True, eq=False)
class SpectralDensity(_Saved):
    """The spectral density of an operator from stochastic Lanczos quadrature
    (:func:`spectral_density`).

    The quadrature measure of repeat ``r`` puts weight ``weights[r, i]`` (the squared first
    component of the ``i``-th eigenvector of the Lanczos tridiagonal matrix, summing to 1 over
    ``i``) on node ``nodes[r, i]`` (its eigenvalue); the estimate of the eigenvalue distribution
    ``(1/dim) sum_j delta(lambda - lambda_j)`` is their average over the repeats, and ``density``
    is that measure convolved with a Gaussian of standard deviation ``sigma`` (in eigenvalue
    units), on ``grid``.

    Attributes
    ----------
    grid : numpy.ndarray, shape (n_points,)
        Eigenvalue axis: ``[min node - 6 sigma, max node + 6 sigma]``, evenly spaced.
    density : numpy.ndarray, shape (n_points,)
        Smoothed density; integrates to 1 over the grid (to the accuracy of the trapezoidal rule).
    nodes, weights : numpy.ndarray, shape (n_repeats, n_steps)
        The quadrature of each repeat; a run that stopped early (an invariant Krylov space) is
        padded with zero weights (and zero nodes).
    sigma : float
        Standard deviation of the Gaussian kernel, in eigenvalue units.
    n_steps, n_repeats : int
    n_matvecs, dim : int
    seconds : float
    settings : Mapping
    """

    grid: np.ndarray = dataclasses.field(repr=False)
    density: np.ndarray = dataclasses.field(repr=False)
    nodes: np.ndarray = dataclasses.field(repr=False)
    weights: np.ndarray = dataclasses.field(repr=False)
    sigma: float = math.nan
    n_steps: int = 0
    n_repeats: int = 0
    n_matvecs: int = 0
    dim: int = 0
    seconds: float = math.nan
    settings: Mapping = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        for name in ("grid", "density", "nodes", "weights"):
            object.__setattr__(self, name, _array(getattr(self, name)))
        _freeze_fields(self, ())

    @property
    def integral(self) -> float:
        """``∫ density`` over the grid (trapezoidal rule); 1 up to discretisation."""
        trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy < 2 has trapz only
        return float(trapezoid(self.density, self.grid))

    def moment(self, j: int) -> float:
        """``sum tau theta^j`` averaged over repeats: an estimate of ``tr(A^j) / dim``."""
        j = int(j)
        return float(np.sum(self.weights * self.nodes ** j) / self.n_repeats)

    @property
    def trace(self) -> float:
        """The SLQ estimate of ``tr(A)``: ``dim * moment(1)``."""
        return self.dim * self.moment(1)

    def cdf(self, x) -> np.ndarray:
        """Distribution function of the (unsmoothed) quadrature measure at ``x``."""
        x = np.asarray(x, dtype=np.float64)
        nodes = self.nodes.reshape(-1)
        weights = self.weights.reshape(-1) / self.n_repeats
        order = np.argsort(nodes, kind="stable")
        cum = np.concatenate([[0.0], np.cumsum(weights[order])])
        idx = np.searchsorted(nodes[order], x, side="right")
        return cum[idx]

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame({"eigenvalue": self.grid, "density": self.density})

    def plot(self, ax=None, **kwargs):
        """The smoothed density (log density axis by default); see
        :func:`~specmetrics.plotting.hessian.plot_spectral_density`."""
        from ..plotting.hessian import plot_spectral_density

        return plot_spectral_density(self, ax=ax, **kwargs)

    def _to_payload(self) -> dict:
        return {"grid": self.grid, "density": self.density, "nodes": self.nodes,
                "weights": self.weights, "sigma": self.sigma, "n_steps": self.n_steps,
                "n_repeats": self.n_repeats, "n_matvecs": self.n_matvecs, "dim": self.dim,
                "seconds": self.seconds}

    @classmethod
    def _from_payload(cls, data: Mapping, settings: Mapping) -> "SpectralDensity":
        return cls(grid=_floats(data["grid"]), density=_floats(data["density"]),
                   nodes=_nested(data["nodes"]), weights=_nested(data["weights"]),
                   sigma=nan_if_none(data["sigma"]), n_steps=int(data["n_steps"]),
                   n_repeats=int(data["n_repeats"]), n_matvecs=int(data["n_matvecs"]),
                   dim=int(data["dim"]), seconds=nan_if_none(data.get("seconds")),
                   settings=dict(settings))


# ---------------------------------------------------------------------------------------------
# power law


@dataclasses.dataclass(frozen=True, eq=False)
class HessianPowerLaw(_Saved):
    """The power-law fit of the top of a Hessian spectrum (:func:`fit_hessian_power_law`).

    ``lambda_k ~ k^(-s)`` for the top ``K`` eigenvalues ``lambda_1 >= ... >= lambda_K``, fitted by
    maximum likelihood on their density ``p(lambda) ~ lambda^(-beta)`` above ``lambda_K``
    (Xie et al. 2022): ``beta = 1 + K / sum_i ln(lambda_i / lambda_K)``, ``s = 1 / (beta - 1)``.

    Attributes
    ----------
    fit : PowerLawFit
        The library's power-law result (:class:`specmetrics.spectrum.PowerLawFit`): ``alpha`` is
        ``beta``, ``xmin = lambda_K``, ``xmax = lambda_1``, ``sigma = (beta - 1) / sqrt(K)``,
        ``n_tail = K``, ``ks_distance`` the two-sided Kolmogorov-Smirnov distance below.
    s : float
        Power-law exponent of the rank plot; NaN on failure.
    s_error : float
        Its standard error ``s / sqrt(K)`` (delta method from ``beta_error``).
    beta, beta_error : float
        Density exponent and its standard error ``(beta - 1) / sqrt(K)``.
    ks_distance : float
        ``sup |F_K - F|`` between the empirical distribution of the ``K`` eigenvalues and the fitted
        power law above ``lambda_K`` (both sides of each step of the empirical function).
    ks_threshold : float
        ``1.36 / sqrt(K)``, the 5 % critical value of the KS test.
    power_law : bool
        ``ks_distance < ks_threshold``: the power law is not rejected (Xie et al.'s criterion).
    k : int
        ``K``, the eigenvalues fitted.
    eigenvalues : numpy.ndarray, shape (K,)
        The fitted eigenvalues, descending.
    success : bool
    message : str
    settings : Mapping
    """

    fit: Any
    s: float
    s_error: float
    beta: float
    beta_error: float
    ks_distance: float
    ks_threshold: float
    power_law: bool
    k: int
    eigenvalues: np.ndarray = dataclasses.field(repr=False)
    success: bool = False
    message: str = ""
    settings: Mapping = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "eigenvalues", _array(self.eigenvalues))
        _freeze_fields(self, ())

    def plot(self, ax=None, **kwargs):
        """Rank plot with the fitted line; see
        :func:`~specmetrics.plotting.hessian.plot_hessian_power_law`."""
        from ..plotting.hessian import plot_hessian_power_law

        return plot_hessian_power_law(self, ax=ax, **kwargs)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([{"s": self.s, "s_error": self.s_error, "beta": self.beta,
                              "beta_error": self.beta_error, "ks_distance": self.ks_distance,
                              "ks_threshold": self.ks_threshold, "power_law": self.power_law,
                              "k": self.k, "success": self.success}])

    def _to_payload(self) -> dict:
        return {"fit": dataclasses.asdict(self.fit), "s": self.s, "s_error": self.s_error,
                "beta": self.beta, "beta_error": self.beta_error,
                "ks_distance": self.ks_distance, "ks_threshold": self.ks_threshold,
                "power_law": self.power_law, "k": self.k, "eigenvalues": self.eigenvalues,
                "success": self.success, "message": self.message}

    @classmethod
    def _from_payload(cls, data: Mapping, settings: Mapping) -> "HessianPowerLaw":
        from ..spectrum import PowerLawFit

        fit_fields = {f.name: f for f in dataclasses.fields(PowerLawFit)}
        raw = dict(data["fit"])
        fit = PowerLawFit(**{k: (nan_if_none(v) if fit_fields[k].type in ("float", float) else v)
                             for k, v in raw.items() if k in fit_fields})
        return cls(fit=fit, s=nan_if_none(data["s"]), s_error=nan_if_none(data["s_error"]),
                   beta=nan_if_none(data["beta"]), beta_error=nan_if_none(data["beta_error"]),
                   ks_distance=nan_if_none(data["ks_distance"]),
                   ks_threshold=nan_if_none(data["ks_threshold"]),
                   power_law=bool(data["power_law"]), k=int(data["k"]),
                   eigenvalues=_floats(data["eigenvalues"]), success=bool(data["success"]),
                   message=data.get("message", ""), settings=dict(settings))
