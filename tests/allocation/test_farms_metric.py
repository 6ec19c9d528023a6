"""FARMS alpha as AlphaPruning's metric: equal to ``alpha_peak`` where FARMS is the whole matrix,
equal to :func:`farms_alpha` of each weight elsewhere, computed only when asked for, and the
boundaries."""
from __future__ import annotations

import re
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

import specmetrics
from specmetrics import ParameterError
from specmetrics.allocation import (FARMS_METRICS, AlphaPruningConfig, Allocation, FarmsMetric,
                                    allocate)
from specmetrics.spectrum import esd, farms_alpha

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tiny_models import build  # noqa: E402

PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of [\w.]+ must be .+\. Got .+ instead\.$",
                           re.S)


def _orthogonal(n, g):
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _plant(model, seed=0):
    """Every prunable matrix ``U diag(σ) V^T`` with a heavy-tailed ``σ`` bounded away from 0
    (all eigenvalues well above 1e-5), the tail exponent varying with the block."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, torch.nn.Linear) and ".layers." in name:
                out, inp = module.weight.shape
                k = min(out, inp)
                block = int(name.split(".layers.")[1].split(".")[0])
                sigma = 0.5 + torch.rand(k, generator=g, dtype=torch.float64) ** -(0.6 + 0.3 * block)
                w = _orthogonal(out, g)[:, :k] @ torch.diag(sigma) @ _orthogonal(inp, g)[:k, :]
                module.weight.copy_(w.float())
    return model


@pytest.fixture(scope="module")
def square():
    """A 3-block LLaMA whose prunable matrices are all 64 x 64 (MHA, intermediate 64)."""
    return _plant(build("llama", num_hidden_layers=3, intermediate_size=64,
                        num_key_value_heads=4))


@pytest.fixture(scope="module")
def llama():
    """A 3-block LLaMA with 128 x 64 MLP and 32 x 64 KV projections."""
    return _plant(build("llama", num_hidden_layers=3), seed=1)


def test_square_matrices_give_alpha_peak(square):
    farms = allocate(square, 0.7, metric="alpha_peak_farms")
    plain = allocate(square, 0.7, metric="alpha_peak")
    assert set(farms) == set(plain) and len(farms) == 21
    fm, pm = farms.to_frame(level="matrix"), plain.to_frame(level="matrix")
    np.testing.assert_allclose(fm["metric"], pm["metric"], rtol=1e-10)
    assert np.isfinite(fm["metric"]).all()
    for name in farms:
        assert farms[name] == pytest.approx(plain[name], abs=1e-10)
    assert farms.settings["metric"] == "alpha_peak_farms"
    assert farms.settings["metric_options"]["windows_per_dim"] == 15
    assert "metric_options" not in plain.settings


def test_thresh_matches_esd_on_any_square_matrix():
    # tiny Gaussian weights have eigenvalues below esd's 1e-5 threshold; FarmsMetric(thresh=1e-5)
    # drops them as esd does, and equals alpha_peak again
    model = build("llama", num_hidden_layers=2, intermediate_size=64, num_key_value_heads=4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", specmetrics.DegenerateSpectrumWarning)
        warnings.simplefilter("ignore", specmetrics.DegenerateMetricWarning)
        report = esd(model)
        farms = allocate(model, 0.5, metric=FarmsMetric(thresh=1e-5))
    frame = farms.to_frame(level="matrix")
    for name in farms:
        expected = report[name].metrics["alpha_peak"]
        got = frame.loc[name, "metric"]
        assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected, rel=1e-10)


def test_rectangular_matrices_get_their_farms_alpha(llama):
    options = FarmsMetric(window=32, windows_per_dim=4)
    alloc = allocate(llama, 0.6, metric=options, units="matrix", clip=None)
    frame = alloc.to_frame(level="matrix")
    plain = esd(llama)
    differ = 0
    for name in alloc:
        weight = llama.get_submodule(name).weight
        fit = farms_alpha(weight, window=32, windows_per_dim=4)
        assert frame.loc[name, "metric"] == pytest.approx(fit.alpha, rel=1e-12)
        differ += not np.isclose(fit.alpha, plain[name].metrics["alpha_peak"])
    assert differ > 0  # windows of 32 x 32, not the whole ESD
    # AlphaPruning's mapping on those alphas, matrix by matrix
    ref = allocate({n: frame.loc[n, "metric"] for n in alloc}, 0.6, units="matrix", clip=None,
                   n_params={n: int(frame.loc[n, "n_params"]) for n in alloc})
    for name in alloc:
        assert alloc[name] == pytest.approx(ref[name], abs=1e-12)
    assert alloc.settings["metric_options"]["window"] == 32


def test_computed_only_when_asked(llama, monkeypatch):
    import specmetrics.allocation.farms_metric as fm
    import specmetrics.spectrum.api as spectrum_api

    def refuse(*args, **kwargs):
        raise AssertionError("FARMS computed without being asked for")

    monkeypatch.setattr(fm, "farms_alpha", refuse)
    allocate(llama, 0.5, metric="alpha_peak")
    allocate(llama, 0.5, method="uniform", metric="alpha_peak_farms")  # uniform: no metric
    monkeypatch.undo()
    monkeypatch.setattr(spectrum_api, "esd", refuse)
    allocate(llama, 0.5, metric=FarmsMetric(window=16, windows_per_dim=2))  # no esd either


def test_json_round_trip(square):
    alloc = allocate(square, 0.7, metric="alpha_peak_farms", method=AlphaPruningConfig(0.3))
    back = Allocation.from_json(alloc.to_json())
    assert back == alloc and back.ratios == alloc.ratios and back.settings == alloc.settings


def test_sources_without_weights(square):
    report = esd(square)
    with pytest.raises(ParameterError, match="'metric' parameter of allocate.*from the weights"):
        allocate(report, 0.5, metric="alpha_peak_farms")
    scores = {n: 2.0 + i for i, n in enumerate(list(report)[:4])}
    counts = dict.fromkeys(scores, 10)
    # a scores mapping: the name is a label only
    assert allocate(scores, 0.5, n_params=counts, metric="alpha_peak_farms").settings[
        "metric"] == "alpha_peak_farms"
    with pytest.raises(ParameterError, match="'metric' parameter of allocate"):
        allocate(scores, 0.5, n_params=counts, metric=FarmsMetric())
    with pytest.raises(ParameterError, match="'metric' parameter of allocate"):
        allocate(square, 0.5, metric=3)


@pytest.mark.parametrize("kwargs, name", [
    (dict(window=0), "window"), (dict(window=2.5), "window"), (dict(aspect_ratio=0), "aspect_ratio"),
    (dict(windows_per_dim="15"), "windows_per_dim"), (dict(xmin="bad"), "xmin"),
    (dict(thresh=-1.0), "thresh"), (dict(dtype="float16"), "dtype"), (dict(device=3.5), "device"),
])
def test_bad_options(kwargs, name):
    with pytest.raises(ParameterError, match=f"'{name}' parameter of FarmsMetric") as info:
        FarmsMetric(**kwargs)
    assert PARAM_MESSAGE.match(str(info.value))


def test_names_and_exports():
    assert FARMS_METRICS["alpha_peak_farms"] == FarmsMetric()
    assert FarmsMetric().label == "alpha_peak_farms" and FarmsMetric(xmin="ks").label == "alpha_farms"
    import specmetrics.spectrum as spectrum

    for name in ("farms_alpha", "farms_eigenvalues", "farms_windows", "FARMS_WINDOW",
                 "FARMS_ASPECT_RATIO", "FARMS_WINDOWS_PER_DIM"):
        assert name in spectrum.__all__ and hasattr(spectrum, name)


def test_compare_allocations_with_the_farms_metric():
    pytest.importorskip("pandas")
    from hf_tiny import corpus_tokenizer, tiny_llama
    from specmetrics.evaluation import load_paragraphs, load_text

    tokenizer = corpus_tokenizer()
    model = _plant(tiny_llama(len(tokenizer)), seed=2)
    options = {"metric": FarmsMetric(window=32, windows_per_dim=3)}
    result = specmetrics.compare_allocations(
        model, tokenizer, targets=(0.5, 0.7), methods=("magnitude",),
        allocations=("uniform", "alphapruning"), allocate_options=options,
        calibration=[load_text("calibration")], eval_texts=load_paragraphs("evaluation"),
        nsamples=2, seqlen=32, max_windows=2)
    for target in (0.5, 0.7):
        got = result.allocations[(target, "alphapruning")]
        direct = allocate(model, target, **options)
        assert dict(got) == pytest.approx(dict(direct), abs=1e-12)  # the cached alphas reused
        assert got.settings["metric"] == "alpha_peak_farms"
        assert got.settings["metric_options"] == direct.settings["metric_options"]
