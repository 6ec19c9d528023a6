"""Zero-shot (and few-shot) accuracy through EleutherAI's lm-evaluation-harness."""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Iterator, Optional, Sequence, Union

import torch

from .._results import KeyedResult, jsonable
from .._validation import check_positive_int, fail

__all__ = ["DEFAULT_TASKS", "TaskScore", "ZeroShotResult", "zero_shot"]

logger = logging.getLogger(__name__)

#: The seven tasks of the Wanda / SparseGPT / AlphaPruning / OWL zero-shot tables.
DEFAULT_TASKS = ("boolq", "rte", "hellaswag", "winogrande", "arc_easy", "arc_challenge", "openbookqa")


def _nan(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


@dataclasses.dataclass(frozen=True)
class TaskScore:
    """The scores of one task.

    Attributes
    ----------
    task : str
        Task name.
    acc : float
        Accuracy (NaN if the task does not report it).
    acc_stderr : float
        Standard error of ``acc`` (lm-eval's sample standard deviation / sqrt(n)).
    acc_norm : float
        Accuracy with choices ranked by log-likelihood per character of the choice (NaN for
        tasks without it, e.g. boolq, rte, winogrande).
    acc_norm_stderr : float
    n_samples : int or None
        Documents evaluated (after ``limit``).
    metrics : Mapping[str, float]
        Every metric lm-eval reported for the task, named as lm-eval names them
        (``"acc,none"``, ``"acc_stderr,none"``...).
    """

    task: str
    acc: float
    acc_stderr: float
    acc_norm: float
    acc_norm_stderr: float
    n_samples: Optional[int]
    metrics: Mapping = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "metrics", MappingProxyType(dict(self.metrics)))


_SCORE_FLOATS = ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr")


@dataclasses.dataclass(frozen=True, eq=False)
class ZeroShotResult(KeyedResult):
    """Read-only mapping ``task name -> TaskScore`` from :func:`zero_shot`.

    Attributes
    ----------
    scores : Mapping[str, TaskScore]
        One entry per task, in the order requested.
    num_fewshot : int
    limit : int, float or None
    lm_eval_version : str
    raw : Mapping
        The ``"results"`` section of lm-eval's output, as returned.
    """

    scores: Mapping
    num_fewshot: int
    limit: Union[int, float, None]
    lm_eval_version: str
    raw: Mapping = dataclasses.field(default_factory=dict, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "scores", MappingProxyType(dict(self.scores)))
        object.__setattr__(self, "raw", MappingProxyType(dict(self.raw)))
        self._init_result(self.scores, {"num_fewshot": self.num_fewshot, "limit": self.limit,
                                        "lm_eval_version": self.lm_eval_version})

    def _to_payload(self) -> Any:
        rows = [{**{f.name: getattr(s, f.name) for f in dataclasses.fields(s)},
                 "metrics": dict(s.metrics)} for s in self.scores.values()]
        return {"scores": rows,
                "raw": jsonable(self.raw)}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "ZeroShotResult":
        scores = {}
        for row in data["scores"]:
            row = {k: (_nan(v) if k in _SCORE_FLOATS else v) for k, v in row.items()}
            scores[row["task"]] = TaskScore(**row)
        return cls(scores=scores, num_fewshot=settings.get("num_fewshot", 0),
                   limit=settings.get("limit"),
                   lm_eval_version=settings.get("lm_eval_version", "unknown"),
                   raw=data.get("raw") or {})

    def plot(self, ax=None):
        """Accuracy per task (``acc_norm`` where the task has it) with standard errors.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.axes import new_axes

        ax = new_axes(ax)
        names = list(self.scores)
        values = [s.acc if math.isnan(s.acc_norm) else s.acc_norm for s in self.scores.values()]
        errors = [s.acc_stderr if math.isnan(s.acc_norm) else s.acc_norm_stderr
                  for s in self.scores.values()]
        ax.bar(names, values, yerr=[0 if math.isnan(e) else e for e in errors], color="C0")
        ax.axhline(self.mean_of("best"), color="0.4", linestyle="--", linewidth=1, label="mean")
        ax.set_ylabel("accuracy")
        ax.set_ylim(0, 1)
        ax.tick_params(axis="x", rotation=45)
        ax.legend(fontsize="small")
        return ax

    def __repr__(self) -> str:
        body = ", ".join(f"{name}={score.acc:.4f}" for name, score in self.scores.items())
        return f"ZeroShotResult(mean={self.mean:.4f}, {body})"

    @property
    def mean(self) -> float:
        """Unweighted mean of ``acc`` over the tasks (the "Mean" column of the Wanda and
        AlphaPruning tables); NaN if a task has no ``acc``."""
        return self.mean_of("acc")

    def mean_of(self, metric: str = "acc") -> float:
        """Unweighted mean of one field of :class:`TaskScore` (``"acc"``, ``"acc_norm"``) over
        the tasks; ``"best"`` takes ``acc_norm`` where a task has it and ``acc`` elsewhere."""
        values = []
        for score in self.scores.values():
            if metric == "best":
                values.append(score.acc if math.isnan(score.acc_norm) else score.acc_norm)
            else:
                values.append(float(getattr(score, metric)))
        return math.fsum(values) / len(values) if values else math.nan

    def to_frame(self):
        """One row per task (index ``task``): ``acc``, ``acc_stderr``, ``acc_norm``,
        ``acc_norm_stderr``, ``n_samples``.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        columns = ["acc", "acc_stderr", "acc_norm", "acc_norm_stderr", "n_samples"]
        rows = {name: {c: getattr(s, c) for c in columns} for name, s in self.scores.items()}
        frame = pd.DataFrame.from_dict(rows, orient="index", columns=columns)
        frame.index.name = "task"
        return frame


