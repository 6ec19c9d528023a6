"""The WeightWatcher reference backend: ``esd(source, backend="weightwatcher")``.

Runs ``weightwatcher.WeightWatcher(model=...).analyze()`` (0.7.x, the ``ww`` extra) and
maps its frame to a :class:`~specmetrics.SpectrumReport` with the same keys, columns and
conventions as the native backend, so that one conformance suite runs on both.

What WeightWatcher sees
-----------------------
Every source goes through :func:`specmetrics.models.list_weight_matrices` first (the same
include/exclude filters, tied weights counted once), and WeightWatcher analyses a
lightweight stand-in ``nn.ModuleList``: one ``nn.Linear`` / ``nn.Embedding`` /
``nn.Conv1d`` (GPT-2 ``Conv1D``, analysed as one matrix) / ``nn.Conv2d`` per matrix, holding
the weight tensor itself (no copy for modules; safetensors are read into memory). Its rows
(``longname`` ``"0"``, ``"1"``, ...) are mapped back to the qualified names by that key.
The user's model is never handed to WeightWatcher, which sets a ``longname`` attribute on
every module it visits (and later trusts it), and reads ``.weight`` from containers too.
Weights of 3 or more dimensions other than ``Conv2d`` kernels (``nn.Conv1d``, ``Conv3d``)
are shown to WeightWatcher as ``(out, in, prod(kernel), 1)`` ``Conv2d`` kernels, since
0.7.7 mishandles them (it takes ``min(shape)`` singular values of a batched SVD); the
``layer_type`` column is the native backend's.

Numerics (WeightWatcher 0.7.7)
------------------------------
Weights are rounded to float32 (to float16 where CUDA is available) and their SVD runs in
float64 with SciPy (in float32 with torch on CUDA). ``dtype``, ``device``, ``method``,
``batch_bytes`` and ``progress`` are therefore not WeightWatcher's to choose:
``dtype=torch.float32`` or a non-CPU ``device`` raise :class:`~specmetrics.ParameterError`,
the others are ignored. ``xmin`` may be ``"ks"`` (the default fit) or ``"peak"``
(WeightWatcher's ``fix_fingers="xmin_peak"``, which only runs with
``pl_package="powerlaw"``, so it is passed); ``distribution="truncated_power_law"`` is
``fit="TPL"`` with ``pl_package="powerlaw"`` (WeightWatcher then searches ``xmin`` for the
truncated law itself, unlike the native backend, which refits WeightWatcher's tail). Both
need a ``powerlaw`` package that accepts WeightWatcher 0.7.7's ``Fit(distribution=...)``
calls: powerlaw 2.0 does not (every fit would fail), and they raise
:class:`~specmetrics.ParameterError` there.

Columns
-------
WeightWatcher's values, with its ``-1`` / ``inf`` failure sentinels turned into NaN and
``status="failed"``, ``warning="failed"``, ``num_pl_spikes=0`` (as the native backend).
Columns that only WeightWatcher reports (``layer_id``, ``longname``, ``raw_alpha``,
``ww_maxdist``, ``rand_*``, ``num_traps``) are dropped. ``alpha_peak`` and ``alpha_mid``,
which WeightWatcher does not compute, are fitted by :func:`specmetrics.fit_power_law` on
WeightWatcher's own eigenvalues, which are kept (``LayerSpectrum.eigenvalues``) through a
subclass whose ``apply_esd`` stores them: no second SVD.

``randomize=True``: WeightWatcher shuffles with the global legacy NumPy generator; it is
seeded with ``seed`` for the call and its previous state restored afterwards, so the
result is reproducible and no global random state changes. It is not the native
backend's shuffle (torch generator), so ``rand_distance`` agrees only statistically.

Side effects
------------
Importing WeightWatcher calls ``logging.basicConfig(level=INFO)``, sets the ``matplotlib``
logger to WARNING and adds a process-wide ``warnings.simplefilter("ignore")``; its fits
``print``. The import and every ``analyze()`` call run inside :func:`_contained`, which
restores the root logger's level and handlers, the ``matplotlib`` and ``weightwatcher``
logger levels and the warning filters, captures stdout/stderr, and forwards WeightWatcher's
log records to this module's logger at DEBUG level.

A weight containing NaN or inf (WeightWatcher's SVD would raise out of ``analyze()`` for the
whole model) is not handed to it: its row is a failed fit with NaN metrics, as natively.
"""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import sys
import warnings
from typing import Any, Iterator

