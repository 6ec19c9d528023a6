"""Perplexity and wall time of ``specmetrics.prune()`` on tiny-llama-wt, with uniform and
AlphaPruning allocations, and optionally side by side with the Wanda and SparseGPT reference code.

The table
---------
Dense, then magnitude, Wanda and SparseGPT, each with

- ``uniform``: the same ratio for every prunable matrix;
- ``alpha``: ``allocate(model, target, method=AlphaPruningConfig(epsilon=0.2))`` (alpha_peak,
  block units, the default clip), computed once per target on the dense model;

at 50 % and 70 % unstructured, and 2:4 (uniform only: an N:M pattern takes no per-module ratios).
Wanda and SparseGPT are calibrated on ``--nsamples`` windows of ``--seqlen`` tokens drawn with
seed ``--seed`` from the tokenized WikiText-2 *valid* split (one ``CalibrationSet``, so every run
sees the same token ids); magnitude pruning is run without calibration (it needs none, so its time
is the mask alone). Perplexity: tokenized WikiText-2 *test*, non-overlapping ``--seqlen``-token
windows, the first ``--windows`` of them (``specmetrics.perplexity``). ``time`` is
``PruneReport.time_s``: the whole ``prune()`` call (calibration capture, statistics pass, pruning,
re-run of each block, and the reconstruction-error measurement prune does by default).

Against the reference implementations (``--reference-dir DIR``)
---------------------------------------------------------------
``DIR`` holds unmodified checkouts of github.com/locuslab/wanda as ``DIR/wanda`` and of
github.com/IST-DASLab/sparsegpt as ``DIR/sparsegpt`` (either may be missing; it is then skipped).
Nothing of them is in this repository: this script imports them from ``DIR`` at run time and calls
their own layer-sequential functions, ``lib.prune.prune_wanda`` (Wanda) and
``llama.llama_sequential`` (SparseGPT), on a copy of the same dense model, with the same
calibration token ids, the same number of threads, 50 % unstructured and 2:4. The only things
adapted, all from the outside and undone afterwards:

- transformers 5.x decoder layers need the rotary ``position_embeddings`` keyword, which the
  reference loops (written for transformers 4.3x) do not pass: a forward pre-hook on each decoder
  layer computes it from ``position_ids`` (or ``arange(seqlen)``) with the model's own
  ``rotary_emb`` when it is missing (the model's own forward passes it, so the hook does nothing
  there);
- their calibration loader (C4 from the Hub) is replaced by our windows, as the list of
  ``(input_ids, target)`` pairs they expect; ``model.seqlen`` is set to ``--seqlen``;
- ``model.hf_device_map`` (read by Wanda) is set to ``{}`` when the model has none;
- ``torch.cuda.synchronize`` (called unconditionally by SparseGPT's ``fasterprune``) is a no-op
  while the reference runs when there is no CUDA;
- their prints go to a buffer.

Our side runs ``prune(..., measure_error=False)`` so both do the same work (capture, one
statistics pass per block, prune, one re-run per block); ours with the default error measurement
is timed too. Both sides run ``--reference-repeat`` times, alternating; the best and median wall
times are reported, and the best process CPU time (``time.process_time``), which a loaded shared
machine disturbs less than wall time. Masks are compared module by module (``weight == 0``), as is the perplexity of both
pruned models. Unless ``--no-isolated``, SparseGPT's per-matrix core also runs on identical
inputs: the Hessian of each block-0 matrix from our capture, fed to their
``SparseGPT.fasterprune`` and to our ``sparsegpt_prune``, plus ours asked for one more weight per
tile (``s' = s + 1.5 / tile size``; only for matrices whose input size is a multiple of the
128-column block, where every tile has the same size) to reproduce the reference's count.

``--noise-floor`` prunes with our Wanda and SparseGPT at ``--threads`` and at ``--threads + 1``
threads and compares the masks: the disagreement that float rounding alone (another GEMM
blocking) produces in a layer-sequential prune, the yardstick for the ours/reference agreement.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_prune.py                      # the table
    OMP_NUM_THREADS=1 python benchmarks/bench_prune.py --quick              # 16 calibration windows
    OMP_NUM_THREADS=1 python benchmarks/bench_prune.py --sensitivity        # + per-block sensitivity
    OMP_NUM_THREADS=1 python benchmarks/bench_prune.py --skip-table --reference-dir /tmp/refbench
    OMP_NUM_THREADS=1 python benchmarks/bench_prune.py --sensitivity --noise-floor \
        --reference-dir /tmp/refbench --out prune.json                     # everything
    python benchmarks/bench_prune.py --out results.json                     # everything as JSON

The tables go to stdout (Markdown); progress and per-run lines to stderr.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import io
import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

import specmetrics
from specmetrics import AlphaPruningConfig, MagnitudeConfig, SparseGPTConfig, WandaConfig
from specmetrics.calibration import HessianStats, SequentialRunner, load_calibration
from specmetrics.models import find_blocks
from specmetrics.evaluation import tokenize_text
from specmetrics.pruning.sparsegpt import sparsegpt_prune

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DEFAULT_MODEL = SHARED / "models" / "tiny-llama-wt"
DEFAULT_CALIBRATION = SHARED / "data" / "wikitext-2-tokenized" / "valid.txt"
DEFAULT_TEST = SHARED / "data" / "wikitext-2-tokenized" / "test.txt"

METHODS = {"magnitude": MagnitudeConfig, "wanda": WandaConfig, "sparsegpt": SparseGPTConfig}
TARGETS = (0.5, 0.7)


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------------------------
# machine

def machine_info(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import transformers

    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": threads,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
            "loadavg_start": list(os.getloadavg()), "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "specmetrics": getattr(specmetrics, "__version__", "?")}


# --------------------------------------------------------------------------------------------
# our runs

def load_model(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.eval()


def ppl(model, test_ids, opts) -> float:
    return specmetrics.perplexity(model, None, test_ids, seqlen=opts.seqlen,
                                  max_windows=opts.windows)


def run_ours(dense, sparsity, config, calib, opts, *, measure_error=True):
    model = copy.deepcopy(dense)
    needs = config.needs_calibration
    cpu0 = time.process_time()
    report = specmetrics.prune(model, sparsity, method=config,
                               calibration=calib.input_ids if needs else None,
                               nsamples=opts.nsamples, seqlen=opts.seqlen, seed=opts.seed,
                               measure_error=measure_error)
    model.cpu_time_s = time.process_time() - cpu0
    return model, report


def main_table(dense, calib, test_ids, opts) -> tuple[list[dict], dict]:
    rows = []
    dense_ppl = ppl(dense, test_ids, opts)
    rows.append(dict(method="dense", allocation="-", pattern="-", target=0.0, achieved=0.0,
                     ppl=dense_ppl, time_s=None, load=os.getloadavg()[0]))
    log(f"dense: ppl {dense_ppl:.3f}")
    allocations = {}
    for target in TARGETS:
        t0 = time.perf_counter()
        alloc = specmetrics.allocate(dense, target, method=AlphaPruningConfig(epsilon=0.2),
                                     metric="alpha_peak", units="block")
        frame = alloc.to_frame()
        allocations[target] = {"time_s": time.perf_counter() - t0,
                               "blocks": {u: {"score": float(frame.loc[u, "score"]),
                                              "ratio": float(frame.loc[u, "ratio"])}
                                          for u in frame.index},
                               "ratios": alloc}
        log(f"alpha allocation at {target}: " + ", ".join(
            f"{u.rsplit('.', 1)[-1]}:{v['ratio']:.3f}" for u, v in
            allocations[target]["blocks"].items()))
    for method in opts.methods:
        cases = [("uniform", "unstructured", t) for t in TARGETS]
        cases += [("alpha", "unstructured", t) for t in TARGETS]
        cases += [("uniform", "2:4", 0.5)]
        for allocation, pattern, target in cases:
            config = METHODS[method](pattern=pattern)
            sparsity = allocations[target]["ratios"] if allocation == "alpha" else target
            load = os.getloadavg()[0]
            model, report = run_ours(dense, sparsity, config, calib, opts)
            value = ppl(model, test_ids, opts)
            row = dict(method=method, allocation=allocation, pattern=pattern, target=target,
                       achieved=report.achieved, ppl=value, time_s=report.time_s, load=load)
            rows.append(row)
            log(f"{method:9s} {allocation:7s} {pattern:12s} {target:.2f}: ppl {value:8.3f}  "
                f"achieved {report.achieved:.4f}  time {report.time_s:6.2f} s  load {load:.2f}")
            del model
    for target in TARGETS:
        allocations[target].pop("ratios")
    return rows, allocations


def sensitivity(dense, test_ids, opts, target=0.7) -> list[dict]:
    """Perplexity with one block magnitude-pruned at ``target`` and every other block dense."""
    layout = find_blocks(dense)
    rows = []
    for index, block in enumerate(layout.names):
        ratios = {n: (target if pm.block == index else 0.0) for n, pm in layout.modules.items()}
        model = copy.deepcopy(dense)
        specmetrics.prune(model, ratios, method=MagnitudeConfig())
        value = ppl(model, test_ids, opts)
        rows.append({"block": block, "target": target, "ppl": value})
        log(f"sensitivity: {block} alone at {target:.0%} (magnitude): ppl {value:.3f}")
    return rows


# --------------------------------------------------------------------------------------------
# the reference implementations, imported from outside the repository

def _import_from(directory: Path, module: str):
    sys.path.insert(0, str(directory))
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            return importlib.import_module(module)
    finally:
        sys.path.remove(str(directory))


@contextlib.contextmanager
def reference_adapter(model):
    """Let a transformers-4.3x layer loop drive a transformers-5.x LLaMA on the CPU (see the
    module docstring); everything is undone on exit."""
    rotary = model.model.rotary_emb

    def pre_hook(_module, args, kwargs):
        if kwargs.get("position_embeddings") is not None:
            return None
        hidden = args[0] if args else kwargs["hidden_states"]
        position_ids = kwargs.get("position_ids")
        if position_ids is None:
            position_ids = torch.arange(hidden.shape[1], device=hidden.device)[None]
        kwargs = dict(kwargs, position_ids=position_ids,
                      position_embeddings=rotary(hidden, position_ids))
        return args, kwargs

    handles = [layer.register_forward_pre_hook(pre_hook, with_kwargs=True)
               for layer in model.model.layers]
    had_map = hasattr(model, "hf_device_map")
    if not had_map:
        model.hf_device_map = {}
    synchronize = torch.cuda.synchronize
    if not torch.cuda.is_available():
        torch.cuda.synchronize = lambda *a, **k: None
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        torch.cuda.synchronize = synchronize
        for h in handles:
            h.remove()
        if not had_map:
            del model.hf_device_map
        if hasattr(model, "seqlen"):
            del model.seqlen


def _windows(calib_ids):
    return [(calib_ids[i:i + 1].clone(), None) for i in range(calib_ids.shape[0])]


def run_reference_wanda(dense, calib_ids, ref_dir: Path, nm, opts):
    prune_mod = _import_from(ref_dir, "lib.prune")
    loader = _windows(calib_ids)
    prune_mod.get_loaders = lambda *a, **k: (loader, None)
    model = copy.deepcopy(dense)
    model.seqlen = opts.seqlen
    args = SimpleNamespace(nsamples=calib_ids.shape[0], seed=opts.seed, sparsity_ratio=0.5,
                           use_variant=False)
    n, m = nm if nm else (0, 0)
    with reference_adapter(model):
        t0, cpu0 = time.perf_counter(), time.process_time()
        prune_mod.prune_wanda(args, model, None, torch.device("cpu"), prune_n=n, prune_m=m)
        elapsed = time.perf_counter() - t0
    model.cpu_time_s = time.process_time() - cpu0
    return model, elapsed


def run_reference_sparsegpt(dense, calib_ids, ref_dir: Path, nm, opts):
    llama = _import_from(ref_dir, "llama")
    n, m = nm if nm else (0, 0)
    llama.args = SimpleNamespace(nsamples=calib_ids.shape[0], true_sequential=False,
                                 minlayer=-1, maxlayer=1000, prune_only="", invert=False,
                                 wbits=16, sparsity=0.5 if not nm else 0.0, prunen=n, prunem=m,
                                 percdamp=0.01, blocksize=128)
    model = copy.deepcopy(dense)
    model.seqlen = opts.seqlen
    loader = _windows(calib_ids)
    with reference_adapter(model):
        t0, cpu0 = time.perf_counter(), time.process_time()
        llama.llama_sequential(model, loader, torch.device("cpu"))
        elapsed = time.perf_counter() - t0
    model.cpu_time_s = time.process_time() - cpu0
    return model, elapsed


def compare_masks(ours, ref, layout) -> dict:
    per_module = {}
    agree_total = 0
    total = 0
    for name in layout.modules:
        wo = ours.get_submodule(name).weight.detach()
        wr = ref.get_submodule(name).weight.detach()
        mo, mr = wo == 0, wr == 0
        same = int((mo == mr).sum())
        per_module[name] = {
            "agreement": same / mo.numel(),
            "zeros_ours": int(mo.sum()), "zeros_ref": int(mr.sum()),
            "only_ours": int((mo & ~mr).sum()), "only_ref": int((mr & ~mo).sum()),
            "rel_weight_diff": float((wo - wr).norm() / wr.norm()),
        }
        agree_total += same
        total += mo.numel()
    blocks = {}
    for name, pm in layout.modules.items():
        blocks.setdefault(pm.block, []).append(per_module[name]["agreement"])
    return {"overall": agree_total / total,
            "min_module": min(v["agreement"] for v in per_module.values()),
            "per_block": {b: sum(v) / len(v) for b, v in blocks.items()},
            "zeros_ours": sum(v["zeros_ours"] for v in per_module.values()),
            "zeros_ref": sum(v["zeros_ref"] for v in per_module.values()),
            "per_module": per_module}


def isolated_sparsegpt(dense, calib_ids, ref_dir: Path, opts) -> dict:
    """SparseGPT's per-matrix core on identical Hessians: block 0 of the dense model."""
    sg = _import_from(ref_dir, "sparsegpt")
    model = copy.deepcopy(dense)
    layout = find_blocks(model)
    runner = SequentialRunner(model, layout, calib_ids, make_stat=HessianStats)
    steps = iter(runner)
    step = next(steps)
    hessians = {n: step.stats[n].value.clone() for n in step.modules}
    steps.close()
    out = {}
    for name, pm in layout.modules_of(0).items():
        weight = pm.module.weight.detach().clone()
        rows, cols = weight.shape
        entry = {}
        for label, nm in (("50%", None), ("2:4", (2, 4))):
            linear = copy.deepcopy(pm.module)
            obj = sg.SparseGPT(linear)
            obj.H = hessians[name].clone()
            obj.nsamples = calib_ids.shape[0]
            synchronize = torch.cuda.synchronize
            if not torch.cuda.is_available():
                torch.cuda.synchronize = lambda *a, **k: None
            try:
                with contextlib.redirect_stdout(io.StringIO()):
                    obj.fasterprune(0.5, prunen=nm[0] if nm else 0, prunem=nm[1] if nm else 0,
                                    blocksize=128, percdamp=0.01)
            finally:
                torch.cuda.synchronize = synchronize
            ref_w = linear.weight.detach()
            pattern = "2:4" if nm else "unstructured"
            ours_w = sparsegpt_prune(weight, hessians[name], 0.5, pattern=pattern).weight
            res = {"agreement": float(((ours_w == 0) == (ref_w == 0)).float().mean()),
                   "zeros_ours": int((ours_w == 0).sum()), "zeros_ref": int((ref_w == 0).sum()),
                   "tiles": math.ceil(cols / 128),
                   "rel_weight_diff": float((ours_w - ref_w).norm() / ref_w.norm())}
            if nm is None and cols % 128 == 0:
                s_plus = 0.5 + 1.5 / (rows * 128)
                plus_w = sparsegpt_prune(weight, hessians[name], s_plus).weight
                res["agreement_plus_one"] = float(((plus_w == 0) == (ref_w == 0)).float().mean())
                res["rel_weight_diff_plus_one"] = float((plus_w - ref_w).norm() / ref_w.norm())
            entry[label] = res
        out[name] = entry
        log(f"isolated SparseGPT {name}: " + "; ".join(
            f"{k} agree {v['agreement']:.5f} zeros {v['zeros_ours']}/{v['zeros_ref']}"
            + (f" (+1/tile: {v['agreement_plus_one']:.5f}, dW {v['rel_weight_diff_plus_one']:.1e})"
               if "agreement_plus_one" in v else "") for k, v in entry.items()))
    return out


