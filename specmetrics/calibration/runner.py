"""Layer-sequential calibration: run calibration data through a model one block at a time.

How the inputs of the blocks are captured
-----------------------------------------
For each calibration sequence the *whole model* is called once (``use_cache=False``) with every
block's ``forward`` temporarily replaced (on the instance, so attribute lookups on the block still
work) by a recorder that does not run the block:

- block 0's recorder stores the hidden states it receives (the embeddings' output), for every
  sequence;
- on the first sequence, every block's recorder stores the other positional and keyword arguments
  the model passes it (attention mask, position ids, rotary ``position_embeddings`` computed once at
  the model level, ...) and returns its hidden states unchanged, so that the model loop reaches
  the next block; the last block's recorder then stops the forward pass (nothing after the blocks
  is computed); on later sequences block 0's recorder stops it at once.

Every calibration sequence has the same length and no padding, so the arguments the model builds
for a block are the same for each sequence; they are recorded per block (models such as Qwen2
with sliding-window layers pass different attention masks to different blocks). This works for
decoder-only models (LLaMA, Mistral, Qwen2, GPT-NeoX, GPT-2, OPT, ...) and BERT-style encoders:
any model whose blocks sit in one ``nn.ModuleList`` and get from the model everything except the
previous block's output. It does not support models that pass a block's extra outputs to the next
block (T5's position bias) or encoder-decoder stacks.

Then, block by block (:class:`SequentialRunner`): the block is moved to the compute device, its
prunable matrices' inputs are accumulated into statistics by forward hooks while every sequence
goes through it (matrices that receive the same input tensor, such as q/k/v or gate/up, share one
statistic, computed once), the caller changes the block's weights, the block is run again to get
its outputs (only if the caller changed it), and those outputs are the next block's inputs.
Memory: the calibration activations (two buffers of shape (nsamples, seqlen, hidden)), one block
and its statistics.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional

import torch
from torch import nn

from ..exceptions import UnsupportedModelError
from ..models.blocks import BlockLayout, PrunableModule, block_device

__all__ = ["BlockStep", "SequentialRunner", "capture_block_inputs", "CapturedInputs",
           "output_tensor", "move_to"]

logger = logging.getLogger(__name__)


class _StopForward(Exception):
    """Raised by a recorder to end the model's forward pass early."""


