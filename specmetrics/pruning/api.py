"""``prune()``: layer-by-layer pruning of a model in place, and OWL's calibration scores."""
from __future__ import annotations

import logging
import math
import numbers
import time
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from .._checks import check_choice, check_interval, fail
from .blocks import BlockLayout, find_blocks, set_weight_out_in, weight_out_in
from .calibration import CalibrationSet, default_seqlen, load_calibration, model_max_positions
from .configs import MagnitudeConfig, SparseGPTConfig, WandaConfig
from .magnitude import magnitude_mask
from .masks import apply_mask
from .report import ModulePruneResult, PruneError, PruneReport
from .sequential import SequentialRunner
from .sparsegpt import sparsegpt_prune
from .stats import HessianStats, SquaredNormStats
from .wanda import wanda_mask, wanda_scores

__all__ = ["prune", "calibration_input_norms", "owl_outlier_ratios"]

logger = logging.getLogger(__name__)

_FUNC = "prune"
_METHODS = {"magnitude": MagnitudeConfig, "wanda": WandaConfig, "sparsegpt": SparseGPTConfig}
MethodConfig = MagnitudeConfig | WandaConfig | SparseGPTConfig


# ----------------------------------------------------------------------------------------------
# parameter checks (all of them run before any weight changes)

def _resolve_method(method) -> MethodConfig:
    if isinstance(method, (MagnitudeConfig, WandaConfig, SparseGPTConfig)):
        return method
    if isinstance(method, str) and method.lower() in _METHODS:
        return _METHODS[method.lower()]()
    raise fail("method", _FUNC, "a MagnitudeConfig, WandaConfig or SparseGPTConfig, or one of "
               "'magnitude', 'wanda', 'sparsegpt'", method)


def _is_real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _shown(names, limit: int = 6) -> str:
    names = list(names)
    text = ", ".join(repr(n) for n in names[:limit])
    return text + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _resolve_sparsity(model: nn.Module, sparsity, layout: BlockLayout,
                      config: MethodConfig) -> dict[str, float]:
    """``{prunable module name: ratio}`` from a float, None, an Allocation or a mapping."""
    nm = config.nm
    names = list(layout.modules)
    if sparsity is None:
        if nm is None:
            raise fail("sparsity", _FUNC, "a float in [0, 1), an Allocation or a mapping "
                       "{module name: ratio} (None only with an N:M pattern)", None)
        return dict.fromkeys(names, nm[0] / nm[1])
    if _is_real(sparsity):
        value = check_interval(sparsity, 0, 1, name="sparsity", func=_FUNC, closed="left")
        if nm is not None and not math.isclose(value, nm[0] / nm[1], rel_tol=0.0, abs_tol=1e-9):
            raise fail("sparsity", _FUNC, f"{nm[0] / nm[1]:g} (N/M) or None for pattern "
                       f"{config.pattern!r}", sparsity)
        return dict.fromkeys(names, nm[0] / nm[1] if nm is not None else value)
    if isinstance(sparsity, Mapping):
        if nm is not None:
            raise fail("sparsity", _FUNC, f"a float equal to N/M or None: the N:M pattern "
                       f"{config.pattern!r} takes no per-module ratios",
                       f"a {type(sparsity).__name__} of {len(sparsity)} ratios")
        keys = list(sparsity)
        bad_keys = [k for k in keys if not isinstance(k, str)]
        if bad_keys:
            raise fail("sparsity", _FUNC, "a mapping with qualified module names as keys",
                       f"keys {_shown(bad_keys)}")
        prunable = set(names)
        unknown, not_prunable = [], []
        for key in keys:
            if key in prunable:
                continue
            try:
                model.get_submodule(key)
            except AttributeError:
                unknown.append(key)
            else:
                not_prunable.append(key)
        missing = [n for n in names if n not in sparsity]
        problems = []
        if unknown:
            problems.append(f"names that are not modules of the model: {_shown(unknown)}")
        if not_prunable:
            problems.append("modules that are not prunable (only Linear/Conv1D inside the "
                            f"repeated blocks are): {_shown(not_prunable)}")
        if missing:
            problems.append(f"no ratio for the prunable modules {_shown(missing)} (give them "
                            "0.0 to leave them dense)")
        if problems:
            raise fail("sparsity", _FUNC, "a mapping with one ratio for every prunable module "
                       f"and nothing else; it has {'; '.join(problems)}",
                       f"a {type(sparsity).__name__} of {len(sparsity)} ratios")
        ratios = {}
        for name in names:
            value = sparsity[name]
            if not _is_real(value) or not 0.0 <= float(value) < 1.0:
                raise fail("sparsity", _FUNC, "a mapping of ratios in [0, 1)",
                           f"{value!r} for {name!r}")
            ratios[name] = float(value)
        return ratios
    raise fail("sparsity", _FUNC, "a float in [0, 1), None (N:M patterns), an Allocation or a "
               "mapping {module name: ratio}", type(sparsity).__name__)


