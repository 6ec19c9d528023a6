"""Conformance suite: the same properties hold on every ``esd()`` backend, and the backends agree.

Each property test runs on ``backend="torch"`` (native) and ``backend="weightwatcher"``
(reference, skipped without the ``ww`` extra). Models are small, seeded and float32:
WeightWatcher rounds weights to float32 before its float64 SVD, so float32 weights give
both backends the same input.

Agreement to 1e-9 relative holds on a CPU only: where CUDA is available, WeightWatcher 0.7.7
rounds the weights to float16 and runs its SVD in float32 on the GPU.
"""
from __future__ import annotations

import inspect
import json
import math
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from strategies import random_matrices

import specmetrics
from specmetrics import DegenerateSpectrumWarning, ParameterError
from specmetrics.spectrum import MIN_TAIL, WW_COLUMNS

BACKENDS = ["torch", "weightwatcher"]
#: Relative agreement of every eigenvalue-derived column between the backends (CPU, float64).
RTOL = 1e-9
#: Columns compared between the backends to RTOL (exact for the integer ones).
AGREE_FLOAT = (
    "alpha", "xmin", "xmax", "D", "sigma", "norm", "log_norm", "spectral_norm", "log_spectral_norm",
    "alpha_weighted", "log_alpha_norm", "stable_rank", "entropy", "lambda_max", "sv_max",
    "alpha_peak", "alpha_mid", "Q",
)
AGREE_EXACT = ("num_pl_spikes", "matrix_rank", "num_evals", "N", "M", "rf", "layer_type", "status", "warning")

needs_cpu_ww = pytest.mark.skipif(
    torch.cuda.is_available(), reason="WeightWatcher rounds weights to float16 where CUDA is available"
)


class Conv1D(torch.nn.Module):
    """GPT-2's ``Conv1D`` (weight stored as (in, out)), recognised by its class name."""

    def __init__(self, nf: int, nx: int):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(nx, nf) * 0.02)
        self.bias = torch.nn.Parameter(torch.zeros(nf))


class Zoo(torch.nn.Module):
    """Linear stacks of several shapes, convolutions, an embedding, a GPT-2 Conv1D, a matrix
    too small to analyse and a weight tied to the embedding."""

    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(300, 64)
        self.blocks = torch.nn.ModuleList(
            [torch.nn.Sequential(torch.nn.Linear(64, 128), torch.nn.GELU(), torch.nn.Linear(128, 64)) for _ in range(2)]
        )
        self.proj = torch.nn.Linear(64, 50)
        self.conv = torch.nn.Conv2d(16, 64, 3)
        self.conv1d = torch.nn.Conv1d(20, 30, 3)
        self.c_attn = Conv1D(96, 32)
        self.tiny = torch.nn.Linear(5, 6)  # M = 5 < min_evals: skipped
        self.head = torch.nn.Linear(64, 300, bias=False)
        self.head.weight = self.embed.weight  # tied: counted once, as "embed"


ZOO_NAMES = ["embed", "blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2", "proj", "conv", "conv1d", "c_attn"]


def make_zoo(seed: int = 0) -> Zoo:
    torch.manual_seed(seed)
    return Zoo().eval()


def require_ww():
    """``pytest.importorskip("weightwatcher")``, imported through the backend's side-effect guard
    first so that the test process keeps its logging and warning configuration."""
    from specmetrics.spectrum.backends.weightwatcher import import_weightwatcher

    try:
        import_weightwatcher()
    except ImportError:
        pass
    return pytest.importorskip("weightwatcher")


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request) -> str:
    if request.param == "weightwatcher":
        require_ww()
    return request.param


@pytest.fixture(scope="module")
def zoo() -> Zoo:
    return make_zoo()


_REPORTS: dict = {}


def zoo_report(backend: str, **options) -> specmetrics.SpectrumReport:
    """``esd(zoo, backend=...)``, cached per options (WeightWatcher is slow to start)."""
    key = (backend, tuple(sorted(options.items())))
    if key not in _REPORTS:
        _REPORTS[key] = specmetrics.esd(make_zoo(), backend=backend, **options)
    return _REPORTS[key]


def numeric_columns(frame):
    return [c for c in frame.columns if frame[c].dtype.kind in "if"]


# ---------------------------------------------------------------------------
# properties that hold on every backend
# ---------------------------------------------------------------------------


