"""The one registry of pruning methods: name → config class.

``prune(method="wanda")``, the CLI's ``--method`` choices and
:func:`~specmetrics.experiments.compare_allocations` all read :data:`METHODS`.
"""
from __future__ import annotations

from typing import Any

from .._validation import fail
from .configs import MagnitudeConfig, SparseGPTConfig, WandaConfig

__all__ = ["METHODS", "register", "resolve_method", "method_names", "method_label"]

#: name -> config class, in the order methods are listed
METHODS: dict[str, type] = {}


def register(config_cls: type) -> type:
    """Add a method config class under its ``name`` (usable as a class decorator)."""
    name = getattr(config_cls, "name", None)
    if not isinstance(name, str) or not name:
        raise TypeError(f"{config_cls!r} has no 'name' class attribute")
    for attr in ("prune_matrix", "statistic", "needs_calibration", "nm"):
        if not hasattr(config_cls, attr):
            raise TypeError(f"{config_cls.__name__} lacks {attr!r} (see PruningMethod)")
    METHODS[name] = config_cls
    return config_cls


for _cls in (MagnitudeConfig, WandaConfig, SparseGPTConfig):
    register(_cls)

from .dsnot import DSnoTConfig  # noqa: E402  (reads METHODS lazily, no import cycle)

register(DSnoTConfig)

from .ria import RIAConfig  # noqa: E402

register(RIAConfig)


def method_names() -> tuple[str, ...]:
    """The registered method names, e.g. ``("magnitude", "wanda", "sparsegpt", ...)``."""
    return tuple(METHODS)


def resolve_method(method: Any, *, func: str = "prune", pattern: str | None = None,
                   name: str = "method"):
    """A method config from a config instance or a registered name (its default config, with
    ``pattern`` when given)."""
    configs = tuple(METHODS.values())
    if isinstance(method, configs):
        if pattern not in (None, "unstructured", method.pattern):
            raise fail("pattern", func, f"'unstructured' or {method.pattern!r} (the config's own) "
                       "when method is a config", pattern)
        return method
    if isinstance(method, str) and method.lower() in METHODS:
        cls = METHODS[method.lower()]
        return cls() if pattern in (None, "unstructured") else cls(pattern=pattern)
    names = ", ".join(repr(n) for n in METHODS)
    classes = ", ".join(c.__name__ for c in configs)
    raise fail(name, func, f"a method config ({classes}) or one of {names}", method)


def method_label(config) -> str:
    """``"wanda"``, or ``"wanda 2:4"`` for an N:M pattern (the name used in tables)."""
    pattern = getattr(config, "pattern", "unstructured")
    return config.name if pattern == "unstructured" else f"{config.name} {pattern}"
