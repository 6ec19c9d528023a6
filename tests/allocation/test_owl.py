"""OWL from calibration activations on a small LLaMA-named torch model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from specmetrics import ParameterError
from specmetrics.allocation import OWLConfig, allocate
from specmetrics.allocation.owl import capture_input_sq_norms, unit_outlier_ratios, wanda_scores


class _Attn(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (nn.Linear(d, d, bias=False)
                                                              for _ in range(4))

    def forward(self, x):
        return self.o_proj(torch.tanh(self.q_proj(x)) * self.k_proj(x) + self.v_proj(x))


class _MLP(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.gate_proj, self.up_proj = nn.Linear(d, f, bias=False), nn.Linear(d, f, bias=False)
        self.down_proj = nn.Linear(f, d, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))


class _Block(nn.Module):
    def __init__(self, d, f):
        super().__init__()
        self.self_attn, self.mlp = _Attn(d), _MLP(d, f)

    def forward(self, x):
        x = x + self.self_attn(x)
        return x + self.mlp(x)


class _Inner(nn.Module):
    def __init__(self, vocab, d, f, n):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(_Block(d, f) for _ in range(n))


class TinyLlama(nn.Module):
    def __init__(self, vocab=50, d=16, f=40, n=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.model = _Inner(vocab, d, f, n)
        self.lm_head = nn.Linear(d, vocab, bias=False)
        with torch.no_grad():  # heavy-tailed weights in some blocks, so outlier ratios differ
            for i, layer in enumerate(self.model.layers):
                for p in layer.parameters():
                    p.mul_(1 + 3 * (torch.rand_like(p) < 0.01 * (i + 1)))

    def forward(self, ids):
        x = self.model.embed_tokens(ids)
        for layer in self.model.layers:
            x = layer(x)
        return self.lm_head(x)


@pytest.fixture(scope="module")
def model_and_data():
    model = TinyLlama()
    ids = torch.randint(0, 50, (6, 12), generator=torch.Generator().manual_seed(0))
    return model, ids


def _manual_norms(model, ids):
    """Σ x² per input column of every block Linear, captured independently of the library."""
    inputs = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: inputs.setdefault(n, []).append(i[0]))
             for n, m in model.named_modules() if isinstance(m, nn.Linear) and "layers" in n]
    with torch.no_grad():
        model(ids)
    for h in hooks:
        h.remove()
    return {n: torch.cat([x.reshape(-1, x.shape[-1]) for x in xs]).double().pow(2).sum(0)
            for n, xs in inputs.items()}


def test_outlier_ratios_and_ratios(model_and_data):
    model, ids = model_and_data
    alloc = allocate(model, 0.6, method=OWLConfig(m=3.0, lam=0.08, calibration=ids, batch_size=2),
                     clip=None)
    assert len(alloc) == 28 and "lm_head" not in alloc
    assert alloc.settings["metric"] == "outlier_ratio"
    norms = _manual_norms(model, ids)
    d = []
    for i in range(4):
        names = [n for n in norms if n.startswith(f"model.layers.{i}.")]
        pooled = np.concatenate([
            wanda_scores(model.get_submodule(n).weight.detach().numpy(), norms[n].numpy()).ravel()
            for n in names])
        d.append(100.0 * np.count_nonzero(pooled > 3.0 * pooled.mean()) / pooled.size)
    d = np.array(d)
    frame = alloc.to_frame()
    np.testing.assert_allclose(frame["score"].to_numpy(), d, rtol=0, atol=1e-9)
    assert d.max() > d.min()
    # OWL's formula (blocks of equal size)
    keep = (d - d.min()) * (1 / (d.max() - d.min()) * 0.08 * 2)
    keep = keep - keep.mean() + (1 - 0.6)
    np.testing.assert_allclose(frame["ratio"].to_numpy(), 1 - keep, rtol=0, atol=1e-12)
    assert alloc.achieved == pytest.approx(0.6, abs=1e-12)


def test_precomputed_norms_give_the_same(model_and_data):
    model, ids = model_and_data
    from_ids = allocate(model, 0.5, method=OWLConfig(calibration=ids))
    names = list(from_ids)
    norms = capture_input_sq_norms(model, names, ids)
    assert all(norms[n].dtype == torch.float32 and norms[n].shape == (model.get_submodule(n).in_features,)
               for n in names)
    from_norms = allocate(model, 0.5, method=OWLConfig(calibration=norms))
    assert max(abs(from_ids[n] - from_norms[n]) for n in names) < 1e-12
    # batches as an iterable of dicts
    from_batches = allocate(model, 0.5, method=OWLConfig(calibration=[{"ids": ids[:3]},
                                                                      {"ids": ids[3:]}]))
    assert max(abs(from_ids[n] - from_batches[n]) for n in names) < 1e-9


def test_owl_split_units_and_errors(model_and_data):
    model, ids = model_and_data
    alloc = allocate(model, 0.5, method=OWLConfig(calibration=ids), units="split",
                     budget="per_group")
    assert len(alloc.to_frame()) == 8
    for value in alloc.achieved_by_group().values():
        assert value == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ParameterError, match="calibration"):
        allocate(model, 0.5, method="owl")
    ratios = unit_outlier_ratios(model, {"u": ["model.layers.0.mlp.up_proj"]},
                                 {"model.layers.0.mlp.up_proj": torch.ones(16)}, 5.0)
    assert 0.0 <= ratios["u"] <= 100.0
