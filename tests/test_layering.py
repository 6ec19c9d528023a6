"""The layers of the house: the import contract holds, and no package reaches into another's
private names.

``lint-imports`` checks the layer contract of ``pyproject.toml`` (``[tool.importlinter]``). The
AST scan here checks what import-linter cannot: no module imports an underscore name from
another package (``from ..spectrum import _skip_reason``), and the ``kernels`` folder (installed
as ``specmetrics.kernels`` from outside ``specmetrics/``) imports only torch, triton, the
standard library and the base files.
"""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "specmetrics"
KERNELS = ROOT / "kernels"
BASE_FILES = {"specmetrics.exceptions", "specmetrics._validation", "specmetrics._results"}


def _module_name(path: Path) -> str:
    if path.is_relative_to(KERNELS):
        parts = ("specmetrics", "kernels") + path.relative_to(KERNELS).with_suffix("").parts
    else:
        parts = ("specmetrics",) + path.relative_to(PACKAGE).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _imports(path: Path):
    """``(target module, imported names)`` of every ``from ... import`` in a file, resolved."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            yield target, [a.name for a in node.names], node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno


def _package_of(module: str) -> str:
    """``specmetrics.<subpackage>`` (or the module itself for a top-level module)."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else module


def _all_files():
    files = sorted(PACKAGE.rglob("*.py")) + sorted(KERNELS.rglob("*.py"))
    return [f for f in files if "__pycache__" not in f.parts]


def test_scan_sees_the_whole_library():
    names = {_module_name(f) for f in _all_files()}
    assert {"specmetrics.models.blocks", "specmetrics.calibration.runner",
            "specmetrics.spectrum.backends.base", "specmetrics.kernels"} <= names


def test_no_module_imports_another_packages_private_names():
    offences = []
    for path in _all_files():
        importer = _module_name(path)
        for target, names, line in _imports(path):
            if not target.startswith("specmetrics"):
                continue
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private and _package_of(target) != _package_of(importer):
                offences.append(f"{path.relative_to(ROOT)}:{line}: {target} {private}")
            # a private *module* of another package (e.g. ``from ..pruning._x import y``)
            tail = target.split(".")[2:]
            if any(p.startswith("_") for p in tail) and _package_of(target) != \
                    _package_of(importer):
                offences.append(f"{path.relative_to(ROOT)}:{line}: private module {target}")
    assert not offences, "\n".join(offences)


def test_kernels_import_torch_triton_and_the_base_files_only():
    allowed_roots = {"torch", "triton", "numpy"} | set(sys.stdlib_module_names)
    offences = []
    for path in sorted(KERNELS.rglob("*.py")):
        for target, _, line in _imports(path):
            root = target.split(".")[0]
            if target.startswith("specmetrics.kernels") or target in BASE_FILES:
                continue
            if root == "specmetrics" or root not in allowed_roots:
                offences.append(f"{path.relative_to(ROOT)}:{line}: {target}")
    assert not offences, "\n".join(offences)


def test_import_contract_holds():
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(exe).exists():
        pytest.fail("lint-imports is not installed (it is part of the test extra: import-linter)")
    proc = subprocess.run([exe, "--no-cache", "--no-logo"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" in proc.stdout and " 0 broken" in proc.stdout
