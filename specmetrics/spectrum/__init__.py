"""Weight spectra: eigenvalues, power-law fits, spectral metrics and :func:`esd`.

Holds the eigenvalue engine (:mod:`~specmetrics.spectrum.eigen`: batched Gram + ``eigvalsh``,
dtype and device policy), the power-law fits (:mod:`~specmetrics.spectrum.powerlaw`), the metrics
of an eigenvalue spectrum (:mod:`~specmetrics.spectrum.metrics`), FARMS's fixed-aspect-ratio
spectra (:mod:`~specmetrics.spectrum.farms`), the results (:class:`SpectrumReport`,
:class:`LayerSpectrum`), the front door :func:`esd`, and the backends behind a small protocol
(:mod:`~specmetrics.spectrum.backends`: ``torch`` native, ``weightwatcher`` reference).

May import: the base files and :mod:`specmetrics.models`.
"""
from .api import esd
from .backends.base import WW_COLUMNS, EsdOptions
from .eigen import eigenvalues, layer_eigenvalues
from .farms import (FARMS_ASPECT_RATIO, FARMS_WINDOW, FARMS_WINDOWS_PER_DIM, farms_alpha,
                    farms_eigenvalues, farms_windows)
from .powerlaw import (MIN_TAIL, XMIN_POLICIES, DegenerateSpectrumWarning, PowerLawFit,
                       fit_power_law)
from .results import LayerSpectrum, SpectrumReport

__all__ = [
    "esd", "EsdOptions", "eigenvalues", "layer_eigenvalues", "fit_power_law", "PowerLawFit",
    "DegenerateSpectrumWarning", "XMIN_POLICIES", "MIN_TAIL", "LayerSpectrum", "SpectrumReport",
    "WW_COLUMNS", "farms_alpha", "farms_eigenvalues", "farms_windows", "FARMS_WINDOW",
    "FARMS_ASPECT_RATIO", "FARMS_WINDOWS_PER_DIM",
]
