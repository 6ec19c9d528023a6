"""``benchmarks/bench_kernels.py`` refuses to run without a GPU and its code paths run."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_kernels.py"


def run(*args, env_extra=None, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


def test_refuses_cleanly_without_cuda(tmp_path):
    out = tmp_path / "r.json"
    proc = run("--quick", "--json", str(out), env_extra={"CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 2, proc.stderr
    assert "needs a CUDA GPU" in proc.stderr and "nothing was measured" in proc.stderr
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU smoke run is for CPU machines")
def test_cpu_smoke_run_of_every_section(tmp_path):
    out = tmp_path / "smoke.json"
    proc = run("--cpu-smoke", "--json", str(out), "--new-tokens", "2",
               env_extra={"OMP_NUM_THREADS": "1"}, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    results = json.loads(out.read_text())
    assert {"gemv", "sweep", "crossover", "mlp", "e2e", "must_show"} <= set(results)
    assert all(r["max_rel_err"] < 2e-2 for r in results["gemv"] + results["mlp"])
