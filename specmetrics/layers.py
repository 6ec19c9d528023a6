"""Finding the weight matrices of a model, a checkpoint or a tensor.

:func:`list_weight_matrices` turns any supported *source* into a list of
:class:`WeightMatrix` records, keyed by qualified module name, without loading
more than it must: a safetensors file or folder is read matrix by matrix and the
model is never built.

Supported sources
-----------------
``torch.nn.Module``
    ``Linear``, GPT-2 ``Conv1D`` (fused QKV analysed as one matrix), ``Conv1d`` /
    ``Conv2d`` (one matrix per kernel position, pooled), ``Embedding``. Names are
    those of ``named_modules()``; a weight shared by several modules (tied
    embeddings) is listed once, under its first name.
a path to a ``.safetensors`` file, or a folder of shards
    Every tensor whose key ends in ``.weight`` and has 2 or more dimensions; the
    name is the key without ``.weight``. 4-D tensors are convolutions; 2-D tensors
    whose last name component contains ``embed`` (or is ``wte``/``wpe``) are
    embeddings, the rest linear. With ``"tie_word_embeddings": true`` in the
    ``config.json`` beside them, an ``lm_head.weight`` equal to the input
    embedding is skipped, as ``from_pretrained`` ties it (counted once).
a folder or Hugging Face hub id without safetensors
    Loaded with ``transformers.AutoModel.from_pretrained`` (optional dependency).
a hub id
    Its safetensors files are fetched with ``huggingface_hub`` and read as above.
a mapping (state dict)
    As safetensors, keyed by the state-dict keys.
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

import torch

from ._checks import ParameterError, fail

__all__ = ["WeightMatrix", "list_weight_matrices", "name_filter", "split_matrices"]

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
        One matrix per kernel position for convolutions (``rf = prod(kernel)``),
        else ``rf = 1``.
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
    raise ParameterError(f"The weight of a {kind} layer must have 2 or more dimensions. Got shape {tuple(weight.shape)}.")


def name_filter(include: Pattern, exclude: Pattern, *, func: str = "esd") -> Callable[[str], bool]:
    """Combine ``include``/``exclude`` into one predicate on qualified names.

    Each may be ``None``, a regular expression (``re.search``), a sequence of them
    (any matches) or a callable ``name -> bool``.
    """

    def compile_one(p: Pattern, label: str) -> Optional[Callable[[str], bool]]:
        if p is None:
            return None
        if callable(p):
            return p
        try:
            pats = [p] if isinstance(p, str) else list(p)
            regs = [re.compile(x) for x in pats]
        except (re.error, TypeError) as err:
            raise fail(label, func, "a regular expression, a sequence of them or a callable", p) from err
        return lambda name: any(r.search(name) for r in regs)

    inc, exc = compile_one(include, "include"), compile_one(exclude, "exclude")

    def keep(name: str) -> bool:
        if inc is not None and not inc(name):
            return False
        if exc is not None and exc(name):
            return False
        return True

    return keep


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
    cls = type(module).__name__
    if cls == "Conv1D":  # transformers.pytorch_utils.Conv1D (GPT-2), weight (in, out)
        return "conv1d"
    return None


def _from_module(model: torch.nn.Module) -> Iterator[WeightMatrix]:
    seen: set = set()
    for name, module in model.named_modules():
        kind = _module_kind(module)
        weight = getattr(module, "weight", None)
        if kind is None or not isinstance(weight, torch.Tensor) or weight.dim() < 2:
            continue
        key = (weight.data_ptr(), tuple(weight.shape), weight.dtype)
        if weight.data_ptr() != 0 and key in seen:
            continue  # tied weight: counted once, under its first name
        seen.add(key)
        yield WeightMatrix(name, kind, tuple(weight.shape), weight.numel(), (lambda w=weight: w.detach()))


# ---------------------------------------------------------------------------
# state dicts and safetensors
# ---------------------------------------------------------------------------

_EMBED_LAST = re.compile(r"embed|^wte$|^wpe$")


def _key_kind(name: str, ndim: int) -> str:
    if ndim >= 3:
        return "conv2d" if ndim == 4 else "conv1d"
    last = name.rsplit(".", 1)[-1]
    return "embedding" if _EMBED_LAST.search(last) else "linear"


def _from_state_dict(state: Mapping) -> Iterator[WeightMatrix]:
    seen: set = set()
    for key, value in state.items():
        if not isinstance(value, torch.Tensor) or value.dim() < 2:
            continue
        if not (key.endswith(".weight") or key == "weight"):
            continue
        name = key[: -len(".weight")] if key.endswith(".weight") else key
        ptr = (value.data_ptr(), tuple(value.shape))
        if value.data_ptr() != 0 and ptr in seen:
            continue
        seen.add(ptr)
        yield WeightMatrix(name, _key_kind(name, value.dim()), tuple(value.shape), value.numel(), (lambda v=value: v))


def _safetensors_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path] if path.suffix == ".safetensors" else []
    files = sorted(path.glob("*.safetensors"))
    return files


_TIED_OUTPUT_KEY = "lm_head.weight"


def _tied_duplicates(files: Sequence[Path]) -> set:
    """Keys transformers would replace by the input embedding when it builds the model.

    With ``"tie_word_embeddings": true`` in the ``config.json`` next to the files,
    ``from_pretrained`` ties ``lm_head.weight`` to the input embedding unless the
    checkpoint stores both with different values; the tied module is then counted
    once. A stored ``lm_head.weight`` equal to an embedding is skipped likewise.
    """
    import json

    from safetensors import safe_open

    config_path = files[0].parent / "config.json"
    try:
        config = json.loads(config_path.read_text())
    except (OSError, ValueError):
        return set()
    tied = config.get("tie_word_embeddings", (config.get("text_config") or {}).get("tie_word_embeddings"))
    if tied is not True:
        return set()
    where: dict = {}
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            for key in handle.keys():
                where[key] = f
    if _TIED_OUTPUT_KEY not in where:
        return set()

    def load(key: str) -> torch.Tensor:
        with safe_open(str(where[key]), framework="pt") as h:
            return h.get_tensor(key)

    head = load(_TIED_OUTPUT_KEY)
    for key in where:
        name = key[: -len(".weight")] if key.endswith(".weight") else key
        if key != _TIED_OUTPUT_KEY and _key_kind(name, 2) == "embedding":
            emb = load(key)
            if emb.shape == head.shape and torch.equal(emb, head):
                return {_TIED_OUTPUT_KEY}
    return set()


def _from_safetensors(files: Sequence[Path]) -> Iterator[WeightMatrix]:
    from safetensors import safe_open

    skip = _tied_duplicates(files)
    for f in files:
        with safe_open(str(f), framework="pt") as handle:
            keys = list(handle.keys())
            for key in keys:
                if not key.endswith(".weight") or key in skip:
                    continue
                sl = handle.get_slice(key)
                shape = tuple(sl.get_shape())
                if len(shape) < 2:
                    continue
                name = key[: -len(".weight")]
                n = 1
                for s in shape:
                    n *= s

                def load(f=f, key=key) -> torch.Tensor:
                    with safe_open(str(f), framework="pt") as h:
                        return h.get_tensor(key)

                yield WeightMatrix(name, _key_kind(name, len(shape)), shape, n, load)


def _load_pretrained(source: str) -> torch.nn.Module:
    try:
        from transformers import AutoModel
    except ImportError as err:
        raise ImportError(
            f"Loading {source!r} needs transformers: pip install 'specmetrics[hf]'"
        ) from err
    return AutoModel.from_pretrained(source)


def _hub_snapshot(repo_id: str) -> Optional[Path]:
    """Download a hub repository's safetensors; None when it has none."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ImportError(f"Reading the hub id {repo_id!r} needs huggingface_hub: pip install 'specmetrics[hf]'") from err
    local = Path(snapshot_download(repo_id, allow_patterns=["*.safetensors", "*.json"]))
    return local if _safetensors_files(local) else None


