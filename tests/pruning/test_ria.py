"""RIA (relative importance and activations): scores, masks, config, and ``prune(method="ria")``.

The formula (Zhang et al., ICLR 2024): ``(|W_ij| / Σ_i|W_ij| + |W_ij| / Σ_j|W_ij|) · ‖X_j‖₂^a``,
checked on a case worked by hand, against its properties (scale invariance, the weights-only
case ``a = 0``, Wanda's masks where every column has the same absolute sum, exact counts, valid
N:M groups) and end to end on a tiny random LLaMA.
"""
from __future__ import annotations

import copy
import math
import re

import pytest
import torch

import specmetrics
from tiny_models import build, one_torch_thread, token_windows  # noqa: F401
from specmetrics import ParameterError
from specmetrics.calibration import SquaredNormStats
from specmetrics.models import find_blocks
from specmetrics.pruning import (METHODS, DSnoTConfig, RIAConfig, apply_mask, method_names,
                                 nm_mask, prune, resolve_method, ria_mask, ria_scores,
                                 spread_counts, wanda_mask)

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PARAM_MESSAGE = re.compile(r"^The '\w+' parameter of [\w.]+ must be .+\. Got .+ instead\.$")

# the worked example: |W| row sums R = (6, 5), column sums C = (5, 2, 4); s = (4, 1, 16)
W = torch.tensor([[1.0, -2.0, 3.0], [4.0, 0.0, -1.0]])
S = torch.tensor([4.0, 1.0, 16.0])
RI = torch.tensor([[1 / 5 + 1 / 6, 2 / 2 + 2 / 6, 3 / 4 + 3 / 6],
                   [4 / 5 + 4 / 5, 0.0, 1 / 4 + 1 / 5]])  # |W|/C + |W|/R


def random_layer(rows=16, cols=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g)
    s = torch.rand(cols, generator=g) * 10 + 0.01
    s[::7] *= 100.0  # a few outlier channels, as in LLM activations
    return w, s


# --- the scores ----------------------------------------------------------------------------------

def test_scores_by_hand():
    # a = 0.5: the factor is ||X_j||^0.5 = s_j^0.25 = (sqrt 2, 1, 2)
    factor = torch.tensor([math.sqrt(2.0), 1.0, 2.0])
    torch.testing.assert_close(ria_scores(W, S), RI * factor)
    torch.testing.assert_close(ria_scores(W, S, power=1.0), RI * torch.tensor([2.0, 1.0, 4.0]))
    torch.testing.assert_close(ria_scores(W, S, power=0.0), RI)
    assert ria_scores(W, S).dtype == torch.float32


def test_masks_by_hand():
    # a = 0.5 scores: [[0.519, 1.333, 2.5], [2.263, 0, 0.9]]; half of 6 weights is 3
    assert ria_mask(W, S, 0.5).int().tolist() == [[1, 0, 0], [0, 1, 1]]
    # per row: spread_counts([3, 3], 0.5) = [2, 1]
    assert ria_mask(W, S, 0.5, comparison="row").int().tolist() == [[1, 1, 0], [0, 1, 0]]
    # a = 1 scores: [[0.733, 1.333, 5], [3.2, 0, 1.8]]
    assert ria_mask(W, S, 0.5, power=1.0).int().tolist() == [[1, 1, 0], [0, 1, 0]]
    # a = 0: RI alone, [[0.367, 1.333, 1.25], [1.6, 0, 0.45]]
    assert ria_mask(W, S, 0.5, power=0.0).int().tolist() == [[1, 0, 0], [0, 1, 1]]
    assert ria_mask(W, S, 0.5, power=0.0, comparison="row").int().tolist() == \
        [[1, 0, 1], [0, 1, 0]]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_scores_agree_with_the_formula_in_every_dtype(dtype):
    w, s = random_layer(12, 20, seed=3)
    w = w.to(dtype)
    a = w.double().abs()
    expected = (a / a.sum(0) + a / a.sum(1, keepdim=True)) * s.double().sqrt() ** 0.5
    got = ria_scores(w, s)
    assert got.dtype == torch.float32 and got.shape == w.shape
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=0)
    assert torch.equal(w, w.clone())  # not modified


