"""Command-line front end: ``specmetrics esd | demo | allocate | prune | ablate | activations |
sparse-coding | hessian | circuits``.

One module per command beside its handler (:mod:`~specmetrics.cli.esd`, ...); each parses its
options, checks their values before any model is loaded, calls the public API or an experiment,
prints tables and writes files. The library itself never prints. Exit status: 0 on success, 2
for bad usage or values, 1 for failures while running, 130 on Ctrl-C; every failure is one line
on stderr (the traceback with ``--debug``).

Examples
--------
::

    specmetrics demo --out demo-out
    specmetrics esd model.safetensors --dtype float32 --out esd.csv --plot plots/
    specmetrics esd ./my-model --include 'layers\\.' --exclude 'lm_head' --mp-fit --out esd.json
    specmetrics allocate ./my-model --target 0.7 --epsilon 0.2 --units block --out alloc.json
    specmetrics prune ./my-llama --target 0.7 --method wanda --allocation alphapruning \\
        --calibration calib.txt --eval-text test.txt --save ./my-llama-70 --out report.csv
    specmetrics activations ./my-llama --target 0.5 --style cats --calibration calib.txt \\
        --eval-text test.txt --out act-out

May import: the public API and :mod:`specmetrics.experiments`.
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from . import ablate, activations, allocate, circuits, demo, esd, hessian, prune, sparse_coding
from .common import report_error, status

__all__ = ["main", "build_parser"]

PROG = "specmetrics"
COMMANDS = (esd, demo, allocate, prune, ablate, activations, sparse_coding, hessian, circuits)


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str):  # noqa: D401 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="Sparsity and weight spectra of neural networks: heavy-tailed ESD metrics, "
                    "spectrum-guided sparsity allocation, pruning and activation sparsity.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="print the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status (``specmetrics --help`` for usage)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors (already printed by argparse)
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    try:
        return args.run(args)
    except KeyboardInterrupt:
        status(f"{PROG}: interrupted")
        return 130
    except SystemExit as exc:  # parser.error() inside a command
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 2)
    except Exception as err:  # every failure: one line, an exit code
        return report_error(f"{PROG} {args.command}", err, debug=debug)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
