"""``specmetrics prune MODEL``: prune a Hugging Face model and evaluate it."""
from __future__ import annotations

from .allocate import add_allocation_options, allocation_from_args, print_allocation
from .common import (CommandError, check_out, check_source, check_text_file, device_type,
                     format_frame, status, write_frame)

__all__ = ["add_parser", "run"]

#: Columns of the printed prune report (SparseGPT adds its damping columns).
PRUNE_COLUMNS = ("block", "shape", "target", "achieved", "error", "time_s")
SPARSEGPT_COLUMNS = ("damp", "retries", "dead_inputs")


def add_parser(sub) -> None:
    from ..pruning.registry import method_names

    p = sub.add_parser(
        "prune", help="prune a Hugging Face model (uniform or score-based allocation) and "
                      "evaluate it",
        description="Prune the Linear layers of a causal LM or BERT-style encoder with a "
                    "registered method at a uniform ratio or an allocator's layer-wise ratios; "
                    "prints the per-matrix report and, with --eval-text, perplexity dense vs "
                    "pruned (causal LM) or embedding fidelity (encoder).",
    )
    p.add_argument("model", metavar="MODEL",
                   help="a Hugging Face model folder, a .gguf file or a hub id")
    p.add_argument("--target", type=float, default=None,
                   help="mean sparsity in [0, 1) (required, except with --pattern: N/M)")
    p.add_argument("--method", choices=method_names(), default="wanda",
                   help="pruning method (default wanda)")
    p.add_argument("--pattern", default="unstructured", metavar="N:M",
                   help="sparsity pattern: unstructured (default) or N:M, e.g. 2:4")
    add_allocation_options(p, default="uniform")
    p.add_argument("--calibration", metavar="FILE",
                   help="calibration text file (required by wanda, sparsegpt, ria and dsnot)")
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
    p.add_argument("--device", type=device_type, default=None,
                   help="torch device each block is pruned on (default: where the model is)")
    p.add_argument("--save", metavar="DIR",
                   help="save the pruned model and its tokenizer here (save_pretrained, "
                        "safetensors)")
    p.add_argument("--out", metavar="FILE", help="write the per-matrix report (.csv or .json)")
    p.set_defaults(run=run)


def _check_values(args, func: str):
    """Every value, before the model is loaded."""
    from .._validation import check_interval, check_positive_int, check_seed, fail
    from ..experiments import method_config

    method = method_config(args.method, args.pattern)
    config, options = allocation_from_args(args, func)
    if args.target is None and method.nm is None:
        raise fail("target", func, "given (a float in [0, 1)) without an N:M pattern", None)
    if args.target is not None:
        check_interval(args.target, 0, 1, name="target", func=func, closed="left")
    if method.nm is not None and config.name != "uniform":
        raise fail("allocation", func, f"'uniform' with the N:M pattern {method.pattern!r}",
                   config.name)
    check_positive_int(args.nsamples, name="nsamples", func=func)
    if args.seqlen is not None:
        check_positive_int(args.seqlen, name="seqlen", func=func, minimum=2)
    if args.max_windows is not None:
        check_positive_int(args.max_windows, name="max_windows", func=func)
    check_seed(args.seed, func=func)
    calibration = check_text_file(args.calibration, "--calibration")
    if calibration is None and method.needs_calibration:
        raise fail("calibration", func, f"given for {args.method} (a calibration text file)", None)
    if calibration is None and getattr(config, "inputs", None) == "activations":
        raise fail("calibration", func, f"given for --allocation {config.name}", None)
    eval_text = check_text_file(args.eval_text, "--eval-text")
    return method, config, options, calibration, eval_text


def run(args) -> int:
    from ..experiments import prune_and_evaluate
    from ..models import is_causal_lm, load_model

    func = "prune_and_evaluate"
    out = check_out(args.out, (".csv", ".json"))
    method, config, options, calibration, eval_text = _check_values(args, func)
    model, tokenizer = load_model(check_source(args.model, func))
    kind = "causal LM" if is_causal_lm(model) else "encoder"
    print(f"specmetrics prune: {args.model} ({type(model).__name__}, {kind}); {method}; "
          f"allocation {config.name}; target "
          f"{'N/M' if args.target is None else f'{args.target:g}'}")
    run_ = prune_and_evaluate(
        model, tokenizer, args.target, method=method, allocation=config,
        allocate_options=options, calibration=calibration, eval_texts=eval_text,
        nsamples=args.nsamples, seqlen=args.seqlen, seed=args.seed,
        max_windows=args.max_windows, inplace=True, device=args.device, progress=True)
    if run_.allocation is not None:
        print_allocation(run_.allocation)
        print()
    report = run_.report
    frame = report.to_frame()
    columns = PRUNE_COLUMNS + (SPARSEGPT_COLUMNS if run_.method.name == "sparsegpt" else ())
    print(format_frame(frame[list(columns)]))
    calib = "no calibration" if report.nsamples is None else \
        f"calibration {report.nsamples} windows x {report.seqlen} tokens, seed {report.seed}"
    print(f"{len(report)} matrices: target {report.target:.4g}, achieved {report.achieved:.6f} "
          f"(fraction of zeros, parameter-weighted), mean relative error {run_.error:.4g}; "
          f"{calib}; {report.time_s:.1f} s")
    ev = run_.evaluation
    if ev is not None and ev.kind == "perplexity":
        print(f"perplexity on {args.eval_text} ({ev.n_texts} windows of {ev.seqlen} tokens): "
              f"dense {ev.perplexity_dense:.4g}, pruned {ev.perplexity:.4g}")
    elif ev is not None:
        print(f"embedding fidelity on {ev.n_texts} paragraphs of {args.eval_text}: cosine "
              f"{ev.cosine:.4f} (min {ev.cosine_min:.4f}), nearest-neighbour agreement at "
              f"k={ev.k} {ev.nn_agreement:.4f}")
    if out is not None:
        write_frame(frame, out)
    if args.save:
        try:
            run_.model.save_pretrained(args.save)
            tokenizer.save_pretrained(args.save)
        except Exception as err:
            raise CommandError(f"--save {args.save}: {type(err).__name__}: {err}") from err
        status(f"saved the pruned model and tokenizer to {args.save}")
    return 0
