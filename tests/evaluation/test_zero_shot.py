"""zero_shot(): lm-eval-harness on an in-memory model, offline, on a 10-question local task.

The seven default tasks (boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge, openbookqa)
download their datasets from the Hugging Face Hub and cannot run here; these tests use a local
``dataset_path: json`` task built from ``data/toy_mc.jsonl``.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import random

import numpy as np
import pytest
import torch

from specmetrics import ParameterError, ZeroShotResult, zero_shot
from specmetrics.evaluation import DEFAULT_TASKS, TaskScore

TASK_YAML = """\
task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""
TASKS = ("specmetrics_toy_a", "specmetrics_toy_b")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory, toy_mc_path):
    pytest.importorskip("lm_eval", reason="lm-eval is not installed (pip install 'specmetrics[eval]')")
    pytest.importorskip("accelerate", reason="lm-eval's HF backend needs accelerate")
    folder = tmp_path_factory.mktemp("lm_eval_tasks")
    for name in TASKS:
        (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=toy_mc_path))
    return folder


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


def _docs(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def _hand_scores(model, tokenizer, docs):
    """acc and acc_norm from our own log-likelihood ranking of ' ' + choice after the question."""
    acc, acc_norm = [], []
    with torch.no_grad():
        for doc in docs:
            ctx = tokenizer(doc["question"]).input_ids
            lls = []
            for choice in doc["choices"]:
                whole = tokenizer(doc["question"] + " " + choice).input_ids
                cont = whole[len(ctx):]
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]])).logits[0].float(), -1)
                lls.append(sum(float(logp[len(ctx) - 1 + i, tok]) for i, tok in enumerate(cont)))
            lls = np.array(lls)
            lengths = np.array([len(c) for c in doc["choices"]], dtype=float)
            acc.append(float(np.argmax(lls) == doc["label"]))
            acc_norm.append(float(np.argmax(lls / lengths) == doc["label"]))
    return float(np.mean(acc)), float(np.mean(acc_norm))


def test_local_task_matches_hand_ranking(make_llama, word_tokenizer, task_dir, toy_mc_path):
    model = make_llama(seed=3)
    state = random.getstate(), np.random.get_state()[1].copy(), torch.random.get_rng_state()
    handlers = list(logging.getLogger().handlers)

    result = zero_shot(model, word_tokenizer, TASKS, include_path=task_dir)

    assert isinstance(result, ZeroShotResult)
    assert list(result) == list(TASKS) and len(result) == 2
    score = result["specmetrics_toy_a"]
    assert isinstance(score, TaskScore) and score.n_samples == 10
    assert 0.0 <= score.acc <= 1.0 and 0.0 <= score.acc_norm <= 1.0
    assert score.acc_stderr >= 0.0 and math.isfinite(score.acc_norm_stderr)
    acc, acc_norm = _hand_scores(model, word_tokenizer, _docs(toy_mc_path))
    assert 0.0 < acc < 1.0 and acc != acc_norm  # seed 3 gives 0.1 and 0.2: a non-trivial check
    assert score.acc == pytest.approx(acc)
    assert score.acc_norm == pytest.approx(acc_norm)
    assert result.mean == pytest.approx(acc)  # both tasks hold the same questions
    assert result.mean_of("acc_norm") == pytest.approx(acc_norm)
    frame = result.to_frame()
    assert list(frame.index) == list(TASKS)
    assert list(frame.columns) == ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n_samples"]
    assert "acc,none" in score.metrics and result.lm_eval_version
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.num_fewshot = 3
    # no global side effects: RNG states, root logging handlers, grad mode
    assert random.getstate() == state[0]
    assert np.array_equal(np.random.get_state()[1], state[1])
    assert torch.equal(torch.random.get_rng_state(), state[2])
    assert logging.getLogger().handlers == handlers
    assert torch.is_grad_enabled()


def test_rigged_model_scores_one(make_llama, word_tokenizer, task_dir, toy_mc_path):
    """A model whose logits are pushed towards the right answer after each question scores 1.0."""
    model = make_llama(seed=4)
    vocab = word_tokenizer.get_vocab()
    answers = {}
    for doc in _docs(toy_mc_path):
        ids = word_tokenizer(doc["question"]).input_ids
        answers[tuple(ids)] = vocab[doc["choices"][doc["label"]]]

    def hook(module, args, kwargs, output):
        input_ids = args[0] if args else kwargs["input_ids"]
        for row, seq in enumerate(input_ids.tolist()):
            for end in range(1, len(seq) + 1):
                target = answers.get(tuple(seq[max(0, end - 3):end])) or answers.get(tuple(seq[max(0, end - 2):end]))
                if target is not None:
                    output.logits[row, end - 1, target] += 100.0
        return output

    # without the hook this model gets 2 of the first 4 right
    handle = model.register_forward_hook(hook, with_kwargs=True)
    try:
        result = zero_shot(model, word_tokenizer, [TASKS[0]], include_path=str(task_dir), limit=4)
    finally:
        handle.remove()
    assert result[TASKS[0]].n_samples == 4
    assert result[TASKS[0]].acc == 1.0 and result[TASKS[0]].acc_norm == 1.0
    assert result.mean == 1.0 and result.limit == 4


def test_default_tasks_are_the_wanda_seven():
    assert DEFAULT_TASKS == ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


@pytest.mark.parametrize(
    "kwargs, name",
    [
        ({"tasks": []}, "tasks"),
        ({"tasks": [1]}, "tasks"),
        ({"num_fewshot": -1}, "num_fewshot"),
        ({"batch_size": 0}, "batch_size"),
        ({"limit": 0}, "limit"),
        ({"limit": 1.5}, "limit"),
        ({"limit": 1.0}, "limit"),
        ({"include_path": "/nonexistent/folder"}, "include_path"),
    ],
)
def test_bad_parameters(kwargs, name):
    kwargs.setdefault("tasks", ["x"])
    with pytest.raises(ParameterError, match=rf"^The '{name}' parameter of zero_shot must be .*\. Got .* instead\.$"):
        zero_shot(torch.nn.Linear(2, 2), None, **kwargs)
