"""Synthetic activations with a known answer: sparse linear data and the three controls.

Sparse linear data (Deng, Tao & Benton 2023, appendix)
------------------------------------------------------
``make_sparse_linear(d, n, a)`` draws

- ``m = n_features`` (default ``4 d``) feature directions ``f_1 .. f_m`` independently and
  uniformly on the unit sphere of ``R^d`` (normalised standard Gaussian vectors): the columns of
  the planted ``dictionary`` (d × m);
- for every sample ``j`` and feature ``i`` independently, a coefficient ``α_ij`` that is non-zero
  with probability ``a / m`` and then uniform on ``(0, 1)``: each sample has on average ``a``
  active features (``Binomial(m, a/m)``, close to ``Poisson(a)``), with mean coefficient ``1/2``;
- the samples ``x_j = Σ_i α_ij f_i``, centred (the sample mean over the ``n`` rows is
  subtracted), plus independent Gaussian noise of variance ``a σ² / d`` per coordinate (total
  noise power ``a σ²``, against a signal power of about ``a / 3``).

``.coefficients`` are the planted (non-negative, uncentred) ``α``; the data are *not* exactly
``α Φᵀ`` because of the centring and the noise. The exact sparsity of the planted coefficients is
known in closed form (:func:`~specmetrics.sparse_coding.metrics.oracle_s1`).

Controls
--------
``make_control(kind, d, n)`` draws data that are *not* sparse linear, as in the paper:

- ``"gaussian"``: ``x ~ N(0, I_d)``, identity covariance;
- ``"rademacher"``: independent ``±1`` entries with probability 1/2 each (identity covariance,
  ``‖x‖ = √d`` exactly);
- ``"cauchy_norm"``: ``x = r u`` with ``u`` uniform on the unit sphere and ``r = √d |C|``,
  ``C`` standard Cauchy: Gaussian directions with heavy-tailed norms (median norm ``√d``, like
  the other two; no finite mean norm).

Their scale is irrelevant to the metrics (every metric of this package is invariant to rescaling
the data); it is fixed as above so that the three controls have the same typical norm ``√d``.
Every draw uses a ``torch.Generator`` seeded with ``seed``; the same arguments give the same data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from .._validation import check_choice, check_interval, check_positive_int, \
    check_real, check_seed, fail
from ._checks import check_dtype

__all__ = ["SyntheticActivations", "make_sparse_linear", "make_control", "CONTROL_KINDS",
           "random_directions"]

#: The control distributions of :func:`make_control`.
CONTROL_KINDS: tuple[str, ...] = ("gaussian", "rademacher", "cauchy_norm")


@dataclass(frozen=True)
class SyntheticActivations:
    """Synthetic activations and, for sparse linear data, the truth they were built from.

    Attributes
    ----------
    data : torch.Tensor, shape (n, d)
        One sample per row.
    dictionary : torch.Tensor, shape (d, n_features), or None
        The planted feature directions (unit-norm columns); ``None`` for a control.
    coefficients : torch.Tensor, shape (n, n_features), or None
        The planted non-negative coefficients (before centring); ``None`` for a control.
    a : float or None
        Expected number of active features per sample; ``None`` for a control.
    kind : str
        ``"sparse_linear"`` or the control's kind.
    sigma : float or None
        Noise level (sparse linear data only).
    seed : int
    """

    data: torch.Tensor = field(repr=False)
    dictionary: Optional[torch.Tensor] = field(repr=False)
    coefficients: Optional[torch.Tensor] = field(repr=False)
    a: Optional[float]
    kind: str = "sparse_linear"
    sigma: Optional[float] = None
    seed: int = 0

    @property
    def n(self) -> int:
        """Number of samples."""
        return int(self.data.shape[0])

    @property
    def d(self) -> int:
        """Dimension of a sample."""
        return int(self.data.shape[1])

    @property
    def n_features(self) -> Optional[int]:
        """Number of planted features (``None`` for a control)."""
        return None if self.dictionary is None else int(self.dictionary.shape[1])

    def __repr__(self) -> str:
        extra = "" if self.a is None else f", a={self.a:g}, n_features={self.n_features}, " \
                                          f"sigma={self.sigma:g}"
        return f"SyntheticActivations(kind={self.kind!r}, n={self.n}, d={self.d}{extra}, " \
               f"seed={self.seed})"


def random_directions(d: int, m: int, *, generator: torch.Generator,
                      dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``m`` independent directions uniform on the unit sphere of ``R^d``: a (d, m) tensor with
    unit-norm columns (normalised standard Gaussian vectors)."""
    g = torch.randn((d, m), generator=generator, dtype=torch.float64)
    norms = g.norm(dim=0, keepdim=True)
    # a zero Gaussian vector has probability 0; guard anyway so a column is never NaN
    g = torch.where(norms > 0, g / norms.clamp_min(1e-300), torch.ones_like(g) / math.sqrt(d))
    return g.to(dtype)


