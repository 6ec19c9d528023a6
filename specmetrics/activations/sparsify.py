"""Activation-sparse inference: zero small activations at chosen sites while the model runs.

:func:`sparsify_activations` installs, for every site of a threshold mapping, the computation
that zeroes the site's entries with ``|x| <= t``, and returns a :class:`SparsifyHandle` that
counts the sparsity actually realised and removes everything again (``.remove()`` or leaving a
``with`` block)::

    with sparsify_activations(model, thresholds) as handle:
        ppl = perplexity(model, tokenizer, text, seqlen=256)
    handle.realised()            # {site name: fraction of zeros that reached the consumers}

What is thresholded where (the torch reference, :class:`TorchThreshold`)
------------------------------------------------------------------------
- TEAL sites (``qkv``, ``o``, ``gate_up``, ``down``: inputs of Linear layers): a forward
  pre-hook on each *consuming* Linear replaces its input ``x`` by ``x`` with ``|x| <= t`` zeroed.
  The ``qkv`` site has one threshold for the one tensor that q, k and v (GQA included) all read;
  ``gate_up`` likewise for gate and up. The consumers of a site are found by
  :func:`site_consumers`. The shared input is thresholded once per forward call (the three
  pre-hooks of q/k/v see the same tensor object and reuse the result), and counted once.
- CATS site (``silu_gate``, the output of the MLP activation module ``mlp.act_fn``): a forward
  hook zeroes the activation's outputs with ``|a| <= t``, so ``act(gate(x)) * up(x)`` has
  exactly those channels at zero and the down projection receives zeros there (a kernel skips
  those rows of up and columns of down). For ungated MLPs without an activation module the
  ``silu_gate`` site is the down projection's input and is thresholded by a pre-hook.

The reference path computes the dense products on the zeroed inputs: it reproduces the
*numerics* of activation-sparse inference exactly, not its speed.

Extension point: plugging in kernels
------------------------------------
How a site is computed is delegated to an *applier* object, chosen per site kind through the
``appliers`` argument (default: one :class:`TorchThreshold` for every kind). An applier has one
method::

    install(model, site, threshold, counter) -> list of handles (objects with .remove())

It must make every later forward pass compute the site's consumers on the input thresholded at
``threshold`` (``|x| <= t`` zeroed) and report what it zeroed with
``counter.add(n_zero, n_total)`` (tensors or ints). :class:`TorchThreshold` does this with
hooks; a Triton applier (a later issue: split-K sparse GEMV that skips the weight rows of zero
inputs, or a fused CATS MLP) would instead replace the consumers' ``forward`` on the instance
(see :func:`replace_forward`, which returns a removable handle) and count from the kernel's
mask. Everything else (site resolution, validation, counting, removal, the perplexity sweep)
stays the same.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any, Callable, Optional, Protocol

import torch
from torch import nn

from .._validation import fail
from ..calibration.text import model_tokenizer_text
from ..models.naming import module_type
from .sites import Site, find_sites

__all__ = ["sparsify_activations", "SparsifyHandle", "SiteApplier", "TorchThreshold",
           "SparsityCounter", "site_consumers", "replace_forward", "apply_threshold",
           "SPARSIFIABLE_KINDS", "sequential_thresholds"]

logger = logging.getLogger(__name__)

#: Site kinds that can be thresholded at inference (``residual`` cannot: it is no layer's input
#: alone, it is carried to the next block and to the norms).
SPARSIFIABLE_KINDS: tuple[str, ...] = ("qkv", "o", "gate_up", "silu_gate", "down")

# module types that read the same input as the site's hooked module (same parent module)
_SHARED_INPUT_TYPES: dict[str, frozenset] = {
    "qkv": frozenset({"q", "k", "v", "qkv"}),
    "gate_up": frozenset({"gate", "up", "gate_up"}),
}


# ----------------------------------------------------------------------------------------------
# the pure operation

def apply_threshold(x: torch.Tensor, threshold: float) -> torch.Tensor:
    """``x`` with the entries ``|x| <= threshold`` set to zero (a new tensor; ``x`` is unchanged).

    Parameters
    ----------
    x : torch.Tensor
        Any shape and floating dtype; the comparison is done in ``x``'s dtype.
    threshold : float
        ``>= 0``. At ``0`` only exact zeros are "zeroed" (the values are unchanged).

    Returns
    -------
    torch.Tensor
        Same shape, dtype and device as ``x``.
    """
    return x.masked_fill(x.abs() <= threshold, 0)


# ----------------------------------------------------------------------------------------------
# counting

class SparsityCounter:
    """Running count of zeros among the values that reached a site's consumers.

    ``add`` accepts tensors (kept on their device, no synchronisation) or ints; the fraction is
    read with :attr:`fraction` (NaN before anything passed).
    """

    __slots__ = ("_zeros", "_total")

    def __init__(self) -> None:
        self._zeros: Any = 0
        self._total: int = 0

    def add(self, zeros, total: int) -> None:
        if isinstance(zeros, torch.Tensor):
            zeros = zeros.detach().to(torch.int64)
        self._zeros = self._zeros + zeros
        self._total += int(total)

    def add_tensor(self, x: torch.Tensor) -> None:
        """Count the exact zeros of a (thresholded) tensor."""
        self.add((x == 0).sum(), x.numel())

    def reset(self) -> None:
        self._zeros, self._total = 0, 0

    @property
    def zeros(self) -> int:
        return int(self._zeros)

    @property
    def total(self) -> int:
        return self._total

    @property
    def fraction(self) -> float:
        return self.zeros / self._total if self._total else math.nan


# ----------------------------------------------------------------------------------------------
# appliers (the extension point)

class SiteApplier(Protocol):
    """How one site is computed under a threshold (see the module notes)."""

    def install(self, model: nn.Module, site: Site, threshold: float,
                counter: SparsityCounter) -> list:
        """Install the computation; return handles with ``.remove()`` that undo it."""
        ...


class _ForwardHandle:
    """Undo :func:`replace_forward`."""

    def __init__(self, module: nn.Module, previous: Optional[Callable]):
        self.module = module
        self.previous = previous
        self.removed = False

    def remove(self) -> None:
        if self.removed:
            return
        if self.previous is None:
            self.module.__dict__.pop("forward", None)
        else:
            self.module.forward = self.previous
        self.removed = True


def replace_forward(module: nn.Module, forward: Callable) -> _ForwardHandle:
    """Replace ``module.forward`` on the instance (hooks still run); the handle restores it.

    For kernel appliers: ``forward(*args, **kwargs)`` receives what the module would have
    received (after forward pre-hooks).
    """
    previous = module.__dict__.get("forward")
    module.forward = forward
    return _ForwardHandle(module, previous)


class TorchThreshold:
    """The torch reference applier: zero ``|x| <= t`` with hooks, then run the dense modules.

    Parameters
    ----------
    mask_fn : callable, optional
        ``mask_fn(x, t) -> tensor`` computing the thresholded tensor (default
        :func:`apply_threshold`).
    count : bool, default True
        Count the realised sparsity (one ``(x == 0).sum()`` per thresholded tensor).
    """

    def __init__(self, mask_fn: Optional[Callable[[torch.Tensor, float], torch.Tensor]] = None,
                 *, count: bool = True):
        self.mask_fn = mask_fn or apply_threshold
        self.count = count

    def __repr__(self) -> str:
        return "TorchThreshold()"

    def install(self, model: nn.Module, site: Site, threshold: float,
                counter: SparsityCounter) -> list:
        mask_fn, count = self.mask_fn, self.count
        if site.hook == "output":
            def output_hook(_module, _args, output):
                if isinstance(output, torch.Tensor):
                    y = mask_fn(output, threshold)
                    if count:
                        counter.add_tensor(y)
                    return y
                if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
                    y = mask_fn(output[0], threshold)
                    if count:
                        counter.add_tensor(y)
                    return (y,) + tuple(output[1:])
                raise RuntimeError(f"site {site.name!r}: module {site.module!r} returned "
                                   f"{type(output).__name__}, not a tensor")

            return [model.get_submodule(site.module).register_forward_hook(output_hook)]

        # input sites: one pre-hook per consumer; the consumers of a shared input see the very
        # same tensor object, thresholded once (and counted once) per forward call
        cache: dict[str, Any] = {"in": None, "out": None}

        def pre_hook(_module, args, kwargs):
            if args:
                x, rest, key = args[0], args[1:], None
            elif "input" in kwargs:
                x, rest, key = kwargs["input"], (), "input"
            else:
                raise RuntimeError(f"site {site.name!r}: a consumer was called without an input")
            if x is cache["in"]:
                y = cache["out"]
            else:
                y = mask_fn(x, threshold)
                if count:
                    counter.add_tensor(y)
                cache["in"], cache["out"] = x, y
            if key is None:
                return (y,) + tuple(rest), kwargs
            return args, {**kwargs, key: y}

        handles = [m.register_forward_pre_hook(pre_hook, with_kwargs=True)
                   for m in site_consumers(model, site).values()]
        handles.append(_CacheClear(cache))
        return handles


class _CacheClear:
    """Drops the references a :class:`TorchThreshold` input cache holds, on removal."""

    def __init__(self, cache: dict):
        self.cache = cache

    def remove(self) -> None:
        self.cache["in"] = self.cache["out"] = None


# ----------------------------------------------------------------------------------------------
# site resolution

def site_consumers(model: nn.Module, site: Site) -> dict[str, nn.Module]:
    """The modules whose input is the site's tensor (for ``hook="input"`` sites).

    ``qkv``: the q, k and v projections (or the fused ``c_attn`` / ``query_key_value``) next to
    the site's module; ``gate_up``: gate and up (or the one up projection of an ungated MLP);
    ``o``, ``down`` and an input ``silu_gate`` site: the site's module. For ``hook="output"``
    sites (``silu_gate`` on ``act_fn``): the activation module itself, whose output is
    thresholded.

    Returns
    -------
    dict of str to nn.Module
        ``{qualified name: module}`` in model order.
    """
    primary = model.get_submodule(site.module)
    if site.hook == "output" or site.kind not in _SHARED_INPUT_TYPES:
        return {site.module: primary}
    parent_name = site.module.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    types = _SHARED_INPUT_TYPES[site.kind]
    found: dict[str, nn.Module] = {}
    for child_name, child in parent.named_children():
        name = f"{parent_name}.{child_name}" if parent_name else child_name
        if child is primary or (module_type(name) in types
                                and getattr(child, "weight", None) is not None
                                and child.weight.ndim == 2):
            found[name] = child
    return found


def _resolve(model: nn.Module, thresholds, func: str) -> tuple[dict[str, Site], dict[str, float]]:
    if not isinstance(thresholds, Mapping):
        raise fail("thresholds", func, "a mapping of site name to threshold (e.g. an "
                   "ActivationThresholds)", type(thresholds).__name__)
    given_sites = getattr(thresholds, "sites", None)
    model_sites: Optional[dict[str, Site]] = None
    sites: dict[str, Site] = {}
    values: dict[str, float] = {}
    for name, t in thresholds.items():
        site = given_sites.get(name) if isinstance(given_sites, Mapping) else None
        if site is None:
            if model_sites is None:
                model_sites = find_sites(model, func=func)
            site = model_sites.get(name)
        if site is None:
            raise fail("thresholds", func, "keyed by site names of the model (see find_sites)",
                       name)
        if site.kind not in SPARSIFIABLE_KINDS:
            raise fail("thresholds", func, f"keyed by sites of kinds {SPARSIFIABLE_KINDS}",
                       f"{name} (kind {site.kind!r})")
        try:
            model.get_submodule(site.module)
        except AttributeError:
            raise fail("thresholds", func, "keyed by sites of this model", name) from None
        try:
            value = float(t)
        except (TypeError, ValueError):
            raise fail("thresholds", func, "a mapping to finite thresholds >= 0",
                       f"{name}: {t!r}") from None
        if not math.isfinite(value) or value < 0:
            raise fail("thresholds", func, "a mapping to finite thresholds >= 0",
                       f"{name}: {t!r}")
        sites[name] = site
        values[name] = value
    return sites, values


# ----------------------------------------------------------------------------------------------
# the handle and the entry point

class SparsifyHandle:
    """Thresholds installed on a model; counts realised sparsity; removes them again.

    Use as a context manager (removal on exit) or call :meth:`remove`. Created by
    :func:`sparsify_activations`.

    Attributes
    ----------
    thresholds : dict of str to float
    sites : dict of str to Site
    appliers : dict of str to SiteApplier
        The applier used for each site.
    """

    def __init__(self, model: nn.Module, sites: dict[str, Site], thresholds: dict[str, float],
                 appliers: dict[str, Any]):
        self.model = model
        self.sites = dict(sites)
        self.thresholds = dict(thresholds)
        self.appliers = dict(appliers)
        self._counters = {name: SparsityCounter() for name in self.sites}
        self._handles: list = []
        self._removed = False
        try:
            for name, site in self.sites.items():
                self._handles.extend(self.appliers[name].install(
                    model, site, self.thresholds[name], self._counters[name]))
        except BaseException:
            self.remove()
            raise

    # -- lifetime ------------------------------------------------------------------------------
    @property
    def active(self) -> bool:
        """Whether the thresholds are still installed."""
        return not self._removed

    def remove(self) -> None:
        """Remove every hook (idempotent); the model computes densely again."""
        for handle in reversed(self._handles):
            handle.remove()
        self._handles.clear()
        self._removed = True

    def __enter__(self) -> "SparsifyHandle":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if self.active else "removed"
        return f"SparsifyHandle(n_sites={len(self.sites)}, {state})"

    # -- counts ----------------------------------------------------------------------------------
    def realised(self) -> dict[str, float]:
        """Fraction of exact zeros among the values that passed each site since the last reset.

        NaN for a site nothing passed through.
        """
        return {name: c.fraction for name, c in self._counters.items()}

    def counts(self) -> dict[str, tuple[int, int]]:
        """``{site: (zeros, values)}`` since the last reset."""
        return {name: (c.zeros, c.total) for name, c in self._counters.items()}

    def reset(self) -> None:
        """Zero the counts."""
        for c in self._counters.values():
            c.reset()


def sparsify_activations(model: nn.Module, thresholds, *,
                         appliers: Optional[Mapping[str, SiteApplier]] = None,
                         backend: Optional[str] = None) -> SparsifyHandle:
    """Threshold activations at inference: zero ``|x| <= t`` at each site of ``thresholds``.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face transformer (the sites of :func:`~specmetrics.activations.find_sites`).
        Its weights are not changed; hooks are added until the handle is removed.
    thresholds : ActivationThresholds or mapping of str to float
        ``{site name: t}`` with finite ``t >= 0``, e.g. from
        :func:`~specmetrics.activations.activation_thresholds` (TEAL style: ``qkv``, ``o``,
        ``gate_up``, ``down`` sites; CATS style: ``silu_gate`` sites) or any mapping over the
        sites of kinds :data:`SPARSIFIABLE_KINDS`. Styles can be mixed.
    appliers : mapping of str to SiteApplier, optional
        Per site kind, the object that installs the computation (default: one
        :class:`TorchThreshold` for all kinds). The extension point for kernels.
    backend : {None, "torch", "triton"}, default None
        The applier of the site kinds ``appliers`` does not name: ``"torch"``:
        :class:`TorchThreshold` (hooks, dense products); ``"triton"``:
        :class:`~specmetrics.activations.triton_backend.TritonSparse` (the
        :mod:`specmetrics.kernels` sparse GEMV and CATS MLP); ``None``: Triton when the model is
        on a CUDA device and ``triton`` is installed, the torch reference otherwise.

    Returns
    -------
    SparsifyHandle
        Installed already; a context manager; ``.realised()`` gives the per-site sparsity
        realised since installation (or the last ``.reset()``).

    Raises
    ------
    ParameterError
        For a site name the model does not have, a ``residual`` site, a threshold that is
        negative or not finite, or a backend other than None, "torch" and "triton"
        (``"triton"`` on a CPU model also needs ``TRITON_INTERPRET=1``).
    ImportError
        ``backend="triton"`` where ``triton`` is not installed.

    Examples
    --------
    >>> thr = activation_thresholds(stats, 0.5, style="cats")          # doctest: +SKIP
    >>> with sparsify_activations(model, thr) as handle:                # doctest: +SKIP
    ...     model(input_ids)
    >>> handle.realised()["model.layers.0.silu_gate"]                  # doctest: +SKIP
    0.503
    """
    func = "sparsify_activations"
    if not isinstance(model, nn.Module):
        raise fail("model", func, "a torch.nn.Module", type(model).__name__)
    from .._validation import check_choice

    backend = check_choice(backend, (None, "torch", "triton"), name="backend", func=func)
    sites, values = _resolve(model, thresholds, func)
    if backend == "torch":
        default = TorchThreshold()
    else:
        from .triton_backend import default_applier

        default = default_applier(model, backend, func)
    chosen: dict[str, Any] = {}
    given = dict(appliers or {})
    unknown = [k for k in given if k not in SPARSIFIABLE_KINDS]
    if unknown:
        raise fail("appliers", func, f"a mapping keyed by site kinds among {SPARSIFIABLE_KINDS}",
                   unknown)
    for kind, applier in given.items():
        if not callable(getattr(applier, "install", None)):
            raise fail("appliers", func, "a mapping of kind to objects with an install() method",
                       f"{kind}: {type(applier).__name__}")
    # one module object must not carry two sites' computations (e.g. an activation module
    # instance shared by every block, or silu_gate and down on the same input of an ungated MLP)
    owner: dict[int, str] = {}
    for name, site in sites.items():
        targets = (site_consumers(model, site) if site.hook == "input"
                   else {site.module: model.get_submodule(site.module)})
        for module_name, module in targets.items():
            key = id(module)
            if key in owner and owner[key] != name:
                raise fail("thresholds", func, "sites whose thresholded modules are distinct "
                           f"({module_name!r} serves both {owner[key]!r} and {name!r})",
                           sorted(sites)[:4])
            owner[key] = name
        chosen[name] = given.get(site.kind, default)
    logger.debug("sparsify_activations: %d sites", len(sites))
    return SparsifyHandle(model, sites, values, chosen)


# ----------------------------------------------------------------------------------------------
# fitting thresholds on the activations they will see

@model_tokenizer_text(old=("calibration", "target"), new=("calibration", "target"))
def sequential_thresholds(model: nn.Module, tokenizer, calibration, target, *,
                          style: str = "teal", nsamples: int = 32, seqlen: Optional[int] = None,
                          seed: int = 0, device=None, progress: bool = False):
    """Thresholds fitted site by site on the activations of the *already sparsified* model.

    Thresholds fitted on the dense model's statistics
    (:func:`~specmetrics.activations.activation_thresholds`) realise their target only at the
    first site they are applied to: zeroing the q/k/v input changes the attention output, so the
    ``o`` input then has more small values than in the dense model and a dense-fitted threshold
    zeroes more than its target (4-7 points at 50 %, 12-16 at 65 % on ``tiny-llama-wt``), and
    so on down the block and down the model. Here the sites are fitted in execution order, as
    layer-sequential pruning does: block by block, the block's inputs are the outputs of the
    previous blocks *with their thresholds installed*, and inside a block each site's ``|x|``
    quantile is read with the thresholds of the sites before it installed. Each threshold
    therefore zeroes its target fraction of the values it will see at inference (up to the
    calibration/held-out difference).

    Parameters
    ----------
    model : nn.Module
        A Hugging Face transformer; left unchanged (hooks are removed before returning).
    tokenizer : callable or None
        Required for text.
    calibration : str, pathlib.Path, list of str, torch.Tensor or CalibrationSet
        The one text rule, as for :func:`~specmetrics.calibration.load_calibration`.
    target : float or mapping of str to float
        One sparsity in [0, 1) for every site of the style, or ``{site name: sparsity}``
        (e.g. from :func:`~specmetrics.activations.greedy.teal_greedy_targets`).
    style : {"teal", "cats"}, default "teal"
        The sites: ``qkv``, ``o``, ``gate_up``, ``down`` (TEAL) or ``silu_gate`` (CATS).
    nsamples : int, default 32
    seqlen : int, optional
        Default: the model's maximum positions, at most 2048.
    seed : int, default 0
    device : torch.device or str, optional
        Where each block runs (default: where its parameters are).
    progress : bool, default False

    Returns
    -------
    ActivationThresholds
        ``settings["fit"] == "sequential"``; each threshold is the exact ``s``-quantile of
        ``|x|`` over all calibration values of its site (:func:`abs_threshold`).

    Notes
    -----
    Memory: the values of one site at a time are kept (on the CPU, float32):
    ``nsamples * seqlen * width * 4`` bytes, e.g. 22 MB for ``tiny-llama-wt`` (32 × 256 × 688),
    2.9 GB for a 7B ``silu_gate`` site at 32 × 2048.
    """
    from ..calibration.windows import calibration_set
    from ..models.blocks import block_device, find_blocks
    from ..calibration.runner import capture_block_inputs, move_to, output_tensor
    from .._validation import check_choice, check_interval
    from .sites import SITE_KINDS
    from .thresholds import STYLES, ActivationThresholds, abs_threshold

    func = "sequential_thresholds"
    check_choice(style, tuple(STYLES), name="style", func=func)
    kinds = STYLES[style]
    eligible = find_sites(model, sites=kinds, func=func)
    if isinstance(target, Mapping):
        targets = {}
        for name, value in target.items():
            if name not in eligible:
                raise fail("target", func, f"a mapping over site names of kinds {kinds} of the "
                           "model", name)
            targets[name] = check_interval(value, 0.0, 1.0, name="target", func=func)
    else:
        value = check_interval(target, 0.0, 1.0, name="target", func=func)
        targets = {n: value for n in eligible}
    calib = calibration_set(model, calibration, tokenizer=tokenizer, nsamples=nsamples,
                             seqlen=seqlen, seed=seed, func=func)
    layout = find_blocks(model, func=func)
    by_block: dict[int, list[Site]] = {}
    for name in targets:
        by_block.setdefault(eligible[name].block, []).append(eligible[name])
    for sites in by_block.values():
        sites.sort(key=lambda s: SITE_KINDS.index(s.kind))
    last = max(by_block) if by_block else -1
    thresholds: dict[str, float] = {}

    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            where = torch.device(device) if device is not None else None
            captured = capture_block_inputs(model, layout, calib.input_ids, device=where)
            hidden = captured.inputs
            for index in tqdm(range(last + 1), desc=func, unit="block", disable=not progress):
                block = layout.blocks[index]
                home = block_device(block)
                run_on = where or home or hidden.device
                moved = home if (where is not None and home is not None and home != where) \
                    else None
                if moved is not None:
                    block.to(where)
                hidden = hidden.to(run_on)
                args = move_to(captured.args[index], run_on)
                kwargs = move_to(captured.kwargs[index], run_on)

                def run_block():
                    outs = []
                    for i in range(hidden.shape[0]):
                        outs.append(output_tensor(block(hidden[i:i + 1], *args, **kwargs)))
                    return torch.cat(outs, dim=0)

                try:
                    installed: dict[str, float] = {}
                    for site in by_block.get(index, ()):
                        seen: list[torch.Tensor] = []

                        def reader(_module, hargs, _output, site=site, seen=seen):
                            x = output_tensor(_output) if site.hook == "output" else hargs[0]
                            seen.append(x.detach().reshape(-1).to("cpu", torch.float32))

                        module = model.get_submodule(site.module)
                        handle = module.register_forward_hook(reader)
                        try:
                            with sparsify_activations(model, _Thresholds(installed, eligible),
                                                      appliers=_NO_COUNT):
                                run_block()
                        finally:
                            handle.remove()
                        s = targets[site.name]
                        values = torch.cat(seen)
                        seen.clear()
                        thresholds[site.name] = abs_threshold(values, s) if s > 0 else 0.0
                        del values
                        installed[site.name] = thresholds[site.name]
                    with sparsify_activations(model, _Thresholds(installed, eligible),
                                              appliers=_NO_COUNT):
                        hidden = run_block()
                finally:
                    if moved is not None:
                        block.to(moved)
    finally:
        model.train(was_training)
    return ActivationThresholds(thresholds=thresholds, targets=targets, style=style,
                                sites={n: eligible[n] for n in targets},
                                settings={"definition": "abs", "fit": "sequential",
                                          **calib.settings()})


class _Thresholds(dict):
    """A plain threshold mapping that carries its sites (skips the model-wide site search)."""

    def __init__(self, values: Mapping[str, float], sites: Mapping[str, Site]):
        super().__init__(values)
        self.sites = {n: sites[n] for n in values}


_NO_COUNT = {kind: TorchThreshold(count=False) for kind in SPARSIFIABLE_KINDS}
