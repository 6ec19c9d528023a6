"""Shared fixtures of the Hessian tests: a small float64 MLP with its dense Hessian."""
from __future__ import annotations

import pytest
import torch

pytest.importorskip("curvlinops")


def make_mlp(seed: int = 0, n: int = 24):
    """A 4-6-3 tanh MLP in float64 with regression data split into two uneven batches."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    net = net.double().eval()
    X = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    y = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    return net, X, y


def dense_hessian(net, X, y, loss, names=None) -> torch.Tensor:
    """``torch.func.hessian`` of ``loss(net(X), y)`` in the flat parameters ``names``."""
    from torch.func import functional_call

    params = dict(net.named_parameters())
    names = list(params) if names is None else list(names)
    shapes = [params[n].shape for n in names]
    flat = torch.cat([params[n].detach().reshape(-1) for n in names])
    frozen = {n: p.detach() for n, p in params.items() if n not in names}

    def f(w):
        d, start = dict(frozen), 0
        for n, s in zip(names, shapes):
            size = s.numel()
            d[n] = w[start:start + size].reshape(s)
            start += size
        return loss(functional_call(net, d, (X,)), y)

    return torch.func.hessian(f)(flat).detach()


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread (the machines share two cores between several processes)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def mlp():
    net, X, y = make_mlp()
    loss = torch.nn.MSELoss()
    H = dense_hessian(net, X, y, loss)
    return net, X, y, loss, H


@pytest.fixture(scope="module")
def mlp_operator(mlp):
    from specmetrics.hessian import hessian_operator

    net, X, y, loss, H = mlp
    return hessian_operator(net, [(X[:9], y[:9]), (X[9:], y[9:])], loss=loss)


@pytest.fixture(scope="session")
def mlp_factory():
    """``make_mlp(seed, n) -> (net, X, y)``."""
    return make_mlp


@pytest.fixture(scope="session")
def dense():
    """``dense_hessian(net, X, y, loss, names=None)``: the reference Hessian."""
    return dense_hessian
