"""``specmetrics hessian MODEL``: top eigenvalues, power-law fit, trace and spectral density of
a causal LM's loss Hessian on calibration text, for a selection of parameters."""
from __future__ import annotations

from pathlib import Path

from .common import CommandError, check_source, check_text_file, device_type, format_frame, status

__all__ = ["add_parser", "run", "check_values"]

_TRACE_METHODS = ("hutch++", "hutchinson", "xtrace")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "hessian", help="Hessian spectrum of a causal LM's loss: top eigenvalues, power law, "
                        "trace, density",
        description="Build the Hessian (or GGN) of the mean next-token loss of MODEL on "
                    "calibration windows, restricted to --params, without forming it; print its "
                    "top eigenvalues (Lanczos, with Ritz residuals) and the power-law fit "
                    "lambda_k ~ k^-s of them (s and the KS test against 1.36/sqrt(K)); "
                    "optionally its trace (--trace) and spectral density (--density). Results "
                    "(JSON) and plots (PNG) go to --out. Memory: Lanczos keeps one vector of "
                    "the selected parameters' size per step.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="a Hugging Face causal LM folder, a .gguf file or a hub id")
    p.add_argument("--text", metavar="FILE",
                   help="calibration text file (default: the corpus shipped with specmetrics)")
    p.add_argument("--params", action="append", metavar="PATTERN",
                   help="parameters: a qualified name, a module prefix or a glob such as "
                        "'model.layers.29.*' (repeatable; default: every parameter)")
    p.add_argument("--curvature", choices=("hessian", "ggn"), default="hessian",
                   help="the Hessian (default) or the generalised Gauss-Newton matrix")
    p.add_argument("--top-k", type=int, default=20, metavar="K",
                   help="top eigenvalues to compute and fit (default 20; 0: none)")
    p.add_argument("--method", choices=("lanczos", "arpack"), default="lanczos",
                   help="eigenvalue solver (default lanczos)")
    p.add_argument("--tol", type=float, default=None,
                   help="Ritz residual tolerance relative to the largest eigenvalue (default "
                        "sqrt(eps) of the dtype)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="most Lanczos steps (default min(dim, max(10 K, 100)))")
    p.add_argument("--trace", action="store_true", help="estimate the trace too")
    p.add_argument("--trace-method", choices=_TRACE_METHODS, default="hutch++",
                   help="trace estimator (default hutch++)")
    p.add_argument("--trace-probes", type=int, default=30,
                   help="products for the trace (default 30)")
    p.add_argument("--density", action="store_true",
                   help="estimate the spectral density (stochastic Lanczos quadrature)")
    p.add_argument("--density-steps", type=int, default=50,
                   help="Lanczos steps per density repeat (default 50)")
    p.add_argument("--density-repeats", type=int, default=1,
                   help="random start vectors averaged (default 1)")
    p.add_argument("--sigma", type=float, default=None,
                   help="standard deviation of the density kernel, in eigenvalue units "
                        "(default: about the node spacing)")
    p.add_argument("--nsamples", type=int, default=4,
                   help="calibration windows (default 4)")
    p.add_argument("--seqlen", type=int, default=128,
                   help="tokens per window (default 128, capped at the model's positions)")
    p.add_argument("--batch-size", type=int, default=4, help="windows per pass (default 4)")
    p.add_argument("--keep-graph", action="store_true",
                   help="keep each batch's gradient graph between products: each product is "
                        "then one backward pass (1.8x faster on SmolLM2-135M), at the memory of "
                        "a training step on the windows")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the windows, probes and start vectors (default 0)")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="dtype of the products (default float32)")
    p.add_argument("--device", type=device_type, default=None,
                   help="torch device of the products (default: cuda when available, else cpu)")
    p.add_argument("--out", metavar="DIR", default="specmetrics-hessian",
                   help="output folder (default specmetrics-hessian)")
    p.set_defaults(run=run)


def check_values(args) -> None:
    """Every value that can be checked without the model (exit status 2 on failure)."""
    from .._validation import check_int, check_interval, check_positive_int, check_seed, fail

    func = "hessian"
    check_int(args.top_k, name="top_k", func=func, minimum=0)
    if args.tol is not None:
        check_interval(args.tol, 0.0, 1.0, name="tol", func=func, closed="neither")
    if args.max_steps is not None:
        check_int(args.max_steps, name="max_steps", func=func, minimum=max(1, args.top_k))
    if args.trace:
        n = args.trace_probes
        if args.trace_method == "hutchinson":
            check_int(n, name="trace_probes", func=func, minimum=2)
        elif args.trace_method == "hutch++":
            check_int(n, name="trace_probes", func=func, minimum=6)
            if n % 3:
                raise fail("trace_probes", func, "a multiple of 3 for --trace-method hutch++", n)
        else:
            check_int(n, name="trace_probes", func=func, minimum=4)
            if n % 2:
                raise fail("trace_probes", func, "even for --trace-method xtrace", n)
    if args.density:
        check_int(args.density_steps, name="density_steps", func=func, minimum=2)
        check_positive_int(args.density_repeats, name="density_repeats", func=func)
        if args.sigma is not None and not args.sigma > 0:
            raise fail("sigma", func, "a positive number (eigenvalue units)", args.sigma)
    if args.top_k == 0 and not args.trace and not args.density:
        raise CommandError("nothing to compute: --top-k 0 without --trace or --density", code=2)
    check_positive_int(args.nsamples, name="nsamples", func=func)
    check_int(args.seqlen, name="seqlen", func=func, minimum=2)
    check_positive_int(args.batch_size, name="batch_size", func=func)
    check_seed(args.seed, func=func)
    if args.keep_graph and args.curvature != "hessian":
        raise fail("keep_graph", func, "used with --curvature hessian only", args.keep_graph)
    for pattern in args.params or ():
        if not pattern.strip():
            raise fail("params", func, "non-empty names or patterns", pattern)
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out must be a folder, {args.out!r} is a file", code=2)


def _save_figure(draw, path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.5, 4.5))
    draw(fig.subplots())
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    status(f"wrote {path}")


