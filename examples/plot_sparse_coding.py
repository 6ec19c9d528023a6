"""
Sparse-coding metrics on synthetic data: normalised loss against the planted sparsity
=====================================================================================

The figure of Deng, Tao & Benton (2023), small enough to run with the docs: sparse linear data
with ``a`` active features per sample (``d = 32``, ``n = 2048``, noise ``σ = 0.1``), a learned
dictionary of ``8 d`` atoms, the normalised loss against ``a`` with the closed-form oracle
``S₁*(a)``, and the three controls (Gaussian, Rademacher, Gaussian directions with Cauchy norms)
measured with the same settings as horizontal lines. The docs page shows the same figure at
``d = 64`` over three seeds (``benchmarks/bench_sparse_coding.py synthetic``).
"""
import matplotlib.pyplot as plt

from specmetrics.plotting.sparse_coding import plot_sparsity_vs_a
from specmetrics.sparse_coding import (CONTROL_KINDS, estimate_sparsity, make_control,
                                       make_sparse_linear, oracle_s1)

D, N = 32, 2048
OPTIONS = dict(steps=150, batch_size=256, warn=False)

values, oracle = {}, {}
for a in (0.5, 1.0, 2.0, 3.0, 4.0):
    est = estimate_sparsity(make_sparse_linear(D, N, a, seed=0), **OPTIONS)
    values[a] = est.normalized_loss
    oracle[a] = oracle_s1(a)
    print(f"a = {a:3.1f}: L_norm {est.normalized_loss:.3f} (oracle {oracle[a]:.3f}), "
          f"N0 {est.n0:.1f}, converged {est.converged}")

controls = {}
for kind in CONTROL_KINDS:
    controls[kind] = estimate_sparsity(make_control(kind, D, N, seed=0), **OPTIONS).normalized_loss
    print(f"{kind}: L_norm {controls[kind]:.3f}")

fig, ax = plt.subplots(figsize=(7, 4.5))
plot_sparsity_vs_a(values, controls=controls, oracle=oracle, ax=ax)
ax.set_title(f"d = {D}, n = {N}, one seed", fontsize="medium")
fig.tight_layout()
