"""Layer-sequential capture: the blocks see exactly what they see in a plain forward pass."""
from __future__ import annotations

import pytest
import torch

from tiny_models import ARCHS, build, one_torch_thread, token_windows  # noqa: F401
from specmetrics.calibration import HessianStats, SequentialRunner, SquaredNormStats
from specmetrics.models import find_blocks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EXPECTED_BLOCKS = {
    "llama": ("model.layers", 7),
    "mistral": ("model.layers", 7),
    "qwen2": ("model.layers", 7),
    "gpt_neox": ("gpt_neox.layers", 4),
    "gpt2": ("transformer.h", 4),
    "opt": ("model.decoder.layers", 6),
    "bert": ("encoder.layer", 6),
}


def _plain_block_io(model, layout, ids):
    """Inputs and outputs of every block in one ordinary batched forward pass."""
    inputs, outputs = {}, {}
    handles = []
    for i, block in enumerate(layout.blocks):
        def pre(_m, args, kwargs, i=i):
            inputs[i] = (args[0] if args else kwargs["hidden_states"]).clone()

        def post(_m, _args, out, i=i):
            outputs[i] = (out if isinstance(out, torch.Tensor) else out[0]).clone()

        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post))
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in handles:
            h.remove()
    return inputs, outputs


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_blocks_and_prunable_modules(arch):
    model = build(arch)
    layout = find_blocks(model)
    container, per_block = EXPECTED_BLOCKS[arch]
    assert layout.container == container
    assert layout.names == (f"{container}.0", f"{container}.1")
    assert len(layout.modules) == 2 * per_block
    names = " ".join(layout.modules)
    for excluded in ("embed", "lm_head", "pooler", "wte", "wpe"):
        assert excluded not in names


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_capture_reproduces_the_dense_forward(arch):
    """Unpruned, every block's inputs and the last block's outputs equal the plain forward's."""
    model = build(arch)
    layout = find_blocks(model)
    ids = token_windows(3, 24)
    plain_in, plain_out = _plain_block_io(model, layout, ids)
    runner = SequentialRunner(model, layout, ids)
    seen = []
    for step in runner:
        seen.append(step.inputs.clone())
        step.modified = False
    assert len(seen) == len(layout)
    for i, got in enumerate(seen):
        torch.testing.assert_close(got, plain_in[i], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runner.outputs, plain_out[len(layout) - 1], rtol=1e-5, atol=1e-5)
    assert not model.training


@pytest.mark.parametrize("arch", ["llama", "gpt2", "bert"])
def test_statistics_match_hooks_on_a_plain_forward(arch):
    """Block 0's statistics are those of hooks on an ordinary forward, sequence by sequence."""
    model = build(arch)
    layout = find_blocks(model)
    ids = token_windows(3, 16)
    expected = {}
    handles = []
    for name, pm in layout.modules_of(0).items():
        expected[name] = SquaredNormStats()
        handles.append(pm.module.register_forward_hook(
            lambda _m, args, _o, s=expected[name]: s.update(args[0])))
    with torch.no_grad():
        for i in range(ids.shape[0]):
            model(ids[i:i + 1])
    for h in handles:
        h.remove()
    runner = SequentialRunner(model, layout, ids, make_stat=SquaredNormStats)
    for step in runner:
        if step.index == 0:
            assert set(step.stats) == set(expected)
            for name, stat in step.stats.items():
                assert stat.nsamples == 3
                assert torch.equal(stat.value, expected[name].value), name  # bitwise
        step.modified = False


def test_shared_inputs_share_one_statistic():
    model = build("llama")
    layout = find_blocks(model)
    created = []

    def make(n):
        created.append(n)
        return HessianStats(n)

    for step in SequentialRunner(model, layout, token_windows(2, 8), make_stat=make):
        p = step.name
        s = step.stats
        attn = f"{p}.self_attn"
        assert s[f"{attn}.q_proj"] is s[f"{attn}.k_proj"] is s[f"{attn}.v_proj"]
        assert s[f"{p}.mlp.gate_proj"] is s[f"{p}.mlp.up_proj"]
        distinct = {id(v) for v in s.values()}
        assert len(distinct) == 4  # qkv, o, gate/up, down
        step.modified = False
    assert created == [64, 64, 64, 128] * 2


def test_per_block_masks_are_recorded():
    """Qwen2 with a sliding window on layer 1 only: the blocks get different attention masks."""
    model = build("qwen2")
    layout = find_blocks(model)
    ids = token_windows(2, 24)
    from specmetrics.calibration import capture_block_inputs

    captured = capture_block_inputs(model, layout, ids)
    masks = [kw.get("attention_mask") for kw in captured.kwargs]
    assert all(kw.get("position_embeddings") is not None for kw in captured.kwargs)
    assert not (masks[0] is masks[1] or (isinstance(masks[0], torch.Tensor)
                                        and isinstance(masks[1], torch.Tensor)
                                        and torch.equal(masks[0], masks[1])))


def test_no_calibration_visits_blocks_without_forward():
    model = build("llama")
    layout = find_blocks(model)
    calls = []
    model.register_forward_pre_hook(lambda *a: calls.append(1))
    steps = list(SequentialRunner(model, layout, None))
    assert [s.index for s in steps] == [0, 1]
    assert all(s.inputs is None and s.stats is None for s in steps)
    assert calls == []


def test_block_forward_is_restored_after_capture():
    model = build("llama")
    layout = find_blocks(model)
    for step in SequentialRunner(model, layout, token_windows(1, 8)):
        step.modified = False
    assert all("forward" not in vars(block) for block in layout.blocks)
