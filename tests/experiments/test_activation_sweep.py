"""The perplexity-vs-activation-sparsity sweep and the ``specmetrics activations`` command."""
from __future__ import annotations

import math

import pytest
import torch

from tiny_models import VOCAB, build, one_torch_thread  # noqa: F401
from specmetrics import ParameterError
from specmetrics.experiments.activation_sweep import (SweepResult, activation_sparsity_sweep,
                                                skippable_weights)
from specmetrics.activations import find_sites
from specmetrics.evaluation.perplexity import perplexity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def stream(n: int, seed: int) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def sweep():
    model = build("llama")
    calib, held_out = stream(2000, 1), stream(200, 2)
    result = activation_sparsity_sweep(model, None, calib, held_out, targets=(0.3, 0.6),
                                       seqlen=32, nsamples=4, greedy_nsamples=2,
                                       greedy_step=0.25, max_windows=4)
    return model, held_out, result


def test_sweep_rows_and_frame(sweep):
    model, held_out, result = sweep
    assert isinstance(result, SweepResult)
    assert [(r.style, r.target) for r in result.rows] == [
        (s, t) for s in ("teal", "teal_greedy", "cats") for t in (0.3, 0.6)]
    # the dense perplexity is the library's perplexity of the untouched model
    assert result.dense_perplexity == perplexity(model, None, held_out, seqlen=32, max_windows=4)
    frame = result.to_frame()
    assert frame.index.names == ["style", "target"]
    assert list(frame.columns) == ["perplexity", "realised_mean", "realised_min", "realised_max",
                                   "weights_skipped", "n_sites"]
    assert frame.loc[("dense", 0.0), "perplexity"] == result.dense_perplexity
    assert frame.loc[("cats", 0.6), "n_sites"] == 2
    assert frame.loc[("teal", 0.6), "n_sites"] == 8
    assert result.settings["n_windows"] == 4 and result.settings["fit"] == "sequential"
    for r in result.rows:
        assert math.isfinite(r.perplexity) and r.perplexity != result.dense_perplexity
        assert r.thresholds.style == ("cats" if r.style == "cats" else "teal")
    per_site = result.realised_frame()
    assert per_site.shape == (10, 6)


def test_sweep_realised_sparsity_and_skipped_weights(sweep):
    model, _, result = sweep
    for r in result.rows:
        # random weights and held-out random tokens: the fitted fraction carries over loosely
        for site, value in r.realised.items():
            assert abs(value - r.thresholds.targets[site]) < 0.06, (r.style, site, value)
        if r.style != "teal_greedy":
            assert set(r.thresholds.targets.values()) == {r.target}
    # TEAL skips about the target's share of the weights; CATS only its MLP share (up + down)
    sites = find_sites(model)
    params, total = skippable_weights(model, sites)
    cats_share = params["model.layers.0.silu_gate"] * 2 / total
    for r in result.rows:
        expected = r.target * (cats_share if r.style == "cats" else 1.0)
        assert r.weights_skipped == pytest.approx(expected, abs=0.06)
    # greedy: the block budget is the target (parameter-weighted over the block's sites)
    greedy = result.row("teal_greedy", 0.6)
    for block in ("model.layers.0", "model.layers.1"):
        names = [n for n in greedy.thresholds.targets if n.startswith(block + ".")]
        w = {n: params[n] for n in names}
        budget = sum(w[n] * greedy.thresholds.targets[n] for n in names) / sum(w.values())
        assert 0.6 - 0.25 * min(w.values()) / sum(w.values()) < budget <= 0.6 + 1e-9


def test_sweep_plot(sweep):
    pytest.importorskip("matplotlib")
    import matplotlib

    matplotlib.use("Agg")
    ax = sweep[2].plot()
    assert len(ax.get_lines()) == 4  # three styles and the dense line
    sweep[2].plot(x="weights_skipped")


def test_dense_fit_and_parameter_errors():
    model = build("llama")
    calib, held_out = stream(2000, 1), stream(200, 2)
    result = activation_sparsity_sweep(model, None, calib, held_out, targets=(0.5,),
                                       styles=("cats",), fit="dense", seqlen=32, nsamples=4,
                                       max_windows=2)
    assert result.settings["fit"] == "dense" and len(result.rows) == 1
    with pytest.raises(ParameterError, match="'styles'"):
        activation_sparsity_sweep(model, None, calib, held_out, styles=("wanda",), seqlen=32)
    with pytest.raises(ParameterError, match="'targets'"):
        activation_sparsity_sweep(model, None, calib, held_out, targets=(1.0,), seqlen=32)
    with pytest.raises(ParameterError, match="'fit'"):
        activation_sparsity_sweep(model, None, calib, held_out, fit="x", seqlen=32)
    with pytest.raises(ParameterError, match="'greedy_nsamples'"):
        activation_sparsity_sweep(model, None, calib, held_out, seqlen=32, nsamples=2,
                                  greedy_nsamples=4)


# ----------------------------------------------------------------------------------------------
# the command line, on tiny-llama-wt

@pytest.mark.shared
def test_cli_activations_writes_table_thresholds_and_plots(tiny_llama_dir, shared_dir, tmp_path,
                                                           capsys):
    pytest.importorskip("matplotlib")
    from specmetrics.activations import ActivationThresholds
    from specmetrics.cli import main

    data = shared_dir / "data" / "wikitext-2-tokenized"
    calib, held_out = tmp_path / "valid.txt", tmp_path / "test.txt"  # prefixes keep it quick
    calib.write_text((data / "valid.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    held_out.write_text((data / "test.txt").read_text(encoding="utf-8")[:30_000],
                        encoding="utf-8")
    out = tmp_path / "out"
    code = main(["activations", str(tiny_llama_dir), "--target", "0.5", "--style", "cats",
                 "--calibration", str(calib), "--eval-text", str(held_out), "--out", str(out),
                 "--nsamples", "4", "--seqlen", "128", "--max-windows", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert {p.name for p in out.iterdir()} == {"table.csv", "thresholds.json", "perplexity.csv",
                                               "thresholds_silu_gate.png"}
    import pandas as pd

    table = pd.read_csv(out / "table.csv", index_col=0)
    assert list(table.index) == list(range(6))
    assert {"realised_sparsity", "abs_threshold", "pos_threshold", "neg_threshold"} <= set(table)
    assert table["realised_sparsity"].between(0.4, 0.6).all()
    thr = ActivationThresholds.from_json(out / "thresholds.json")
    assert thr.style == "cats" and len(thr) == 6 and set(thr.targets.values()) == {0.5}
    assert "abs_threshold" in printed and "dense" in printed and "cats at 0.5" in printed
    # a missing file is a usage error: one line, exit status 2, nothing written
    capsys.readouterr()
    assert main(["activations", str(tiny_llama_dir), "--calibration", str(tmp_path / "nope"),
                 "--eval-text", str(held_out), "--out", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "no such file" in err
    # a bad value: rejected before the model is loaded, nothing written
    assert main(["activations", str(tiny_llama_dir), "--target", "1.0", "--calibration",
                 str(calib), "--eval-text", str(held_out), "--out", str(tmp_path / "none")]) == 2
    assert "'target'" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
