"""The dispatch rule and the boundary checks shared by the kernels' public functions.

``backend=None`` (auto): the Triton kernel for CUDA tensors when ``triton`` is installed, the
plain torch reference everywhere else (with a :class:`~specmetrics.exceptions.SpecmetricsWarning`
when CUDA tensors meet a machine without ``triton``). ``backend="torch"``: the reference, always.
``backend="triton"``: the kernel, always: on CUDA tensors compiled, on CPU tensors through the
Triton interpreter, which needs ``TRITON_INTERPRET=1`` in the environment *before* the kernels
are first loaded (Triton reads it when the ``@triton.jit`` decorators run); without it a CPU
call is refused with a :class:`~specmetrics.exceptions.ParameterError` naming ``backend``, and
without ``triton`` installed any ``backend="triton"`` call raises :class:`ImportError`.

This module imports torch and the base files of specmetrics (``exceptions``, ``_validation``)
only; ``triton`` is imported by :func:`require_triton`, at first use.
"""
from __future__ import annotations

import math
import warnings
from typing import Any, Optional

import torch

from specmetrics._validation import check_choice, fail, is_integer, is_real_number
from specmetrics.exceptions import SpecmetricsWarning

__all__ = ["BACKENDS", "DENSE_FALLBACK_ROWS", "FLOAT_DTYPES", "check_backend",
           "resolve_backend", "require_triton", "triton_available", "rounded_threshold",
           "check_threshold", "check_tensor", "check_max_rows"]

#: The named backends (``None`` means: choose by device).
BACKENDS: tuple[str, ...] = ("torch", "triton")

#: Rows of ``x`` (tokens) up to which the Triton backend runs the sparse kernel; above it, the
#: dense product on the masked input (cuBLAS on a GPU). With a per-token mask the union of kept
#: weight rows over ``m`` rows grows like ``1 - s**m`` (94 % of the rows at ``s = 0.5`` and
#: ``m = 4``), so the skip stops paying after a few rows. 4 is a provisional value from that
#: argument, not a measurement: ``benchmarks/bench_kernels.py`` measures the crossover on a GPU.
DENSE_FALLBACK_ROWS: int = 4

#: Input dtypes the kernels accept (accumulation is always float32).
FLOAT_DTYPES: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)


def triton_available() -> bool:
    """Whether ``import triton`` works here (imports it if so)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return False
    return True


def require_triton(func: str) -> None:
    """Import ``triton`` or raise an :class:`ImportError` that says how to get it."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError as err:
        raise ImportError(
            f"{func}: backend='triton' needs the 'triton' package, which is not installed "
            "(pip install 'specmetrics[triton]'; Linux, with an NVIDIA GPU, or with "
            "TRITON_INTERPRET=1 for the CPU interpreter). backend='torch' runs the reference "
            "without it.") from err


def check_backend(backend: Any, func: str) -> Optional[str]:
    """``None``, ``"torch"`` or ``"triton"``."""
    return check_choice(backend, (None,) + BACKENDS, name="backend", func=func)


_NO_TRITON, _COMPILED, _INTERPRETER = 0, 1, 2


def _triton_mode() -> int:
    """Whether Triton imports, and whether the kernels were built by its interpreter.

    Imports the kernels' modules (and so ``triton``) when Triton is present. Plain import
    statements, which ``torch.compile`` traces (``importlib`` calls it cannot).
    """
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except ImportError:
        return _NO_TRITON
    from specmetrics.kernels.act_sparse_gemv import triton as gemv_impl
    from specmetrics.kernels.sparse_mlp import triton as mlp_impl

    interpreted = gemv_impl.INTERPRETED or mlp_impl.INTERPRETED
    return _INTERPRETER if interpreted else _COMPILED


def resolve_backend(backend: Optional[str], device: torch.device, func: str) -> str:
    """``"torch"`` or ``"triton"`` for tensors on ``device`` (``backend`` already checked).

    Parameters
    ----------
    backend : {None, "torch", "triton"}
        As given to the public function (see the module notes for the rule).
    device : torch.device
        Where the data is.
    func : str
        The public function named in messages.

    Raises
    ------
    ImportError
        ``backend="triton"`` without ``triton``.
    ParameterError
        ``backend="triton"`` for data off CUDA when the kernels are not interpreted.
    """
    if backend == "torch":
        return "torch"
    if backend is None:
        if device.type != "cuda":
            return "torch"
        mode = _triton_mode()
        if mode == _NO_TRITON:
            warnings.warn(f"{func}: CUDA tensors but 'triton' is not installed; running the "
                          "dense torch reference (pip install 'specmetrics[triton]')",
                          SpecmetricsWarning, stacklevel=3)
            return "torch"
        # with TRITON_INTERPRET=1 on a GPU machine the interpreter would be far slower
        return "triton" if mode == _COMPILED else "torch"
    mode = _triton_mode()
    if mode == _NO_TRITON:
        require_triton(func)
    if device.type == "cuda" or mode == _INTERPRETER:
        return "triton"
    raise fail("backend", func, "'torch' or None for tensors on a "
               f"{device.type!r} device, unless TRITON_INTERPRET=1 was set before the Triton "
               "kernels were first loaded (the CPU interpreter)", backend)