def noise_floor(dense, calib, opts) -> list[dict]:
    """Our own masks at ``--threads`` against ``--threads + 1`` threads: how far float rounding
    alone (a different GEMM blocking) moves a layer-sequential prune."""
    layout = find_blocks(dense)
    rows = []
    for method in ("wanda", "sparsegpt"):
        if method not in opts.methods:
            continue
        for pattern in ("unstructured", "2:4"):
            models = []
            for threads in (opts.threads, opts.threads + 1):
                torch.set_num_threads(threads)
                try:
                    model, _ = run_ours(dense, 0.5, METHODS[method](pattern=pattern), calib, opts,
                                        measure_error=False)
                finally:
                    torch.set_num_threads(opts.threads)
                models.append(model)
            masks = compare_masks(models[0], models[1], layout)
            masks.pop("per_module")
            rows.append({"method": method, "pattern": pattern,
                         "threads": [opts.threads, opts.threads + 1], "masks": masks})
            log(f"noise floor {method} {pattern}: ours {opts.threads} vs {opts.threads + 1} "
                f"threads: agreement {masks['overall']:.5f}, per block " + ", ".join(
                    f"{v:.5f}" for v in masks["per_block"].values()))
    return rows


def reference_comparison(dense, calib, test_ids, opts) -> list[dict]:
    ref_root = Path(opts.reference_dir)
    layout = find_blocks(dense)
    runners = {"wanda": (WandaConfig, run_reference_wanda, ref_root / "wanda"),
               "sparsegpt": (SparseGPTConfig, run_reference_sparsegpt, ref_root / "sparsegpt")}
    results = []
    for method, (config_cls, run_ref, ref_dir) in runners.items():
        if method not in opts.methods:
            continue
        if not ref_dir.is_dir():
            log(f"reference {method}: {ref_dir} not found, skipped")
            continue
        for pattern, nm in (("unstructured", None), ("2:4", (2, 4))):
            config = config_cls(pattern=pattern)
            t_ours, t_ours_err, t_ref, c_ours, c_ours_err, c_ref = [], [], [], [], [], []
            ours = ref = None
            for r in range(opts.reference_repeat):
                load = os.getloadavg()[0]
                ours, rep = run_ours(dense, 0.5, config, calib, opts, measure_error=False)
                t_ours.append(rep.time_s)
                c_ours.append(ours.cpu_time_s)
                ref, elapsed = run_ref(dense, calib.input_ids, ref_dir, nm, opts)
                t_ref.append(elapsed)
                c_ref.append(ref.cpu_time_s)
                with_err, rep_err = run_ours(dense, 0.5, config, calib, opts, measure_error=True)
                t_ours_err.append(rep_err.time_s)
                c_ours_err.append(with_err.cpu_time_s)
                del with_err
                log(f"reference {method} {pattern} round {r}: ours {rep.time_s:.2f} s wall "
                    f"{c_ours[-1]:.2f} s CPU (with error measurement {rep_err.time_s:.2f} s wall "
                    f"{c_ours_err[-1]:.2f} s CPU), reference {elapsed:.2f} s wall {c_ref[-1]:.2f} s "
                    f"CPU, load {load:.2f}")
            masks = compare_masks(ours, ref, layout)
            row = {"method": method, "pattern": pattern,
                   "time_ours": t_ours, "time_ours_with_error": t_ours_err, "time_ref": t_ref,
                   "cpu_ours": c_ours, "cpu_ours_with_error": c_ours_err, "cpu_ref": c_ref,
                   "cpu_ratio_best": min(c_ours) / min(c_ref),
                   "ratio_best": min(t_ours) / min(t_ref),
                   "ratio_median": statistics.median(t_ours) / statistics.median(t_ref),
                   "ppl_ours": ppl(ours, test_ids, opts), "ppl_ref": ppl(ref, test_ids, opts),
                   "masks": masks, "load_end": os.getloadavg()[0]}
            results.append(row)
            log(f"reference {method} {pattern}: agreement {masks['overall']:.5f} (min module "
                f"{masks['min_module']:.5f}), zeros ours {masks['zeros_ours']} ref "
                f"{masks['zeros_ref']}, ppl ours {row['ppl_ours']:.3f} ref {row['ppl_ref']:.3f}")
    return results