def test_names_are_qualified_module_names(backend, zoo):
    report = zoo_report(backend)
    assert list(report) == ZOO_NAMES
    module_names = dict(zoo.named_modules())
    assert all(name in module_names for name in report)
    assert report.backend == backend
    for name in ZOO_NAMES:
        assert report[name].name == name
        assert report[name].shape == tuple(module_names[name].weight.shape)


def test_tied_weights_counted_once_and_small_matrices_skipped(backend):
    report = zoo_report(backend)
    assert "head" not in report and "head" not in report.skipped
    assert dict(report.skipped).keys() == {"tiny"}
    assert "min_evals" in report.skipped["tiny"]


def test_frame_index_and_columns(backend):
    report = zoo_report(backend)
    frame = report.to_frame()
    assert list(frame.index) == ZOO_NAMES
    assert frame.index.name == "name"
    missing = [c for c in WW_COLUMNS if c not in frame.columns]
    assert not missing, f"{backend} misses WeightWatcher columns {missing}"
    assert {"alpha_peak", "alpha_mid", "n_params"} <= set(frame.columns)
    assert frame.loc["conv", "layer_type"] == "conv2d"
    assert frame.loc["embed", "layer_type"] == "embedding"
    assert frame.loc["c_attn", "layer_type"] == "conv1d"
    assert frame.loc["blocks.0.0", "layer_type"] == "dense"
    assert frame.loc["conv", "rf"] == 9 and frame.loc["conv", "num_evals"] == 16 * 9
    assert frame.loc["conv1d", "rf"] == 3 and frame.loc["conv1d", "num_evals"] == 20 * 3
    assert (frame["n_params"] == [report[n].n_params for n in ZOO_NAMES]).all()


def test_eigenvalues_exposed_and_consistent_with_norms(backend):
    report = zoo_report(backend)
    for name, layer in report.items():
        ev = layer.eigenvalues
        assert ev is not None and ev.dtype == np.float64
        assert len(ev) == layer.metrics["num_evals"]
        assert np.all(np.diff(ev) >= 0)
        assert layer.metrics["norm"] == pytest.approx(ev.sum(), rel=1e-12)
        assert layer.metrics["spectral_norm"] == pytest.approx(ev.max(), rel=1e-12)


@settings(max_examples=6, deadline=None)
@given(w=random_matrices(min_side=50, max_side=110, dtype=np.float32))
def test_alpha_finite_above_one_for_gaussian_matrices(backend, w):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateSpectrumWarning)
        report = specmetrics.esd(torch.from_numpy(w), backend=backend)
    layer = report["weight"]
    if not layer.fit.success:  # a Gaussian ESD often has no tail: the KS pick is a few top values
        assert "MIN_TAIL" in layer.fit.message and math.isnan(layer.alpha)
        assert layer.metrics["status"] == "failed"
        return
    assert math.isfinite(layer.alpha) and layer.alpha > 1.0
    assert layer.metrics["status"] == "success"
    assert 0 < layer.metrics["D"] < 1
    assert layer.metrics["num_pl_spikes"] == layer.fit.n_tail >= MIN_TAIL


def test_skipping_rules(backend):
    g = torch.Generator().manual_seed(1)
    state = {
        "a.weight": torch.randn(40, 9, generator=g),  # M = 9 < 10: skipped
        "b.weight": torch.randn(40, 10, generator=g),  # M = 10: analysed
        "c.weight": torch.randn(45, 31, generator=g),  # M = 31 > max_evals = 30: skipped
        "d.weight": torch.randn(60, 20, generator=g),  # N = 60 > max_n = 50: skipped
        "e.weight": torch.randn(12, 20, generator=g),  # analysed
        "f.bias": torch.randn(40, 40, generator=g),  # not a weight
        "g.weight": torch.randn(40, generator=g),  # 1-D
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DegenerateSpectrumWarning)
        report = specmetrics.esd(state, backend=backend, min_evals=10, max_evals=30, max_n=50)
    assert list(report) == ["b", "e"]
    assert set(report.skipped) == {"a", "c", "d"}
    assert "min_evals" in report.skipped["a"]
    assert "max_evals" in report.skipped["c"]
    assert "max_n" in report.skipped["d"]
    assert report["b"].metrics["M"] == 10 and report["e"].metrics["N"] == 20


