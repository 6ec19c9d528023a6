"""Output variance by layer on real text (seed 003), dense and with projections pruned.

What is measured
----------------
Calibration windows of the text (:func:`specmetrics.calibration.calibration_set`) go through the
model block by block (the inputs of block 0 are captured once; every block then runs on the
*dense* outputs of the block before, so the blocks are measured independently). For each block:

``var_attention``
    variance of the attention output: the output of its ``o`` projection;
``var_mlp``
    variance of the MLP output: the output of its ``down`` projection;
``var_sum``
    variance of their sum per token (a pre-norm block's residual update, ``h_out - h_in``);
``var_output``
    variance of the block's output hidden states;
``var_delta_<set>``
    with the projections of ``<set>`` (default ``q+o`` and ``q+k+v+o``: the seed's
    Var(Q+Output) and Var(QKV+Output)) pruned at ``prune`` (a magnitude mask by default): the
    variance of the change of the block's output, ``y_pruned - y_dense``, on the same inputs.

A "variance" of a sequence of d-dimensional vectors is ``trace(Cov) / d``: the variance over
all tokens of each coordinate, averaged over the coordinates (population variance, accumulated
in float64 with Chan's update). The model's weights are restored bit for bit after each pruned
pass, also on an error.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

import torch

from .._validation import (check_bool, check_device, check_int, check_interval, check_seed,
                           fail)
from ..calibration import (calibration_set, capture_block_inputs, model_max_positions, move_to,
                           output_tensor)
from ..models import (FUSED_TYPES, MODULE_TYPES, block_device, find_blocks, module_type,
                      parse_type_set,
                      set_weight_out_in, type_in, weight_out_in)
from ._common import check_model
from .results import BlockVariance, OutputVariance

__all__ = ["output_variance", "magnitude_prune", "RunningVariance", "DEFAULT_SETS"]

logger = logging.getLogger(__name__)

#: The projection sets pruned by default: the seed's Var(Q+Output) and Var(QKV+Output).
DEFAULT_SETS = ("q+o", "q+k+v+o")
#: Text windows and their length by default (kept small: every block runs 1 + len(sets) times).
DEFAULT_NSAMPLES, DEFAULT_SEQLEN = 16, 256


def magnitude_prune(weight: torch.Tensor, ratio: float) -> torch.Tensor:
    """A copy of ``weight`` with its ``floor(ratio * numel)`` smallest-magnitude entries zeroed.

    One threshold for the whole matrix (the magnitude baseline of the pruning papers); ties are
    broken by position (stable sort), so exactly ``floor(ratio * numel)`` entries are zeroed.

    Parameters
    ----------
    weight : torch.Tensor
        Any shape.
    ratio : float
        In [0, 1].

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device.
    """
    flat = weight.detach().reshape(-1)
    k = int(math.floor(float(ratio) * flat.numel()))
    out = flat.clone()
    if k > 0:
        order = torch.argsort(flat.abs().float(), stable=True)
        out[order[:k]] = 0
    return out.reshape(weight.shape)


class RunningVariance:
    """Per-coordinate running mean and sum of squared deviations (Chan et al.), float64.

    ``value`` is the population variance of each coordinate averaged over coordinates
    (``trace(Cov) / d``).
    """

    def __init__(self):
        self.count = 0
        self.mean: Optional[torch.Tensor] = None
        self.m2: Optional[torch.Tensor] = None

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).to(torch.float64).cpu()
        n = int(x.shape[0])
        if n == 0:
            return
        mean = x.mean(dim=0)
        m2 = ((x - mean) ** 2).sum(dim=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = n, mean, m2
            return
        total = self.count + n
        delta = mean - self.mean
        self.mean = self.mean + delta * (n / total)
        self.m2 = self.m2 + m2 + delta ** 2 * (self.count * n / total)
        self.count = total

    @property
    def value(self) -> float:
        if self.mean is None or self.count == 0:
            return math.nan
        return float((self.m2 / self.count).mean())


def _parse_sets(sets: Any, func: str) -> dict[str, frozenset]:
    if isinstance(sets, str):
        sets = (sets,)
    try:
        items = list(sets)
    except TypeError:
        raise fail("sets", func, "a non-empty sequence of projection sets such as 'q+o'",
                   sets) from None
    if not items:
        raise fail("sets", func, "a non-empty sequence of projection sets such as 'q+o'", sets)
    out: dict[str, frozenset] = {}
    for item in items:
        types = parse_type_set(item, name="sets", func=func)
        shown = {t for t in types if not (t in FUSED_TYPES and FUSED_TYPES[t] <= types)}
        label = "+".join(t for t in MODULE_TYPES if t in shown)
        if label in out:
            raise fail("sets", func, "distinct projection sets", sets)
        out[label] = types
    return out


def _one(modules: dict, mtype: str) -> Optional[Any]:
    found = [pm for name, pm in modules.items() if module_type(name) == mtype]
    return found[0] if len(found) == 1 else None


def output_variance(model, tokenizer, text, *, prune: Optional[float] = None,
                    sets=DEFAULT_SETS, pruner: Optional[Callable] = None,
                    nsamples: Optional[int] = None, seqlen: Optional[int] = None,
                    seed: int = 0, device=None,
                    progress: bool = False) -> OutputVariance:
    """Variance of each block's attention output, MLP output and their sum on real text, and of
    the change in its output with chosen projections pruned (see the module docstring).

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face decoder or BERT-style encoder.
    tokenizer : Hugging Face tokenizer or callable, or None
        Needed for text (``None`` for token ids).
    text : str, pathlib.Path, list of str or torch.Tensor
        By the one text rule (:mod:`specmetrics.calibration.text`), or token ids.
    prune : float, optional
        Ratio in (0, 1) at which each set's projections are pruned; ``None``: dense variances
        only.
    sets : sequence, default ("q+o", "q+k+v+o")
        Projection sets to prune, each a string (``"q+o"``) or a sequence of module types
        (:func:`specmetrics.models.parse_type_set`). A fused projection (GPT-2's ``c_attn``) is
        pruned only with a set that names all its parts.
    pruner : callable, optional
        ``pruner(weight, ratio) -> pruned weight`` on the (out_features, in_features) weight;
        default :func:`magnitude_prune` (one magnitude threshold per matrix).
    nsamples : int, optional
        Text windows (default: 16; every row of given token windows).
    seqlen : int, optional
        Tokens per window (default: 256, or the length of given token windows; capped at the
        model's maximum positions).
    seed : int, default 0
        Seed of the window draw.
    device : torch.device or str, optional
        Where each block runs (default: where it is).
    progress : bool, default False

    Returns
    -------
    OutputVariance
        One :class:`~specmetrics.circuits.BlockVariance` per block.

    Raises
    ------
    ParameterError
        For a bad parameter (before any work), or a ``pruner`` that returns something other than
        a tensor of the weight's shape (the weights are restored).
    UnsupportedModelError
        For a model whose blocks cannot be found or run one at a time.
    """
    func = "output_variance"
    check_model(model, func)
    if prune is not None:
        prune = check_interval(prune, 0.0, 1.0, name="prune", func=func, closed="neither")
    parsed = _parse_sets(sets, func)
    if pruner is not None and not callable(pruner):
        raise fail("pruner", func, "None or a callable (weight, ratio) -> pruned weight",
                   type(pruner).__name__)
    windows = isinstance(text, torch.Tensor) and text.dim() == 2
    if nsamples is None:
        nsamples = int(text.shape[0]) if windows else DEFAULT_NSAMPLES
    if seqlen is None:
        seqlen = int(text.shape[1]) if windows else DEFAULT_SEQLEN
    nsamples = check_int(nsamples, name="nsamples", func=func, minimum=1)
    seqlen = check_int(seqlen, name="seqlen", func=func, minimum=1)
    seed = check_seed(seed, func=func)
    device = check_device(device, func=func)
    progress = check_bool(progress, name="progress", func=func)
    layout = find_blocks(model, func=func)
    limit = model_max_positions(model)
    if limit is not None:
        seqlen = min(seqlen, limit)
    calib = calibration_set(model, text, tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen,
                            seed=seed, func=func)
    prune_fn = pruner if pruner is not None else magnitude_prune
    sets_used = parsed if prune is not None else {}

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    blocks: dict[str, BlockVariance] = {}
    try:
        with torch.no_grad():
            captured = capture_block_inputs(model, layout, calib.input_ids, device=device)
            hidden = captured.inputs
            for index in tqdm(range(len(layout)), desc=func, unit="block",
                              disable=not progress):
                block = layout.blocks[index]
                home = block_device(block)
                where = device or home or hidden.device
                moved = home if (device is not None and home is not None and home != device) \
                    else None
                if moved is not None:
                    block.to(device)
                try:
                    hidden = hidden.to(where)
                    args = move_to(captured.args[index], where)
                    kwargs = move_to(captured.kwargs[index], where)
                    blocks[layout.names[index]], hidden = _measure_block(
                        block, layout.modules_of(index), layout.names[index], index, hidden,
                        args, kwargs, sets_used, prune, prune_fn, func)
                finally:
                    if moved is not None:
                        block.to(moved)
    finally:
        model.train(was_training)
    settings = {"prune": prune, "sets": {k: sorted(v) for k, v in parsed.items()},
                "pruner": "magnitude" if pruner is None else getattr(pruner, "__name__",
                                                                     type(pruner).__name__),
                "variance": "trace(Cov)/d over tokens", **calib.settings(),
                "model": type(model).__name__}
    return OutputVariance(blocks, settings=settings)


def _measure_block(block, modules, name, index, hidden, args, kwargs, sets, ratio, prune_fn,
                   func):
    o_pm, down_pm = _one(modules, "o"), _one(modules, "down")
    seen: dict[str, torch.Tensor] = {}

    def keep(key):
        def hook(_module, _args, output):
            seen[key] = output_tensor(output)
        return hook

    handles = []
    if o_pm is not None:
        handles.append(o_pm.module.register_forward_hook(keep("attention")))
    if down_pm is not None:
        handles.append(down_pm.module.register_forward_hook(keep("mlp")))
    acc = {k: RunningVariance() for k in ("attention", "mlp", "sum", "output")}
    outputs = torch.empty_like(hidden)
    try:
        for i in range(hidden.shape[0]):
            seen.clear()
            y = output_tensor(block(hidden[i:i + 1], *args, **kwargs))[0]
            outputs[i] = y.to(outputs.dtype)
            acc["output"].update(y)
            if "attention" in seen:
                acc["attention"].update(seen["attention"][0])
            if "mlp" in seen:
                acc["mlp"].update(seen["mlp"][0])
            if "attention" in seen and "mlp" in seen and \
                    seen["attention"].shape == seen["mlp"].shape:
                acc["sum"].update(seen["attention"][0] + seen["mlp"][0])
    finally:
        for h in handles:
            h.remove()
    pruned: dict[str, float] = {}
    pruned_modules: dict[str, tuple] = {}
    for label, types in sets.items():
        targets = {n: pm for n, pm in modules.items() if type_in(module_type(n), types)}
        pruned_modules[label] = tuple(targets)
        if not targets:
            pruned[label] = math.nan
            continue
        originals = {n: pm.module.weight.detach().clone() for n, pm in targets.items()}
        delta = RunningVariance()
        try:
            for n, pm in targets.items():
                w = weight_out_in(pm.module)
                new = prune_fn(w.clone(), ratio)
                if not isinstance(new, torch.Tensor) or tuple(new.shape) != tuple(w.shape):
                    raise fail("pruner", func, "a callable returning a tensor of the weight's "
                               f"shape {tuple(w.shape)}",
                               type(new).__name__ if not isinstance(new, torch.Tensor)
                               else f"a tensor of shape {tuple(new.shape)}")
                set_weight_out_in(pm.module, new)
            for i in range(hidden.shape[0]):
                y = output_tensor(block(hidden[i:i + 1], *args, **kwargs))[0]
                delta.update(y.to(outputs.dtype) - outputs[i])
        finally:
            for n, pm in targets.items():
                pm.module.weight.data.copy_(originals[n])
        pruned[label] = delta.value
    entry = BlockVariance(name, index, acc["attention"].value, acc["mlp"].value,
                          acc["sum"].value, acc["output"].value, pruned, pruned_modules,
                          int(hidden.shape[0] * hidden.shape[1]))
    return entry, outputs
