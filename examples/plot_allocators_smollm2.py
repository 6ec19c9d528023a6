"""
Every allocator on a real LLM: SmolLM2-135M at 70 % sparsity
============================================================

Perplexity of SmolLM2-135M-Instruct pruned to 70 % unstructured sparsity under each layer-wise
allocator (uniform, OWL, AlphaPruning, DLP, ATP, AlphaPruning on FARMS alphas and our
``alphaprobe``), with Wanda, SparseGPT, RIA and DSnoT (16 calibration windows of 512 tokens of
tokenized WikiText-2 valid; perplexity on the first 16 windows of 512 tokens of WikiText-2 raw
test; dense 36.6).

The grid takes about half an hour on a CPU, too long for a docs build: this page reads the table
``benchmarks/bench_allocation.py --gallery`` saved in ``examples/data/allocation_smollm2.csv``
(with the machine and date of the run). Regenerate it with::

    python benchmarks/bench_allocation.py --out bench-out/allocation --gallery
"""
from pathlib import Path

import matplotlib.pyplot as plt
import pandas as pd

try:
    here = Path(__file__).resolve().parent
except NameError:  # sphinx-gallery runs the file without __file__ in some versions
    here = Path.cwd()
table = pd.read_csv(here / "data" / "allocation_smollm2.csv")
print(table[["allocation", "method", "perplexity", "sparsity"]].to_string(index=False))
print("measured on:", table["machine"].dropna().iloc[0])

# %%
# Perplexity by allocator and method
# ----------------------------------
# Lower is better; the dashed line is the dense model. Every cell lands on 70.00 % sparsity.
dense = float(table.loc[table["method"] == "dense", "perplexity"].iloc[0])
cells = table[table["method"] != "dense"]
grid = cells.pivot(index="allocation", columns="method", values="perplexity")
order = grid["wanda"].sort_values(ascending=False).index if "wanda" in grid else grid.index
grid = grid.loc[order]
fig, ax = plt.subplots(figsize=(8, 4.5))
grid.plot.barh(ax=ax, logx=True, width=0.8)
ax.axvline(dense, color="k", ls="--", lw=1, label=f"dense ({dense:.1f})")
ax.set_xlabel("WikiText-2 perplexity (log scale)")
ax.set_ylabel("")
ax.legend(fontsize="small")
ax.set_title("SmolLM2-135M-Instruct, 70 % unstructured", fontsize="medium")
fig.tight_layout()
