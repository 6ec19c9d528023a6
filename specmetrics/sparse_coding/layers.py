"""The sparsity of a model's activations, layer by layer (Deng, Tao & Benton 2023, §5).

Sites
-----
=============== ===============================================================================
``embeddings``  the hidden states entering the first block: the token embeddings (for models
                with learned absolute positions or an embedding LayerNorm, e.g. GPT-2 and
                BERT, after them: whatever the model feeds its first block); layer 0
``residual``    each block's output hidden states: the residual stream after block ``i``, layer
                ``i + 1``
``mlp_out``     the output of each block's MLP down projection (what the MLP adds to the
                residual stream), layer ``i + 1``
=============== ===============================================================================

and the module-input sites of :func:`~specmetrics.activations.find_sites` (``qkv``, ``o``,
``gate_up``, ``silu_gate``, ``down``), layer ``i + 1``.

How the activations are read
----------------------------
Calibration windows (:func:`~specmetrics.calibration.calibration_set`: the one text rule,
seeded windows) go through the model block by block
(:class:`~specmetrics.calibration.SequentialRunner`), forward hooks copying the sampled tokens'
vectors of each site. ``max_tokens`` token positions are drawn once (seeded, uniformly without
replacement), the same for every site; the first position of every window is left out by
default (``skip_first=True``): attention-sink tokens carry activations hundreds of times larger
than the others, which would dominate any norm-based statistic. A block's sites are estimated
as soon as the block has run, so at most one block's samples are held.

Each site's samples (``n_tokens × width``) are centred by default (``center=True``; the
synthetic data of the paper are centred) and then measured by
:func:`~specmetrics.sparse_coding.estimate_sparsity`, which divides them by their RMS norm: the
result is invariant to rescaling the activations. ``controls`` adds the same measurement of
control data (:func:`~specmetrics.sparse_coding.make_control`) of every width present and the same
number of tokens, so each layer can be read against what non-sparse data of that shape score
with the very same settings.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from types import MappingProxyType
from typing import Any, Optional

import torch
from torch import nn

from .._results import KeyedResult, nan_if_none
from .._validation import check_bool, check_positive_int, check_seed, fail, shown
from ..activations import SITE_KINDS, find_sites
from ..calibration import CalibrationSet, SequentialRunner, calibration_set, output_tensor
from ..models import find_blocks
from .coding import default_max_atoms
from .dictionary import DEFAULT_LAMBDA_RATIO, DEFAULT_LR, ConvergenceWarning, SampleSizeWarning
from .estimate import MIN_SAMPLES_PER_ATOM, _check_estimate_options, _estimate
from .synthetic import CONTROL_KINDS, make_control

__all__ = ["LAYER_KINDS", "SiteSparsity", "LayerSparsity", "layer_sparsity"]

#: Site kinds specific to this analysis (the module-input kinds of ``find_sites`` work too).
LAYER_KINDS: tuple[str, ...] = ("embeddings", "residual", "mlp_out")
_ALL_KINDS = LAYER_KINDS + tuple(k for k in SITE_KINDS if k not in LAYER_KINDS)
_EXECUTION_ORDER = ("embeddings", "qkv", "o", "gate_up", "silu_gate", "down", "mlp_out",
                    "residual")
#: Calibration windows drawn from text by default (64 × 255 tokens: enough for 8 samples per
#: atom at 4 × width atoms up to width 510).
DEFAULT_NSAMPLES = 64
#: Fewest samples per atom the default dictionary size allows.
SAMPLES_PER_ATOM = 8
_FLOAT_FIELDS = ("n0", "loss", "s1", "normalized_loss", "normalized_loss_se", "lam",
                 "relative_mse", "a_estimate")


@dataclass(frozen=True)
class SiteSparsity:
    """The sparsity measured at one site.

    Attributes
    ----------
    name : str
        Site name: ``"embeddings"`` or ``f"{block}.{kind}"`` (``"model.layers.3.residual"``).
    kind : str
    layer : int
        0 for ``embeddings``, ``block + 1`` otherwise (the residual-stream position).
    block : int
        Block index (-1 for ``embeddings``).
    module : str
        The module whose input/output was read (``""`` for ``embeddings``).
    width : int
    n_tokens : int
    n_features : int
        Atoms of the dictionary learned for this site.
    n0, loss, s1, normalized_loss, normalized_loss_se, lam, relative_mse : float
        As in :class:`~specmetrics.sparse_coding.CodingMetrics`.
    a_estimate : float
        ``normalized_loss`` as an equivalent number of active features
        (:func:`~specmetrics.sparse_coding.implied_a`).
    converged : bool
    message : str
    """

    name: str
    kind: str
    layer: int
    block: int
    module: str
    width: int
    n_tokens: int
    n_features: int
    n0: float
    loss: float
    s1: float
    normalized_loss: float
    normalized_loss_se: float
    lam: float
    relative_mse: float
    a_estimate: float
    converged: bool
    message: str


class LayerSparsity(KeyedResult):
    """The sparsity of every site of a model, keyed by site name (model order).

    Attributes
    ----------
    sites : tuple of SiteSparsity
    controls : Mapping[str, Mapping[int, float]]
        ``{control kind: {width: normalized_loss}}`` measured with the same settings (empty when
        no control was asked for).
    settings : Settings
        Calibration windows, token sampling and estimation options.
    """

    sites: tuple
    controls: Mapping

    def __init__(self, sites, controls: Optional[Mapping] = None,
                 settings: Optional[Mapping] = None):
        sites = tuple(sites)
        by_name = {s.name: s for s in sites}
        if len(by_name) != len(sites):
            raise ValueError("site names in a LayerSparsity must be unique.")
        object.__setattr__(self, "sites", sites)
        object.__setattr__(self, "controls", MappingProxyType(
            {str(k): MappingProxyType({int(w): float(v) for w, v in dict(c).items()})
             for k, c in dict(controls or {}).items()}))
        self._init_result(by_name, settings or {})

    def __repr__(self) -> str:
        kinds = sorted({s.kind for s in self.sites})
        return f"LayerSparsity({len(self)} sites, kinds={kinds}, controls={list(self.controls)})"

    def of_kind(self, kind: str) -> dict[str, SiteSparsity]:
        """The sites of one kind, in model order (``"residual"`` includes nothing else; ask for
        ``"embeddings"`` too to get the whole residual-stream profile)."""
        return {s.name: s for s in self.sites if s.kind == kind}

    def profile(self, kind: str = "residual", *, with_embeddings: bool = True
                ) -> dict[int, float]:
        """``{layer: normalized_loss}`` for one kind (plus the embeddings at layer 0)."""
        out = {s.layer: s.normalized_loss for s in self.sites
               if s.kind == kind or (with_embeddings and s.kind == "embeddings")}
        return dict(sorted(out.items()))

    def to_frame(self):
        """One row per site, indexed by site name, with every field of :class:`SiteSparsity`
        and, for each control kind, ``control_<kind>``: the control's normalised loss at the
        site's width.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        rows = []
        for s in self.sites:
            row = asdict(s)
            for kind, by_width in self.controls.items():
                row[f"control_{kind}"] = by_width.get(s.width, math.nan)
            rows.append(row)
        columns = [f.name for f in fields(SiteSparsity)] + \
            [f"control_{k}" for k in self.controls]
        return pd.DataFrame(rows, columns=columns).set_index("name")

    def plot(self, ax=None, *, kinds=None):
        """Normalised loss by layer, one line per site kind, controls as horizontal lines.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.sparse_coding import plot_layer_sparsity

        return plot_layer_sparsity(self, ax=ax, kinds=kinds)

    def _to_payload(self) -> Any:
        return {"sites": [asdict(s) for s in self.sites],
                "controls": {k: {str(w): v for w, v in c.items()}
                             for k, c in self.controls.items()}}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "LayerSparsity":
        sites = []
        for row in data["sites"]:
            row = {k: (nan_if_none(v) if k in _FLOAT_FIELDS else v) for k, v in row.items()}
            sites.append(SiteSparsity(**row))
        controls = {k: {int(w): nan_if_none(v) for w, v in c.items()}
                    for k, c in (data.get("controls") or {}).items()}
        return cls(sites, controls, dict(settings))


@dataclass
class _Capture:
    name: str
    kind: str
    layer: int
    block: int
    module: str
    hook: str  # "input", "output" or "block_input"
    buffer: Optional[torch.Tensor] = None
    calls: int = 0


def _parse_sites(model: nn.Module, sites, func: str) -> list[_Capture]:
    requirement = (f"site kinds among {_ALL_KINDS} or site names of the model (a string, "
                   "comma-separated, or a sequence)")
    if isinstance(sites, str):
        tokens = [t.strip() for t in sites.split(",") if t.strip()]
    else:
        try:
            tokens = list(sites)
        except TypeError:
            raise fail("sites", func, requirement, sites) from None
        if not all(isinstance(t, str) for t in tokens):
            raise fail("sites", func, requirement, sites)
        tokens = [t.strip() for t in tokens if t.strip()]
    if not tokens:
        raise fail("sites", func, requirement, sites)
    layout = find_blocks(model, func=func)
    every = find_sites(model, func=func)
    captures: list[_Capture] = []
    if "embeddings" in tokens:
        captures.append(_Capture("embeddings", "embeddings", 0, -1, "", "block_input"))
    for name, site in every.items():
        if site.kind == "residual" and ("residual" in tokens or name in tokens):
            captures.append(_Capture(name, "residual", site.block + 1, site.block, site.module,
                                     "output"))
        if site.kind == "down":
            mlp_name = f"{site.block_name}.mlp_out"
            if "mlp_out" in tokens or mlp_name in tokens:
                captures.append(_Capture(mlp_name, "mlp_out", site.block + 1, site.block,
                                         site.module, "output"))
        if site.kind not in ("residual",) and (site.kind in tokens or name in tokens):
            captures.append(_Capture(name, site.kind, site.block + 1, site.block, site.module,
                                     site.hook))
    known = set(_ALL_KINDS) | set(every) | {c.name for c in captures}
    unknown = [t for t in tokens if t not in known]
    if unknown:
        raise fail("sites", func, f"{requirement}; unknown: {shown(unknown)}", sites)
    missing = [t for t in tokens if t in _ALL_KINDS and not any(c.kind == t for c in captures)]
    if missing:
        raise fail("sites", func, f"kinds this model has (none of kind {shown(missing)} found in "
                   f"its {len(layout)} blocks)", sites)
    # model order: block by block, in execution order inside a block
    order = {k: i for i, k in enumerate(_EXECUTION_ORDER)}
    captures.sort(key=lambda c: (c.layer, order[c.kind]))
    return captures


def _token_index(nsamples: int, seqlen: int, k: int, skip_first: bool, seed: int
                 ) -> torch.Tensor:
    """(sequence, position) rows of the sampled tokens, sorted; all of them when k is enough."""
    first = 1 if skip_first else 0
    per_seq = seqlen - first
    total = nsamples * per_seq
    if k >= total:
        flat = torch.arange(total)
    else:
        generator = torch.Generator().manual_seed(seed)
        flat = torch.randperm(total, generator=generator)[:k].sort().values
    return torch.stack([flat // per_seq, flat % per_seq + first], dim=1)


def layer_sparsity(model: nn.Module, tokenizer, text, *, sites=("embeddings", "residual",
                                                                 "mlp_out"),
                   nsamples: Optional[int] = None, seqlen: Optional[int] = None, seed: int = 0,
                   max_tokens: int = 16384, skip_first: bool = True, center: bool = True,
                   n_features: Optional[int] = None, steps: int = 200, batch_size: int = 512,
                   lr: float = DEFAULT_LR, lambda_ratio: float = DEFAULT_LAMBDA_RATIO,
                   dtype=torch.float32, max_atoms: Optional[int] = None,
                   controls=("gaussian",), device=None, progress: bool = False,
                   warn: bool = True) -> LayerSparsity:
    """How sparse-linear a model's activations are at every layer (see the module notes).

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face transformer (decoder-only or BERT-style encoder); left unchanged.
    tokenizer : callable
        Its tokenizer (required for text).
    text : str, os.PathLike, list of str or token-id tensor
        Calibration text by the one text rule (a ``str`` is the text, a ``pathlib.Path`` a
        file), or token ids.
    sites : str or sequence of str, default ("embeddings", "residual", "mlp_out")
        Site kinds (see the module notes) or site names.
    nsamples : int, optional
        Calibration windows; default 64 for text, every row of given token windows.
    seqlen : int, optional
        Tokens per window (default: the model's maximum positions, at most 2048).
    seed : int, default 0
        Seeds the windows, the token sample, the estimates and the controls.
    max_tokens : int, default 16384
        Tokens sampled per site (all of them when fewer are available).
    skip_first : bool, default True
        Leave out the first position of every window.
    center : bool, default True
        Subtract each site's mean activation before measuring.
    n_features : int, optional
        Dictionary size per site; default ``min(4 × width, n_tokens // 8)``: at least 8 samples
        per atom (with fewer the dictionary fits the sample itself and the normalised loss is
        biased low, see :class:`~specmetrics.sparse_coding.SampleSizeWarning`). The paper uses
        ``8 × width`` atoms; see the notes on cost in
        :func:`~specmetrics.sparse_coding.estimate_sparsity`.
    steps, batch_size, lr, lambda_ratio, dtype, max_atoms
        Of :func:`~specmetrics.sparse_coding.estimate_sparsity` (defaults 200, 512, 0.5, 0.1,
        float32, ``max(4 × width, 64)``).
    controls : sequence of str, default ("gaussian",)
        Control kinds (:data:`~specmetrics.sparse_coding.CONTROL_KINDS`) measured at every
        width with the same settings; ``()`` for none.
    device : torch.device or str, optional
        Where the blocks run and the dictionaries are learned (default: where the model is).
    progress : bool, default False
    warn : bool, default True
        Warn for every site whose estimate did not settle (``converged`` says it anyway).

    Returns
    -------
    LayerSparsity

    Examples
    --------
    >>> prof = layer_sparsity(model, tok, pathlib.Path("valid.txt"))  # doctest: +SKIP
    >>> prof.to_frame()[["layer", "kind", "normalized_loss", "control_gaussian"]]  # doctest: +SKIP
    """
    from tqdm.auto import tqdm

    func = "layer_sparsity"
    if not isinstance(model, nn.Module):
        raise fail("model", func, "a torch.nn.Module", type(model).__name__)
    from .._validation import check_not_meta

    check_not_meta(model, name="model", func=func)
    captures = _parse_sites(model, sites, func)
    if nsamples is None:
        windows = isinstance(text, torch.Tensor) and text.ndim == 2 or \
            isinstance(text, CalibrationSet)
        nsamples = None if windows else DEFAULT_NSAMPLES
    else:
        nsamples = check_positive_int(nsamples, name="nsamples", func=func)
    if seqlen is not None:
        seqlen = check_positive_int(seqlen, name="seqlen", func=func, minimum=2)
    seed = check_seed(seed, func=func)
    max_tokens = check_positive_int(max_tokens, name="max_tokens", func=func, minimum=2)
    skip_first = check_bool(skip_first, name="skip_first", func=func)
    center = check_bool(center, name="center", func=func)
    if isinstance(controls, str):
        controls = [c.strip() for c in controls.split(",") if c.strip()]
    try:
        controls = list(controls)
    except TypeError:
        raise fail("controls", func, f"a sequence of control kinds among {CONTROL_KINDS}",
                   controls) from None
    if any(c not in CONTROL_KINDS for c in controls) or len(set(controls)) != len(controls):
        raise fail("controls", func, f"distinct control kinds among {CONTROL_KINDS}",
                   controls)
    progress = check_bool(progress, name="progress", func=func)
    # every estimation option, checked with a placeholder width before any forward pass
    probe = _check_estimate_options(
        func, n_features=n_features, d=2, n=2, seed=seed, device=device, steps=steps,
        batch_size=batch_size, lr=lr, lambda_ratio=lambda_ratio, center=center, dtype=dtype,
        max_atoms=max_atoms, step_tol=1e-2, tol=0.02, eval_samples=None, progress=False,
        warn=warn)
    calib = calibration_set(model, text, tokenizer=tokenizer, nsamples=nsamples, seqlen=seqlen,
                            seed=seed, func=func)
    if calib.seqlen - (1 if skip_first else 0) < 1:
        raise fail("seqlen", func, "at least 2 with skip_first=True", calib.seqlen)
    token_index = _token_index(calib.nsamples, calib.seqlen, max_tokens, skip_first, seed)
    n_tokens = int(token_index.shape[0])
    rows_of: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
    for seq in torch.unique(token_index[:, 0]).tolist():
        rows = torch.nonzero(token_index[:, 0] == seq).flatten()
        rows_of[int(seq)] = (rows, token_index[rows, 1])

    if n_features is not None and warn and n_tokens < MIN_SAMPLES_PER_ATOM * probe["m"]:
        warnings.warn(f"layer_sparsity: {n_tokens} tokens per site for n_features="
                      f"{probe['m']} atoms ({n_tokens / probe['m']:.1f} per atom); with fewer "
                      f"than {MIN_SAMPLES_PER_ATOM} per atom the normalised loss is biased low",
                      SampleSizeWarning, stacklevel=2)

    def options_for(width: int) -> dict:
        m = max(1, min(4 * width, n_tokens // SAMPLES_PER_ATOM)) if n_features is None \
            else probe["m"]
        cap = default_max_atoms(width, m) if max_atoms is None else probe["max_atoms"]
        return {**probe, "m": m, "max_atoms": cap, "progress": False}

    def take(capture: _Capture, x: torch.Tensor, seq: int) -> None:
        picked = rows_of.get(seq)
        rows = x.detach().reshape(-1, x.shape[-1])
        if capture.buffer is None:
            capture.buffer = torch.zeros((n_tokens, rows.shape[-1]), dtype=torch.float32)
        if picked is not None:
            buffer_rows, positions = picked
            capture.buffer[buffer_rows] = rows[positions.to(rows.device)].to("cpu",
                                                                              torch.float32)
        capture.calls += 1

    results: dict[str, SiteSparsity] = {}

    def finish(capture: _Capture) -> None:
        if capture.calls != calib.nsamples or capture.buffer is None:
            raise RuntimeError(f"site {capture.name!r} ({capture.module or 'block input'}) was "
                               f"seen {capture.calls} times for {calib.nsamples} calibration "
                               "sequences")
        data = capture.buffer
        capture.buffer = None
        width = int(data.shape[1])
        if not bool(torch.isfinite(data).all()):
            raise RuntimeError(f"site {capture.name!r}: non-finite activations")
        spread = data.to(torch.float64)
        if center:
            spread = spread - spread.mean(dim=0, keepdim=True)
        if not float(spread.abs().max()) > 0:  # nothing to code: report, do not stop the pass
            message = "every sampled activation is the same; nothing to measure"
            if warn:
                warnings.warn(f"layer_sparsity: {capture.name}: {message}", ConvergenceWarning,
                              stacklevel=3)
            nan = math.nan
            results[capture.name] = SiteSparsity(
                name=capture.name, kind=capture.kind, layer=capture.layer, block=capture.block,
                module=capture.module, width=width, n_tokens=n_tokens,
                n_features=options_for(width)["m"], n0=nan, loss=nan, s1=nan,
                normalized_loss=nan, normalized_loss_se=nan, lam=nan, relative_mse=nan,
                a_estimate=nan, converged=False, message=message)
            return
        est = _estimate(data, {**options_for(width), "seed": seed, "warn": False}, func=func)
        if warn and not est.converged:
            warnings.warn(f"layer_sparsity: the estimate at {capture.name} did not settle: "
                          f"{est.message}", ConvergenceWarning, stacklevel=3)
        m = est.metrics
        results[capture.name] = SiteSparsity(
            name=capture.name, kind=capture.kind, layer=capture.layer, block=capture.block,
            module=capture.module, width=width, n_tokens=n_tokens,
            n_features=est.settings["n_features"], n0=m.n0, loss=m.loss,
            s1=m.s1, normalized_loss=m.normalized_loss,
            normalized_loss_se=m.normalized_loss_se, lam=m.lam, relative_mse=m.relative_mse,
            a_estimate=est.a_estimate, converged=est.converged, message=est.message)

    layout = find_blocks(model, func=func)
    by_block: dict[int, list[_Capture]] = {}
    for c in captures:
        by_block.setdefault(c.block, []).append(c)
    last = max(by_block)
    runner = SequentialRunner(model, layout, calib.input_ids, device=probe["device"],
                              make_stat=None, progress=False, desc=func)
    handles: list = []
    pending: list[_Capture] = []
    bar = tqdm(total=len(captures), desc=func, unit="site", disable=not progress)

    def make_hook(capture: _Capture):
        counter = iter(range(1 << 62))

        def hook(_module, args, kwargs, output):
            if capture.hook == "output":
                x = output_tensor(output)
            elif args and isinstance(args[0], torch.Tensor):
                x = args[0]
            else:
                x = next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            take(capture, x, next(counter))
        return hook

    def clear():
        for h in handles:
            h.remove()
        handles.clear()

    def flush():
        while pending:
            finish(pending.pop(0))
            bar.update(1)

    steps_iter = iter(runner)
    try:
        for step in steps_iter:
            clear()  # the previous block has been re-run with its hooks by now
            flush()
            if step.index == 0:
                for c in by_block.get(-1, ()):
                    for seq in range(calib.nsamples):
                        take(c, step.inputs[seq], seq)
                    pending.append(c)
                flush()
            if step.index > last:
                break
            for c in by_block.get(step.index, ()):
                module = model.get_submodule(c.module)
                handles.append(module.register_forward_hook(make_hook(c), with_kwargs=True))
                pending.append(c)
        else:
            clear()
        flush()
    finally:
        clear()
        steps_iter.close()
        bar.close()

    control_values: dict[str, dict[int, float]] = {}
    widths = sorted({s.width for s in results.values()})
    for kind in controls:
        control_values[kind] = {}
        for width in widths:
            data = make_control(kind, width, n_tokens, seed=seed).data
            est = _estimate(data, {**options_for(width), "seed": seed, "warn": False},
                            func=func)
            control_values[kind][width] = est.normalized_loss
    settings = {**calib.settings(), "sites": [c.name for c in captures],
                "max_tokens": max_tokens, "n_tokens": n_tokens, "skip_first": skip_first,
                "center": center, "n_features": n_features, "steps": probe["steps"],
                "batch_size": probe["batch_size"], "lr": probe["lr"],
                "lambda_ratio": probe["kappa"],
                "dtype": str(probe["dtype"]).replace("torch.", ""), "max_atoms": max_atoms,
                "controls": list(controls)}
    ordered = [results[c.name] for c in captures]
    return LayerSparsity(ordered, control_values, settings)