# --------------------------------------------------------------------------------------------
# output

def fmt_time(t):
    return "-" if t is None else f"{t:.1f}"


def print_table(rows, opts):
    print(f"\nPerplexity, tokenized WikiText-2 test, {opts.seqlen}-token windows, first "
          f"{opts.windows}; calibration {opts.nsamples} x {opts.seqlen} tokens of WikiText-2 "
          f"valid, seed {opts.seed}\n")
    dense = rows[0]
    print(f"dense: {dense['ppl']:.2f}\n")
    print("| method | allocation | 50% | 70% | 2:4 | time 50% / 70% / 2:4 (s) |")
    print("|---|---|---|---|---|---|")
    for method in opts.methods:
        for allocation in ("uniform", "alpha"):
            cell, times = {}, {}
            for r in rows:
                if r["method"] == method and r["allocation"] == allocation:
                    key = "2:4" if r["pattern"] == "2:4" else f"{r['target']:.0%}"
                    cell[key] = f"{r['ppl']:.2f}"
                    times[key] = fmt_time(r["time_s"])
            keys = ("50%", "70%", "2:4")
            print(f"| {method} | {allocation} | " + " | ".join(cell.get(k, "-") for k in keys)
                  + " | " + " / ".join(times.get(k, "-") for k in keys) + " |")


