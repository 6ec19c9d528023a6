"""``alphaprobe``: AlphaPruning's prior with its settings chosen by a block-sensitivity probe."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import specmetrics
from specmetrics import ParameterError
from specmetrics.allocation import AlphaProbeConfig, AlphaPruningConfig, allocate
from specmetrics.allocation.alphaprobe import predicted_increase
from tiny_models import build, one_torch_thread, token_windows  # noqa: F401

BLOCKS = [f"layers.{b}" for b in range(6)]
NAMES = [f"{blk}.{leaf}" for blk in BLOCKS for leaf in ("self_attn.q_proj", "mlp.up_proj")]
COUNTS = dict.fromkeys(NAMES, 100)


def _scores(values):
    return {n: values[int(n.split(".")[1])] for n in NAMES}


def test_interpolation_passes_through_the_probed_points():
    deltas = {0.5: 0.02, 0.7: 0.3}
    assert predicted_increase(deltas, 0.5) == pytest.approx(0.02)
    assert predicted_increase(deltas, 0.7) == pytest.approx(0.3)
    assert predicted_increase(deltas, 0.0) == pytest.approx(1e-6)
    values = [predicted_increase(deltas, r) for r in np.linspace(0, 0.95, 40)]
    assert all(a <= b for a, b in zip(values, values[1:]))  # monotone, extrapolated above 0.7
    assert predicted_increase(deltas, 0.8) > 0.3
    assert math.isnan(predicted_increase({}, 0.5))


def _sensitivity(fragile: int, scale: float = 20.0):
    """Every block costs the same but ``fragile``, which costs ``scale`` times more."""
    out = {}
    for b, blk in enumerate(BLOCKS):
        k = scale if b == fragile else 1.0
        out[blk] = {0.5: 0.01 * k, 0.7: 0.1 * k}
    return out


def test_the_choice_is_the_candidate_of_least_predicted_loss():
    scores = _scores([2.0, 3.0, 5.0, 4.0, 3.5, 6.0])
    config = AlphaProbeConfig(sensitivity=_sensitivity(fragile=0), trends=(0.0,))
    alloc = allocate(scores, 0.7, method=config, n_params=COUNTS)
    chosen = alloc.settings["method"]["chosen"]
    assert chosen["predicted"] <= chosen["predicted_uniform"]
    # brute force over the same grid with plain AlphaPruning allocations
    best = None
    for eps in config.epsilons:
        for norm in config.normalizations:
            for invert in config.directions:
                a = allocate(scores, 0.7, n_params=COUNTS,
                             method=AlphaPruningConfig(epsilon=eps, normalize=norm, invert=invert))
                loss = math.fsum(predicted_increase(config.sensitivity[blk],
                                                    a[f"{blk}.mlp.up_proj"]) for blk in BLOCKS)
                if best is None or loss < best[0] - 1e-15:
                    best = (loss, a)
    assert chosen["predicted"] == pytest.approx(best[0], rel=1e-12)
    assert dict(alloc) == pytest.approx(dict(best[1]), abs=1e-12)
    # the fragile block 0 (lowest alpha) is protected: below the target
    assert alloc["layers.0.mlp.up_proj"] < 0.7 and alloc.achieved == pytest.approx(0.7, abs=1e-9)


def test_direction_follows_the_probe_not_the_prior():
    """Block 5 (highest alpha: AlphaPruning prunes it most) is the fragile one: the probe
    reverses the direction (or flattens the band) rather than prune it hardest."""
    scores = _scores([2.0, 3.0, 3.5, 4.0, 4.5, 6.0])
    alloc = allocate(scores, 0.7, n_params=COUNTS,
                     method=AlphaProbeConfig(sensitivity=_sensitivity(fragile=5), trends=(0.0,)))
    plain = allocate(scores, 0.7, n_params=COUNTS, method=AlphaPruningConfig(epsilon=0.2))
    assert plain["layers.5.mlp.up_proj"] > 0.7
    assert alloc["layers.5.mlp.up_proj"] <= 0.7 + 1e-12
    chosen = alloc.settings["method"]["chosen"]
    assert chosen["invert"] is True or chosen["epsilon"] == 0.0


def test_a_depth_trend_when_depth_is_what_matters():
    scores = _scores([3.0] * 6)  # no spectral signal at all
    sens = {blk: {0.5: 0.05 * (6 - b), 0.7: 0.5 * (6 - b)} for b, blk in enumerate(BLOCKS)}
    alloc = allocate(scores, 0.7, n_params=COUNTS, method=AlphaProbeConfig(sensitivity=sens))
    ratios = [alloc[f"{blk}.mlp.up_proj"] for blk in BLOCKS]
    assert ratios == sorted(ratios) and ratios[0] < ratios[-1]  # early blocks kept denser
    assert alloc.settings["method"]["chosen"]["trend"] > 0


@pytest.mark.parametrize("kwargs, name", [
    (dict(epsilons=()), "epsilons"), (dict(epsilons=(1.5,)), "epsilons"),
    (dict(normalizations=("zscore",)), "normalizations"), (dict(directions=(0,)), "directions"),
    (dict(trends=(2.0,)), "trends"), (dict(probe_ratios=(1.0,)), "probe_ratios"),
    (dict(probe_nsamples=0), "probe_nsamples"), (dict(sensitivity=[1, 2]), "sensitivity"),
])
def test_config_checks(kwargs, name):
    with pytest.raises(ParameterError, match=f"The '{name}' parameter of AlphaProbeConfig"):
        AlphaProbeConfig(**kwargs)


def test_allocate_needs_the_probe_and_block_units():
    scores = _scores([2.0, 3.0, 5.0, 4.0, 3.5, 6.0])
    with pytest.raises(ParameterError, match="sensitivity"):
        allocate(scores, 0.7, n_params=COUNTS, method="alphaprobe")
    with pytest.raises(ParameterError, match="block units only"):
        allocate(scores, 0.7, n_params=COUNTS, units="matrix",
                 method=AlphaProbeConfig(sensitivity=_sensitivity(0)))


@pytest.mark.usefixtures("one_torch_thread")
def test_probe_and_grid_end_to_end_on_a_tiny_llama():
    from specmetrics.experiments import block_sensitivity

    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = token_windows(4, 32)
    sens = block_sensitivity(model, None, ids, (0.5, 0.8), nsamples=2, seqlen=32)
    assert list(sens) == ["model.layers.0", "model.layers.1"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the delta is the loss of the model with that block alone pruned, minus the dense loss
    import copy

    from specmetrics.allocation import calibration_input_norms
    from specmetrics.experiments import mean_nll
    from specmetrics.models import find_blocks, set_weight_out_in, weight_out_in
    from specmetrics.pruning import wanda_mask

    probe_ids = ids[:2]
    norms = calibration_input_norms(model, None, probe_ids)
    pruned = copy.deepcopy(model)
    for name, pm in find_blocks(pruned).modules_of(1).items():
        w = weight_out_in(pm.module)
        set_weight_out_in(pm.module, w.masked_fill(wanda_mask(w, norms[name], 0.8), 0))
    expected = mean_nll(pruned, probe_ids) - mean_nll(model, probe_ids)
    assert sens["model.layers.1"][0.8] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert specmetrics.experiments.probe.BlockSensitivity.from_json(sens.to_json()) == sens
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", specmetrics.DegenerateMetricWarning)
        result = specmetrics.compare_allocations(
            model, None, targets=(0.6,), methods=("wanda",),
            allocations=("uniform", "alphaprobe"), calibration=ids,
            eval_texts=token_windows(1, 128, seed=3)[0], seqlen=32)
    alloc = result.allocations[(0.6, "alphaprobe")]
    assert "chosen" in alloc.settings["method"] and alloc.achieved == pytest.approx(0.6)
    assert math.isfinite(result[0.6, "alphaprobe", "wanda"].evaluation.perplexity)
