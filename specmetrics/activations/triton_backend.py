"""Kernel-backed site appliers for :func:`~specmetrics.activations.sparsify_activations`.

:class:`TritonSparse` computes each site with :mod:`specmetrics.kernels` instead of hooks and
dense products (``sparsify_activations(model, thr, backend="triton")``):

- TEAL sites (``qkv``, ``o``, ``gate_up``, ``down``) and the ``silu_gate`` site of an ungated
  MLP (whose activation output *is* the down projection's input): every consuming ``nn.Linear``
  (or transformers ``Conv1D``) gets a ``forward`` that calls
  :func:`~specmetrics.kernels.sparse_gemv` on its input at the site's threshold (plus the
  bias). The kernel reads only the weight columns of the kept inputs.
- The CATS ``silu_gate`` site of a gated SiLU MLP (LLaMA, Mistral, Qwen2: ``down(SiLU(gate x) *
  up x)``): the MLP module's ``forward`` becomes :func:`~specmetrics.kernels.sparse_mlp` (dense
  gate, then up and down over the kept channels only).

Weights whose kernel layout differs from their stored one (``nn.Linear`` weights read by the
GEMV: the down projection of the MLP and every TEAL consumer) are re-stored K-major in place
(:func:`~specmetrics.kernels.prepare_weight`: same values, same logical shape, one transient
copy per matrix) and stored back row-major on removal, so the model keeps one copy of its
weights. The realised sparsity is counted as the reference counts it: the zeros among the
values that reached the consumers, once per forward call for a shared input (from the inputs
for TEAL sites; from the kernel's intermediate ``h`` for the fused MLP).

Rows above ``max_rows`` (a prefill) run the dense product of the masked input, as the kernels'
Triton backend does; outputs agree with :class:`~specmetrics.activations.sparsify.TorchThreshold`
up to float32 summation order (see ``tests/activations/test_triton_backend.py``).

This module imports :mod:`specmetrics.kernels` (torch only; ``triton`` at first use).
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch
from torch import nn

from .._validation import check_bool, check_int, fail
from ..exceptions import SpecmetricsWarning, UnsupportedModelError
from ..models.naming import module_type
from .sites import Site, find_sites
from .sparsify import SparsityCounter, TorchThreshold, replace_forward, site_consumers

__all__ = ["TritonSparse", "default_applier", "resolve_model_backend"]

_MARK = "_specmetrics_kernel"
_SILU_NAMES = frozenset({"SiLU", "SiLUActivation", "SwiGLUActivation"})


def _model_device(model: nn.Module) -> Optional[torch.device]:
    for p in model.parameters():
        return p.device
    return None


def resolve_model_backend(model: nn.Module, backend: Optional[str], func: str) -> str:
    """``"torch"`` or ``"triton"`` for a model (``backend`` already checked).

    ``None``: Triton when the model's parameters are on a CUDA device and ``triton`` is
    installed (a warning when it is not), the torch reference otherwise.
    """
    from specmetrics.kernels import resolve_backend

    device = _model_device(model) or torch.device("cpu")
    return resolve_backend(backend, device, func)


def default_applier(model: nn.Module, backend: Optional[str], func: str):
    """The applier ``sparsify_activations`` uses for ``backend`` (checked) on ``model``.

    ``"triton"``: :class:`TritonSparse`, which refuses sites it cannot compute. ``None`` on a
    CUDA model: :class:`TritonSparse` that hands such sites to :class:`TorchThreshold` with a
    warning (automatic choice: the kernels where they apply).
    """
    if resolve_model_backend(model, backend, func) == "torch":
        return TorchThreshold()
    return TritonSparse(fallback=TorchThreshold() if backend is None else None)


class _Relayout:
    """Store a parameter K-major while installed; store it row-major again on removal."""

    def __init__(self, param: torch.Tensor):
        from specmetrics.kernels import is_prepared, prepare_weight

        self.param = param
        self.changed = not is_prepared(param.data)
        if self.changed:
            param.data = prepare_weight(param.data)

    def remove(self) -> None:
        if self.changed:
            self.param.data = self.param.data.contiguous()
            self.changed = False


class _ClearCache:
    def __init__(self, cache: dict):
        self.cache = cache

    def remove(self) -> None:
        self.cache.clear()


def _is_conv1d(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and hasattr(module, "nf")


def _is_silu(module: nn.Module) -> bool:
    return isinstance(module, nn.SiLU) or type(module).__name__ in _SILU_NAMES


def _check_weight(module: nn.Module, name: str, site: Site) -> torch.Tensor:
    from specmetrics.kernels import FLOAT_DTYPES

    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise UnsupportedModelError(f"backend='triton': {name!r} (site {site.name!r}) is a "
                                    f"{type(module).__name__} without a 2-D weight; use "
                                    "backend='torch'")
    if weight.is_meta:
        raise fail("model", "sparsify_activations", "a model whose weights hold data (not on "
                   "the 'meta' device)", f"meta weight {name}.weight")
    if weight.dtype not in FLOAT_DTYPES:
        raise UnsupportedModelError(f"backend='triton': {name}.weight has dtype {weight.dtype}; "
                                    "the kernels take float16, bfloat16 or float32")
    return weight


def _kernel_owned(module: nn.Module) -> bool:
    forward = module.__dict__.get("forward")
    return forward is not None and getattr(forward, _MARK, False)


class TritonSparse:
    """Site applier running :mod:`specmetrics.kernels` (see the module notes).

    Parameters
    ----------
    count : bool, default True
        Count the realised sparsity (one small reduction per thresholded tensor).
    max_rows : int, optional
        Rows (tokens) up to which the sparse kernels run; above, the dense product of the masked
        input. Default :data:`specmetrics.kernels.DENSE_FALLBACK_ROWS`.
    relayout : bool, default True
        Store the GEMV-read weights K-major while installed (the kernel's coalesced layout);
        ``False`` leaves them as they are (same values, slow strided reads).
    fallback : SiteApplier, optional
        Installs the sites the kernels cannot compute (a module that is not ``nn.Linear`` or
        ``Conv1D``, an MLP other than ``down(SiLU(gate x) * up x)``, an unsupported dtype),
        with a :class:`~specmetrics.exceptions.SpecmetricsWarning`. Default: none, such sites
        raise :class:`~specmetrics.exceptions.UnsupportedModelError`.

    Notes
    -----
    One instance may serve every site kind of a call (``sparsify_activations`` uses one for
    all). A ``silu_gate`` site of a gated MLP replaces the whole MLP's ``forward``; a
    ``gate_up`` or ``down`` site of the same block would then never run, so that combination is
    refused (:class:`~specmetrics.exceptions.UnsupportedModelError`).
    """

    def __init__(self, *, count: bool = True, max_rows: Optional[int] = None,
                 relayout: bool = True, fallback=None):
        from specmetrics.kernels import DENSE_FALLBACK_ROWS

        func = "TritonSparse"
        self.count = check_bool(count, name="count", func=func)
        self.max_rows = (DENSE_FALLBACK_ROWS if max_rows is None else
                         check_int(max_rows, name="max_rows", func=func, minimum=0))
        self.relayout = check_bool(relayout, name="relayout", func=func)
        if fallback is not None and not callable(getattr(fallback, "install", None)):
            raise fail("fallback", func, "None or an applier (an object with install())",
                       type(fallback).__name__)
        self.fallback = fallback

    def __repr__(self) -> str:
        return f"TritonSparse(max_rows={self.max_rows})"

    # -- installation ----------------------------------------------------------------------------
    def install(self, model: nn.Module, site: Site, threshold: float,
                counter: SparsityCounter) -> list:
        try:
            return self._install(model, site, threshold, counter)
        except UnsupportedModelError as err:
            if self.fallback is None:
                raise
            warnings.warn(f"site {site.name!r} runs the torch reference, not the kernels: "
                          f"{err}", SpecmetricsWarning, stacklevel=4)
            return self.fallback.install(model, site, threshold, counter)

    def _install(self, model: nn.Module, site: Site, threshold: float,
                 counter: SparsityCounter) -> list:
        # every check comes before any change, so a refused site leaves the model as it was
        if site.kind == "silu_gate" and site.hook == "output":
            mlp, parts = self._gated_mlp(model, site)
            if mlp is not None:
                return self._install_mlp(mlp, parts, site, threshold, counter)
            consumers = self._ungated_down(model, site)
        else:
            consumers = site_consumers(model, site)
        return self._install_gemv(model, consumers, site, threshold, counter)

    def _gated_mlp(self, model: nn.Module, site: Site):
        """``(mlp, {"gate", "up", "down"} -> (name, module))`` or ``(None, None)`` if ungated."""
        parent_name = site.module.rpartition(".")[0]
        parent = model.get_submodule(parent_name) if parent_name else model
        parts: dict[str, tuple[str, nn.Module]] = {}
        for child_name, child in parent.named_children():
            name = f"{parent_name}.{child_name}" if parent_name else child_name
            kind = module_type(name)
            if kind in ("gate", "up", "down", "gate_up") and kind not in parts:
                parts[kind] = (name, child)
        if "gate" not in parts and "gate_up" not in parts:
            return None, None
        act = model.get_submodule(site.module)
        problems = []
        if "gate_up" in parts or not {"gate", "up", "down"} <= set(parts):
            problems.append("separate gate, up and down projections")
        if not _is_silu(act):
            problems.append(f"a SiLU activation (found {type(act).__name__})")
        for kind in ("gate", "up", "down"):
            if kind in parts and not isinstance(parts[kind][1], nn.Linear):
                problems.append(f"nn.Linear {kind} (found {type(parts[kind][1]).__name__})")
        for kind in ("gate", "up"):
            if kind in parts and getattr(parts[kind][1], "bias", None) is not None:
                problems.append(f"no bias on {kind}")
        if problems:
            raise UnsupportedModelError(
                f"backend='triton': the CATS kernel computes down(SiLU(gate x) * up x); the "
                f"MLP of site {site.name!r} ({type(parent).__name__}) lacks "
                + "; ".join(problems) + ". Use backend='torch' for it.")
        for kind in ("gate", "up", "down"):
            name, module = parts[kind]
            _check_weight(module, name, site)
            if _kernel_owned(module):
                raise UnsupportedModelError(
                    f"backend='triton': site {site.name!r} fuses the whole MLP, so the "
                    f"{kind} projection {name!r} cannot also serve a TEAL site; use "
                    "backend='torch' to combine CATS and TEAL sites in one block")
        return parent, parts

    def _ungated_down(self, model: nn.Module, site: Site) -> dict[str, nn.Module]:
        sites = find_sites(model)
        down = sites.get(f"{site.block_name}.down")
        if down is None:
            raise UnsupportedModelError(f"backend='triton': no down projection found for the "
                                        f"ungated site {site.name!r}; use backend='torch'")
        return {down.module: model.get_submodule(down.module)}

    def _install_gemv(self, model, consumers: dict, site: Site, threshold: float,
                      counter: SparsityCounter) -> list:
        from specmetrics.kernels import rounded_threshold
        from specmetrics.kernels.act_sparse_gemv import gemv_unchecked

        plan = []
        for name, module in consumers.items():
            if isinstance(module, nn.Linear):
                conv = False
            elif _is_conv1d(module):
                conv = True
            else:
                raise UnsupportedModelError(
                    f"backend='triton': consumer {name!r} of site {site.name!r} is a "
                    f"{type(module).__name__}, not an nn.Linear or Conv1D; use backend='torch'")
            weight = _check_weight(module, name, site)
            if _kernel_owned(module):
                raise UnsupportedModelError(f"backend='triton': {name!r} already runs a kernel "
                                            f"for another site than {site.name!r}")
            parent_name = name.rpartition(".")[0]
            parent = model.get_submodule(parent_name) if parent_name else model
            if _kernel_owned(parent):
                raise UnsupportedModelError(
                    f"backend='triton': {parent_name!r} runs the fused CATS MLP kernel, so "
                    f"{name!r} cannot serve site {site.name!r}; use backend='torch' to combine "
                    "CATS and TEAL sites in one block")
            plan.append((name, module, conv, rounded_threshold(threshold, weight.dtype)))

        max_rows, count = self.max_rows, self.count
        cache: dict[str, Any] = {}
        handles: list = []
        try:
            for name, module, conv, t in plan:
                if self.relayout and not conv:
                    handles.append(_Relayout(module.weight))

                def forward(x, *args, _module=module, _conv=conv, _t=t, **kwargs):
                    if count and cache.get("in") is not x:
                        cache["in"] = x
                        counter.add((x.abs() <= _t).sum(), x.numel())
                    w = _module.weight.t() if _conv else _module.weight
                    y = gemv_unchecked(x, w, _t, backend="triton", max_rows=max_rows)
                    bias = getattr(_module, "bias", None)
                    return y if bias is None else y + bias

                setattr(forward, _MARK, True)
                handles.append(replace_forward(module, forward))
            handles.append(_ClearCache(cache))
        except BaseException:
            for handle in reversed(handles):
                handle.remove()
            raise
        return handles

    def _install_mlp(self, mlp: nn.Module, parts: dict, site: Site, threshold: float,
                     counter: SparsityCounter) -> list:
        from specmetrics.kernels import rounded_threshold
        from specmetrics.kernels.sparse_mlp import mlp_unchecked

        gate, up, down = (parts[k][1] for k in ("gate", "up", "down"))
        if _kernel_owned(mlp):
            raise UnsupportedModelError(f"backend='triton': {site.module!r}'s MLP already runs "
                                        "a kernel")
        t = rounded_threshold(threshold, gate.weight.dtype)
        max_rows, count = self.max_rows, self.count
        handles: list = []
        try:
            if self.relayout:
                handles.append(_Relayout(down.weight))

            def forward(x, *args, **kwargs):
                y, zeros = mlp_unchecked(x, gate.weight, up.weight, down.weight, t,
                                         backend="triton", max_rows=max_rows, count=count)
                if count:
                    counter.add(zeros, x.numel() // x.shape[-1] * gate.weight.shape[0])
                return y if down.bias is None else y + down.bias

            setattr(forward, _MARK, True)
            handles.append(replace_forward(mlp, forward))
        except BaseException:
            for handle in reversed(handles):
                handle.remove()
            raise
        return handles

