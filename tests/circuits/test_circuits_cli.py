"""``specmetrics circuits MODEL --out DIR``: values checked before the model is loaded, one-line
errors, the four tables and plots written (on tiny-llama-wt)."""
from __future__ import annotations

import argparse

import pytest

from specmetrics.cli import circuits as cli_circuits
from specmetrics.cli.common import report_error

pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")


def _main(argv) -> int:
    """What ``specmetrics.cli.main`` does, with only this command registered."""
    parser = argparse.ArgumentParser(prog="specmetrics")
    sub = parser.add_subparsers(dest="command")
    cli_circuits.add_parser(sub)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return args.run(args)
    except Exception as err:  # noqa: BLE001 - as the real entry point
        return report_error("specmetrics circuits", err, debug=False)


@pytest.mark.parametrize("extra, message", [
    (["--ratio", "1.5"], "--ratio: must be a number in (0, 1)"),
    (["--ratio", "x"], "--ratio: must be a number in (0, 1)"),
    (["--nsamples", "0"], "--nsamples: must be an integer >= 1"),
    (["--directions", "-1"], "--directions: must be an integer >= 0"),
    (["--device", "cuda:7"], "--device"),
])
def test_bad_values_exit_2_before_loading(extra, message, tmp_path, capsys):
    code = _main(["circuits", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o"),
                  *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err


def test_missing_files_and_out_file_exit_2(tmp_path, capsys, monkeypatch):
    loaded = []
    monkeypatch.setattr("specmetrics.models.load_model", lambda *a, **k: loaded.append(a))
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    (model_dir / "config.json").write_text("{}")
    assert _main(["circuits", str(tmp_path / "absent"), "--out", str(tmp_path / "o")]) == 2
    assert "absent" in capsys.readouterr().err
    assert _main(["circuits", str(model_dir), "--out", str(tmp_path / "o"), "--text",
                  str(tmp_path / "none.txt")]) == 2
    assert "--text: no such file" in capsys.readouterr().err
    out_file = tmp_path / "file.csv"
    out_file.write_text("x")
    assert _main(["circuits", str(model_dir), "--out", str(out_file)]) == 2
    err = capsys.readouterr().err
    assert "--out must be a folder" in err and len(err.strip().splitlines()) == 1
    assert not loaded  # nothing was loaded
    assert _main(["circuits", "--out", str(tmp_path)]) == 2  # MODEL missing (argparse)


@pytest.mark.shared
def test_writes_the_four_tables_and_plots(tiny_llama_dir, tmp_path, capsys):
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        text = tmp_path / "text.txt"
        text.write_text("To be, or not to be, that is the question. " * 60, encoding="utf-8")
        out = tmp_path / "out"
        code = _main(["circuits", str(tiny_llama_dir), "--out", str(out), "--text", str(text),
                      "--nsamples", "2", "--seqlen", "32", "--directions", "1", "--top-k", "3",
                      "--null-draws", "1"])
    finally:
        torch.set_num_threads(previous)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    for name in ("qk_ov", "congruence", "variance", "mp"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.png").is_file()
        assert (out / f"{name}.json").is_file()
    for name in ("qk_ov_layers", "qk_ov_directions", "congruence_units"):
        assert (out / f"{name}.csv").is_file()
    qk = pd.read_csv(out / "qk_ov.csv", index_col=0)
    assert len(qk) == 6 * 8 and (qk["qk_rank_fraction"] == 1.0).all()
    var = pd.read_csv(out / "variance.csv", index_col=0)
    assert list(var.index) == [f"model.layers.{i}" for i in range(6)]
    assert {"var_delta_q+o", "var_delta_q+k+v+o"} <= set(var.columns)
    mp = pd.read_csv(out / "mp.csv", index_col=0)
    assert len(mp) == 6 * 7
    assert "tables and plots in" in captured.out
