"""Hessian (and GGN) operators of a model's loss on its data, built on curvlinops.

:func:`hessian_operator` turns a model, its data and a choice of parameters into a
:class:`HessianOperator`: a symmetric linear operator on the selected parameters whose products
are Hessian-vector products of the **mean loss over the whole data set**, never forming the
matrix. Two kinds of model:

- a Hugging Face causal LM with calibration windows (``loss="lm"``; a
  :class:`~specmetrics.calibration.CalibrationSet`, token ids, text, or input ids with an
  attention mask): the loss is the causal-LM cross-entropy with shifted labels (the logits at
  position ``t`` predict token ``t + 1``), averaged over every predicted token of every window;
  positions where the attention mask is 0 (the target or the token before it) are not predicted;
- a plain ``nn.Module`` with a loss module (``torch.nn.MSELoss()``, ``CrossEntropyLoss()``, ...,
  ``reduction="mean"`` or ``"sum"``) and a re-iterable collection of ``(X, y)`` batches (a list or
  a ``DataLoader``).

The data loop, the weighting of the batches and the operator algebra are curvlinops'
(``CurvatureLinearOperator``): with a mean-reduced loss, each batch's Hessian is weighted by its
share of the data, here the number of predicted tokens of the batch over the total, so that the
operator is the Hessian of the mean over all tokens however the windows are batched.

Hessian-vector products
    ``engine="autograd"`` (default for the Hessian): double backward (``torch.autograd.grad``
    with ``create_graph=True``) on one graph per batch, reused for every column of a matrix
    product. ``engine="curvlinops"``: curvlinops' ``HessianLinearOperator`` (forward-over-reverse
    ``jvp(jacrev(...))`` under ``torch.no_grad``). With torch 2.13 the latter fails on LLaMA-type
    models (``NotImplementedError: Trying to use forward AD with aten::silu_backward``) and is
    slower on the CPU where it works (see ``docs/hessian.rst``), hence the default. The GGN
    always uses curvlinops' ``GGNLinearOperator``.

Attention runs through PyTorch's "math" scaled-dot-product kernel while the operator multiplies
(a context manager, restored afterwards): the fused CPU/CUDA kernels have no double backward and
no forward-mode derivative.

curvlinops is imported when an operator is built (``pip install 'specmetrics[hessian]'``).
"""
from __future__ import annotations

import contextlib
import copy
import fnmatch
import functools
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Optional

import numpy as np
import torch
from torch import nn

from .._validation import (check_bool, check_choice, check_device, check_float_dtype,
                           check_int, check_not_meta, check_positive_int, check_seed, fail, shown)

__all__ = ["hessian_operator", "HessianOperator", "CausalLMLoss", "select_parameters",
           "CURVATURES", "ENGINES", "DEFAULT_NSAMPLES", "DEFAULT_SEQLEN"]

CURVATURES = ("hessian", "ggn")
ENGINES = ("autograd", "curvlinops")
#: Windows drawn from a text when ``nsamples`` is not given (a Hessian needs far fewer tokens
#: than pruning statistics, and every product costs a forward and two backward passes).
DEFAULT_NSAMPLES = 8
#: Tokens per window drawn from a text when ``seqlen`` is not given (capped at the model's
#: maximum positions).
DEFAULT_SEQLEN = 256
_VMAP_COLUMNS = 8  # columns per product for the vmapped curvlinops engines (memory ~ columns)
_IGNORE = -100
_FUNC = "hessian_operator"


def _import_curvlinops():
    try:
        import curvlinops
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("Hessian operators need curvlinops: pip install "
                          "'specmetrics[hessian]' (see docs/hessian.rst for installing it "
                          "without torchvision)") from err
    return curvlinops


def _math_attention():
    """A context running scaled-dot-product attention through the differentiable math kernel."""
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover - torch < 2.3
        return contextlib.nullcontext()
    return sdpa_kernel([SDPBackend.MATH])


# ---------------------------------------------------------------------------------------------
# model and loss functions handed to curvlinops


class CausalLMLoss(nn.Module):
    """Causal-LM cross-entropy with shifted labels, averaged over the predicted tokens.

    ``forward(logits, labels)`` with ``logits`` of shape (batch, L, vocab) and ``labels`` of shape
    (batch, L): the logits at position ``t`` are scored against ``labels[:, t + 1]``; labels equal
    to -100 are not predicted. ``reduction`` is ``"mean"`` (what curvlinops reads to weight the
    batches).
    """

    reduction = "mean"

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        vocab = logits.shape[-1]
        return nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1).to(logits.device),
            ignore_index=_IGNORE, reduction="mean")