def test_zero_rows_columns_and_dead_channels_score_zero():
    w, s = random_layer(6, 8, seed=1)
    w[2] = 0.0  # an all-zero row
    w[:, 5] = 0.0  # an all-zero column
    s[3] = 0.0  # a dead input channel
    scores = ria_scores(w, s)
    assert bool(torch.isfinite(scores).all())
    assert bool((scores[2] == 0).all()) and bool((scores[:, 5] == 0).all())
    assert bool((scores[:, 3] == 0).all())
    assert bool((ria_scores(w, s, power=0.0)[:, 3] > 0).any())  # a = 0 ignores s
    # the dead channel and the zeros go first
    mask = ria_mask(w, s, (8 + 6 + 5 - 1) / 48)
    assert bool(mask[2].all()) and bool(mask[:, 5].all()) and bool(mask[:, 3].all())


def test_relative_importance_is_symmetric_in_rows_and_columns():
    w, _ = random_layer(9, 14, seed=2)
    torch.testing.assert_close(ria_scores(w.T, torch.ones(9), power=0.0),
                               ria_scores(w, torch.ones(14), power=0.0).T)


# --- properties of the masks ---------------------------------------------------------------------

@pytest.mark.parametrize("comparison", ["matrix", "row"])
@pytest.mark.parametrize("c", [2.0 ** -10, 0.37, 7.5, 2.0 ** 12])
def test_masks_do_not_change_when_the_weights_are_scaled(c, comparison):
    w, s = random_layer(seed=4)
    if math.log2(c).is_integer():  # a power of two scales exactly: the scores are identical
        assert torch.equal(ria_scores(c * w, s), ria_scores(w, s))
    for sparsity in (0.3, 0.5, 0.7):
        assert torch.equal(ria_mask(c * w, s, sparsity, comparison=comparison),
                           ria_mask(w, s, sparsity, comparison=comparison))
    assert torch.equal(ria_mask(c * w, s, 0.5, pattern="2:4"), ria_mask(w, s, 0.5, pattern="2:4"))


@pytest.mark.parametrize("k", [1e-3, 3.0, 1e4])
def test_masks_do_not_change_when_the_activations_are_scaled(k):
    w, s = random_layer(seed=5)
    for comparison in ("matrix", "row"):
        assert torch.equal(ria_mask(w, k * s, 0.6, comparison=comparison),
                           ria_mask(w, s, 0.6, comparison=comparison))


def test_power_zero_ignores_the_activations():
    w, s = random_layer(seed=6)
    other = torch.rand(s.shape, generator=torch.Generator().manual_seed(9)) * 1e3
    for comparison in ("matrix", "row"):
        assert torch.equal(ria_mask(w, s, 0.5, power=0.0, comparison=comparison),
                           ria_mask(w, other, 0.5, power=0.0, comparison=comparison))
    assert not torch.equal(ria_mask(w, s, 0.5), ria_mask(w, other, 0.5))


@pytest.mark.parametrize("sparsity, pattern", [(0.3, "unstructured"), (0.5, "unstructured"),
                                               (0.7, "unstructured"), (0.5, "2:4"),
                                               (0.5, "4:8")])
def test_power_one_per_row_is_wanda_when_columns_have_equal_sums(sparsity, pattern):
    """With every column's absolute sum equal, ``|W_ij|/C_j`` is ``|W_ij|`` times a constant and
    ``|W_ij|/R_i`` a constant within each row: per row (and per N:M group) RIA with a = 1 ranks
    as Wanda's ``|W_ij| ‖X_j‖₂``."""
    w, s = random_layer(seed=7)
    w = (w.double() / w.double().abs().sum(0)).float()  # column sums 1, row sums uneven
    assert float(w.abs().sum(1).std()) > 0.05
    got = ria_mask(w, s, sparsity, pattern=pattern, power=1.0, comparison="row")
    assert torch.equal(got, wanda_mask(w, s, sparsity, pattern=pattern))
    # with a = 0.5 the activations weigh less than in Wanda: the masks differ
    assert not torch.equal(ria_mask(w, s, sparsity, pattern=pattern, comparison="row"), got)


