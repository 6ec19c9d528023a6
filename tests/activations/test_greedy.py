"""TEAL's greedy allocation: the budget is spent but never exceeded; planted optima recovered."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tiny_models import build, one_torch_thread, token_windows  # noqa: F401
from strategies import gqa_projection_sizes, seeds
from specmetrics import ParameterError
from specmetrics.activations import activation_stats, find_sites
from specmetrics.activations.greedy import (greedy_allocation, greedy_path, projection_sizes,
                                            teal_greedy_search, teal_greedy_targets)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def weighted(alloc, sizes):
    return sum(sizes[k] * alloc[k] for k in sizes) / sum(sizes.values())


def random_tables(rng, kinds, n_points):
    """Error tables: random non-negative, non-monotone values (the greedy must cope)."""
    return {k: rng.random(n_points) * rng.uniform(0.1, 10) for k in kinds}


# ----------------------------------------------------------------------------------------------
# the budget property

@settings(max_examples=150)
@given(sizes=gqa_projection_sizes(), target=st.floats(0.0, 1.0), step=st.floats(0.01, 0.3),
       seed=seeds, n_points=st.integers(2, 30), cap=st.sampled_from([1.0, 0.99, 0.8]))
def test_greedy_never_exceeds_the_budget_and_hits_it_within_one_step(sizes, target, step, seed,
                                                                     n_points, cap):
    rng = np.random.default_rng(seed)
    tables = random_tables(rng, sizes, n_points)
    alloc = greedy_allocation(tables, sizes, target, step=step, max_sparsity=cap)
    assert list(alloc) == list(sizes)
    assert all(0.0 <= v <= cap for v in alloc.values())
    budget = weighted(alloc, sizes)
    delta = step * min(sizes.values()) / sum(sizes.values())
    assert delta <= step
    assert budget <= target + 1e-9
    if any(v < cap for v in alloc.values()):
        assert budget > target - delta - 1e-9
    else:
        assert cap <= target + 1e-9


@settings(max_examples=60)
@given(sizes=gqa_projection_sizes(), target=st.floats(0.0, 1.0), step=st.floats(0.02, 0.3),
       seed=seeds)
def test_greedy_budget_with_a_non_additive_error_function(sizes, target, step, seed):
    """A callable error with interactions between projections (not a sum of tables)."""
    rng = np.random.default_rng(seed)
    w = rng.uniform(0.1, 5, (len(sizes), len(sizes)))
    kinds = list(sizes)

    def errors(sp):
        v = np.array([sp[k] for k in kinds])
        return float(v @ w @ v + np.sin(7 * v).sum())

    path = greedy_path(errors, sizes, step=step, max_target=target)
    budgets = np.array(path.budgets)
    assert np.all(np.diff(budgets) > 0) and budgets[-1] <= target + 1e-9
    assert path.complete or budgets[-1] > target - path.delta - 1e-9
    # every step raised exactly one projection, by at most its increment
    for before, after, kind in zip(path.sparsities, path.sparsities[1:], path.chosen):
        changed = [k for k in kinds if after[k] != before[k]]
        assert changed == [kind]
        assert after[kind] - before[kind] <= step * min(sizes.values()) / sizes[kind] + 1e-12
    # and the error recorded is the error of the state
    assert path.errors[-1] == pytest.approx(errors(path.sparsities[-1]))


def test_path_is_read_at_lower_budgets_consistently():
    rng = np.random.default_rng(0)
    sizes = {"qkv": 6.0, "o": 4.0, "gate_up": 22.0, "down": 11.0}
    tables = random_tables(rng, sizes, 11)
    path = greedy_path(tables, sizes, step=0.05, max_target=0.7)
    for target in (0.0, 0.1, 0.25, 0.4, 0.5, 0.65, 0.7):
        assert path.at(target) == greedy_allocation(tables, sizes, target, step=0.05)
    with pytest.raises(ParameterError, match="max_target"):
        path.at(0.9)
    frame = path.to_frame()
    assert list(frame.columns) == ["budget", "error", "chosen", "qkv", "o", "gate_up", "down"]
    assert len(frame) == len(path.budgets)


# ----------------------------------------------------------------------------------------------
# planted truth

def test_a_free_projection_is_filled_first():
    sizes = {"qkv": 3.0, "o": 1.0, "gate_up": 5.0, "down": 2.5}
    tables = {"qkv": [0, 1, 4], "o": [0, 2, 8], "gate_up": [0, 0, 0], "down": [0, 3, 9]}
    alloc = greedy_allocation(tables, sizes, 5.0 / 11.5, step=0.05)
    assert alloc["gate_up"] == pytest.approx(1.0)
    assert alloc["qkv"] == alloc["o"] == alloc["down"] == 0.0


@settings(max_examples=40)
@given(seed=seeds, target=st.floats(0.05, 0.9))
def test_greedy_is_optimal_for_convex_additive_errors(seed, target):
    """Equal-cost steps and convex separable errors: greedy = the brute-force optimum."""
    rng = np.random.default_rng(seed)
    # sizes 1 : 2 : 4, step 0.25: increments 0.25, 0.125, 0.0625 -> levels 4, 8, 16
    sizes = {"a": 1.0, "b": 2.0, "c": 4.0}
    step = 0.25
    tables = {}
    for k in sizes:
        slopes = np.sort(rng.uniform(0.01, 5, 16))  # increasing slopes: convex, piecewise linear
        tables[k] = np.concatenate([[0.0], np.cumsum(slopes)])
    alloc = greedy_allocation(tables, sizes, target, step=step)
    total = sum(sizes.values())
    delta = step * 1.0 / total
    n_max = int(np.floor(target / delta + 1e-9))
    inc = {k: step / sizes[k] for k in sizes}
    levels = {k: int(round(1 / inc[k])) for k in sizes}

    grid = np.linspace(0, 1, 17)
    per_level = [np.interp(np.arange(levels[k] + 1) * inc[k], grid, tables[k]) for k in sizes]
    # the budget is spent exactly (errors grow with sparsity): n_max steps in all
    best = min(sum(c[n] for c, n in zip(per_level, ns))
               for ns in itertools.product(*(range(levels[k] + 1) for k in sizes))
               if sum(ns) == n_max)
    got = sum(np.interp(alloc[k], np.linspace(0, 1, 17), tables[k]) for k in sizes)
    assert got == pytest.approx(best, rel=1e-9, abs=1e-9)


def test_parameter_errors():
    with pytest.raises(ParameterError, match="'sizes'"):
        greedy_allocation({"a": [0, 1]}, {"a": 0}, 0.5)
    with pytest.raises(ParameterError, match="'sizes'"):
        greedy_allocation({"a": [0, 1]}, {}, 0.5)
    with pytest.raises(ParameterError, match="'target'"):
        greedy_allocation({"a": [0, 1]}, {"a": 1}, 1.5)
    with pytest.raises(ParameterError, match="'step'"):
        greedy_allocation({"a": [0, 1]}, {"a": 1}, 0.5, step=0)
    with pytest.raises(ParameterError, match="'errors'"):
        greedy_allocation({"b": [0, 1]}, {"a": 1}, 0.5)
    with pytest.raises(ParameterError, match="'errors'"):
        greedy_allocation({"a": [0]}, {"a": 1}, 0.5)
    with pytest.raises(ParameterError, match="'errors'"):
        greedy_allocation(3, {"a": 1}, 0.5)


# ----------------------------------------------------------------------------------------------
# model level

def test_projection_sizes_follow_the_config_with_gqa():
    model = build("llama")  # hidden 64, 4 heads of 16, 2 kv heads, intermediate 128
    cfg = model.config
    d, h, kv = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads
    hd, ff = d // h, cfg.intermediate_size
    sites = {n: s for n, s in find_sites(model).items() if s.block == 0
             and s.kind in ("qkv", "o", "gate_up", "down")}
    sizes = projection_sizes(model, sites)
    assert sizes == {"model.layers.0.qkv": d * (h + 2 * kv) * hd, "model.layers.0.o": h * hd * d,
                     "model.layers.0.gate_up": 2 * d * ff, "model.layers.0.down": ff * d}
    assert sizes["model.layers.0.qkv"] < 3 * sizes["model.layers.0.o"]  # k, v are smaller


def test_teal_greedy_search_on_a_tiny_model():
    model = build("llama")
    calib = token_windows(4, 32, seed=2)
    stats = activation_stats(model, None, calib, sites=["qkv", "o", "gate_up", "down"], nsamples=4,
                             seqlen=32)
    search = teal_greedy_search(model, None, calib, stats, max_target=0.5, step=0.2, nsamples=2,
                                seqlen=32)
    assert list(search.paths) == ["model.layers.0", "model.layers.1"]
    for target in (0.2, 0.5):
        targets = search.targets(target)
        assert set(targets) == set(stats)
        for block, path in search.paths.items():
            sizes = path.sizes
            alloc = {k: targets[search.sites[block][k]] for k in sizes}
            budget = weighted(alloc, sizes)
            assert target - path.delta < budget <= target + 1e-9
            assert sizes["gate_up"] == 2 * 64 * 128
    # the errors are measured: the greedy's first steps do not increase the block error much
    path = search.paths["model.layers.0"]
    assert path.errors[0] == 0.0 and all(e > 0 for e in path.errors[1:])
    assert search.to_frame(0.5).shape == (2, 5)
    same = teal_greedy_targets(model, None, calib, stats, 0.5, step=0.2, nsamples=2, seqlen=32)
    assert same == search.targets(0.5)
    # the model is left as it was
    for module in model.modules():
        assert not module._forward_pre_hooks and not module._forward_hooks


def test_teal_greedy_search_needs_teal_sites():
    model = build("llama")
    calib = token_windows(2, 16)
    stats = activation_stats(model, None, calib, sites="silu_gate", nsamples=2, seqlen=16)
    with pytest.raises(ParameterError, match="'stats'"):
        teal_greedy_search(model, None, calib, stats, max_target=0.5, nsamples=2, seqlen=16)
