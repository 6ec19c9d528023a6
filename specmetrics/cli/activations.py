"""``specmetrics activations MODEL``: activation thresholds per layer and the perplexity with
them applied (TEAL / CATS)."""
from __future__ import annotations

from pathlib import Path

from .common import check_source, check_text_file, device_type, format_frame, status, write_frame

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
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
    p.add_argument("model", metavar="MODEL",
                   help="a Hugging Face causal LM folder, a .gguf file or a hub id")
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
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the calibration windows (default 0)")
    p.add_argument("--device", type=device_type, default=None,
                   help="torch device the blocks run on during calibration (default: where the "
                        "model is)")
    p.set_defaults(run=run)


def run(args) -> int:
    from .._validation import check_interval, check_positive_int, check_seed
    from ..activations import plot_threshold_table
    from ..experiments import activation_report
    from ..models import load_model

    func = "activation_report"
    check_interval(args.target, 0, 1, name="target", func=func)
    check_positive_int(args.nsamples, name="nsamples", func=func)
    if args.seqlen is not None:
        check_positive_int(args.seqlen, name="seqlen", func=func, minimum=2)
    if args.max_windows is not None:
        check_positive_int(args.max_windows, name="max_windows", func=func)
    check_seed(args.seed, func=func)
    calibration = check_text_file(args.calibration, "--calibration")
    eval_text = check_text_file(args.eval_text, "--eval-text")
    model, tokenizer = load_model(check_source(args.model, func))
    report = activation_report(
        model, tokenizer, calibration, eval_text, target=args.target, style=args.style,
        fit=args.fit, nsamples=args.nsamples, seqlen=args.seqlen, max_windows=args.max_windows,
        seed=args.seed, device=args.device, progress=True)

    # every value was accepted and everything computed: only now write files
    from matplotlib.figure import Figure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for kind, table in report.tables.items():
        fig = Figure(figsize=(8, 4.5))
        plot_threshold_table(table, ax=fig.subplots())
        fig.tight_layout()
        fig.savefig(out / f"thresholds_{kind}.png", dpi=120)
        status(f"wrote {out / f'thresholds_{kind}.png'}")
    print(f"thresholds for {args.target:g} sparsity fitted on {args.calibration} "
          f"({args.nsamples} x {report.seqlen} tokens); realised sparsity on {args.eval_text}:")
    print(format_frame(report.table))
    write_frame(report.table, out / "table.csv")
    sweep = report.sweep
    row = sweep.rows[0]
    row.thresholds.to_json(out / "thresholds.json")
    status(f"wrote {out / 'thresholds.json'}")
    write_frame(sweep.to_frame(), out / "perplexity.csv")
    print(f"perplexity on {args.eval_text} ({sweep.settings['n_windows']} windows of "
          f"{report.seqlen}): dense {sweep.dense_perplexity:.4g}, {args.style} at "
          f"{args.target:g} {row.perplexity:.4g} (realised sparsity {row.realised_mean:.3f} mean "
          f"over {len(row.realised)} sites, {row.weights_skipped:.3f} of the linear weights "
          "skipped)")
    return 0