def _import_lm_eval():
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as err:
        raise ImportError(
            "zero_shot needs lm-evaluation-harness with its Hugging Face backend: "
            "pip install 'specmetrics[eval]' (lm-eval[hf]: lm-eval and accelerate)"
        ) from err
    return lm_eval, HFLM, TaskManager


@contextlib.contextmanager
def _global_rng_preserved():
    """Restore Python's, NumPy's and torch's global random states on exit."""
    import random

    import numpy as np

    states = (random.getstate(), np.random.get_state(), torch.random.get_rng_state())
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.random.set_rng_state(states[2])
        if cuda is not None:
            torch.cuda.set_rng_state_all(cuda)


def _score(task: str, metrics: Mapping, n_samples: Optional[int]) -> TaskScore:
    def get(name: str) -> float:
        # lm-eval >= 0.4 names metrics "<metric>,<filter>"; the default filter is "none"
        for key in (f"{name},none", name):
            if key in metrics:
                return _nan(metrics[key])
        return math.nan

    numeric = {k: v for k, v in metrics.items() if k != "alias"}
    return TaskScore(
        task=task,
        acc=get("acc"),
        acc_stderr=get("acc_stderr"),
        acc_norm=get("acc_norm"),
        acc_norm_stderr=get("acc_norm_stderr"),
        n_samples=n_samples,
        metrics=numeric,
    )


