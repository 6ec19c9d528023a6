"""Frozen configurations of the pruning methods; ``prune()`` dispatches on their type.

Each config names a sparsity *pattern*:

``"unstructured"``
    any weight may be pruned; the method decides how the budget is spread (one threshold per
    matrix for magnitude, an equal count per output row for Wanda, an equal fraction per
    rows × 128-column tile for SparseGPT).
``"N:M"`` (e.g. ``"2:4"``, ``"4:8"``)
    in each group of M consecutive input columns of every row, N weights are zeroed. The
    sparsity of a matrix is then N/M, whatever ratio was asked for.

The sparsity ratio itself is not part of a config: it is per matrix (uniform or from an
allocation) and is passed to the pruning functions separately.

Every config is a pruning *method* in the sense of :class:`~specmetrics.pruning.base.PruningMethod`:
it names the calibration statistic it needs (``statistic``) and prunes one matrix from that
statistic (``prune_matrix``); :func:`~specmetrics.prune` is the loop around them, and
:mod:`~specmetrics.pruning.registry` maps each ``name`` to its config class.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Optional

from .._validation import check_interval, check_positive_int, fail
from ..calibration.stats import HessianStats, SquaredNormStats
from .base import MatrixUpdate

__all__ = [
    "MagnitudeConfig",
    "WandaConfig",
    "SparseGPTConfig",
    "parse_pattern",
]

_NM_RE = re.compile(r"^(\d+):(\d+)$")
_PATTERN_REQUIREMENT = "'unstructured' or 'N:M' with integers 0 < N < M (e.g. '2:4')"


def _parse_pattern(pattern, func: str) -> Optional[tuple[int, int]]:
    if pattern == "unstructured":
        return None
    match = _NM_RE.match(pattern) if isinstance(pattern, str) else None
    if match is None:
        raise fail("pattern", func, _PATTERN_REQUIREMENT, pattern)
    n, m = int(match.group(1)), int(match.group(2))
    if not 0 < n < m:
        raise fail("pattern", func, _PATTERN_REQUIREMENT, pattern)
    return n, m


def parse_pattern(pattern: str) -> Optional[tuple[int, int]]:
    """Parse a sparsity pattern.

    Parameters
    ----------
    pattern : str
        ``"unstructured"``, or ``"N:M"``: N zeros in each group of M consecutive input columns,
        with integers ``0 < N < M``.

    Returns
    -------
    tuple of (int, int) or None
        ``(N, M)`` for an N:M pattern, ``None`` for ``"unstructured"``.

    Raises
    ------
    specmetrics.ParameterError
        If ``pattern`` is neither.

    Examples
    --------
    >>> parse_pattern("2:4")
    (2, 4)
    >>> parse_pattern("unstructured") is None
    True
    """
    return _parse_pattern(pattern, "parse_pattern")


def resolve_pattern(pattern, sparsity, func: str) -> tuple[Optional[tuple[int, int]], float]:
    """Validate ``pattern`` and ``sparsity`` together (internal helper of the pruning functions).

    ``sparsity`` must be in [0, 1]; for an N:M pattern it must also equal N/M (as the Wanda
    scripts assert), since an N:M mask cannot reach any other ratio.
    """
    nm = _parse_pattern(pattern, func)
    s = check_interval(sparsity, 0, 1, name="sparsity", func=func, closed="both")
    if nm is not None and not math.isclose(s, nm[0] / nm[1], rel_tol=0.0, abs_tol=1e-6):
        raise fail("sparsity", func, f"{nm[0] / nm[1]:g} (N/M for pattern {pattern!r})", sparsity)
    return nm, s


def check_sparsegpt_options(func, pattern, blocksize, percdamp, max_damp_retries, damp_growth):
    """Validate SparseGPT's options (shared by :class:`SparseGPTConfig` and ``sparsegpt_prune``).

    Returns ``(nm, blocksize, percdamp, max_damp_retries, damp_growth)`` with the floats
    converted to ``float``.
    """
    nm = _parse_pattern(pattern, func)
    check_positive_int(blocksize, name="blocksize", func=func)
    if nm is not None and blocksize % nm[1] != 0:
        raise fail("blocksize", func, f"a multiple of M = {nm[1]} for pattern {pattern!r}",
                   blocksize)
    percdamp = check_interval(percdamp, 0, math.inf, name="percdamp", func=func,
                              closed="left")
    check_positive_int(max_damp_retries, name="max_damp_retries", func=func, minimum=0)
    damp_growth = check_interval(damp_growth, 1, math.inf, name="damp_growth", func=func,
                                 closed="neither")
    return nm, blocksize, percdamp, max_damp_retries, damp_growth


@dataclass(frozen=True)
class MagnitudeConfig:
    """Magnitude pruning: the weights of smallest ``|W_ij|`` are zeroed.

    Needs no calibration data. Unstructured: one threshold over the whole matrix (as Wanda's
    ``prune_magnitude`` baseline). N:M: the N smallest ``|W_ij|`` of each group of M.

    Parameters
    ----------
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (see :func:`parse_pattern`).
    """

    name: ClassVar[str] = "magnitude"

    pattern: str = "unstructured"  # "unstructured" or "N:M": where the zeros may go

    def __post_init__(self):
        _parse_pattern(self.pattern, "MagnitudeConfig")

    @property
    def nm(self) -> Optional[tuple[int, int]]:
        """``(N, M)`` for an N:M pattern, else ``None``."""
        return _parse_pattern(self.pattern, "MagnitudeConfig")

    @property
    def needs_calibration(self) -> bool:
        """``False``: magnitude pruning looks at the weights only."""
        return False

    #: no calibration statistic
    statistic: ClassVar[None] = None

    def prune_matrix(self, weight, stat, sparsity: float) -> MatrixUpdate:
        """Zero the smallest-magnitude weights (``stat`` is ignored)."""
        from .magnitude import magnitude_mask
        from .masks import apply_mask

        return MatrixUpdate(apply_mask(weight, magnitude_mask(weight, sparsity,
                                                              pattern=self.pattern)))


@dataclass(frozen=True)
class WandaConfig:
    """Wanda: prune by ``|W_ij| · ‖X_j‖₂`` within each output row.

    ``‖X_j‖₂²`` is the running mean over calibration sequences of the sum over tokens of
    ``x_j²`` (:class:`~specmetrics.pruning.stats.SquaredNormStats`). Unstructured: each row
    prunes its ``⌊C_in · s⌋`` lowest scores; N:M: the N lowest of each group of M.

    Parameters
    ----------
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (see :func:`parse_pattern`).

    References
    ----------
    .. [1] M. Sun, Z. Liu, A. Bair, J. Z. Kolter, "A Simple and Effective Pruning Approach for
       Large Language Models", arXiv:2306.11695, 2023 (code: github.com/locuslab/wanda).
    """

    name: ClassVar[str] = "wanda"

    pattern: str = "unstructured"  # "unstructured" or "N:M": where the zeros may go

    def __post_init__(self):
        _parse_pattern(self.pattern, "WandaConfig")

    @property
    def nm(self) -> Optional[tuple[int, int]]:
        """``(N, M)`` for an N:M pattern, else ``None``."""
        return _parse_pattern(self.pattern, "WandaConfig")

    @property
    def needs_calibration(self) -> bool:
        """``True``: the scores need the input norms of calibration activations."""
        return True

    #: the per-input-channel squared norms of the layer's calibration inputs
    statistic: ClassVar[type] = SquaredNormStats

    def prune_matrix(self, weight, stat, sparsity: float) -> MatrixUpdate:
        """Zero the lowest ``|W_ij| · sqrt(s_j)`` of each row (or N:M group)."""
        from .masks import apply_mask
        from .wanda import wanda_mask

        return MatrixUpdate(apply_mask(weight, wanda_mask(weight, stat.value, sparsity,
                                                          pattern=self.pattern)))


@dataclass(frozen=True)
class SparseGPTConfig:
    """SparseGPT: mask by the OBS saliency ``w² / [H⁻¹]_jj²`` and update the remaining weights.

    ``H = (2/N) Σ x xᵀ`` over calibration tokens
    (:class:`~specmetrics.pruning.stats.HessianStats`); see
    :func:`~specmetrics.pruning.sparsegpt.sparsegpt_prune` for the algorithm.

    Parameters
    ----------
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (see :func:`parse_pattern`). For N:M, ``blocksize``
        must be a multiple of M.
    blocksize : int, default 128
        Columns per lazy-update block; the unstructured mask is chosen per rows × block tile.
    percdamp : float, default 0.01
        Damping ``λ = percdamp · mean(diag H)`` added to the diagonal of H, >= 0.
    max_damp_retries : int, default 5
        How many times to retry a failed Cholesky factorisation with λ multiplied by
        ``damp_growth`` before raising :class:`~specmetrics.pruning.sparsegpt.CholeskyError`.
    damp_growth : float, default 10.0
        Factor (> 1) applied to λ at each retry.

    References
    ----------
    .. [1] E. Frantar, D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned
       in One-Shot", ICML 2023 (code: github.com/IST-DASLab/sparsegpt).
    """

    name: ClassVar[str] = "sparsegpt"

    pattern: str = "unstructured"  # "unstructured" or "N:M": where the zeros may go
    blocksize: int = 128  # lazy-batch width (the reference's); also the unstructured mask tile
    percdamp: float = 0.01  # λ = percdamp · mean(diag H), the reference's default
    max_damp_retries: int = 5  # retries of a failed Cholesky, each with λ × damp_growth
    damp_growth: float = 10.0  # λ grows by this factor at each retry

    def __post_init__(self):
        _, _, percdamp, _, growth = check_sparsegpt_options(
            "SparseGPTConfig", self.pattern, self.blocksize, self.percdamp,
            self.max_damp_retries, self.damp_growth)
        object.__setattr__(self, "percdamp", percdamp)
        object.__setattr__(self, "damp_growth", growth)

    @property
    def nm(self) -> Optional[tuple[int, int]]:
        """``(N, M)`` for an N:M pattern, else ``None``."""
        return _parse_pattern(self.pattern, "SparseGPTConfig")

    @property
    def needs_calibration(self) -> bool:
        """``True``: the update needs the Hessian of calibration activations."""
        return True

    #: the layer Hessian ``(2/N) Σ x xᵀ`` of the calibration inputs
    statistic: ClassVar[type] = HessianStats

    def prune_matrix(self, weight, stat, sparsity: float) -> MatrixUpdate:
        """SparseGPT's OBS mask and weight update (see
        :func:`~specmetrics.pruning.sparsegpt.sparsegpt_prune`)."""
        from .sparsegpt import sparsegpt_prune

        res = sparsegpt_prune(weight, stat.value, sparsity, pattern=self.pattern,
                              blocksize=self.blocksize, percdamp=self.percdamp,
                              max_damp_retries=self.max_damp_retries,
                              damp_growth=self.damp_growth)
        return MatrixUpdate(res.weight, {"damp": res.damp, "retries": res.retries,
                                         "dead_inputs": res.dead_inputs})
