"""ATP (sparsity rising linearly with depth): the paper's progression, the budget and clipping,
the legal range, the calibration-loss grid search, and the boundaries."""
from __future__ import annotations

import copy
import math
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import specmetrics
from specmetrics import ParameterError
from specmetrics.allocation import (ALLOCATORS, Allocation, ATPConfig, allocate, atp_max_step,
                                    atp_ratios, atp_step_grid)

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build, token_windows  # noqa: E402

PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of [\w.]+ must be .+\. Got .+ instead\.$",
                           re.S)
TYPES = ("self_attn.q_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.down_proj")


def layout(n_blocks, sizes=None):
    """A scores mapping (ATP ignores the values) with each block's matrices and their counts."""
    scores, counts = {}, {}
    for b in range(n_blocks):
        for t in TYPES:
            name = f"model.layers.{b}.{t}"
            scores[name] = 1.0
            counts[name] = 100 if sizes is None else sizes[b]
    return scores, counts


def block_ratios(alloc, n_blocks):
    out = []
    for b in range(n_blocks):
        mine = {alloc[n] for n in alloc if n.startswith(f"model.layers.{b}.")}
        assert len(mine) == 1  # one ratio per block
        out.append(mine.pop())
    return np.array(out)


@pytest.fixture(scope="module")
def llama():
    return build("llama", num_hidden_layers=4)


# --- the progression ------------------------------------------------------------------------

@pytest.mark.parametrize("target, n_blocks, step", [(0.7, 32, 0.01), (0.5, 6, 0.04),
                                                    (0.6, 5, 0.0), (0.2, 9, 0.05)])
