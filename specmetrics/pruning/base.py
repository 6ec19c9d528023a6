"""The protocol every pruning method follows: a calibration statistic in, a pruned matrix out.

A method is a small frozen config (``WandaConfig(pattern="2:4")``) with:

``name`` (class attribute)
    The registry key (``"wanda"``), used by ``prune(method="wanda")``, the CLI's ``--method``
    choices and :func:`~specmetrics.experiments.compare_allocations`.
``pattern`` and ``nm``
    ``"unstructured"`` or ``"N:M"``, and ``(N, M)`` or ``None``.
``needs_calibration``
    Whether calibration data is required.
``statistic`` (class attribute)
    The class of the running statistic of each matrix's inputs it needs
    (:class:`~specmetrics.calibration.SquaredNormStats`, :class:`~specmetrics.calibration.HessianStats`,
    or ``None``); matrices fed the same input share one instance.
``prune_matrix(weight, stat, sparsity) -> MatrixUpdate``
    A pure function of one weight (``(out, in)``), its accumulated statistic and its ratio.

:func:`~specmetrics.prune` is the loop around these (blocks, statistics, write-back, error
measurement, atomic restore); adding a method means writing one config and registering it in
:mod:`~specmetrics.pruning.registry`, nothing in ``prune()``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Protocol

__all__ = ["PruningMethod", "MatrixUpdate"]


@dataclass(frozen=True, eq=False)
class MatrixUpdate:
    """What a method returns for one matrix.

    Attributes
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        The new weight (same dtype and device as the input), zero where pruned.
    extras : dict
        Per-matrix diagnostics that go into the report (e.g. SparseGPT's ``damp``,
        ``retries``, ``dead_inputs``); keys must be fields of
        :class:`~specmetrics.pruning.ModulePruneResult`.
    """

    weight: Any
    extras: dict = field(default_factory=dict)


class PruningMethod(Protocol):
    """See the module docstring."""

    name: ClassVar[str]
    statistic: ClassVar[Optional[type]]
    pattern: str

    @property
    def nm(self) -> Optional[tuple[int, int]]:  # pragma: no cover - a protocol
        ...

    @property
    def needs_calibration(self) -> bool:  # pragma: no cover - a protocol
        ...

    def prune_matrix(self, weight, stat, sparsity: float) -> MatrixUpdate:  # pragma: no cover
        ...
