"""The four results: JSON round trips, frames, read-only entries, plots."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from specmetrics import ParameterError
from specmetrics.circuits import (MPDistance, MPDistanceReport, OutputVariance, QKOVSpectra,
                                  TokenCongruence, mp_distance, mp_distances, output_variance,
                                  qk_ov_spectra, token_congruence)
from specmetrics.plotting.circuits import (plot_congruence, plot_mp_distance,
                                           plot_output_variance, plot_qk_ov, save_circuit_plot)
from tiny_models import build, one_torch_thread, token_windows  # noqa: F401

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class FakeTokenizer:
    def convert_ids_to_tokens(self, ids):
        return [f"tok{i}" for i in ids]


@pytest.fixture(scope="module")
def results():
    model = build("llama", seed=0)
    tok = FakeTokenizer()
    return {
        QKOVSpectra: qk_ov_spectra(model, tokenizer=tok, directions=2, top_k=3),
        TokenCongruence: token_congruence(model, tok, ov_tokens=16, top_units=2),
        OutputVariance: output_variance(model, None, token_windows(2, 16), prune=0.5),
        MPDistanceReport: mp_distances(model, null_draws=2),
    }


@pytest.mark.parametrize("cls", [QKOVSpectra, TokenCongruence, OutputVariance,
                                 MPDistanceReport])
def test_json_round_trip(cls, results, tmp_path):
    res = results[cls]
    text = res.to_json()
    back = cls.from_json(text)
    assert back == res and list(back) == list(res)
    assert dict(back.settings) == dict(res.settings) or back.settings == res.settings
    pd.testing.assert_frame_equal(back.to_frame(), res.to_frame())
    path = tmp_path / "r.json"
    res.to_json(path)
    assert cls.from_json(path) == res
    # a round trip of a round trip is the same text
    assert back.to_json() == text


def test_round_trip_keeps_nan_and_arrays(results):
    res = results[QKOVSpectra]
    back = QKOVSpectra.from_json(res.to_json())
    name = next(iter(res))
    np.testing.assert_array_equal(back[name].qk.singular_values, res[name].qk.singular_values)
    assert back[name].qk.directions == res[name].qk.directions
    assert back.embedding == res.embedding
    pd.testing.assert_frame_equal(back.summary(), res.summary())
    pd.testing.assert_frame_equal(back.directions_frame(), res.directions_frame())
    cong = results[TokenCongruence]
    back_c = TokenCongruence.from_json(cong.to_json())
    pd.testing.assert_frame_equal(back_c.units_frame(), cong.units_frame())
    single = mp_distance(torch.randn(30, 20), null_draws=0)
    assert math.isnan(single.null_mean)
    assert MPDistance.from_dict(single.as_dict()) == single


def test_wrong_json_is_a_parameter_error(results):
    text = results[OutputVariance].to_json()
    with pytest.raises(ParameterError, match="'source' parameter of QKOVSpectra.from_json"):
        QKOVSpectra.from_json(text)
    with pytest.raises(ParameterError, match="'source' parameter of OutputVariance.from_json"):
        OutputVariance.from_json("{not json")


def test_results_are_read_only(results):
    for res in results.values():
        with pytest.raises(AttributeError):
            res.settings = {}
        with pytest.raises(TypeError):
            res["x"] = 1
    entry = next(iter(results[TokenCongruence].values()))
    with pytest.raises(ValueError):
        entry.ratios[0] = 0
    with pytest.raises(Exception):
        entry.kind = "x"
    block = next(iter(results[OutputVariance].values()))
    with pytest.raises(TypeError):
        block.pruned["q+o"] = 0.0


def test_frames(results):
    qk = results[QKOVSpectra].to_frame()
    assert qk.index.name == "name" and len(qk) == 8
    for col in ("qk_rank", "ov_rank", "qk_entropy", "ov_effective_rank", "qk_alpha",
                "qk_query_tokens", "ov_output_tokens"):
        assert col in qk.columns
    assert (qk["qk_rank_fraction"] == 1.0).all()
    mp = results[MPDistanceReport].to_frame()
    assert list(mp.columns[:4]) == ["block", "module_type", "distance", "rand_distance"]


@pytest.mark.parametrize("cls, func, kwargs", [
    (QKOVSpectra, plot_qk_ov, {"metric": "entropy"}),
    (TokenCongruence, plot_congruence, {"metric": "z_mean"}),
    (OutputVariance, plot_output_variance, {"log": False}),
    (MPDistanceReport, plot_mp_distance, {}),
])
def test_plots(cls, func, kwargs, results, tmp_path):
    import matplotlib

    matplotlib.use("Agg", force=True)
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    res = results[cls]
    ax = res.plot()
    assert isinstance(ax, Axes) and ax.lines
    fig = Figure()
    given = fig.add_subplot()
    assert func(res, ax=given, **kwargs) is given
    path = save_circuit_plot(res, tmp_path / f"{cls.__name__}.png")
    assert path.is_file() and path.stat().st_size > 1000
    import matplotlib.pyplot as plt

    plt.close("all")


def test_plot_bad_metric(results):
    with pytest.raises(ParameterError, match="'metric' parameter of plot_qk_ov"):
        results[QKOVSpectra].plot(metric="banana")
    with pytest.raises(ParameterError, match="'metric' parameter of plot_mp_distance"):
        results[MPDistanceReport].plot(metric="banana")
    with pytest.raises(ParameterError, match="'log' parameter of plot_output_variance"):
        results[OutputVariance].plot(log="yes")