# significand bits (with the implicit one) and smallest normal exponent of each format
_FORMATS = {torch.float16: (11, -14), torch.bfloat16: (8, -126), torch.float32: (24, -126)}


def _round_to(x: float, bits: int, emin: int, largest: float) -> float:
    """``x`` rounded to nearest-even with ``bits`` significand bits (subnormals, overflow)."""
    if x == 0 or not math.isfinite(x):
        return x
    _, e = math.frexp(abs(x))            # 2**(e-1) <= |x| < 2**e
    quantum = max(e, emin + 1) - bits    # the spacing of the format around |x|
    r = math.ldexp(round(math.ldexp(abs(x), -quantum)), quantum)  # round() is half-to-even
    return math.copysign(math.inf if r > largest else r, x)


def rounded_threshold(threshold: float, dtype: torch.dtype) -> float:
    """``threshold`` rounded to ``dtype``, exactly as torch rounds a Python number to a tensor's
    dtype (through float32 for float16/bfloat16, both to nearest-even).

    Comparing ``|x|`` in float32 with this value gives exactly the comparison in ``x``'s dtype,
    on every device and in every backend. Pure Python (``torch.compile`` folds it).
    """
    value = float(threshold)
    if dtype not in _FORMATS:
        return value
    value = _round_to(value, 24, -126, 3.4028234663852886e38)
    if dtype != torch.float32:
        bits, emin = _FORMATS[dtype]
        largest = 65504.0 if dtype == torch.float16 else 3.3895313892515355e38
        value = _round_to(value, bits, emin, largest)
    return value


def check_threshold(value: Any, func: str, name: str = "threshold") -> float:
    """A finite real number ``>= 0`` (numpy scalars accepted), as a Python float."""
    requirement = "a finite real number >= 0"
    if not is_real_number(value):
        raise fail(name, func, requirement, value)
    v = float(value)
    if not math.isfinite(v) or v < 0:
        raise fail(name, func, requirement, value)
    return v


def check_max_rows(value: Any, func: str) -> int:
    """``None`` (:data:`DENSE_FALLBACK_ROWS`) or an integer ``>= 0``."""
    if value is None:
        return DENSE_FALLBACK_ROWS
    if not is_integer(value) or int(value) < 0:
        raise fail("max_rows", func, "None or an integer >= 0", value)
    return int(value)


def check_tensor(value: Any, name: str, func: str, *, ndim: Optional[int] = None,
                 min_ndim: int = 1) -> torch.Tensor:
    """A float16/bfloat16/float32 tensor with data (not meta), of the given rank."""
    if not isinstance(value, torch.Tensor):
        raise fail(name, func, "a torch.Tensor", type(value).__name__)
    if value.is_meta:
        raise fail(name, func, "a tensor with data (not on the 'meta' device)",
                   f"a meta tensor of shape {tuple(value.shape)}")
    if value.dtype not in FLOAT_DTYPES:
        raise fail(name, func, "a tensor of dtype torch.float16, torch.bfloat16 or "
                   "torch.float32", f"dtype {value.dtype}")
    if ndim is not None and value.ndim != ndim:
        raise fail(name, func, f"a {ndim}-D tensor", f"shape {tuple(value.shape)}")
    if value.ndim < min_ndim:
        raise fail(name, func, f"a tensor with at least {min_ndim} dimension(s)",
                   f"shape {tuple(value.shape)}")
    return value


def check_like(value: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str,
               func: str) -> None:
    """Same dtype and device as ``ref``."""
    if value.dtype != ref.dtype:
        raise fail(name, func, f"of the dtype of {ref_name!r} ({ref.dtype})",
                   f"dtype {value.dtype}")
    if value.device != ref.device:
        raise fail(name, func, f"on the device of {ref_name!r} ({ref.device})",
                   f"device {value.device}")


def check_grad(func: str, *tensors: torch.Tensor) -> bool:
    """Whether autograd will record through these tensors (for ``out=``, which it cannot)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
