"""``specmetrics circuits MODEL --out DIR``: the four circuit tables and their plots.

Writes to ``DIR``: ``qk_ov.csv`` (one row per head), ``qk_ov_layers.csv`` (per layer, with the
whole-``W_V`` columns), ``qk_ov_directions.csv`` (singular directions as tokens),
``congruence.csv`` and ``congruence_units.csv``, ``variance.csv``, ``mp.csv``; the JSON of each
result (``*.json``, readable with ``<Result>.from_json``); and ``qk_ov.png``,
``congruence.png``, ``variance.png``, ``mp.png``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from .common import CommandError, check_source, check_text_file, device_type, status

__all__ = ["add_parser", "run"]

TABLES = ("qk_ov", "congruence", "variance", "mp")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1, got {text!r}")
    return value


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def _ratio(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1), got {text!r}")
    return value


def add_parser(sub) -> None:
    p = sub.add_parser(
        "circuits", help="QK/OV spectra, token congruence, output variance, distance from MP",
        description="Circuit analyses of a model's weights: per-head spectra of the QK and OV "
                    "products (with their singular directions as tokens), token-neuron "
                    "congruence against random directions, output variance by layer (dense and "
                    "with Q+O / Q+K+V+O pruned), and each matrix's distance from the "
                    "Marchenko-Pastur law. Writes four tables (CSV, JSON) and their plots.")
    p.add_argument("source", metavar="MODEL",
                   help="a Hugging Face model folder or hub id, or a .gguf file (with its "
                        "tokenizer)")
    p.add_argument("--out", metavar="DIR", required=True, help="folder for the tables and plots")
    p.add_argument("--text", metavar="FILE",
                   help="text for the output variances (default: the shipped evaluation text)")
    p.add_argument("--ratio", type=_ratio, default=0.5,
                   help="pruning ratio of the Q+O and Q+K+V+O variance columns (default 0.5)")
    p.add_argument("--nsamples", type=_positive, default=8,
                   help="text windows for the variances (default 8)")
    p.add_argument("--seqlen", type=_positive, default=128,
                   help="tokens per window (default 128, capped at the model's positions)")
    p.add_argument("--directions", type=_non_negative, default=3,
                   help="singular directions per product mapped to tokens (default 3)")
    p.add_argument("--top-k", type=_positive, default=10,
                   help="tokens listed per direction or neuron (default 10)")
    p.add_argument("--null-draws", type=_non_negative, default=3,
                   help="Gaussian matrices per shape for the MP distance's sampling error "
                        "(default 3)")
    p.add_argument("--seed", type=_non_negative, default=0, help="seed (default 0)")
    p.add_argument("--device", type=device_type, default=None,
                   help="device the blocks run on for the variances (default: where they are)")
    p.set_defaults(run=run)


def _check_out(path: str) -> Path:
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise CommandError(f"--out must be a folder, but {path!r} is a file", code=2)
    return out


def run(args) -> int:
    import specmetrics.circuits as circuits
    from ..models import load_model
    from ..plotting.circuits import save_circuit_plot
    from .common import format_frame

    out = _check_out(args.out)
    text_file = check_text_file(args.text, "--text")
    source = check_source(args.source, "circuits")
    model, tokenizer = load_model(source, func="circuits")
    if tokenizer is None:  # pragma: no cover - load_model always returns one here
        raise CommandError("the model has no tokenizer", code=1)
    if text_file is not None:
        text = text_file
    else:
        from ..calibration import load_text

        text = load_text("evaluation")
    out.mkdir(parents=True, exist_ok=True)

    status("circuits: QK/OV spectra")
    spectra = circuits.qk_ov_spectra(model, tokenizer=tokenizer, directions=args.directions,
                                     top_k=args.top_k, seed=args.seed, progress=True)
    status("circuits: token congruence")
    congruence = circuits.token_congruence(model, tokenizer, top_k=args.top_k,
                                           seed=args.seed, progress=True)
    status("circuits: output variance")
    variance = circuits.output_variance(model, tokenizer, text, prune=args.ratio,
                                        nsamples=args.nsamples, seqlen=args.seqlen,
                                        seed=args.seed, device=args.device, progress=True)
    status("circuits: distance from Marchenko-Pastur")
    mp = circuits.mp_distances(model, null_draws=args.null_draws, seed=args.seed,
                               progress=True)

    frames = {
        "qk_ov": spectra.to_frame(), "qk_ov_layers": spectra.summary(),
        "qk_ov_directions": spectra.directions_frame(),
        "congruence": congruence.to_frame(), "congruence_units": congruence.units_frame(),
        "variance": variance.to_frame(), "mp": mp.to_frame(),
    }
    for name, frame in frames.items():
        path = out / f"{name}.csv"
        frame.to_csv(path, index=name not in ("qk_ov_directions", "congruence_units"))
        status(f"wrote {path}")
    for name, result in zip(TABLES, (spectra, congruence, variance, mp)):
        result.to_json(out / f"{name}.json")
        save_circuit_plot(result, out / f"{name}.png")
        status(f"wrote {out / (name + '.json')} and {out / (name + '.png')}")

    summary = spectra.summary()
    cols = [c for c in ("v_entropy", "v_rank_fraction", "qk_entropy_mean", "ov_entropy_mean",
                        "qk_effective_rank_mean", "ov_effective_rank_mean") if c in summary]
    print(format_frame(summary[cols]))
    var = variance.to_frame()
    print(format_frame(var[[c for c in var.columns if c.startswith("var_")]]))
    print(f"{len(spectra)} heads, {len(congruence)} congruence entries, {len(variance)} blocks, "
          f"{len(mp)} matrices; tables and plots in {out}")
    return 0
