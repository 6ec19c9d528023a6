"""Hessian spectra of a model's loss: operators, top eigenvalues, trace, density, power law.

Holds the curvature operators (:func:`hessian_operator`: the Hessian or GGN of the mean loss of a
Hugging Face causal LM on calibration windows, or of any module with a loss and data batches,
on a selection of parameters, built on curvlinops' operators and never formed), and the
estimators that take any symmetric operator: :func:`top_eigenvalues` (Lanczos with converged-Ritz
detection, or ARPACK), :func:`hessian_trace` (Hutchinson, Hutch++, XTrace, each with a standard
error), :func:`spectral_density` (stochastic Lanczos quadrature) and
:func:`fit_hessian_power_law` (the power law ``lambda_k ~ k^-s`` of the top of the spectrum, with
its KS test), with their frozen results (:class:`HessianEigen`, :class:`HessianTrace`,
:class:`SpectralDensity`, :class:`HessianPowerLaw`). curvlinops is imported when an operator is
built.

May import: the base files, :mod:`specmetrics.models`, :mod:`specmetrics.calibration`,
:mod:`specmetrics.spectrum` (the power-law fit) and :mod:`specmetrics.plotting`.
"""
from .density import lanczos_quadrature, spectral_density
from .eigen import top_eigenvalues
from .operators import CausalLMLoss, HessianOperator, hessian_operator, select_parameters
from .powerlaw import fit_hessian_power_law
from .results import HessianEigen, HessianPowerLaw, HessianTrace, SpectralDensity
from .trace import hessian_trace

__all__ = [
    "hessian_operator", "HessianOperator", "CausalLMLoss", "select_parameters",
    "top_eigenvalues", "HessianEigen", "hessian_trace", "HessianTrace",
    "spectral_density", "SpectralDensity", "lanczos_quadrature",
    "fit_hessian_power_law", "HessianPowerLaw",
]
