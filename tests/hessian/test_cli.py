"""``specmetrics hessian``: values checked before the model is loaded, one-line errors, and a run
on tiny-llama-wt writing its results."""
from __future__ import annotations

import argparse
import json

import pytest

from specmetrics.cli import hessian as cli_hessian
from specmetrics.cli.common import report_error
from specmetrics.hessian import HessianEigen, HessianPowerLaw, SpectralDensity


def _main(argv):
    """What ``specmetrics.cli.main`` does, with the hessian command registered here."""
    parser = argparse.ArgumentParser(prog="specmetrics")
    sub = parser.add_subparsers(dest="command")
    cli_hessian.add_parser(sub)
    try:
        args = parser.parse_args([str(a) for a in argv])
    except SystemExit as exc:
        return exc.code
    try:
        return args.run(args)
    except Exception as err:  # noqa: BLE001 - the CLI's contract
        return report_error("specmetrics hessian", err, debug=False)


@pytest.mark.parametrize("argv, words", [
    (["--top-k", "-1"], "'top_k'"),
    (["--top-k", "0"], "nothing to compute"),
    (["--tol", "2"], "'tol'"),
    (["--max-steps", "5"], "'max_steps'"),
    (["--trace", "--trace-probes", "10"], "multiple of 3"),
    (["--trace", "--trace-method", "xtrace", "--trace-probes", "9"], "even"),
    (["--density", "--density-steps", "1"], "'density_steps'"),
    (["--density", "--sigma", "0"], "'sigma'"),
    (["--nsamples", "0"], "'nsamples'"),
    (["--seqlen", "1"], "'seqlen'"),
    (["--batch-size", "0"], "'batch_size'"),
    (["--seed", "-2"], "'seed'"),
    (["--params", " "], "'params'"),
    (["--text", "/no/such/file.txt"], "no such file"),
    (["--keep-graph", "--curvature", "ggn"], "'keep_graph'"),
])
def test_bad_values_exit_2_before_loading_the_model(argv, words, capsys, tmp_path):
    # the model path does not exist: the values must be rejected before it is looked at
    code = _main(["hessian", tmp_path / "no-model", *argv])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert words in err and len(err.splitlines()) == 1, err


def test_out_must_be_a_folder(capsys, tmp_path):
    f = tmp_path / "file.txt"
    f.write_text("x")
    assert _main(["hessian", tmp_path / "no-model", "--out", f]) == 2
    assert "--out" in capsys.readouterr().err


def test_missing_model_is_a_usage_error(capsys, tmp_path):
    code = _main(["hessian", tmp_path / "missing-model-folder"])
    assert code == 2
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_argparse_rejects_unknown_choices(capsys, tmp_path):
    assert _main(["hessian", tmp_path, "--curvature", "fisher"]) == 2
    assert _main(["hessian", tmp_path, "--device", "banana"]) == 2


class _ByteTokenizer:
    def __call__(self, text, return_tensors=None):
        import torch

        return {"input_ids": torch.tensor([[b % 256 for b in text.encode()]])}


def test_run_end_to_end_on_a_tiny_random_llama(monkeypatch, tmp_path, capsys):
    """The whole command with load_model replaced by a tiny random LLaMA (no files needed)."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("transformers")
    import specmetrics.models
    from tiny_models import build

    model = build("llama")
    monkeypatch.setattr(specmetrics.models, "load_model",
                        lambda source, **kw: (model, _ByteTokenizer()))
    out = tmp_path / "out"
    code = _main(["hessian", tmp_path, "--params", "model.layers.1.self_attn.v_proj.weight",
                  "--nsamples", "2", "--seqlen", "16", "--top-k", "8", "--density",
                  "--density-steps", "6", "--keep-graph", "--out", out])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "top 8 eigenvalues" in captured.out and "power law" in captured.out
    assert "30 tokens" in captured.err  # 2 windows x 15 predicted tokens
    assert {p.name for p in out.iterdir()} == {"eigen.json", "power_law.json", "eigenvalues.png",
                                               "density.json", "density.png"}


@pytest.mark.slow
@pytest.mark.shared
def test_run_on_tiny_llama_wt(tiny_llama_dir, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    code = _main(["hessian", tiny_llama_dir, "--params", "model.layers.5.mlp.down_proj.weight",
                  "--nsamples", "2", "--seqlen", "24", "--top-k", "8", "--density",
                  "--density-steps", "8", "--trace", "--trace-probes", "6", "--out", out])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "top 8 eigenvalues" in captured.out and "power law" in captured.out
    assert "trace (hutch++" in captured.out and "spectral density" in captured.out
    for name in ("eigen.json", "power_law.json", "trace.json", "density.json",
                 "eigenvalues.png", "density.png"):
        assert (out / name).is_file(), name
    eig = HessianEigen.from_json(out / "eigen.json")
    assert eig.k == 8 and list(eig.settings["params"]) == ["model.layers.5.mlp.down_proj.weight"]
    assert eig.settings["n_data"] == 2 * 23
    assert HessianPowerLaw.from_json(out / "power_law.json").k <= 8
    assert SpectralDensity.from_json(out / "density.json").n_steps == 8
    assert json.loads((out / "trace.json").read_text())["data"]["n_matvecs"] == 6
    # a pattern matching nothing: a usage error after the model is loaded, one line
    code = _main(["hessian", tiny_llama_dir, "--params", "model.layers.99.*", "--out", out])
    last = capsys.readouterr().err.strip().splitlines()[-1]  # after transformers' load bars
    assert code == 2 and last.startswith("specmetrics hessian: error: The 'params'")
