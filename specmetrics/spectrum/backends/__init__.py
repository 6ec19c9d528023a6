"""Spectrum backends behind one protocol (:mod:`~specmetrics.spectrum.backends.base`).

:data:`BACKENDS` maps each name :func:`~specmetrics.esd` accepts to a loader returning that
backend's ``analyze(source, options) -> SpectrumReport``; a backend's module is imported only
when it is used (the WeightWatcher one imports ``weightwatcher``).
"""
from __future__ import annotations

from typing import Callable


def _torch() -> Callable:
    from .torch import analyze

    return analyze


def _weightwatcher() -> Callable:
    from .weightwatcher import analyze

    return analyze


#: name -> loader of the backend's ``analyze``
BACKENDS: dict[str, Callable[[], Callable]] = {"torch": _torch, "weightwatcher": _weightwatcher}

__all__ = ["BACKENDS"]
