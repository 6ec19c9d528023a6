"""OWL's scores: outlier ratios of Wanda scores, from calibration activations.

The pruning module has its own layer-sequential calibration capture; OWL only needs the dense
model's per-input-channel sums of squared activations, which one forward pass of the dense model
gives exactly (OWL's layer-by-layer loop also runs the unpruned blocks). Either source of those
sums can be fed to :func:`unit_outlier_ratios`.
"""
from __future__ import annotations

import logging
import math
from typing import Iterable, Mapping, Sequence

import numpy as np
import torch

from .._validation import check_bool, check_device, check_interval, fail
from ..calibration.runner import SequentialRunner
from ..calibration.stats import SquaredNormStats, input_weighted_magnitude
from ..calibration.text import model_tokenizer_text
from ..calibration.windows import calibration_set
from ..models.blocks import find_blocks, weight_out_in
from .mapping import outlier_ratio

__all__ = ["capture_input_sq_norms", "wanda_scores", "unit_outlier_ratios",
           "calibration_input_norms", "owl_outlier_ratios"]

logger = logging.getLogger(__name__)


def capture_input_sq_norms(model, names: Sequence[str], calibration, *,
                           batch_size: int = 1) -> dict[str, "torch.Tensor"]:
    """Per-input-channel sums of squared inputs of the named modules over calibration data.

    Parameters
    ----------
    model : torch.nn.Module
        The dense model; it is run in ``eval`` mode under ``torch.no_grad()`` and left unchanged.
    names : sequence of str
        Qualified names of the modules to watch (Linear or Conv1D).
    calibration : torch.Tensor or iterable
        Token ids of shape (n_samples, seq_len), split into batches of ``batch_size``; or an
        iterable of batches, each a tensor (passed positionally) or a dict of keyword arguments.
    batch_size : int, default 1

    Returns
    -------
    dict of str to torch.Tensor
        ``{name: tensor of shape (in_features,)}``, float32, ``Σ_tokens x_j²`` (Wanda's statistic
        up to a constant factor, which outlier ratios do not depend on).
    """
    sums: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name):
        def hook(_module, inputs, _output):
            x = inputs[0].detach()
            x = x.reshape(-1, x.shape[-1]).to(torch.float32)
            part = (x * x).sum(dim=0)
            sums[name] = part if name not in sums else sums[name] + part
        return hook

    for name in names:
        handles.append(model.get_submodule(name).register_forward_hook(hook_for(name)))
    if isinstance(calibration, torch.Tensor):
        batches: Iterable = calibration.split(batch_size)
    else:
        batches = calibration
    was_training = model.training
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    try:
        with torch.no_grad():
            for batch in batches:
                if isinstance(batch, Mapping):
                    model(**{k: v.to(device) if isinstance(v, torch.Tensor) else v
                             for k, v in batch.items()})
                else:
                    model(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    missing = [n for n in names if n not in sums]
    if missing:
        raise ValueError(f"calibration never reached these modules: {missing[:5]}"
                         f"{' ...' if len(missing) > 5 else ''}")
    return {n: sums[n].cpu() for n in names}


def wanda_scores(weight, input_sq_norm) -> np.ndarray:
    """Wanda scores ``|W_ij| · sqrt(s_j)``.

    Parameters
    ----------
    weight : array_like, shape (out_features, in_features)
    input_sq_norm : array_like, shape (in_features,)
        Sums of squared inputs per input channel.

    Returns
    -------
    ndarray, shape (out_features, in_features), float64
    """
    w = np.abs(np.asarray(weight, dtype=np.float64))
    s = np.sqrt(np.asarray(input_sq_norm, dtype=np.float64)).reshape(1, -1)
    if w.ndim != 2 or w.shape[1] != s.shape[1]:
        raise ValueError(f"weight of shape {w.shape} does not match {s.shape[1]} input channels.")
    return w * s


def unit_outlier_ratios(model, units: Mapping[str, Sequence[str]],
                        input_sq_norms: Mapping[str, object], m: float) -> dict[str, float]:
    """OWL's outlier ratio of each unit: its matrices' Wanda scores pooled.

    Parameters
    ----------
    model : torch.nn.Module
        Provides the weights (``model.get_submodule(name).weight``).
    units : mapping of str to sequence of str
        ``{unit: [module names whose scores are pooled]}``.
    input_sq_norms : mapping of str to array_like
        Per-input-channel sums of squared inputs, for every module named in ``units``.
    m : float
        Outlier threshold multiple.

    Returns
    -------
    dict of str to float
        ``{unit: percent of pooled scores above m · mean}``.
    """
    out: dict[str, float] = {}
    for unit, pairs in unit_weights_and_norms(model, units, input_sq_norms):
        pooled = [wanda_scores(w.float().cpu().numpy(),  # norms: a tensor possibly bf16 / GPU
                               s.float().cpu().numpy() if isinstance(s, torch.Tensor) else s
                               ).ravel() for w, s in pairs]
        out[unit] = outlier_ratio(np.concatenate(pooled) if pooled else np.empty(0), m)
    return out


def unit_weights_and_norms(model, units: Mapping[str, Sequence[str]],
                           input_sq_norms: Mapping[str, object]):
    """``(unit, [(weight, sq_norms), ...])`` for each unit, in order: the matrices whose Wanda
    scores an activation-based allocator (OWL, DLP) pools, with their input statistics.

    ``weight`` is the ``(out_features, in_features)`` tensor of each named module,
    ``sq_norms`` its per-input-channel sums of squared inputs as given (a tensor is detached).

    Raises
    ------
    ValueError
        When a named module has no statistics.
    """
    for unit, names in units.items():
        pairs = []
        for name in names:
            if name not in input_sq_norms:
                raise ValueError(f"no calibration statistics for module {name!r}.")
            norms = input_sq_norms[name]
            if isinstance(norms, torch.Tensor):
                norms = norms.detach()
            pairs.append((weight_out_in(model.get_submodule(name)), norms))
        yield unit, pairs


def _dense_sq_norm_pass(model, calibration, *, tokenizer, nsamples, seqlen, seed, device,
                        progress, func, on_block):
    """Run the dense model block by block with Wanda's statistic; ``on_block(step)`` per block."""
    layout = find_blocks(model, func=func)
    compute_device = check_device(device, func=func)
    check_bool(progress, name="progress", func=func)
    if calibration is None:
        raise fail("calibration", func, "given (a text, a list of texts, a pathlib.Path of a "
                   "text file or a tensor of token ids)", None)
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                            seqlen=seqlen, seed=seed, func=func)
    runner = SequentialRunner(model, layout, calib.input_ids, device=compute_device,
                              make_stat=SquaredNormStats, progress=progress, desc=func)
    steps = iter(runner)
    try:
        for step in steps:
            on_block(step)
            step.modified = False  # dense: the statistics pass already gave the outputs
    finally:
        steps.close()
    return layout


