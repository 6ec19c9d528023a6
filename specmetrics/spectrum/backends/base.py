"""What every spectrum backend shares: the protocol, validated options, the skip rule, the
WeightWatcher column names and the degenerate-fit warning.

A backend is a module with one function::

    def analyze(source, options: EsdOptions) -> SpectrumReport

registered in :data:`specmetrics.spectrum.backends.BACKENDS` (a name → loader dict); :func:`esd`
validates every option into an :class:`EsdOptions` before any backend runs, so a backend only
checks what is particular to it (e.g. the WeightWatcher backend accepts fewer ``xmin`` policies).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Callable, Optional, Protocol, Sequence, Union

import torch

from ...exceptions import DegenerateSpectrumWarning
from ...models.matrices import WeightMatrix
from ..powerlaw import MIN_TAIL

__all__ = ["Backend", "EsdOptions", "skip_reason", "WW_TYPES", "WW_COLUMNS", "ww_warning",
           "warn_failed_fits", "MIN_TAIL"]

Pattern = Union[None, str, Sequence[str], Callable[[str], bool]]

#: WeightWatcher's ``layer_type`` for each kind of weight matrix.
WW_TYPES = {"linear": "dense", "tensor": "dense", "conv1d": "conv1d", "conv2d": "conv2d",
            "embedding": "embedding"}

#: WeightWatcher's analyze() columns, in its order, that both backends report.
WW_COLUMNS = (
    "alpha", "xmin", "xmax", "D", "sigma", "num_pl_spikes",
    "alpha_weighted", "log_alpha_norm", "norm", "log_norm", "spectral_norm", "log_spectral_norm",
    "stable_rank", "matrix_rank", "entropy", "rank_loss", "weak_rank_loss",
    "lambda_max", "sv_max", "sv_min", "num_evals", "N", "M", "Q", "rf", "layer_type", "status",
    "warning",
)


@dataclasses.dataclass(frozen=True)
class EsdOptions:
    """The options of :func:`~specmetrics.esd`, validated; what every backend's ``analyze``
    receives (see :func:`~specmetrics.esd` for their meaning)."""

    include: Pattern = None
    exclude: Pattern = None
    dtype: torch.dtype = torch.float64
    device: torch.device = torch.device("cpu")
    method: str = "gram"
    xmin: Any = "ks"
    clip_xmax: bool = False
    distribution: str = "power_law"
    mp_fit: bool = False
    randomize: bool = False
    seed: int = 0
    min_evals: int = 8
    max_evals: int = 15000
    max_n: int = 50000
    batch_bytes: int = 1 << 28
    progress: bool = False
    distributed: bool = False

    def summary(self) -> dict:
        """The options that shape the numbers, as plain values (stored on the report)."""
        return dict(
            dtype=str(self.dtype), device=str(self.device), method=self.method, xmin=self.xmin,
            clip_xmax=self.clip_xmax, distribution=self.distribution, mp_fit=self.mp_fit,
            randomize=self.randomize, seed=self.seed,
        )


class Backend(Protocol):
    """A spectrum backend: ``analyze(source, options) -> SpectrumReport``."""

    def analyze(self, source: Any, options: EsdOptions):  # pragma: no cover - a protocol
        ...


def skip_reason(w: WeightMatrix, min_evals: int, max_evals: int, max_n: int) -> Optional[str]:
    """Why a matrix is not analysed (WeightWatcher 0.7.7's size limits), ``None`` when it is."""
    n, m, rf = w.n_m_rf
    if n > max_n:
        return f"N={n} > max_n={max_n}"
    if m * rf < min_evals:
        return f"M*rf={m * rf} < min_evals={min_evals}"
    if m * rf > max_evals:
        return f"M*rf={m * rf} > max_evals={max_evals}"
    return None


def ww_warning(alpha: float) -> str:
    """WeightWatcher's ``warning`` column: over-trained below 2, under-trained above 6."""
    if not math.isfinite(alpha):
        return "failed"
    if alpha < 2.0:
        return "over-trained"
    if alpha > 6.0:
        return "under-trained"
    return ""


def warn_failed_fits(results: dict, *, stacklevel: int = 4) -> None:
    """One :class:`DegenerateSpectrumWarning` naming the matrices whose main fit failed."""
    failed = [k for k, v in results.items() if not v.fit.success]
    if failed:
        warnings.warn(
            f"The power-law fit failed on {len(failed)} matrices ({', '.join(failed[:5])}"
            f"{', ...' if len(failed) > 5 else ''}); their alpha is NaN, see the 'fit_message' "
            "column.", DegenerateSpectrumWarning, stacklevel=stacklevel)
