"""``specmetrics esd SOURCE``: the spectral metrics of every weight matrix, one row each."""
from __future__ import annotations

import argparse

from .common import DTYPES, check_out, check_source, device_type, dtype_of, format_frame, status, \
    write_frame

__all__ = ["add_parser", "run", "add_spectrum_options", "esd_table", "print_esd"]

#: The columns of the printed ESD table (those the report has, in this order).
TABLE_COLUMNS = (
    "alpha", "alpha_peak", "xmin", "D", "num_pl_spikes", "stable_rank", "entropy",
    "log_spectral_norm", "N", "M",
)
MP_COLUMNS = ("num_spikes", "mp_softrank")
RANDOM_COLUMNS = ("rand_distance", "ww_softrank")


def add_spectrum_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backend", choices=("torch", "weightwatcher"), default="torch",
                   help="native engine (default) or WeightWatcher's analyze() as reference")
    p.add_argument("--dtype", choices=DTYPES, default="float64",
                   help="compute dtype of the eigenvalues (default float64)")
    p.add_argument("--device", type=device_type, default="cpu",
                   help="torch device to compute on (default cpu)")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "esd", help="spectral metrics of every weight matrix of a model",
        description="Eigenvalues of W^T W of every weight matrix, power-law fits and norm metrics; "
                    "prints one row per matrix, in the model's module order.",
    )
    p.add_argument("source", metavar="SOURCE",
                   help="a .safetensors or .gguf file, a folder of shards, a Hugging Face model "
                        "folder or hub id")
    add_spectrum_options(p)
    p.add_argument("--include", action="append", metavar="RE",
                   help="keep matrices whose name matches this regular expression (repeatable)")
    p.add_argument("--exclude", action="append", metavar="RE",
                   help="drop matrices whose name matches this regular expression (repeatable)")
    p.add_argument("--mp-fit", action="store_true", help="add the Marchenko-Pastur bulk columns")
    p.add_argument("--randomize", action="store_true",
                   help="add rand_distance and ww_softrank from element-shuffled copies")
    p.add_argument("--seed", type=int, default=0, help="seed of --randomize (default 0)")
    p.add_argument("--batch-bytes", type=int, default=1 << 28, metavar="BYTES",
                   help="memory budget of one batched eigen-decomposition (weights and Gram "
                        "matrices; default 268435456 = 256 MiB)")
    p.add_argument("--distributed", action="store_true",
                   help="share the matrices among the ranks of torch.distributed: run as "
                        "'torchrun --nproc-per-node N -m specmetrics esd SOURCE --distributed'; "
                        "rank 0 prints and writes the outputs")
    p.add_argument("--out", metavar="FILE", help="write the full table to FILE (.csv or .json)")
    p.add_argument("--plot", metavar="DIR",
                   help="write the alpha-by-layer plot and one ESD plot per matrix (PNG) to DIR")
    p.set_defaults(run=run)


def esd_table(report, *, mp_fit: bool = False, randomize: bool = False):
    frame = report.to_frame()
    wanted = list(TABLE_COLUMNS) + (list(MP_COLUMNS) if mp_fit else []) + \
        (list(RANDOM_COLUMNS) if randomize else [])
    return frame[[c for c in wanted if c in frame.columns]]


def print_esd(report, *, mp_fit: bool = False, randomize: bool = False) -> None:
    print(format_frame(esd_table(report, mp_fit=mp_fit, randomize=randomize)))
    line = f"{len(report)} matrices, {report.backend} backend"
    failed = [k for k, v in report.items() if not v.fit.success]
    if failed:
        line += f"; {len(failed)} fits failed (alpha NaN; see fit_message in --out)"
    if report.skipped:
        line += "; skipped: " + ", ".join(f"{k} ({v})" for k, v in report.skipped.items())
    print(line)


def run(args) -> int:
    import os

    import specmetrics

    out = check_out(args.out, (".csv", ".json"))
    source = check_source(args.source, "esd")
    report = specmetrics.esd(
        source, backend=args.backend, dtype=dtype_of(args.dtype), device=args.device,
        include=args.include, exclude=args.exclude, mp_fit=args.mp_fit, randomize=args.randomize,
        seed=args.seed, batch_bytes=args.batch_bytes, progress=True,
        distributed=args.distributed,
    )
    if args.distributed and os.environ.get("RANK", "0") != "0":
        return 0  # every rank holds the report; rank 0 prints and writes it
    print_esd(report, mp_fit=args.mp_fit, randomize=args.randomize)
    if out is not None:
        write_frame(report.to_frame(), out)
    if args.plot:
        from ..plotting import save_report_plots

        files = save_report_plots(report, args.plot, progress=True)
        status(f"wrote {len(files)} plots to {args.plot}")
    return 0
