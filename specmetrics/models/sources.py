"""What a source string or path names, and reading checkpoints without building the model.

The one rule for model sources (every function and command that takes a model by name uses it):

- an existing path is local: a ``.safetensors`` file, a ``.gguf`` file, or a folder (of
  safetensors shards, or a Hugging Face model folder, possibly holding one ``.gguf`` file);
- a string that cannot be a hub id (absolute or relative path syntax, ``~``, a file suffix) and
  does not exist is a missing local path, reported as such;
- anything else is a Hugging Face hub id: used from the local hub cache when it is there,
  otherwise downloaded, after a quick reachability check, so that an offline machine fails at
  once with a message saying how to use a local folder instead.
"""
from __future__ import annotations

import json
import os
import re
import socket
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

from .._validation import fail

__all__ = [
    "FILE_SUFFIXES", "looks_local", "resolve_local", "safetensors_files", "gguf_file",
    "open_safetensors", "read_config", "hub_reachable", "resolve_hub_id",
]

#: Suffixes that mark a string as a local file rather than a hub id.
FILE_SUFFIXES = (".safetensors", ".gguf", ".bin", ".pt", ".pth", ".ckpt")
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_local(source: Any) -> bool:
    """A path object, or a string that no hub id can be (path syntax or a file suffix)."""
    if not isinstance(source, str):
        return True
    return (source.startswith(("/", "./", "../", "~", "\\", ".")) or "\\" in source
            or source.lower().endswith(FILE_SUFFIXES) or source.count("/") > 1
            or not _HUB_ID.match(source))


def resolve_local(source: Any, *, func: str, name: str = "source") -> Optional[Path]:
    """The local path a source names (``~`` expanded), ``None`` for a hub id.

    Raises
    ------
    ParameterError
        For a string or path that looks local but does not exist.
    """
    if isinstance(source, (str, os.PathLike)):
        path = Path(os.path.expanduser(os.fspath(source)))
        if path.exists():
            return path
        if looks_local(source):
            raise fail(name, func, "an existing file or folder, or a Hugging Face hub id "
                       "(no such file or folder)", os.fspath(source))
        return None
    raise fail(name, func, "a path or a Hugging Face hub id", type(source).__name__)


def safetensors_files(path: Path) -> list[Path]:
    """The ``.safetensors`` file itself, or the shards in a folder (sorted by name)."""
    if path.is_file():
        return [path] if path.suffix == ".safetensors" else []
    return sorted(path.glob("*.safetensors"))


def gguf_file(path: Path) -> Optional[Path]:
    """The ``.gguf`` file itself, or the single one in a folder (``None`` when none)."""
    if path.is_file():
        return path if path.suffix == ".gguf" else None
    found = sorted(path.glob("*.gguf"))
    if len(found) > 1:
        raise fail("source", "load_model", "a folder with one .gguf file (or the .gguf file "
                   "itself)", f"{path} holding {[f.name for f in found]}")
    return found[0] if found else None


def open_safetensors(file: Path, *, func: str):
    """``safetensors.safe_open`` with errors that name the file.

    Raises
    ------
    ParameterError
        For a truncated, corrupt or unreadable file.
    """
    try:
        from safetensors import safe_open
    except ImportError as err:
        raise ImportError(f"reading {file} needs safetensors: pip install 'specmetrics[hf]'") \
            from err
    try:
        return safe_open(str(file), framework="pt")
    except Exception as err:  # SafetensorError (rust), OSError
        raise fail("source", func, "a readable .safetensors file (this one is truncated, corrupt "
                   f"or unreadable: {type(err).__name__}: {err})", str(file)) from None


def read_config(folder: Path) -> Optional[dict]:
    """The ``config.json`` of a model folder as a dict, ``None`` when absent or unreadable."""
    try:
        return json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers a TCP connection within ``timeout`` seconds.

    ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) means not reachable, without trying.
    """
    if os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "True", "ON", "YES") or \
            os.environ.get("TRANSFORMERS_OFFLINE", "") in ("1", "true", "True", "ON", "YES"):
        return False
    parsed = urlparse(_hub_endpoint())
    host = parsed.hostname or "huggingface.co"
    port = parsed.port or (443 if parsed.scheme != "http" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_hub_id(repo_id: str, *, func: str, patterns=("*.safetensors", "*.json", "*.gguf",
                                                           "*.model", "*.txt")) -> Path:
    """A local folder for a hub id: the cached snapshot, else a download.

    Raises
    ------
    ParameterError
        When the id is not cached and the hub is not reachable from this machine (checked in a
        few seconds, before any download is attempted), or the download fails.
    """
    try:
        from huggingface_hub import snapshot_download
    except ImportError as err:
        raise ImportError(f"reading the hub id {repo_id!r} needs huggingface_hub: pip install "
                          "'specmetrics[hf]'") from err
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(patterns),
                                      local_files_only=True))
    except Exception:  # not in the local cache
        pass
    if not hub_reachable():
        raise fail("source", func, "an existing file or folder, or a hub id reachable from here "
                   f"(it is not in the local cache and {_hub_endpoint()} is not reachable from "
                   "this machine: download the model where the hub is reachable and pass its "
                   "folder, a .safetensors file or a .gguf file)", repo_id)
    try:
        return Path(snapshot_download(repo_id, allow_patterns=list(patterns)))
    except Exception as err:
        raise fail("source", func, f"a Hugging Face hub id that exists ({type(err).__name__}: "
                   f"{err})", repo_id) from None
