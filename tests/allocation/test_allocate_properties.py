"""Properties of ``allocate`` on precomputed scores (no weights needed)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from specmetrics import ParameterError
from specmetrics.allocation import (AlphaPruningConfig, DegenerateMetricWarning, OWLConfig,
                                    SEED003_VARIANTS, UniformConfig, allocate, seed003_variant)
from specmetrics.models.naming import module_group, type_in
from strategies import LLAMA_TYPES, llama_names, model_scores

TYPES = ("q", "k", "v", "o", "gate", "up", "down")


@st.composite
def options(draw, *, max_epsilon=0.9):
    """allocate keyword arguments (no clip) and a target."""
    target = draw(st.floats(0.0, 0.95))
    kwargs = dict(
        method=AlphaPruningConfig(epsilon=draw(st.floats(0.0, max_epsilon)),
                                  normalize=draw(st.sampled_from(["minmax", "rank"])),
                                  invert=draw(st.booleans())),
        units=draw(st.sampled_from(["block", "matrix", "split"])),
        budget=draw(st.sampled_from(["global", "per_group"])),
        apply_to=draw(st.one_of(st.none(), st.sets(st.sampled_from(TYPES), min_size=1))),
    )
    if draw(st.booleans()):
        lo = draw(st.floats(0.0, target))
        hi = draw(st.floats(target, 1.0))
        kwargs["clip"] = (lo, hi)
    else:
        kwargs["clip"] = None
    return target, kwargs


def weighted(alloc, names=None):
    names = list(alloc) if names is None else names
    total = sum(m.n_params for m in alloc.matrices if m.name in names)
    return math.fsum(alloc[m.name] * m.n_params for m in alloc.matrices if m.name in names) / total


@pytest.mark.filterwarnings("ignore:some ratios fall outside")
@given(model_scores(), options())
def test_weighted_mean_is_the_target(model, opts):
    target, kwargs = opts
    alloc = allocate(model.scores, target, n_params=model.n_params, **kwargs)
    assert alloc.achieved == pytest.approx(target, abs=1e-9)
    assert weighted(alloc) == pytest.approx(target, abs=1e-9)
    if kwargs["budget"] == "per_group":
        for group, achieved in alloc.achieved_by_group().items():
            assert achieved == pytest.approx(target, abs=1e-9), group
    if kwargs["clip"] is not None:
        lo, hi = kwargs["clip"]
        assert all(lo <= r <= hi for r in alloc.values())
    # types left out of apply_to stay at the target exactly
    for m in alloc.matrices:
        if not type_in(m.module_type, kwargs["apply_to"]):
            assert m.ratio == target and not m.applied


@given(model_scores(), options())
def test_epsilon_zero_is_uniform(model, opts):
    target, kwargs = opts
    kwargs["method"] = AlphaPruningConfig(epsilon=0.0)
    alloc = allocate(model.scores, target, n_params=model.n_params, **kwargs)
    assert max(abs(r - target) for r in alloc.values()) < 1e-12


@given(model_scores(), st.floats(0.0, 0.95), st.sampled_from(["block", "matrix", "split"]))
def test_uniform_method(model, target, units):
    for method in ("uniform", UniformConfig()):
        alloc = allocate(model.scores, target, method=method, n_params=model.n_params, units=units)
        assert all(r == pytest.approx(target, abs=1e-15) for r in alloc.values())


@pytest.mark.filterwarnings("ignore:some ratios fall outside")
@given(model_scores(), options())
def test_ratio_order_follows_unit_score(model, opts):
    target, kwargs = opts
    kwargs["apply_to"] = None
    alloc = allocate(model.scores, target, n_params=model.n_params, **kwargs)
    sign = -1.0 if kwargs["method"].invert else 1.0
    problems = {}
    for m in alloc.matrices:
        key = m.group if kwargs["budget"] == "per_group" else "all"
        problems.setdefault(key, []).append(m)
    for members in problems.values():
        for a in members:
            for b in members:
                if sign * a.score < sign * b.score:
                    assert a.ratio <= b.ratio + 1e-12


@pytest.mark.filterwarnings("ignore:some ratios fall outside")
@given(model_scores(), options(), st.randoms(use_true_random=False))
def test_input_order_changes_nothing(model, opts, rnd):
    target, kwargs = opts
    names = list(model.scores)
    shuffled = names[:]
    rnd.shuffle(shuffled)
    a = allocate(model.scores, target, n_params=model.n_params, **kwargs)
    b = allocate({n: model.scores[n] for n in shuffled}, target,
                 n_params={n: model.n_params[n] for n in reversed(shuffled)}, **kwargs)
    assert list(b) == shuffled
    assert max(abs(a[n] - b[n]) for n in names) < 1e-12


@given(model_scores(ties=False), st.floats(0.1, 0.9), st.floats(0.1, 10.0), st.floats(-5, 5))
def test_affine_change_of_the_metric_changes_nothing(model, target, scale, shift):
    a = allocate(model.scores, target, n_params=model.n_params)
    b = allocate({n: v * scale + shift for n, v in model.scores.items()}, target,
                 n_params=model.n_params)
    assert max(abs(a[n] - b[n]) for n in a) < 1e-9


def test_block_units_share_one_ratio_and_score():
    names = llama_names(3)
    scores = {n: float(i % 5) for i, n in enumerate(names)}
    counts = dict.fromkeys(names, 10)
    alloc = allocate(scores, 0.5, n_params=counts)
    frame = alloc.to_frame()
    assert list(frame.index) == ["model.layers.0", "model.layers.1", "model.layers.2"]
    for i in range(3):
        block = [n for n in names if n.startswith(f"model.layers.{i}.")]
        assert len({alloc[n] for n in block}) == 1
        assert frame.loc[f"model.layers.{i}", "score"] == pytest.approx(
            np.mean([scores[n] for n in block]))


def test_split_units_and_score_from():
    names = llama_names(4)
    rng = np.random.default_rng(0)
    scores = {n: float(v) for n, v in zip(names, rng.uniform(1, 6, len(names)))}
    counts = {n: (16 if module_group(n) == "attention" else 40) for n in names}
    alloc = allocate(scores, 0.6, n_params=counts, units="split")
    units = alloc.to_frame()
    assert len(units) == 8 and set(units["group"]) == {"attention", "mlp"}
    a0 = [n for n in names[:4]]
    assert units.loc["model.layers.0:attention", "score"] == pytest.approx(
        np.mean([scores[n] for n in a0]))
    # score_from: the block score is the mean of the q and k alphas only
    alloc = allocate(scores, 0.6, n_params=counts, score_from="q,k")
    for i in range(4):
        qk = [scores[f"model.layers.{i}.self_attn.q_proj"], scores[f"model.layers.{i}.self_attn.k_proj"]]
        assert alloc.to_frame().loc[f"model.layers.{i}", "score"] == pytest.approx(np.mean(qk))
    # split + score_from q,k: MLP units hold neither, so they are scored from all their matrices
    alloc = allocate(scores, 0.6, n_params=counts, units="split", score_from=["q", "k"])
    mlp = [scores[f"model.layers.1.{t}"] for t in LLAMA_TYPES[4:]]
    assert alloc.to_frame().loc["model.layers.1:mlp", "score"] == pytest.approx(np.mean(mlp))


@pytest.mark.parametrize("label", list(SEED003_VARIANTS))
def test_every_seed003_variant(label):
    names = llama_names(8)
    rng = np.random.default_rng(3)
    scores = {n: float(v) for n, v in zip(names, rng.uniform(1.5, 5, len(names)))}
    counts = {n: (4096 * 4096 if module_group(n) == "attention" else 4096 * 11008) for n in names}
    for reading in ("apply_to", "score_from"):
        kwargs = seed003_variant(label, reading=reading)
        alloc = allocate(scores, 0.7, method=AlphaPruningConfig(epsilon=0.2), n_params=counts,
                         **kwargs)
        assert alloc.achieved == pytest.approx(0.7, abs=1e-12)
        listed = kwargs["apply_to"] if reading == "apply_to" else None
        for m in alloc.matrices:
            assert m.applied == type_in(m.module_type, listed)
            if not m.applied:
                assert m.ratio == 0.7
        if kwargs["budget"] == "per_group":
            for value in alloc.achieved_by_group().values():
                assert value == pytest.approx(0.7, abs=1e-12)


def test_seed003_reading_of_labels():
    assert seed003_variant("OUT V")["apply_to"] == ("v", "o")
    assert seed003_variant("QKVoutg")["apply_to"] == ("q", "k", "v", "o", "gate")
    assert seed003_variant("qkvout + split") == {
        "units": "split", "budget": "per_group", "apply_to": ("q", "k", "v", "o"), "score_from": None}
    assert seed003_variant("ww")["apply_to"] is None and seed003_variant("GT")["apply_to"] is None
    with pytest.raises(ParameterError, match="The 'label' parameter of seed003_variant"):
        seed003_variant("QKVZ")


def test_owl_mapping_is_owl_formula():
    # equal block sizes: s_l = S - 2 lam u_l + mean(2 lam u) (lib/prune_all.py), u min-max of D
    names = llama_names(6)
    d_blocks = np.array([3.0, 5.5, 4.0, 8.0, 2.5, 6.0])
    scores = {n: float(d_blocks[int(n.split(".")[2])]) for n in names}
    counts = {n: (16 if module_group(n) == "attention" else 43) for n in names}
    alloc = allocate(scores, 0.7, method=OWLConfig(lam=0.08), clip=None, n_params=counts)
    ratio = (d_blocks - d_blocks.min()) * (1 / (d_blocks.max() - d_blocks.min()) * 0.08 * 2)
    ratio = ratio - np.mean(ratio) + (1 - 0.7)
    expected = 1 - ratio
    got = np.array([alloc[f"model.layers.{i}.mlp.up_proj"] for i in range(6)])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-14)
    assert np.argmax(got) == np.argmin(d_blocks)  # most outliers, least sparsity


def test_degenerate_policies():
    names = llama_names(4)
    rng = np.random.default_rng(1)
    scores = {n: float(v) for n, v in zip(names, rng.uniform(1, 6, len(names)))}
    scores["model.layers.2.mlp.up_proj"] = float("nan")
    counts = dict.fromkeys(names, 100)
    with pytest.warns(DegenerateMetricWarning, match="held at the target"):
        alloc = allocate(scores, 0.6, n_params=counts)
    frame = alloc.to_frame()
    assert frame.loc["model.layers.2", "degenerate"] and not frame.loc["model.layers.2", "applied"]
    assert all(alloc[n] == 0.6 for n in names if ".layers.2." in n)
    assert alloc.achieved == pytest.approx(0.6, abs=1e-12)
    with pytest.warns(DegenerateMetricWarning, match="finite matrices"):
        alloc = allocate(scores, 0.6, n_params=counts, on_degenerate="mean")
    finite = [scores[n] for n in names if ".layers.2." in n and not math.isnan(scores[n])]
    assert alloc.to_frame().loc["model.layers.2", "score"] == pytest.approx(np.mean(finite))
    assert alloc.achieved == pytest.approx(0.6, abs=1e-12)
    with pytest.raises(ValueError, match="non-finite score.*model.layers.2.mlp.up_proj"):
        allocate(scores, 0.6, n_params=counts, on_degenerate="raise")
    # None (JSON's null) is a failed score too
    with pytest.warns(DegenerateMetricWarning):
        alloc = allocate({**scores, "model.layers.2.mlp.up_proj": None}, 0.6, n_params=counts)
    assert alloc.to_frame().loc["model.layers.2", "degenerate"]
    # a NaN outside score_from does not matter
    alloc = allocate(scores, 0.6, n_params=counts, score_from="attention", on_degenerate="raise")
    assert alloc.achieved == pytest.approx(0.6, abs=1e-12)


def test_include_exclude_on_scores():
    names = llama_names(3)
    scores = {n: float(i) for i, n in enumerate(names)}
    counts = dict.fromkeys(names, 7)
    alloc = allocate(scores, 0.5, n_params=counts, exclude=r"\.mlp\.")
    assert all(".self_attn." in n for n in alloc) and len(alloc) == 12
    alloc = allocate(scores, 0.5, n_params=counts, include=lambda n: n.endswith("q_proj"))
    assert len(alloc) == 3


@pytest.mark.parametrize("kwargs, match", [
    (dict(target=1.2), r"^The 'target' parameter of allocate must be in \[0, 1\). Got 1.2 instead.$"),
    (dict(target=-0.1), r"'target' parameter of allocate must be in \[0, 1\)"),
    (dict(clip=(0.6, 0.9)), r"The 'target' parameter of allocate must be within clip=\(0.6, 0.9\)"),
    (dict(clip=(0.9, 0.1)), r"The 'clip' parameter of allocate"),
    (dict(clip=(0.0, 1.5)), r"The 'clip' parameter of allocate must be in \[0, 1\]. Got 1.5"),
    (dict(units="layer"), r"The 'units' parameter of allocate must be one of"),
    (dict(budget="local"), r"The 'budget' parameter"),
    (dict(method="magnitude"), r"The 'method' parameter"),
    (dict(on_degenerate="ignore"), r"The 'on_degenerate' parameter"),
    (dict(units="matrix", score_from="q"), r"The 'score_from' parameter"),
    (dict(apply_to="qq"), r"The 'apply_to' parameter"),
    (dict(metric=len), r"The 'metric' parameter"),
    (dict(n_params=None), r"The 'n_params' parameter of allocate must be a mapping"),
    (dict(n_params={"model.layers.0.self_attn.q_proj": 5}), r"The 'n_params' parameter.*missing"),
    (dict(exclude=".*"), r"The 'include' parameter"),
])
def test_bad_parameters(kwargs, match):
    names = llama_names(2)
    base = dict(target=0.5, n_params=dict.fromkeys(names, 10))
    base.update(kwargs)
    target = base.pop("target")
    with pytest.raises(ParameterError, match=match):
        allocate({n: float(i) for i, n in enumerate(names)}, target, **base)


@pytest.mark.parametrize("kwargs, match", [
    (dict(epsilon=1.5), r"The 'epsilon' parameter of AlphaPruningConfig must be in \[0, 1\]"),
    (dict(normalize="zscore"), r"The 'normalize' parameter of AlphaPruningConfig"),
])
def test_bad_config(kwargs, match):
    with pytest.raises(ParameterError, match=match):
        AlphaPruningConfig(**kwargs)


def test_bad_owl_config():
    with pytest.raises(ParameterError, match="The 'lam' parameter of OWLConfig"):
        OWLConfig(lam=0.7)
    with pytest.raises(ParameterError, match="The 'm' parameter of OWLConfig"):
        OWLConfig(m=0)


def test_infeasible_target_raises():
    # eps = 1 puts the lowest block at r = 0, stuck at the lower bound: with hi = 0.75 and half of
    # the parameters stuck at 0, a mean of 0.74 cannot be reached
    names = llama_names(2)
    scores = {n: (1.0 if ".layers.0." in n else 2.0) for n in names}
    with pytest.raises(ParameterError, match=r"must be reachable with clip=\(0.0, 0.75\)"):
        allocate(scores, 0.74, method=AlphaPruningConfig(epsilon=1.0), clip=(0.0, 0.75),
                 n_params=dict.fromkeys(names, 10))
    # without the stuck block's weight it is reachable
    alloc = allocate(scores, 0.37, method=AlphaPruningConfig(epsilon=1.0), clip=(0.0, 0.75),
                     n_params=dict.fromkeys(names, 10))
    assert alloc.achieved == pytest.approx(0.37, abs=1e-12)