def test_failed_fit_is_nan_never_minus_one(backend):
    """W = 0: no power-law fit and no Marchenko-Pastur fit (WeightWatcher reports -1 for both)."""
    g = torch.Generator().manual_seed(2)
    state = {"dead.weight": torch.zeros(60, 60), "alive.weight": torch.randn(60, 80, generator=g)}
    with pytest.warns(DegenerateSpectrumWarning, match="dead"):
        report = specmetrics.esd(state, backend=backend, mp_fit=True)
    dead, alive = report["dead"], report["alive"]
    assert not dead.fit.success and math.isnan(dead.fit.alpha) and dead.fit.message
    row = dead.metrics
    for key in ("alpha", "xmin", "xmax", "D", "sigma", "alpha_weighted", "log_alpha_norm",
                "sigma_mp", "bulk_max", "num_spikes", "mp_softrank", "W_scale"):
        assert math.isnan(row[key]), key
    assert math.isfinite(alive.metrics["sigma_mp"]) and alive.metrics["num_spikes"] >= 0
    assert row["status"] == "failed" and row["warning"] == "failed" and row["num_pl_spikes"] == 0
    assert alive.fit.success and alive.metrics["status"] == "success"
    frame = report.to_frame()
    for column in numeric_columns(frame):
        assert not (frame[column] == -1).any(), f"-1 sentinel in {column!r}"


def test_nonfinite_weight_fails_cleanly(backend):
    """A NaN/inf weight gives a failed row (all metrics NaN), not an exception for the whole
    model (WeightWatcher's own SVD raises on it)."""
    g = torch.Generator().manual_seed(7)
    bad = torch.randn(60, 40, generator=g)
    bad[3, 4] = float("nan")
    state = {
        "bad.weight": bad,
        "ok.weight": torch.randn(60, 40, generator=g),
        "inf.weight": torch.full((50, 30), math.inf),
    }
    with pytest.warns(DegenerateSpectrumWarning, match="bad"):
        report = specmetrics.esd(state, backend=backend)
    assert list(report) == ["bad", "ok", "inf"]
    for name in ("bad", "inf"):
        row = report[name].metrics
        assert row["status"] == "failed" and not report[name].fit.success
        assert all(math.isnan(row[k]) for k in ("alpha", "D", "norm", "spectral_norm", "stable_rank", "alpha_peak"))
        assert (row["N"], row["M"], row["num_pl_spikes"]) == ((60, 40, 0) if name == "bad" else (50, 30, 0))
    assert report["ok"].fit.success


def test_include_exclude(backend):
    report = zoo_report(backend, include=r"^blocks\.0\.")
    assert list(report) == ["blocks.0.0", "blocks.0.2"]
    report = zoo_report(backend, exclude=("embed", r"^conv"))
    assert list(report) == ["blocks.0.0", "blocks.0.2", "blocks.1.0", "blocks.1.2", "proj", "c_attn"]
    report = specmetrics.esd(make_zoo(), backend=backend, include=lambda n: n.endswith(".2"))
    assert list(report) == ["blocks.0.2", "blocks.1.2"]
    report = specmetrics.esd(make_zoo(), backend=backend, include="no-such-layer")
    assert len(report) == 0 and len(report.to_frame()) == 0


@settings(max_examples=4, deadline=None)
@given(w=random_matrices(min_side=20, max_side=90, dtype=np.float32))
def test_alpha_invariant_to_transpose(backend, w):
    a = specmetrics.esd(torch.from_numpy(w), backend=backend)["weight"].metrics
    b = specmetrics.esd(torch.from_numpy(np.ascontiguousarray(w.T)), backend=backend)["weight"].metrics
    for key in ("alpha", "xmin", "D", "norm", "spectral_norm", "stable_rank", "entropy"):
        assert b[key] == pytest.approx(a[key], rel=RTOL, nan_ok=True), key
    assert (a["N"], a["M"], a["num_pl_spikes"]) == (b["N"], b["M"], b["num_pl_spikes"])


def test_sources_agree_module_state_dict_safetensors(backend, tmp_path):
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    net = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.Linear(64, 30))
    state = {k: v.detach().clone().contiguous() for k, v in net.state_dict().items()}
    save_file(state, str(tmp_path / "model.safetensors"))
    frames = [
        specmetrics.esd(src, backend=backend).to_frame()
        for src in (net, state, tmp_path / "model.safetensors")
    ]
    for frame in frames[1:]:
        assert list(frame.index) == ["0", "1"]
        np.testing.assert_allclose(frame["alpha"], frames[0]["alpha"], rtol=RTOL)
    one = specmetrics.esd(net[0].weight, backend=backend)
    assert list(one) == ["weight"]
    assert one["weight"].alpha == pytest.approx(frames[0].loc["0", "alpha"], rel=RTOL)