def _resolve_device(device) -> Optional[torch.device]:
    if device is None:
        return None
    try:
        return torch.device(device)
    except (RuntimeError, TypeError):
        raise fail("device", _FUNC, "None, a torch.device or a device string such as 'cuda'",
                   device) from None


def _calibration_set(model, calibration, *, tokenizer, nsamples, seqlen, seed,
                     func: str) -> CalibrationSet:
    if seqlen is None:
        seqlen = default_seqlen(model, func=func)
        if isinstance(calibration, CalibrationSet):
            seqlen = min(seqlen, calibration.seqlen)
        elif isinstance(calibration, torch.Tensor) and calibration.ndim == 2:
            seqlen = min(seqlen, int(calibration.shape[1]))
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    return load_calibration(calibration, tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen,
                            seed=seed, max_positions=model_max_positions(model),
                            vocab_size=vocab if isinstance(vocab, int) else None, func=func)


def _check_flag(value, name: str) -> bool:
    check_choice(value, (False, True), name=name, func=_FUNC)
    return bool(value)


# ----------------------------------------------------------------------------------------------
# reconstruction error of a pruned matrix during the re-run of its block

class _ErrorMeter:
    """Accumulates ``‖ΔW x‖²`` and ``‖W x‖²`` over the re-run (``W x = Ŵx + ΔW x``)."""

    def __init__(self, delta: torch.Tensor, bias: Optional[torch.Tensor]):
        self.delta = delta  # (out, in) float32, dense minus pruned
        self.bias = None if bias is None else bias.detach().float()
        self.num = torch.zeros((), dtype=torch.float64, device=delta.device)
        self.den = torch.zeros((), dtype=torch.float64, device=delta.device)

    def __call__(self, _module, args, output):
        x = args[0].float()
        dx = torch.nn.functional.linear(x, self.delta)
        wx = output.float() + dx
        if self.bias is not None:
            wx = wx - self.bias
        self.num += dx.double().pow(2).sum()
        self.den += wx.double().pow(2).sum()

    def value(self) -> float:
        den = float(self.den)
        return math.sqrt(float(self.num) / den) if den > 0 else math.nan


# ----------------------------------------------------------------------------------------------

