"""A failure part-way through ``prune``: precise report of what changed, or an exact restore."""
from __future__ import annotations

import pytest
import torch

import specmetrics.pruning.sparsegpt as api
from tiny_models import build, model_output, one_torch_thread, token_windows  # noqa: F401
from specmetrics.models import find_blocks
from specmetrics.pruning import CholeskyError, PruneError, SparseGPTConfig, prune

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAIL_AT = "model.layers.1.mlp.gate_proj"  # second block, after its attention matrices


def _failing_sparsegpt(monkeypatch, exc):
    real = api.sparsegpt_prune
    calls = []

    def fake(weight, hessian, sparsity, **kwargs):
        calls.append(weight.shape)
        if len(calls) == fake.fail_on_call:
            raise exc
        return real(weight, hessian, sparsity, **kwargs)

    monkeypatch.setattr(api, "sparsegpt_prune", fake)
    return fake


def _fail_on(model, name):
    """1-based position of ``name`` among the modules sparsegpt_prune is called for."""
    return list(find_blocks(model).modules).index(name) + 1


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_failure_names_exactly_the_changed_modules(monkeypatch):
    model = build("llama")
    names = list(find_blocks(model).modules)
    fake = _failing_sparsegpt(monkeypatch, CholeskyError("H is not positive definite"))
    fake.fail_on_call = _fail_on(model, FAIL_AT)
    before = _state(model)
    with pytest.raises(PruneError) as info:
        prune(model, 0.5, method=SparseGPTConfig(), calibration=token_windows(2, 16),
              nsamples=2)
    err = info.value
    expected = names[:names.index(FAIL_AT)]
    assert err.changed == expected
    assert err.restored is False
    assert err.module == FAIL_AT
    assert isinstance(err.__cause__, CholeskyError)
    message = str(err)
    assert FAIL_AT in message and "CholeskyError" in message
    for name in expected:
        assert name in message
    for name in names[names.index(FAIL_AT):]:
        assert f"{name}," not in message and not message.endswith(f"{name}.")
    state = model.state_dict()
    for name in names:
        same = torch.equal(state[f"{name}.weight"], before[f"{name}.weight"])
        assert same == (name not in expected), name
    assert not model.training
    assert all("forward" not in vars(b) for b in find_blocks(model).blocks)


def test_atomic_restores_the_model_bitwise(monkeypatch):
    model = build("llama")
    ids = token_windows(2, 16)
    fake = _failing_sparsegpt(monkeypatch, CholeskyError("H is not positive definite"))
    fake.fail_on_call = _fail_on(model, FAIL_AT)
    before = _state(model)
    logits = model_output(model, ids)
    with pytest.raises(PruneError) as info:
        prune(model, 0.5, method=SparseGPTConfig(), calibration=ids, nsamples=2, atomic=True)
    assert info.value.changed == [] and info.value.restored is True
    assert "restored" in str(info.value)
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert torch.equal(model_output(model, ids), logits)


def test_atomic_success_prunes_normally(monkeypatch):
    model = build("llama")
    report = prune(model, 0.5, method=SparseGPTConfig(), calibration=token_windows(2, 16),
                   nsamples=2, atomic=True)
    assert report.achieved == pytest.approx(0.5)


@pytest.mark.parametrize("atomic", [False, True])
def test_keyboard_interrupt_propagates_with_the_changed_list(monkeypatch, atomic):
    model = build("llama")
    names = list(find_blocks(model).modules)
    fake = _failing_sparsegpt(monkeypatch, KeyboardInterrupt())
    fake.fail_on_call = _fail_on(model, FAIL_AT)
    before = _state(model)
    with pytest.raises(KeyboardInterrupt) as info:
        prune(model, 0.5, method=SparseGPTConfig(), calibration=token_windows(2, 16),
              nsamples=2, atomic=atomic)
    exc = info.value
    assert exc.restored is atomic
    assert exc.changed == ([] if atomic else names[:names.index(FAIL_AT)])
    assert any("prune failed" in note for note in getattr(exc, "__notes__", []))
    if atomic:
        for key, value in before.items():
            assert torch.equal(model.state_dict()[key], value), key


def test_failure_in_the_forward_pass_is_reported(monkeypatch):
    """An exception inside a block's re-run (not in a pruning function) is also a PruneError."""
    model = build("llama")
    layout = find_blocks(model)
    block = layout.blocks[1]

    def boom(*args, **kwargs):
        raise RuntimeError("out of memory")

    block.mlp.register_forward_pre_hook(lambda *a: boom())
    with pytest.raises(PruneError) as info:
        prune(model, 0.5, method="wanda", calibration=token_windows(2, 16), nsamples=2)
    # block 1's statistics pass failed: block 0 was pruned, nothing of block 1
    assert info.value.changed == list(layout.modules_of(0))
    assert info.value.module is None
    assert "out of memory" in str(info.value)
