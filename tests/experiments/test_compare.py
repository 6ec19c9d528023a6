"""The main job as functions: ``compare_allocations`` / ``prune_and_evaluate`` on tiny models."""
from __future__ import annotations

import contextlib
import math
import warnings

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("pandas")

import specmetrics  # noqa: E402
from hf_tiny import corpus_tokenizer, save_tiny, tiny_bert, tiny_llama  # noqa: E402
from specmetrics import ParameterError  # noqa: E402
from specmetrics.evaluation import load_paragraphs, load_text  # noqa: E402
from specmetrics.experiments import (ComparisonResult, PruneRun, evaluate_pruned,  # noqa: E402
                                     method_config, prune_and_evaluate)
from specmetrics.models import is_causal_lm, load_model  # noqa: E402

CALIB = [load_text("calibration")]
TEXTS = load_paragraphs("evaluation")
SMALL = dict(nsamples=4, seqlen=32, seed=0)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return corpus_tokenizer()


@pytest.fixture(scope="module")
def bert(tokenizer):
    return tiny_bert(len(tokenizer))


@pytest.fixture(scope="module")
def llama(tokenizer):
    return tiny_llama(len(tokenizer))


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@contextlib.contextmanager
def quiet():
    """Random tiny matrices can give degenerate power-law fits; their warnings are expected."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", specmetrics.DegenerateSpectrumWarning)
        warnings.simplefilter("ignore", specmetrics.DegenerateMetricWarning)
        yield


@pytest.fixture(scope="module")
def bert_grid(bert, tokenizer):
    before = _state(bert)
    with quiet():
        result = specmetrics.compare_allocations(
            bert, tokenizer, targets=(0.5, 0.7), methods=("magnitude", "wanda", "sparsegpt"),
            calibration=CALIB, eval_texts=TEXTS, **SMALL)
    return before, result


def test_grid_on_tiny_bert_has_every_cell(bert_grid, bert):
    before, result = bert_grid
    assert isinstance(result, ComparisonResult) and len(result) == 12
    frame = result.to_frame()
    assert len(frame) == 13
    assert frame.index[0] == (0.0, "dense", "dense")
    expected = [(t, a, m) for t in (0.5, 0.7) for a in ("uniform", "alphapruning")
                for m in ("magnitude", "wanda", "sparsegpt")]
    assert list(frame.index[1:]) == expected
    assert list(result) == expected
    assert {"sparsity", "error", "prune_s", "cosine", "cosine_min",
            "nn_agreement"} <= set(frame.columns)
    cells = frame.iloc[1:]
    assert cells[["cosine", "cosine_min", "nn_agreement"]].notna().all().all()
    assert ((cells["cosine"] >= -1) & (cells["cosine"] <= 1)).all()
    assert ((cells["cosine_min"] >= -1) & (cells["cosine_min"] <= cells["cosine"] + 1e-12)).all()
    assert ((cells["nn_agreement"] >= 0) & (cells["nn_agreement"] <= 1)).all()
    for (target, _, _), sparsity in cells["sparsity"].items():
        assert sparsity == pytest.approx(target, abs=0.02)
    dense = frame.iloc[0]
    assert dense["cosine"] == 1.0 and dense["nn_agreement"] == 1.0 and dense["sparsity"] == 0.0
    # the dense model is untouched and no pruned model is kept
    after = bert.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(run.model is None for run in result.values())


def test_grid_records_allocations_and_settings(bert_grid):
    _, result = bert_grid
    assert sorted(result.allocations) == [(0.5, "alphapruning"), (0.7, "alphapruning")]
    for (target, _), alloc in result.allocations.items():
        assert alloc.achieved == pytest.approx(target, abs=1e-9)
        run = result[target, "alphapruning", "wanda"]
        assert run.allocation is alloc
        # the prune report's per-matrix targets are the allocation's ratios
        assert {n: m.target for n, m in run.report.items()} == pytest.approx(dict(alloc))
        assert result[target, "uniform", "wanda"].allocation is None
        assert {m.target for m in result[target, "uniform", "wanda"].report.values()} == {target}
    assert result.spectrum is not None
    s = result.settings
    assert s["allocations"]["alphapruning"]["epsilon"] == 0.2
    assert s["evaluation"] == "fidelity" and s["k"] == 5
    assert s["calibration"]["nsamples"] == 4 and s["calibration"]["seqlen"] == 32
    assert result.dense.kind == "fidelity" and result.dense.n_texts == len(TEXTS)


def test_grid_is_deterministic(bert_grid, bert, tokenizer):
    _, result = bert_grid
    again = specmetrics.compare_allocations(
        bert, tokenizer, targets=(0.7,), methods=("wanda",), allocations=("uniform",),
        calibration=CALIB, eval_texts=TEXTS, **SMALL)
    assert again[0.7, "uniform", "wanda"].evaluation == result[0.7, "uniform", "wanda"].evaluation


def test_grid_on_tiny_llama_uses_perplexity(llama, tokenizer):
    result = specmetrics.compare_allocations(
        llama, tokenizer, targets=(0.5,), methods=("magnitude", "sparsegpt"),
        allocations=("uniform",), calibration=CALIB, eval_texts=TEXTS, max_windows=4, **SMALL)
    frame = result.to_frame()
    assert "perplexity" in frame.columns and "cosine" not in frame.columns
    assert result.dense.kind == "perplexity" and result.dense.seqlen == 32
    assert result.dense.n_texts == 4
    dense_ppl = frame.loc[(0.0, "dense", "dense"), "perplexity"]
    expected = specmetrics.perplexity(llama, tokenizer, "\n\n".join(TEXTS), seqlen=32,
                                      max_windows=4)
    assert dense_ppl == pytest.approx(expected, rel=1e-9)
    for run in result.values():
        assert run.evaluation.perplexity_dense == dense_ppl
        assert math.isfinite(run.evaluation.perplexity) and run.evaluation.perplexity > 1


def test_prune_and_evaluate_copy_and_inplace(llama, tokenizer):
    before = _state(llama)
    run = prune_and_evaluate(llama, tokenizer, 0.5, method="wanda", calibration=CALIB,
                             eval_texts=TEXTS, max_windows=2, **SMALL)
    assert isinstance(run, PruneRun) and run.allocation_name == "uniform"
    assert run.achieved == pytest.approx(0.5, abs=0.01) and 0 < run.error < 1
    assert all(torch.equal(before[k], v) for k, v in llama.state_dict().items())
    assert run.model is not llama
    # in place: the model itself is pruned, the same numbers come out
    model = tiny_llama(len(tokenizer))
    inplace = prune_and_evaluate(model, tokenizer, 0.5, method="wanda", calibration=CALIB,
                                 eval_texts=TEXTS, max_windows=2, inplace=True, **SMALL)
    assert inplace.model is model
    assert inplace.evaluation == run.evaluation
    assert inplace.report.achieved == run.report.achieved


def test_prune_and_evaluate_nm_pattern(bert, tokenizer):
    run = prune_and_evaluate(bert, tokenizer, None, method=method_config("magnitude", "2:4"),
                             eval_texts=TEXTS)
    assert run.target == 0.5 and run.achieved == pytest.approx(0.5)
    assert run.report.nsamples is None and math.isnan(run.error)  # no calibration: no forward
    assert run.evaluation.kind == "fidelity" and -1 <= run.evaluation.cosine <= 1


def test_prune_and_evaluate_alpha_with_file_eval(bert, tokenizer, tmp_path):
    path = tmp_path / "eval.txt"
    path.write_text("\n\n".join(TEXTS[:10]), encoding="utf-8")
    with quiet():
        run = prune_and_evaluate(bert, tokenizer, 0.6, method="sparsegpt",
                                 allocation=specmetrics.AlphaPruningConfig(epsilon=0.3),
                                 calibration=CALIB, eval_texts=path, k=3, **SMALL)
    with quiet(), pytest.warns(DeprecationWarning) as caught:
        old = prune_and_evaluate(bert, tokenizer, 0.6, method="sparsegpt", allocation="alpha",
                                 epsilon=0.3, calibration=CALIB, eval_texts=path, k=3, **SMALL)
    assert old.allocation == run.allocation
    messages = " ".join(str(w.message) for w in caught)
    assert "'alpha' is now 'alphapruning'" in messages and "epsilon" in messages
    assert run.allocation.settings["method"]["epsilon"] == 0.3
    assert run.evaluation.n_texts == 10 and run.evaluation.k == 3
    assert run.achieved == pytest.approx(0.6, abs=0.01)


@pytest.mark.parametrize("kwargs, name", [
    (dict(target=1.0), "target"),
    (dict(target=None), "target"),
    (dict(target=0.5, allocation="no_such_allocator"), "allocation"),
    (dict(target=0.5, allocation="owl", method="magnitude"), "calibration"),
    (dict(target=0.5, method="obs"), "method"),
    (dict(target=0.5, method=method_config("wanda", "2:4"), allocation="alphapruning"),
     "allocation"),
    (dict(target=0.7, method=method_config("wanda", "2:4")), "target"),
    (dict(target=0.5, method="wanda"), "calibration"),
    (dict(target=0.5, method="magnitude", eval_texts=42), "eval_texts"),
])
def test_prune_and_evaluate_errors_change_nothing(kwargs, name, llama, tokenizer):
    before = _state(llama)
    kwargs = dict(kwargs)
    target = kwargs.pop("target")
    with pytest.raises(ParameterError, match=f"The '{name}' parameter of"):
        prune_and_evaluate(llama, tokenizer, target, inplace=True, **kwargs)
    assert all(torch.equal(before[k], v) for k, v in llama.state_dict().items())


@pytest.mark.parametrize("kwargs, name", [
    (dict(targets=0.5), "targets"),
    (dict(targets=(0.5, 1.2)), "targets"),
    (dict(methods=("wanda", "wanda")), "methods"),
    (dict(methods=(method_config("wanda", "2:4"),)), "methods"),
    (dict(allocations=("uniform", "obs")), "allocations"),
    (dict(allocations=("uniform", "uniform")), "allocations"),
    (dict(methods=("magnitude",), allocations=("owl",), calibration=None), "calibration"),
    (dict(eval_texts=None), "eval_texts"),
    (dict(calibration=None), "calibration"),
    (dict(k=len(TEXTS)), "k"),
])
def test_compare_allocations_errors(kwargs, name, bert, tokenizer):
    options = dict(calibration=CALIB, eval_texts=TEXTS, **SMALL)
    options.update(kwargs)
    with pytest.raises(ParameterError, match=f"The '{name}' parameter of compare_allocations"):
        specmetrics.compare_allocations(bert, tokenizer, **options)


def test_evaluate_pruned_identity(bert, llama, tokenizer):
    same = evaluate_pruned(bert, bert, tokenizer, TEXTS[:8], k=2)
    assert same.cosine == pytest.approx(1.0) and same.nn_agreement == 1.0
    assert same.summary()["n_texts"] == 8
    ppl = evaluate_pruned(llama, llama, tokenizer, "\n\n".join(TEXTS), seqlen=32, max_windows=3)
    assert ppl.perplexity == ppl.perplexity_dense and ppl.n_texts == 3


def test_load_model_picks_the_auto_class(tmp_path):
    llama_dir = save_tiny(tmp_path / "llama", "llama")
    bert_dir = save_tiny(tmp_path / "bert", "bert")
    model, tok = load_model(llama_dir)
    assert type(model).__name__ == "LlamaForCausalLM" and is_causal_lm(model)
    assert not model.training and tok("a b")["input_ids"]
    model, _ = load_model(bert_dir)
    assert type(model).__name__ == "BertModel" and not is_causal_lm(model)


def test_method_config():
    assert method_config("sparsegpt").name == "sparsegpt"
    assert method_config("wanda", "4:8").nm == (4, 8)
    config = specmetrics.WandaConfig(pattern="2:4")
    assert method_config(config) is config
    with pytest.raises(ParameterError, match="'pattern' parameter"):
        method_config(config, "4:8")
    with pytest.raises(ParameterError, match="'pattern' parameter of WandaConfig"):
        method_config("wanda", "3:3")


def test_prune_and_evaluate_given_allocation(bert, tokenizer):
    alloc = specmetrics.allocate(bert, 0.4, method="uniform")
    run = prune_and_evaluate(bert, tokenizer, None, method="magnitude", allocation=alloc)
    assert run.allocation_name == "given" and run.allocation is alloc and run.target == 0.4
    assert run.evaluation is None and run.achieved == pytest.approx(0.4, abs=1e-3)
    with pytest.raises(ParameterError, match="The 'target' parameter of prune_and_evaluate"):
        prune_and_evaluate(bert, tokenizer, 0.5, method="magnitude", allocation=alloc)
