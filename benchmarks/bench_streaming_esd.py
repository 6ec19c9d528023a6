"""Peak host memory and time of ``specmetrics.esd()`` streaming a sharded safetensors checkpoint.

Writes a synthetic checkpoint with LLaMA-7B's per-block shapes (q, k, v, o 4096x4096; gate, up
11008x4096; down 4096x11008), seeded random fp16 weights, one shard per block plus
``model.safetensors.index.json``, into a temporary folder (``--blocks`` blocks: 7 matrices,
~0.4 GB each; the full model is 32 blocks, ~13 GB). Then, in a **fresh interpreter** (so that
nothing the writer held counts):

1. imports torch and specmetrics and runs a tiny ``esd()`` (loads LAPACK, the fit code...);
   the peak resident set size so far (``VmHWM`` of ``/proc/self/status``) is the *baseline*;
2. runs ``esd(folder, dtype=..., batch_bytes=...)`` and reads ``VmHWM`` again: the difference
   is the peak host memory the streaming costs. A sampling thread (every 5 ms) also records
   the peak anonymous memory (``RssAnon``) and file-backed memory (``RssFile``: the memory-mapped
   pages of the tensor being read) separately;
3. times, for one matrix of each shape, reading it from its shard and its eigenvalues
   (``eigenvalues()`` in the compute dtype): the time per shape.

The table compares the peak above the baseline with the size of the largest matrix in the
compute dtype and with ``batch_bytes``; ``--results`` appends a section to
``benchmarks/RESULTS-streaming.md``.

Usage::

    python benchmarks/bench_streaming_esd.py                    # 2 blocks, float32
    python benchmarks/bench_streaming_esd.py --blocks 1 --dtype float64
    python benchmarks/bench_streaming_esd.py --results benchmarks/RESULTS-streaming.md

On a shared machine hold the heavy-work lock:
``OMP_WAIT_POLICY=PASSIVE flock /tmp/specmetrics-heavy.lock nice python benchmarks/...``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HIDDEN, INTERMEDIATE = 4096, 11008
#: (module name in the block, shape as stored (out, in)) of one LLaMA-7B decoder block
BLOCK = (
    ("self_attn.q_proj", (HIDDEN, HIDDEN)),
    ("self_attn.k_proj", (HIDDEN, HIDDEN)),
    ("self_attn.v_proj", (HIDDEN, HIDDEN)),
    ("self_attn.o_proj", (HIDDEN, HIDDEN)),
    ("mlp.gate_proj", (INTERMEDIATE, HIDDEN)),
    ("mlp.up_proj", (INTERMEDIATE, HIDDEN)),
    ("mlp.down_proj", (HIDDEN, INTERMEDIATE)),
)
MIB = 1 << 20


def write_checkpoint(folder: Path, blocks: int, seed: int = 0) -> dict:
    """One fp16 shard per block and the index; returns ``{key: shape}``."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(seed)
    weight_map, shapes = {}, {}
    for b in range(blocks):
        shard = f"model-{b + 1:05d}-of-{blocks:05d}.safetensors"
        tensors = {}
        for name, shape in BLOCK:
            key = f"model.layers.{b}.{name}.weight"
            tensors[key] = (torch.randn(shape, generator=gen) / shape[1] ** 0.5).half()
            weight_map[key] = shard
            shapes[key] = shape
        save_file(tensors, str(folder / shard), metadata={"format": "pt"})
        del tensors
    total = sum(2 * s[0] * s[1] for s in shapes.values())
    (folder / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    return shapes


# --------------------------------------------------------------------------------------------
# the measured child process


def _status_kib(*fields: str) -> dict:
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            key, _, value = line.partition(":")
            if key in fields:
                out[key] = int(value.split()[0])
    return out


class _Sampler(threading.Thread):
    """Peak RssAnon / RssFile, sampled every 5 ms."""

    def __init__(self):
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            now = _status_kib("RssAnon", "RssFile")
            for k, v in now.items():
                self.peak[k] = max(self.peak[k], v)
            time.sleep(0.005)

    def stop(self):
        self._halt.set()
        self.join()


def child(folder: str, dtype_name: str, batch_bytes: int) -> dict:
    import warnings

    import torch

    import specmetrics
    from specmetrics.models.matrices import list_weight_matrices
    from specmetrics.spectrum import eigenvalues

    dtype = getattr(torch, dtype_name)
    warnings.simplefilter("ignore")  # Gaussian weights: some fits may be degenerate
    specmetrics.esd(torch.randn(64, 48, dtype=torch.float64), dtype=dtype)  # warm-up
    base = _status_kib("VmHWM", "VmRSS", "RssAnon", "RssFile")
    sampler = _Sampler()
    sampler.start()
    t0 = time.perf_counter()
    report = specmetrics.esd(folder, dtype=dtype, batch_bytes=batch_bytes)
    total = time.perf_counter() - t0
    sampler.stop()
    peak = _status_kib("VmHWM")["VmHWM"]
    n_matrices = len(report)
    alphas = [float(v.alpha) for v in report.values()]
    del report

    per_shape = {}
    for w in list_weight_matrices(folder, func="bench"):
        if w.shape in per_shape:
            continue
        t1 = time.perf_counter()
        weight = w.load()
        t2 = time.perf_counter()
        ev = eigenvalues(weight.to(dtype))
        t3 = time.perf_counter()
        per_shape[w.shape] = {"read_s": t2 - t1, "eigen_s": t3 - t2, "n_eigen": int(ev.numel())}
        del weight, ev
    return {
        "baseline_hwm_mib": base["VmHWM"] / 1024, "baseline_rss_mib": base["VmRSS"] / 1024,
        "baseline_anon_mib": base["RssAnon"] / 1024, "baseline_file_mib": base["RssFile"] / 1024,
        "peak_hwm_mib": peak / 1024,
        "peak_anon_mib": sampler.peak["RssAnon"] / 1024,
        "peak_file_mib": sampler.peak["RssFile"] / 1024,
        "esd_s": total, "matrices": n_matrices, "alpha_finite": sum(a == a for a in alphas),
        "per_shape": {"x".join(map(str, k)): v for k, v in per_shape.items()},
        "threads": torch.get_num_threads(), "torch": torch.__version__,
    }


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--blocks", type=int, default=2, help="decoder blocks (7 matrices each)")
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    parser.add_argument("--batch-bytes", type=int, default=1 << 28,
                        help="esd(batch_bytes=) (default 256 MiB, esd's default)")
    parser.add_argument("--dir", help="write the checkpoint here (default: a temporary folder, "
                                      "removed afterwards)")
    parser.add_argument("--results", help="append a section to this Markdown file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.dtype, args.batch_bytes)))
        return 0

    tmp = None
    if args.dir:
        folder = Path(args.dir)
        folder.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="specmetrics-stream-")
        folder = Path(tmp)
    try:
        t0 = time.perf_counter()
        shapes = write_checkpoint(folder, args.blocks)
        write_s = time.perf_counter() - t0
        disk = sum(f.stat().st_size for f in folder.glob("*.safetensors"))
        proc = subprocess.run(
            [sys.executable, __file__, "--child", str(folder), "--dtype", args.dtype,
             "--batch-bytes", str(args.batch_bytes)],
            capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            return proc.returncode
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)

    itemsize = 4 if args.dtype == "float32" else 8
    largest = max(a * b for a, b in shapes.values())
    largest_compute = largest * itemsize / MIB
    largest_fp16 = largest * 2 / MIB
    above = res["peak_hwm_mib"] - res["baseline_hwm_mib"]
    lines = [
        f"checkpoint: {args.blocks} blocks x 7 matrices of LLaMA-7B shapes, fp16, "
        f"{disk / MIB:.0f} MiB on disk (written in {write_s:.1f} s)",
        f"esd(dtype={args.dtype}, batch_bytes={args.batch_bytes / MIB:.0f} MiB): "
        f"{res['matrices']} matrices in {res['esd_s']:.1f} s ({res['threads']} threads)",
        "",
        "| memory (MiB) | value |",
        "|---|---:|",
        f"| baseline after imports (VmHWM) | {res['baseline_hwm_mib']:.0f} |",
        f"| peak during esd (VmHWM) | {res['peak_hwm_mib']:.0f} |",
        f"| **peak above baseline** | **{above:.0f}** |",
        f"| peak RssAnon / RssFile during esd (sampled; baseline {res['baseline_anon_mib']:.0f}"
        f" / {res['baseline_file_mib']:.0f}) | {res['peak_anon_mib']:.0f} / "
        f"{res['peak_file_mib']:.0f} |",
        f"| largest matrix, {args.dtype} / fp16 as stored | {largest_compute:.0f} / "
        f"{largest_fp16:.0f} |",
        f"| peak above baseline / largest matrix in {args.dtype} | {above / largest_compute:.2f} |",
        f"| checkpoint on disk | {disk / MIB:.0f} |",
        "",
        f"| shape | read from shard (s) | eigenvalues, {args.dtype} (s) |",
        "|---|---:|---:|",
    ]
    for shape, t in res["per_shape"].items():
        lines.append(f"| {shape} | {t['read_s']:.2f} | {t['eigen_s']:.2f} |")
    table = "\n".join(lines)
    print(table)
    if args.results:
        now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
        cpu = platform.processor() or platform.machine()
        header = (f"\n## Streaming ESD, {args.blocks} LLaMA-7B-shape blocks, {args.dtype} "
                  f"({now})\n\nMachine: {os.cpu_count()}-core CPU ({cpu}), "
                  f"{platform.system()} {platform.release()}, torch {res['torch']}, "
                  f"Python {platform.python_version()}; load average "
                  f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.\n"
                  f"Command: `python benchmarks/bench_streaming_esd.py --blocks {args.blocks} "
                  f"--dtype {args.dtype} --batch-bytes {args.batch_bytes}`\n\n")
        path = Path(args.results)
        if not path.exists():
            path.write_text("# Streaming ESD from sharded checkpoints: measured\n")
        with open(path, "a") as fh:
            fh.write(header + table + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
