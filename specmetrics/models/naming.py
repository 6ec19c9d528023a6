"""Recognising what a weight matrix is from its qualified module name.

Three facts are read from a name such as ``model.layers.3.self_attn.q_proj``:

- the repeated block it sits in (``model.layers.3``, index 3), see :func:`block_of`;
- its module type, one of :data:`MODULE_TYPES` (``"q"``), see :func:`module_type`;
- its group, ``"attention"``, ``"mlp"`` or ``"other"``, see :func:`module_group`.

Recognised naming schemes (the type comes from the last name component, disambiguated by the
parent path where one name means two things, e.g. GPT-2's ``c_proj``):

- LLaMA, Mistral, Qwen2, Gemma: ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``;
- OPT: ``q_proj k_proj v_proj``, ``out_proj`` (o), ``fc1`` (up), ``fc2`` (down);
- GPT-NeoX, Falcon, BLOOM: ``query_key_value`` (qkv), ``dense`` (o), ``dense_h_to_4h`` (up),
  ``dense_4h_to_h`` (down);
- GPT-2: ``c_attn`` (qkv), ``attn.c_proj`` (o), ``c_fc`` (up), ``mlp.c_proj`` (down);
- BERT, RoBERTa, ViT: ``query key value``, ``attention.output.dense`` (o),
  ``intermediate.dense`` (up), ``output.dense`` (down);
- GPT-J, Phi: ``out_proj`` / ``dense`` (o), ``fc_in`` / ``fc1`` (up), ``fc_out`` / ``fc2`` (down);
- DistilBERT: ``q_lin k_lin v_lin out_lin``, ``lin1`` (up), ``lin2`` (down);
- Meta LLaMA and Mixtral experts: ``wq wk wv wo``, ``w1`` (gate), ``w3`` (up), ``w2`` (down);
- T5: ``SelfAttention.q/k/v/o``, ``DenseReluDense.wi`` (up) / ``wi_0`` (gate) / ``wi_1`` (up),
  ``wo`` (down).
"""
from __future__ import annotations

import re
from typing import Iterable

from .._validation import fail

__all__ = [
    "MODULE_TYPES",
    "GROUPS",
    "FUSED_TYPES",
    "block_of",
    "module_type",
    "module_group",
    "parse_type_set",
    "type_in",
]

#: Canonical module types. ``qkv`` and ``gate_up`` are fused projections.
MODULE_TYPES: tuple[str, ...] = ("q", "k", "v", "o", "qkv", "gate", "up", "down", "gate_up")

#: Module types of each group; a matrix of unknown type is grouped by its parent path.
GROUPS: dict[str, tuple[str, ...]] = {
    "attention": ("q", "k", "v", "o", "qkv"),
    "mlp": ("gate", "up", "down", "gate_up"),
}

#: The types each fused type is made of.
FUSED_TYPES: dict[str, frozenset[str]] = {
    "qkv": frozenset({"q", "k", "v"}),
    "gate_up": frozenset({"gate", "up"}),
}

# Containers of repeated blocks, tried first; any other ``.<int>.`` component is the fallback.
_BLOCK_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blocks|block)\.(\d+)(?=\.|$)")
_INDEX_RE = re.compile(r"(?:^|\.)(\d+)(?=\.|$)")
_ATTN_RE = re.compile(r"attn|attention", re.IGNORECASE)
_MLP_RE = re.compile(
    r"mlp|ffn|feed_?forward|intermediate|densereludense|moe|experts", re.IGNORECASE
)

# leaf name -> type, wherever the leaf appears
_LEAF_TYPES: dict[str, str] = {
    "q_proj": "q", "query": "q", "q_lin": "q", "wq": "q", "q_linear": "q",
    "k_proj": "k", "key": "k", "k_lin": "k", "wk": "k", "k_linear": "k",
    "v_proj": "v", "value": "v", "v_lin": "v", "wv": "v", "v_linear": "v",
    "o_proj": "o", "out_proj": "o", "out_lin": "o",
    "c_attn": "qkv", "query_key_value": "qkv", "qkv_proj": "qkv", "wqkv": "qkv", "qkv": "qkv",
    "gate_proj": "gate", "wi_0": "gate",
    "up_proj": "up", "c_fc": "up", "fc1": "up", "dense_h_to_4h": "up", "fc_in": "up",
    "lin1": "up", "wi": "up", "wi_1": "up",
    "down_proj": "down", "fc2": "down", "dense_4h_to_h": "down", "fc_out": "down", "lin2": "down",
    "gate_up_proj": "gate_up",
}
# leaf name -> type inside an attention parent / inside an MLP parent
_ATTN_LEAF_TYPES = {"q": "q", "k": "k", "v": "v", "o": "o", "wo": "o", "c_proj": "o",
                    "dense": "o"}
_MLP_LEAF_TYPES = {"w1": "gate", "w3": "up", "w2": "down", "wo": "down", "c_proj": "down"}

# user-facing spellings accepted by ``score_from`` / ``apply_to``
_ALIASES: dict[str, tuple[str, ...]] = {
    **{t: (t,) for t in MODULE_TYPES},
    "out": ("o",), "output": ("o",), "o_proj": ("o",), "out_proj": ("o",),
    "q_proj": ("q",), "k_proj": ("k",), "v_proj": ("v",), "query": ("q",), "key": ("k",),
    "value": ("v",), "g": ("gate",), "gate_proj": ("gate",), "up_proj": ("up",),
    "down_proj": ("down",), "c_attn": ("qkv",), "query_key_value": ("qkv",),
    "gate_up_proj": ("gate_up",),
    "attention": GROUPS["attention"], "attn": GROUPS["attention"], "mlp": GROUPS["mlp"],
    "all": MODULE_TYPES,
}


