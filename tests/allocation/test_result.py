"""The Allocation result: a frozen mapping keyed by module name, its table, JSON and plot."""
from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest

import specmetrics

from specmetrics.allocation import AllocatedMatrix, Allocation, allocate
from strategies import llama_names


@pytest.fixture(scope="module")
def alloc():
    names = llama_names(5)
    rng = np.random.default_rng(7)
    scores = {n: float(v) for n, v in zip(names, rng.uniform(1.5, 5.0, len(names)))}
    scores["model.layers.4.mlp.down_proj"] = float("nan")
    counts = {n: (64 if "self_attn" in n else 172) for n in names}
    with pytest.warns(UserWarning):
        return allocate(scores, 0.55, n_params=counts, units="split", budget="per_group",
                        apply_to="q,k,v,o,gate,up,down")


def test_mapping_protocol(alloc):
    names = llama_names(5)
    assert list(alloc) == names and len(alloc) == 35
    assert "model.layers.0.self_attn.q_proj" in alloc and "lm_head" not in alloc
    assert alloc["model.layers.3.mlp.up_proj"] == alloc.ratios["model.layers.3.mlp.up_proj"]
    assert alloc == alloc.ratios  # compares as a mapping
    with pytest.raises(TypeError):
        alloc["model.layers.0.self_attn.q_proj"] = 0.1
    with pytest.raises(dataclasses.FrozenInstanceError):
        alloc.target = 0.3
    with pytest.raises(KeyError):
        alloc["model.layers.9.mlp.up_proj"]
    copy = alloc.ratios
    copy["model.layers.0.self_attn.q_proj"] = 0.0
    assert alloc["model.layers.0.self_attn.q_proj"] != 0.0
    assert "target=0.55" in repr(alloc) and "units='split'" in repr(alloc)


def test_to_frame(alloc):
    units = alloc.to_frame()
    assert len(units) == 10
    assert list(units.columns) == ["block", "group", "n_matrices", "n_params", "score",
                                   "relative", "ratio", "applied", "degenerate"]
    row = units.loc["model.layers.2:mlp"]
    assert row["n_matrices"] == 3 and row["n_params"] == 3 * 172
    assert row["ratio"] == pytest.approx(alloc["model.layers.2.mlp.up_proj"])
    assert units.loc["model.layers.4:mlp", "degenerate"]
    matrices = alloc.to_frame(level="matrix")
    assert list(matrices.index) == list(alloc)
    assert {f.name for f in dataclasses.fields(AllocatedMatrix)} - {"name"} == set(matrices.columns)
    assert matrices.loc["model.layers.1.self_attn.o_proj", "module_type"] == "o"
    weighted = (matrices["ratio"] * matrices["n_params"]).sum() / matrices["n_params"].sum()
    assert weighted == pytest.approx(0.55, abs=1e-12)


def test_json_roundtrip(alloc, tmp_path):
    text = alloc.to_json()
    payload = json.loads(text)  # strict JSON: no NaN literals
    assert payload["format"] == "specmetrics.Allocation" and payload["data"]["target"] == 0.55
    assert payload["data"]["ratios"] == alloc.ratios
    assert payload["settings"]["units"] == "split"
    back = Allocation.from_json(text)
    assert back == alloc and back.ratios == alloc.ratios  # exact floats
    assert back.settings == alloc.settings
    for a, b in zip(alloc.matrices, back.matrices):
        for f in dataclasses.fields(AllocatedMatrix):
            x, y = getattr(a, f.name), getattr(b, f.name)
            assert x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)), f.name
    path = tmp_path / "alloc.json"
    alloc.to_json(path)
    assert Allocation.from_json(path).ratios == alloc.ratios
    assert Allocation.from_json(str(path)).achieved == pytest.approx(0.55, abs=1e-12)
    with pytest.raises(specmetrics.ParameterError, match="a serialised Allocation"):
        Allocation.from_json('{"format": "other"}')
    # the layout written by the previous version (format version 1) still reads
    old = {"format": "specmetrics.Allocation", "version": 1, "target": payload["data"]["target"],
           "settings": payload["settings"], "ratios": payload["data"]["ratios"],
           "matrices": payload["data"]["matrices"]}
    assert Allocation.from_json(json.dumps(old)) == alloc


def test_frozen(alloc):
    with pytest.raises(AttributeError):
        alloc.target = 0.1
    with pytest.raises(TypeError):
        alloc.settings["units"] = "matrix"
    with pytest.raises(TypeError):
        alloc["model.layers.0.self_attn.q_proj"] = 0.1


def test_plot(alloc):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = alloc.plot()
    fig = ax.figure
    try:
        ratio_ax, metric_ax = fig.axes[:2]
        assert ratio_ax is ax
        labels = [line.get_label() for line in ratio_ax.get_lines()]
        assert "attention" in labels and "mlp" in labels
        assert metric_ax.get_ylabel() == "alpha_peak"
        _, one = plt.subplots()
        assert alloc.plot(one, panel="metric") is one and one.get_ylabel() == "alpha_peak"
        plt.close(one.figure)
    finally:
        plt.close(fig)


def test_unique_names():
    m = AllocatedMatrix("a", 1, "a", None, "other", None, 1.0, 1.0, 1.0, 0.5, True, False)
    with pytest.raises(ValueError, match="unique"):
        Allocation(matrices=(m, m), target=0.5)
