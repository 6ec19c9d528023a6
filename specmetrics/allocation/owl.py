"""OWL's scores: outlier ratios of Wanda scores, from calibration activations.

The pruning module has its own layer-sequential calibration capture; OWL only needs the dense
model's per-input-channel sums of squared activations, which one forward pass of the dense model
gives exactly (OWL's layer-by-layer loop also runs the unpruned blocks). Either source of those
sums can be fed to :func:`unit_outlier_ratios`.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable, Mapping, Sequence

import numpy as np

from .mapping import outlier_ratio

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["capture_input_sq_norms", "wanda_scores", "unit_outlier_ratios"]

logger = logging.getLogger(__name__)


def _weight_out_in(module):
    """The weight as (out_features, in_features); transformers' Conv1D stores it transposed."""
    weight = module.weight.detach()
    if type(module).__name__ == "Conv1D":
        weight = weight.t()
    return weight.reshape(weight.shape[0], -1)


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
    import torch

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
    for unit, names in units.items():
        pooled = []
        for name in names:
            if name not in input_sq_norms:
                raise ValueError(f"no calibration statistics for module {name!r}.")
            weight = _weight_out_in(model.get_submodule(name)).float().cpu().numpy()
            norms = input_sq_norms[name]
            if hasattr(norms, "detach"):  # a torch tensor, possibly bf16 or on a GPU
                norms = norms.detach().float().cpu().numpy()
            pooled.append(wanda_scores(weight, norms).ravel())
        out[unit] = outlier_ratio(np.concatenate(pooled) if pooled else np.empty(0), m)
    return out
