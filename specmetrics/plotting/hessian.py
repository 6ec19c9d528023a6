"""Plots of Hessian spectra: top eigenvalues by rank, the power-law fit, the SLQ density.

The functions read the results duck-typed (``HessianEigen``, ``HessianPowerLaw``,
``SpectralDensity`` from :mod:`specmetrics.hessian`), draw on a given ``Axes`` or a new figure,
return the ``Axes`` and change no global matplotlib state.
"""
from __future__ import annotations

import numpy as np

from .._validation import check_choice, fail
from .axes import new_axes

__all__ = ["plot_hessian_eigenvalues", "plot_hessian_power_law", "plot_spectral_density"]


def plot_hessian_eigenvalues(eigen, ax=None, *, fit=None, label=None):
    """Top eigenvalues against their rank on log-log axes (``lambda_k ~ k^-s`` is a line).

    Parameters
    ----------
    eigen : HessianEigen
        Positive values are drawn; values whose Ritz pair did not converge are drawn hollow.
    ax : matplotlib.axes.Axes, optional
    fit : HessianPowerLaw, optional
        Draw its fitted line ``lambda_K (k / K)^-s`` too.
    label : str, optional
        Legend label of the points.

    Returns
    -------
    matplotlib.axes.Axes
    """
    values = np.asarray(getattr(eigen, "values", None), dtype=np.float64)
    if values.ndim != 1:
        raise fail("eigen", "plot_hessian_eigenvalues", "a HessianEigen", type(eigen).__name__)
    converged = np.asarray(getattr(eigen, "converged", np.ones_like(values, dtype=bool)))
    order = np.argsort(-values, kind="stable")
    values, converged = values[order], converged[order]
    rank = np.arange(1, values.shape[0] + 1)
    pos = values > 0
    ax = new_axes(ax)
    ax.loglog(rank[pos & converged], values[pos & converged], "o", ms=4,
              label=label or "eigenvalue (converged)")
    if np.any(pos & ~converged):
        ax.loglog(rank[pos & ~converged], values[pos & ~converged], "o", ms=4, mfc="none",
                  label="not converged")
    if fit is not None:
        _fit_line(ax, fit)
    ax.set_xlabel("rank k")
    ax.set_ylabel("eigenvalue")
    ax.set_title(f"top {values.shape[0]} Hessian eigenvalues")
    ax.legend(fontsize="small")
    return ax


def _fit_line(ax, fit) -> None:
    if not getattr(fit, "success", False):
        return
    K = int(fit.k)
    lam = np.asarray(fit.eigenvalues, dtype=np.float64)
    k = np.linspace(1, K, 200)
    ax.loglog(k, lam.min() * (k / K) ** (-fit.s), "-", lw=1.2,
              label=f"s = {fit.s:.3g} ± {fit.s_error:.2g}, "
                    f"KS {fit.ks_distance:.3f} {'<' if fit.power_law else '>='} "
                    f"{fit.ks_threshold:.3f}")


def plot_hessian_power_law(fit, ax=None):
    """The fitted eigenvalues by rank with the power law ``lambda_K (k / K)^-s`` and the KS
    verdict in the legend.

    Parameters
    ----------
    fit : HessianPowerLaw
    ax : matplotlib.axes.Axes, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    lam = np.sort(np.asarray(getattr(fit, "eigenvalues", None), dtype=np.float64))[::-1]
    if lam.ndim != 1:
        raise fail("fit", "plot_hessian_power_law", "a HessianPowerLaw", type(fit).__name__)
    ax = new_axes(ax)
    ax.loglog(np.arange(1, lam.shape[0] + 1), lam, "o", ms=4, label="eigenvalue")
    _fit_line(ax, fit)
    verdict = ("power law not rejected" if fit.power_law else "power law rejected") \
        if fit.success else f"fit failed: {fit.message}"
    ax.set_title(verdict)
    ax.set_xlabel("rank k")
    ax.set_ylabel("eigenvalue")
    ax.legend(fontsize="small")
    return ax


def plot_spectral_density(density, ax=None, *, yscale: str = "log", floor: float = 1e-12):
    """The SLQ density on its grid.

    Parameters
    ----------
    density : SpectralDensity
    ax : matplotlib.axes.Axes, optional
    yscale : {"log", "linear"}, default "log"
        Hessian spectra concentrate near zero with a few large outliers: a log density shows
        both.
    floor : float, default 1e-12
        Densities below it are drawn at it on a log axis.

    Returns
    -------
    matplotlib.axes.Axes
    """
    yscale = check_choice(yscale, ("log", "linear"), name="yscale", func="plot_spectral_density")
    grid = np.asarray(getattr(density, "grid", None), dtype=np.float64)
    values = np.asarray(getattr(density, "density", None), dtype=np.float64)
    if grid.ndim != 1 or values.shape != grid.shape:
        raise fail("density", "plot_spectral_density", "a SpectralDensity",
                   type(density).__name__)
    ax = new_axes(ax)
    y = np.maximum(values, floor) if yscale == "log" else values
    ax.plot(grid, y, lw=1.2)
    ax.set_yscale(yscale)
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"SLQ density ({density.n_steps} steps x {density.n_repeats}, "
                 f"sigma = {density.sigma:.3g})")
    return ax