@pytest.mark.parametrize("shape", [(16, 32), (7, 13), (1, 5), (5, 1)])
@pytest.mark.parametrize("sparsity", [0.0, 0.1, 0.5, 0.73, 1.0])
def test_exact_counts(shape, sparsity):
    w, s = random_layer(*shape, seed=8)
    n = w.numel()
    matrix = ria_mask(w, s, sparsity)
    assert matrix.dtype == torch.bool and matrix.shape == w.shape
    assert int(matrix.sum()) == math.floor(n * sparsity + 0.5)
    # every pruned score <= every kept one
    scores = ria_scores(w, s)
    if 0 < int(matrix.sum()) < n:
        assert float(scores[matrix].max()) <= float(scores[~matrix].min())
    rows = ria_mask(w, s, sparsity, comparison="row")
    assert rows.sum(dim=1).tolist() == spread_counts([shape[1]] * shape[0], sparsity)


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8", "3:4"])
def test_nm_masks_are_valid(pattern):
    n, m = map(int, pattern.split(":"))
    w, s = random_layer(8, 24, seed=10)
    for comparison in ("matrix", "row"):  # ignored for N:M
        mask = ria_mask(w, s, n / m, pattern=pattern, comparison=comparison)
        assert bool((mask.reshape(8, -1, m).sum(-1) == n).all())
        assert torch.equal(mask, nm_mask(ria_scores(w, s), n, m))


# --- bad inputs ----------------------------------------------------------------------------------

def _good():
    w, s = random_layer(4, 8, seed=11)
    return w, s


@pytest.mark.parametrize("change, name", [
    (lambda w, s: (w[0], s), "weight"),
    (lambda w, s: (w.int(), s), "weight"),
    (lambda w, s: (w.numpy(), s), "weight"),
    (lambda w, s: (w.index_fill(1, torch.tensor([2]), math.nan), s), "weight"),
    (lambda w, s: (w.index_fill(1, torch.tensor([2]), math.inf), s), "weight"),
    (lambda w, s: (w, s[:-1]), "sq_norms"),
    (lambda w, s: (w, s.reshape(1, -1)), "sq_norms"),
    (lambda w, s: (w, s.tolist()), "sq_norms"),
    (lambda w, s: (w, -s), "sq_norms"),
    (lambda w, s: (w, s.index_fill(0, torch.tensor([1]), math.nan)), "sq_norms"),
    (lambda w, s: (w, (s * 10).long()), "sq_norms"),
])
def test_scores_and_masks_reject_bad_data(change, name):
    w, s = change(*_good())
    for call in (lambda: ria_scores(w, s), lambda: ria_mask(w, s, 0.5)):
        with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
            call()
        assert info.value.parameter == name


@pytest.mark.parametrize("kwargs, name", [
    (dict(power=-0.5), "power"), (dict(power=math.inf), "power"), (dict(power=math.nan), "power"),
    (dict(power="0.5"), "power"), (dict(power=True), "power"), (dict(power=None), "power"),
    (dict(comparison="column"), "comparison"), (dict(comparison=None), "comparison"),
    (dict(sparsity=1.5), "sparsity"), (dict(sparsity=-0.1), "sparsity"),
    (dict(sparsity=0.7, pattern="2:4"), "sparsity"), (dict(pattern="2-4"), "pattern"),
    (dict(pattern="4:2"), "pattern"), (dict(pattern="3:5", sparsity=0.6), "pattern"),
])
def test_masks_reject_bad_options(kwargs, name):
    w, s = _good()
    kwargs = {"sparsity": 0.5, **kwargs}
    sparsity = kwargs.pop("sparsity")
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        ria_mask(w, s, sparsity, **kwargs)
    assert info.value.parameter == name and info.value.function == "ria_mask"
    if "power" in kwargs:
        with pytest.raises(ParameterError, match="'power' parameter of ria_scores"):
            ria_scores(w, s, power=kwargs["power"])