# ---------------------------------------------------------------------------
# agreement between the backends
# ---------------------------------------------------------------------------


def assert_frames_agree(a, b, *, rtol=RTOL, float_columns=AGREE_FLOAT, exact_columns=AGREE_EXACT):
    assert list(a.index) == list(b.index)
    assert list(a.columns) == list(b.columns)
    for column in float_columns:
        np.testing.assert_allclose(
            a[column].to_numpy(float), b[column].to_numpy(float), rtol=rtol, atol=0, err_msg=column
        )
    for column in exact_columns:
        assert a[column].tolist() == b[column].tolist(), column


@needs_cpu_ww
def test_backends_agree_on_the_zoo():
    require_ww()
    a, b = zoo_report("torch"), zoo_report("weightwatcher")
    assert dict(a.skipped).keys() == dict(b.skipped).keys()
    assert_frames_agree(a.to_frame(), b.to_frame())
    for name in a:
        ea, eb = a[name].eigenvalues, b[name].eigenvalues
        assert np.max(np.abs(ea - eb)) <= 1e-12 * eb.max(), name


@needs_cpu_ww
@settings(max_examples=10, deadline=None)
@given(w=random_matrices(min_side=8, max_side=120, dtype=np.float32))
def test_backends_agree_on_random_matrices(w):
    """M from 8 (the smallest analysed) to 120, so WeightWatcher's small-sample fit (M < 20) too."""
    require_ww()
    a = specmetrics.esd(torch.from_numpy(w)).to_frame()
    b = specmetrics.esd(torch.from_numpy(w), backend="weightwatcher").to_frame()
    assert_frames_agree(a, b)


@needs_cpu_ww
@pytest.mark.parametrize("seed", [0, 2, 5])
def test_backends_agree_on_small_matrices(seed):
    """Fewer than 20 nonzero eigenvalues: WeightWatcher's small-sample fit (bias-corrected alpha
    ``1 + (n - 1) / sum ln(x / xmin)`` over tails of at least 8 eigenvalues). Its
    ``fit_powerlaw_smallN`` ranks candidates by ``D - 0.868 / sqrt(n)`` but ``WWFit.__init__``
    then re-selects ``argmin D``; these three matrices (M = 16-18) are ones where the two rules
    pick different xmin, so they pin the rule ``analyze()`` actually applies."""
    require_ww()
    rng = np.random.default_rng(seed)
    m = int(rng.integers(8, 20))
    n = int(rng.integers(m, 60))
    w = torch.from_numpy(rng.standard_normal((n, m)).astype(np.float32))
    a = specmetrics.esd(w).to_frame()
    b = specmetrics.esd(w, backend="weightwatcher").to_frame()
    assert_frames_agree(a, b)


def test_layer_discovery_matches_weightwatchers_own():
    """Handed the model itself, WeightWatcher finds the same matrices under the same names as
    ``layers.list_weight_matrices`` (which the backend uses), except that it analyses a tied
    weight once per module that holds it (``head``) and reads a ``torch.nn.Conv1d`` weight
    (out, in, k) as one "matrix" with M = min(out, in, k) = 3, skipped (the backend shows it
    kernel position by kernel position, as a Conv2d, instead)."""
    ww = require_ww()
    from specmetrics.spectrum.backends.weightwatcher import _contained

    with _contained(ignore_warnings=True):
        frame = ww.WeightWatcher(model=make_zoo()).analyze()
    assert set(frame["longname"]) == (set(ZOO_NAMES) - {"conv1d"}) | {"head"}


@needs_cpu_ww
def test_backends_agree_with_clip_xmax():
    require_ww()
    a = zoo_report("torch", clip_xmax=True).to_frame()
    b = zoo_report("weightwatcher", clip_xmax=True).to_frame()
    assert_frames_agree(a, b, exact_columns=AGREE_EXACT + ("num_fingers",))


