"""Every class of bad input a careful user tried, through the public functions.

Each case asserts the error type, that the message names the function and the parameter (one
format: "The 'x' parameter of f must be ... Got ... instead."), and, where a model or its weights
are involved, that nothing changed. The classes are those of the review that crashed 27 of 266
calls and gave 11 silently wrong results: devices, meta tensors, files, types (strict booleans,
numpy scalars), silent results, evaluation ids and positions.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import specmetrics
from specmetrics import ParameterError
from specmetrics.exceptions import SpecmetricsError
from tiny_models import VOCAB, build, one_torch_thread, token_windows  # noqa: F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _unchanged(model, before) -> bool:
    after = model.state_dict()
    return all(torch.equal(before[k], after[k]) for k in before)


def _raises(param: str, func: str, call, *args, **kwargs):
    with pytest.raises(ParameterError, match=rf"The '{param}' parameter of {func}") as info:
        call(*args, **kwargs)
    err = info.value
    assert isinstance(err, ValueError) and isinstance(err, SpecmetricsError)
    assert err.parameter == param
    return err


@pytest.fixture()
def llama():
    return build("llama")


def _heavy_tailed(n, m, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = min(n, m)
    u = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))[0]
    return ((u * ((1 - torch.rand(k, generator=g, dtype=torch.float64)) ** -0.5).sqrt()) @ v.T)


# ---------------------------------------------------------------------------------------------
# devices and meta tensors


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:0", "banana", "meta", 3])
def test_devices_that_do_not_exist_here(device, llama):
    before = _state(llama)
    _raises("device", "esd", specmetrics.esd, torch.randn(30, 20), device=device)
    _raises("device", "prune", specmetrics.prune, llama, 0.5, method="magnitude", device=device)
    _raises("device", "perplexity", specmetrics.perplexity, llama, None,
            token_windows(1, 40)[0], seqlen=16, device=device)
    _raises("device", "compare_allocations", specmetrics.compare_allocations, llama, None,
            methods=("magnitude",), allocations=("uniform",), eval_texts=token_windows(1, 64)[0],
            device=device)
    assert _unchanged(llama, before)


def test_meta_tensors_and_models():
    _raises("source", "esd", specmetrics.esd, torch.empty(30, 20, device="meta"))
    with torch.device("meta"):
        net = torch.nn.Sequential(torch.nn.Linear(20, 30))
    _raises("source", "esd", specmetrics.esd, net)
    with torch.device("meta"):
        meta_llama = build("llama")
    _raises("model", "prune", specmetrics.prune, meta_llama, 0.5, method="magnitude")
    _raises("source", "allocate", specmetrics.allocate, {"layers.0.q.weight":
                                                         torch.empty(8, 8, device="meta")}, 0.5)


# ---------------------------------------------------------------------------------------------
# files and sources


def test_corrupt_and_truncated_safetensors_name_the_file(tmp_path):
    from safetensors.torch import save_file

    good = tmp_path / "good.safetensors"
    save_file({"layers.0.q_proj.weight": torch.randn(16, 16)}, str(good))
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-40])
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    for path in (truncated, garbage):
        err = _raises("source", "esd", specmetrics.esd, path)
        assert str(path) in str(err)
        err = _raises("source", "allocate", specmetrics.allocate, path, 0.5)
        assert str(path) in str(err)


def test_missing_paths_and_unreachable_hub_ids(tmp_path, monkeypatch):
    err = _raises("source", "esd", specmetrics.esd, tmp_path / "nope.safetensors")
    assert "no such file" in str(err)
    _raises("source", "esd", specmetrics.esd, "./no/such/folder")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    err = _raises("source", "esd", specmetrics.esd, "banana")
    assert "not reachable" in str(err) and "folder" in str(err)
    _raises("source", "load_model", specmetrics.load_model, "some-org/some-model")


# ---------------------------------------------------------------------------------------------
# types: strict booleans, numpy scalars


@pytest.mark.parametrize("option", ["mp_fit", "clip_xmax", "randomize", "progress"])
@pytest.mark.parametrize("value", ["no", "False", 0, 1, None, 2.0])
def test_strict_booleans_in_esd(option, value):
    _raises(option, "esd", specmetrics.esd, torch.randn(30, 20), **{option: value})


@pytest.mark.parametrize("value", [True, False, "bogus", -1.0, 0.0, math.nan, math.inf, [1]])
def test_xmin_checked_up_front(value):
    _raises("xmin", "esd", specmetrics.esd, torch.randn(30, 20), xmin=value)
    _raises("xmin", "fit_power_law", specmetrics.fit_power_law, np.arange(1.0, 40.0),
            xmin=value)


def test_numpy_scalars_are_numbers(llama):
    x = np.random.default_rng(0).pareto(1.5, 200) + 1.0
    assert specmetrics.fit_power_law(x, xmin=np.float32(1.0)).alpha == pytest.approx(
        specmetrics.fit_power_law(x, xmin=1.0).alpha, rel=1e-6)
    scores = {f"layers.{b}.mlp.up_proj": np.float32(2.0 + b) for b in range(3)}
    a = specmetrics.allocate(scores, np.float32(0.5), n_params=dict.fromkeys(scores, np.int64(10)))
    assert a.achieved == pytest.approx(0.5, abs=1e-7)
    report = specmetrics.prune(llama, np.float64(0.5), method="magnitude", seed=np.int64(0))
    assert report.achieved == pytest.approx(0.5, abs=0.02)
    _raises("seed", "esd", specmetrics.esd, torch.randn(30, 20), seed=np.float64(1.0))


@pytest.mark.parametrize("bad", [True, 1.5, "10", -3, 0])
def test_n_params_values(bad):
    scores = {"layers.0.mlp.up_proj": 2.0, "layers.1.mlp.up_proj": 3.0}
    _raises("n_params", "allocate", specmetrics.allocate, scores, 0.5,
            n_params={"layers.0.mlp.up_proj": bad, "layers.1.mlp.up_proj": 10})


def test_score_mappings_of_tensors_and_strings():
    names = [f"layers.{b}.mlp.up_proj" for b in range(3)]
    counts = dict.fromkeys(names, 100)
    # 0-d tensors are scores (not a state dict)
    as_tensors = specmetrics.allocate({n: torch.tensor(2.0 + i) for i, n in enumerate(names)},
                                      0.5, n_params=counts)
    as_floats = specmetrics.allocate({n: 2.0 + i for i, n in enumerate(names)}, 0.5,
                                     n_params=counts)
    assert dict(as_tensors) == pytest.approx(dict(as_floats))
    # numeric strings are refused, and the message blames the scores, not `include`
    err = _raises("source", "allocate", specmetrics.allocate,
                  {n: str(2.0 + i) for i, n in enumerate(names)}, 0.5, n_params=counts)
    assert "include" not in str(err)


def test_bool_choices_are_strict(llama):
    before = _state(llama)
    for option in ("atomic", "measure_error", "progress"):
        _raises(option, "prune", specmetrics.prune, llama, 0.5, method="magnitude",
                **{option: "no"})
    assert _unchanged(llama, before)
    _raises("invert", "AlphaPruningConfig", specmetrics.AlphaPruningConfig, invert=1)


# ---------------------------------------------------------------------------------------------
# silent results, now loud


@pytest.mark.parametrize("n", [2, 3, 5, 7])
def test_fits_from_a_handful_of_eigenvalues_fail(n):
    x = np.geomspace(1.0, 100.0, n)
    for xmin in ("ks", "mid", "peak"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", specmetrics.DegenerateSpectrumWarning)
            fit = specmetrics.fit_power_law(x, xmin=xmin)
        assert not fit.success and math.isnan(fit.alpha) and fit.message, (xmin, fit)


def test_mid_fit_of_a_two_point_tail_fails_with_a_message():
    x = np.concatenate([np.linspace(1, 2, 3), [50.0, 60.0]])
    fit = specmetrics.fit_power_law(x, xmin="mid", warn=False)
    assert not fit.success and "MIN_TAIL" in fit.message


def test_apply_to_a_type_the_model_lacks(llama):
    gpt2 = build("gpt2")
    err = _raises("apply_to", "allocate", specmetrics.allocate, gpt2, 0.5, method="uniform",
                  apply_to="gate")
    assert "qkv" in str(err)
    err = _raises("apply_to", "allocate", specmetrics.allocate, gpt2, 0.5, method="uniform",
                  apply_to="q")  # GPT-2's q is fused into c_attn
    assert "fused" in str(err)
    _raises("score_from", "allocate", specmetrics.allocate, gpt2, 0.5, method="uniform",
            score_from="gate")
    alloc = specmetrics.allocate(gpt2, 0.5, method="uniform", apply_to="q,k,v")
    assert len(alloc) == 8


def test_nan_weights_are_found_before_anything_changes(llama):
    with torch.no_grad():
        llama.model.layers[1].mlp.down_proj.weight[0, 0] = math.nan
    before = _state(llama)
    err = _raises("model", "prune", specmetrics.prune, llama, 0.5, method="wanda",
                  calibration=token_windows(2, 16))
    assert "model.layers.1.mlp.down_proj" in str(err)
    for k, v in llama.state_dict().items():
        assert torch.equal(v, before[k]) or (torch.isnan(v).any() and torch.isnan(before[k]).any())


# ---------------------------------------------------------------------------------------------
# evaluation


def test_perplexity_ids_outside_the_vocabulary(llama):
    ids = token_windows(1, 64)[0].clone()
    ids[5] = VOCAB + 7
    _raises("text", "perplexity", specmetrics.perplexity, llama, None, ids, seqlen=16)
    ids[5] = -1
    _raises("text", "perplexity", specmetrics.perplexity, llama, None, ids, seqlen=16)


def test_perplexity_beyond_learned_positions():
    gpt2 = build("gpt2")  # 128 learned positions
    ids = torch.randint(0, VOCAB, (600,), generator=torch.Generator().manual_seed(0))
    err = _raises("seqlen", "perplexity", specmetrics.perplexity, gpt2, None, ids, seqlen=256)
    assert "128" in str(err)
    assert math.isfinite(specmetrics.perplexity(gpt2, None, ids, seqlen=128))


def test_calibration_ids_outside_the_vocabulary(llama):
    ids = token_windows(2, 16)
    ids[0, 3] = VOCAB
    before = _state(llama)
    _raises("calibration", "prune", specmetrics.prune, llama, 0.5, method="wanda",
            calibration=ids)
    assert _unchanged(llama, before)


# ---------------------------------------------------------------------------------------------
# pruning failures part-way: one error type, model state reported


def test_prune_failure_is_a_prune_error(monkeypatch, llama):
    import specmetrics.pruning.sparsegpt as sg

    def broken(*args, **kwargs):
        raise sg.CholeskyError("H is not positive definite")

    monkeypatch.setattr(sg, "sparsegpt_prune", broken)
    before = _state(llama)
    with pytest.raises(specmetrics.PruneError) as info:
        specmetrics.prune(llama, 0.5, method="sparsegpt", calibration=token_windows(2, 16),
                          atomic=True)
    assert info.value.restored and info.value.changed == [] and _unchanged(llama, before)
    assert isinstance(info.value, SpecmetricsError)


def test_unsupported_models_say_so():
    with pytest.raises(specmetrics.UnsupportedModelError, match="prune"):
        specmetrics.prune(torch.nn.Linear(8, 8), 0.5, method="magnitude")
    two_stacks = torch.nn.ModuleDict({
        "encoder": torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.Linear(8, 8)])}),
        "decoder": torch.nn.ModuleDict({"layers": torch.nn.ModuleList([torch.nn.Linear(8, 8)])}),
    })
    with pytest.raises(specmetrics.UnsupportedModelError, match="more than one stack"):
        specmetrics.prune(two_stacks, 0.5, method="magnitude")
