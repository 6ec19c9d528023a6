"""Sphinx configuration for specmetrics.

The API pages (``api/*.rst``: the top level and one per subpackage) are generated here from each
module's ``__all__`` at every build, so a name added to ``__all__`` is documented without editing
the docs; ``examples/plot_*.py`` are run by sphinx-gallery and shown with their figures in
``auto_examples/``. Build with::

    python -m sphinx -W --keep-going -b html docs docs/_build/html
    python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
"""
from __future__ import annotations

import importlib
import inspect
import os
from importlib.metadata import version as _dist_version
from pathlib import Path

os.environ.setdefault("MPLBACKEND", "Agg")

import specmetrics  # the installed package (pip install -e ".[docs]"); no sys.path edits

project = "specmetrics"
author = "specmetrics developers"
copyright = "specmetrics developers"
release = _dist_version("specmetrics")
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
    "numpydoc",
]

templates_path = ["_templates"]
html_static_path = ["_static"]
exclude_patterns = ["_build", "Thumbs.db", ".DS_Store"]
html_theme = "alabaster"
html_title = f"specmetrics {release}"
nitpicky = False
# numpydoc links an Attributes entry that is a property (``value``) by its bare name; where two
# classes have such a property Sphinx warns "more than one target" (the link still resolves).
suppress_warnings = ["ref.python"]

# autodoc / autosummary
autosummary_generate = True
autosummary_generate_overwrite = True
autosummary_ignore_module_all = False
autodoc_typehints = "none"  # numpydoc's Parameters sections carry the types
autodoc_member_order = "bysource"

# numpydoc
numpydoc_show_class_members = False  # the class template documents members (autodoc :members:)
numpydoc_class_members_toctree = False
numpydoc_xref_param_type = False

# doctest: examples run on CPU in seconds, with fixed seeds
doctest_global_setup = """
import warnings
import numpy as np
import torch
import specmetrics
import importlib as _importlib, pkgutil as _pkgutil
# docstring examples call the public names of their own module unqualified: every module's
# __all__ is in scope (the top level last, so its names win)
for _m in _pkgutil.walk_packages(specmetrics.__path__, "specmetrics."):
    if ".cli" in _m.name or _m.name.rsplit(".", 1)[-1].startswith("_"):
        continue
    try:
        _mod = _importlib.import_module(_m.name)
    except ImportError:  # an optional dependency that is absent
        continue
    globals().update({_n: getattr(_mod, _n) for _n in getattr(_mod, "__all__", ())
                      if hasattr(_mod, _n)})
from specmetrics import *
torch.manual_seed(0)
"""

# ---------------------------------------------------------------------------------------------
# sphinx-gallery: examples/plot_*.py are run at every build and their figures shown

extensions.append("sphinx_gallery.gen_gallery")
sphinx_gallery_conf = {
    "examples_dirs": "../examples",
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"plot_",
    # allocation_plot.py is a command-line script (docs/allocation.rst shows its figure)
    "ignore_pattern": r"__init__\.py|allocation_plot\.py",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "within_subsection_order": "FileNameSortKey",
}

# ---------------------------------------------------------------------------------------------
# API pages, generated from the __all__ of the package and of each subpackage

_HERE = Path(__file__).resolve().parent
_API_DIR = "api/generated"  # autosummary stub pages (git-ignored)

# (title, predicate) in display order; each public name goes to the first group that accepts it.
_GROUPS = [
    ("Warnings", lambda o: inspect.isclass(o) and issubclass(o, Warning)),
    ("Exceptions", lambda o: inspect.isclass(o) and issubclass(o, BaseException)),
    ("Configurations", lambda o: inspect.isclass(o) and o.__name__.endswith("Config")),
    ("Result types and classes", inspect.isclass),
    ("Functions", callable),
    ("Other objects", lambda o: True),
]
_ORDER = ["Functions", "Configurations", "Result types and classes", "Exceptions", "Warnings",
          "Other objects"]

#: (subpackage, title) of the per-subpackage pages, in the order of the layers
SUBPACKAGES = [
    ("models", "Models and checkpoints"),
    ("calibration", "Calibration data and the block runner"),
    ("spectrum", "Weight spectra"),
    ("allocation", "Allocation"),
    ("pruning", "Pruning"),
    ("evaluation", "Evaluation"),
    ("activations", "Activation sparsity"),
    ("sparse_coding", "Sparse-coding metrics"),
    ("hessian", "Hessian spectra"),
    ("circuits", "Circuit analyses"),
    ("kernels", "Triton kernels"),
    ("experiments", "Experiments (grid runners, the demo)"),
    ("plotting", "Plotting"),
    ("exceptions", "Errors and warnings"),
]


def _module_rst(modname: str, title: str, names: list[str], intro: str = "",
                top: tuple = ()) -> str:
    """The page of one module; objects also exported at the top level (``top``) are documented
    once, on the top-level page, and only linked from here."""
    module = importlib.import_module(modname)
    grouped: dict[str, list[str]] = {t: [] for t, _ in _GROUPS}
    elsewhere: list[str] = []
    for name in names:
        obj = getattr(module, name)  # an unresolvable name fails the build, as it should
        if any(obj is getattr(specmetrics, t) for t in top if t == name):
            elsewhere.append(name)
            continue
        grouped[next(t for t, accepts in _GROUPS if accepts(obj))].append(name)
    lines = [".. This file is generated by conf.py from __all__; edits are overwritten.", "",
             title, "=" * len(title), ""]
    if intro:
        lines += [intro, ""]
    lines += [f".. automodule:: {modname}", "   :no-members:", "", f".. currentmodule:: {modname}",
              ""]
    for group in _ORDER:
        if not grouped[group]:
            continue
        lines += [group, "-" * len(group), "", ".. autosummary::", f"   :toctree: generated",
                  "   :nosignatures:", ""]
        lines += [f"   {name}" for name in grouped[group]]
        lines.append("")
    if elsewhere:
        lines += ["Also exported at the top level", "-" * 30, "",
                  "Importable from here too; documented on the :doc:`top-level page "
                  "<specmetrics>`: " + ", ".join(f":obj:`~specmetrics.{n}`" for n in elsewhere)
                  + ".", ""]
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text(encoding="utf-8") != text:
        path.write_text(text, encoding="utf-8")


def _api_pages() -> None:
    import importlib.util

    pages = []
    top = list(getattr(specmetrics, "__all__", []))
    _write_if_changed(_HERE / "api" / "specmetrics.rst", _module_rst(
        "specmetrics", "specmetrics (top level)", top,
        "Everything below is importable from the top-level package, e.g. ``specmetrics.esd``."))
    pages.append("specmetrics")
    for sub, title in SUBPACKAGES:
        modname = f"specmetrics.{sub}"
        if importlib.util.find_spec(modname) is None:
            continue
        module = importlib.import_module(modname)
        names = [n for n in getattr(module, "__all__", []) if not n.startswith("_")]
        _write_if_changed(_HERE / "api" / f"{sub}.rst",
                          _module_rst(modname, title, names, top=tuple(top)))
        pages.append(sub)
    index = ["API reference", "=============", "",
             "One page per subpackage, in the order of the layers (each subpackage's docstring "
             "says what it holds and what it may import).", "", ".. toctree::",
             "   :maxdepth: 1", ""] + [f"   {p}" for p in pages] + [""]
    _write_if_changed(_HERE / "api" / "index.rst", "\n".join(index))
    # pages of subpackages that no longer exist
    for stale in (_HERE / "api").glob("*.rst"):
        if stale.stem not in pages and stale.stem != "index":
            stale.unlink()


_api_pages()
