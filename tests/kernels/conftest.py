"""Kernel tests: the Triton kernels against their torch references.

Without CUDA the kernels run in the Triton interpreter: ``TRITON_INTERPRET=1`` is set here,
before any test imports ``specmetrics.kernels.*.triton`` (Triton reads it when the
``@triton.jit`` decorators run). With CUDA the same tests run the compiled kernels on the GPU.
The interpreter costs per operation (~ms), so shapes stay small; the irregular 1823 x 781 cases
beyond one are marked slow. Without ``triton`` the modules that run kernels skip (each says
why); the parameter checks and the ImportError path still run.
"""
from __future__ import annotations

import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")



@pytest.fixture(scope="session")
def device() -> torch.device:
    """Where the kernels run: the GPU when there is one, else the CPU (interpreter)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny products on a shared 2-core machine: one intra-op thread is the fastest."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
