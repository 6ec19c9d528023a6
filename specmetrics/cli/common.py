"""What every command shares: printing tables, writing files, checking values up front, and
turning every failure into one line on stderr.

Exit status: 0 on success; 2 for bad usage or values (argparse errors and every
:class:`~specmetrics.ParameterError`, checked before any model is loaded); 1 for failures while
running (any other error); 130 on Ctrl-C. Tracebacks only with ``--debug``.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any, Optional, Sequence

__all__ = ["CommandError", "status", "format_frame", "write_frame", "check_out", "check_source",
           "check_text_file", "device_type", "report_error", "DTYPES", "dtype_of"]

DTYPES = ("float64", "float32")


class CommandError(Exception):
    """A failure the command reports in one line (exit status 1, or ``code``)."""

    def __init__(self, message: str, *, code: int = 1):
        super().__init__(message)
        self.code = code


def status(message: str) -> None:
    """A progress or status line, on stderr (tables go to stdout)."""
    print(message, file=sys.stderr)


def format_frame(frame) -> str:
    """A DataFrame as text, every row and column, 4 significant digits."""
    import pandas as pd

    with pd.option_context("display.max_rows", None, "display.max_columns", None,
                           "display.width", 250, "display.max_colwidth", 60):
        return frame.to_string(float_format=lambda v: f"{v:.4g}")


def check_out(path: Optional[str], suffixes: Sequence[str], flag: str = "--out") -> Optional[Path]:
    """``path`` as a Path with one of ``suffixes`` (checked before any work), or None."""
    if path is None:
        return None
    out = Path(path)
    if out.suffix.lower() not in suffixes:
        raise CommandError(f"{flag} must end in {' or '.join(suffixes)}, got {path!r}", code=2)
    return out


def check_text_file(path: Optional[str], flag: str) -> Optional[Path]:
    """An existing text file given on the command line (checked before any work), or None."""
    if path is None:
        return None
    p = Path(os.path.expanduser(path))
    if not p.is_file():
        raise CommandError(f"{flag}: no such file: {path!r}", code=2)
    return p


def write_frame(frame, path: Path) -> None:
    """A DataFrame as CSV (``.csv``) or JSON (``.json``, one object per row)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path)
    else:
        frame.to_json(path, orient="index", indent=2)
    status(f"wrote {path}")


def device_type(text: str) -> str:
    """argparse type of ``--device``: a device that exists on this machine."""
    from .._validation import check_device
    from ..exceptions import ParameterError

    try:
        check_device(text, func="--device", allow_none=False)
    except ParameterError as err:
        message = str(err).replace("The 'device' parameter of --device must be", "must be")
        raise argparse.ArgumentTypeError(message) from None
    return text


def dtype_of(name: str):
    import torch

    return {"float64": torch.float64, "float32": torch.float32}[name]


def _flag_of(err: Any) -> str:
    parameter = getattr(err, "parameter", None)
    return f"--{parameter.replace('_', '-')}: " if parameter else ""


def report_error(prog: str, err: BaseException, *, debug: bool) -> int:
    """Print one line for ``err`` on stderr and return the exit status."""
    from ..exceptions import ParameterError

    if debug:
        import traceback

        traceback.print_exception(type(err), err, err.__traceback__, file=sys.stderr)
    if isinstance(err, CommandError):
        status(f"{prog}: error: {err}")
        return err.code
    if isinstance(err, ParameterError):
        status(f"{prog}: error: {err}")
        return 2
    if isinstance(err, ImportError):
        status(f"{prog}: error: {err} (a missing optional dependency)")
        return 1
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    status(f"{prog}: error: {type(err).__name__}: {text}"
           + ("" if debug else " (run with --debug for the traceback)"))
    return 1


def check_source(source: str, func: str) -> str:
    """A model source given on the command line: an existing path (``~`` expanded) or a hub id;
    a missing local path is a usage error (exit 2) before anything is loaded."""
    from ..models.sources import resolve_local

    path = resolve_local(source, func=func)
    return str(path) if path is not None else source