def print_reference(results):
    print("\nAgainst the reference implementations (50% unstructured and 2:4)\n")
    print("| method | pattern | ours wall (s) | ref wall (s) | ours/ref wall, best | "
          "ours/ref wall, median | ours/ref CPU, best | ours with error (s) | "
          "mask agreement (min module) | zeros ours / ref | ppl ours / ref |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        m = r["masks"]
        print(f"| {r['method']} | {r['pattern']} | "
              f"{', '.join(f'{t:.1f}' for t in r['time_ours'])} | "
              f"{', '.join(f'{t:.1f}' for t in r['time_ref'])} | {r['ratio_best']:.2f} | "
              f"{r['ratio_median']:.2f} | {r['cpu_ratio_best']:.2f} | "
              f"{', '.join(f'{t:.1f}' for t in r['time_ours_with_error'])} | "
              f"{m['overall']:.5f} ({m['min_module']:.5f}) | "
              f"{m['zeros_ours']} / {m['zeros_ref']} | {r['ppl_ours']:.3f} / {r['ppl_ref']:.3f} |")
    for r in results:
        print(f"\n{r['method']} {r['pattern']}: mask agreement per block: " + ", ".join(
            f"{b}: {v:.5f}" for b, v in r["masks"]["per_block"].items()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(DEFAULT_MODEL))
    parser.add_argument("--calibration", default=str(DEFAULT_CALIBRATION))
    parser.add_argument("--test", default=str(DEFAULT_TEST))
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--windows", type=int, default=24, help="test windows scored")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch.set_num_threads")
    parser.add_argument("--methods", default="magnitude,wanda,sparsegpt")
    parser.add_argument("--quick", action="store_true",
                        help="16 calibration windows and one reference round")
    parser.add_argument("--skip-table", action="store_true", help="no main table")
    parser.add_argument("--sensitivity", action="store_true",
                        help="also prune one block at a time (magnitude, 70%%)")
    parser.add_argument("--reference-dir", default=None,
                        help="folder with checkouts 'wanda' (locuslab/wanda) and 'sparsegpt' "
                             "(IST-DASLab/sparsegpt), kept outside this repository")
    parser.add_argument("--reference-repeat", type=int, default=2)
    parser.add_argument("--no-isolated", dest="isolated", action="store_false",
                        help="skip the per-matrix SparseGPT check on identical Hessians")
    parser.add_argument("--noise-floor", action="store_true",
                        help="also compare our own Wanda/SparseGPT masks at --threads and "
                             "--threads + 1 threads (rounding alone)")
    parser.add_argument("--out", default=None, help="write everything as JSON here")
    opts = parser.parse_args(argv)
    opts.methods = [m.strip() for m in opts.methods.split(",") if m.strip()]
    unknown = [m for m in opts.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {list(METHODS)}")
    if opts.quick:
        opts.nsamples = 16
        opts.reference_repeat = 1
    for path in (opts.model, opts.calibration, opts.test):
        if not Path(path).exists():
            sys.exit(f"{path} not found: this benchmark reads ../shared (see shared/README.md)")

    torch.set_num_threads(opts.threads)
    logging.basicConfig(level=logging.WARNING)
    warnings.filterwarnings("ignore", message=".*position_embeddings.*")
    from transformers import AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    info = machine_info(opts.threads)
    log(f"machine: {info['cpu']}, {info['cores']} cores, torch threads {opts.threads}, "
        f"load {info['loadavg_start']}")
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    dense = load_model(opts.model)
    calib = load_calibration(opts.calibration, tokenizer=tokenizer, nsamples=opts.nsamples,
                             seqlen=opts.seqlen, seed=opts.seed,
                             max_positions=dense.config.max_position_embeddings,
                             vocab_size=dense.config.vocab_size)
    test_ids = tokenize_text(tokenizer, Path(opts.test))
    output = {"settings": {k: v for k, v in vars(opts).items()}, "machine": info,
              "calibration": calib.settings()}

    if not opts.skip_table:
        rows, allocations = main_table(dense, calib, test_ids, opts)
        output["table"] = rows
        output["alpha_allocations"] = {str(k): v for k, v in allocations.items()}
        print_table(rows, opts)
        print("\nAlphaPruning block ratios (eps 0.2, alpha_peak): " + "; ".join(
            f"{t}: " + ", ".join(f"{v['ratio']:.3f}" for v in a["blocks"].values())
            for t, a in output["alpha_allocations"].items()))
    if opts.sensitivity:
        output["sensitivity"] = sensitivity(dense, test_ids, opts)
        print("\nOne block magnitude-pruned at 70%, others dense: " + ", ".join(
            f"{r['block'].rsplit('.', 1)[-1]}: {r['ppl']:.2f}" for r in output["sensitivity"]))
    if opts.reference_dir:
        results = reference_comparison(dense, calib, test_ids, opts)
        output["reference"] = results
        if results:
            print_reference(results)
        sg_dir = Path(opts.reference_dir) / "sparsegpt"
        if opts.isolated and sg_dir.is_dir() and "sparsegpt" in opts.methods:
            output["isolated_sparsegpt"] = isolated_sparsegpt(dense, calib.input_ids, sg_dir,
                                                              opts)
            iso = output["isolated_sparsegpt"]
            print("\nSparseGPT core on identical Hessians (block 0): mask agreement ours/ref")
            print("\n| module | 50% | 50%, ours +1 per tile | 2:4 | zeros ours / ref (50%) |")
            print("|---|---|---|---|---|")
            for name, e in iso.items():
                plus = e["50%"].get("agreement_plus_one")
                print(f"| {name} | {e['50%']['agreement']:.5f} | "
                      f"{'-' if plus is None else f'{plus:.5f}'} | {e['2:4']['agreement']:.5f} | "
                      f"{e['50%']['zeros_ours']} / {e['50%']['zeros_ref']} |")
    if opts.noise_floor:
        output["noise_floor"] = noise_floor(dense, calib, opts)
        print("\nOurs against ours at a different thread count (rounding alone), 50% and 2:4\n")
        print("| method | pattern | threads | mask agreement | per block |")
        print("|---|---|---|---|---|")
        for r in output["noise_floor"]:
            m = r["masks"]
            print(f"| {r['method']} | {r['pattern']} | {r['threads'][0]} vs {r['threads'][1]} | "
                  f"{m['overall']:.5f} | " + ", ".join(f"{v:.5f}" for v in m["per_block"].values())
                  + " |")
    info["loadavg_end"] = list(os.getloadavg())
    print(f"\nmachine: {info['cpu']}, {info['cores']} cores, torch threads {opts.threads}; load "
          f"average (1, 5, 15 min) at start {', '.join(f'{x:.2f}' for x in info['loadavg_start'])}"
          f", at end {', '.join(f'{x:.2f}' for x in info['loadavg_end'])}")
    if opts.out:
        with open(opts.out, "w") as fh:
            json.dump(output, fh, indent=2, default=str)
        log(f"wrote {opts.out}")


if __name__ == "__main__":
    main()