def test_numpy_scalars_are_accepted():
    np = pytest.importorskip("numpy")
    w, s = _good()
    assert torch.equal(ria_mask(w, s, np.float64(0.5), power=np.float32(0.5)),
                       ria_mask(w, s, 0.5))
    assert RIAConfig(power=np.int64(1)).power == 1.0


# --- the config and the registry -----------------------------------------------------------------

def test_config_defaults_and_registry():
    cfg = RIAConfig()
    assert (cfg.pattern, cfg.power, cfg.comparison, cfg.nm) == ("unstructured", 0.5, "matrix",
                                                                None)
    assert cfg.name == "ria" and cfg.needs_calibration and cfg.statistic is SquaredNormStats
    assert METHODS["ria"] is RIAConfig and "ria" in method_names()
    assert resolve_method("ria") == cfg and resolve_method("RIA") == cfg
    assert resolve_method("ria", pattern="2:4") == RIAConfig(pattern="2:4")
    assert RIAConfig(pattern="4:8").nm == (4, 8)
    assert isinstance(RIAConfig(power=1).power, float)
    assert hash(RIAConfig(power=1)) == hash(RIAConfig(power=1.0))
    assert specmetrics.RIAConfig is RIAConfig and "RIAConfig" in specmetrics.__all__
    with pytest.raises(AttributeError):
        cfg.power = 1.0


@pytest.mark.parametrize("kwargs, name", [
    (dict(pattern="1:1"), "pattern"), (dict(pattern=None), "pattern"),
    (dict(power=-1), "power"), (dict(power="a"), "power"),
    (dict(comparison="rows"), "comparison"), (dict(pattern="2:4", power=1.0), None),
    (dict(comparison="row", power=0), None),
])
def test_config_validates_its_fields(kwargs, name):
    if name is None:
        RIAConfig(**kwargs)
        return
    with pytest.raises(ParameterError, match=PARAM_MESSAGE) as info:
        RIAConfig(**kwargs)
    assert info.value.parameter == name and info.value.function == "RIAConfig"


def test_prune_matrix_is_the_mask_applied():
    w, s = random_layer(seed=12)
    stat = SquaredNormStats(w.shape[1])
    x = torch.randn(3, 10, w.shape[1], generator=torch.Generator().manual_seed(1))
    stat.update(x)
    cfg = RIAConfig(power=0.8, comparison="row")
    update = cfg.prune_matrix(w, stat, 0.6)
    expected = apply_mask(w, ria_mask(w, stat.value, 0.6, power=0.8, comparison="row"))
    assert torch.equal(update.weight, expected) and update.extras == {}


# --- end to end ----------------------------------------------------------------------------------

def _hook_stats(model, ids, block=0):
    """SquaredNormStats of block ``block``'s matrices on the dense model (block 0's inputs do
    not depend on pruning)."""
    layout = find_blocks(model)
    stats, handles = {}, []
    for name, pm in layout.modules_of(block).items():
        stats[name] = SquaredNormStats()
        handles.append(pm.module.register_forward_hook(
            lambda _m, a, _o, s=stats[name]: s.update(a[0])))
    with torch.no_grad():
        for i in range(ids.shape[0]):
            model(ids[i:i + 1])
    for h in handles:
        h.remove()
    return stats


def test_prune_ria_end_to_end():
    ids = token_windows(4, 32)
    dense = build("llama")
    model = copy.deepcopy(dense)
    stats = _hook_stats(dense, ids)
    report = specmetrics.prune(model, 0.5, method="ria", calibration=ids, nsamples=4,
                               measure_error=True)
    assert report.method == RIAConfig()
    layout, dense_layout = find_blocks(model), find_blocks(dense)
    assert list(report) == list(layout.modules) and len(report) == 14
    for name, res in report.items():
        w, w0 = layout.modules[name].module.weight, dense_layout.modules[name].module.weight
        assert int((w == 0).sum()) == round(w.numel() * 0.5)  # exact per matrix
        assert res.achieved == pytest.approx(0.5, abs=1e-12)
        assert torch.equal(w[w != 0], w0[w != 0])  # no weight update
        assert 0.0 < res.error < 1.0
    for name, stat in stats.items():  # block 0: the pure function on the dense inputs
        w0 = dense_layout.modules[name].module.weight
        assert torch.equal(layout.modules[name].module.weight,
                           apply_mask(w0, ria_mask(w0, stat.value, 0.5))), name
    with torch.no_grad():
        assert bool(torch.isfinite(model(ids[:1]).logits).all())
    # RIA is not Wanda on this model
    wanda = copy.deepcopy(dense)
    prune(wanda, 0.5, method="wanda", calibration=ids, nsamples=4)
    assert any(not torch.equal(pm.module.weight, layout.modules[n].module.weight)
               for n, pm in find_blocks(wanda).modules.items())


