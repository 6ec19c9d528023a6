"""Boundary checks shared by every public function.

Each check knows which function it guards (``func``) and which parameter (``name``), and raises
:class:`~specmetrics.exceptions.ParameterError` with one message format::

    The 'target' parameter of allocate must be in [0, 1). Got 1.2 instead.

Conventions the checks enforce, everywhere:

- booleans are strict: ``True``/``False`` (and ``numpy.bool_``), never ``"no"``, ``0`` or ``None``;
- numbers accept numpy scalars exactly like Python numbers (``np.float32(0.5)``, ``np.int64(3)``),
  never a ``bool`` for a number, never a numeric string;
- a device must exist on this machine (``"cuda"`` on a CPU-only build is rejected up front);
- tensors on the ``meta`` device (no data) are rejected where data is needed.

This module imports nothing internal except the exceptions.
"""
from __future__ import annotations

import math
import numbers
from typing import Any, Iterable, Optional

from .exceptions import ParameterError

__all__ = [
    "fail", "check_choice", "check_interval", "check_positive_int", "check_int", "check_bool",
    "check_seed", "check_real", "check_device", "check_float_dtype", "check_not_meta",
    "is_real_number", "is_integer", "shown", "renamed_keywords",
]


def fail(name: str, func: str, requirement: str, got: Any) -> ParameterError:
    """Build the standard :class:`ParameterError` (the caller raises it)."""
    if isinstance(got, str) and len(got) > 200:
        got = got[:200] + "..."
    text = repr(got)
    if len(text) > 300:
        text = text[:300] + "..."
    return ParameterError(
        f"The {name!r} parameter of {func} must be {requirement}. Got {text} instead.",
        parameter=name, function=func,
    )


def shown(names: Iterable[Any], limit: int = 6) -> str:
    """``'a', 'b', ... (12 in all)``: a short list for messages."""
    names = list(names)
    text = ", ".join(repr(n) for n in names[:limit])
    return text + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def _is_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return True
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a core dependency
        return False
    return isinstance(value, np.bool_)


def is_real_number(value: Any) -> bool:
    """A real number: Python or numpy int/float (0-d numpy arrays too), not a bool or string."""
    if _is_bool(value):
        return False
    if isinstance(value, numbers.Real):
        return True
    shape = getattr(value, "shape", None)
    dtype = getattr(value, "dtype", None)
    if shape == () and dtype is not None and getattr(dtype, "kind", "") in "fiu" and \
            type(value).__module__.startswith("numpy"):
        return True
    return False


def is_integer(value: Any) -> bool:
    """A Python or numpy integer (not a bool, not a float with an integral value)."""
    return not _is_bool(value) and isinstance(value, numbers.Integral)


def _same(value: Any, choice: Any) -> bool:
    if isinstance(choice, bool) or _is_bool(value):
        return _is_bool(value) and isinstance(choice, bool) and bool(value) is choice
    if isinstance(choice, str) or isinstance(value, str):
        return isinstance(value, str) and isinstance(choice, str) and value == choice
    try:
        return bool(value == choice)
    except Exception:  # e.g. an array compared with a number
        return False


def check_choice(value: Any, choices: Iterable[Any], *, name: str, func: str) -> Any:
    """``value`` must be one of ``choices``: strings by equality, booleans strictly (``1`` is not
    ``True``). Returns the matching choice."""
    choices = tuple(choices)
    for c in choices:
        if _same(value, c):
            return c
    options = ", ".join(repr(c) for c in choices)
    raise fail(name, func, f"one of {options}", value)


def check_bool(value: Any, *, name: str, func: str) -> bool:
    """A strict boolean: ``True``/``False`` (or ``numpy.bool_``); returns a Python bool."""
    if not _is_bool(value):
        raise fail(name, func, "True or False", value)
    return bool(value)


def check_real(value: Any, *, name: str, func: str, requirement: str = "a real number") -> float:
    """A finite real number (numpy scalars accepted), returned as a Python float."""
    if not is_real_number(value):
        raise fail(name, func, requirement, value)
    v = float(value)
    if not math.isfinite(v):
        raise fail(name, func, requirement, value)
    return v


def check_interval(value: Any, lo: float, hi: float, *, name: str, func: str,
                   closed: str = "left") -> float:
    """A finite real in the interval; ``closed`` is left/right/both/neither. Returns a float."""
    brackets = {"left": "[)", "right": "(]", "both": "[]", "neither": "()"}[closed]
    requirement = f"in {brackets[0]}{lo}, {hi}{brackets[1]}"
    if not is_real_number(value):
        raise fail(name, func, requirement, value)
    v = float(value)
    if not math.isfinite(v):
        raise fail(name, func, requirement, value)
    ok_lo = v >= lo if closed in ("left", "both") else v > lo
    ok_hi = v <= hi if closed in ("right", "both") else v < hi
    if not (ok_lo and ok_hi):
        raise fail(name, func, requirement, value)
    return v


