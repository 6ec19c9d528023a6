"""``specmetrics sparse-coding MODEL``: how sparse-linear the activations of every layer are
(Deng, Tao & Benton 2023), against control data of the same shape."""
from __future__ import annotations

from pathlib import Path

from .common import CommandError, check_source, check_text_file, device_type, format_frame, \
    status, write_frame

__all__ = ["add_parser", "run", "TABLE_COLUMNS"]

#: Columns of the printed table (the CSV has every field).
TABLE_COLUMNS = ("kind", "layer", "width", "n_tokens", "n_features", "normalized_loss",
                 "normalized_loss_se",
                 "s1", "n0", "relative_mse", "a_estimate", "converged")
_KINDS = ("embeddings", "residual", "mlp_out", "qkv", "o", "gate_up", "silu_gate", "down")
_CONTROLS = ("gaussian", "rademacher", "cauchy_norm")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "sparse-coding", help="sparse-coding metrics of the activations of every layer "
                              "(normalised loss, S1, N0) against control data",
        description="Sample activations of every layer of MODEL on --text, learn a sparse "
                    "dictionary per site (greedy non-negative coding, adaptive lambda) and "
                    "report the normalised loss of Deng, Tao & Benton (2023): lower is sparser. "
                    "Control data (Gaussian by default) of the same width and size are measured "
                    "with the same settings. Writes table.csv, result.json and profile.png to "
                    "--out.",
    )
    p.add_argument("model", metavar="MODEL",
                   help="a Hugging Face model folder, a .gguf file or a hub id")
    p.add_argument("--text", metavar="FILE", required=True,
                   help="text file the activations are sampled on")
    p.add_argument("--sites", default="embeddings,residual,mlp_out",
                   help="comma-separated site kinds (embeddings, residual, mlp_out, qkv, o, "
                        "gate_up, silu_gate, down) or site names (default "
                        "embeddings,residual,mlp_out)")
    p.add_argument("--out", metavar="DIR", default="specmetrics-sparse-coding",
                   help="output folder (default specmetrics-sparse-coding)")
    p.add_argument("--nsamples", type=int, default=64, help="text windows (default 64)")
    p.add_argument("--seqlen", type=int, default=None,
                   help="tokens per window (default: the model's maximum positions, at most "
                        "2048)")
    p.add_argument("--max-tokens", type=int, default=16384,
                   help="tokens sampled per site (default 16384)")
    p.add_argument("--n-features", type=int, default=None,
                   help="dictionary size per site (default: 4 x the site's width, at most one "
                        "atom per 8 tokens)")
    p.add_argument("--steps", type=int, default=200,
                   help="dictionary-learning steps per site (default 200)")
    p.add_argument("--batch-size", type=int, default=512,
                   help="samples per dictionary-learning step (default 512)")
    p.add_argument("--controls", default="gaussian",
                   help="comma-separated control kinds (gaussian, rademacher, cauchy_norm) or "
                        "'none' (default gaussian)")
    p.add_argument("--keep-first", action="store_true",
                   help="keep the first position of every window (default: left out)")
    p.add_argument("--no-center", action="store_true",
                   help="do not subtract each site's mean activation")
    p.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    p.add_argument("--device", type=device_type, default=None,
                   help="torch device (default: where the model is)")
    p.set_defaults(run=run)


def _tokens(text: str, flag: str) -> list[str]:
    tokens = [t.strip() for t in text.split(",") if t.strip()]
    if not tokens:
        raise CommandError(f"{flag} must name at least one entry, got {text!r}", code=2)
    return tokens


def run(args) -> int:
    from .._validation import check_positive_int, check_seed

    func = "layer_sparsity"
    sites = _tokens(args.sites, "--sites")
    bad = [s for s in sites if s not in _KINDS and "." not in s]
    if bad:
        raise CommandError(f"--sites: unknown site kind(s) {', '.join(bad)} (kinds: "
                           f"{', '.join(_KINDS)}; or qualified site names)", code=2)
    controls = [] if args.controls.strip().lower() == "none" else \
        _tokens(args.controls, "--controls")
    bad = [c for c in controls if c not in _CONTROLS]
    if bad:
        raise CommandError(f"--controls: unknown control kind(s) {', '.join(bad)} (choose from "
                           f"{', '.join(_CONTROLS)}, or none)", code=2)
    check_positive_int(args.nsamples, name="nsamples", func=func)
    if args.seqlen is not None:
        check_positive_int(args.seqlen, name="seqlen", func=func, minimum=2)
    check_positive_int(args.max_tokens, name="max_tokens", func=func, minimum=2)
    if args.n_features is not None:
        check_positive_int(args.n_features, name="n_features", func=func)
    check_positive_int(args.steps, name="steps", func=func)
    check_positive_int(args.batch_size, name="batch_size", func=func)
    check_seed(args.seed, func=func)
    text = check_text_file(args.text, "--text")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out must be a folder, got the file {args.out!r}", code=2)
    source = check_source(args.model, func)

    from ..models import load_model
    from ..sparse_coding import layer_sparsity

    model, tokenizer = load_model(source)
    result = layer_sparsity(
        model, tokenizer, text, sites=sites, nsamples=args.nsamples, seqlen=args.seqlen,
        seed=args.seed, max_tokens=args.max_tokens, skip_first=not args.keep_first,
        center=not args.no_center, n_features=args.n_features, steps=args.steps,
        batch_size=args.batch_size, controls=controls, device=args.device, progress=True,
        warn=False)

    # everything computed: only now write files
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    frame = result.to_frame()
    columns = [c for c in TABLE_COLUMNS if c in frame.columns] + \
        [c for c in frame.columns if c.startswith("control_")]
    print(format_frame(frame[columns]))
    for kind, by_width in result.controls.items():
        values = ", ".join(f"width {w}: {v:.4g}" for w, v in by_width.items())
        print(f"{kind} control ({result.settings['n_tokens']} samples, same settings): {values}")
    unsettled = [s.name for s in result.sites if not s.converged]
    if unsettled:
        status(f"{len(unsettled)} site(s) did not settle (see 'message' in table.csv): "
               + ", ".join(unsettled[:6]) + (" ..." if len(unsettled) > 6 else ""))
    write_frame(frame, out / "table.csv")
    result.to_json(out / "result.json")
    status(f"wrote {out / 'result.json'}")
    fig = Figure(figsize=(8, 4.5))
    result.plot(ax=fig.subplots())
    fig.tight_layout()
    fig.savefig(out / "profile.png", dpi=120)
    status(f"wrote {out / 'profile.png'}")
    return 0