@model_tokenizer_text(old=("calibration",), new=("calibration",))
def calibration_input_norms(model, tokenizer, calibration, *, nsamples=None, seqlen=None,
                            seed=0, device=None, progress=False) -> dict[str, torch.Tensor]:
    """Wanda's input statistic of every prunable matrix of the dense model.

    The same layer-sequential capture as :func:`prune`, with no pruning (so the result equals a
    plain forward pass with hooks, to rounding). Feed it to OWL as
    ``allocate(model, S, method=OWLConfig(calibration=norms))``.

    Parameters
    ----------
    model : torch.nn.Module
        Left unchanged.
    tokenizer, calibration, nsamples, seqlen, seed, device, progress
        As for :func:`~specmetrics.prune` (``tokenizer`` ``None`` for token ids).

    Returns
    -------
    dict of str to torch.Tensor
        ``{module name: s}`` with ``s`` of shape (in_features,), float32, on the CPU: the mean
        over calibration sequences of ``Σ_tokens x_j²``.
    """
    out: dict[str, torch.Tensor] = {}

    def on_block(step):
        for name in step.modules:
            out[name] = step.stats[name].value.detach().to("cpu", copy=True)

    _dense_sq_norm_pass(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                        seqlen=seqlen, seed=seed, device=device, progress=progress,
                        func="calibration_input_norms", on_block=on_block)
    return out


@model_tokenizer_text(old=("calibration",), new=("calibration",))
def owl_outlier_ratios(model, tokenizer, calibration, *, m=5.0, nsamples=None, seqlen=None,
                       seed=0, device=None, progress=False) -> dict[str, float]:
    """OWL's layer-wise outlier ratio of each block of the dense model.

    For block ``l``, the Wanda scores ``A = |W_ij| · ‖X_j‖₂`` of all its prunable matrices are
    pooled and ``D_l = 100 · #{A > m · mean(A)} / #A`` (OWL's ``lib/prune_all.py``), computed on
    the block's device while the block is visited.

    Parameters
    ----------
    model : torch.nn.Module
        Left unchanged.
    tokenizer, calibration, nsamples, seqlen, seed, device, progress
        As for :func:`~specmetrics.prune` (``tokenizer`` ``None`` for token ids).
    m : float, default 5.0
        Outlier threshold multiple ``M`` (> 0).

    Returns
    -------
    dict of str to float
        ``{block name: D_l}`` (e.g. ``{"model.layers.0": 3.1, ...}``), in percent. For
        :func:`~specmetrics.allocate`, give each block's ratio to its matrices and pass that
        scores mapping with ``method=OWLConfig(...)`` and ``n_params``, or pass
        :func:`calibration_input_norms` as ``OWLConfig(calibration=...)``.
    """
    func = "owl_outlier_ratios"
    m = check_interval(m, 0.0, math.inf, name="m", func=func, closed="neither")
    out: dict[str, float] = {}

    def on_block(step):
        if not step.modules:
            return
        total = torch.zeros((), dtype=torch.float64, device=step.device)
        count = 0
        for name, pm in step.modules.items():
            scores = input_weighted_magnitude(weight_out_in(pm.module), step.stats[name].value)
            total += scores.double().sum()
            count += scores.numel()
        threshold = m * float(total) / count
        outliers = 0
        for name, pm in step.modules.items():
            scores = input_weighted_magnitude(weight_out_in(pm.module), step.stats[name].value)
            outliers += int((scores.double() > threshold).sum())
        out[step.name] = 100.0 * outliers / count

    _dense_sq_norm_pass(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                        seqlen=seqlen, seed=seed, device=device, progress=progress, func=func,
                        on_block=on_block)
    return out