def zero_shot(
    model: torch.nn.Module,
    tokenizer,
    tasks: Sequence[str] = DEFAULT_TASKS,
    *,
    num_fewshot: int = 0,
    limit: Union[int, float, None] = None,
    batch_size: int = 1,
    device: Union[str, torch.device, None] = None,
    include_path: Union[str, os.PathLike, Sequence[Union[str, os.PathLike]], None] = None,
) -> ZeroShotResult:
    """Accuracy of an in-memory causal LM on lm-evaluation-harness tasks.

    The model is wrapped as ``lm_eval.models.huggingface.HFLM(pretrained=model,
    tokenizer=tokenizer)`` (no copy, no reload) and run through ``lm_eval.simple_evaluate``.
    Multiple-choice tasks rank the choices by the summed log-likelihood of each continuation
    (``acc``) and by that sum divided by the choice's length in characters (``acc_norm``).
    lm-eval adds a BOS token only where the tokenizer does by default.

    The default seven tasks download their datasets from the Hugging Face Hub the first time
    (then use the ``datasets`` cache): they cannot run offline on a fresh machine. Tasks defined
    in local YAML files (``dataset_path: json`` with local ``data_files``) run offline through
    ``include_path``.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM (``*ForCausalLM``). It is not moved; lm-eval puts it in eval mode.
    tokenizer : Hugging Face tokenizer
        Its tokenizer. A pad token is set on it by lm-eval if it has none.
    tasks : sequence of str, default the seven tasks of :data:`DEFAULT_TASKS`
        lm-eval task names: boolq, rte, hellaswag, winogrande, arc_easy, arc_challenge,
        openbookqa (as in Wanda, SparseGPT, OWL and AlphaPruning), or names defined under
        ``include_path``. A single ``str`` is one task.
    num_fewshot : int, default 0
        In-context examples per question (sampled with lm-eval's default fewshot seed, 1234).
    limit : int or float, optional
        Evaluate only the first ``limit`` documents of each task (a float in (0, 1) is a fraction).
        For tests and quick looks only: results on a subset are not comparable with papers.
    batch_size : int, default 1
        Requests per forward pass.
    device : str or torch.device, optional
        Where lm-eval places the input ids; ``model.device`` by default. The model is not moved.
    include_path : str, os.PathLike or sequence of them, optional
        Folders of extra task YAML files (``lm_eval.tasks.TaskManager(include_path=...)``).
        When every task is found there, lm-eval's built-in task index (tens of seconds to
        build) is not loaded.

    Returns
    -------
    ZeroShotResult
        Keyed by task name, in the order requested; ``.mean`` is the mean accuracy.

    Raises
    ------
    ImportError
        Without lm-eval and accelerate (``pip install 'specmetrics[eval]'``).
    ParameterError
        For an empty task list, a negative ``num_fewshot``, a non-positive ``batch_size`` or
        ``limit``, or task names lm-eval does not know.

    Notes
    -----
    Python's, NumPy's and torch's global random states are the same after the call as before
    (lm-eval would reseed them by default; multiple-choice scoring uses no randomness, and
    few-shot examples come from lm-eval's own seeded sampler). The published tables (Wanda,
    AlphaPruning) were produced with lm-eval 0.3 (model ``hf-causal-experimental``); task
    versions and prompts of lm-eval 0.4 may differ, so compare against a dense baseline run here.

    References
    ----------
    .. [1] L. Gao et al., "A framework for few-shot language model evaluation" (lm-evaluation-
       harness), Zenodo, github.com/EleutherAI/lm-evaluation-harness.
    .. [2] M. Sun et al., "A Simple and Effective Pruning Approach for Large Language Models"
       (Wanda), ICLR 2024, Table 2 and ``lib/eval.py::eval_zero_shot``.
    """
    func = "zero_shot"
    if isinstance(tasks, str):
        tasks = (tasks,)
    if not isinstance(tasks, Sequence) or not tasks or not all(isinstance(t, str) for t in tasks):
        raise fail("tasks", func, "a non-empty sequence of task names (str)", tasks)
    tasks = list(dict.fromkeys(tasks))
    check_positive_int(num_fewshot, name="num_fewshot", func=func, minimum=0)
    check_positive_int(batch_size, name="batch_size", func=func)
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0 or (
            isinstance(limit, float) and not limit < 1
        ):
            raise fail("limit", func, "None, a positive integer or a fraction in (0, 1)", limit)

    if include_path is not None:
        paths = [include_path] if isinstance(include_path, (str, os.PathLike)) else list(include_path)
        if not paths or not all(isinstance(p, (str, os.PathLike)) and os.path.isdir(p) for p in paths):
            raise fail("include_path", func, "a folder or a sequence of existing folders", include_path)
        include_path = [os.fspath(p) for p in paths]

    lm_eval, HFLM, TaskManager = _import_lm_eval()
    manager = None
    if include_path is not None:
        # Indexing lm-eval's ~15,000 built-in task files takes tens of seconds: skip it when
        # every task is defined under include_path.
        local = TaskManager(include_path=include_path, include_defaults=False)
        if all(t in set(local.all_tasks) for t in tasks):
            manager = local
    if manager is None:
        manager = TaskManager(include_path=include_path)
    known = set(manager.all_tasks)
    unknown = [t for t in tasks if t not in known]
    if unknown:
        raise fail("tasks", func, "names of tasks lm-eval knows (see include_path)", unknown)

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    if device is not None:
        lm._device = torch.device(device)  # HFLM takes the model's device for pre-built models
    logger.info("lm-eval %s: tasks %s, num_fewshot=%d, limit=%s",
                getattr(lm_eval, "__version__", "?"), tasks, num_fewshot, limit)

    with _global_rng_preserved():
        out = lm_eval.simple_evaluate(
            model=lm,
            tasks=tasks,
            num_fewshot=num_fewshot,
            limit=limit,
            task_manager=manager,
            log_samples=False,
            random_seed=None,
            numpy_random_seed=None,
            torch_random_seed=None,
        )
    results = dict(out["results"]) if out else {}
    n_samples = dict(out.get("n-samples", {})) if out else {}
    scores = {}
    for task in tasks:
        if task not in results:
            logger.warning("lm-eval returned no results for task %r", task)
            continue
        effective = n_samples.get(task, {}).get("effective")
        scores[task] = _score(task, results[task], None if effective is None else int(effective))
    return ZeroShotResult(
        scores=scores,
        num_fewshot=num_fewshot,
        limit=limit,
        lm_eval_version=str(getattr(lm_eval, "__version__", "unknown")),
        raw=results,
    )
