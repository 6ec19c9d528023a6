"""The errors and warnings specmetrics raises, one family.

Every exception the library raises on purpose derives from :class:`SpecmetricsError`, and every
warning about degenerate data from :class:`SpecmetricsWarning`, so a caller can catch or filter
them all at once::

    try:
        specmetrics.prune(model, 0.5, method="wanda", calibration=texts, tokenizer=tok)
    except specmetrics.ParameterError as err:      # a bad value, found before any work
        ...
    except specmetrics.SpecmetricsError as err:    # anything else the library reports
        ...

Errors carry one message format for bad parameters (see :class:`ParameterError`); the command
line turns each of them into one line on stderr (exit status 2 for a :class:`ParameterError`,
1 for the others).

This module imports nothing.
"""
from __future__ import annotations

from typing import Optional, Sequence

__all__ = [
    "SpecmetricsError",
    "ParameterError",
    "UnsupportedModelError",
    "PruneError",
    "CholeskyError",
    "SpecmetricsWarning",
    "DegenerateSpectrumWarning",
    "DegenerateMetricWarning",
    "SparsityShortfallWarning",
]


class SpecmetricsError(Exception):
    """Base of every error the library raises on purpose."""


class ParameterError(SpecmetricsError, ValueError):
    """A public function received a parameter it cannot use.

    Raised before any work is done or any weight is changed, with one message format::

        The 'target' parameter of allocate must be in [0, 1). Got 1.2 instead.

    A subclass of :class:`ValueError`, so ``except ValueError`` keeps working.

    Attributes
    ----------
    parameter : str or None
        The parameter named in the message.
    function : str or None
        The public function that rejected it.
    """

    def __init__(self, message: str, *, parameter: Optional[str] = None,
                 function: Optional[str] = None):
        super().__init__(message)
        self.parameter = parameter
        self.function = function


class UnsupportedModelError(SpecmetricsError, ValueError):
    """The model (or checkpoint) is of a kind the function cannot handle.

    E.g. no Linear layers inside repeated blocks, an encoder-decoder stack, a model whose blocks
    are not called once per forward pass. A :class:`ValueError` too.
    """


class PruneError(SpecmetricsError, RuntimeError):
    """Pruning failed part-way (after the parameters were accepted).

    Attributes
    ----------
    changed : list of str
        Qualified names of the modules whose weights were already modified and are still
        modified (empty when ``atomic=True`` restored the model).
    restored : bool
        Whether the model was restored to its state before the call (``atomic=True``).
    module : str or None
        The module being processed when the failure happened (``None`` if between modules).
    """

    def __init__(self, message: str, *, changed: Sequence[str] = (), restored: bool = False,
                 module: Optional[str] = None):
        super().__init__(message)
        self.changed = list(changed)
        self.restored = restored
        self.module = module


class CholeskyError(SpecmetricsError, RuntimeError):
    """SparseGPT's damped Hessian could not be factorised, even after the allowed retries."""


class SpecmetricsWarning(UserWarning):
    """Base of the library's warnings about degenerate data or results."""


class DegenerateSpectrumWarning(SpecmetricsWarning, RuntimeWarning):
    """A spectrum could not be fitted (too few tail eigenvalues, NaN/inf, no candidate)."""


class DegenerateMetricWarning(SpecmetricsWarning):
    """Some allocation units had a non-finite score (e.g. a failed power-law fit)."""


class SparsityShortfallWarning(SpecmetricsWarning):
    """The sparsity achieved after pruning differs from the allocation's target by more than
    the rounding of one weight per matrix."""
