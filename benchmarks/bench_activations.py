"""Perplexity against activation sparsity on tiny-llama-wt: TEAL uniform, TEAL greedy and CATS.

The table
---------
``specmetrics.activations.experiment.activation_sparsity_sweep`` on ``../shared/models/
tiny-llama-wt``:

- thresholds fitted on ``--nsamples`` windows of ``--seqlen`` tokens drawn with seed ``--seed``
  from the tokenized WikiText-2 *valid* split (the ``|x|`` quantile at each site; ``--fit
  sequential``: each site fitted with the sites before it already thresholded, ``--fit dense``:
  all from the dense model's statistics, as TEAL's and CATS' own code do);
- TEAL greedy: TEAL's per-block greedy search (step ``--greedy-step``, block errors measured on
  the first ``--greedy-nsamples`` calibration windows), every block spending the target as its
  parameter-weighted budget;
- perplexity on the tokenized WikiText-2 *test* split, non-overlapping ``--seqlen``-token
  windows, the first ``--windows`` of them (the shared README's protocol: 256 tokens, 24 windows,
  dense 60.6), with the thresholds installed by ``sparsify_activations``, which also counts the
  realised sparsity of every site on those test tokens.

Columns: ``ppl``; ``realised`` (mean, min and max over the style's sites of the fraction of test
values zeroed, TEAL greedy: of realised minus the site's own target); ``skipped`` (fraction of the
blocks' linear weights a sparse kernel would not read: TEAL sites count the matrices reading them,
a CATS site the up and down matrices whose rows / columns its zeros skip).

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_activations.py                 # the table
    OMP_NUM_THREADS=1 python benchmarks/bench_activations.py --fit dense     # TEAL/CATS' own fit
    OMP_NUM_THREADS=1 python benchmarks/bench_activations.py --quick         # 8 windows, 2 targets
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SPECMETRICS_SHARED", REPO.parent / "shared"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=SHARED / "models" / "tiny-llama-wt")
    parser.add_argument("--data", type=Path, default=SHARED / "data" / "wikitext-2-tokenized")
    parser.add_argument("--targets", type=float, nargs="+", default=[0.25, 0.40, 0.50, 0.65])
    parser.add_argument("--styles", nargs="+", default=["teal_uniform", "teal_greedy", "cats"])
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--windows", type=int, default=24)
    parser.add_argument("--nsamples", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--greedy-step", type=float, default=0.05)
    parser.add_argument("--greedy-nsamples", type=int, default=4)
    parser.add_argument("--fit", choices=("sequential", "dense"), default="sequential")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quick", action="store_true",
                        help="8 windows, 8 calibration windows, targets 0.25 and 0.5")
    parser.add_argument("--json", type=Path, help="also write the rows as JSON")
    args = parser.parse_args(argv)

    if not (args.model / "config.json").is_file() or not (args.data / "valid.txt").is_file():
        print(f"tiny-llama-wt or WikiText-2 not found under {SHARED} (set SPECMETRICS_SHARED)",
              file=sys.stderr)
        return 1
    if args.quick:
        args.windows, args.nsamples, args.targets = 8, 8, [0.25, 0.5]

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from specmetrics.experiments.activation_sweep import activation_sparsity_sweep

    torch.set_num_threads(args.threads)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    start = time.perf_counter()
    result = activation_sparsity_sweep(
        model, tokenizer, args.data / "valid.txt", args.data / "test.txt",
        targets=tuple(args.targets), styles=tuple(args.styles), seqlen=args.seqlen,
        max_windows=args.windows, nsamples=args.nsamples, seed=args.seed,
        greedy_step=args.greedy_step, greedy_nsamples=args.greedy_nsamples, fit=args.fit,
        progress=sys.stderr.isatty())
    elapsed = time.perf_counter() - start

    header = (f"{'style':<13} {'target':>6} {'ppl':>8} {'realised mean [min, max]':>26} "
              f"{'skipped':>8}")
    print(f"tiny-llama-wt, WikiText-2 tokenized: fit on valid ({args.nsamples} x {args.seqlen}, "
          f"seed {args.seed}, fit={args.fit}), perplexity on test ({args.windows} windows of "
          f"{args.seqlen})")
    print(header)
    print("-" * len(header))
    print(f"{'dense':<13} {0:>6.2f} {result.dense_perplexity:>8.2f} {'-':>26} {0:>8.3f}")
    rows = []
    for r in result.rows:
        if r.style == "teal_greedy":
            dev = [v - r.thresholds.targets[n] for n, v in r.realised.items()]
            text = (f"{sum(dev) / len(dev):+.3f} [{min(dev):+.3f}, {max(dev):+.3f}]*")
        else:
            vals = list(r.realised.values())
            text = f"{sum(vals) / len(vals):.3f} [{min(vals):.3f}, {max(vals):.3f}]"
        print(f"{r.style:<13} {r.target:>6.2f} {r.perplexity:>8.2f} {text:>26} "
              f"{r.weights_skipped:>8.3f}")
        rows.append({"style": r.style, "target": r.target, "perplexity": r.perplexity,
                     "realised": dict(r.realised), "site_targets": dict(r.thresholds.targets),
                     "weights_skipped": r.weights_skipped})
    if "teal_greedy" in args.styles:
        print("* TEAL greedy: realised minus each site's own target (the sites' targets differ)")
    print(f"\n{elapsed:.0f} s on {platform.machine()} ({args.threads} thread(s), "
          f"torch {torch.__version__}); load average {os.getloadavg()[0]:.1f}")
    if args.json:
        args.json.write_text(json.dumps({"dense_perplexity": result.dense_perplexity,
                                         "settings": dict(result.settings), "rows": rows,
                                         "seconds": elapsed}, indent=1,
                                        default=lambda o: None if isinstance(o, float)
                                        and math.isnan(o) else str(o)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
