"""Perplexity of RIA against Wanda on tiny-llama-wt (tokenized WikiText-2), uniform ratios.

Protocol as ``bench_prune.py``: ``--nsamples`` calibration windows of ``--seqlen`` tokens drawn
with ``--seed`` from the tokenized WikiText-2 valid split; perplexity (``specmetrics.perplexity``)
over the first ``--windows`` non-overlapping ``--seqlen``-token windows of the tokenized test
split. Cells: dense; Wanda; RIA with its defaults (a = 0.5, one threshold per matrix, as the
reference's default); RIA compared per output row (the reference's ``--per_outneuron``); RIA with
a = 0 (relative importance alone, the reference's ``ri``); at each ``--targets`` ratio, then
Wanda and RIA at 2:4 (no channel permutation). Every prune starts from the same dense copy.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_ria.py                 # 128 x 256 calibration
    OMP_NUM_THREADS=1 python benchmarks/bench_ria.py --nsamples 32 --seeds 0,1,2

The table goes to stdout (Markdown), progress to stderr.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

import specmetrics
from specmetrics import RIAConfig, WandaConfig
from specmetrics.calibration import load_calibration
from specmetrics.evaluation import tokenize_text

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

CELLS = {
    "wanda": lambda pattern: WandaConfig(pattern=pattern),
    "ria": lambda pattern: RIAConfig(pattern=pattern),
    "ria row": lambda pattern: RIAConfig(pattern=pattern, comparison="row"),
    "ria a=0": lambda pattern: RIAConfig(pattern=pattern, power=0.0),
}


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=str(SHARED / "models" / "tiny-llama-wt"))
    parser.add_argument("--calibration",
                        default=str(SHARED / "data" / "wikitext-2-tokenized" / "valid.txt"))
    parser.add_argument("--test", default=str(SHARED / "data" / "wikitext-2-tokenized" / "test.txt"))
    parser.add_argument("--nsamples", type=int, default=128)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--seeds", default="0", help="comma-separated calibration seeds")
    parser.add_argument("--targets", default="0.5,0.7")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-nm", dest="nm", action="store_false", help="skip the 2:4 cells")
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    opts = parser.parse_args(argv)
    seeds = [int(s) for s in opts.seeds.split(",")]
    targets = [float(t) for t in opts.targets.split(",")]
    for path in (opts.model, opts.calibration, opts.test):
        if not Path(path).exists():
            sys.exit(f"{path} not found: this benchmark reads ../shared (see shared/README.md)")
    torch.set_num_threads(opts.threads)
    warnings.filterwarnings("ignore", message=".*position_embeddings.*")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    dense = AutoModelForCausalLM.from_pretrained(opts.model, dtype=torch.float32).eval()
    test_ids = tokenize_text(tokenizer, Path(opts.test))

    def ppl(model):
        return specmetrics.perplexity(model, None, test_ids, seqlen=opts.seqlen,
                                      max_windows=opts.windows)

    log(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch threads "
        f"{opts.threads}, torch {torch.__version__}")
    rows = [dict(method="dense", pattern="-", target=0.0, seed=None, achieved=0.0,
                 ppl=ppl(dense), time_s=None)]
    log(f"dense: {rows[0]['ppl']:.3f}")
    cases = [(t, "unstructured") for t in targets] + ([(0.5, "2:4")] if opts.nm else [])
    for seed in seeds:
        calib = load_calibration(opts.calibration, tokenizer=tokenizer, nsamples=opts.nsamples,
                                 seqlen=opts.seqlen, seed=seed,
                                 max_positions=dense.config.max_position_embeddings,
                                 vocab_size=dense.config.vocab_size)
        for target, pattern in cases:
            for label, make in CELLS.items():
                if pattern != "unstructured" and label == "ria row":
                    continue  # the groups of an N:M pattern are its own
                model = copy.deepcopy(dense)
                t0 = time.perf_counter()
                report = specmetrics.prune(model, None if pattern != "unstructured" else target,
                                           method=make(pattern), calibration=calib.input_ids,
                                           nsamples=opts.nsamples, seqlen=opts.seqlen)
                elapsed = time.perf_counter() - t0
                value = ppl(model)
                rows.append(dict(method=label, pattern=pattern, target=target, seed=seed,
                                 achieved=report.achieved, ppl=value, time_s=elapsed))
                log(f"seed {seed} {label:8s} {pattern:12s} {target:.2f}: ppl {value:8.3f} "
                    f"achieved {report.achieved:.6f}  {elapsed:5.1f} s")
                del model
    print(f"\nPerplexity of tiny-llama-wt, tokenized WikiText-2 test, first {opts.windows} "
          f"windows of {opts.seqlen}; calibration {opts.nsamples} x {opts.seqlen} tokens of "
          f"valid, seeds {opts.seeds}\n")
    print("| method | pattern | target | seed | achieved | ppl | prune s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        t = "-" if r["time_s"] is None else f"{r['time_s']:.1f}"
        print(f"| {r['method']} | {r['pattern']} | {r['target']:g} | "
              f"{'-' if r['seed'] is None else r['seed']} | {r['achieved']:.6f} | "
              f"{r['ppl']:.3f} | {t} |")
    if opts.out:
        Path(opts.out).write_text(json.dumps({"settings": vars(opts), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