@needs_cpu_ww
def test_conv2d_pooled_kernel_slices_agree_and_ww_swaps_n_m_for_even_kernels():
    """Conv2d: eigenvalues of every kernel-position slice ``W[:, :, i, j]`` pooled and halved
    (WeightWatcher's ``conv2d_norm``: each slice scaled by ``sqrt(conv2d_count / 2)`` with
    ``conv2d_count = 1``), on both backends, for every kernel size and channel order.

    WeightWatcher 0.7.7's ``conv2D_Wmats`` swaps its ``N, M`` each time it transposes a slice
    (``out < in``), so with an even number of kernel positions it reports ``N = out < M = in``
    (and ``Q < 1``; its ``mp_fit`` then uses that ``Q``). The eigenvalues are unaffected; the
    native backend reports ``N = max``, ``M = min``. WeightWatcher's ``sv_min`` of a convolution
    is the largest of the slices' smallest singular values, not the smallest (not compared)."""
    require_ww()
    torch.manual_seed(3)
    net = torch.nn.ModuleDict({
        "wide_odd": torch.nn.Conv2d(64, 16, 3),
        "wide_even": torch.nn.Conv2d(64, 16, 2),
        "tall_even": torch.nn.Conv2d(16, 64, (2, 1)),
        "thin_kernel": torch.nn.Conv2d(3, 4, 5),  # out + in < kh + kw: WeightWatcher's other branch
    })
    a = specmetrics.esd(net).to_frame()
    b = specmetrics.esd(net, backend="weightwatcher").to_frame()
    assert_frames_agree(
        a, b,
        exact_columns=("num_pl_spikes", "matrix_rank", "num_evals", "rf", "layer_type", "status", "warning"),
        float_columns=tuple(c for c in AGREE_FLOAT if c != "Q"),
    )
    assert (a.loc["wide_even", "N"], a.loc["wide_even", "M"]) == (64, 16)
    assert (b.loc["wide_even", "N"], b.loc["wide_even", "M"]) == (16, 64)  # WeightWatcher 0.7.7
    for name in ("wide_odd", "tall_even", "thin_kernel"):
        assert (a.loc[name, "N"], a.loc[name, "M"]) == (b.loc[name, "N"], b.loc[name, "M"]), name
    weight = net["wide_even"].weight.detach().double()
    slices = [weight[:, :, i, j] for i in range(2) for j in range(2)]
    expected = np.sort(np.concatenate([np.linalg.svd(s.numpy(), compute_uv=False) ** 2 for s in slices])) * 0.5
    ours = specmetrics.esd(net, include="wide_even")["wide_even"].eigenvalues
    np.testing.assert_allclose(ours, expected, rtol=1e-10)


# ---------------------------------------------------------------------------
# the WeightWatcher backend specifically
# ---------------------------------------------------------------------------


def test_ww_rejects_options_it_cannot_honour():
    require_ww()
    w = torch.randn(40, 30)
    with pytest.raises(ParameterError, match=r"The 'xmin' parameter of esd\(backend='weightwatcher'\) must be"):
        specmetrics.esd(w, backend="weightwatcher", xmin="mid")
    with pytest.raises(ParameterError, match="'dtype' parameter"):
        specmetrics.esd(w, backend="weightwatcher", dtype=torch.float32)
    with pytest.raises(ParameterError, match="'max_n' parameter"):
        specmetrics.esd(w, backend="weightwatcher", max_n=100, max_evals=1000)
    with pytest.raises(ParameterError, match="'clip_xmax' parameter"):
        specmetrics.esd(w, backend="weightwatcher", xmin="peak", clip_xmax=True)


def test_ww_powerlaw_package_options_fail_loudly_when_powerlaw_rejects_them():
    """WeightWatcher 0.7.7 runs ``fix_fingers="xmin_peak"`` and ``fit="TPL"`` through
    ``powerlaw.Fit(..., distribution=...)``; powerlaw 2.0 removed that argument, so every such
    fit fails inside WeightWatcher. The backend refuses the option up front instead of
    returning NaN for every layer; with an older powerlaw both run."""
    require_ww()
    powerlaw = pytest.importorskip("powerlaw")
    params = inspect.signature(powerlaw.Fit.__init__).parameters.values()
    usable = any(p.name == "distribution" or p.kind is p.VAR_KEYWORD for p in params)
    w = torch.randn(120, 60, generator=torch.Generator().manual_seed(6))
    if not usable:
        with pytest.raises(ParameterError, match="'distribution' parameter of esd"):
            specmetrics.esd(w, backend="weightwatcher", distribution="truncated_power_law")
        with pytest.raises(ParameterError, match="'xmin' parameter of esd"):
            specmetrics.esd(w, backend="weightwatcher", xmin="peak")
        return
    tpl = specmetrics.esd(w, backend="weightwatcher", distribution="truncated_power_law")["weight"]
    assert tpl.fit.success and math.isfinite(tpl.metrics["Lambda"])
    peak = specmetrics.esd(w, backend="weightwatcher", xmin="peak")["weight"]
    assert peak.fit.success and peak.fit.method == "peak"


