"""Layer-wise sparsity of tiny-llama-wt from its spectra: the figure in docs/allocation.rst.

Run from the repository root (it reads the model from ``../shared``)::

    python examples/allocation_plot.py
    python examples/allocation_plot.py --model path/to/hf-model --out alloc.png --target 0.7

It allocates 70 % sparsity with AlphaPruning (alpha_peak, ε = 0.2, block units, default clipping),
prints the per-block table, writes the allocation as JSON beside the figure, and saves
``alloc.plot()``.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import specmetrics  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT.parent / "shared/models/tiny-llama-wt")
    parser.add_argument("--out", type=Path, default=ROOT / "docs/_static/allocation_tiny_llama.png")
    parser.add_argument("--target", type=float, default=0.7)
    parser.add_argument("--epsilon", type=float, default=0.2)
    parser.add_argument("--json", type=Path, default=None,
                        help="where to write the allocation (default: none)")
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(args.model))
    alloc = specmetrics.allocate(model, args.target,
                                 method=specmetrics.AlphaPruningConfig(epsilon=args.epsilon))
    print(alloc)
    print(alloc.to_frame()[["score", "relative", "ratio"]].to_string(float_format="%.4f"))
    if args.json is not None:
        alloc.to_json(args.json)
    ax = alloc.plot(title=f"tiny-llama-wt: AlphaPruning (alpha_peak, ε = {args.epsilon:g}), "
                          f"target {args.target:g}, achieved {alloc.achieved:.6f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
