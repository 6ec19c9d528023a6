"""Boundary checks shared by the sparse-coding functions (private)."""
from __future__ import annotations

from typing import Any, Optional

import numpy as np
import torch

from .._validation import check_float_dtype, fail

__all__ = ["check_matrix", "check_dtype", "FLOAT_DTYPES"]

FLOAT_DTYPES = (torch.float32, torch.float64)


def check_dtype(value: Any, *, func: str, name: str = "dtype", allow_none: bool = True):
    """``None`` (keep) or float32 / float64 (also as ``"float32"`` / ``"float64"``)."""
    if value is None and allow_none:
        return None
    return check_float_dtype(value, FLOAT_DTYPES, name=name, func=func)


def check_matrix(value: Any, *, name: str, func: str, min_rows: int = 1, min_cols: int = 1,
                 cols: Optional[int] = None, rows: Optional[int] = None,
                 finite: bool = True, nonnegative: bool = False) -> torch.Tensor:
    """A real 2-D tensor (numpy arrays accepted), with data, finite, of the given sizes.

    Returns the tensor itself (no copy) when it already is a floating torch tensor, else a new
    float32/float64 tensor (float64 for float64 numpy input).
    """
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "fiu" or value.dtype == np.bool_:
            raise fail(name, func, "a real 2-D array or tensor", f"an array of dtype {value.dtype}")
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise fail(name, func, "a real 2-D tensor or numpy array", type(value).__name__)
    if value.is_meta:
        raise fail(name, func, "a tensor with data (not on the 'meta' device)",
                   f"a meta tensor of shape {tuple(value.shape)}")
    if value.is_complex() or value.dtype == torch.bool:
        raise fail(name, func, "a real tensor", f"a {value.dtype} tensor")
    if not value.is_floating_point():
        value = value.to(torch.float64)
    if value.ndim != 2:
        raise fail(name, func, "a 2-D tensor (rows are samples)", f"shape {tuple(value.shape)}")
    n, d = value.shape
    if n < min_rows or d < min_cols:
        raise fail(name, func, f"at least {min_rows} rows and {min_cols} columns",
                   f"shape {tuple(value.shape)}")
    if cols is not None and d != cols:
        raise fail(name, func, f"{cols} columns", f"shape {tuple(value.shape)}")
    if rows is not None and n != rows:
        raise fail(name, func, f"{rows} rows", f"shape {tuple(value.shape)}")
    if finite and not bool(torch.isfinite(value).all()):
        raise fail(name, func, "finite (no NaN or inf)", f"a tensor with "
                   f"{int((~torch.isfinite(value)).sum())} non-finite entries")
    if nonnegative and bool((value < 0).any()):
        raise fail(name, func, "non-negative", f"a tensor with minimum {float(value.min()):.4g}")
    return value