def run(args) -> int:
    import torch

    from ..calibration import load_text
    from ..hessian import (fit_hessian_power_law, hessian_operator, hessian_trace,
                           spectral_density, top_eigenvalues)
    from ..models import load_model
    from ..plotting.hessian import plot_hessian_eigenvalues, plot_spectral_density

    check_values(args)
    text = check_text_file(args.text, "--text")
    source = check_source(args.model, "hessian")
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.float64 if args.dtype == "float64" else None
    model, tokenizer = load_model(source, dtype=dtype, func="hessian")
    data = text if text is not None else load_text("calibration")
    op = hessian_operator(model, data, tokenizer=tokenizer, params=args.params,
                          curvature=args.curvature, nsamples=args.nsamples,
                          seqlen=args.seqlen, seed=args.seed, batch_size=args.batch_size,
                          device=device, keep_graph=args.keep_graph)
    status(f"{op.curvature} of the mean loss over {op.n_data} tokens "
           f"({args.nsamples} windows), {len(op.names)} tensors, {op.dim:,} parameters, "
           f"{op.dtype}, {op.device}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    if args.top_k:
        eig = top_eigenvalues(op, k=min(args.top_k, op.dim), seed=args.seed, tol=args.tol,
                              method=args.method, max_steps=args.max_steps, progress=True)
        print(f"top {eig.k} eigenvalues ({eig.method}, {eig.n_matvecs} products, "
              f"{eig.seconds:.1f} s, {eig.seconds / max(eig.n_matvecs, 1):.3g} s per product; "
              f"{eig.n_converged}/{eig.k} converged to tol {eig.tol:.2g}):")
        print(format_frame(eig.to_frame()))
        eig.to_json(out / "eigen.json")
        status(f"wrote {out / 'eigen.json'}")
        fit = fit_hessian_power_law(eig, warn=False)
        if fit.success:
            print(f"power law lambda_k ~ k^-s over the top {fit.k}: s = {fit.s:.4g} ± "
                  f"{fit.s_error:.2g} (beta = {fit.beta:.4g} ± {fit.beta_error:.2g}); KS "
                  f"{fit.ks_distance:.4g} {'<' if fit.power_law else '>='} 1.36/sqrt(K) = "
                  f"{fit.ks_threshold:.4g}: "
                  f"{'not rejected' if fit.power_law else 'rejected'}")
        else:
            print(f"power law: no fit ({fit.message})")
        fit.to_json(out / "power_law.json")
        status(f"wrote {out / 'power_law.json'}")
        _save_figure(lambda ax: plot_hessian_eigenvalues(eig, ax=ax, fit=fit),
                     out / "eigenvalues.png")
    if args.trace:
        tr = hessian_trace(op, method=args.trace_method, n_probes=args.trace_probes,
                           seed=args.seed)
        print(f"trace ({tr.method}, {tr.n_matvecs} products): {tr.value:.6g} ± "
              f"{tr.stderr:.2g}")
        tr.to_json(out / "trace.json")
        status(f"wrote {out / 'trace.json'}")
    if args.density:
        d = spectral_density(op, n_steps=args.density_steps, n_repeats=args.density_repeats,
                             sigma=args.sigma, seed=args.seed, progress=True)
        print(f"spectral density: {d.n_steps} steps x {d.n_repeats}, sigma {d.sigma:.3g}, "
              f"nodes in [{d.nodes[d.weights > 0].min():.4g}, "
              f"{d.nodes[d.weights > 0].max():.4g}], SLQ trace {d.trace:.6g}")
        d.to_json(out / "density.json")
        status(f"wrote {out / 'density.json'}")
        _save_figure(lambda ax: plot_spectral_density(d, ax=ax), out / "density.png")
    return 0

