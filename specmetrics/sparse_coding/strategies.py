"""Hypothesis strategies for property-based tests on synthetic sparse linear data.

Use them in your own tests (``pip install hypothesis``; this module is the only one of
specmetrics that imports it)::

    from hypothesis import given
    from specmetrics.sparse_coding import estimate_sparsity
    from specmetrics.sparse_coding.strategies import control_data, sparse_linear_data

    @given(sparse_linear_data(d=32, n=2048, sigma=0.02))
    def test_my_metric_finds_sparsity(syn):
        ...  # syn.data, syn.dictionary, syn.coefficients, syn.a

Every argument is either a fixed value or a Hypothesis strategy. The data are built by
:func:`~specmetrics.sparse_coding.make_sparse_linear` / :func:`~specmetrics.sparse_coding.
make_control` from a drawn seed, so Hypothesis controls, shrinks and replays all the
randomness (the seed, then the sizes, shrink towards small values).
"""
from __future__ import annotations

import math
from typing import Any

import torch

try:
    from hypothesis import strategies as st
    from hypothesis.strategies import SearchStrategy
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError("specmetrics.sparse_coding.strategies needs hypothesis: "
                      "pip install hypothesis (or 'specmetrics[test]')") from err

from .synthetic import CONTROL_KINDS, SyntheticActivations, make_control, make_sparse_linear

__all__ = ["seeds", "sparse_linear_data", "control_data", "scales"]

#: Seeds for the generators (``torch.Generator.manual_seed``).
seeds = st.integers(min_value=0, max_value=2**31 - 1)


def _strategy(value: Any) -> SearchStrategy:
    return value if isinstance(value, SearchStrategy) else st.just(value)


@st.composite
def sparse_linear_data(draw, *, d: Any = None, n: Any = None, a: Any = None,
                       n_features: Any = None, sigma: Any = 0.1,
                       max_a_fraction: float = 0.08,
                       dtype: torch.dtype = torch.float32) -> SyntheticActivations:
    """Sparse linear data with a planted dictionary (:func:`make_sparse_linear`).

    Parameters
    ----------
    d : int or strategy, default integers in [8, 32]
    n : int or strategy, default integers in [256, 1024]
    a : float or strategy, optional
        Default: floats in ``[0.5, max(0.5, max_a_fraction · d)]`` (the regime where the
        paper's estimate tracks the truth, ``a ≤ 0.08 d``).
    n_features : int or strategy, optional
        Default ``4 d``.
    sigma : float or strategy, default 0.1
    max_a_fraction : float, default 0.08
        Upper end of the default range of ``a``, as a fraction of ``d``.
    dtype : torch.dtype, default torch.float32

    Returns
    -------
    SearchStrategy of SyntheticActivations
    """
    d_value = draw(_strategy(st.integers(8, 32) if d is None else d))
    n_value = draw(_strategy(st.integers(256, 1024) if n is None else n))
    m_value = None if n_features is None else draw(_strategy(n_features))
    if a is None:
        top = max(0.5, max_a_fraction * d_value)
        a_value = draw(st.floats(0.5, top, allow_nan=False, allow_infinity=False))
    else:
        a_value = draw(_strategy(a))
    sigma_value = draw(_strategy(sigma))
    seed = draw(seeds)
    return make_sparse_linear(d_value, n_value, a_value, n_features=m_value, sigma=sigma_value,
                              seed=seed, dtype=dtype)


@st.composite
def control_data(draw, *, kind: Any = None, d: Any = None, n: Any = None,
                 dtype: torch.dtype = torch.float32) -> SyntheticActivations:
    """Control data (:func:`make_control`): Gaussian, Rademacher or Cauchy-norm samples.

    Parameters
    ----------
    kind : str or strategy, optional
        Default: any of :data:`~specmetrics.sparse_coding.CONTROL_KINDS`.
    d : int or strategy, default integers in [8, 32]
    n : int or strategy, default integers in [256, 1024]
    dtype : torch.dtype, default torch.float32

    Returns
    -------
    SearchStrategy of SyntheticActivations
    """
    kind_value = draw(_strategy(st.sampled_from(CONTROL_KINDS) if kind is None else kind))
    d_value = draw(_strategy(st.integers(8, 32) if d is None else d))
    n_value = draw(_strategy(st.integers(256, 1024) if n is None else n))
    return make_control(kind_value, d_value, n_value, seed=draw(seeds), dtype=dtype)


def scales(min_value: float = 1e-3, max_value: float = 1e3) -> SearchStrategy:
    """Positive rescaling factors, log-uniform over ``[min_value, max_value]``."""
    exponents = st.floats(math.log10(min_value), math.log10(max_value), allow_nan=False)
    return exponents.map(lambda e: float(10.0 ** e))