def block_of(name: str) -> tuple[str, int] | None:
    """The repeated block a module belongs to.

    Parameters
    ----------
    name : str
        Qualified module name, e.g. ``"model.layers.3.mlp.up_proj"``.

    Returns
    -------
    tuple of (str, int) or None
        ``(prefix, index)``, e.g. ``("model.layers.3", 3)``; the containers ``layers``, ``layer``,
        ``h``, ``blocks`` and ``block`` are recognised first, then the first numeric component
        (e.g. ``encoder.stages.2``). ``None`` when the name has no numeric component
        (embeddings, ``lm_head``, poolers).

    Examples
    --------
    >>> from specmetrics.models.naming import block_of
    >>> block_of("transformer.h.11.attn.c_attn")
    ('transformer.h.11', 11)
    >>> block_of("lm_head") is None
    True
    """
    match = _BLOCK_RE.search(name) or _INDEX_RE.search(name)
    if match is None:
        return None
    return name[: match.end()].lstrip("."), int(match.group(1))


def module_type(name: str) -> str | None:
    """The module type of a weight matrix, from its qualified name.

    Parameters
    ----------
    name : str
        Qualified module name.

    Returns
    -------
    str or None
        One of :data:`MODULE_TYPES`, or ``None`` when the name is not recognised.

    Examples
    --------
    >>> from specmetrics.models.naming import module_type
    >>> [module_type(n) for n in ("model.layers.0.self_attn.o_proj", "transformer.h.0.mlp.c_proj",
    ...                           "encoder.layer.0.attention.output.dense",
    ...                           "encoder.layer.0.output.dense")]
    ['o', 'down', 'o', 'down']
    """
    parent, _, leaf = name.rpartition(".")
    key = leaf.lower()
    if key in _LEAF_TYPES:
        return _LEAF_TYPES[key]
    in_attn = _ATTN_RE.search(parent) is not None
    in_mlp = _MLP_RE.search(parent) is not None
    if in_mlp and key in _MLP_LEAF_TYPES:
        return _MLP_LEAF_TYPES[key]
    if in_attn and key in _ATTN_LEAF_TYPES:
        return _ATTN_LEAF_TYPES[key]
    if key == "dense":
        tail = parent.rpartition(".")[2].lower()
        if tail == "intermediate":
            return "up"
        if tail == "output":  # BERT's block output; the attention output was matched above
            return "down"
    return None


def module_group(name: str, mtype: str | None = None) -> str:
    """``"attention"``, ``"mlp"`` or ``"other"`` for a qualified module name.

    Parameters
    ----------
    name : str
        Qualified module name.
    mtype : str, optional
        Its module type when already known (default: :func:`module_type` of ``name``).

    Returns
    -------
    str
        The group of the type; for an unrecognised type, the group named by the parent path
        (``attn``/``attention`` or ``mlp``/``ffn``/``intermediate``/...), else ``"other"``.
    """
    mtype = module_type(name) if mtype is None else mtype
    for group, types in GROUPS.items():
        if mtype in types:
            return group
    parent = name.rpartition(".")[0]
    if _MLP_RE.search(parent):
        return "mlp"
    if _ATTN_RE.search(parent):
        return "attention"
    return "other"


def parse_type_set(value, *, name: str, func: str = "allocate") -> frozenset[str] | None:
    """Parse a ``score_from`` / ``apply_to`` value into a set of canonical module types.

    Parameters
    ----------
    value : None, str or iterable of str
        ``None`` (every type); a string of names separated by commas, ``+`` or spaces
        (``"q,k,v,o"``, ``"q+k"``); or a sequence of names. Names are canonical types
        (:data:`MODULE_TYPES`), common spellings (``"out"``, ``"o_proj"``, ``"gate_proj"``,
        ``"query"``), or the groups ``"attention"``, ``"mlp"`` and ``"all"``; case-insensitive.
    name, func : str
        Parameter and function named in the error message.

    Returns
    -------
    frozenset of str or None

    Raises
    ------
    ParameterError
        For an unknown name or an empty selection.
    """
    if value is None:
        return None
    if isinstance(value, str):
        tokens = [t for t in re.split(r"[,+\s]+", value) if t]
    else:
        try:
            tokens = list(value)
        except TypeError:
            raise fail(name, func, "None, a string or a sequence of module types", value) from None
    allowed = ", ".join(repr(a) for a in _ALIASES)
    types: set[str] = set()
    for token in tokens:
        if not isinstance(token, str) or token.lower() not in _ALIASES:
            raise fail(name, func, f"None or module types among {allowed}", value)
        types.update(_ALIASES[token.lower()])
    if not types:
        raise fail(name, func, "None or a non-empty selection of module types", value)
    return frozenset(types)


def type_in(mtype: str | None, types: Iterable[str] | None) -> bool:
    """Whether a module of type ``mtype`` belongs to the selection ``types``.

    ``None`` selects everything, recognised or not. A fused type belongs to a selection that names
    it or all of its parts (``qkv`` to ``{q, k, v}``; not to ``{q, k}``, because one ratio cannot
    treat part of a fused matrix differently). An unrecognised type belongs only to ``None``.
    """
    if types is None:
        return True
    if mtype is None:
        return False
    types = frozenset(types)
    if mtype in types:
        return True
    parts = FUSED_TYPES.get(mtype)
    return parts is not None and parts <= types