def test_matches_the_papers_progression(target, n_blocks, step):
    scores, counts = layout(n_blocks)
    alloc = allocate(scores, target, method=ATPConfig(step=step), n_params=counts, clip=None)
    # ATP's main.py: first term S - β (L - 1) / 2, then + β per layer
    first = target - step * (n_blocks - 1) / 2
    expected = [first + i * step for i in range(n_blocks)]
    np.testing.assert_allclose(block_ratios(alloc, n_blocks), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(atp_ratios(target, n_blocks, step), expected, rtol=0, atol=1e-12)
    assert alloc.achieved == pytest.approx(target, abs=1e-12)


def test_hand_computed():
    assert atp_ratios(0.5, 3, 0.1).tolist() == pytest.approx([0.4, 0.5, 0.6])
    scores, counts = layout(3)
    alloc = allocate(scores, 0.5, method=ATPConfig(step=0.1), n_params=counts)
    assert block_ratios(alloc, 3).tolist() == pytest.approx([0.4, 0.5, 0.6], abs=1e-12)


def test_step_zero_is_uniform():
    scores, counts = layout(5)
    alloc = allocate(scores, 0.65, method=ATPConfig(step=0.0), n_params=counts)
    assert block_ratios(alloc, 5) == pytest.approx([0.65] * 5, abs=1e-12)


@pytest.mark.parametrize("step", [0.003, 0.02, 0.08, 0.3])
@pytest.mark.parametrize("clip", [(0.0, 0.99), (0.4, 0.9)])
def test_weighted_target_monotone_and_clipped(step, clip):
    sizes = [120, 40, 300, 80, 80, 500, 60]
    scores, counts = layout(7, sizes)
    alloc = allocate(scores, 0.7, method=ATPConfig(step=step), n_params=counts, clip=clip)
    ratios = block_ratios(alloc, 7)
    weights = np.array(sizes) * len(TYPES)
    assert float(np.dot(ratios, weights) / weights.sum()) == pytest.approx(0.7, abs=1e-12)
    assert np.all(np.diff(ratios) >= -1e-15)  # never decreasing with depth
    assert ratios.min() >= clip[0] - 1e-15 and ratios.max() <= clip[1] + 1e-15
    free = (ratios > clip[0] + 1e-12) & (ratios < clip[1] - 1e-12)
    # the unclipped blocks keep the common difference
    idx = np.flatnonzero(free)
    if idx.size > 1:
        np.testing.assert_allclose(np.diff(ratios[idx]) / np.diff(idx), step, atol=1e-12)


def test_legal_range():
    # the largest legal step puts the first block at 0 (S < 0.5) or the last at 1 (S > 0.5)
    for target, n in ((0.3, 8), (0.7, 32), (0.5, 4)):
        top = atp_max_step(target, n)
        ratios = atp_ratios(target, n, top)
        assert ratios.min() >= -1e-12 and ratios.max() <= 1 + 1e-12
        assert min(ratios.min(), 1 - ratios.max()) == pytest.approx(0, abs=1e-12)
    assert atp_max_step(0.7, 32) == pytest.approx(0.6 / 31)
    assert atp_max_step(0.4, 1) == math.inf and atp_step_grid(0.4, 1) == (0.0,)
    grid = atp_step_grid(0.7, 30, n=4)
    assert grid == pytest.approx([0.6 / 29 * k / 4 for k in (1, 2, 3, 4)])


def test_on_a_model_every_block_gets_its_term(llama):
    alloc = allocate(llama, 0.5, method=ATPConfig(step=0.05))
    assert block_ratios(alloc, 4) == pytest.approx([0.425, 0.475, 0.525, 0.575], abs=1e-12)
    assert alloc.settings["metric"] is None and alloc.settings["method"]["step"] == 0.05
    split = allocate(llama, 0.5, method=ATPConfig(step=0.05), units="matrix")
    assert dict(split) == pytest.approx(dict(alloc), abs=1e-12)


# --- registration, JSON, bad inputs ---------------------------------------------------------

def test_registered_and_exported():
    assert ALLOCATORS["atp"] is ATPConfig and specmetrics.ATPConfig is ATPConfig
    assert ATPConfig.inputs is None and ATPConfig.needs_search
    from specmetrics.experiments.compare import ALLOCATIONS

    assert "atp" in ALLOCATIONS


def test_json_round_trip(llama):
    alloc = allocate(llama, 0.6, method=ATPConfig(step=0.03, steps=(0.01, 0.03)))
    back = Allocation.from_json(alloc.to_json())
    assert back == alloc and back.ratios == alloc.ratios and back.settings == alloc.settings
    assert list(back.settings["method"]["steps"]) == [0.01, 0.03]


@pytest.mark.parametrize("kwargs, name", [
    (dict(step=-0.01), "step"), (dict(step="0.1"), "step"), (dict(step=1.5), "step"),
    (dict(step=math.inf), "step"), (dict(steps=()), "steps"), (dict(steps=(0.1, 2)), "steps"),
    (dict(steps="0.1"), "steps"), (dict(search_method=3), "search_method"),
    (dict(search_nsamples=0), "search_nsamples"), (dict(search_nsamples=True), "search_nsamples"),
])
def test_bad_config(kwargs, name):
    with pytest.raises(ParameterError, match=f"'{name}' parameter of ATPConfig") as info:
        ATPConfig(**kwargs)
    assert PARAM_MESSAGE.match(str(info.value))


def test_bad_calls(llama):
    with pytest.raises(ParameterError, match="'method' parameter of allocate.*with a step"):
        allocate(llama, 0.5, method="atp")
    for call, name in ((lambda: atp_max_step(1.0, 4), "target"),
                       (lambda: atp_max_step(0.5, 0), "n_blocks"),
                       (lambda: atp_ratios(0.5, 4, -1), "step"),
                       (lambda: atp_step_grid(0.5, 4, n=0), "n")):
        with pytest.raises(ParameterError, match=f"'{name}' parameter"):
            call()


# --- the grid search ------------------------------------------------------------------------

def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_grid_search_picks_the_least_calibration_loss(llama):
    from specmetrics.experiments import ATPSearchResult, atp_search, mean_nll

    ids = token_windows(2, 16)
    before = _state(llama)
    found = atp_search(llama, None, ids, 0.6, steps=(0.0, 0.06, 0.12), method="wanda")
    assert isinstance(found, ATPSearchResult)
    assert all(torch.equal(v, before[k]) for k, v in llama.state_dict().items())  # unchanged
    steps = [s for s, _ in found.losses]
    losses = [loss for _, loss in found.losses]
    assert steps == [0.0, 0.06, 0.12] and found.step == steps[int(np.argmin(losses))]
    assert found.config == ATPConfig(step=found.step)
    assert found.allocation == allocate(llama, 0.6, method=ATPConfig(step=found.step))
    assert found.dense_loss == pytest.approx(mean_nll(llama, ids))
    # one candidate recomputed by hand: allocate, prune a copy, mean NLL on the same windows
    pruned = copy.deepcopy(llama)
    specmetrics.prune(pruned, allocate(llama, 0.6, method=ATPConfig(step=0.12)), method="wanda",
                      calibration=ids)
    assert losses[2] == pytest.approx(mean_nll(pruned, ids), rel=1e-12)
    frame = found.to_frame()
    assert list(frame.index) == steps and frame["chosen"].sum() == 1
    assert found.settings["method"] == "wanda" and found.settings["calibration"]["nsamples"] == 2


def test_grid_search_default_grid_and_config(llama):
    from specmetrics.experiments import atp_search

    ids = token_windows(3, 12, seed=1)
    config = ATPConfig(search_nsamples=2, search_method="magnitude")
    found = atp_search(llama, None, ids, 0.5, n_grid=2, config=config)
    top = atp_max_step(0.5, 4)
    assert [s for s, _ in found.losses] == pytest.approx([top / 2, top])
    assert found.settings["method"] == "magnitude"
    assert found.settings["calibration"]["nsamples"] == 2
    assert found.config.search_method == "magnitude" and found.config.step == found.step


def test_grid_search_bad_options(llama):
    from specmetrics.experiments import atp_search

    ids = token_windows(2, 8)
    for kwargs, name in ((dict(target=1.2), "target"), (dict(steps=(0.1, -1)), "steps"),
                         (dict(steps=()), "steps"), (dict(n_grid=0), "n_grid"),
                         (dict(method="nope"), "method"), (dict(method="2:4"), "method"),
                         (dict(allocate_options={"method": "owl"}), "allocate_options"),
                         (dict(allocate_options=[1]), "allocate_options"),
                         (dict(config="atp"), "config"), (dict(progress="no"), "progress")):
        args = dict(target=0.5, **kwargs) if "target" not in kwargs else kwargs
        with pytest.raises(ParameterError, match=f"'{name}' parameter of atp_search"):
            atp_search(llama, None, ids, **args)


def test_compare_allocations_takes_the_new_names():
    pytest.importorskip("pandas")
    from hf_tiny import corpus_tokenizer, tiny_llama
    from specmetrics.evaluation import load_paragraphs, load_text

    tokenizer = corpus_tokenizer()
    model = tiny_llama(len(tokenizer))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", specmetrics.DegenerateSpectrumWarning)
        result = specmetrics.compare_allocations(
            model, tokenizer, targets=(0.6,), methods=("magnitude",),
            allocations=("uniform", ATPConfig(steps=(0.05, 0.2), search_nsamples=2), "dlp"),
            calibration=[load_text("calibration")], eval_texts=load_paragraphs("evaluation"),
            nsamples=4, seqlen=32, max_windows=2)
    atp = result.allocations[(0.6, "atp")]
    assert atp.settings["method"]["step"] in (0.05, 0.2)
    assert block_ratios(atp, 2)[1] - block_ratios(atp, 2)[0] == pytest.approx(
        atp.settings["method"]["step"], abs=1e-12)
    assert result.allocations[(0.6, "dlp")].settings["method"]["name"] == "dlp"
    for name in ("uniform", "atp", "dlp"):
        assert result[0.6, name, "magnitude"].achieved == pytest.approx(0.6, abs=0.01)
    with pytest.raises(ParameterError, match="'calibration' parameter of compare_allocations"):
        specmetrics.compare_allocations(model, tokenizer, targets=(0.6,), methods=("magnitude",),
                                        allocations=("atp",),
                                        eval_texts=load_paragraphs("evaluation"), seqlen=32)
