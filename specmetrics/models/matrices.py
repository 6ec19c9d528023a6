"""The weight matrices of a model, a checkpoint or a tensor.

:func:`list_weight_matrices` turns any supported *source* into a list of :class:`WeightMatrix`
records, keyed by qualified module name, **in the model's module order whatever the source**,
without loading more than it must: a safetensors file or folder is read matrix by matrix and the
model is never built.

Supported sources
-----------------
``torch.nn.Module``
    ``Linear``, GPT-2 ``Conv1D`` (fused QKV analysed as one matrix), ``Conv1d`` / ``Conv2d``
    (one matrix per kernel position, pooled), ``Embedding``. Names are those of
    ``named_modules()``; a weight shared by several modules (tied embeddings) is listed once,
    under its first name.
a path to a ``.safetensors`` file, or a folder of shards
    Every tensor whose key ends in ``.weight`` and has 2 or more dimensions; the name is the key
    without ``.weight``. 4-D tensors are convolutions; 2-D tensors whose last name component
    contains ``embed`` (or is ``wte``/``wpe``) are embeddings, the rest linear. With
    ``"tie_word_embeddings": true`` in the ``config.json`` beside them, an ``lm_head.weight``
    equal to the input embedding is skipped, as ``from_pretrained`` ties it (counted once).
    Ordered as the model built from that ``config.json`` registers its modules (the model is
    instantiated on the ``meta`` device only to read that order); without a config, in natural
    name order (``layers.2`` before ``layers.10``).
a ``.gguf`` file, or a folder holding one
    Memory-mapped with ``gguf.GGUFReader`` and each tensor dequantised only when its matrix is
    loaded (``gguf.dequantize`` and transformers' tensor processor for the architecture, e.g.
    LLaMA's q/k rows un-permuted), named by transformers' GGUF-to-Hugging-Face key map, in the
    module order of the model the metadata describes (architectures whose transformers tensor
    processor maps one tensor to one weight: LLaMA, Mistral, Qwen2/3, Phi-3...). Others
    (MoE experts, GPT-2's fused QKV) are dequantised whole by transformers' GGUF loader, cached as
    safetensors (see :func:`specmetrics.models.load_model`), then read as above.
a folder or hub id without safetensors
    Loaded with :func:`specmetrics.models.load_model` (transformers).
a hub id
    Its safetensors files from the local hub cache, or downloaded (see
    :mod:`specmetrics.models.sources`).
a mapping (state dict)
    As safetensors, keyed by the state-dict keys, in the mapping's order.
a ``torch.Tensor``
    One matrix named ``"weight"``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence, Union

import numpy as np
import torch

from .._validation import fail
from ..exceptions import ParameterError
from .sources import (gguf_file, open_safetensors, read_config, resolve_hub_id, resolve_local,
                      safetensors_files)

__all__ = ["WeightMatrix", "list_weight_matrices", "name_filter", "split_matrices", "KINDS",
           "natural_key"]

KINDS = ("linear", "conv1d", "conv2d", "embedding", "tensor")
Pattern = Union[None, str, Sequence[str], Callable[[str], bool]]


@dataclasses.dataclass(frozen=True)
class WeightMatrix:
    """One analysable weight tensor.

    Attributes
    ----------
    name : str
        Qualified module name (or state-dict key without ``.weight``).
    kind : str
        ``"linear"``, ``"conv1d"`` (a GPT-2 ``Conv1D`` or a ``torch.nn.Conv1d``),
        ``"conv2d"``, ``"embedding"`` or ``"tensor"``.
    shape : tuple of int
        Shape of the weight tensor as stored.
    n_params : int
        Number of elements of the weight.
    loader : callable
        Returns the weight tensor (not copied when it lives in a module).
    """

    name: str
    kind: str
    shape: tuple
    n_params: int
    loader: Callable[[], torch.Tensor] = dataclasses.field(repr=False, compare=False)

    def load(self) -> torch.Tensor:
        return self.loader()

    @property
    def n_m_rf(self) -> tuple[int, int, int]:
        """``(N, M, rf)``: larger and smaller side of each matrix and their count."""
        if len(self.shape) == 2:
            return max(self.shape), min(self.shape), 1
        rf = 1
        for s in self.shape[2:]:
            rf *= s
        return max(self.shape[:2]), min(self.shape[:2]), rf


def split_matrices(weight: torch.Tensor, kind: str) -> tuple[torch.Tensor, float]:
    """The stack of 2-D matrices a weight is analysed as, and the eigenvalue scale.

    Returns
    -------
    mats : torch.Tensor, shape (rf, n, m)
        One matrix per kernel position for convolutions (``rf = prod(kernel)``), else ``rf = 1``.
    scale : float
        Factor applied to the eigenvalues: 0.5 for convolutions (WeightWatcher's
        ``conv2d_norm``), 1 otherwise.
    """
    if weight.dim() == 2:
        return weight.unsqueeze(0), 1.0
    if weight.dim() >= 3:
        out_c, in_c = weight.shape[:2]
        mats = weight.reshape(out_c, in_c, -1).permute(2, 0, 1)
        return mats, 0.5
    raise ParameterError(f"The weight of a {kind} layer must have 2 or more dimensions. Got "
                         f"shape {tuple(weight.shape)}.")


def name_filter(include: Pattern, exclude: Pattern, *, func: str = "esd") -> Callable[[str], bool]:
    """Combine ``include``/``exclude`` into one predicate on qualified names.

    Each may be ``None``, a regular expression (``re.search``), a sequence of them (any matches)
    or a callable ``name -> bool``.
    """

    def compile_one(p: Pattern, label: str) -> Optional[Callable[[str], bool]]:
        if p is None:
            return None
        if callable(p):
            return p
        requirement = "None, a regular expression, a sequence of them or a callable"
        if isinstance(p, (bytes, bytearray)) or isinstance(p, Mapping):
            raise fail(label, func, requirement, p)
        try:
            pats = [p] if isinstance(p, str) else list(p)
            if not all(isinstance(x, str) for x in pats):
                raise TypeError
            regs = [re.compile(x) for x in pats]
        except (re.error, TypeError) as err:
            raise fail(label, func, requirement, p) from err
        return lambda name: any(r.search(name) for r in regs)

    inc, exc = compile_one(include, "include"), compile_one(exclude, "exclude")

    def keep(name: str) -> bool:
        if inc is not None and not inc(name):
            return False
        if exc is not None and exc(name):
            return False
        return True

    return keep


def natural_key(name: str) -> tuple:
    """Sort key that orders numbered components numerically (``layers.2`` < ``layers.10``)."""
    return tuple((0, int(t)) if t.isdigit() else (1, t) for t in re.split(r"(\d+)", name) if t)


# ---------------------------------------------------------------------------
# nn.Module
# ---------------------------------------------------------------------------


def _module_kind(module: torch.nn.Module) -> Optional[str]:
    if isinstance(module, torch.nn.Linear):
        return "linear"
    if isinstance(module, torch.nn.Embedding):
        return "embedding"
    if isinstance(module, torch.nn.Conv2d):
        return "conv2d"
    if isinstance(module, torch.nn.Conv1d):
        return "conv1d"
    if type(module).__name__ == "Conv1D":  # transformers.pytorch_utils.Conv1D (GPT-2), (in, out)
        return "conv1d"
    return None


def _from_module(model: torch.nn.Module, func: str) -> Iterator[WeightMatrix]:
    seen: set = set()
    for name, module in model.named_modules():
        kind = _module_kind(module)
        weight = getattr(module, "weight", None)
        if kind is None or not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue
        if weight.is_meta:
            raise fail("source", func, "a model whose weights hold data (not on the 'meta' "
                       "device)", f"{type(model).__name__} with meta weight {name!r}")
        key = (weight.data_ptr(), tuple(weight.shape), weight.dtype)
        if weight.data_ptr() != 0 and key in seen:
            continue  # tied weight: counted once, under its first name
        seen.add(key)
        yield WeightMatrix(name, kind, tuple(weight.shape), weight.numel(),
                           (lambda w=weight: w.detach()))


# ---------------------------------------------------------------------------
# state dicts and safetensors
# ---------------------------------------------------------------------------

_EMBED_LAST = re.compile(r"embed|^wte$|^wpe$")
_TIED_OUTPUT_KEY = "lm_head.weight"


def _key_kind(name: str, ndim: int) -> str:
    if ndim >= 3:
        return "conv2d" if ndim == 4 else "conv1d"
    last = name.rsplit(".", 1)[-1]
    return "embedding" if _EMBED_LAST.search(last) else "linear"


def _strip_weight(key: str) -> str:
    return key[: -len(".weight")] if key.endswith(".weight") else key


def _from_state_dict(state: Mapping, func: str) -> Iterator[WeightMatrix]:
    bad = [k for k in state if not isinstance(k, str)]
    if bad:
        raise fail("source", func, "a state dict with string keys", f"keys {bad[:3]}")
    seen: set = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        if not (key.endswith(".weight") or key == "weight"):
            continue
        if value.is_meta:
            raise fail("source", func, "a state dict whose tensors hold data (not on the 'meta' "
                       "device)", f"meta tensor {key!r}")
        name = _strip_weight(key)
        ptr = (value.data_ptr(), tuple(value.shape))
        if value.data_ptr() != 0 and ptr in seen:
            continue
        seen.add(ptr)
        yield WeightMatrix(name, _key_kind(name, value.dim()), tuple(value.shape), value.numel(),
                           (lambda v=value: v))


def _tied_duplicates(where: Mapping[str, Path], config: Optional[dict], func: str) -> set:
    """Keys transformers would replace by the input embedding when it builds the model.

    With ``"tie_word_embeddings": true`` in the ``config.json`` next to the files,
    ``from_pretrained`` ties ``lm_head.weight`` to the input embedding unless the checkpoint
    stores both with different values; the tied module is then counted once.
    """
    if config is None:
        return set()
    tied = config.get("tie_word_embeddings",
                      (config.get("text_config") or {}).get("tie_word_embeddings"))
    if tied is not True or _TIED_OUTPUT_KEY not in where:
        return set()

    def load(key: str) -> torch.Tensor:
        with open_safetensors(where[key], func=func) as h:
            return h.get_tensor(key)

    head = load(_TIED_OUTPUT_KEY)
    for key in where:
        if key != _TIED_OUTPUT_KEY and _key_kind(_strip_weight(key), 2) == "embedding":
            emb = load(key)
            if emb.shape == head.shape and torch.equal(emb, head):
                return {_TIED_OUTPUT_KEY}
    return set()


def _config_order(folder: Path, config: Optional[dict]) -> Optional[dict[str, int]]:
    """``{parameter key: position}`` in the module order of the model the config describes.

    The model is built on the ``meta`` device (no memory, no weights); ``None`` when there is no
    config or transformers cannot build it.
    """
    if config is None:
        return None
    try:
        import logging

        from .loading import auto_model_class
        from transformers import CONFIG_MAPPING

        hf_logger = logging.getLogger("transformers")
        level = hf_logger.level
        hf_logger.setLevel(logging.ERROR)
        try:
            cfg = AutoConfig.from_pretrained(str(folder))
            with torch.device("meta"):
                model = auto_model_class(cfg).from_config(cfg)
        finally:
            hf_logger.setLevel(level)
    except Exception:  # no transformers, an unknown architecture, custom code: natural order
        return None
    keys = [k for k, _ in model.named_parameters(remove_duplicate=False)]
    order = {k: i for i, k in enumerate(keys)}
    prefix = getattr(model, "base_model_prefix", "") or ""
    if prefix:  # checkpoints of the bare base model store keys without the prefix
        for k, i in list(order.items()):
            if k.startswith(prefix + "."):
                order.setdefault(k[len(prefix) + 1:], i)
    return order


def _from_safetensors(files: Sequence[Path], func: str) -> Iterator[WeightMatrix]:
    where: dict[str, Path] = {}
    shapes: dict[str, tuple] = {}
    for f in files:
        with open_safetensors(f, func=func) as handle:
            for key in handle.keys():
                where[key] = f
                if key.endswith(".weight"):
                    shapes[key] = tuple(handle.get_slice(key).get_shape())
    folder = files[0].parent
    config = read_config(folder)
    skip = _tied_duplicates(where, config, func)
    keys = [k for k, s in shapes.items() if len(s) >= 2 and k not in skip]
    order = _config_order(folder, config)
    if order is not None:
        last = len(order)
        keys.sort(key=lambda k: (order.get(k, last), natural_key(k)))
    else:
        keys.sort(key=natural_key)
    for key in keys:
        shape = shapes[key]
        name = _strip_weight(key)
        n = 1
        for s in shape:
            n *= s

        def load(f=where[key], key=key) -> torch.Tensor:
            with open_safetensors(f, func=func) as h:
                try:
                    return h.get_tensor(key)
                except Exception as err:
                    raise fail("source", func, f"a readable .safetensors file (reading {key!r} "
                               f"failed: {type(err).__name__}: {err})", str(f)) from None

        yield WeightMatrix(name, _key_kind(name, len(shape)), shape, n, load)


def _from_gguf(path: Path, func: str) -> Optional[list[WeightMatrix]]:
    """The weight matrices of a GGUF file, each dequantised only when loaded; ``None`` when
    this architecture (or this transformers version) is not supported by the streaming reader.

    The file is memory-mapped by ``gguf.GGUFReader``; the names are the Hugging Face keys that
    transformers' GGUF loader maps the GGUF tensors to, the values what it loads (``gguf``'s
    ``dequantize`` and the architecture's tensor processor, e.g. LLaMA's un-permuted q/k rows),
    in the module order of the model the GGUF metadata describes (built on the meta device).
    """
    try:
        import gguf
        from transformers import CONFIG_MAPPING
        from transformers.modeling_gguf_pytorch_utils import (TENSOR_PROCESSORS, TensorProcessor,
                                                              get_gguf_hf_weights_map,
                                                              load_gguf_checkpoint, read_field)
        from .loading import auto_model_class
    except ImportError:
        return None
    import logging

    hf_logger = logging.getLogger("transformers")
    level = hf_logger.level
    hf_logger.setLevel(logging.ERROR)
    try:
        reader = gguf.GGUFReader(str(path))
        arch = str(read_field(reader, "general.architecture")[0])
        processor_class = TENSOR_PROCESSORS.get(arch, TensorProcessor)
        # one GGUF tensor -> one weight, at most rows permuted (LLaMA's q/k); architectures whose
        # processor splits, merges or transposes tensors (MoE experts, GPT-2's fused QKV) are
        # left to transformers' own loader
        if processor_class not in (TensorProcessor, TENSOR_PROCESSORS.get("llama")):
            return None
        parsed = load_gguf_checkpoint(str(path), return_tensors=False)["config"]
        processor = processor_class(config=parsed)
        # what AutoConfig.from_pretrained(folder, gguf_file=...) builds, without parsing the
        # metadata (tokenizer included) a third time
        config = CONFIG_MAPPING[parsed["model_type"]].from_dict(dict(parsed))
        with torch.device("meta"):
            model = auto_model_class(config).from_config(config)
        mapping = get_gguf_hf_weights_map(model, processor)
    except Exception:  # an architecture transformers cannot map: the dequantised cache decides
        return None
    finally:
        hf_logger.setLevel(level)
    order = {k: i for i, (k, _) in enumerate(model.named_parameters(remove_duplicate=False))}
    found = []
    for tensor in reader.tensors:
        key = mapping.get(tensor.name)
        if key is None or not key.endswith(".weight") or len(tensor.shape) < 2:
            continue
        shape = tuple(int(d) for d in reversed(tensor.shape))  # GGUF lists dims fastest first

        def load(tensor=tensor, shape=shape) -> torch.Tensor:
            values = gguf.dequantize(tensor.data, tensor.tensor_type).reshape(shape)
            values = processor.process(weights=values, name=tensor.name).weights
            # a copy: unquantised tensors come back as read-only views of the memory map
            return torch.from_numpy(np.array(values, copy=True, order="C"))

        name = _strip_weight(key)
        n = 1
        for d in shape:
            n *= d
        found.append((order.get(key, len(order)), natural_key(key),
                      WeightMatrix(name, _key_kind(name, len(shape)), shape, n, load)))
    found.sort(key=lambda item: item[:2])
    return [w for _, _, w in found]


def _iter_path(path: Path, func: str) -> Iterator[WeightMatrix]:
    files = safetensors_files(path)
    if files:
        yield from _from_safetensors(files, func)
        return
    gguf = gguf_file(path)
    if gguf is not None:
        streamed = _from_gguf(gguf, func)
        if streamed is not None:
            yield from streamed
            return
        from .loading import gguf_safetensors

        folder = gguf_safetensors(gguf, func=func)
        yield from _from_safetensors(safetensors_files(folder), func)
        return
    if path.is_dir():
        from .loading import load_model

        model, _ = load_model(path, tokenizer=False)
        yield from _from_module(model, func)
        return
    raise fail("source", func, "a .safetensors or .gguf file, a folder of them, a model folder or "
               "a hub id", str(path))


def _iter_source(source: Any, func: str) -> Iterator[WeightMatrix]:
    if isinstance(source, torch.nn.Module):
        yield from _from_module(source, func)
    elif isinstance(source, torch.Tensor):
        if source.dim() < 2:
            raise fail("source", func, "a 2-D (or convolutional) tensor",
                       f"a tensor of shape {tuple(source.shape)}")
        if source.is_meta:
            raise fail("source", func, "a tensor with data (not on the 'meta' device)",
                       f"a meta tensor of shape {tuple(source.shape)}")
        yield WeightMatrix("weight", "tensor", tuple(source.shape), source.numel(),
                           (lambda s=source: s.detach()))
    elif isinstance(source, Mapping):
        yield from _from_state_dict(source, func)
    elif isinstance(source, (str, os.PathLike)):
        path = resolve_local(source, func=func)
        if path is None:
            path = resolve_hub_id(os.fspath(source), func=func)
        yield from _iter_path(path, func)
    else:
        raise fail("source", func, "an nn.Module, a path or hub id, a state dict or a tensor",
                   type(source).__name__)


def list_weight_matrices(source: Any, *, include: Pattern = None, exclude: Pattern = None,
                         func: str = "list_weight_matrices") -> list[WeightMatrix]:
    """List the analysable weight matrices of ``source`` (see the module docstring).

    Parameters
    ----------
    source : nn.Module, str, os.PathLike, Mapping or torch.Tensor
        Model, safetensors or GGUF file or folder, model folder or hub id, state dict, or tensor.
    include, exclude : str, sequence of str or callable, optional
        Keep names matching ``include`` (``re.search``) and not matching ``exclude``.
    func : str
        The public function named in error messages.

    Returns
    -------
    list of WeightMatrix
        In model order.
    """
    keep = name_filter(include, exclude, func=func)
    return [w for w in _iter_source(source, func) if keep(w.name)]
