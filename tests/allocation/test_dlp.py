"""DLP (median Wanda score → layer sparsity): the paper's formula on constructed scores, the
median recovered from a model, a planted unimportant block, the budget, and the boundaries."""
from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import specmetrics
from specmetrics import ParameterError
from specmetrics.allocation import (ALLOCATORS, Allocation, DLPConfig, allocate,
                                    calibration_input_norms, dlp_importance, dlp_offsets,
                                    dlp_unimportance)
from specmetrics.allocation.owl import capture_input_sq_norms

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build, token_windows  # noqa: E402

PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of [\w.]+ must be .+\. Got .+ instead\.$",
                           re.S)
TYPES = ("self_attn.q_proj", "self_attn.o_proj", "mlp.up_proj", "mlp.down_proj")


def reference_dlp(unimportance, target, alpha):
    """DLP's ``get_dlp_ratios`` as the paper states it: relative importance ``1 - U / ΣU``,
    min-max scaled to ``[0, 2α]``, centred on the density ``1 - S``; sparsity = 1 - density."""
    u = np.asarray(unimportance, dtype=np.float64)
    imp = 1 - u / u.sum()
    scaled = (imp - imp.min()) * (1 / (imp.max() - imp.min()) * alpha * 2)
    density = scaled - scaled.mean() + (1 - target)
    return 1 - density


def scores_mapping(unimportance, sizes=None):
    """Each block's score given to its matrices, and their parameter counts."""
    scores, counts = {}, {}
    for b, value in enumerate(unimportance):
        for t in TYPES:
            name = f"model.layers.{b}.{t}"
            scores[name] = value
            counts[name] = 100 if sizes is None else sizes[b]
    return scores, counts


@pytest.fixture(scope="module")
def llama():
    return build("llama", num_hidden_layers=4)


@pytest.fixture(scope="module")
def ids():
    return token_windows(4, 24)


@pytest.fixture(scope="module")
def norms(llama, ids):
    return calibration_input_norms(llama, None, ids)


# --- the formula on constructed scores ------------------------------------------------------

@pytest.mark.parametrize("target, alpha", [(0.7, 0.15), (0.5, 0.05), (0.6, 0.2)])
def test_matches_the_papers_formula_on_equal_blocks(target, alpha):
    unimportance = [0.031, 0.027, 0.044, 0.019, 0.036, 0.052]
    scores, counts = scores_mapping(unimportance)
    alloc = allocate(scores, target, method=DLPConfig(alpha=alpha), n_params=counts, clip=None)
    expected = reference_dlp(unimportance, target, alpha)
    got = [alloc[f"model.layers.{b}.mlp.up_proj"] for b in range(len(unimportance))]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert alloc.achieved == pytest.approx(target, abs=1e-12)
    # the largest median score (least important) is pruned most, by 2α more than the smallest
    assert np.argmax(got) == np.argmax(unimportance) and np.argmin(got) == np.argmin(unimportance)
    assert max(got) - min(got) == pytest.approx(2 * alpha, abs=1e-12)


def test_hand_computed_three_blocks():
    # U = (1, 2, 3): I = (5/6, 4/6, 3/6) -> u = (1, 0.5, 0) -> s = S - 2α (u - 0.5)
    scores, counts = scores_mapping([1.0, 2.0, 3.0])
    alloc = allocate(scores, 0.5, method=DLPConfig(alpha=0.1), n_params=counts)
    got = [alloc[f"model.layers.{b}.self_attn.q_proj"] for b in range(3)]
    assert got == pytest.approx([0.4, 0.5, 0.6], abs=1e-12)
    np.testing.assert_allclose(dlp_importance([1, 2, 3]), [5 / 6, 4 / 6, 3 / 6])
    np.testing.assert_allclose(dlp_offsets([1, 2, 3], 0.1), [-0.2, -0.1, 0.0])