def prune(model, sparsity, *, method=WandaConfig(), calibration=None, tokenizer=None,
          nsamples=128, seqlen=None, seed=0, device=None, atomic=False, measure_error=True,
          progress=False) -> PruneReport:
    """Prune a model's linear layers in place, block by block.

    Parameters
    ----------
    model : torch.nn.Module
        A decoder-only causal LM (LLaMA, Mistral, Qwen2, GPT-NeoX, GPT-2, OPT, ...) or a
        BERT-style encoder from ``transformers``; modified in place. The prunable matrices are
        the ``Linear`` (and GPT-2 ``Conv1D``) layers inside its repeated blocks; embeddings,
        ``lm_head`` and poolers are never pruned.
    sparsity : float, Allocation, mapping or None
        A ratio in [0, 1) for every prunable matrix; or an :class:`~specmetrics.Allocation` /
        mapping ``{qualified module name: ratio}`` naming every prunable matrix (0.0 leaves one
        dense); or ``None`` with an N:M pattern (N/M). With an N:M pattern a float must equal
        N/M and a mapping is refused.
    method : WandaConfig, SparseGPTConfig, MagnitudeConfig or str, default WandaConfig()
        The pruning method and its pattern; ``"wanda"``, ``"sparsegpt"``, ``"magnitude"`` mean
        the default config of each.
    calibration : str, path, list of str, torch.Tensor or CalibrationSet, optional
        Calibration data, required by Wanda and SparseGPT: a text file, a list of texts (joined
        with ``"\\n\\n"``), a 1-D token stream, or token windows of shape (n, L); see
        :func:`~specmetrics.pruning.load_calibration`. Optional for magnitude pruning: without
        it no forward pass is run; with it the reconstruction errors are measured.
    tokenizer : callable, optional
        Tokenizer for text calibration (a Hugging Face tokenizer).
    nsamples : int, default 128
        Number of calibration windows.
    seqlen : int, optional
        Tokens per window; default: the model's maximum positions, capped at 2048 (for a token
        tensor of shape (n, L), also capped at L).
    seed : int, default 0
        Seed of the window draw (``torch.Generator().manual_seed(seed)``).
    device : torch.device or str, optional
        Where each block runs: it is moved there for its turn and back afterwards, so a model
        kept on the CPU can be pruned on a GPU one block at a time. ``None``: every block runs
        where its parameters are.
    atomic : bool, default False
        Keep a host copy of every changed weight until the call succeeds, and restore the
        model exactly if it fails (memory: a copy of the prunable weights on the host).
    measure_error : bool, default True
        Measure each matrix's relative reconstruction error while its block is re-run (one
        extra matrix product per matrix and sequence; needs calibration data).
    progress : bool, default False
        Show a progress bar over the blocks.

    Returns
    -------
    PruneReport
        ``{module name: ModulePruneResult}`` with target and achieved sparsity, reconstruction
        error and time per matrix; the method and calibration settings; ``to_frame()``.

    Raises
    ------
    ParameterError
        For bad parameters, found before any weight changes: unknown or missing module names,
        ratios outside [0, 1), a ratio or mapping that an N:M pattern cannot meet, missing
        calibration or tokenizer, calibration text shorter than ``seqlen + 1`` tokens.
    PruneError
        When pruning fails part-way (e.g. :class:`~specmetrics.pruning.CholeskyError`); its
        ``changed`` lists the modules already modified (none after an ``atomic`` restore).
        On ``KeyboardInterrupt`` the interrupt itself propagates (so Ctrl-C still stops the
        caller), with the same ``changed`` and ``restored`` attributes and a note naming them.

    Notes
    -----
    Layer-sequential as in the Wanda and SparseGPT reference code: the calibration windows go
    through the model up to the first block; then for each block the inputs of its matrices are
    accumulated (the per-channel squared norms for Wanda, the Hessian ``2/N Σ x xᵀ`` for
    SparseGPT; matrices with the same input share one statistic), every matrix of the block is
    pruned, the pruned block is run again and its outputs become the next block's inputs, so
    later blocks are calibrated on the outputs of the pruned earlier blocks.

    Examples
    --------
    >>> import specmetrics  # doctest: +SKIP
    >>> report = specmetrics.prune(model, 0.5, calibration="valid.txt", tokenizer=tok,
    ...                            nsamples=128, seqlen=2048)  # doctest: +SKIP
    >>> report.to_frame()[["target", "achieved", "error"]]  # doctest: +SKIP
    """
    started = time.perf_counter()
    config = _resolve_method(method)
    layout = find_blocks(model, func=_FUNC)
    ratios = _resolve_sparsity(model, sparsity, layout, config)
    compute_device = _resolve_device(device)
    atomic = _check_flag(atomic, "atomic")
    measure_error = _check_flag(measure_error, "measure_error")
    _check_flag(progress, "progress")
    if calibration is None:
        if config.needs_calibration:
            raise fail("calibration", _FUNC, f"given for {type(config).__name__} (a text file, a "
                       "list of texts or a tensor of token ids)", None)
        calib = None
    else:
        calib = _calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                                 seqlen=seqlen, seed=seed, func=_FUNC)
    nm = config.nm
    if nm is not None:
        bad = [n for n, pm in layout.modules.items() if pm.in_features % nm[1]]
        if bad:
            raise fail("method", _FUNC, f"a pattern whose M divides the input size of every "
                       f"prunable matrix (M = {nm[1]} does not divide that of {_shown(bad)})",
                       config)

    if isinstance(config, WandaConfig):
        make_stat = SquaredNormStats
    elif isinstance(config, SparseGPTConfig):
        make_stat = HessianStats
    else:
        make_stat = None
    if calib is not None and make_stat is not None and not any(r > 0 for r in ratios.values()):
        make_stat = None  # nothing will be pruned: the statistics would go unused
    pattern = config.pattern
    logger.info("prune: %s, %d matrices in %d blocks, mean target %.4g, calibration %s",
                config, len(ratios), len(layout), _weighted_target(layout, ratios),
                None if calib is None else calib.settings())

    results: dict[str, dict] = {}
    errors: dict[str, float] = {}
    backups: dict[str, torch.Tensor] = {}
    changed: list[str] = []
    current: Optional[str] = None
    last_meters: dict[str, _ErrorMeter] = {}

    def collect_errors():
        # the previous block has been re-run with its meters: read them and free the deltas
        for meter_name, meter in last_meters.items():
            errors[meter_name] = meter.value()
        last_meters.clear()

    runner = SequentialRunner(model, layout, None if calib is None else calib.input_ids,
                              device=compute_device, make_stat=make_stat, progress=progress,
                              desc="prune")
    steps = iter(runner)
    try:
        for step in steps:
            collect_errors()
            modified = False
            for name, pm in step.modules.items():
                ratio = ratios[name]
                shape = (pm.out_features, pm.in_features)
                if ratio <= 0.0:
                    results[name] = dict(name=name, block=pm.block, shape=shape,
                                         n_params=pm.n_params, target=0.0,
                                         achieved=_zero_fraction(weight_out_in(pm.module)))
                    continue
                current = name
                t0 = time.perf_counter()
                weight = weight_out_in(pm.module)
                extra: dict[str, Any] = {}
                if isinstance(config, MagnitudeConfig):
                    new = apply_mask(weight, magnitude_mask(weight, ratio, pattern=pattern))
                elif isinstance(config, WandaConfig):
                    mask = wanda_mask(weight, step.stats[name].value, ratio, pattern=pattern)
                    new = apply_mask(weight, mask)
                else:
                    res = sparsegpt_prune(
                        weight, step.stats[name].value, ratio, pattern=pattern,
                        blocksize=config.blocksize, percdamp=config.percdamp,
                        max_damp_retries=config.max_damp_retries, damp_growth=config.damp_growth)
                    new = res.weight
                    extra = {"damp": res.damp, "retries": res.retries,
                             "dead_inputs": res.dead_inputs}
                if measure_error and calib is not None:
                    last_meters[name] = _ErrorMeter(weight.float() - new.float(),
                                                    getattr(pm.module, "bias", None))
                if atomic:
                    backups[name] = pm.module.weight.detach().to("cpu", copy=True)
                set_weight_out_in(pm.module, new)
                changed.append(name)
                modified = True
                if step.device.type == "cuda":
                    torch.cuda.synchronize(step.device)
                results[name] = dict(name=name, block=pm.block, shape=shape,
                                     n_params=pm.n_params, target=ratio,
                                     achieved=_zero_fraction(weight_out_in(pm.module)),
                                     time_s=time.perf_counter() - t0, **extra)
                current = None
            step.modified = modified
            # measured by the runner's re-run of the pruned block, before the next step
            step.rerun_hooks = dict(last_meters)
        collect_errors()
    except BaseException as exc:
        steps.close()  # moves a block sent to `device` back home, restores train mode
        last_meters.clear()
        restored = False
        if atomic:
            with torch.no_grad():
                for name, saved in backups.items():
                    layout.modules[name].module.weight.copy_(saved)
            restored = True
        still_changed = [] if restored else list(changed)
        where = f" while pruning {current!r}" if current else ""
        if restored:
            state = (f"the {len(changed)} modules changed before the failure were restored "
                     "(atomic=True); the model is as it was before the call")
            if not changed:
                state = "no module was changed (atomic=True); the model is as it was"
        elif changed:
            state = (f"{len(changed)} modules were already pruned and remain changed: "
                     f"{', '.join(changed)}")
        else:
            state = "no module was changed"
        message = f"prune failed{where} ({type(exc).__name__}: {exc}); {state}."
        if not isinstance(exc, Exception):
            logger.error(message)
            exc.changed = still_changed
            exc.restored = restored
            if hasattr(exc, "add_note"):
                exc.add_note(message)
            raise
        raise PruneError(message, changed=still_changed, restored=restored,
                         module=current) from exc
    report = PruneReport(
        modules=tuple(ModulePruneResult(**results[n], **({"error": errors[n]} if n in errors
                                                         else {}))
                      for n in layout.modules),
        method=config,
        nsamples=None if calib is None else calib.nsamples,
        seqlen=None if calib is None else calib.seqlen,
        seed=None if calib is None else calib.seed,
        calibration=None if calib is None else calib.settings(),
        device="module" if compute_device is None else str(compute_device),
        time_s=time.perf_counter() - started)
    logger.info("prune: done in %.3g s, achieved %.6g", report.time_s, report.achieved)
    return report


