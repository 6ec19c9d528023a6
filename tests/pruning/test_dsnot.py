"""DSnoT (prune-and-grow on a base mask) and its input statistic (InputMomentStats).

The oracle below re-states the paper's rules for one row at a time with plain Python sets
(grow the pruned weight of largest / smallest ``W c / Var^p`` by the sign of the expected error;
prune the kept weight of opposite sign and smallest Wanda score; stop at ``|e| <= threshold``,
after ``max_cycles`` swaps or when no candidate is left; N:M: prune the lowest-Wanda kept weight
of the grown weight's group; with ``same_sign``, stop before a sign flip), none of the module's
sorted lists and pointers.
"""
from __future__ import annotations

import copy
import math
import re

import pytest
import torch
from torch import nn

import specmetrics
from tiny_models import build, one_torch_thread, token_windows  # noqa: F401
from specmetrics import ParameterError
from specmetrics.calibration import HessianStats, SquaredNormStats
from specmetrics.calibration.moments import InputMomentStats
from specmetrics.models import find_blocks
from specmetrics.pruning import (METHODS, DSnoTConfig, DSnoTStats, MagnitudeConfig,
                                 SparseGPTConfig, WandaConfig, dsnot_mask, prune, resolve_method,
                                 wanda_mask)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of [\w.]+ must be .+\. Got .+ instead\.$")


# --- the oracle ----------------------------------------------------------------------------------

def oracle(w, mask, c, var, s, *, max_cycles=50, threshold=0.1, var_power=1.0, nm=None,
           same_sign=None):
    same_sign = nm is not None if same_sign is None else same_sign
    w, c, var, s = (t.double() for t in (w, c, var, s))
    m = w * c
    wanda = w.abs() * s.sqrt()
    key = m / var.clamp_min(torch.finfo(torch.float64).tiny) ** var_power if var_power else m
    out = mask.clone()
    rows, cols = w.shape
    for r in range(rows):
        grow = {j for j in range(cols) if mask[r, j]}
        kept = {j for j in range(cols) if not mask[r, j]}
        e = sum(float(m[r, j]) for j in grow)
        sign0 = math.copysign(1.0, e) if e else 0.0

        def sign(v):
            return math.copysign(1.0, v) if v else 0.0

        for _ in range(max_cycles):
            if abs(e) <= threshold or not grow:
                break
            # ties: the pointer from the top takes the later index, the one from the bottom the earlier
            g = (max(grow, key=lambda j: (float(key[r, j]), j)) if e > 0
                 else min(grow, key=lambda j: (float(key[r, j]), j)))
            grow.discard(g)
            if nm is None:  # the kept weights whose pruning shrinks the error
                cands = [j for j in kept if sign(float(m[r, j])) == -sign(e)]
                if not cands:
                    break
            else:  # the kept weights of the grown weight's group
                start = g - g % nm[1]
                cands = [j for j in range(start, start + nm[1]) if j in kept]
                if not cands:
                    continue
            p = min(cands, key=lambda j: (float(wanda[r, j]), j))
            if same_sign and sign(e + float(m[r, p]) - float(m[r, g])) != sign0:
                break
            kept.discard(p)
            out[r, g], out[r, p] = False, True
            e += float(m[r, p]) - float(m[r, g])
    return out


def expected_error(w, mask, c):
    return ((w.double() * c.double()) * mask).sum(dim=1)


def random_layer(rows=24, cols=40, seed=0, mean=0.5):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    x = torch.randn(6, 20, cols, generator=g) * torch.rand(cols, generator=g) * 2 + \
        mean * torch.randn(cols, generator=g)
    stats = InputMomentStats()
    for seq in x:
        stats.update(seq[None])
    return w, x, stats


# --- the statistic -------------------------------------------------------------------------------

