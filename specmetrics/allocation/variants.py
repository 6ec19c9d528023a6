"""The allocation variants of the user's ablation notes (seed 003) as ``allocate`` options.

The notes label runs ``QKV``, ``OUT``, ``V``, ``OUT V``, ``K``, ``Q``, ``Q OUT GATE``, ``Gate``,
``QK``, ``QK OUT``, ``QKVoutg``, ``QKVout + split`` (and, for LLaMA-2/3, ``QKVout``, ``Q out``,
``Q out gate``, ``QK out split``, ``Q out split``, ``Q out gate split``), besides unlabelled
``ww`` runs and ``GT``; the labels are not defined there. **Our reading** (the default,
``reading="apply_to"``): a label lists the module types that get the alpha-based ratios
(``apply_to``; ``OUT`` is ``o_proj``, ``g``/``GATE`` is ``gate_proj``); the other types stay at the
target and the budget is solved over the listed ones so the overall mean is exact. ``split``
means ``units="split", budget="per_group"``. ``ww`` and ``GT`` use all seven types. The numbers
after ``ww`` in the notes (0.2, 0.21, ...) are ε.

The alternative reading (``reading="score_from"``): the label lists the module types whose alphas
form each unit's score, and every matrix gets a score-based ratio.
"""
from __future__ import annotations

import re
from types import MappingProxyType
from typing import Any

from .._validation import check_choice, fail

__all__ = ["SEED003_TYPES", "SEED003_VARIANTS", "seed003_variant"]

#: Module types named by each seed-003 label (``None``: all types), without the ``split`` suffix.
SEED003_TYPES: MappingProxyType = MappingProxyType({
    "ww": None,
    "GT": None,
    "QKV": ("q", "k", "v"),
    "OUT": ("o",),
    "V": ("v",),
    "OUT V": ("v", "o"),
    "K": ("k",),
    "Q": ("q",),
    "Q OUT GATE": ("q", "o", "gate"),
    "Gate": ("gate",),
    "QK": ("q", "k"),
    "QK OUT": ("q", "k", "o"),
    "QKVoutg": ("q", "k", "v", "o", "gate"),
    "QKVout": ("q", "k", "v", "o"),
    "Q OUT": ("q", "o"),
})

_KEYS = {re.sub(r"\s+", " ", k.strip().lower()): k for k in SEED003_TYPES}


def seed003_variant(label: str, *, reading: str = "apply_to") -> dict[str, Any]:
    """``allocate`` keyword arguments for a label of the seed-003 ablation grid.

    Parameters
    ----------
    label : str
        A label of the notes, case- and space-insensitive, optionally ending in ``split``
        (``"QKVout + split"``, ``"Q out gate split"``).
    reading : {"apply_to", "score_from"}, default "apply_to"
        Which reading of the label (see the module docstring): the listed types get the
        alpha-based ratios, or the listed types' alphas form each unit's score.

    Returns
    -------
    dict
        ``{"units", "budget", "apply_to", "score_from"}``; ε is not part of a label.

    Examples
    --------
    >>> from specmetrics.allocation import seed003_variant
    >>> seed003_variant("QKVout + split")
    {'units': 'split', 'budget': 'per_group', 'apply_to': ('q', 'k', 'v', 'o'), 'score_from': None}
    >>> seed003_variant("QK", reading="score_from")
    {'units': 'block', 'budget': 'global', 'apply_to': None, 'score_from': ('q', 'k')}
    """
    check_choice(reading, ("apply_to", "score_from"), name="reading", func="seed003_variant")
    if not isinstance(label, str):
        raise fail("label", "seed003_variant", "a seed-003 label", label)
    key = re.sub(r"\s+", " ", label.strip().lower())
    split = False
    match = re.fullmatch(r"(.*?)\s*\+?\s*split", key)
    if match:
        key, split = match.group(1).strip(), True
    if key not in _KEYS:
        raise fail("label", "seed003_variant",
                   "one of " + ", ".join(repr(k) for k in SEED003_TYPES) + " (optionally + split)",
                   label)
    types = SEED003_TYPES[_KEYS[key]]
    return {
        "units": "split" if split else "block",
        "budget": "per_group" if split else "global",
        "apply_to": types if reading == "apply_to" else None,
        "score_from": types if reading == "score_from" else None,
    }


#: Every label of the grid in the notes (LLaMA-7B table) with its ``allocate`` options under our
#: reading.
SEED003_VARIANTS: MappingProxyType = MappingProxyType({
    label: seed003_variant(label)
    for label in ("ww", "GT", "QKV", "OUT", "V", "OUT V", "K", "Q", "Q OUT GATE", "Gate", "QK",
                  "QK OUT", "QKVoutg", "QKVout", "QKVout + split", "Q OUT", "QK OUT split",
                  "Q OUT split", "Q OUT GATE split")
})