def test_parameter_weighted_target_and_clipping():
    unimportance = [0.5, 0.1, 0.2, 0.9]
    sizes = [100, 400, 250, 50]
    scores, counts = scores_mapping(unimportance, sizes)
    for clip in ((0.0, 0.99), (0.55, 0.8)):
        alloc = allocate(scores, 0.7, method=DLPConfig(alpha=0.5), n_params=counts, clip=clip)
        ratios = np.array([alloc[n] for n in scores])
        weights = np.array([counts[n] for n in scores])
        assert float(np.dot(ratios, weights) / weights.sum()) == pytest.approx(0.7, abs=1e-12)
        assert ratios.min() >= clip[0] - 1e-15 and ratios.max() <= clip[1] + 1e-15
    # with the narrow clip the band (2α = 1) is cut at the upper bound; the order of the
    # unimportance is kept
    block = [alloc[f"model.layers.{b}.mlp.down_proj"] for b in range(4)]
    assert block[0] == block[3] == pytest.approx(0.8) and min(block) == block[1] > 0.55
    assert np.all(np.diff(np.array(block)[np.argsort(unimportance)]) >= -1e-12)


def test_alpha_zero_is_uniform_and_equal_scores_are_uniform():
    scores, counts = scores_mapping([0.3, 0.1, 0.7])
    zero = allocate(scores, 0.6, method=DLPConfig(alpha=0.0), n_params=counts)
    assert list(zero.values()) == pytest.approx([0.6] * len(zero), abs=1e-12)
    scores, counts = scores_mapping([0.2, 0.2, 0.2])
    flat = allocate(scores, 0.6, method=DLPConfig(), n_params=counts)
    assert max(flat.values()) - min(flat.values()) < 1e-12


# --- the unimportance from a model ----------------------------------------------------------

def _pooled(model, names, norms):
    out = []
    for n in names:
        w = model.get_submodule(n).weight.detach().double().numpy()
        s = norms[n].double().numpy()
        out.append((np.abs(w) * np.sqrt(s)[None, :]).ravel())
    return np.concatenate(out)