def test_moments_are_the_stated_formulas():
    g = torch.Generator().manual_seed(1)
    batches = [torch.randn(1, 12, 8, generator=g) * 3 + 1, torch.randn(2, 5, 8, generator=g),
               torch.randn(7, 8, generator=g) - 2]  # (tokens, in): one sample
    stats, wanda = InputMomentStats(), SquaredNormStats()
    for b in batches:
        stats.update(b)
        wanda.update(b)
    tokens = torch.cat([b.reshape(-1, 8) for b in batches]).double()
    assert stats.nsamples == 1 + 2 + 1 and stats.ntokens == 12 + 10 + 7
    torch.testing.assert_close(stats.value, wanda.value, rtol=0, atol=0)  # Wanda's, exactly
    torch.testing.assert_close(stats.sums.double(), tokens.sum(0) / 4, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.mean.double(), tokens.mean(0), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(stats.mean_square.double(), (tokens ** 2).mean(0), rtol=1e-6,
                               atol=1e-6)
    torch.testing.assert_close(stats.variance.double(), tokens.var(0, unbiased=False),
                               rtol=1e-5, atol=1e-6)
    within = sum(b.reshape(-1, 8).double().var(0, unbiased=False) * b.reshape(-1, 8).shape[0]
                 for b in batches) / 29
    torch.testing.assert_close(stats.within_variance.double(), within, rtol=1e-5, atol=1e-6)
    assert all(t.dtype == torch.float32 for t in (stats.sums, stats.mean, stats.variance))


def test_within_variance_is_the_references_running_combination():
    """``var ← (var·n + var_b·n_b) / (n + n_b)`` over the batches, as lib/layerwrapper.py."""
    g = torch.Generator().manual_seed(2)
    stats = InputMomentStats(5)
    var, n = None, 0
    for length in (9, 4, 13):
        x = torch.randn(1, length, 5, generator=g) * torch.arange(1.0, 6.0)
        stats.update(x)
        vb = torch.var(x[0], dim=0, unbiased=False)
        var = vb if n == 0 else (var * n + vb * length) / (n + length)
        n += length
    torch.testing.assert_close(stats.within_variance, var, rtol=1e-5, atol=1e-7)


def test_pooled_moments_do_not_depend_on_batching():
    x = torch.randn(6, 7, 4, generator=torch.Generator().manual_seed(3)) + 5
    one, split = InputMomentStats(), InputMomentStats()
    one.update(x)
    for part in (x[:1], x[1:4], x[4:]):
        split.update(part)
    for attr in ("value", "sums", "mean", "mean_square", "variance"):
        torch.testing.assert_close(getattr(split, attr), getattr(one, attr), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(split.within_variance, one.within_variance)  # batches differ


def test_moments_reject_bad_inputs():
    stats = InputMomentStats()
    for attr in ("value", "sums", "mean", "mean_square", "variance", "within_variance"):
        with pytest.raises(RuntimeError, match="no calibration data"):
            getattr(stats, attr)
    with pytest.raises(ParameterError, match="'x' parameter of InputMomentStats.update"):
        stats.update(torch.randn(8))
    stats.update(torch.randn(1, 3, 8))
    with pytest.raises(ParameterError, match="in_features = 8"):
        stats.update(torch.randn(1, 3, 9))
    stats.update(torch.empty(0, 3, 8))  # nothing to add
    assert stats.nsamples == 1 and stats.ntokens == 3
    with pytest.raises(ParameterError, match="'in_features' parameter of InputMomentStats"):
        InputMomentStats(0)


def test_dsnot_stats_serve_the_base_statistic():
    x = torch.randn(2, 6, 8, generator=torch.Generator().manual_seed(4))
    wanda = DSnoTStats(8, base_statistic=SquaredNormStats)
    assert wanda.base is wanda.moments  # one accumulation serves Wanda and DSnoT
    hessian = DSnoTStats(8, base_statistic=HessianStats)
    reference = HessianStats(8)
    none = DSnoTStats(8, base_statistic=None)
    for stat in (wanda, hessian, none, reference):
        stat.update(x)
    assert isinstance(hessian.base, HessianStats) and none.base is None
    torch.testing.assert_close(hessian.base.value, reference.value, rtol=0, atol=0)
    assert wanda.nsamples == 2 and torch.equal(wanda.value, wanda.moments.value)


# --- the algorithm on hand-computed cases --------------------------------------------------------

def test_one_swap_by_hand():
    # c = 1, Var = 1, s = 1: m = W. e = 3 + 0.5 = 3.5 > 0: grow the largest pruned m (3, col 2),
    # prune the kept weight with m < 0 of least Wanda score (-2, col 1): e = 3.5 - 2 - 3 = -1.5.
    w = torch.tensor([[1.0, -2.0, 3.0, 0.5]])
    start = torch.tensor([[False, False, True, True]])
    ones = torch.ones(4)
    one = dsnot_mask(w, start, ones, ones, ones, max_cycles=1)
    assert one.int().tolist() == [[0, 1, 0, 1]]
    assert expected_error(w, one, ones).item() == pytest.approx(-1.5)
    # second cycle: e < 0 grows the smallest pruned m (0.5, col 3)... and prunes the kept m > 0
    # of least Wanda score (col 0, m = 1): e = -1.5 + 1 - 0.5 = -1.0
    two = dsnot_mask(w, start, ones, ones, ones, max_cycles=2)
    assert two.int().tolist() == [[1, 1, 0, 0]]
    assert expected_error(w, two, ones).item() == pytest.approx(-1.0)
    # then both candidate lists are empty: more cycles change nothing
    assert torch.equal(dsnot_mask(w, start, ones, ones, ones, max_cycles=50), two)


def test_variance_steers_the_growing_choice():
    # pruned: col 2 (m = 2, Var = 4 -> 0.5) and col 3 (m = 1, Var = 0.25 -> 4); e = 3 > 0
    w = torch.tensor([[-1.0, 0.1, 2.0, 1.0]])
    start = torch.tensor([[False, False, True, True]])
    c = torch.ones(4)
    var = torch.tensor([1.0, 1.0, 4.0, 0.25])
    with_var = dsnot_mask(w, start, c, var, c, max_cycles=1, var_power=1.0)
    without = dsnot_mask(w, start, c, var, c, max_cycles=1, var_power=0.0)
    assert with_var[0].tolist() == [True, False, True, False]  # grew col 3 (low variance)
    assert without[0].tolist() == [True, False, False, True]  # grew col 2 (largest m)


def test_threshold_and_cycles_stop_the_swaps():
    w, _, stats = random_layer()
    start = wanda_mask(w, stats.value, 0.6)
    args = (w, start, stats.sums, stats.within_variance, stats.value)
    assert torch.equal(dsnot_mask(*args, max_cycles=0), start)
    assert torch.equal(dsnot_mask(*args, threshold=1e9), start)
    for cycles in (1, 3):
        out = dsnot_mask(*args, max_cycles=cycles)
        changed = (out != start).sum(dim=1)
        assert int(changed.max()) <= 2 * cycles and int(changed.max()) > 0
        assert torch.equal(out.sum(dim=1), start.sum(dim=1))
    final = dsnot_mask(*args, threshold=0.5)
    e = expected_error(w, final, stats.sums)
    swaps = (final != start).sum(dim=1) // 2
    # every row got within the threshold, used all 50 cycles or has no helpful kept weight left
    m = w * stats.sums
    helpful = (~start & ~final & (torch.sign(m) == -torch.sign(e)[:, None])).sum(dim=1)
    assert bool(((e.abs() <= 0.5) | (swaps == 50) | (helpful == 0)).all())
    assert bool((swaps < 50).any() and (e.abs() > 0.5).any())  # both stops happen here


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("var_power, sparsity", [(1.0, 0.5), (0.0, 0.7), (2.0, 0.3)])
def test_unstructured_matches_the_oracle(seed, var_power, sparsity):
    w, _, stats = random_layer(seed=seed)
    w = w.double()  # the oracle computes in float64, and so does dsnot_mask for float64 weights
    start = wanda_mask(w, stats.value, sparsity)
    args = (w, start, stats.sums, stats.within_variance, stats.value)
    got = dsnot_mask(*args, var_power=var_power, threshold=0.05, max_cycles=30)
    want = oracle(*args, var_power=var_power, threshold=0.05, max_cycles=30)
    assert torch.equal(got, want)


@pytest.mark.parametrize("seed", range(4))
def test_nm_matches_the_oracle_and_keeps_the_pattern(seed):
    w, _, stats = random_layer(seed=seed)
    w = w.double()
    start = wanda_mask(w, stats.value, 0.5, pattern="2:4")
    args = (w, start, stats.sums, stats.variance, stats.value)
    got = dsnot_mask(*args, pattern="2:4", threshold=0.05)
    assert torch.equal(got, oracle(*args, threshold=0.05, nm=(2, 4)))
    assert bool((got.reshape(w.shape[0], -1, 4).sum(-1) == 2).all())
    assert not torch.equal(got, start)
    # the N:M rule never lets a row's expected error change sign
    e0, e1 = expected_error(w, start, stats.sums), expected_error(w, got, stats.sums)
    assert bool((torch.sign(e0) == torch.sign(e1)).all())


@pytest.mark.parametrize("seed", range(3))
def test_same_sign_matches_the_oracle_and_never_flips_the_error(seed):
    w, _, stats = random_layer(seed=seed)
    w = w.double()
    start = wanda_mask(w, stats.value, 0.7)
    args = (w, start, stats.sums, stats.within_variance, stats.value)
    got = dsnot_mask(*args, same_sign=True, threshold=0.05)
    assert torch.equal(got, oracle(*args, same_sign=True, threshold=0.05))
    e0, e1 = expected_error(w, start, stats.sums), expected_error(w, got, stats.sums)
    assert bool((torch.sign(e0) == torch.sign(e1)).all())
    assert bool((e1.abs() <= e0.abs()).all())
    free = dsnot_mask(*args, same_sign=False, threshold=0.05)  # the unstructured default
    assert torch.equal(free, dsnot_mask(*args, threshold=0.05))
    assert bool((torch.sign(expected_error(w, free, stats.sums)) != torch.sign(e0)).any())
    nm_start = wanda_mask(w, stats.value, 0.5, pattern="2:4")
    nm_args = (w, nm_start, stats.sums, stats.variance, stats.value)
    assert torch.equal(dsnot_mask(*nm_args, pattern="2:4", same_sign=False),
                       oracle(*nm_args, nm=(2, 4), same_sign=False))


def test_magnitude_start_with_uneven_rows():
    """A whole-matrix threshold gives rows different counts; each row keeps its own."""
    w, _, stats = random_layer(seed=5)
    w = w.double()
    start = specmetrics.pruning.magnitude_mask(w, 0.5)
    assert len(set(start.sum(1).tolist())) > 1
    args = (w, start, stats.sums, stats.within_variance, stats.value)
    got = dsnot_mask(*args, threshold=0.05)
    assert torch.equal(got, oracle(*args, threshold=0.05))
    assert torch.equal(got.sum(1), start.sum(1))


def test_swaps_cut_the_expected_error_on_the_calibration_inputs():
    """The objective, measured on the data: the mean over sequences of the token sums of
    (W - Ŵ) x, per output row, is DSnoT's e_r; it falls well below Wanda's. (Rows wide enough
    that 50 swaps do not exhaust the kept weights of the helpful sign, as in an LLM: on a narrow
    row the reference's unchecked pointers walk on into weights that add to the error.)"""
    w, x, stats = random_layer(rows=32, cols=512, seed=6, mean=1.0)
    start = wanda_mask(w, stats.value, 0.6)
    final = dsnot_mask(w, start, stats.sums, stats.within_variance, stats.value)

    def measured(mask):
        delta = w * mask  # dense minus sparse
        return (x @ delta.T).sum(dim=1).mean(dim=0).double()  # (rows,)

    torch.testing.assert_close(measured(start), expected_error(w, start, stats.sums),
                               rtol=1e-4, atol=1e-3)
    before, after = measured(start).abs(), measured(final).abs()
    assert float(after.mean()) < 0.25 * float(before.mean())
    assert float(after.max()) < float(before.max())


# --- boundary checks of dsnot_mask ---------------------------------------------------------------

def _good():
    w = torch.randn(4, 8, generator=torch.Generator().manual_seed(7))
    return dict(weight=w, mask=w.abs() < 0.5, sums=torch.ones(8), variance=torch.ones(8),
                sq_norms=torch.ones(8))


@pytest.mark.parametrize("change, name", [
    (dict(weight=torch.ones(8)), "weight"), (dict(weight=torch.ones(4, 8, dtype=torch.int32)),
                                             "weight"),
    (dict(weight=torch.full((4, 8), math.nan)), "weight"),
    (dict(mask=torch.zeros(4, 8)), "mask"), (dict(mask=torch.zeros(4, 7, dtype=torch.bool)), "mask"),
    (dict(sums=torch.ones(7)), "sums"), (dict(sums=[1.0] * 8), "sums"),
    (dict(sums=torch.full((8,), math.inf)), "sums"), (dict(variance=-torch.ones(8)), "variance"),
    (dict(sq_norms=-torch.ones(8)), "sq_norms"), (dict(sq_norms=torch.ones(8, dtype=torch.int64)),
                                                  "sq_norms"),
])
def test_dsnot_mask_rejects_bad_data(change, name):
    args = {**_good(), **change}
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        dsnot_mask(args["weight"], args["mask"], args["sums"], args["variance"], args["sq_norms"])
    assert info.value.parameter == name


@pytest.mark.parametrize("kwargs, name", [
    (dict(pattern="3:2"), "pattern"), (dict(pattern="2:3"), "pattern"),  # 3 does not divide 8
    (dict(max_cycles=-1), "max_cycles"), (dict(max_cycles=2.0), "max_cycles"),
    (dict(max_cycles=True), "max_cycles"), (dict(threshold=-0.1), "threshold"),
    (dict(threshold=math.inf), "threshold"), (dict(threshold="0.1"), "threshold"),
    (dict(var_power=-1), "var_power"), (dict(var_power=math.nan), "var_power"),
    (dict(same_sign="yes"), "same_sign"), (dict(same_sign=1), "same_sign"),
])
def test_dsnot_mask_rejects_bad_options(kwargs, name):
    args = _good()
    mask = args["mask"].clone()
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        dsnot_mask(*args.values(), **kwargs)
    assert info.value.parameter == name
    assert torch.equal(args["mask"], mask)


# --- the config ----------------------------------------------------------------------------------

def test_config_defaults_and_registry():
    cfg = DSnoTConfig()
    assert cfg.base == WandaConfig() and cfg.pattern == "unstructured" and cfg.nm is None
    assert (cfg.max_cycles, cfg.threshold, cfg.var_power, cfg.variance, cfg.same_sign) == \
        (50, 0.1, 1.0, "within", None)
    assert cfg.needs_calibration
    assert METHODS["dsnot"] is DSnoTConfig
    assert resolve_method("dsnot") == cfg
    nm = resolve_method("dsnot", pattern="2:4")
    assert nm.base == WandaConfig(pattern="2:4") and nm.nm == (2, 4)
    assert DSnoTConfig(base=MagnitudeConfig("4:8")).pattern == "4:8"
    assert isinstance(cfg.statistic(8), DSnoTStats)
    assert DSnoTConfig(base=SparseGPTConfig()).statistic(8).base.__class__ is HessianStats
    assert hash(cfg) == hash(DSnoTConfig(base=WandaConfig()))


@pytest.mark.parametrize("kwargs, name", [
    (dict(base="wanda"), "base"), (dict(base=WandaConfig), "base"),
    (dict(base=DSnoTConfig()), "base"), (dict(pattern="2:4", base=WandaConfig()), "pattern"),
    (dict(pattern="unstructured"), None), (dict(pattern="1:1"), "pattern"),
    (dict(max_cycles=-1), "max_cycles"), (dict(max_cycles=1.5), "max_cycles"),
    (dict(threshold=-1.0), "threshold"), (dict(threshold=None), "threshold"),
    (dict(var_power=math.inf), "var_power"), (dict(variance="sample"), "variance"),
    (dict(same_sign="no"), "same_sign"), (dict(same_sign=0), "same_sign"),
    (dict(same_sign=True), None),
])
def test_config_validates_its_fields(kwargs, name):
    if name is None:
        DSnoTConfig(**kwargs)
        return
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        DSnoTConfig(**kwargs)
    assert info.value.parameter == name and info.value.function == "DSnoTConfig"


def test_prune_matrix_needs_its_statistic():
    with pytest.raises(ParameterError, match="'stat' parameter of DSnoTConfig.prune_matrix"):
        DSnoTConfig().prune_matrix(torch.randn(4, 8), SquaredNormStats(8), 0.5)


# --- end to end ----------------------------------------------------------------------------------

def _zero_rows(model):
    return {n: (pm.module.weight == 0).sum(dim=1) for n, pm in find_blocks(model).modules.items()}


def test_prune_dsnot_lands_on_wandas_counts_and_changes_the_masks():
    ids = token_windows(4, 32)
    dense = build("llama")
    wanda, dsnot, frozen = copy.deepcopy(dense), copy.deepcopy(dense), copy.deepcopy(dense)
    prune(wanda, 0.7, method="wanda", calibration=ids)
    report = prune(dsnot, 0.7, method="dsnot", calibration=ids)
    prune(frozen, 0.7, method=DSnoTConfig(max_cycles=0), calibration=ids)
    assert report.method == DSnoTConfig()
    assert report.achieved == pytest.approx(0.7, abs=1e-9 + 1 / min(
        r.n_params for r in report.values()))
    rows_w, rows_d = _zero_rows(wanda), _zero_rows(dsnot)
    layout = find_blocks(dsnot)
    changed = 0
    for name, res in report.items():
        assert torch.equal(rows_w[name], rows_d[name])  # the same zeros in every row
        assert res.achieved * res.n_params == round(res.n_params * 0.7)
        w_d = layout.modules[name].module.weight
        w_w = find_blocks(wanda).modules[name].module.weight
        dense_w = find_blocks(dense).modules[name].module.weight
        kept = w_d != 0
        assert torch.equal(w_d[kept], dense_w[kept])  # dense values where kept
        changed += int(((w_d == 0) != (w_w == 0)).any())
    assert changed > 0
    for name, pm in find_blocks(frozen).modules.items():  # no cycles: Wanda's masks
        assert torch.equal(pm.module.weight, find_blocks(wanda).modules[name].module.weight)


@pytest.mark.parametrize("base", [MagnitudeConfig(), SparseGPTConfig()])
def test_prune_dsnot_on_other_bases(base):
    ids = token_windows(4, 32)
    model = build("llama")
    dense = copy.deepcopy(model)
    report = prune(model, 0.6, method=DSnoTConfig(base=base), calibration=ids)
    for name, res in report.items():
        assert res.achieved * res.n_params == round(res.n_params * 0.6)
        w = find_blocks(model).modules[name].module.weight
        kept = w != 0
        assert torch.equal(w[kept], find_blocks(dense).modules[name].module.weight[kept])


def test_prune_dsnot_two_four():
    ids = token_windows(4, 32)
    model = build("llama")
    report = prune(model, None, method=DSnoTConfig(pattern="2:4"), calibration=ids)
    assert report.achieved == 0.5
    for pm in find_blocks(model).modules.values():
        w = pm.module.weight
        assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all())


def test_prune_dsnot_without_calibration_is_refused():
    model = build("llama")
    with pytest.raises(ParameterError, match="'calibration' parameter of prune"):
        prune(model, 0.5, method="dsnot")