def _zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel() if weight.numel() else math.nan


def _weighted_target(layout: BlockLayout, ratios: Mapping[str, float]) -> float:
    total = sum(pm.n_params for pm in layout.modules.values())
    return math.fsum(ratios[n] * pm.n_params for n, pm in layout.modules.items()) / total


# ----------------------------------------------------------------------------------------------
# OWL: outlier ratios of the dense model's Wanda scores, from the same sequential capture

def _dense_sq_norm_pass(model, calibration, *, tokenizer, nsamples, seqlen, seed, device,
                        progress, func, on_block):
    """Run the dense model block by block with Wanda's statistic; ``on_block(step)`` per block."""
    layout = find_blocks(model, func=func)
    compute_device = None if device is None else torch.device(device)
    if calibration is None:
        raise fail("calibration", func, "given (a text file, a list of texts or a tensor of "
                   "token ids)", None)
    calib = _calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
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


def calibration_input_norms(model, calibration, *, tokenizer=None, nsamples=128, seqlen=None,
                            seed=0, device=None, progress=False) -> dict[str, torch.Tensor]:
    """Wanda's input statistic of every prunable matrix of the dense model.

    The same layer-sequential capture as :func:`prune`, with no pruning (so the result equals a
    plain forward pass with hooks, to rounding). Feed it to OWL as
    ``allocate(model, S, method=OWLConfig(calibration=norms))``.

    Parameters
    ----------
    model : torch.nn.Module
        Left unchanged.
    calibration, tokenizer, nsamples, seqlen, seed, device, progress
        As for :func:`prune`.

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


def owl_outlier_ratios(model, calibration, *, tokenizer=None, m=5.0, nsamples=128, seqlen=None,
                       seed=0, device=None, progress=False) -> dict[str, float]:
    """OWL's layer-wise outlier ratio of each block of the dense model.

    For block ``l``, the Wanda scores ``A = |W_ij| · ‖X_j‖₂`` of all its prunable matrices are
    pooled and ``D_l = 100 · #{A > m · mean(A)} / #A`` (OWL's ``lib/prune_all.py``), computed on
    the block's device while the block is visited.

    Parameters
    ----------
    model : torch.nn.Module
        Left unchanged.
    calibration, tokenizer, nsamples, seqlen, seed, device, progress
        As for :func:`prune`.
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
            scores = wanda_scores(weight_out_in(pm.module), step.stats[name].value)
            total += scores.double().sum()
            count += scores.numel()
        threshold = m * float(total) / count
        outliers = 0
        for name, pm in step.modules.items():
            scores = wanda_scores(weight_out_in(pm.module), step.stats[name].value)
            outliers += int((scores.double() > threshold).sum())
        out[step.name] = 100.0 * outliers / count

    _dense_sq_norm_pass(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                        seqlen=seqlen, seed=seed, device=device, progress=progress, func=func,
                        on_block=on_block)
    return out
