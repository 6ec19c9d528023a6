"""``specmetrics sparse-coding``: values checked before the model is loaded, one-line errors, and
a run on a tiny saved model (table, JSON, plot).

The command is registered in ``specmetrics.cli`` by the lead; these tests build a parser with
only this command, handling errors the way ``specmetrics.cli.main`` does.
"""
from __future__ import annotations

import pytest

from tiny_models import one_torch_thread  # noqa: F401
from specmetrics.cli import _Parser
from specmetrics.cli import sparse_coding as command
from specmetrics.cli.common import report_error

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run_cli(capsys, *argv):
    parser = _Parser(prog="specmetrics")
    sub = parser.add_subparsers(dest="command")
    command.add_parser(sub)
    try:
        args = parser.parse_args([str(a) for a in argv])
        code = args.run(args)
    except SystemExit as exc:
        code = exc.code
    except Exception as err:  # noqa: BLE001 - what specmetrics.cli.main does
        code = report_error("specmetrics sparse-coding", err, debug=False)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("transformers")
    from hf_tiny import save_tiny

    from specmetrics.calibration import load_text

    root = tmp_path_factory.mktemp("hf")
    text = root / "text.txt"
    text.write_text(load_text("calibration"), encoding="utf-8")
    return {"model": save_tiny(root / "llama", "llama"), "text": text}


def test_run_writes_table_json_and_plot(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run_cli(
        capsys, "sparse-coding", tiny["model"], "--text", tiny["text"], "--sites",
        "embeddings,residual", "--nsamples", "3", "--seqlen", "24", "--max-tokens", "60",
        "--steps", "20", "--batch-size", "32", "--n-features", "32", "--out", out)
    assert code == 0, err
    assert "model.layers.1.residual" in stdout and "normalized_loss" in stdout
    assert "gaussian control (60 samples, same settings)" in stdout
    frame = pd.read_csv(out / "table.csv", index_col="name")
    assert list(frame.index) == ["embeddings", "model.layers.0.residual",
                                 "model.layers.1.residual"]
    assert "control_gaussian" in frame.columns
    assert (out / "result.json").is_file() and (out / "profile.png").stat().st_size > 1000
    from specmetrics.sparse_coding import LayerSparsity

    assert len(LayerSparsity.from_json(out / "result.json")) == 3


@pytest.mark.parametrize("extra, message", [
    (["--sites", "attention"], "--sites: unknown site kind(s) attention"),
    (["--sites", ","], "--sites must name at least one entry"),
    (["--controls", "uniform"], "--controls: unknown control kind(s) uniform"),
    (["--nsamples", "0"], "The 'nsamples' parameter of layer_sparsity"),
    (["--steps", "0"], "The 'steps' parameter of layer_sparsity"),
    (["--max-tokens", "1"], "The 'max_tokens' parameter of layer_sparsity"),
    (["--seed", "-1"], "The 'seed' parameter of layer_sparsity"),
    (["--seqlen", "1"], "The 'seqlen' parameter of layer_sparsity"),
    (["--text", "{tmp}/nope.txt"], "--text: no such file"),
    (["--device", "cuda:5"], "--device"),
    (["--steps", "x"], "invalid int value"),
])
def test_errors_before_loading(extra, message, tiny, tmp_path, capsys):
    argv = ["sparse-coding", tiny["model"], "--text", tiny["text"]]
    argv += [a.format(tmp=tmp_path) for a in extra]
    code, stdout, err = run_cli(capsys, *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert stdout == "" and not (tmp_path / "specmetrics-sparse-coding").exists()


def test_missing_model_is_a_usage_error(tiny, tmp_path, capsys):
    code, _, err = run_cli(capsys, "sparse-coding", tmp_path / "nowhere", "--text", tiny["text"])
    assert code == 2 and "no such file or folder" in err
