"""The result of :func:`specmetrics.prune`: a frozen mapping from module name to what was done."""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from types import MappingProxyType
from typing import Any, Optional

from .._results import KeyedResult, jsonable, nan_if_none
from ..exceptions import PruneError

__all__ = ["ModulePruneResult", "PruneReport", "PruneError"]

_FLOAT_FIELDS = ("target", "achieved", "error", "time_s", "damp")


@dataclass(frozen=True)
class ModulePruneResult:
    """What :func:`~specmetrics.prune` did to one weight matrix.

    Attributes
    ----------
    name : str
        Qualified module name.
    block : int
        Index of its repeated block.
    shape : tuple of int
        ``(out_features, in_features)``.
    n_params : int
    target : float
        The requested sparsity ratio (N/M for an N:M pattern).
    achieved : float
        Fraction of the weight's entries that are zero after pruning.
    error : float
        Relative reconstruction error ``‖WX − ŴX‖_F / ‖WX‖_F`` over the calibration tokens, with
        ``W`` the dense and ``Ŵ`` the pruned weight and ``X`` the module's inputs in the pruned
        block (for the first matrices of a block, the very inputs the mask was computed from);
        bias excluded. NaN without calibration data, when not measured, or for ratio 0.
    time_s : float
        Seconds spent computing and applying its mask (and update).
    damp : float
        SparseGPT: the damping λ used; NaN for the other methods.
    retries : int
        SparseGPT: failed Cholesky attempts before ``damp`` worked; 0 otherwise.
    dead_inputs : int
        SparseGPT: input columns never active in the calibration data (zeroed); 0 otherwise.
    """

    name: str
    block: int
    shape: tuple
    n_params: int
    target: float
    achieved: float
    error: float = math.nan
    time_s: float = 0.0
    damp: float = math.nan
    retries: int = 0
    dead_inputs: int = 0


def _weighted(values, weights) -> float:
    total = sum(weights)
    if total == 0:
        return math.nan
    return math.fsum(v * w for v, w in zip(values, weights)) / total


@dataclass(frozen=True, eq=False)
class PruneReport(KeyedResult):
    """Per-module results of :func:`~specmetrics.prune`, keyed by qualified module name.

    A read-only mapping ``{module name: ModulePruneResult}`` in model order.

    Attributes
    ----------
    modules : tuple of ModulePruneResult
    method : object
        The method config used (``WandaConfig(...)``, ...).
    nsamples, seqlen, seed : int or None
        The calibration settings; ``None`` when no calibration data was used (``seed`` is also
        ``None`` for token windows given directly).
    calibration : mapping or None
        How the calibration windows were obtained (source, number of tokens).
    device : str
        Where the blocks ran (``"module"``: each where its parameters were).
    time_s : float
        Wall-clock seconds of the whole call.
    settings : Settings
        All of the above but ``modules`` and ``time_s``, JSON-able (the method as
        ``{"name", fields...}``).
    """

    modules: tuple
    method: Any
    nsamples: Optional[int]
    seqlen: Optional[int]
    seed: Optional[int]
    calibration: Optional[Mapping] = None
    device: str = "module"
    time_s: float = 0.0

    def __post_init__(self):
        object.__setattr__(self, "modules", tuple(self.modules))
        by_name = {m.name: m for m in self.modules}
        if len(by_name) != len(self.modules):
            raise ValueError("module names in a PruneReport must be unique.")
        if self.calibration is not None:
            object.__setattr__(self, "calibration", MappingProxyType(dict(self.calibration)))
        self._init_result(by_name, {
            "method": jsonable(self.method), "nsamples": self.nsamples, "seqlen": self.seqlen,
            "seed": self.seed,
            "calibration": None if self.calibration is None else dict(self.calibration),
            "device": self.device,
        })

    def __repr__(self) -> str:
        return (f"PruneReport(method={self.method!r}, n_modules={len(self)}, "
                f"target={self.target:.4g}, achieved={self.achieved:.4g}, "
                f"nsamples={self.nsamples}, seqlen={self.seqlen}, seed={self.seed}, "
                f"time_s={self.time_s:.3g})")

    @property
    def target(self) -> float:
        """Parameter-weighted mean requested ratio."""
        return _weighted([m.target for m in self.modules], [m.n_params for m in self.modules])

    @property
    def achieved(self) -> float:
        """Parameter-weighted mean achieved sparsity of the prunable matrices."""
        return _weighted([m.achieved for m in self.modules], [m.n_params for m in self.modules])

    @property
    def achieved_by_block(self) -> dict[int, float]:
        """Parameter-weighted achieved sparsity of each block."""
        out: dict[int, float] = {}
        for block in dict.fromkeys(m.block for m in self.modules):
            members = [m for m in self.modules if m.block == block]
            out[block] = _weighted([m.achieved for m in members], [m.n_params for m in members])
        return out

    def to_frame(self):
        """One row per module, indexed by module name, with every field of
        :class:`ModulePruneResult` (``block``, ``shape``, ``n_params``, ``target``, ``achieved``,
        ``error``, ``time_s``, ``damp``, ``retries``, ``dead_inputs``).

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        columns = [f.name for f in fields(ModulePruneResult)]
        frame = pd.DataFrame([asdict(m) for m in self.modules], columns=columns)
        return frame.set_index("name")

    def plot(self, ax=None):
        """Achieved sparsity and reconstruction error by block.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.pruning import plot_prune_report

        return plot_prune_report(self, ax)

    # -- JSON --------------------------------------------------------------------------------
    def _to_payload(self) -> Any:
        return {"modules": [asdict(m) for m in self.modules], "time_s": self.time_s}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "PruneReport":
        modules = []
        for row in data["modules"]:
            row = {k: (nan_if_none(v) if k in _FLOAT_FIELDS else v) for k, v in row.items()}
            row["shape"] = tuple(row["shape"])
            modules.append(ModulePruneResult(**row))
        method = settings.get("method")
        try:
            from .registry import resolve_method

            config = dict(method)
            name = config.pop("name")
            method = type(resolve_method(name))(**config)
        except Exception:  # an unregistered method: keep its description
            pass
        return cls(modules=tuple(modules), method=method, nsamples=settings.get("nsamples"),
                   seqlen=settings.get("seqlen"), seed=settings.get("seed"),
                   calibration=settings.get("calibration"), device=settings.get("device",
                                                                                 "module"),
                   time_s=float(data.get("time_s", 0.0)))