def make_sparse_linear(d: int, n: int, a: float, *, n_features: Optional[int] = None,
                       sigma: float = 0.1, seed: int = 0,
                       dtype: torch.dtype = torch.float32) -> SyntheticActivations:
    """Sparse linear synthetic activations with a planted dictionary (see the module notes).

    Parameters
    ----------
    d : int
        Dimension of a sample (>= 2).
    n : int
        Number of samples (>= 2).
    a : float
        Expected number of active features per sample, in ``(0, n_features]``.
    n_features : int, optional
        Number of planted features ``m``; default ``4 d`` (the paper's).
    sigma : float, default 0.1
        Noise level: Gaussian noise of variance ``a σ² / d`` per coordinate (``0``: none).
    seed : int, default 0
        Seeds the ``torch.Generator`` of every draw.
    dtype : torch.dtype, default torch.float32
        ``torch.float32`` or ``torch.float64`` (everything is drawn in float64, then cast).

    Returns
    -------
    SyntheticActivations
        ``.data`` (n, d), ``.dictionary`` (d, m) with unit columns, ``.coefficients`` (n, m)
        non-negative, ``.a``.

    References
    ----------
    M. Deng, L. Tao, J. Benton, "Measuring Feature Sparsity in Language Models", 2023,
    arXiv:2310.07837 (appendix: the synthetic data).

    Examples
    --------
    >>> syn = make_sparse_linear(64, 1000, 4.0, seed=1)
    >>> syn.data.shape, syn.dictionary.shape, syn.coefficients.shape
    (torch.Size([1000, 64]), torch.Size([64, 256]), torch.Size([1000, 256]))
    """
    func = "make_sparse_linear"
    d = check_positive_int(d, name="d", func=func, minimum=2)
    n = check_positive_int(n, name="n", func=func, minimum=2)
    if n_features is None:
        m = 4 * d
    else:
        m = check_positive_int(n_features, name="n_features", func=func)
    a = check_real(a, name="a", func=func, requirement=f"a real number in (0, n_features = {m}]")
    if not 0 < a <= m:
        raise fail("a", func, f"in (0, n_features = {m}]", a)
    sigma = check_interval(sigma, 0.0, math.inf, name="sigma", func=func)
    seed = check_seed(seed, func=func)
    dtype = check_dtype(dtype, func=func, allow_none=False)

    generator = torch.Generator().manual_seed(seed)
    dictionary = random_directions(d, m, generator=generator)
    p = a / m
    active = torch.rand((n, m), generator=generator, dtype=torch.float64) < p
    values = torch.rand((n, m), generator=generator, dtype=torch.float64)
    coefficients = torch.where(active, values, torch.zeros((), dtype=torch.float64))
    data = coefficients @ dictionary.T
    data -= data.mean(dim=0, keepdim=True)
    if sigma > 0:
        noise = torch.randn((n, d), generator=generator, dtype=torch.float64)
        data += noise * math.sqrt(a * sigma * sigma / d)
    return SyntheticActivations(data=data.to(dtype), dictionary=dictionary.to(dtype),
                                coefficients=coefficients.to(dtype), a=float(a),
                                kind="sparse_linear", sigma=float(sigma), seed=seed)


def make_control(kind: str, d: int, n: int, *, seed: int = 0,
                 dtype: torch.dtype = torch.float32) -> SyntheticActivations:
    """Control data that are not sparse linear (see the module notes for each kind).

    Parameters
    ----------
    kind : {"gaussian", "rademacher", "cauchy_norm"}
    d : int
        Dimension of a sample (>= 2).
    n : int
        Number of samples (>= 2).
    seed : int, default 0
    dtype : torch.dtype, default torch.float32

    Returns
    -------
    SyntheticActivations
        ``.data`` (n, d); ``.dictionary``, ``.coefficients`` and ``.a`` are ``None``.

    Examples
    --------
    >>> make_control("rademacher", 8, 3, seed=0).data.abs().unique().tolist()
    [1.0]
    """
    func = "make_control"
    kind = check_choice(kind, CONTROL_KINDS, name="kind", func=func)
    d = check_positive_int(d, name="d", func=func, minimum=2)
    n = check_positive_int(n, name="n", func=func, minimum=2)
    seed = check_seed(seed, func=func)
    dtype = check_dtype(dtype, func=func, allow_none=False)
    generator = torch.Generator().manual_seed(seed)
    if kind == "gaussian":
        data = torch.randn((n, d), generator=generator, dtype=torch.float64)
    elif kind == "rademacher":
        signs = torch.randint(0, 2, (n, d), generator=generator, dtype=torch.int64)
        data = (2 * signs - 1).to(torch.float64)
    else:
        directions = random_directions(d, n, generator=generator).T  # (n, d)
        u = torch.rand((n,), generator=generator, dtype=torch.float64)
        # standard Cauchy by inversion, tan(pi (u - 1/2)); |C| has median 1
        radius = torch.tan(math.pi * (u - 0.5)).abs() * math.sqrt(d)
        data = directions * radius[:, None]
    return SyntheticActivations(data=data.to(dtype), dictionary=None, coefficients=None,
                                a=None, kind=kind, sigma=None, seed=seed)