def check_int(value: Any, *, name: str, func: str, minimum: Optional[int] = None,
              maximum: Optional[int] = None) -> int:
    """An integer (numpy integers accepted) within optional bounds; returns a Python int."""
    if minimum is not None and maximum is not None:
        requirement = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        requirement = f"an integer >= {minimum}"
    elif maximum is not None:
        requirement = f"an integer <= {maximum}"
    else:
        requirement = "an integer"
    if not is_integer(value):
        raise fail(name, func, requirement, value)
    v = int(value)
    if (minimum is not None and v < minimum) or (maximum is not None and v > maximum):
        raise fail(name, func, requirement, value)
    return v


def check_positive_int(value: Any, *, name: str, func: str, minimum: int = 1) -> int:
    """An integer ``>= minimum`` (default 1); returns a Python int."""
    return check_int(value, name=name, func=func, minimum=minimum)


def check_seed(value: Any, *, name: str = "seed", func: str) -> int:
    """A seed: an integer ``>= 0``."""
    return check_int(value, name=name, func=func, minimum=0)


def check_device(value: Any, *, name: str = "device", func: str, allow_none: bool = True):
    """A ``torch.device`` that exists on this machine (``None`` passes through when allowed).

    Rejects strings torch cannot parse (``"banana"``), CUDA/MPS/XPU devices on a machine without
    them, and device indices beyond the devices present. ``"meta"`` is rejected (no data).
    """
    import torch

    if value is None:
        if allow_none:
            return None
        raise fail(name, func, "a torch.device or a device string such as 'cpu' or 'cuda'", None)
    if not isinstance(value, (str, torch.device)) or _is_bool(value):
        raise fail(name, func, "None, a torch.device or a device string such as 'cpu' or "
                   "'cuda'", value)
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError, ValueError):
        raise fail(name, func, "a device string torch understands, such as 'cpu', 'cuda' or "
                   "'cuda:1'", value) from None
    kind = device.type
    if kind == "cpu":
        return device
    if kind == "meta":
        raise fail(name, func, "a device that holds data (not 'meta')", value)
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise fail(name, func, "a device present on this machine (torch reports no CUDA "
                       "device here)", value)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise fail(name, func, f"a CUDA device index below {torch.cuda.device_count()}",
                       value)
        return device
    if kind == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise fail(name, func, "a device present on this machine (no MPS device here)", value)
        return device
    backend = getattr(torch, kind, None)
    available = getattr(backend, "is_available", None)
    if callable(available) and available():
        return device
    raise fail(name, func, f"a device present on this machine (no {kind!r} device here)", value)


def check_float_dtype(value: Any, allowed, *, name: str = "dtype", func: str):
    """A ``torch.dtype`` among ``allowed`` (also given as ``"float32"``-style names)."""
    import torch

    allowed = tuple(allowed)
    if isinstance(value, str):
        candidate = getattr(torch, value, None)
        value_dtype = candidate if isinstance(candidate, torch.dtype) else None
    else:
        value_dtype = value if isinstance(value, torch.dtype) else None
    if value_dtype is None or value_dtype not in allowed:
        names = " or ".join(str(d) for d in allowed)
        raise fail(name, func, names, value)
    return value_dtype


def check_not_meta(tensor_or_module: Any, *, name: str, func: str) -> None:
    """Reject a tensor, or a module with parameters, on the ``meta`` device (no data)."""
    import torch

    if isinstance(tensor_or_module, torch.Tensor):
        if tensor_or_module.is_meta:
            raise fail(name, func, "a tensor with data (not on the 'meta' device)",
                       f"a meta tensor of shape {tuple(tensor_or_module.shape)}")
        return
    if isinstance(tensor_or_module, torch.nn.Module):
        for pname, p in tensor_or_module.named_parameters():
            if p.is_meta:
                raise fail(name, func, "a model whose weights hold data (not on the 'meta' "
                           "device)", f"{type(tensor_or_module).__name__} with meta parameter "
                           f"{pname!r}")


def renamed_keywords(**renames):
    """Decorator: accept the earlier spelling of keyword arguments, with a DeprecationWarning.

    ``@renamed_keywords(kinds="sites")`` makes ``f(kinds=x)`` call ``f(sites=x)``; giving both is
    an error.
    """
    import functools
    import warnings

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            for old, new in renames.items():
                if old in kwargs:
                    if new in kwargs:
                        raise fail(old, fn.__name__, f"left out when {new!r} is given (it is the "
                                   f"earlier name of {new!r})", kwargs[old])
                    warnings.warn(f"{fn.__name__}({old}=...) is now {fn.__name__}({new}=...)",
                                  DeprecationWarning, stacklevel=2)
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return wrapper

    return decorate
