"""How much each block's pruning costs the model's loss: the probe behind ``alphaprobe``.

:func:`block_sensitivity` prunes one block at a time (its matrices with Wanda's mask at a few
ratios, from the dense model's activation statistics), measures the increase of the mean token
loss on a few calibration windows, and restores the block. The result feeds
:class:`~specmetrics.allocation.AlphaProbeConfig`, which picks AlphaPruning's ε, direction,
normalisation and depth trend by the loss the probe predicts.

Cost: one statistics pass of the dense model over the probe windows, then ``n_blocks ·
len(ratios)`` forward passes of the probe windows (a probe of 2 windows of 512 tokens on a
30-block model at 2 ratios is 60 forwards of 1024 tokens: about 4 forward passes of a 16-window
calibration set).
"""
from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, Optional

import torch

from .._results import KeyedResult
from .._validation import check_bool, check_interval, fail
from ..allocation.owl import calibration_input_norms
from ..calibration.windows import calibration_set
from ..evaluation import perplexity
from ..models.blocks import find_blocks, set_weight_out_in, weight_out_in
from ..pruning.wanda import wanda_mask

__all__ = ["block_sensitivity", "BlockSensitivity", "mean_nll"]


def mean_nll(model, input_ids: torch.Tensor) -> float:
    """Mean next-token negative log-likelihood (nats) of a causal LM on windows of token ids.

    Parameters
    ----------
    model : torch.nn.Module
    input_ids : torch.Tensor, shape (n, L)

    Returns
    -------
    float
        The mean over the ``n (L - 1)`` predicted tokens (``log`` of
        :func:`~specmetrics.perplexity` on the same windows).
    """
    n, length = input_ids.shape
    return math.log(perplexity(model, None, input_ids.reshape(-1), seqlen=int(length)))


class BlockSensitivity(KeyedResult):
    """Loss increase when one block is pruned alone, keyed by block name.

    ``sens["model.layers.3"]`` is ``{ratio: Δ mean NLL}``; ``dense_loss`` is the dense model's
    mean NLL on the probe windows.
    """

    def __init__(self, deltas: Mapping, *, dense_loss: float, settings: Mapping,
                 time_s: float = 0.0):
        self._init_result({b: dict(v) for b, v in deltas.items()}, settings)
        object.__setattr__(self, "dense_loss", float(dense_loss))
        object.__setattr__(self, "time_s", float(time_s))

    def __repr__(self) -> str:
        return (f"BlockSensitivity(n_blocks={len(self)}, ratios={self.ratios}, "
                f"dense_loss={self.dense_loss:.4g})")

    @property
    def ratios(self) -> tuple:
        return tuple(sorted({r for v in self.values() for r in v}))

    def to_frame(self):
        """One row per block: ``block`` index and one ``delta@{ratio}`` column per ratio."""
        import pandas as pd

        rows = []
        for index, (name, deltas) in enumerate(self.items()):
            row = {"name": name, "block": index}
            for r in self.ratios:
                row[f"delta@{r:g}"] = deltas.get(r, math.nan)
            rows.append(row)
        return pd.DataFrame(rows).set_index("name")

    def plot(self, ax=None):
        """Loss increase by block, one line per ratio (log scale)."""
        from ..plotting.axes import new_axes

        ax = new_axes(ax)
        frame = self.to_frame()
        for r in self.ratios:
            ax.plot(frame["block"], frame[f"delta@{r:g}"].clip(lower=1e-6), marker="o",
                    label=f"block pruned alone at {r:g}")
        ax.set_yscale("log")
        ax.set_xlabel("block")
        ax.set_ylabel("increase of mean NLL (nats)")
        ax.legend(fontsize="small")
        return ax

    def _to_payload(self) -> Any:
        return {"dense_loss": self.dense_loss, "time_s": self.time_s,
                "deltas": {b: {repr(r): d for r, d in v.items()} for b, v in self.items()}}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "BlockSensitivity":
        deltas = {b: {float(r): (math.nan if d is None else d) for r, d in v.items()}
                  for b, v in data["deltas"].items()}
        return cls(deltas, dense_loss=data["dense_loss"], settings=settings,
                   time_s=data.get("time_s", 0.0))


def block_sensitivity(model, tokenizer, calibration, ratios: Sequence[float], *,
                      nsamples: int = 2, seqlen: Optional[int] = None, seed: int = 0,
                      progress: bool = False) -> BlockSensitivity:
    """The increase of the calibration loss when each block alone is pruned with Wanda.

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM; restored exactly after each trial (left unchanged).
    tokenizer : tokenizer or None
    calibration : text or token ids
        The probe windows (the one text rule): ``nsamples`` windows of ``seqlen`` tokens.
    ratios : sequence of float
        Sparsities each block is probed at, in (0, 1).
    nsamples : int, default 2
    seqlen : int, optional
        Default: the model's positions, at most 2048.
    seed : int, default 0
    progress : bool, default False

    Returns
    -------
    BlockSensitivity
    """
    from tqdm.auto import tqdm

    func = "block_sensitivity"
    if isinstance(ratios, (int, float)) or not isinstance(ratios, Sequence) or not ratios:
        raise fail("ratios", func, "a non-empty sequence of ratios in (0, 1)", ratios)
    ratios = tuple(sorted({check_interval(r, 0, 1, name="ratios", func=func, closed="neither")
                           for r in ratios}))
    progress = check_bool(progress, name="progress", func=func)
    started = time.perf_counter()
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                            seqlen=seqlen, seed=seed, func=func)
    layout = find_blocks(model, func=func)
    norms = calibration_input_norms(model, None, calib)
    was_training = model.training
    model.eval()
    try:
        dense = mean_nll(model, calib.input_ids)
        deltas: dict[str, dict[float, float]] = {}
        trials = [(i, r) for i in range(len(layout)) for r in ratios]
        for index, ratio in tqdm(trials, desc=func, unit="trial", disable=not progress):
            modules = layout.modules_of(index)
            saved = {n: weight_out_in(pm.module).clone() for n, pm in modules.items()}
            try:
                for name, pm in modules.items():
                    w = saved[name]
                    mask = wanda_mask(w, norms[name].to(w.device), ratio)
                    set_weight_out_in(pm.module, w.masked_fill(mask, 0))
                loss = mean_nll(model, calib.input_ids)
            finally:
                for name, pm in modules.items():
                    set_weight_out_in(pm.module, saved[name])
            deltas.setdefault(layout.names[index], {})[ratio] = loss - dense
    finally:
        model.train(was_training)
    settings = {"ratios": list(ratios), "method": "wanda", "calibration": calib.settings()}
    return BlockSensitivity({n: deltas[n] for n in layout.names if n in deltas}, dense_loss=dense,
                            settings=settings, time_s=time.perf_counter() - started)