def move_to(obj: Any, device: torch.device) -> Any:
    """Move every tensor inside nested tuples/lists/dicts to ``device``."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(move_to(o, device) for o in obj)
    if isinstance(obj, list):
        return [move_to(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: move_to(v, device) for k, v in obj.items()}
    return obj


def _is_cache(obj: Any) -> bool:
    try:
        from transformers.cache_utils import Cache
    except ImportError:  # transformers absent: no cache objects either
        return False
    return isinstance(obj, Cache)


def _strip_caches(args: tuple, kwargs: dict) -> tuple[tuple, dict]:
    """Replace key/value cache objects by ``None``: calibration never uses a cache."""
    args = tuple(None if _is_cache(a) else a for a in args)
    kwargs = {k: (None if _is_cache(v) else v) for k, v in kwargs.items()}
    return args, kwargs


def _model_accepts(model: nn.Module, name: str) -> bool:
    import inspect

    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return name in params


def _input_device(model: nn.Module) -> torch.device:
    get = getattr(model, "get_input_embeddings", None)
    emb = get() if callable(get) else None
    if isinstance(emb, nn.Module):
        for p in emb.parameters():
            return p.device
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


@dataclass
class CapturedInputs:
    inputs: torch.Tensor  # (n, L, d) hidden states entering block 0
    args: list  # per block: positional arguments after the hidden states
    kwargs: list  # per block: keyword arguments


@torch.no_grad()
def capture_block_inputs(model: nn.Module, layout: BlockLayout, input_ids: torch.Tensor, *,
                         device: Optional[torch.device] = None) -> CapturedInputs:
    """The hidden states entering block 0 for every sequence, and each block's other arguments.

    Parameters
    ----------
    model : nn.Module
        A Hugging Face model (or any model whose forward takes ``input_ids`` first).
    layout : BlockLayout
    input_ids : torch.Tensor, shape (nsamples, seqlen)
    device : torch.device, optional
        Where the captured hidden states are stored (default: where the model produced them).

    Returns
    -------
    CapturedInputs
    """
    n = int(input_ids.shape[0])
    blocks = layout.blocks
    last = len(blocks) - 1
    state: dict[str, Any] = {"sample": 0, "inputs": None}
    per_block_args: list = [None] * len(blocks)
    per_block_kwargs: list = [None] * len(blocks)

    def make_recorder(index: int):
        def recorder(*args, **kwargs):
            if args:
                hidden, rest = args[0], tuple(args[1:])
            elif "hidden_states" in kwargs:
                kwargs = dict(kwargs)
                hidden, rest = kwargs.pop("hidden_states"), ()
            else:
                raise UnsupportedModelError(f"block {layout.names[index]!r} was called without hidden "
                                   "states (no positional argument and no 'hidden_states').")
            if index == 0:
                if state["inputs"] is None:
                    shape = (n,) + tuple(hidden.shape[1:])
                    where = hidden.device if device is None else device
                    state["inputs"] = torch.empty(shape, dtype=hidden.dtype, device=where)
                if hidden.shape[0] != 1:
                    raise UnsupportedModelError(f"expected a batch of one sequence, got hidden states of "
                                       f"shape {tuple(hidden.shape)}")
                state["inputs"][state["sample"]] = hidden[0].to(state["inputs"].device)
            if state["sample"] == 0:
                rest, kw = _strip_caches(rest, kwargs)
                per_block_args[index] = move_to(rest, device) if device is not None else rest
                per_block_kwargs[index] = move_to(kw, device) if device is not None else kw
                if index == last:
                    raise _StopForward
                return hidden
            raise _StopForward
        return recorder

    saved = []
    for index, block in enumerate(blocks):
        saved.append(block.__dict__.get("forward", None))
        block.forward = make_recorder(index)
    call_kwargs = {"use_cache": False} if _model_accepts(model, "use_cache") else {}
    in_device = _input_device(model)
    try:
        for i in range(n):
            state["sample"] = i
            try:
                model(input_ids[i:i + 1].to(in_device), **call_kwargs)
            except _StopForward:
                pass
            else:
                raise UnsupportedModelError(f"the forward pass of {type(model).__name__} did not go "
                                   f"through its blocks in {layout.container!r}.")
    finally:
        for block, previous in zip(blocks, saved):
            if previous is None:
                del block.forward
            else:
                block.forward = previous
    missing = [layout.names[i] for i, kw in enumerate(per_block_kwargs) if kw is None]
    if missing:
        raise UnsupportedModelError(f"the forward pass of {type(model).__name__} never called the blocks "
                           f"{missing}; layer-sequential calibration needs every block called "
                           "once per forward pass.")
    return CapturedInputs(inputs=state["inputs"], args=per_block_args, kwargs=per_block_kwargs)


@dataclass
class BlockStep:
    """One block of a :class:`SequentialRunner` pass, handed to the caller.

    Attributes
    ----------
    index : int
    name : str
        Qualified block name.
    block : nn.Module
        The block, on ``device`` while the step lasts.
    modules : dict of str to PrunableModule
        Its prunable matrices.
    device : torch.device
        Where the block runs.
    inputs : torch.Tensor or None
        Hidden states entering the block, shape (nsamples, seqlen, hidden); ``None`` without
        calibration data.
    stats : dict of str to statistic, or None
        One accumulated statistic per prunable matrix (the same object for matrices that share
        their input); ``None`` when no statistic was asked for.
    modified : bool
        Set by the caller: whether the block's weights were changed (default ``True``); the block
        is re-run for its outputs only if so (or if ``rerun_hooks`` is set).
    rerun_hooks : dict of str to callable
        Set by the caller: forward hooks ``hook(module, args, output)`` registered on the named
        matrices during the re-run only.
    """

    index: int
    name: str
    block: nn.Module
    modules: dict
    device: torch.device
    inputs: Optional[torch.Tensor]
    stats: Optional[dict]
    modified: bool = True
    rerun_hooks: dict = field(default_factory=dict)


def output_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    for attr in ("last_hidden_state", "hidden_states"):
        hidden = getattr(out, attr, None)
        if isinstance(hidden, torch.Tensor):
            return hidden
    raise UnsupportedModelError(f"cannot read hidden states from a block output of type "
                       f"{type(out).__name__}")


class SequentialRunner:
    """Iterate over the blocks of a model with its calibration activations, one block at a time.

    Parameters
    ----------
    model : nn.Module
    layout : BlockLayout
        From :func:`~specmetrics.pruning.blocks.find_blocks`.
    input_ids : torch.Tensor or None
        Calibration token ids of shape (nsamples, seqlen); ``None``: no forward pass at all (the
        blocks are only visited, e.g. for magnitude pruning).
    device : torch.device or str, optional
        Where each block runs: it is moved there for its step and moved back afterwards. ``None``:
        each block runs where its parameters are.
    make_stat : callable, optional
        ``make_stat(in_features) -> statistic`` with ``.update(x)``; one per distinct input of
        the block's prunable matrices. ``None``: no statistics (no hooks, no statistics pass).
    progress : bool, default False
        Show a tqdm bar over the blocks.
    desc : str
        Label of the bar.

    Notes
    -----
    Iterating yields a :class:`BlockStep` per block; the caller may change the block's weights
    before asking for the next step. After the loop, :attr:`outputs` holds the last block's
    outputs (``None`` without calibration data). The model is put in ``eval`` mode during the pass
    (restored afterwards); the forward passes run under ``torch.no_grad()``.
    """

    def __init__(self, model: nn.Module, layout: BlockLayout, input_ids: Optional[torch.Tensor],
                 *, device=None, make_stat: Optional[Callable[[int], Any]] = None,
                 progress: bool = False, desc: str = "blocks"):
        self.model = model
        self.layout = layout
        self.input_ids = input_ids
        self.device = torch.device(device) if device is not None else None
        self.make_stat = make_stat
        self.progress = progress
        self.desc = desc
        self.outputs: Optional[torch.Tensor] = None

    # -- one block ---------------------------------------------------------------------------
    @torch.no_grad()
    def _forward_all(self, block, inputs, outputs, args, kwargs, after_each=None):
        for i in range(inputs.shape[0]):
            out = block(inputs[i:i + 1], *args, **kwargs)
            outputs[i] = output_tensor(out)[0].to(outputs.device)
            if after_each is not None:
                after_each()

    def _stats_pass(self, step: BlockStep, inputs, outputs, args, kwargs) -> dict:
        modules: dict[str, PrunableModule] = step.modules
        seen: list[tuple[str, torch.Tensor]] = []
        handles = []

        def hook_for(name):
            def hook(_module, hook_args, _output):
                seen.append((name, hook_args[0]))
            return hook

        for name, pm in modules.items():
            handles.append(pm.module.register_forward_hook(hook_for(name)))
        groups: Optional[list[tuple[str, ...]]] = None
        stats: dict[str, Any] = {}

        def consume():
            nonlocal groups
            # matrices fed the very same tensor object share one statistic
            current: list[tuple[list[str], torch.Tensor]] = []
            for name, x in seen:
                for names, y in current:
                    if x is y:
                        names.append(name)
                        break
                else:
                    current.append(([name], x))
            shape = [tuple(names) for names, _ in current]
            if groups is None:
                groups = shape
                missing = [n for n in modules if not any(n in g for g in groups)]
                if missing:
                    raise UnsupportedModelError(f"the forward pass of block {step.name!r} never called "
                                       f"{missing}")
                for names, x in current:
                    stat = self.make_stat(int(x.shape[-1]))
                    for n in names:
                        stats[n] = stat
                if any(len(g) > 1 for g in groups):
                    logger.debug("block %s: shared inputs %s", step.name,
                                 [g for g in groups if len(g) > 1])
            elif shape != groups:
                raise UnsupportedModelError(f"block {step.name!r} routed its inputs differently for "
                                   f"different calibration sequences ({groups} vs {shape}).")
            for names, x in current:
                stats[names[0]].update(x)
            seen.clear()

        try:
            self._forward_all(step.block, inputs, outputs, args, kwargs, after_each=consume)
        finally:
            for h in handles:
                h.remove()
            seen.clear()
        return stats

    # -- the pass ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[BlockStep]:
        from tqdm.auto import tqdm

        model, layout = self.model, self.layout
        was_training = model.training
        model.eval()
        moved: Optional[tuple[nn.Module, torch.device]] = None
        bar = None
        try:
            captured = None
            inputs = outputs = None
            if self.input_ids is not None:
                captured = capture_block_inputs(model, layout, self.input_ids,
                                                device=self.device)
                inputs = captured.inputs
                outputs = torch.empty_like(inputs)
            bar = tqdm(range(len(layout)), desc=self.desc, unit="block",
                       disable=not self.progress)
            for index in bar:
                block = layout.blocks[index]
                home = block_device(block)
                device = self.device or home or torch.device("cpu")
                if self.device is not None and home is not None and home != device:
                    block.to(device)
                    moved = (block, home)
                if captured is not None:
                    args = move_to(captured.args[index], device)
                    kwargs = move_to(captured.kwargs[index], device)
                    if inputs.device != device:
                        inputs = inputs.to(device)
                        outputs = torch.empty_like(inputs)
                step = BlockStep(index=index, name=layout.names[index], block=block,
                                 modules=layout.modules_of(index), device=device,
                                 inputs=inputs, stats=None)
                have_outputs = False
                if captured is not None and self.make_stat is not None and step.modules:
                    step.stats = self._stats_pass(step, inputs, outputs, args, kwargs)
                    have_outputs = True
                yield step
                if captured is not None and (step.modified or step.rerun_hooks
                                             or not have_outputs):
                    handles = [step.modules[n].module.register_forward_hook(h)
                               for n, h in step.rerun_hooks.items()]
                    try:
                        self._forward_all(block, inputs, outputs, args, kwargs)
                    finally:
                        for h in handles:
                            h.remove()
                step.stats = None
                if moved is not None:
                    block.to(moved[1])
                    moved = None
                if captured is not None:
                    inputs, outputs = outputs, inputs
            self.outputs = inputs if captured is not None else None
        finally:
            if bar is not None:
                bar.close()
            if moved is not None:
                moved[0].to(moved[1])
            model.train(was_training)