def test_prune_ria_per_row_and_two_four():
    ids = token_windows(4, 32)
    model = build("llama")
    prune(model, 0.7, method=RIAConfig(comparison="row"), calibration=ids)
    for pm in find_blocks(model).modules.values():
        w = pm.module.weight
        assert (w == 0).sum(dim=1).tolist() == spread_counts([w.shape[1]] * w.shape[0], 0.7)
    model = build("llama")
    report = prune(model, None, method=RIAConfig(pattern="2:4"), calibration=ids)
    assert report.achieved == 0.5
    for pm in find_blocks(model).modules.values():
        w = pm.module.weight
        assert bool(((w == 0).reshape(w.shape[0], -1, 4).sum(-1) == 2).all())


def test_prune_with_power_zero_does_not_depend_on_the_calibration():
    """No weight update and a = 0: every mask is the weights' own, whatever the inputs."""
    dense = build("llama")
    a, b = copy.deepcopy(dense), copy.deepcopy(dense)
    prune(a, 0.6, method=RIAConfig(power=0.0), calibration=token_windows(2, 16, seed=1))
    prune(b, 0.6, method=RIAConfig(power=0.0), calibration=token_windows(3, 24, seed=2))
    for (name, pa), pb in zip(find_blocks(a).modules.items(), find_blocks(b).modules.values()):
        w0 = find_blocks(dense).modules[name].module.weight
        assert torch.equal(pa.module.weight, pb.module.weight), name
        ones = torch.ones(w0.shape[1])
        assert torch.equal(pa.module.weight, apply_mask(w0, ria_mask(w0, ones, 0.6,
                                                                    power=0.0))), name


def test_dsnot_refines_an_ria_mask():
    ids = token_windows(4, 32)
    model = build("llama")
    report = prune(model, 0.6, method=DSnoTConfig(base=RIAConfig()), calibration=ids)
    assert report.method.base == RIAConfig()
    for name, res in report.items():
        assert res.achieved * res.n_params == round(res.n_params * 0.6)


def test_prune_ria_without_calibration_is_refused():
    model = build("llama")
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ParameterError, match="'calibration' parameter of prune"):
        prune(model, 0.5, method="ria")
    with pytest.raises(ParameterError, match="'sparsity' parameter of prune"):
        prune(model, 0.7, method=RIAConfig(pattern="2:4"), calibration=token_windows(2, 16))
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# --- the CLI -------------------------------------------------------------------------------------

def test_cli_prune_with_ria(tmp_path, capsys):
    pytest.importorskip("transformers")
    pd = pytest.importorskip("pandas")
    from hf_tiny import save_tiny

    from specmetrics.calibration import load_text
    from specmetrics.cli import main

    folder = save_tiny(tmp_path / "llama", "llama")
    calib = tmp_path / "calib.txt"
    calib.write_text(load_text("calibration"), encoding="utf-8")
    out = tmp_path / "report.csv"
    code = main(["prune", str(folder), "--target", "0.5", "--method", "ria", "--calibration",
                 str(calib), "--nsamples", "2", "--seqlen", "32", "--out", str(out)])
    stdout, err = capsys.readouterr()
    assert code == 0, err
    assert "ria" in stdout and "14 matrices: target 0.5, achieved 0.500000" in stdout
    frame = pd.read_csv(out, index_col="name")
    assert len(frame) == 14 and bool((frame["achieved"] == 0.5).all())
