"""Models and checkpoints: their weight matrices, what each one is, and loading them.

Holds the weight matrices of a module / state dict / safetensors / GGUF source
(:func:`list_weight_matrices`, tied weights once, conv and ``Conv1D`` reshaping, model order
whatever the source); qualified name → block and module type for every supported family
(:mod:`~specmetrics.models.naming`); **the one definition of the prunable matrices**
(:func:`is_prunable`, :func:`find_blocks`); and :func:`load_model` (hub id, folder, file).

May import: the base files (``exceptions``, ``_validation``, ``_results``) only.
"""
from .blocks import (PRUNABLE_KINDS, BlockLayout, PrunableModule, block_device, find_blocks,
                     is_prunable, set_weight_out_in, weight_out_in)
from .loading import auto_model_class, gguf_cache_dir, gguf_safetensors, is_causal_lm, load_model
from .matrices import KINDS, WeightMatrix, list_weight_matrices, name_filter, split_matrices
from .naming import (FUSED_TYPES, GROUPS, MODULE_TYPES, block_of, module_group, module_type,
                     parse_type_set, type_in)
from .sources import hub_reachable, looks_local

__all__ = [
    "WeightMatrix", "list_weight_matrices", "name_filter", "split_matrices", "KINDS",
    "MODULE_TYPES", "GROUPS", "FUSED_TYPES", "block_of", "module_type", "module_group",
    "parse_type_set", "type_in",
    "PRUNABLE_KINDS", "is_prunable", "find_blocks", "BlockLayout", "PrunableModule",
    "weight_out_in", "set_weight_out_in", "block_device",
    "load_model", "is_causal_lm", "auto_model_class", "gguf_cache_dir", "gguf_safetensors",
    "hub_reachable", "looks_local",
]
