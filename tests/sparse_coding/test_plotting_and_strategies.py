"""The figures (drawn on given axes, no global state) and the user-facing strategies."""
from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from specmetrics.sparse_coding import SyntheticActivations, oracle_s1
from specmetrics.sparse_coding.strategies import control_data, scales, sparse_linear_data

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


def test_plot_sparsity_vs_a_draws_the_paper_figure():
    from matplotlib.figure import Figure

    from specmetrics.plotting.sparse_coding import plot_sparsity_vs_a

    ax = Figure().subplots()
    values = {1.0: (1.4, 1.5, 1.6), 2.0: 1.9, 4.0: (2.9, 0.1)}
    out = plot_sparsity_vs_a(values, controls={"gaussian": 12.0, "cauchy_norm": (8, 9, 10)},
                             oracle={a: oracle_s1(a) for a in (1.0, 2.0, 4.0)}, ax=ax)
    assert out is ax
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert "gaussian control" in labels and "cauchy_norm control" in labels
    assert any("oracle" in t for t in labels)
    assert ax.get_ylim()[0] == 0


def test_plot_layer_sparsity_and_band_duck_typed():
    from types import SimpleNamespace

    from matplotlib.figure import Figure

    from specmetrics.plotting.sparse_coding import plot_layer_sparsity, plot_sparsity_band

    def site(kind, layer, value):
        return SimpleNamespace(kind=kind, layer=layer, normalized_loss=value,
                               normalized_loss_se=0.1, width=8)

    result = SimpleNamespace(sites=[site("embeddings", 0, 2.0), site("residual", 1, 3.0),
                                    site("residual", 2, 2.5), site("mlp_out", 1, 4.0)],
                             controls={"gaussian": {8: 9.0}})
    ax = plot_layer_sparsity(result, ax=Figure().subplots())
    assert len(ax.lines) >= 3
    assert ax.get_legend() is not None
    band = SimpleNamespace(rows=[SimpleNamespace(seed=s, normalized_loss=v)
                                 for s, v in [(0, 1.0), (1, 1.2)]], mean=1.1, low=1.0,
                           high=1.2)
    assert plot_sparsity_band(band, ax=Figure().subplots()).get_xlabel() == "seed"


@settings(max_examples=20)
@given(sparse_linear_data(d=16, n=st.integers(50, 80), sigma=st.sampled_from([0.0, 0.1])))
def test_sparse_linear_strategy_respects_fixed_values_and_default_a(syn):
    assert isinstance(syn, SyntheticActivations)
    assert syn.d == 16 and 50 <= syn.n <= 80 and syn.sigma in (0.0, 0.1)
    assert 0.5 <= syn.a <= max(0.5, 0.08 * 16)


@settings(max_examples=10)
@given(sparse_linear_data(a=3.0, n_features=12, dtype=torch.float64))
def test_sparse_linear_strategy_options(syn):
    assert syn.a == 3.0 and syn.n_features == 12 and syn.data.dtype == torch.float64


@settings(max_examples=10)
@given(control_data(kind="rademacher", d=st.just(9)))
def test_control_strategy(ctl):
    assert ctl.kind == "rademacher" and ctl.d == 9


@settings(max_examples=30)
@given(scales(0.5, 8.0))
def test_scales_strategy(c):
    assert 0.5 <= c <= 8.0 + 1e-9


def test_hypothesis_is_imported_only_by_the_strategies_module():
    import ast
    from pathlib import Path

    import specmetrics.sparse_coding as package

    for path in Path(package.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        names = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
            elif isinstance(node, ast.ImportFrom) and node.module == "strategies":
                names.add("strategies")
        if path.name != "strategies.py":
            assert "hypothesis" not in names and "strategies" not in names, path.name
            # heavy optional dependencies stay inside functions
            top = {n.names[0].name.split(".")[0] for n in tree.body if isinstance(n, ast.Import)}
            top |= {n.module.split(".")[0] for n in tree.body
                    if isinstance(n, ast.ImportFrom) and n.level == 0 and n.module}
            assert not top & {"pandas", "matplotlib", "transformers", "scipy"}, path.name
