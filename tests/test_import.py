"""Importing specmetrics is cheap and has no side effects (design §3).

The checks run in fresh interpreters: ``import torch`` first (its own cost and state are not ours),
then a snapshot of global state, then ``import specmetrics``.
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import specmetrics

#: What `import specmetrics` may add to the time of `import torch` (seconds, best of 3 runs).
IMPORT_BUDGET_S = 0.3
#: Heavy optional packages that must be imported lazily, at first use.
LAZY = ("weightwatcher", "matplotlib", "pandas", "triton", "transformers")

_PROBE = textwrap.dedent(
    """
    import json, logging, sys, time, warnings
    import numpy as np
    import torch

    def state():
        return {
            "root_level": logging.root.level,
            "root_handlers": [repr(h) for h in logging.root.handlers],
            "logging_disable": logging.root.manager.disable,
            "warning_filters": [repr(f) for f in warnings.filters],
            "showwarning": repr(warnings.showwarning),
            "torch_default_dtype": str(torch.get_default_dtype()),
            "torch_matmul_precision": torch.get_float32_matmul_precision(),
            "torch_deterministic": torch.are_deterministic_algorithms_enabled(),
            "torch_grad_enabled": torch.is_grad_enabled(),
            "torch_num_threads": torch.get_num_threads(),
            "numpy_errstate": np.geterr(),
        }

    before_state = state()
    before_modules = set(sys.modules)
    t0 = time.perf_counter()
    import specmetrics
    elapsed = time.perf_counter() - t0
    after_state = state()
    after_modules = set(sys.modules)
    import specmetrics.kernels
    print(json.dumps({
        "elapsed": elapsed,
        "before": before_state,
        "after": after_state,
        "added": sorted(after_modules - before_modules),
        "present": sorted(m for m in after_modules if m.split(".")[0] in %r),
        "added_by_kernels": sorted(set(sys.modules) - after_modules),
    }))
    """
    % (LAZY,)
)


def _probe() -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).parent,  # not the repo root: import the installed package
        timeout=300,
    )
    assert proc.returncode == 0, f"fresh-interpreter import failed:\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def probes() -> list[dict]:
    return [_probe() for _ in range(3)]


def test_import_is_light(probes):
    """``import specmetrics`` loads the package's ``__init__`` and nothing else of ours or of
    anyone's (a count, not a clock: timings on a shared machine prove nothing)."""
    added = probes[0]["added"]
    ours = [m for m in added if m.split(".")[0] == "specmetrics"]
    assert ours == ["specmetrics"], ours
    others = [m for m in added if m.split(".")[0] != "specmetrics"]
    assert len(others) <= 5, others  # at most a few stdlib helpers (importlib machinery)
    best = min(p["elapsed"] for p in probes)
    print(f"import specmetrics after torch: {best * 1e3:.2f} ms (informative only; "
          f"budget once {IMPORT_BUDGET_S} s)")


def test_import_does_not_load_optional_packages(probes):
    probe = probes[0]
    heavy_added = [m for m in probe["added"] if m.split(".")[0] in LAZY]
    assert not heavy_added, f"`import specmetrics` imported {sorted(set(heavy_added))}"
    # `import torch` itself must not have loaded them either, or the check above proves nothing.
    assert not probe["present"], f"present after import: {probe['present']}"


def test_import_has_no_global_side_effects(probes):
    probe = probes[0]
    changed = {
        key: (probe["before"][key], probe["after"][key])
        for key in probe["before"]
        if probe["before"][key] != probe["after"][key]
    }
    assert not changed, f"`import specmetrics` changed global state (before, after): {changed}"


def test_all_names_resolve():
    assert len(set(specmetrics.__all__)) == len(specmetrics.__all__), "duplicates in __all__"
    missing = [name for name in specmetrics.__all__ if not hasattr(specmetrics, name)]
    assert not missing, f"names in specmetrics.__all__ that do not resolve: {missing}"


def test_kernels_package_is_installed_under_specmetrics(probes):
    import specmetrics.kernels as kernels

    repo_root = Path(__file__).resolve().parent.parent
    location = Path(kernels.__file__).resolve().parent
    # Editable installs map it to the top-level kernels/ folder; wheels put it inside the package.
    expected = (repo_root / "kernels", Path(specmetrics.__file__).resolve().parent / "kernels")
    assert location in expected, f"specmetrics.kernels imported from {location}"
    heavy = sorted({m.split(".")[0] for m in probes[0]["added_by_kernels"]} & set(LAZY))
    assert not heavy, f"`import specmetrics.kernels` imported {heavy} (import them at first use)"