def test_unimportance_is_the_median_of_the_pooled_wanda_scores(llama, norms):
    units = {f"model.layers.{b}": [n for n in norms if n.startswith(f"model.layers.{b}.")]
             for b in range(4)}
    median = dlp_unimportance(llama, units, norms)
    mean = dlp_unimportance(llama, units, norms, statistic="mean")
    for unit, names in units.items():
        pooled = np.sort(_pooled(llama, names, norms))
        # torch.median, as the reference: the lower middle value of an even count
        assert median[unit] == pytest.approx(pooled[(pooled.size - 1) // 2], rel=1e-6)
        assert mean[unit] == pytest.approx(pooled.mean(), rel=1e-5)


def test_model_source_equals_the_formula_on_its_unimportance(llama, ids, norms):
    alloc = allocate(llama, 0.7, method=DLPConfig(calibration=norms), clip=None)
    blocks = [f"model.layers.{b}" for b in range(4)]
    frame = alloc.to_frame()
    unimportance = [frame.loc[b, "score"] for b in blocks]
    expected = reference_dlp(unimportance, 0.7, 0.15)
    for b, s in zip(blocks, expected):
        mine = [alloc[n] for n in alloc if n.startswith(b + ".")]
        assert mine == pytest.approx([s] * len(mine), abs=1e-12)
    assert alloc.settings["metric"] == "unimportance"
    # the token ids run through the model give the same ratios (sums instead of means over the
    # sequences: one common factor, which the unimportance does not depend on)
    from_ids = allocate(llama, 0.7, method=DLPConfig(calibration=ids), clip=None)
    for n in alloc:
        assert from_ids[n] == pytest.approx(alloc[n], abs=1e-6)


def test_planted_unimportant_block_gets_the_most_sparsity(llama, norms):
    base = allocate(llama, 0.6, method=DLPConfig(calibration=norms))
    for planted in (0, 2):
        # block `planted`'s Wanda scores scaled by 10 (its input norms by 100)
        scaled = {n: (v * 100 if n.startswith(f"model.layers.{planted}.") else v)
                  for n, v in norms.items()}
        alloc = allocate(llama, 0.6, method=DLPConfig(calibration=scaled))
        block = {b: alloc[f"model.layers.{b}.mlp.up_proj"] for b in range(4)}
        assert max(block, key=block.get) == planted
        others = [b for b in range(4) if b != planted]
        # it sits at the top of the band and the others keep their order
        assert block[planted] - min(block.values()) == pytest.approx(0.3, abs=1e-9)
        order = np.argsort([base.to_frame().loc[f"model.layers.{b}", "score"] for b in others])
        assert np.all(np.diff(np.array([block[others[i]] for i in order])) >= -1e-12)
        assert alloc.achieved == pytest.approx(0.6, abs=1e-12)


def test_invariant_to_a_common_scale_of_the_activations(llama, norms):
    a = allocate(llama, 0.5, method=DLPConfig(calibration=norms))
    # a power of 4 keeps float32 exact: the same ratios to rounding of the budget solve
    b = allocate(llama, 0.5, method=DLPConfig(calibration={n: v * 64.0 for n, v in norms.items()}))
    for n in a:
        assert b[n] == pytest.approx(a[n], abs=1e-12)
    # any other factor: the same up to float32 rounding of the scores
    c = allocate(llama, 0.5, method=DLPConfig(calibration={n: v * 37.0 for n, v in norms.items()}))
    for n in a:
        assert c[n] == pytest.approx(a[n], abs=1e-5)


def test_split_units_and_per_group_budget(llama, norms):
    alloc = allocate(llama, 0.5, method=DLPConfig(calibration=norms), units="split",
                     budget="per_group")
    frame = alloc.to_frame(level="matrix")
    for group in ("attention", "mlp"):
        part = frame[frame["group"] == group]
        mean = float((part["ratio"] * part["n_params"]).sum() / part["n_params"].sum())
        assert mean == pytest.approx(0.5, abs=1e-12)
        assert part["ratio"].max() - part["ratio"].min() == pytest.approx(0.3, abs=1e-9)


# --- registration, JSON, bad inputs ---------------------------------------------------------

def test_registered_and_exported():
    assert ALLOCATORS["dlp"] is DLPConfig and specmetrics.DLPConfig is DLPConfig
    assert DLPConfig.inputs == "activations" and DLPConfig.relative == "base"
    scores, counts = scores_mapping([0.1, 0.2])
    assert allocate(scores, 0.5, method="dlp", n_params=counts).settings["method"]["name"] \
        == "dlp"
    from specmetrics.experiments.compare import ALLOCATIONS

    assert "dlp" in ALLOCATIONS


def test_json_round_trip(llama, norms):
    alloc = allocate(llama, 0.7, method=DLPConfig(alpha=0.1, calibration=norms), units="split")
    back = Allocation.from_json(alloc.to_json())
    assert back == alloc and back.ratios == alloc.ratios and back.settings == alloc.settings
    assert back.settings["method"] == {"name": "dlp", "alpha": 0.1, "statistic": "median",
                                       "batch_size": 1, "normalize": "minmax"}


@pytest.mark.parametrize("kwargs, name", [
    (dict(alpha=0.6), "alpha"), (dict(alpha="0.1"), "alpha"), (dict(alpha=math.nan), "alpha"),
    (dict(statistic="max"), "statistic"), (dict(batch_size=0), "batch_size"),
    (dict(batch_size=True), "batch_size"), (dict(normalize="z"), "normalize"),
])
def test_bad_config(kwargs, name):
    with pytest.raises(ParameterError, match=f"'{name}' parameter of DLPConfig") as info:
        DLPConfig(**kwargs)
    assert PARAM_MESSAGE.match(str(info.value))


def test_bad_sources(llama):
    with pytest.raises(ParameterError, match="'method' parameter of allocate.*calibration"):
        allocate(llama, 0.5, method="dlp")
    state = {k: v for k, v in llama.state_dict().items()}
    with pytest.raises(ParameterError, match="'source' parameter of allocate.*nn.Module"):
        allocate(state, 0.5, method=DLPConfig(calibration=token_windows(2, 8)))
    with pytest.raises(ParameterError, match="'statistic' parameter of dlp_unimportance"):
        dlp_unimportance(llama, {}, {}, statistic="sum")
    with pytest.raises(ValueError, match="nonnegative with a positive sum"):
        dlp_importance([0.0, 0.0])
    scores, counts = scores_mapping([0.1, -0.2, 0.3])
    with pytest.raises(ValueError, match="nonnegative"):
        allocate(scores, 0.5, method=DLPConfig(), n_params=counts)


def test_missing_statistics_are_reported(llama, norms):
    partial = dict(list(norms.items())[:-1])
    with pytest.raises(ValueError, match="no calibration statistics"):
        allocate(llama, 0.5, method=DLPConfig(calibration=partial))


def test_capture_matches_the_layer_sequential_statistic(llama, ids, norms):
    # the two activation sources DLP accepts differ by the number of sequences only
    captured = capture_input_sq_norms(llama, list(norms), ids)
    for n in norms:
        torch.testing.assert_close(captured[n] / ids.shape[0], norms[n], rtol=1e-4, atol=1e-6)
