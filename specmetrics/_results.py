"""The one base of every keyed result: a read-only mapping with tables, JSON and plots.

Every result the library returns that holds one entry per module, block, site, task or cell
(``SpectrumReport``, ``Allocation``, ``PruneReport``, ``ActivationStats``, ...) derives from
:class:`KeyedResult`:

- the read-only :class:`~collections.abc.Mapping` protocol, keyed by qualified name (never by
  position), in model order;
- ``.settings``: the options that produced it, a read-only mapping of JSON-able values;
- ``.to_frame()``: a :class:`pandas.DataFrame` (pandas imported when called);
- ``.to_json(path=None)`` / ``cls.from_json(source)``: a lossless round trip (non-finite floats
  are written as ``null`` and read back as NaN);
- ``.plot(ax=None)``: a matplotlib ``Axes`` where a plot exists (matplotlib imported when called);
- truly frozen: assigning or deleting an attribute raises ``AttributeError``; containers inside
  are read-only (mappings are :class:`types.MappingProxyType`, sequences tuples, numpy arrays
  non-writeable).

This module imports nothing internal but the exceptions.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, Iterator

__all__ = ["KeyedResult", "Settings", "freeze", "jsonable", "read_json_source"]


def freeze(value: Any) -> Any:
    """A read-only version of ``value``: mappings → ``MappingProxyType``, lists → tuples, numpy
    arrays → non-writeable views; everything else unchanged."""
    if isinstance(value, Settings):
        return value
    if isinstance(value, (dict, MappingProxyType)):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list):
        return tuple(freeze(v) for v in value)
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(freeze(v) for v in value)
    if type(value).__module__ == "numpy" and hasattr(value, "flags") and hasattr(value, "setflags"):
        view = value.view()
        view.setflags(write=False)
        return view
    return value


def jsonable(value: Any) -> Any:
    """Plain JSON values: mappings → dicts, sequences → lists, NaN/inf → ``None``, numpy and
    torch scalars → Python numbers, dtypes/devices → strings, configs → ``{"name", fields}``."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out = {"name": getattr(value, "name", type(value).__name__)}
        for f in dataclasses.fields(value):
            if f.repr and f.compare:
                out[f.name] = jsonable(getattr(value, f.name))
        return out
    module = type(value).__module__
    if module == "numpy":
        if hasattr(value, "tolist"):
            return jsonable(value.tolist())
    if module.startswith("torch"):
        if hasattr(value, "tolist") and hasattr(value, "dim"):
            return jsonable(value.tolist())
        return str(value)
    return str(value)


def read_json_source(source: Any, *, func: str) -> Any:
    """Parse ``source``: JSON text (a ``str`` starting with ``{``) or a file (a path)."""
    from ._validation import fail

    if isinstance(source, str) and source.lstrip().startswith("{"):
        text = source
    elif isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.is_file():
            raise fail("source", func, "JSON text or the path of a JSON file", str(source))
        text = path.read_text(encoding="utf-8")
    else:
        raise fail("source", func, "JSON text or the path of a JSON file", type(source).__name__)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise fail("source", func, f"valid JSON ({err})", text[:80]) from None


class Settings(Mapping):
    """The read-only options a result was computed with (a mapping of JSON-able values).

    Calling it (``result.settings()``, the older spelling on some results) returns a plain
    ``dict`` copy with a :class:`DeprecationWarning`.
    """

    __slots__ = ("_data",)

    def __init__(self, data: Mapping | None = None):
        object.__setattr__(self, "_data", MappingProxyType({k: freeze(v) for k, v in
                                                            dict(data or {}).items()}))

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"Settings({dict(self._data)!r})"

    def __setattr__(self, name, value):
        raise AttributeError("result settings are read-only")

    def __call__(self) -> dict:
        warnings.warn("settings is a read-only mapping now; use `.settings` without calling it "
                      "(`dict(result.settings)` for a copy).", DeprecationWarning, stacklevel=2)
        return dict(self._data)


class KeyedResult(Mapping):
    """Base of the keyed results (see the module docstring).

    Subclasses call :meth:`_init_result` once (from ``__init__`` or a dataclass
    ``__post_init__``) with the mapping of entries and the settings, and implement
    :meth:`to_frame`, :meth:`_to_payload` and :meth:`_from_payload`.
    """

    #: bump when the JSON layout of a subclass changes incompatibly
    _json_version: ClassVar[int] = 1

    # -- construction ------------------------------------------------------------------------
    def _init_result(self, items: Mapping, settings: Mapping | None = None) -> None:
        object.__setattr__(self, "_items", MappingProxyType(dict(items)))
        object.__setattr__(self, "settings", settings if isinstance(settings, Settings)
                           else Settings(settings))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only (tried to set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is read-only (tried to delete {name!r})")

    # -- mapping protocol --------------------------------------------------------------------
    def __getitem__(self, key):
        return self._items[key]

    def __iter__(self) -> Iterator:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, key) -> bool:
        try:
            return key in self._items
        except TypeError:  # an unhashable key is simply absent
            return False

    __hash__ = None  # results are compared by content (Mapping.__eq__), not hashed

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} entries)"

    # -- common surface ----------------------------------------------------------------------
    #: The options that produced this result (read-only, JSON-able); set by ``_init_result``.
    settings: Settings

    def to_frame(self):  # pragma: no cover - every subclass implements it
        """The result as a :class:`pandas.DataFrame`, one row per entry."""
        raise NotImplementedError

    def to_json(self, path: str | os.PathLike | None = None, *, indent: int | None = 2) -> str:
        """Serialise to JSON; write it to ``path`` too when given.

        Parameters
        ----------
        path : str or path-like, optional
            File to write (its folder must exist).
        indent : int or None, default 2

        Returns
        -------
        str
            ``{"format": "specmetrics.<Class>", "version", "settings", "data"}`` with non-finite
            floats as ``null``.
        """
        return self._write_json(self._to_payload(), path, indent)

    def _write_json(self, data: Any, path, indent) -> str:
        payload = {
            "format": self._json_format(),
            "version": self._json_version,
            "settings": jsonable(self.settings),
            "data": jsonable(data),
        }
        text = json.dumps(payload, indent=indent, allow_nan=False)
        if path is not None:
            Path(path).write_text(text + "\n", encoding="utf-8")
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike):
        """Read a result written by :meth:`to_json`.

        Parameters
        ----------
        source : str or path-like
            JSON text (a ``str`` starting with ``{``), or the path of a file holding it.
        """
        func = f"{cls.__name__}.from_json"
        payload = read_json_source(source, func=func)
        from ._validation import fail

        if not isinstance(payload, dict) or payload.get("format") != cls._json_format():
            got = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
            raise fail("source", func, f"a serialised {cls.__name__} (format "
                       f"{cls._json_format()!r})", got)
        if payload.get("version") != cls._json_version:
            raise fail("source", func, f"version {cls._json_version} of the format",
                       payload.get("version"))
        return cls._from_payload(payload.get("data"), payload.get("settings") or {})

    @classmethod
    def _json_format(cls) -> str:
        return f"specmetrics.{cls.__name__}"

    def _to_payload(self) -> Any:  # pragma: no cover - every subclass implements it
        raise NotImplementedError

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping):  # pragma: no cover
        raise NotImplementedError


def nan_if_none(value: Any) -> float:
    """JSON's ``null`` back to NaN (for float fields)."""
    return math.nan if value is None else float(value)