import numpy as np
import torch

from ..._validation import fail
from ...exceptions import DegenerateSpectrumWarning
from ...models.matrices import WeightMatrix, list_weight_matrices
from ..powerlaw import MIN_TAIL, PowerLawFit, fit_power_law
from ..results import LayerSpectrum, SpectrumReport
from .base import WW_TYPES, EsdOptions, skip_reason, warn_failed_fits

__all__ = ["analyze", "import_weightwatcher"]

log = logging.getLogger(__name__)

_FUNC = "esd(backend='weightwatcher')"
_BLANKET_IGNORE = ("ignore", None, Warning, None, 0)
_MP_COLUMNS = ("sigma_mp", "bulk_max", "bulk_min", "num_spikes", "mp_softrank", "W_scale")
_RAND_COLUMNS = ("rand_distance", "max_rand_eval", "ww_softrank")


# ---------------------------------------------------------------------------
# containing WeightWatcher's side effects
# ---------------------------------------------------------------------------


class _Forward(logging.Handler):
    """Re-log WeightWatcher's records as DEBUG records of this module."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
        except Exception:  # WeightWatcher has calls such as logger.warning("Error:", e)
            message = f"{record.msg} {record.args}"
        log.debug("weightwatcher %s: %s", record.levelname, message)


@contextlib.contextmanager
def _contained(*, keep_new_filters: bool = False, ignore_warnings: bool = False) -> Iterator[None]:
    """Run WeightWatcher code without leaking its logging, warning or print side effects.

    Restores the root logger's level and handlers, the ``matplotlib`` and ``weightwatcher``
    loggers' levels and ``warnings.filters``; captures stdout and stderr (forwarded to
    DEBUG); inside, the ``weightwatcher`` logger (level WARNING, as WeightWatcher sets it)
    goes to :class:`_Forward` only.

    Parameters
    ----------
    keep_new_filters : bool
        Keep warning filters added inside (by packages imported for the first time, e.g.
        SciPy's), except the blanket ``simplefilter("ignore")`` entries WeightWatcher adds.
    ignore_warnings : bool
        Ignore all warnings inside, the condition WeightWatcher's code is written for.
    """
    root = logging.getLogger()
    root_level, root_handlers = root.level, list(root.handlers)
    mpl = logging.getLogger("matplotlib")
    mpl_level = mpl.level
    ww_logger = logging.getLogger("weightwatcher")
    ww_level, ww_propagate = ww_logger.level, ww_logger.propagate
    forward = _Forward()
    ww_logger.addHandler(forward)
    ww_logger.propagate = False
    ww_logger.setLevel(logging.WARNING)  # what WeightWatcher sets at import
    before = list(warnings.filters)
    added: list = []
    out, err = io.StringIO(), io.StringIO()
    try:
        with warnings.catch_warnings():
            if ignore_warnings:
                warnings.simplefilter("ignore")
            try:
                with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                    yield
            finally:
                if keep_new_filters:
                    inside = list(warnings.filters)
                    extra = inside.count(_BLANKET_IGNORE) - before.count(_BLANKET_IGNORE)
                    for f in inside:
                        if f in before:
                            continue
                        if f == _BLANKET_IGNORE and extra > 0:
                            extra -= 1
                            continue
                        added.append(f)
    finally:
        # catch_warnings restored the filter list; re-add what other packages added
        for action, message, category, module, lineno in reversed(added):
            warnings.filterwarnings(
                action,
                message.pattern if message is not None else "",
                category,
                module.pattern if module is not None else "",
                lineno,
            )
        for handler in list(root.handlers):
            if handler not in root_handlers:
                root.removeHandler(handler)
        for handler in root_handlers:
            if handler not in root.handlers:
                root.addHandler(handler)
        root.setLevel(root_level)
        mpl.setLevel(mpl_level)
        ww_logger.removeHandler(forward)
        ww_logger.propagate = ww_propagate
        ww_logger.setLevel(ww_level)
        for label, stream in (("stdout", out), ("stderr", err)):
            text = stream.getvalue().strip()
            if text:
                log.debug("weightwatcher %s:\n%s", label, text)


def import_weightwatcher():
    """Import ``weightwatcher`` without its global side effects (see the module docstring).

    Returns
    -------
    module
        The ``weightwatcher`` package.

    Raises
    ------
    ImportError
        Without the ``ww`` extra.
    """
    if "weightwatcher" in sys.modules:
        return sys.modules["weightwatcher"]
    try:
        with _contained(keep_new_filters=True):
            import weightwatcher
    except ImportError as err:
        raise ImportError(
            "backend='weightwatcher' needs the WeightWatcher package: pip install 'specmetrics[ww]'"
        ) from err
    return weightwatcher


@functools.lru_cache(maxsize=None)
def _watcher_class():
    ww = import_weightwatcher()

    class EigenvalueKeepingWatcher(ww.WeightWatcher):
        """``WeightWatcher`` that keeps each layer's eigenvalues (``analyze()`` drops them)."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.kept_eigenvalues: dict[str, np.ndarray] = {}

        def apply_esd(self, ww_layer, params=None):
            result = super().apply_esd(ww_layer, params)
            if ww_layer.evals is not None:
                self.kept_eigenvalues[str(ww_layer.longname)] = np.sort(np.asarray(ww_layer.evals, dtype=np.float64))
            return result

    return EigenvalueKeepingWatcher


@contextlib.contextmanager
def _seeded_numpy(seed: int) -> Iterator[None]:
    """Seed NumPy's legacy global generator for the block, then restore its state."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


# ---------------------------------------------------------------------------
# the stand-in model
# ---------------------------------------------------------------------------


def _leaf(w: WeightMatrix, tensor: torch.Tensor) -> torch.nn.Module:
    """A module WeightWatcher recognises, holding ``w``'s weight ``tensor`` (storage shared).

    Built 1x1 on the CPU and then given the weight: initialising on the meta device would
    import ``torch._dynamo`` (seconds) for nothing.
    """
    weight = torch.nn.Parameter(tensor.detach(), requires_grad=False)
    if weight.dim() == 2:
        if w.kind == "embedding":
            return torch.nn.Embedding(weight.shape[0], weight.shape[1], _weight=weight, _freeze=True)
        if w.kind == "conv1d":  # GPT-2 Conv1D: WeightWatcher's CONV1D, one matrix
            module = torch.nn.Conv1d(1, 1, 1, bias=False)
        else:
            module = torch.nn.Linear(1, 1, bias=False)
            module.out_features, module.in_features = weight.shape
    else:
        if weight.dim() != 4:
            weight = torch.nn.Parameter(weight.reshape(weight.shape[0], weight.shape[1], -1, 1), requires_grad=False)
        module = torch.nn.Conv2d(1, 1, 1, bias=False)
    module.weight = weight
    return module


def _stand_in(items: list[tuple[WeightMatrix, torch.Tensor]]) -> torch.nn.ModuleList:
    """One leaf module per matrix, WeightWatcher's ``longname`` of ``items[i]`` being ``str(i)``.

    The leaves are not nested under their qualified names: WeightWatcher reads ``.weight``
    from every module it visits, containers included, so a matrix named ``"weight"`` (a
    tensor source) or ``"x.weight"`` would break it. Rows are joined back to the qualified
    names through this index (a key, not the row order).
    """
    return torch.nn.ModuleList([_leaf(w, tensor) for w, tensor in items])


# ---------------------------------------------------------------------------
# WeightWatcher's frame -> LayerSpectrum
# ---------------------------------------------------------------------------


def _float(value: Any) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v


def _int(value: Any) -> Any:
    """``int`` of a count, NaN where there is none."""
    v = _float(value)
    return int(v) if math.isfinite(v) else math.nan


def _nonfinite_record(w: WeightMatrix) -> dict:
    """The record of a matrix with a NaN or inf weight, which WeightWatcher's SVD rejects
    (raising out of ``analyze()``): failed, every metric NaN, as the native backend."""
    n, m, rf = w.n_m_rf
    return {"status": "failed", "N": n, "M": m, "Q": n / m, "rf": rf, "num_evals": m * rf, "has_esd": True}


def _layer(w: WeightMatrix, rec: dict, evals: np.ndarray | None, *, clip_xmax: bool, distribution: str,
           mp_fit: bool, randomize: bool, xmin: str, failure: str = "") -> LayerSpectrum:
    alpha = _float(rec.get("alpha"))
    ok = not failure and str(rec.get("status")) == "success" and math.isfinite(alpha) and alpha > 1.0
    tail = _float(rec.get("num_pl_spikes"))
    short = ok and math.isfinite(tail) and tail < MIN_TAIL
    if short:  # the shared rule: a tail this short is no fit (the native backend says the same)
        ok = False
    if ok:
        message = ""
    elif failure:
        message = failure
    elif short:
        message = (f"the tail from xmin={_float(rec.get('xmin')):.6g} holds {int(tail)} "
                   f"eigenvalues, fewer than the {MIN_TAIL} a fit needs (MIN_TAIL; WeightWatcher "
                   f"reported alpha={alpha:.6g})")
    elif str(rec.get("status")) != "success":
        message = "WeightWatcher reported a failed power-law fit (alpha=-1)"
    else:
        message = f"WeightWatcher returned alpha={alpha!r}"
    nan = math.nan
    method = "peak" if xmin == "peak" else "ks"
    if clip_xmax:
        method += "+clip_xmax"
    if distribution == "truncated_power_law":
        method += "+tpl"
    lam = _float(rec.get("Lambda")) if distribution == "truncated_power_law" else nan
    fit = PowerLawFit(
        alpha=alpha if ok else nan,
        xmin=_float(rec.get("xmin")) if ok else nan,
        xmax=_float(rec.get("xmax")) if ok else nan,
        ks_distance=_float(rec.get("D")) if ok else nan,
        sigma=_float(rec.get("sigma")) if ok else nan,
        n_tail=int(_float(rec.get("num_pl_spikes"))) if ok else 0,
        success=ok,
        message=message,
        method=method,
        truncation=lam if ok and lam != -1 else nan,
        n_fingers=int(_float(rec.get("num_fingers"))) if clip_xmax and ok else 0,
    )
    fits = {"alpha": fit}
    if evals is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DegenerateSpectrumWarning)
            fits["alpha_peak"] = fit_power_law(evals, xmin="peak", warn=False)
            fits["alpha_mid"] = fit_power_law(evals, xmin="mid", warn=False)
    else:  # pragma: no cover - apply_esd always runs before the fits
        for key in ("alpha_peak", "alpha_mid"):
            fits[key] = PowerLawFit(nan, nan, nan, nan, nan, 0, False, "not computed", key[6:])

    entropy = _float(rec.get("entropy"))
    row: dict[str, Any] = {
        "alpha": fit.alpha,
        "xmin": fit.xmin,
        "xmax": fit.xmax,
        "D": fit.ks_distance,
        "sigma": fit.sigma,
        "num_pl_spikes": fit.n_tail,
        "norm": _float(rec.get("norm")),
        "log_norm": _float(rec.get("log_norm")),
        "spectral_norm": _float(rec.get("spectral_norm")),
        "log_spectral_norm": _float(rec.get("log_spectral_norm")),
        "alpha_weighted": _float(rec.get("alpha_weighted")) if ok else nan,
        "log_alpha_norm": _float(rec.get("log_alpha_norm")) if ok else nan,
        "stable_rank": _float(rec.get("stable_rank")),
        "matrix_rank": _int(rec.get("matrix_rank")),
        "entropy": nan if entropy == -1 else entropy,
        "rank_loss": _int(rec.get("rank_loss")),
        "weak_rank_loss": _int(rec.get("weak_rank_loss")),
        "lambda_max": _float(rec.get("lambda_max")),
        "sv_max": _float(rec.get("sv_max")),
        "sv_min": _float(rec.get("sv_min")),
        "num_evals": _int(rec.get("num_evals")),
        "N": _int(rec.get("N")),
        "M": _int(rec.get("M")),
        "Q": _float(rec.get("Q")),
        "rf": _int(rec.get("rf")),
        "layer_type": WW_TYPES[w.kind],
        "has_esd": bool(rec.get("has_esd", True)),
        "status": "success" if ok else "failed",
        "warning": str(rec.get("warning") or "") if ok else "failed",
        "alpha_peak": fits["alpha_peak"].alpha,
        "alpha_mid": fits["alpha_mid"].alpha,
        "n_params": w.n_params,
        "fit_message": message,
    }
    if distribution == "truncated_power_law":
        row["Lambda"] = fit.truncation
    if clip_xmax:
        row["num_fingers"] = fit.n_fingers
    if mp_fit:
        failed_mp = _float(rec.get("sigma_mp")) == -1 and _float(rec.get("W_scale")) == -1
        for key in _MP_COLUMNS:
            value = _float(rec.get(key))
            if failed_mp:
                value = nan
            row[key] = int(value) if key == "num_spikes" and math.isfinite(value) else value
    if randomize:
        for key in _RAND_COLUMNS:
            row[key] = _float(rec.get(key))
    return LayerSpectrum(w.name, w.kind, w.shape, w.n_params, evals, fits, row)


def _powerlaw_package_usable() -> bool:
    """Whether WeightWatcher's ``pl_package="powerlaw"`` route can run: 0.7.7 calls
    ``powerlaw.Fit(..., distribution=...)``, an argument powerlaw 2.0 removed (every fit then
    fails inside WeightWatcher with a TypeError it logs and swallows)."""
    import inspect

    try:
        import powerlaw
    except ImportError:
        return False
    params = inspect.signature(powerlaw.Fit.__init__).parameters.values()
    return any(p.name == "distribution" or p.kind is p.VAR_KEYWORD for p in params)


def _check_options(xmin: Any, clip_xmax: bool, distribution: str, dtype: torch.dtype, device: Any,
                   min_evals: int, max_evals: int, max_n: int) -> None:
    if not (isinstance(xmin, str) and xmin in ("ks", "peak")):
        raise fail("xmin", _FUNC, "'ks' or 'peak' (WeightWatcher's fits)", xmin)
    if xmin == "peak" and clip_xmax:
        raise fail("clip_xmax", _FUNC, "False with xmin='peak' (WeightWatcher has one fix_fingers option)", clip_xmax)
    if (xmin == "peak" or distribution == "truncated_power_law") and not _powerlaw_package_usable():
        why = "(WeightWatcher runs it with the powerlaw package, whose installed version rejects its calls)"
        if xmin == "peak":
            raise fail("xmin", _FUNC, f"'ks' here {why}", xmin)
        raise fail("distribution", _FUNC, f"'power_law' here {why}", distribution)
    if dtype != torch.float64:
        raise fail("dtype", _FUNC, "torch.float64 (WeightWatcher computes in float64 on a CPU)", dtype)
    if torch.device(device).type != "cpu":
        raise fail("device", _FUNC, "'cpu' (WeightWatcher chooses its own device)", str(device))
    if min_evals >= max_evals:
        raise fail("min_evals", _FUNC, f"smaller than max_evals={max_evals} (WeightWatcher rejects it)", min_evals)
    if max_n < max_evals:
        raise fail("max_n", _FUNC, f">= max_evals={max_evals} (WeightWatcher rejects a smaller max_N)", max_n)


def analyze(source: Any, opts: EsdOptions) -> SpectrumReport:
    """WeightWatcher implementation of :func:`specmetrics.esd` (see :class:`~specmetrics.spectrum.EsdOptions`).

    ``method``, ``batch_bytes`` and ``progress`` are ignored; see the module docstring for
    ``dtype``, ``device``, ``xmin``, ``distribution`` and ``seed``.
    """
    _check_options(
        opts.xmin, opts.clip_xmax, opts.distribution, opts.dtype, opts.device, opts.min_evals, opts.max_evals, opts.max_n
    )
    matrices = list_weight_matrices(source, include=opts.include, exclude=opts.exclude, func="esd")
    options = {**opts.summary(), "method": "svd"}
    if not matrices:
        return SpectrumReport({}, backend="weightwatcher", settings=options)
    ww = import_weightwatcher()
    options["weightwatcher_version"] = getattr(ww, "__version__", "unknown")
    kwargs: dict[str, Any] = dict(
        min_evals=opts.min_evals, max_evals=opts.max_evals, max_N=opts.max_n, mp_fit=bool(opts.mp_fit), randomize=bool(opts.randomize),
        plot=False, savefig=False,
    )
    if opts.clip_xmax:
        kwargs["fix_fingers"] = "clip_xmax"
    if opts.xmin == "peak":
        kwargs.update(fix_fingers="xmin_peak", pl_package="powerlaw")
    if opts.distribution == "truncated_power_law":
        kwargs.update(fit="TPL", pl_package="powerlaw")

    items: list[tuple[WeightMatrix, torch.Tensor]] = []
    nonfinite: set[str] = set()
    skipped: dict[str, str] = {}
    for w in matrices:
        tensor = w.load()
        if not torch.is_floating_point(tensor):
            raise fail("source", "esd", "floating-point weights", f"{w.name} of dtype {tensor.dtype}")
        if bool(torch.isfinite(tensor).all()):
            items.append((w, tensor))
        elif skip_reason(w, opts.min_evals, opts.max_evals, opts.max_n) is not None:
            skipped[w.name] = skip_reason(w, opts.min_evals, opts.max_evals, opts.max_n)
        else:
            nonfinite.add(w.name)
    key_of = {w.name: str(i) for i, (w, _) in enumerate(items)}
    records: dict[str, dict] = {}
    kept: dict[str, np.ndarray] = {}
    if items:
        with _contained(ignore_warnings=True), _seeded_numpy(opts.seed):
            watcher = _watcher_class()(model=_stand_in(items))
            frame = watcher.analyze(**kwargs)
        kept = watcher.kept_eigenvalues
        for rec in frame.to_dict(orient="records") if len(frame) else []:
            records[str(rec["longname"])] = rec

    results: dict[str, LayerSpectrum] = {}
    for w in matrices:
        if w.name in nonfinite:
            n, m, rf = w.n_m_rf
            results[w.name] = _layer(
                w, _nonfinite_record(w), np.full(m * rf, math.nan), clip_xmax=opts.clip_xmax, distribution=opts.distribution,
                mp_fit=opts.mp_fit, randomize=opts.randomize, xmin=opts.xmin,
                failure="the weight contains NaN or inf (WeightWatcher's SVD cannot run on it)",
            )
            continue
        if w.name in skipped:
            continue
        key = key_of[w.name]
        rec = records.get(key)
        if rec is None:
            skipped[w.name] = skip_reason(w, opts.min_evals, opts.max_evals, opts.max_n) or "skipped by WeightWatcher"
            continue
        results[w.name] = _layer(
            w, rec, kept.get(key), clip_xmax=opts.clip_xmax, distribution=opts.distribution,
            mp_fit=opts.mp_fit, randomize=opts.randomize, xmin=opts.xmin,
        )
    skipped = {w.name: skipped[w.name] for w in matrices if w.name in skipped}
    warn_failed_fits(results)
    return SpectrumReport(results, backend="weightwatcher", skipped=skipped, settings=options)