def _looks_local(source: Any) -> bool:
    """A path object, or a string no hub id can be (absolute, relative, ``~``, a file suffix)."""
    if not isinstance(source, str):
        return True
    return source.startswith(("/", "./", "../", "~", "\\")) or source.endswith((".safetensors", ".bin", ".pt", ".pth"))


def _iter_source(source: Any) -> Iterator[WeightMatrix]:
    if isinstance(source, torch.nn.Module):
        yield from _from_module(source)
    elif isinstance(source, torch.Tensor):
        if source.dim() < 2:
            raise fail("source", "esd", "a 2-D (or convolutional) tensor", f"a tensor of shape {tuple(source.shape)}")
        yield WeightMatrix("weight", "tensor", tuple(source.shape), source.numel(), (lambda s=source: s.detach()))
    elif isinstance(source, Mapping):
        yield from _from_state_dict(source)
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists() and _looks_local(source):
            raise fail("source", "esd", "an existing file or folder, or a Hugging Face hub id", str(source))
        if path.exists():
            files = _safetensors_files(path)
            if files:
                yield from _from_safetensors(files)
            elif path.is_dir():
                yield from _from_module(_load_pretrained(str(path)))
            else:
                raise fail("source", "esd", "a .safetensors file, a folder of them, a model folder or a hub id", str(source))
        else:
            local = _hub_snapshot(str(source))
            if local is not None:
                yield from _from_safetensors(_safetensors_files(local))
            else:
                yield from _from_module(_load_pretrained(str(source)))
    else:
        raise fail(
            "source",
            "esd",
            "an nn.Module, a path or hub id, a state dict or a tensor",
            type(source).__name__,
        )


def list_weight_matrices(source: Any, *, include: Pattern = None, exclude: Pattern = None) -> list[WeightMatrix]:
    """List the analysable weight matrices of ``source`` (see the module docstring).

    Parameters
    ----------
    source : nn.Module, str, os.PathLike, Mapping or torch.Tensor
        Model, safetensors file or folder, model folder or hub id, state dict, or tensor.
    include, exclude : str, sequence of str or callable, optional
        Keep names matching ``include`` (``re.search``) and not matching ``exclude``.

    Returns
    -------
    list of WeightMatrix
        In model (or file) order.
    """
    keep = name_filter(include, exclude)
    return [w for w in _iter_source(source) if keep(w.name)]
