"""``prune()``: layer-by-layer pruning of a model in place; the loop around the methods."""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from typing import Any, Optional

import torch
from torch import nn

from .._validation import (check_bool, check_device, check_interval, check_not_meta, fail,
                           is_real_number)
from .._validation import shown as _shown
from .._threads import map_single_threaded
from ..calibration.runner import SequentialRunner
from ..calibration.windows import calibration_set
from ..exceptions import PruneError
from ..models.blocks import BlockLayout, find_blocks, set_weight_out_in, weight_out_in
from .configs import WandaConfig
from .registry import resolve_method
from .report import ModulePruneResult, PruneReport

__all__ = ["prune"]

logger = logging.getLogger(__name__)

_FUNC = "prune"


def _is_real(value) -> bool:
    return is_real_number(value)


def _resolve_sparsity(model: nn.Module, sparsity, layout: BlockLayout,
                      config) -> dict[str, float]:
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


def _check_finite_weights(layout: BlockLayout, ratios: Mapping[str, float]) -> None:
    """Every matrix to be pruned holds finite weights (found before any weight changes)."""
    bad = []
    for name, pm in layout.modules.items():
        if ratios[name] > 0 and not bool(torch.isfinite(pm.module.weight.detach()).all()):
            bad.append(name)
    if bad:
        raise fail("model", _FUNC, "a model whose prunable weights are all finite (NaN or inf in "
                   f"{_shown(bad)})", type(layout.blocks[0]).__name__ if layout.blocks else "model")


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
          nsamples=None, seqlen=None, seed=0, device=None, atomic=False, measure_error=None,
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
    method : method config or str, default WandaConfig()
        The pruning method and its pattern (a config of :data:`specmetrics.pruning.METHODS`:
        ``MagnitudeConfig``, ``WandaConfig``, ``SparseGPTConfig``, ...), or a registered name
        (``"magnitude"``, ``"wanda"``, ``"sparsegpt"``, ...) for its default config.
    calibration : str, pathlib.Path, list of str, torch.Tensor or CalibrationSet, optional
        Calibration data, required by methods that use activations (Wanda, SparseGPT): by the
        one text rule a ``str`` is the text, a ``pathlib.Path`` a text file, a list of texts is
        joined with ``"\\n\\n"``; or a 1-D token stream, or token windows of shape (n, L); see
        :func:`~specmetrics.calibration.load_calibration`. Magnitude pruning ignores it unless
        ``measure_error=True``.
    tokenizer : callable, optional
        Tokenizer for text calibration (a Hugging Face tokenizer).
    nsamples : int, optional
        Number of calibration windows: 128 by default, every row of a ``CalibrationSet`` or
        token-window tensor.
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
    measure_error : bool or None, default None
        Measure each matrix's relative reconstruction error while its block is re-run (one
        extra matrix product per matrix and sequence; needs calibration data). ``None``: yes
        for methods that run the calibration pass anyway (Wanda, SparseGPT), no for magnitude
        pruning, where it would cost a whole calibration pass of the model (about as long as
        Wanda's); ``True`` asks for it there too.
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
    config = resolve_method(method, func=_FUNC)
    check_not_meta(model, name="model", func=_FUNC)
    layout = find_blocks(model, func=_FUNC)
    ratios = _resolve_sparsity(model, sparsity, layout, config)
    compute_device = check_device(device, func=_FUNC)
    atomic = check_bool(atomic, name="atomic", func=_FUNC)
    asked_error = measure_error is not None
    if asked_error:
        measure_error = check_bool(measure_error, name="measure_error", func=_FUNC)
    else:
        measure_error = config.needs_calibration
    progress = check_bool(progress, name="progress", func=_FUNC)
    if calibration is None:
        if config.needs_calibration:
            raise fail("calibration", _FUNC, f"given for {type(config).__name__} (a text, a "
                       "pathlib.Path of a text file, a list of texts or a tensor of token ids)",
                       None)
        if asked_error and measure_error:
            raise fail("measure_error", _FUNC, "False (or None) without calibration data (the "
                       "errors are measured on it)", measure_error)
        calib = None
    elif not config.needs_calibration and not measure_error:
        logger.info("prune: %s needs no calibration data and measure_error is off: the "
                    "calibration text is not used", config.name)
        calib = None
    else:
        calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                                seqlen=seqlen, seed=seed, func=_FUNC)
    _check_finite_weights(layout, ratios)
    nm = config.nm
    if nm is not None:
        bad = [n for n, pm in layout.modules.items() if pm.in_features % nm[1]]
        if bad:
            raise fail("method", _FUNC, f"a pattern whose M divides the input size of every "
                       f"prunable matrix (M = {nm[1]} does not divide that of {_shown(bad)})",
                       config)

    make_stat = config.statistic
    if calib is not None and make_stat is not None and not any(r > 0 for r in ratios.values()):
        make_stat = None  # nothing will be pruned: the statistics would go unused
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
            todo = [name for name in step.modules if ratios[name] > 0.0]

            def compute(name, step=step):
                # one matrix's mask/update: a pure function of its weight and statistic, many
                # small tensor operations (SparseGPT's columns): run in a worker thread with one
                # intra-op thread, the block's matrices spread over the workers
                t0 = time.perf_counter()
                try:
                    weight = weight_out_in(step.modules[name].module)
                    stat = None if step.stats is None else step.stats[name]
                    return config.prune_matrix(weight, stat, ratios[name]), \
                        time.perf_counter() - t0, None
                except BaseException as err:  # raised in order below: earlier matrices land
                    return None, 0.0, err

            workers = 1 if step.device.type != "cpu" else None
            computed = dict(zip(todo, map_single_threaded(compute, todo, workers=workers)))
            for name, pm in step.modules.items():
                ratio = ratios[name]
                shape = (pm.out_features, pm.in_features)
                if ratio <= 0.0:
                    results[name] = dict(name=name, block=pm.block, shape=shape,
                                         n_params=pm.n_params, target=0.0,
                                         achieved=_zero_fraction(weight_out_in(pm.module)))
                    continue
                current = name
                update, seconds, err = computed[name]
                if err is not None:
                    raise err
                t0 = time.perf_counter() - seconds
                weight = weight_out_in(pm.module)
                new, extra = update.weight, dict(update.extras)
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
    _check_achieved(report)
    return report


def _check_achieved(report: PruneReport) -> None:
    """Warn when the zeros differ from the target by more than one weight per matrix (the
    rounding every method is held to) in matrices without dead inputs."""
    import warnings

    from ..exceptions import SparsityShortfallWarning

    checked = [m for m in report.modules if m.dead_inputs == 0 and m.target > 0]
    if not checked:
        return
    expected = sum(math.floor(m.n_params * m.target + 0.5) for m in checked)
    zeros = sum(round(m.n_params * m.achieved) for m in checked)
    if abs(zeros - expected) > len(checked):
        total = sum(m.n_params for m in checked)
        warnings.warn(
            f"prune: the pruned matrices hold {zeros} zeros where the ratios ask for {expected} "
            f"({zeros / total:.6f} vs {expected / total:.6f} of {total} weights), more than the "
            f"rounding of one weight per matrix ({len(checked)})", SparsityShortfallWarning,
            stacklevel=3)


def _zero_fraction(weight: torch.Tensor) -> float:
    return float((weight == 0).sum()) / weight.numel() if weight.numel() else math.nan


def _weighted_target(layout: BlockLayout, ratios: Mapping[str, float]) -> float:
    total = sum(pm.n_params for pm in layout.modules.values())
    return math.fsum(ratios[n] * pm.n_params for n, pm in layout.modules.items()) / total