class _CausalLMFunction(nn.Module):
    """``X -> logits`` for a Hugging Face causal LM; ``X`` a dict of the batch's tensors.

    With ``skip`` (the blocks before the first selected one) and ``X["prefix"]`` (the hidden
    states entering the first selected block, computed once), those blocks are not run: while
    the model is called, each returns its input unchanged and the last returns the prefix.
    """

    def __init__(self, lm: nn.Module, device: torch.device, skip: Sequence[nn.Module] = ()):
        super().__init__()
        self.lm = lm
        self._device = device
        self._skip = tuple(skip)

    def forward(self, X: Mapping) -> torch.Tensor:
        kwargs = {"input_ids": X["input_ids"].to(self._device), "use_cache": False}
        if X.get("attention_mask") is not None:
            kwargs["attention_mask"] = X["attention_mask"].to(self._device)
        prefix = X.get("prefix")
        if prefix is None or not self._skip:
            with _math_attention():
                return self.lm(**kwargs).logits
        saved = [block.__dict__.get("forward") for block in self._skip]
        last = len(self._skip) - 1
        for i, block in enumerate(self._skip):
            block.forward = _passthrough if i < last else (lambda *a, **k: prefix)
        try:
            with _math_attention():
                return self.lm(**kwargs).logits
        finally:
            for block, previous in zip(self._skip, saved):
                if previous is None:
                    del block.forward
                else:
                    block.forward = previous


def _passthrough(*args, **kwargs):
    """A skipped block: its hidden states unchanged."""
    return args[0] if args else kwargs["hidden_states"]


