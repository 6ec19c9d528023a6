"""``specmetrics demo``: the main job on an embedded pretrained model."""
from __future__ import annotations

from .common import CommandError, format_frame, status

__all__ = ["add_parser", "run"]

DEFAULT_DEMO_DIR = "specmetrics-demo"


def add_parser(sub) -> None:
    from ..experiments.demo import DEMO_MODELS

    p = sub.add_parser(
        "demo", help="the main job on an embedded model: esd, allocate, prune, evaluate",
        description="The main job on an embedded pretrained model, with calibration and "
                    "evaluation text shipped in the package (nothing is downloaded): the ESD "
                    "table, then allocators x pruning methods x targets, each pruned model "
                    "compared with the dense one (perplexity for SmolLM2, embedding fidelity for "
                    "MiniLM); writes esd.csv, allocations.json, results.csv/json and plots to "
                    "--out.",
    )
    p.add_argument("--model", choices=tuple(DEMO_MODELS), default="smollm2",
                   help="the embedded model (default smollm2: SmolLM2-135M-Instruct)")
    p.add_argument("--out", metavar="DIR", default=DEFAULT_DEMO_DIR,
                   help=f"output folder (default {DEFAULT_DEMO_DIR})")
    p.add_argument("--fast", action="store_true",
                   help="the reduced grid and no per-matrix ESD plots")
    p.add_argument("--no-layer-plots", action="store_true",
                   help="write only the by-layer plots, not one ESD plot per matrix")
    p.set_defaults(run=run)


def _describe(spec, fast: bool) -> list[str]:
    targets = spec.fast_targets if fast else spec.targets
    methods = spec.fast_methods if fast else spec.methods
    allocations = spec.fast_allocations if fast else spec.allocations
    return [
        f"grid: sparsity {', '.join(f'{t:.0%}' for t in targets)} x allocation "
        f"{' / '.join(allocations)} x method {', '.join(methods)}",
        f"calibration: the shipped 'calibration' text, {spec.nsamples} windows x {spec.seqlen} "
        "tokens, seed 0",
    ]


def run(args) -> int:
    import specmetrics

    from ..experiments.demo import DEMO_MODELS, DemoModelMissing, demo_model_path, run_demo
    from .esd import print_esd

    spec = DEMO_MODELS[args.model]
    try:
        path = demo_model_path(args.model)
    except DemoModelMissing as err:
        raise CommandError(str(err)) from None
    print(f"specmetrics {specmetrics.__version__} demo{' (--fast)' if args.fast else ''}: "
          f"{spec.label} ({spec.description}) from {path}")
    for line in _describe(spec, args.fast):
        print(line)
    print()
    result = run_demo(args.out, model=args.model, fast=args.fast,
                      layer_plots=not args.no_layer_plots, progress=True,
                      on_spectrum=lambda report: print_esd(report))
    comparison = result.comparison
    import pandas as pd

    print()
    for (target, name), alloc in comparison.allocations.items():
        from .allocate import describe_allocation

        print(f"{name} at {target:.0%}: {describe_allocation(alloc)}")
    if comparison.allocations:
        columns = {}
        for (target, name), alloc in comparison.allocations.items():
            frame = alloc.to_frame(level="unit")
            metric = alloc.settings.get("metric") or "score"
            columns.setdefault(f"{name} {metric}", frame["score"])
            columns[f"{name} ratio@{target:.0%}"] = frame["ratio"]
        print(format_frame(pd.DataFrame(columns)))
    frame = comparison.to_frame()
    print()
    if comparison.dense.kind == "perplexity":
        print(f"Dense vs pruned {spec.label}: sparsity = achieved fraction of zeros in the "
              "prunable matrices (parameter-weighted); error = mean relative reconstruction "
              "error on the calibration windows; perplexity on the shipped 'evaluation' text "
              f"({comparison.dense.n_texts} windows of {comparison.dense.seqlen} tokens); "
              "prune_s / cell_s = seconds")
    else:
        print(f"Dense vs pruned {spec.label}: sparsity = achieved fraction of zeros; error = "
              "mean relative reconstruction error on the calibration windows; cosine (mean, "
              "min) of each paragraph's dense and pruned embedding; nn_agreement = share of "
              f"each paragraph's {comparison.dense.k} nearest paragraphs kept")
    print(format_frame(frame))
    print(f"{len(comparison)} pruned models in {comparison.time_s:.0f} s (model load "
          f"{result.load_s:.0f} s)")
    status(f"wrote {len(result.files)} files to {args.out}")
    return 0