def _process_state() -> dict:
    import logging

    return {
        "root_level": logging.root.level,
        "root_handlers": list(logging.root.handlers),
        "matplotlib_level": logging.getLogger("matplotlib").level,
        "weightwatcher_level": logging.getLogger("weightwatcher").level,
        "filters": list(warnings.filters),
        "numpy_random": repr(np.random.get_state()),
    }


def test_ww_backend_leaves_process_state_unchanged(capfd):
    """Root logger, logger levels, warning filters and NumPy's global generator are as before
    an ``analyze()`` run; nothing is printed (M = 12 < 20 makes WeightWatcher's small-sample
    fit print "SMALL N PL FIT"; randomize=True draws from NumPy's global generator), and the
    shuffle is reproducible from ``seed``."""
    require_ww()
    w = torch.randn(30, 12, generator=torch.Generator().manual_seed(4))
    capfd.readouterr()
    before = _process_state()
    report = specmetrics.esd(w, backend="weightwatcher", randomize=True, seed=5)
    assert _process_state() == before
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    again = specmetrics.esd(w, backend="weightwatcher", randomize=True, seed=5)
    assert math.isfinite(report["weight"].metrics["rand_distance"])
    assert report["weight"].metrics["rand_distance"] == again["weight"].metrics["rand_distance"]


_IMPORT_PROBE = textwrap.dedent(
    """
    import json, logging, sys, warnings
    import numpy as np
    PRELOAD = %r
    if PRELOAD:  # what weightwatcher imports, so that only its own side effects remain
        import scipy.special, scipy.stats, sklearn.neighbors, matplotlib.pyplot, pandas, powerlaw, torch, tqdm
    def state():
        return {
            "root_level": logging.root.level,
            "root_handlers": [repr(h) for h in logging.root.handlers],
            "matplotlib_level": logging.getLogger("matplotlib").level,
            "weightwatcher_level": logging.getLogger("weightwatcher").level,
            "filters": [repr(f) for f in warnings.filters],
            "blanket_ignores": sum(f[0] == "ignore" and f[1] is None and f[2] is Warning and f[3] is None
                                   for f in warnings.filters),
            "numpy_random": repr(np.random.get_state()),
        }
    before = state()
    import torch, specmetrics
    net = torch.nn.Sequential(torch.nn.Linear(12, 30), torch.nn.Linear(30, 40))
    g = torch.Generator().manual_seed(0)
    for layer in net:  # a power-law spectrum (Pareto, alpha = 3): every fit succeeds, no warning
        n, m = layer.weight.shape
        k = min(n, m)
        u = torch.linalg.qr(torch.randn(n, k, generator=g))[0]
        v = torch.linalg.qr(torch.randn(m, k, generator=g))[0]
        lam = (1 - torch.rand(k, generator=g)) ** -0.5
        with torch.no_grad():
            layer.weight.copy_((u * lam.sqrt()) @ v.T)
    report = specmetrics.esd(net, backend="weightwatcher")
    assert "weightwatcher" in sys.modules
    after = state()
    print(json.dumps({"before": before, "after": after, "n": len(report)}))
    """
)


@pytest.mark.parametrize(
    "preload", [True, pytest.param(False, marks=pytest.mark.slow)], ids=["dependencies-preloaded", "bare-interpreter"]
)
def test_ww_import_side_effects_are_undone(preload):
    """In a fresh interpreter: importing and running WeightWatcher leaves the root logger, the
    matplotlib and weightwatcher logger levels and the NumPy global generator as they were, adds
    no blanket ``simplefilter("ignore")`` and prints nothing. With WeightWatcher's dependencies
    imported beforehand the warning filters are identical; from a bare interpreter, filters that
    SciPy & co. add when first imported are kept (only WeightWatcher's own are removed)."""
    require_ww()
    proc = subprocess.run(
        [sys.executable, "-c", _IMPORT_PROBE % (preload,)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1, f"unexpected output: {proc.stdout!r}"
    assert proc.stderr == "", proc.stderr
    probe = json.loads(lines[0])
    before, after = probe["before"], probe["after"]
    assert probe["n"] == 2
    unchanged = ("root_level", "root_handlers", "matplotlib_level", "weightwatcher_level", "blanket_ignores", "numpy_random")
    for key in unchanged:
        assert after[key] == before[key], key
    if preload:
        assert after["filters"] == before["filters"]
    else:
        assert set(before["filters"]) <= set(after["filters"])
