"""The repeated blocks of a model and the prunable weight matrices inside them.

**The one definition of the prunable matrices** (:func:`is_prunable`), used by allocation,
pruning, activations and every later analysis: a 2-D ``Linear`` (or transformers ``Conv1D``,
GPT-2) weight that sits inside a repeated block (``model.layers.3``, ``transformer.h.0``,
``bert.encoder.layer.5``, ...). Embeddings, ``lm_head``, poolers and projections outside the
blocks are not prunable. A 2-D tensor of a state dict or safetensors file whose name is not an
embedding counts as a ``Linear`` weight, so the same names come out of a model and of its
checkpoint.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .._validation import fail
from ..exceptions import UnsupportedModelError
from .matrices import WeightMatrix, list_weight_matrices
from .naming import block_of

__all__ = ["PRUNABLE_KINDS", "is_prunable", "PrunableModule", "BlockLayout", "find_blocks",
           "weight_out_in", "set_weight_out_in", "block_device"]

#: Kinds of :class:`~specmetrics.models.WeightMatrix` that may be pruned (``"tensor"``, a bare 2-D
#: tensor given directly, counts as a Linear weight).
PRUNABLE_KINDS = ("linear", "conv1d", "tensor")


def is_prunable(matrix: WeightMatrix) -> bool:
    """Whether a weight matrix is prunable by default (see the module docstring)."""
    return (matrix.kind in PRUNABLE_KINDS and len(matrix.shape) == 2
            and block_of(matrix.name) is not None)


@dataclass(frozen=True)
class PrunableModule:
    """One prunable weight matrix.

    Attributes
    ----------
    name : str
        Qualified module name.
    kind : str
        ``"linear"`` or ``"conv1d"`` (transformers ``Conv1D``: weight stored as (in, out)).
    block : int
        Index of the block it belongs to.
    out_features, in_features : int
    module : nn.Module
    """

    name: str
    kind: str
    block: int
    out_features: int
    in_features: int
    module: nn.Module = field(repr=False, compare=False)

    @property
    def n_params(self) -> int:
        return self.out_features * self.in_features


@dataclass(frozen=True)
class BlockLayout:
    """The repeated blocks of a model, in execution order, and their prunable matrices.

    Attributes
    ----------
    container : str
        Qualified name of the ``nn.ModuleList`` holding the blocks (``"model.layers"``).
    names : tuple of str
        Qualified name of each block (``"model.layers.0"``, ...), in order.
    modules : dict of str to PrunableModule
        Every prunable matrix, in model order.
    """

    container: str
    names: tuple[str, ...]
    blocks: tuple[nn.Module, ...] = field(repr=False)
    modules: dict = field(repr=False)

    def __len__(self) -> int:
        return len(self.names)

    def modules_of(self, index: int) -> dict[str, PrunableModule]:
        """The prunable matrices of block ``index``, in model order."""
        return {n: m for n, m in self.modules.items() if m.block == index}


def _is_conv1d_hf(module: nn.Module) -> bool:
    return type(module).__name__ == "Conv1D" and not isinstance(module, nn.Conv1d)


def weight_out_in(module: nn.Module) -> torch.Tensor:
    """The weight as (out_features, in_features) (a transposed view for a ``Conv1D``)."""
    weight = module.weight.detach()
    return weight.t() if _is_conv1d_hf(module) else weight


def set_weight_out_in(module: nn.Module, value: torch.Tensor) -> None:
    """Write a weight given as (out_features, in_features) into the module, in place."""
    target = module.weight
    new = value.t() if _is_conv1d_hf(module) else value
    if new.shape != target.shape:
        raise ValueError(f"weight of shape {tuple(new.shape)} does not fit "
                         f"{type(module).__name__} weight {tuple(target.shape)}")
    with torch.no_grad():
        target.copy_(new.to(device=target.device, dtype=target.dtype))


def find_blocks(model: nn.Module, *, func: str = "prune") -> BlockLayout:
    """Find the repeated blocks of ``model`` and the prunable matrices inside them.

    Parameters
    ----------
    model : nn.Module
    func : str
        Function named in error messages.

    Returns
    -------
    BlockLayout

    Raises
    ------
    ParameterError
        When ``model`` is not an ``nn.Module`` (or holds meta weights).
    UnsupportedModelError
        When no Linear/Conv1D sits inside numbered blocks, or the blocks do not form one
        ``nn.ModuleList`` (encoder-decoder models have two stacks and are not supported).
    """
    if not isinstance(model, nn.Module):
        raise fail("model", func, "a torch.nn.Module", type(model).__name__)
    found: dict[str, tuple[str, str, int]] = {}  # name -> (kind, block prefix, index)
    for wm in list_weight_matrices(model, func=func):
        if not is_prunable(wm):
            continue
        where = block_of(wm.name)
        found[wm.name] = (wm.kind, where[0], where[1])
    if not found:
        raise UnsupportedModelError(
            f"{func}: {type(model).__name__} has no Linear or Conv1D layers inside numbered "
            "repeated blocks (model.layers.0, transformer.h.0, ...): nothing is prunable")
    prefixes = {prefix for _, prefix, _ in found.values()}
    containers = {p.rpartition(".")[0] for p in prefixes}
    if len(containers) != 1:
        raise UnsupportedModelError(
            f"{func}: {type(model).__name__} has more than one stack of repeated blocks "
            f"({sorted(containers)}); only decoder-only and encoder-only models are supported")
    container_name = containers.pop()
    container = model.get_submodule(container_name) if container_name else model
    if not isinstance(container, (nn.ModuleList, nn.Sequential)):
        raise UnsupportedModelError(
            f"{func}: the blocks of {type(model).__name__} must sit in an nn.ModuleList "
            f"({container_name!r} is a {type(container).__name__})")
    children = list(container.named_children())
    names = tuple(f"{container_name}.{child}" if container_name else child
                  for child, _ in children)
    index_of = {n: i for i, n in enumerate(names)}
    modules: dict[str, PrunableModule] = {}
    for name, (kind, prefix, _) in found.items():
        module = model.get_submodule(name)
        w = weight_out_in(module)
        modules[name] = PrunableModule(name=name, kind=kind, block=index_of[prefix],
                                       out_features=int(w.shape[0]), in_features=int(w.shape[1]),
                                       module=module)
    return BlockLayout(container=container_name, names=names,
                       blocks=tuple(m for _, m in children), modules=modules)


def block_device(block: nn.Module) -> Optional[torch.device]:
    """The device of a block's first parameter (or buffer); ``None`` for an empty block."""
    for tensor in block.parameters():
        return tensor.device
    for tensor in block.buffers():
        return tensor.device
    return None
