"""The seed-003 ablation grid: the notes' shape, and resumable (finished cells not recomputed)."""
from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("pandas")

import specmetrics  # noqa: E402
from specmetrics import ParameterError  # noqa: E402
from specmetrics.experiments import AblationResult, ablation  # noqa: E402
from tiny_models import build, one_torch_thread, token_windows  # noqa: E402,F401

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CALIB = token_windows(4, 32, seed=1)
HELD_OUT = token_windows(1, 200, seed=2)[0]
GRID = ["uniform", "ww", "QKVout + split"]


def _run(model, out=None, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", specmetrics.DegenerateSpectrumWarning)
        warnings.simplefilter("ignore", specmetrics.DegenerateMetricWarning)
        return ablation(model, None, target=0.6, variants=GRID, methods=("magnitude", "wanda"),
                        calibration=CALIB, eval_texts=HELD_OUT, seqlen=32, out=out, **kwargs)


def test_grid_has_the_notes_shape_and_leaves_the_model_alone(tmp_path):
    model = build("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = _run(model, out=tmp_path / "run")
    assert isinstance(result, AblationResult) and len(result) == 6
    table = result.to_frame()
    assert list(table.index) == ["magnitude", "wanda"] and list(table.columns) == GRID
    assert table.notna().all().all() and (table > 1).all().all()
    long = result.to_frame(long=True)
    assert long["achieved"].between(0.59, 0.61).all()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    again = AblationResult.from_json(result.to_json())
    assert again.to_frame().equals(table) and again.dense_perplexity == result.dense_perplexity
    # the split variant gives attention and MLP each the target
    cell = result["QKVout + split", "wanda"]
    assert cell.options["units"] == "split" and cell.options["budget"] == "per_group"


def test_an_interrupted_grid_resumes_without_recomputing(tmp_path, monkeypatch):
    model = build("llama")
    out = tmp_path / "run"
    import specmetrics.experiments.ablations as module

    real = module.prune
    calls = []

    class Interrupted(Exception):
        pass

    def counting(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise Interrupted
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "prune", counting)
    with pytest.raises(Interrupted):
        _run(model, out=out)
    lines = (out / "cells.jsonl").read_text().splitlines()
    assert len(lines) == 3
    # a line cut by the interruption is ignored (and recomputed)
    with open(out / "cells.jsonl", "a") as fh:
        fh.write('{"variant": "QKVout + sp')
    calls.clear()
    monkeypatch.setattr(module, "prune", counting)
    result = _run(model, out=out)
    assert len(calls) == 3 and len(result) == 6  # only the three missing cells were pruned
    monkeypatch.setattr(module, "prune", real)
    fresh = _run(build("llama"))
    for key in fresh:
        assert result[key].perplexity == pytest.approx(fresh[key].perplexity, rel=1e-9)
    # another grid in the same folder is refused rather than mixed in
    with pytest.raises(ParameterError, match="The 'out' parameter of ablation"):
        ablation(model, None, target=0.5, variants=GRID, methods=("wanda",), calibration=CALIB,
                 eval_texts=HELD_OUT, seqlen=32, out=out)
    json.loads((out / "settings.json").read_text())


@pytest.mark.parametrize("kwargs, name", [
    (dict(variants=["no such label"]), "variants"),
    (dict(variants="everything"), "variants"),
    (dict(methods=()), "methods"),
    (dict(methods=("obs",)), "methods"),
    (dict(target=1.0), "target"),
    (dict(epsilon="0.2"), "epsilon"),
])
def test_bad_options(kwargs, name):
    options = dict(target=0.6, variants=GRID, methods=("wanda",), calibration=CALIB,
                   eval_texts=HELD_OUT, seqlen=32)
    options.update(kwargs)
    with pytest.raises(ParameterError, match=f"The '{name}' parameter of ablation"):
        ablation(build("llama"), None, **options)


def test_encoders_are_refused():
    with pytest.raises(ParameterError, match="The 'model' parameter of ablation"):
        ablation(build("bert"), None, variants=GRID, calibration=CALIB, eval_texts=HELD_OUT,
                 seqlen=32)


def test_cli_ablate_prints_the_table(tmp_path, capsys):
    from hf_tiny import save_tiny
    from specmetrics.cli import main

    folder = save_tiny(tmp_path / "llama", "llama")
    code = main(["ablate", str(folder), "--target", "0.6", "--variants", "uniform,ww",
                 "--methods", "magnitude", "--nsamples", "4", "--seqlen", "32",
                 "--max-windows", "2", "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "uniform" in out and "ww" in out and "magnitude" in out
    assert (tmp_path / "out" / "table.csv").is_file()
    assert main(["ablate", str(folder), "--variants", "bogus", "--out",
                 str(tmp_path / "x")]) == 2
    assert not (tmp_path / "x").exists()
    assert math.isfinite(float(out.split("dense ")[1].split(";")[0]))
