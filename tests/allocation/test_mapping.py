"""The pure mapping functions and the exact budget solver."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from specmetrics import ParameterError
from specmetrics.allocation.mapping import (alphapruning_ratios, normalize_scores, outlier_ratio,
                                            owl_offsets, solve_budget, weighted_mean)
from strategies import seeds


def test_normalize_minmax_and_rank():
    x = [3.0, 1.0, 2.0, 10.0]
    np.testing.assert_allclose(normalize_scores(x), [2 / 9, 0.0, 1 / 9, 1.0])
    np.testing.assert_allclose(normalize_scores(x, "rank"), [2 / 3, 0.0, 1 / 3, 1.0])
    # ties share the average rank
    np.testing.assert_allclose(normalize_scores([1.0, 2.0, 2.0, 3.0], "rank"), [0, 0.5, 0.5, 1])


@pytest.mark.parametrize("method", ["minmax", "rank"])
def test_normalize_constant_and_single(method):
    np.testing.assert_array_equal(normalize_scores([4.0, 4.0, 4.0], method), [0.5] * 3)
    np.testing.assert_array_equal(normalize_scores([7.0], method), [0.5])


def test_normalize_rejects_non_finite():
    with pytest.raises(ValueError, match="finite"):
        normalize_scores([1.0, np.nan])


def test_alphapruning_ratios_band():
    r = alphapruning_ratios([2.0, 3.0, 4.0], 0.2)
    np.testing.assert_allclose(r, [0.8, 1.0, 1.2])
    np.testing.assert_allclose(alphapruning_ratios([2.0, 3.0, 4.0], 0.2, invert=True), [1.2, 1.0, 0.8])
    np.testing.assert_array_equal(alphapruning_ratios([2.0, 3.0, 4.0], 0.0), [1.0, 1.0, 1.0])


def test_owl_offsets_and_outlier_ratio():
    np.testing.assert_allclose(owl_offsets([1.0, 3.0, 2.0], 0.08), [0.0, -0.16, -0.08])
    # mean of [1, 1, 1, 1, 16] is 4; above 2 * 4 = 8: one of five
    assert outlier_ratio([1, 1, 1, 1, 16], 2.0) == pytest.approx(20.0)
    assert outlier_ratio(np.ones((3, 4)), 5.0) == 0.0


def test_solve_budget_hand_case():
    # unclipped eta = 0.9 * 4 / 4.2 would put the third at 1.029 > 0.99: it is clipped and the
    # other two share the rest, eta = (3.6 - 1.98) / 1.8 = 0.9
    s, eta = solve_budget([0, 0, 0], [0.8, 1.0, 1.2], [1, 1, 2], 0.9, clip=(0.0, 0.99))
    np.testing.assert_allclose(s, [0.72, 0.9, 0.99], rtol=0, atol=1e-15)
    assert eta == pytest.approx(0.9, abs=1e-15)
    s, eta = solve_budget([0, 0, 0], [0.8, 1.0, 1.2], [1, 1, 2], 0.9)
    np.testing.assert_allclose(s * 4.2 / 3.6, [0.8, 1.0, 1.2])


def test_solve_budget_shift():
    s, c = solve_budget([0.0, -0.1, -0.2], [1, 1, 1], [1, 1, 1], 0.5)
    np.testing.assert_allclose(s, [0.6, 0.5, 0.4])
    s, c = solve_budget([0.0, -0.1, -0.2], [1, 1, 1], [1, 1, 1], 0.5, clip=(0.45, 1.0))
    assert weighted_mean(s, [1, 1, 1]) == pytest.approx(0.5, abs=1e-15)
    assert s.min() >= 0.45


def test_solve_budget_infeasible():
    # a zero relative ratio stays at lo: 0.98 cannot be reached with hi = 0.99 and half the weight stuck
    with pytest.raises(ParameterError, match=r"The 'target' parameter of allocate must be reachable"):
        solve_budget([0, 0], [0.0, 1.0], [1, 1], 0.98, clip=(0.0, 0.99))
    with pytest.raises(ParameterError, match="reachable"):
        solve_budget([0, 0], [1.0, 1.0], [1, 1], 0.995, clip=(0.0, 0.99))


@st.composite
def budget_problems(draw):
    rng = np.random.default_rng(draw(seeds))
    n = draw(st.integers(1, 40))
    shift = draw(st.booleans())
    if shift:
        base, slope = -rng.uniform(0, 0.5, n), np.ones(n)
    else:
        base, slope = np.zeros(n), rng.uniform(0.0, 2.0, n)
        if draw(st.booleans()):
            slope = rng.choice(slope[:3], n)  # ties
    weights = rng.integers(1, 10**7, n).astype(float)
    lo = draw(st.floats(0.0, 0.5))
    hi = draw(st.floats(lo, 1.0))
    clip = draw(st.sampled_from([None, (lo, hi)]))
    target = draw(st.floats(0.0, 0.999))
    return base, slope, weights, target, clip


@given(budget_problems())
def test_solve_budget_exact_mean_and_bounds(problem):
    base, slope, weights, target, clip = problem
    try:
        s, _ = solve_budget(base, slope, weights, target, clip=clip)
    except ParameterError:
        # infeasible only when the target is outside what the bounds can reach
        lo, hi = clip if clip is not None else (-np.inf, np.inf)
        moving = slope > 0
        reach = (np.dot(weights[~moving], np.clip(base[~moving], lo, hi)) +
                 weights[moving].sum() * np.array([lo, hi])) / weights.sum()
        assert not reach[0] - 1e-12 <= target <= reach[1] + 1e-12
        return
    assert weighted_mean(s, weights) == pytest.approx(target, abs=1e-9)
    if clip is not None:
        assert s.min() >= clip[0] and s.max() <= clip[1]
    # order of items follows base + t slope (monotone in slope for a scale, in base for a shift)
    key = base + slope * 1e6 if np.all(base == 0) else base
    order = np.argsort(key, kind="stable")
    assert np.all(np.diff(s[order]) >= -1e-12)


@given(seeds, st.floats(0.0, 1.0))
def test_alphapruning_unclipped_is_the_reference_formula(seed, epsilon):
    rng = np.random.default_rng(seed)
    m = rng.uniform(1, 8, 20)
    p = rng.integers(1, 1000, 20).astype(float)
    assume(m.max() > m.min())
    r = alphapruning_ratios(m, epsilon)
    s, _ = solve_budget(np.zeros(20), r, p, 0.7)
    lo, hi = 1.0 - epsilon, 1.0 + epsilon
    ref = (m - m.min()) / (m.max() - m.min()) * (hi - lo) + lo
    ref = ref * (p.sum() * 0.7 / (p * ref).sum())
    np.testing.assert_allclose(s, ref, rtol=1e-13, atol=0)
