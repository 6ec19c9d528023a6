"""Where activations are measured: the *sites* of a transformer block.

A site is one tensor inside one repeated block, read by a forward hook on one module:

========== ====================================================== ============ =======
kind       tensor                                                 hook         width
========== ====================================================== ============ =======
qkv        input of q/k/v (one tensor shared by the three, GQA    q-like input hidden
           included; fused ``c_attn`` / ``query_key_value`` too)
o          input of the attention output projection              o input      heads·head_dim
gate_up    input of gate/up (the normalised MLP input)            gate input   hidden
silu_gate  the MLP activation's output, ``act(gate(x))``          act output   intermediate
down       input of the down projection                           down input   intermediate
residual   the block's output hidden states (residual stream)     block output hidden
========== ====================================================== ============ =======

``qkv``, ``o``, ``gate_up`` and ``down`` are the four inputs TEAL sparsifies; ``silu_gate`` is
the tensor CATS thresholds. For gated MLPs (LLaMA, Mistral, Qwen2) ``silu_gate`` is the output
of the MLP's activation module (``mlp.act_fn``), so ``down = silu_gate * up``. For MLPs without a
gate (GPT-2, OPT, GPT-NeoX, BERT) ``silu_gate`` is the activation output ``act(up(x))``, which
*is* the down projection's input: the ``silu_gate`` and ``down`` sites then see the same tensor.
Where no activation module can be found (an activation applied as a plain function), a gated
model gets no ``silu_gate`` site (with a warning) and an ungated one reads the down input.

Widths are read from the module shapes (``in_features`` of q/o/gate/down, ``out_features`` of
down for the residual); they are the config's ``hidden_size`` and ``intermediate_size`` (and
``num_heads · head_dim`` for ``o``), but stay right where a config is unusual.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Iterable, Optional

from torch import nn

from .._validation import fail, renamed_keywords
from ..models.naming import module_type
from ..models.blocks import BlockLayout, PrunableModule, find_blocks

__all__ = ["Site", "SITE_KINDS", "TEAL_KINDS", "CATS_KINDS", "find_sites", "parse_kinds",
           "mlp_gate_and_activation"]

logger = logging.getLogger(__name__)

#: Every site kind, in execution order inside a block.
SITE_KINDS: tuple[str, ...] = ("qkv", "o", "gate_up", "silu_gate", "down", "residual")
#: The sites TEAL sparsifies (inputs of the block's linear layers).
TEAL_KINDS: tuple[str, ...] = ("qkv", "o", "gate_up", "down")
#: The site CATS thresholds.
CATS_KINDS: tuple[str, ...] = ("silu_gate",)

# attribute names of an MLP's activation module, looked up in the gate/up module's parent
_ACT_NAMES = ("act_fn", "act", "activation_fn", "activation", "act_func", "intermediate_act_fn",
              "activation_function")


@dataclass(frozen=True)
class Site:
    """One activation tensor of one block.

    Attributes
    ----------
    name : str
        ``f"{block_name}.{kind}"``, e.g. ``"model.layers.3.qkv"``.
    kind : str
        One of :data:`SITE_KINDS`.
    block : int
        Index of the block.
    module : str
        Qualified name of the module the hook is registered on
        (``"model.layers.3.self_attn.q_proj"`` for ``qkv``; the block itself for ``residual``).
    hook : str
        ``"input"`` (the module's first input) or ``"output"`` (its output; a block's first
        output for ``residual``).
    width : int
        Size of the last dimension.
    """

    name: str
    kind: str
    block: int
    module: str
    hook: str
    width: int

    @property
    def block_name(self) -> str:
        """Qualified name of the block (``"model.layers.3"``)."""
        return self.name[: -len(self.kind) - 1]


def parse_kinds(kinds, *, func: str = "find_sites", name: str = "kinds") -> tuple[str, ...]:
    """Site kinds from ``None`` (all), one kind, a comma-separated string or a sequence."""
    if kinds is None:
        return SITE_KINDS
    if isinstance(kinds, str):
        tokens = [t.strip() for t in kinds.split(",") if t.strip()]
    else:
        try:
            tokens = list(kinds)
        except TypeError:
            raise fail(name, func, f"None or site kinds among {SITE_KINDS}", kinds) from None
    if not tokens or any(not isinstance(t, str) or t not in SITE_KINDS for t in tokens):
        raise fail(name, func, f"None or a non-empty selection of site kinds among {SITE_KINDS}",
                   kinds)
    chosen = set(tokens)
    return tuple(k for k in SITE_KINDS if k in chosen)


def _first(modules: dict[str, PrunableModule], types: Iterable[str]) -> Optional[PrunableModule]:
    """The first module (in model order) of the first type in ``types`` that is present."""
    typed = {}
    for pm in modules.values():
        typed.setdefault(module_type(pm.name), pm)
    for t in types:
        if t in typed:
            return typed[t]
    return None


def _activation_module(model: nn.Module, near: str) -> Optional[str]:
    """Qualified name of the activation module next to module ``near`` (in its parent)."""
    parent_name = near.rpartition(".")[0]
    parent = model.get_submodule(parent_name) if parent_name else model
    for attr in _ACT_NAMES:
        child = getattr(parent, attr, None)
        if isinstance(child, nn.Module) and not isinstance(child, (nn.Linear,)):
            # the attribute must be a registered child (not a shared module elsewhere)
            for child_name, registered in parent.named_children():
                if registered is child:
                    return f"{parent_name}.{child_name}" if parent_name else child_name
    return None


def mlp_gate_and_activation(model: nn.Module, layout: BlockLayout, index: int
                            ) -> tuple[Optional[str], Optional[str], bool]:
    """The MLP's gate-like projection and activation module of block ``index``.

    Returns
    -------
    (gate, act, gated) : (str or None, str or None, bool)
        ``gate``: the projection whose output goes through the activation (``gate_proj``; for
        ungated MLPs the up projection, ``c_fc`` / ``fc1`` / ``dense_h_to_4h``); ``act``: the
        activation module's qualified name, ``None`` if none is found; ``gated``: whether the MLP
        has a separate gate (``act(gate(x)) * up(x)``).
    """
    modules = layout.modules_of(index)
    gate = _first(modules, ("gate", "gate_up"))
    gated = gate is not None
    if gate is None:
        gate = _first(modules, ("up",))
    if gate is None:
        return None, None, False
    return gate.name, _activation_module(model, gate.name), gated


def _block_sites(model: nn.Module, layout: BlockLayout, index: int) -> list[Site]:
    block_name = layout.names[index]
    modules = layout.modules_of(index)
    qkv = _first(modules, ("qkv", "q", "k", "v"))
    o = _first(modules, ("o",))
    gate_up = _first(modules, ("gate_up", "gate", "up"))
    down = _first(modules, ("down",))
    out: list[Site] = []

    def add(kind: str, module: str, hook: str, width: int) -> None:
        out.append(Site(name=f"{block_name}.{kind}", kind=kind, block=index, module=module,
                        hook=hook, width=int(width)))

    if qkv is not None:
        add("qkv", qkv.name, "input", qkv.in_features)
    if o is not None:
        add("o", o.name, "input", o.in_features)
    if gate_up is not None:
        add("gate_up", gate_up.name, "input", gate_up.in_features)
    gate, act, gated = mlp_gate_and_activation(model, layout, index)
    if gate is not None:
        width = down.in_features if down is not None else modules[gate].out_features
        if act is not None:
            add("silu_gate", act, "output", width)
        elif not gated and down is not None:
            add("silu_gate", down.name, "input", width)
        else:
            logger.warning("block %s: no activation module found next to %s; no silu_gate site",
                           block_name, gate)
    if down is not None:
        add("down", down.name, "input", down.in_features)
    hidden = (down.out_features if down is not None else o.out_features if o is not None
              else qkv.in_features if qkv is not None else None)
    if hidden is not None:
        add("residual", block_name, "output", hidden)
    return out


@renamed_keywords(kinds="sites")
def find_sites(model: nn.Module, *, sites=None, func: str = "find_sites") -> dict[str, Site]:
    """The activation sites of every block of a model.

    Parameters
    ----------
    model : torch.nn.Module
        A decoder-only or encoder-only transformer (LLaMA, Mistral, Qwen2, GPT-NeoX, GPT-2, OPT,
        BERT, ...): its blocks are found by :func:`~specmetrics.pruning.blocks.find_blocks`, and
        the q/k/v/o/gate/up/down modules by their names
        (:func:`~specmetrics.models.module_type`).
    sites : None, str or sequence of str
        Site kinds to return (see :data:`SITE_KINDS`; ``"qkv,o"`` or a list); ``None``: all of
        them. (``kinds`` is the deprecated spelling.)
    func : str
        Function named in error messages.

    Returns
    -------
    dict of str to Site
        ``{site name: Site}`` in model order (block by block, in execution order inside a block).

    Raises
    ------
    ParameterError
        For unknown kinds, a model without repeated blocks, or when no block has a site of a
        requested kind.

    Examples
    --------
    >>> import transformers
    >>> cfg = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    ...                                num_attention_heads=4, vocab_size=128)
    >>> sites = find_sites(transformers.LlamaForCausalLM(cfg), sites="silu_gate")
    >>> sites["model.layers.1.silu_gate"].module, sites["model.layers.1.silu_gate"].width
    ('model.layers.1.mlp.act_fn', 128)
    """
    wanted = parse_kinds(sites, func=func, name="sites")
    layout = find_blocks(model, func=func)
    found: dict[str, Site] = {}
    for index in range(len(layout)):
        for site in _block_sites(model, layout, index):
            if site.kind in wanted:
                found[site.name] = site
    # sites=None: whatever the model has; named kinds: each must be found somewhere
    missing = [] if sites is None else [k for k in wanted
                                        if not any(s.kind == k for s in found.values())]
    if missing or not found:
        raise fail("model", func, f"a model with {'/'.join(missing or wanted)} sites in its "
                   "blocks (none recognised)", type(model).__name__)
    return found
