"""``specmetrics allocate SOURCE``: layer-wise sparsity ratios from spectral scores."""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import check_out, check_source, dtype_of, format_frame, status
from .esd import add_spectrum_options

__all__ = ["add_parser", "run", "add_allocation_options", "allocation_from_args",
           "print_allocation", "describe_allocation"]


def add_allocation_options(p: argparse.ArgumentParser, *, default: str) -> None:
    """The options shared by ``allocate`` and ``prune``: the allocator and its settings."""
    from ..allocation.configs import ALLOCATORS

    p.add_argument("--allocation", choices=tuple(ALLOCATORS) + ("alpha",), default=default,
                   help=f"the allocator (default {default}); 'alpha' is the deprecated name of "
                        "alphapruning")
    p.add_argument("--epsilon", type=float, default=None,
                   help="AlphaPruning half-width of the ratio band, in [0, 1] (library default "
                        "0.2)")
    p.add_argument("--step", type=float, default=None,
                   help="ATP: the increase of the sparsity per block (required with --allocation "
                        "atp here; compare_allocations searches it on the calibration loss)")
    p.add_argument("--metric", default=None,
                   help="per-matrix metric of a spectral allocation: a column of the esd table "
                        "(library default alpha_peak)")
    p.add_argument("--units", choices=("block", "matrix", "split"), default=None,
                   help="what gets one ratio: a block, a matrix, or a block's attention / MLP half "
                        "(library default block)")


def allocation_from_args(args, func: str):
    """``(allocator config, allocate options)`` from the parsed options, every value checked
    here, before any model is loaded."""
    import dataclasses

    from .._validation import check_interval
    from ..allocation.configs import AlphaPruningConfig, resolve_method
    from ..models.naming import parse_type_set

    name = "alphapruning" if args.allocation == "alpha" else args.allocation
    config = resolve_method(name, func=func, name="allocation")
    if args.epsilon is not None:
        if not isinstance(config, AlphaPruningConfig):
            raise _usage(f"--epsilon applies to --allocation alphapruning only")
        config = dataclasses.replace(config, epsilon=args.epsilon)
    step = getattr(args, "step", None)
    if step is not None:
        if name != "atp":
            raise _usage("--step applies to --allocation atp only")
        config = dataclasses.replace(config, step=step)
    elif name == "atp":
        raise _usage("--allocation atp needs --step (e.g. --step 0.01; the Python "
                     "compare_allocations searches it on the calibration loss)")
    options = {}
    spectral = getattr(config, "inputs", None) == "spectrum"
    for flag in ("metric", "units"):
        value = getattr(args, flag, None)
        if value is not None:
            if not spectral and flag == "metric":
                raise _usage(f"--{flag} applies to spectral allocations (alphapruning) only")
            options[flag] = value
    for flag in ("score_from", "apply_to"):
        value = getattr(args, flag, None)
        if value is not None:
            parse_type_set(value, name=flag, func=func)
            options[flag] = value
    budget = getattr(args, "budget", None)
    if budget is not None:
        options["budget"] = budget
    if getattr(args, "no_clip", False):
        options["clip"] = None
    elif getattr(args, "clip", None) is not None:
        lo, hi = (check_interval(v, 0, 1, name="clip", func=func, closed="both") for v in args.clip)
        options["clip"] = (lo, hi)
    return config, options


def _usage(message: str):
    from .common import CommandError

    return CommandError(message, code=2)


def describe_allocation(alloc) -> str:
    """One line saying what drove an allocation: allocator, ε, metric, units, budget, clip."""
    s = alloc.settings
    method = dict(s.get("method") or {})
    name = method.pop("name", "?")
    params = ", ".join(f"{k}={v}" for k, v in method.items())
    parts = [f"allocator {name}" + (f" ({params})" if params else "")]
    if s.get("metric"):
        parts.append(f"metric {s['metric']}")
    parts.append(f"units {s.get('units')}")
    parts.append(f"budget {s.get('budget')}")
    parts.append(f"clip {tuple(s['clip']) if s.get('clip') is not None else None}")
    return "; ".join(parts)


def print_allocation(alloc, level: str = "unit") -> None:
    print(describe_allocation(alloc))
    print(format_frame(alloc.to_frame(level=level)))
    groups = ", ".join(f"{g} {v:.4f}" for g, v in alloc.achieved_by_group().items())
    print(f"target {alloc.target:g}, allocated mean {alloc.achieved:.6f} ({groups}); "
          f"{len(alloc)} matrices; ratios are fractions of zeros (parameter-weighted means)")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "allocate", help="layer-wise sparsity ratios from spectral scores (AlphaPruning)",
        description="Per-matrix sparsity ratios whose parameter-weighted mean is --target, from "
                    "each block's (or matrix's) spectral metric; prints the allocation by unit.",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="a .safetensors or .gguf file, a folder of shards, a Hugging Face model "
                        "folder or hub id")
    p.add_argument("--target", type=float, default=0.5,
                   help="mean sparsity in [0, 1) (default 0.5)")
    add_allocation_options(p, default="alphapruning")
    p.add_argument("--method", choices=("alphapruning", "uniform"), default=None,
                   help=argparse.SUPPRESS)  # deprecated spelling of --allocation
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
    add_spectrum_options(p)
    p.add_argument("--level", choices=("unit", "matrix"), default="unit",
                   help="print one row per unit (default) or per matrix")
    p.add_argument("--out", metavar="FILE.json", help="write the allocation as JSON")
    p.set_defaults(run=run)


def run(args) -> int:
    import specmetrics

    from .._validation import check_interval

    func = "allocate"
    if args.method is not None:
        args.allocation = args.method
    out = check_out(args.out, (".json",))
    target = check_interval(args.target, 0, 1, name="target", func=func, closed="left")
    config, options = allocation_from_args(args, func)
    if getattr(config, "inputs", None) == "activations":
        from .common import CommandError

        raise CommandError(f"--allocation {config.name} needs calibration text: use `specmetrics "
                           f"prune` (or the Python API) for {config.name}", code=2)
    from ..models.matrices import name_filter

    name_filter(args.include, args.exclude, func=func)
    source = check_source(args.source, func)
    for flag in ("include", "exclude"):
        if getattr(args, flag):
            options[flag] = getattr(args, flag)
    options["esd_options"] = {"backend": args.backend, "dtype": dtype_of(args.dtype),
                              "device": args.device, "progress": True}
    alloc = specmetrics.allocate(source, target, method=config, **options)
    print_allocation(alloc, level=args.level)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        alloc.to_json(Path(out))
        status(f"wrote {out}")
    return 0