class _PlainFunction(nn.Module):
    """``X -> model(X)`` with floating inputs cast to the operator's dtype (and math attention)."""

    def __init__(self, model: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.net = model
        self._dtype = dtype

    def forward(self, X: torch.Tensor) -> torch.Tensor:
        if X.is_floating_point():
            X = X.to(self._dtype)
        with _math_attention():
            return self.net(X)


class _PlainLoss(nn.Module):
    """The user's loss, with floating targets cast to the prediction's dtype."""

    def __init__(self, loss: nn.Module):
        super().__init__()
        self.criterion = loss

    @property
    def reduction(self) -> str:
        return self.criterion.reduction

    def forward(self, prediction: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if y.is_floating_point():
            y = y.to(prediction.dtype)
        return self.criterion(prediction, y)


@functools.lru_cache(maxsize=None)
def _autograd_hessian_class():
    """curvlinops' ``CurvatureLinearOperator`` with double-backward Hessian products."""
    from curvlinops._torch_base import CurvatureLinearOperator
    from torch.func import functional_call

    class AutogradHessianLinearOperator(CurvatureLinearOperator):
        """Hessian of the empirical risk; products by double backward, one graph per batch.

        With ``keep_graph`` (set after construction) and batches that carry an ``"index"``, the
        gradient graph of each batch is built once and kept: a product is then one backward
        pass through it per column.
        """

        SELF_ADJOINT = True
        SUPPORTS_BLOCKS = False
        keep_graph = False

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            wanted = {id(p) for p in self._params}
            names = {id(p): n for n, p in self._model_func.named_parameters()}
            self._free_names = [names[id(p)] for p in self._params]
            self._frozen_names = [n for n, p in self._model_func.named_parameters()
                                  if id(p) not in wanted]
            self._graphs: dict = {}

        def _gradient_graph(self, X, y):
            leaves = [p.detach().requires_grad_(True) for p in self._params]
            frozen = dict(self._model_func.named_parameters())
            mapping = {n: frozen[n].detach() for n in self._frozen_names}
            mapping.update(zip(self._free_names, leaves))
            with torch.enable_grad():
                prediction = functional_call(self._model_func, mapping, (X,))
                loss = self._loss_func(prediction, y)
                grads = torch.autograd.grad(loss, leaves, create_graph=True, allow_unused=True)
            live = [i for i, g in enumerate(grads) if g is not None and g.requires_grad]
            return leaves, [grads[i] for i in live], live

        def _matmat_batch(self, X, y, M):
            key = X.get("index") if self.keep_graph and isinstance(X, Mapping) else None
            if key is not None and key in self._graphs:
                leaves, outputs, live = self._graphs[key]
            else:
                leaves, outputs, live = self._gradient_graph(X, y)
                if key is not None:
                    self._graphs[key] = (leaves, outputs, live)
            out = [torch.zeros_like(m) for m in M]
            n_cols = M[0].shape[-1]
            if not live:
                return out
            for k in range(n_cols):
                hv = torch.autograd.grad(outputs, leaves,
                                         grad_outputs=[M[i][..., k] for i in live],
                                         retain_graph=key is not None or k < n_cols - 1,
                                         allow_unused=True)
                for o, h in zip(out, hv):
                    if h is not None:
                        o[..., k] = h
            return out

        def release_graphs(self) -> None:
            """Free the kept gradient graphs."""
            self._graphs.clear()

    return AutogradHessianLinearOperator


# ---------------------------------------------------------------------------------------------
# parameter selection


def _is_pattern(p: str) -> bool:
    return any(c in p for c in "*?[")


def select_parameters(model: nn.Module, params: Any = None, *,
                      func: str = _FUNC) -> list[tuple[str, nn.Parameter]]:
    """The parameters ``params`` names, as ``(qualified name, parameter)`` in model order.

    Parameters
    ----------
    model : nn.Module
    params : None, str, sequence of str, or sequence of nn.Parameter
        ``None``: every parameter with ``requires_grad`` (tied weights once). A string is a
        qualified parameter name (``"model.layers.29.mlp.up_proj.weight"``), a module name (every
        parameter under it: ``"model.layers.29"``) or a glob pattern matched against parameter
        names (``"model.layers.29.*"``, ``"*.mlp.*_proj.weight"``; ``*`` also matches dots).
        Several strings select the union. Parameters given as tensors must belong to ``model``.

    Raises
    ------
    ParameterError
        When a string matches no parameter, or a tensor is not a parameter of the model.
    """
    named = list(model.named_parameters())
    if params is None:
        chosen = [(n, p) for n, p in named if p.requires_grad]
        if not chosen:
            raise fail("params", func, "given for a model none of whose parameters requires "
                       "grad (name them)", None)
        return chosen
    if isinstance(params, (str, nn.Parameter)):
        params = [params]
    if isinstance(params, torch.Tensor) or isinstance(params, Mapping) or \
            not isinstance(params, (Sequence, set, frozenset, tuple, Iterator)):
        raise fail("params", func, "None, a parameter name or glob pattern, or a sequence of "
                   "names, patterns or parameters", type(params).__name__)
    items = list(params)
    if not items:
        raise fail("params", func, "a non-empty selection of parameters", items)
    if all(isinstance(x, str) for x in items):
        keep: set[str] = set()
        for pattern in items:
            if not pattern:
                raise fail("params", func, "non-empty names or patterns", pattern)
            hits = {n for n, _ in named if n == pattern or n.startswith(pattern + ".")
                    or (_is_pattern(pattern) and fnmatch.fnmatchcase(n, pattern))}
            if not hits:
                raise fail("params", func, "names or glob patterns matching parameters of the "
                           f"model (such as {shown([n for n, _ in named], 3)})", pattern)
            keep |= hits
        return [(n, p) for n, p in named if n in keep]
    if all(isinstance(x, torch.Tensor) for x in items):
        by_id = {id(p): n for n, p in named}
        missing = [tuple(x.shape) for x in items if id(x) not in by_id]
        if missing:
            raise fail("params", func, "parameters of the model", f"tensors of shapes {missing}")
        wanted = {id(x) for x in items}
        return [(n, p) for n, p in named if id(p) in wanted]
    raise fail("params", func, "names/patterns or parameters (not a mix)",
               [type(x).__name__ for x in items][:6])


# ---------------------------------------------------------------------------------------------
# the operator


class HessianOperator:
    """A symmetric curvature operator on selected parameters (from :func:`hessian_operator`).

    Multiplication never forms the matrix: ``op @ v`` for ``v`` of shape (dim,) or (dim, k)
    (torch or numpy) is one pass over the data per column block. The flat vector is the
    concatenation of the selected parameters (``names``, in model order), each flattened.

    Attributes
    ----------
    linop : curvlinops.PyTorchLinearOperator
        The underlying curvlinops operator (usable with curvlinops' own functions).
    names : tuple of str
        Qualified names of the selected parameters, in model order.
    shapes : tuple of tuple of int
    dim : int
        Number of scalar parameters (the operator is ``dim x dim``).
    shape : tuple of int
    dtype, device
    curvature : {"hessian", "ggn"}
    engine : {"autograd", "curvlinops"}
    n_data : int
        Predicted tokens (``loss="lm"``) or samples: the denominator of the mean loss.
    n_batches : int
    n_matvecs : int
        Products performed so far (every column counts one).
    settings : dict
        JSON-able description recorded in the estimators' results.

    Notes
    -----
    Build a new operator after changing the model's weights: the hidden states entering the
    first selected block (``reuse_prefix``) and the kept gradient graphs (``keep_graph``) are
    computed from the weights at construction and first use (autograd raises on in-place
    changes of weights a kept graph saved, except through ``.data``).
    """

    def __init__(self, linop, *, names, shapes, curvature, engine, n_data, n_batches,
                 settings, vmap_columns: Optional[int]):
        self.linop = linop
        self.names = tuple(names)
        self.shapes = tuple(tuple(s) for s in shapes)
        self.dim = int(sum(math.prod(s) for s in self.shapes))
        self.shape = (self.dim, self.dim)
        self.dtype = linop.dtype
        self.device = linop.device
        self.curvature = curvature
        self.engine = engine
        self.n_data = int(n_data)
        self.n_batches = int(n_batches)
        self.settings = dict(settings)
        self._vmap_columns = vmap_columns
        self.n_matvecs = 0

    def __repr__(self) -> str:
        return (f"HessianOperator({self.curvature}, dim={self.dim}, {len(self.names)} tensors, "
                f"{self.n_data} {'tokens' if self.settings.get('loss') == 'lm' else 'samples'}, "
                f"{self.dtype}, {self.device})")

    def matmat(self, V) -> torch.Tensor:
        """``H @ V`` for ``V`` of shape (dim, k) (torch tensor or numpy array); a torch tensor of
        shape (dim, k) on the operator's device."""
        V = torch.as_tensor(V)
        if V.ndim != 2 or V.shape[0] != self.dim:
            raise fail("V", "HessianOperator.matmat", f"a matrix of shape ({self.dim}, k)",
                       f"shape {tuple(V.shape)}")
        V = V.to(device=self.device, dtype=self.dtype)
        k = int(V.shape[1])
        step = k if self._vmap_columns is None else self._vmap_columns
        parts = [self.linop @ V[:, i:i + step] for i in range(0, k, step)]
        self.n_matvecs += k
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)

    def matvec(self, v) -> torch.Tensor:
        """``H @ v`` for ``v`` of shape (dim,)."""
        v = torch.as_tensor(v)
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise fail("v", "HessianOperator.matvec", f"a vector of shape ({self.dim},)",
                       f"shape {tuple(v.shape)}")
        return self.matmat(v.reshape(-1, 1)).reshape(-1)

    def __matmul__(self, other):
        other = torch.as_tensor(other)
        return self.matvec(other) if other.ndim == 1 else self.matmat(other)

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` (float64 in and out) multiplying through
        this operator (its products are counted)."""
        from scipy.sparse.linalg import LinearOperator

        def matmat(X):
            X = np.asarray(X)
            out = self.matmat(torch.as_tensor(X.reshape(self.dim, -1)))
            return out.detach().to("cpu", torch.float64).numpy().reshape(X.shape)

        return LinearOperator(self.shape, matvec=matmat, rmatvec=matmat, matmat=matmat,
                              rmatmat=matmat, dtype=np.float64)

    def dense(self, *, max_dim: int = 4096, columns: int = 64) -> torch.Tensor:
        """The full matrix, from ``dim`` products with unit vectors (small operators only).

        Raises
        ------
        ParameterError
            When ``dim > max_dim``.
        """
        func = "HessianOperator.dense"
        max_dim = check_positive_int(max_dim, name="max_dim", func=func)
        columns = check_positive_int(columns, name="columns", func=func)
        if self.dim > max_dim:
            raise fail("max_dim", func, f"at least the operator's dimension {self.dim} (the "
                       "dense matrix has dim^2 entries)", max_dim)
        out = torch.empty((self.dim, self.dim), dtype=self.dtype, device=self.device)
        for start in range(0, self.dim, columns):
            stop = min(self.dim, start + columns)
            E = torch.zeros((self.dim, stop - start), dtype=self.dtype, device=self.device)
            E[torch.arange(start, stop), torch.arange(stop - start)] = 1
            out[:, start:stop] = self.matmat(E)
        return out

    def release(self) -> None:
        """Free the gradient graphs kept by ``keep_graph=True`` (later products rebuild them)."""
        release = getattr(self.linop, "release_graphs", None)
        if release is not None:
            release()

    def unflatten(self, v) -> dict[str, torch.Tensor]:
        """A flat vector of shape (dim,) as ``{name: tensor of the parameter's shape}``."""
        v = torch.as_tensor(v)
        if v.ndim != 1 or v.shape[0] != self.dim:
            raise fail("v", "HessianOperator.unflatten", f"a vector of shape ({self.dim},)",
                       f"shape {tuple(v.shape)}")
        out, start = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = math.prod(shape)
            out[name] = v[start:start + size].reshape(shape)
            start += size
        return out


# ---------------------------------------------------------------------------------------------
# building it


def _check_eval(model: nn.Module, lm: bool) -> None:
    if not model.training:
        return
    random_modules = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                      nn.modules.batchnorm._BatchNorm)
    if lm or any(isinstance(m, random_modules) and m.training for m in model.modules()):
        raise fail("model", _FUNC, "in eval mode (call model.eval(): dropout or batch "
                   "statistics make the loss, and so the Hessian, change between products)",
                   f"{type(model).__name__} in training mode")


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _lm_windows(model, data, tokenizer, nsamples, seqlen, seed):
    """Input ids (n, L), attention mask or None, and the calibration settings."""
    from ..calibration import CalibrationSet, calibration_set, model_max_positions

    mask = None
    if isinstance(data, Mapping):
        if "input_ids" not in data:
            raise fail("data", _FUNC, "a mapping with 'input_ids' (and optionally "
                       "'attention_mask') token tensors", sorted(map(str, data)))
        ids = data["input_ids"]
        mask = data.get("attention_mask")
        if not isinstance(ids, torch.Tensor) or ids.ndim != 2:
            raise fail("data", _FUNC, "input_ids of shape (n, L)", type(ids).__name__ if not
                       isinstance(ids, torch.Tensor) else f"shape {tuple(ids.shape)}")
        if mask is not None:
            if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(ids.shape):
                raise fail("data", _FUNC, f"an attention_mask of the shape of input_ids "
                           f"{tuple(ids.shape)}", getattr(mask, "shape", type(mask).__name__))
            if mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
                raise fail("data", _FUNC, "an attention_mask of 0s and 1s", "other values")
            mask = mask.detach().to("cpu", torch.long)
        data = ids
        if nsamples is not None or seqlen is not None:
            raise fail("nsamples" if nsamples is not None else "seqlen", _FUNC,
                       "None when input ids and an attention mask are given (they are used "
                       "whole)", nsamples if nsamples is not None else seqlen)
    if isinstance(data, (CalibrationSet, torch.Tensor)) and not (
            isinstance(data, torch.Tensor) and data.ndim == 1):
        calib = calibration_set(model, data, nsamples=nsamples, seqlen=seqlen, seed=seed,
                                func=_FUNC)
    else:  # text or a token stream: our smaller defaults
        if nsamples is None:
            nsamples = DEFAULT_NSAMPLES
        if seqlen is None:
            limit = model_max_positions(model)
            seqlen = DEFAULT_SEQLEN if limit is None else min(DEFAULT_SEQLEN, limit)
        calib = calibration_set(model, data, tokenizer=tokenizer, nsamples=nsamples,
                                seqlen=seqlen, seed=seed, func=_FUNC)
    if calib.seqlen < 2:
        raise fail("seqlen", _FUNC, "at least 2 (a window must predict a token)", calib.seqlen)
    if mask is not None:
        mask = mask[:calib.nsamples, :calib.seqlen]
    return calib.input_ids, mask, calib.settings()


def _first_selected_block(model: nn.Module, names: Sequence[str]):
    """``(layout, j)`` when every selected parameter lies in blocks ``>= j >= 1``, else None."""
    from ..exceptions import UnsupportedModelError
    from ..models import find_blocks

    try:
        layout = find_blocks(model, func=_FUNC)
    except (UnsupportedModelError, ValueError):
        return None
    index = []
    for name in names:
        hits = [i for i, block in enumerate(layout.names) if name.startswith(block + ".")]
        if not hits:
            return None  # a parameter outside the blocks (embeddings, final norm, head)
        index.append(hits[0])
    j = min(index)
    return (layout, j) if j >= 1 else None


@torch.no_grad()
def _hidden_entering(model: nn.Module, layout, ids: torch.Tensor, j: int) -> Optional[torch.Tensor]:
    """The hidden states entering block ``j`` for every window, shape (n, L, hidden); None when
    the blocks do not return plain tensors (then every product runs the whole model)."""
    from ..calibration import capture_block_inputs
    from ..exceptions import UnsupportedModelError

    with _math_attention():
        try:
            captured = capture_block_inputs(model, layout, ids)
        except UnsupportedModelError:
            return None
        hidden = captured.inputs
        for i in range(j):
            block = layout.blocks[i]
            rows = []
            for r in range(hidden.shape[0]):
                out = block(hidden[r:r + 1], *captured.args[i], **captured.kwargs[i])
                if not isinstance(out, torch.Tensor) or out.shape != hidden[r:r + 1].shape:
                    return None
                rows.append(out)
            hidden = torch.cat(rows, 0)
    return hidden


def _lm_batches(ids: torch.Tensor, mask: Optional[torch.Tensor], batch_size: int):
    batches, total = [], 0
    for start in range(0, ids.shape[0], batch_size):
        x = ids[start:start + batch_size]
        labels = x.clone()
        m = None
        if mask is not None:
            m = mask[start:start + batch_size]
            labels[m == 0] = _IGNORE
            # a target whose previous position is masked has no context to be predicted from
            labels[:, 1:][m[:, :-1] == 0] = _IGNORE
        n_targets = int((labels[:, 1:] != _IGNORE).sum())
        if n_targets == 0:
            continue
        batches.append(({"input_ids": x, "attention_mask": m, "n_targets": n_targets,
                         "index": len(batches)}, labels))
        total += n_targets
    if total == 0:
        raise fail("data", _FUNC, "windows with at least one predicted token (two unmasked "
                   "consecutive positions)", "no predicted token")
    return batches, total


def _check_plain_data(data) -> None:
    if isinstance(data, (torch.Tensor, str, bytes, Mapping)) or not hasattr(data, "__iter__"):
        raise fail("data", _FUNC, "a re-iterable collection of (X, y) batches (a list or a "
                   "DataLoader)", type(data).__name__)
    if iter(data) is data:
        raise fail("data", _FUNC, "a re-iterable collection of (X, y) batches (a list or a "
                   "DataLoader), not a one-shot iterator", type(data).__name__)
    first = next(iter(data), None)
    if first is None:
        raise fail("data", _FUNC, "a non-empty collection of (X, y) batches", "no batch")
    if not (isinstance(first, (tuple, list)) and len(first) == 2
            and all(isinstance(t, torch.Tensor) for t in first)):
        raise fail("data", _FUNC, "batches that are (X, y) pairs of tensors",
                   type(first).__name__)
    for t in first:
        check_not_meta(t, name="data", func=_FUNC)


def hessian_operator(model: nn.Module, data: Any, *, params: Any = None, loss: Any = "lm",
                     curvature: str = "hessian", engine: Optional[str] = None,
                     tokenizer: Any = None, nsamples: Optional[int] = None,
                     seqlen: Optional[int] = None, seed: int = 0, batch_size: int = 1,
                     dtype: Optional[torch.dtype] = None, device: Any = None,
                     reuse_prefix: bool = True, keep_graph: bool = False) -> HessianOperator:
    """The Hessian (or GGN) of a model's mean loss on its data, as a linear operator.

    Parameters
    ----------
    model : torch.nn.Module
        A Hugging Face causal LM (``loss="lm"``) or any module (with a loss module). In eval mode
        (dropout would make the products random). Not modified; copied when ``dtype`` or
        ``device`` differ from its own (memory: one more model).
    data
        For ``loss="lm"``: a :class:`~specmetrics.calibration.CalibrationSet`, token ids of shape
        (n, L) (used row by row) or a 1-D token stream, a text (``str``), a text file
        (``pathlib.Path``) or a list of texts (with ``tokenizer``), or a mapping with
        ``"input_ids"`` and ``"attention_mask"`` of shape (n, L) (padded windows). Otherwise: a
        re-iterable collection of ``(X, y)`` tensor batches (a list, a ``DataLoader``).
    params : None, str, sequence of str or of parameters, optional
        The parameters the operator acts on (see :func:`select_parameters`): a qualified name, a
        module prefix or a glob (``"model.layers.29.*"``), several of them, or parameter tensors.
        Default: every parameter that requires grad.
    loss : "lm" or torch.nn.Module, default "lm"
        ``"lm"``: the causal-LM loss (:class:`CausalLMLoss`) averaged over every predicted token.
        A module: the criterion ``loss(model(X), y)``, with ``reduction`` ``"mean"`` (the operator
        is the Hessian of the mean over all samples) or ``"sum"``.
    curvature : {"hessian", "ggn"}, default "hessian"
        The Hessian, or the generalised Gauss-Newton matrix ``J^T H_loss J`` (positive
        semi-definite for convex losses).
    engine : {"autograd", "curvlinops"}, optional
        How Hessian products are computed (see the module docstring). Default ``"autograd"``
        for the Hessian; the GGN has only ``"curvlinops"``.
    tokenizer : optional
        Tokenizer for text ``data``.
    nsamples, seqlen : int, optional
        Windows drawn from a text or token stream (default 8 windows of
        ``min(256, max positions)`` tokens); for given windows, the first ``nsamples`` rows and
        ``seqlen`` columns (default: all).
    seed : int, default 0
        Seed of the window draw.
    batch_size : int, default 1
        Windows per forward pass (``loss="lm"``); memory grows with it, the operator does not
        change.
    dtype : torch.float32 or torch.float64, optional
        Dtype of the products (default: the parameters'). float64 for exact checks on small
        models.
    device : str or torch.device, optional
        Where the products run (default: where the model is); e.g. ``"cuda"``.
    reuse_prefix : bool, default True
        ``loss="lm"``: when every selected parameter lies in blocks ``j >= 1`` (say the last
        block) and the windows have no attention mask, compute the hidden states entering block
        ``j`` once (with the block-by-block runner of :mod:`specmetrics.calibration`) and skip
        blocks ``0 .. j-1`` in every product. The operator is the same (to rounding); memory:
        ``nsamples x seqlen x hidden`` floats.
    keep_graph : bool, default False
        ``loss="lm"``, Hessian with ``engine="autograd"``: build each batch's gradient graph
        (forward pass and first backward pass) once and keep it, so that a product is a single
        backward pass through it (1.8 times faster on SmolLM2-135M's last block), at the memory
        of the graphs (that of a training step on all the windows, kept for the operator's
        life; :meth:`HessianOperator.release` frees it).

    Returns
    -------
    HessianOperator

    Raises
    ------
    ParameterError
        For any unusable value, before any product is computed.

    Examples
    --------
    >>> op = hessian_operator(model, calib, params="model.layers.29.*")   # doctest: +SKIP
    >>> eig = top_eigenvalues(op, k=20)                                    # doctest: +SKIP
    """
    from ..models import is_causal_lm

    if not isinstance(model, nn.Module):
        raise fail("model", _FUNC, "a torch.nn.Module", type(model).__name__)
    check_not_meta(model, name="model", func=_FUNC)
    if isinstance(loss, str):
        check_choice(loss, ("lm",), name="loss", func=_FUNC)
        lm = True
        if not is_causal_lm(model):
            raise fail("model", _FUNC, "a causal language model (a Hugging Face *ForCausalLM) "
                       "for loss='lm'; pass a loss module for other models",
                       type(model).__name__)
    elif isinstance(loss, nn.Module):
        lm = False
        if getattr(loss, "reduction", None) not in ("mean", "sum"):
            raise fail("loss", _FUNC, "'lm' or a loss module with reduction 'mean' or 'sum'",
                       f"{type(loss).__name__} with reduction "
                       f"{getattr(loss, 'reduction', None)!r}")
    else:
        raise fail("loss", _FUNC, "'lm' or a loss module such as torch.nn.MSELoss()",
                   type(loss).__name__)
    curvature = check_choice(curvature, CURVATURES, name="curvature", func=_FUNC)
    if engine is None:
        engine = "autograd" if curvature == "hessian" else "curvlinops"
    engine = check_choice(engine, ENGINES, name="engine", func=_FUNC)
    if curvature == "ggn" and engine != "curvlinops":
        raise fail("engine", _FUNC, "'curvlinops' (or None) for curvature='ggn'", engine)
    if dtype is not None:
        dtype = check_float_dtype(dtype, (torch.float32, torch.float64), func=_FUNC)
    device = check_device(device, func=_FUNC)
    batch_size = check_positive_int(batch_size, name="batch_size", func=_FUNC)
    seed = check_seed(seed, func=_FUNC)
    reuse_prefix = check_bool(reuse_prefix, name="reuse_prefix", func=_FUNC)
    keep_graph = check_bool(keep_graph, name="keep_graph", func=_FUNC)
    if keep_graph and (isinstance(loss, nn.Module) or curvature != "hessian"
                       or (engine is not None and engine != "autograd")):
        raise fail("keep_graph", _FUNC, "False unless loss='lm', curvature='hessian' and "
                   "engine='autograd'", keep_graph)
    if nsamples is not None:
        nsamples = check_positive_int(nsamples, name="nsamples", func=_FUNC)
    if seqlen is not None:
        seqlen = check_int(seqlen, name="seqlen", func=_FUNC, minimum=2)
    if not lm and (tokenizer is not None or nsamples is not None or seqlen is not None):
        name = "tokenizer" if tokenizer is not None else "nsamples" if nsamples is not None \
            else "seqlen"
        raise fail(name, _FUNC, "None for a loss module (it applies to loss='lm')",
                   type(tokenizer).__name__ if name == "tokenizer" else
                   (nsamples if name == "nsamples" else seqlen))
    chosen = select_parameters(model, params, func=_FUNC)
    _check_eval(model, lm)
    own_dtypes = {p.dtype for _, p in chosen}
    target_dtype = dtype if dtype is not None else next(iter(own_dtypes))
    if dtype is None and (len(own_dtypes) > 1 or target_dtype not in (torch.float32,
                                                                       torch.float64)):
        raise fail("dtype", _FUNC, "given (torch.float32 or torch.float64) for parameters "
                   f"in {sorted(str(d) for d in own_dtypes)}", None)
    target_device = device if device is not None else _model_device(model)

    if lm:
        ids, mask, calib_settings = _lm_windows(model, data, tokenizer, nsamples, seqlen, seed)
        batches, n_data = _lm_batches(ids, mask, batch_size)
    else:
        _check_plain_data(data)

    curvlinops = _import_curvlinops()
    needs_copy = any(p.dtype != target_dtype or p.device != target_device
                     for p in model.parameters())
    work = copy.deepcopy(model).to(device=target_device, dtype=target_dtype) if needs_copy \
        else model
    by_name = dict(work.named_parameters())
    names = [n for n, _ in chosen]
    free = [by_name[n] for n in names]

    prefix_block = None
    if lm:
        skip: Sequence[nn.Module] = ()
        found = _first_selected_block(work, names) if reuse_prefix and mask is None else None
        if found is not None:
            layout, j = found
            hidden = _hidden_entering(work, layout, ids.to(target_device), j)
            if hidden is not None:
                skip, prefix_block = layout.blocks[:j], layout.names[j]
                start = 0
                for X, _ in batches:
                    n_rows = X["input_ids"].shape[0]
                    X["prefix"] = hidden[start:start + n_rows]
                    start += n_rows
        model_func = _CausalLMFunction(work, target_device, skip)
        loss_func = CausalLMLoss()
        kwargs = {"num_data": n_data, "batch_size_fn": lambda X: X["n_targets"]}
        curv_data = batches
        n_batches = len(batches)
    else:
        model_func = _PlainFunction(work, target_dtype)
        loss_func = _PlainLoss(loss)
        kwargs = {}
        curv_data = data
        n_batches = None
    if curvature == "ggn":
        cls = curvlinops.GGNLinearOperator
    elif engine == "curvlinops":
        cls = curvlinops.HessianLinearOperator
    else:
        cls = _autograd_hessian_class()
    linop = cls(model_func, loss_func, free, curv_data, check_deterministic=False, **kwargs)
    if keep_graph:
        linop.keep_graph = True
    if not lm:
        n_data = int(linop._N_data)
        n_batches = len(data) if hasattr(data, "__len__") else -1
    settings = {
        "operator": "HessianOperator", "curvature": curvature, "engine": engine,
        "loss": "lm" if lm else type(loss).__name__,
        "reduction": "mean" if lm else loss.reduction, "model": type(model).__name__,
        "params": names, "dim": int(sum(p.numel() for p in free)), "n_data": int(n_data),
        "n_batches": int(n_batches), "batch_size": batch_size if lm else None,
        "dtype": str(target_dtype).replace("torch.", ""), "device": str(target_device),
    }
    if lm:
        settings["calibration"] = calib_settings
        settings["attention_mask"] = mask is not None
        settings["prefix_block"] = prefix_block
        settings["keep_graph"] = keep_graph
    vmap_columns = None if (curvature == "hessian" and engine == "autograd") else _VMAP_COLUMNS
    return HessianOperator(linop, names=names, shapes=[tuple(p.shape) for p in free],
                           curvature=curvature, engine=engine, n_data=n_data,
                           n_batches=n_batches, settings=settings, vmap_columns=vmap_columns)
