"""``specmetrics ablate MODEL``: the seed-003 grid of allocation variants × pruning methods."""
from __future__ import annotations

from pathlib import Path

from .common import check_source, check_text_file, device_type, format_frame, status

__all__ = ["add_parser", "run"]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "ablate", help="the seed-003 ablation grid: allocation variants x methods, perplexity",
        description="Prune a causal LM with every allocation variant (seed-003 labels: which "
                    "module types get AlphaPruning ratios, split attention/MLP budgets) x every "
                    "method at one target and print the perplexity table in the notes' shape "
                    "(methods as rows, variants as columns). Resumable: finished cells are kept "
                    "in --out and not recomputed.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="a Hugging Face causal LM folder, a .gguf file or a hub id")
    p.add_argument("--target", type=float, default=0.7, help="mean sparsity (default 0.7)")
    p.add_argument("--variants", default="seed003",
                   help="'seed003' (default: the notes' grid) or comma-separated labels, e.g. "
                        "'uniform,ww,QKVout + split'")
    p.add_argument("--methods", default="wanda,sparsegpt",
                   help="comma-separated pruning methods (default wanda,sparsegpt)")
    p.add_argument("--epsilon", type=float, default=0.2,
                   help="AlphaPruning's epsilon of every variant (default 0.2)")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration text file (default: the text shipped in the package)")
    p.add_argument("--eval-text", metavar="FILE",
                   help="held-out text file (default: the evaluation text shipped in the "
                        "package)")
    p.add_argument("--nsamples", type=int, default=None,
                   help="calibration windows (default 128)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="tokens per window (default: the model's positions, at most 2048)")
    p.add_argument("--max-windows", type=int, default=None, metavar="N",
                   help="score only the first N perplexity windows")
    p.add_argument("--seed", type=int, default=0, help="seed of the calibration windows")
    p.add_argument("--device", type=device_type, default=None,
                   help="torch device each block is pruned on")
    p.add_argument("--out", metavar="DIR", default="specmetrics-ablation",
                   help="folder of the resumable record and the table (default "
                        "specmetrics-ablation)")
    p.set_defaults(run=run)


def run(args) -> int:
    from .._validation import check_interval, check_positive_int, check_seed
    from ..experiments.ablations import ablation, check_variants
    from ..models import load_model
    from ..pruning.registry import resolve_method

    func = "ablation"
    check_interval(args.target, 0, 1, name="target", func=func)
    variants = "seed003" if args.variants == "seed003" else \
        [v.strip() for v in args.variants.split(",") if v.strip()]
    check_variants(variants, func)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    for m in methods:
        resolve_method(m, func=func)
    for flag in ("nsamples", "max_windows"):
        if getattr(args, flag) is not None:
            check_positive_int(getattr(args, flag), name=flag, func=func)
    if args.seqlen is not None:
        check_positive_int(args.seqlen, name="seqlen", func=func, minimum=2)
    check_seed(args.seed, func=func)
    calibration = check_text_file(args.calibration, "--calibration")
    eval_text = check_text_file(args.eval_text, "--eval-text")
    model, tokenizer = load_model(check_source(args.model, func))
    result = ablation(model, tokenizer, target=args.target, variants=variants, methods=methods,
                      epsilon=args.epsilon, calibration=calibration, eval_texts=eval_text,
                      nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
                      max_windows=args.max_windows, out=args.out, device=args.device,
                      progress=True)
    out = Path(args.out)
    table = result.to_frame()
    table.to_csv(out / "table.csv")
    result.to_json(out / "result.json")
    print(f"perplexity at {args.target:g} (dense {result.dense_perplexity:.4g}; "
          f"{result.settings['n_windows']} windows of {result.settings['seqlen']} tokens; "
          f"AlphaPruning epsilon {args.epsilon:g}):")
    print(format_frame(table))
    status(f"wrote {out / 'table.csv'} and {out / 'result.json'}")
    return 0
