"""Distance of a matrix's ESD from the Marchenko-Pastur law fitted to it (seed 003's "error vs
MP").

Definition
----------
``W`` is N x M with ``N >= M`` (transposed if needed), ``y = M / N``. Its ESD is the ``M``
eigenvalues ``lambda_i`` of ``W^T W``; with ``x_i = lambda_i / N``, a matrix of i.i.d. entries of
variance ``sigma^2`` has ``x`` distributed, as N, M grow, by the Marchenko-Pastur law

    p(x) = sqrt((b - x)(x - a)) / (2 pi y sigma^2 x),   a, b = sigma^2 (1 -/+ sqrt(y))^2.

The distance is the Kolmogorov-Smirnov statistic between the empirical distribution of the
``x_i`` and the MP law with ratio ``y`` and the fitted scale ``sigma^2``:

    D = sup_x | F_emp(x) - F_MP(x / sigma^2; y) |  in [0, 1],

with ``sigma^2`` chosen to minimise ``D`` (``fit="ks"``, the default: the MP law "fitted" to the
spectrum, so that a few outliers do not move the scale of the bulk) or equal to the mean of the
``x_i`` (``fit="moment"``: the MP mean is ``sigma^2``). Both are **scale-free**: ``c W`` has the
distance of ``W``, as has ``W^T``. ``D`` is 0 for a spectrum that is exactly MP and near 1 for a
spectrum concentrated far from any MP shape; spikes above the bulk edge add their fraction.

``F_MP`` has a closed form (substituting ``x = c + h cos(phi)``, ``c = 1 + y``, ``h = 2 sqrt(y)``):

    F(x) = (h^2 / (2 pi y)) (G(pi) - G(phi)),
    G(phi) = -sin(phi)/h + c phi/h^2 - (2 sqrt(ab)/h^2) arctan(sqrt(a/b) tan(phi/2)),

for ``sigma^2 = 1``, ``a < x < b``, ``phi = arccos((x - c)/h)``.

Sampling error: a finite Gaussian matrix is not exactly MP. ``null_draws`` Gaussian matrices of
the same shape give the distance's mean and standard deviation under the null
(``null_mean``, ``null_sd``, ``z``); they depend only on the shape, and are computed once per shape.

WeightWatcher's ``rand_distance`` (Jensen-Shannon distance between the sorted ESD and that of the
element-shuffled matrix, :func:`specmetrics.spectrum.metrics.rand_distance`) is reported beside it
for a matrix (``randomize=True``): it asks a different question (how far from its own
randomisation, which keeps the entry distribution and so a heavy tail of entries), is not
bounded by one, and is not scale-free in the same sense (it compares eigenvalue vectors entry by
entry).
"""
from __future__ import annotations

import logging
import math
from typing import Any, Optional

import numpy as np
import torch

from .._validation import check_bool, check_choice, check_int, check_seed, fail, is_integer
from ..exceptions import ParameterError
from ..models import find_blocks, module_type, parse_type_set, type_in, weight_out_in
from ..spectrum import eigenvalues as _eigenvalues
from ..spectrum.metrics import rand_distance as _rand_distance
from ._common import check_layers, check_model
from .results import MPDistance, MPDistanceReport

__all__ = ["mp_distance", "mp_distances", "mp_cdf", "ks_distance", "FITS"]

logger = logging.getLogger(__name__)

#: How the MP scale is fitted.
FITS = ("ks", "moment")

_GRID = np.linspace(-6.0, 1.5, 151)  # log(sigma^2 / mean) candidates of the KS fit


def mp_cdf(x: Any, y: float) -> np.ndarray:
    """CDF of the Marchenko-Pastur law with ratio ``y`` in (0, 1] and ``sigma^2 = 1``.

    Parameters
    ----------
    x : array-like
        Points (any shape).
    y : float
        ``M / N``.

    Returns
    -------
    ndarray of float64, the shape of ``x``
    """
    x = np.asarray(x, dtype=np.float64)
    sy = math.sqrt(y)
    a, b = (1 - sy) ** 2, (1 + sy) ** 2
    c, h = 1 + y, 2 * sy
    sab = math.sqrt(a * b)

    def g(phi):
        return (-np.sin(phi) / h + c * phi / h ** 2
                - (2 * sab / h ** 2) * np.arctan2(math.sqrt(a / b) * np.sin(phi / 2),
                                                  np.cos(phi / 2)))

    inside = np.clip((x - c) / h, -1.0, 1.0)
    phi = np.arccos(inside)
    out = (h ** 2 / (2 * math.pi * y)) * (g(math.pi) - g(phi))
    out = np.where(x <= a, 0.0, np.where(x >= b, 1.0, out))
    return np.clip(out, 0.0, 1.0)


def ks_distance(x_sorted: np.ndarray, y: float, sigma2) -> np.ndarray:
    """KS distance between the sorted sample ``x_sorted`` and MP(``y``, ``sigma2``); ``sigma2``
    may be an array (one distance each)."""
    s2 = np.atleast_1d(np.asarray(sigma2, dtype=np.float64))
    m = x_sorted.size
    f = mp_cdf(x_sorted[None, :] / s2[:, None], y)
    i = np.arange(1, m + 1)[None, :]
    d = np.maximum(i / m - f, f - (i - 1) / m).max(axis=1)
    return d


def _fit(x: np.ndarray, y: float, fit: str) -> tuple[float, float]:
    """``(distance, sigma2)`` for the sorted ``x = lambda / N``."""
    mean = float(x.mean())
    if not mean > 0:
        return 1.0, math.nan
    if fit == "moment":
        return float(ks_distance(x, y, mean)[0]), mean
    grid = mean * np.exp(_GRID)
    d = ks_distance(x, y, grid)
    i = int(np.argmin(d))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    from scipy import optimize

    res = optimize.minimize_scalar(lambda t: float(ks_distance(x, y, math.exp(t))[0]),
                                   bounds=(math.log(lo), math.log(hi)), method="bounded",
                                   options={"xatol": 1e-6})
    if res.success and float(res.fun) < float(d[i]):
        return float(res.fun), float(math.exp(res.x))
    return float(d[i]), float(grid[i])


def _as_array(value: Any, func: str) -> tuple[Optional[torch.Tensor], Optional[np.ndarray]]:
    """``(matrix, None)`` for 2-D input, ``(None, eigenvalues)`` for 1-D input."""
    if isinstance(value, torch.Tensor):
        if value.is_meta:
            raise fail("weight_or_eigenvalues", func, "a tensor with data (not on the 'meta' "
                       "device)", "a meta tensor")
        t = value.detach()
    elif isinstance(value, np.ndarray) or isinstance(value, (list, tuple)):
        try:
            arr = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError):
            raise fail("weight_or_eigenvalues", func, "a 2-D weight matrix or a 1-D array of "
                       "eigenvalues", type(value).__name__) from None
        t = torch.from_numpy(np.array(arr))
    else:
        raise fail("weight_or_eigenvalues", func, "a 2-D weight matrix (tensor or array) or a 1-D "
                   "array of eigenvalues", type(value).__name__)
    if t.is_complex() or not (t.is_floating_point() or t.dtype in (
            torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
        raise fail("weight_or_eigenvalues", func, "real numbers", f"dtype {t.dtype}")
    if t.dim() not in (1, 2):
        raise fail("weight_or_eigenvalues", func, "a 2-D weight matrix or a 1-D array of "
                   "eigenvalues", f"shape {tuple(t.shape)}")
    if t.numel() < 2 or (t.dim() == 2 and min(t.shape) < 2):
        raise fail("weight_or_eigenvalues", func, "at least 2 eigenvalues (a matrix of at least "
                   "2 x 2)", f"shape {tuple(t.shape)}")
    t64 = t.to(torch.float64)
    if not bool(torch.isfinite(t64).all()):
        raise fail("weight_or_eigenvalues", func, "finite values (no NaN or inf)",
                   f"a {tuple(t.shape)} array with non-finite values")
    if t.dim() == 2:
        return t, None
    ev = t64.cpu().numpy()
    if ev.min() < -1e-8 * max(1.0, float(np.abs(ev).max())):
        raise fail("weight_or_eigenvalues", func, "non-negative eigenvalues (of W^T W)",
                   f"a minimum of {float(ev.min())!r}")
    return None, np.clip(ev, 0.0, None)


def _check_shape(shape: Any, n_evals: int, func: str) -> tuple[int, int]:
    requirement = ("the (rows, columns) of the matrix whose eigenvalues are given (two integers "
                   f">= 2, with min(shape) or max(shape) = {n_evals} eigenvalues)")
    if shape is None or isinstance(shape, (str, bytes)):
        raise fail("shape", func, requirement, shape)
    try:
        dims = tuple(shape)
    except TypeError:
        raise fail("shape", func, requirement, shape) from None
    if len(dims) != 2 or not all(is_integer(d) and int(d) >= 2 for d in dims):
        raise fail("shape", func, requirement, shape)
    n, m = max(int(d) for d in dims), min(int(d) for d in dims)
    if n_evals not in (m, n):
        raise fail("shape", func, requirement, shape)
    return n, m


class _NullCache:
    """Null distances per (shape, fit), drawn once."""

    def __init__(self, draws: int, seed: int):
        self.draws = draws
        self.seed = seed
        self.cache: dict[tuple, tuple[float, float]] = {}

    def get(self, n: int, m: int, fit: str) -> tuple[float, float]:
        if self.draws == 0:
            return math.nan, math.nan
        key = (n, m, fit)
        if key not in self.cache:
            gen = torch.Generator().manual_seed(self.seed + 7919)
            values = []
            for _ in range(self.draws):
                g = torch.randn(n, m, generator=gen, dtype=torch.float64)
                ev = _eigenvalues(g).numpy()
                values.append(_fit(np.sort(ev) / n, m / n, fit)[0])
            arr = np.asarray(values)
            self.cache[key] = (float(arr.mean()),
                               float(arr.std(ddof=1)) if arr.size > 1 else math.nan)
        return self.cache[key]


def _distance(ev: np.ndarray, n: int, m: int, *, fit: str, nulls: _NullCache,
              rand: float) -> MPDistance:
    ev = np.sort(np.asarray(ev, dtype=np.float64))[-m:]
    y = m / n
    x = ev / n
    distance, sigma2 = _fit(x, y, fit)
    bulk_max = n * sigma2 * (1 + math.sqrt(y)) ** 2 if math.isfinite(sigma2) else math.nan
    n_spikes = int(np.count_nonzero(ev > bulk_max)) if math.isfinite(bulk_max) else 0
    null_mean, null_sd = nulls.get(n, m, fit)
    z = (distance - null_mean) / null_sd if null_sd and math.isfinite(null_sd) and null_sd > 0 \
        else math.nan
    return MPDistance(distance=distance, fit=fit, sigma2=sigma2, y=y, n=n, m=m,
                      bulk_max=bulk_max, n_spikes=n_spikes, spike_fraction=n_spikes / m,
                      null_mean=null_mean, null_sd=null_sd, z=z, rand_distance=rand)


def _matrix_eigenvalues(w: torch.Tensor) -> np.ndarray:
    """Eigenvalues of ``W^T W`` in float64, computed where ``w`` is (Gram + ``eigvalsh``)."""
    return _eigenvalues(w.detach().to(torch.float64)).cpu().numpy()


def _shuffled_distance(w: torch.Tensor, ev: np.ndarray, seed: int) -> float:
    gen = torch.Generator().manual_seed(seed)
    flat = w.detach().reshape(-1)
    perm = torch.randperm(flat.numel(), generator=gen).to(flat.device)
    shuffled = flat[perm].reshape(w.shape)
    return _rand_distance(ev, _matrix_eigenvalues(shuffled))


def _check_options(fit, null_draws, randomize, seed, func):
    fit = check_choice(fit, FITS, name="fit", func=func)
    null_draws = check_int(null_draws, name="null_draws", func=func, minimum=0)
    randomize = check_bool(randomize, name="randomize", func=func)
    seed = check_seed(seed, func=func)
    return fit, null_draws, randomize, seed


def mp_distance(weight_or_eigenvalues, *, shape=None, fit: str = "ks", null_draws: int = 3,
                randomize: bool = True, seed: int = 0) -> MPDistance:
    """Scale-free distance between a matrix's ESD and the Marchenko-Pastur law fitted to it.

    Parameters
    ----------
    weight_or_eigenvalues : torch.Tensor or array-like
        A weight matrix of shape (rows, columns), or the eigenvalues of its ``W^T W`` (1-D; then
        ``shape`` is required). Non-finite values are rejected.
    shape : tuple of two int, optional
        The matrix's shape, for eigenvalue input (``min(shape)`` eigenvalues, or
        ``max(shape)`` of which the largest ``min(shape)`` are used).
    fit : {"ks", "moment"}, default "ks"
        How the MP scale is fitted (see the module docstring).
    null_draws : int, default 3
        Gaussian matrices of the same shape drawn to estimate the sampling error (0: none).
    randomize : bool, default True
        Also compute WeightWatcher's ``rand_distance`` (matrix input only).
    seed : int, default 0
        Seed of the null draws and of the shuffle.

    Returns
    -------
    MPDistance

    Raises
    ------
    ParameterError
        For a bad parameter, a non-finite value, or eigenvalues without a matching ``shape``.

    Examples
    --------
    >>> import torch
    >>> w = torch.randn(400, 200, generator=torch.Generator().manual_seed(0))
    >>> mp_distance(w, null_draws=0, randomize=False).distance < 0.05
    True
    """
    func = "mp_distance"
    matrix, ev = _as_array(weight_or_eigenvalues, func)
    fit, null_draws, randomize, seed = _check_options(fit, null_draws, randomize, seed, func)
    if matrix is not None:
        if shape is not None:
            raise fail("shape", func, "None for a matrix (its own shape is used)", shape)
        n, m = max(matrix.shape), min(matrix.shape)
        ev = _matrix_eigenvalues(matrix)
        rand = _shuffled_distance(matrix, ev, seed) if randomize else math.nan
    else:
        n, m = _check_shape(shape, ev.size, func)
        rand = math.nan
    return _distance(ev, n, m, fit=fit, nulls=_NullCache(null_draws, seed), rand=rand)


def mp_distances(model, *, types=None, layers=None, fit: str = "ks", null_draws: int = 3,
                 randomize: bool = True, seed: int = 0, progress: bool = False
                 ) -> MPDistanceReport:
    """:func:`mp_distance` of every prunable matrix of a model (one row each).

    Parameters
    ----------
    model : torch.nn.Module
    types : str or sequence of str, optional
        Module types to include (``"q,gate"``, ``("q", "gate")``, ``"attention"``; see
        :func:`specmetrics.models.parse_type_set`); default: all.
    layers : int or sequence of int, optional
        Block indices (default: all).
    fit, null_draws, randomize, seed
        As for :func:`mp_distance`; the null draws are made once per matrix shape.
    progress : bool, default False

    Returns
    -------
    MPDistanceReport
        Keyed by module name, in model order.
    """
    func = "mp_distances"
    check_model(model, func)
    type_set = parse_type_set(types, name="types", func=func)
    fit, null_draws, randomize, seed = _check_options(fit, null_draws, randomize, seed, func)
    progress = check_bool(progress, name="progress", func=func)
    layout = find_blocks(model, func=func)
    chosen = check_layers(layers, len(layout), func)
    todo = [pm for pm in layout.modules.values()
            if type_in(module_type(pm.name), type_set)
            and (chosen is None or pm.block in chosen)]
    if not todo:
        raise fail("types", func, "a selection that matches at least one matrix of the model",
                   types)
    for pm in todo:  # non-finite weights are found before any work
        if not bool(torch.isfinite(pm.module.weight.detach()).all()):
            raise ParameterError(f"The 'model' parameter of {func} must be a model with finite "
                                 f"weights. Got NaN or inf in {pm.name!r} instead.",
                                 parameter="model", function=func)
    nulls = _NullCache(null_draws, seed)

    from tqdm.auto import tqdm

    entries = {}
    for pm in tqdm(todo, desc=func, unit="matrix", disable=not progress):
        with torch.no_grad():
            w = weight_out_in(pm.module)
        ev = _matrix_eigenvalues(w)
        rand = _shuffled_distance(w, ev, seed) if randomize else math.nan
        d = _distance(ev, max(w.shape), min(w.shape), fit=fit, nulls=nulls, rand=rand)
        entries[pm.name] = MPDistance(**{**d.as_dict(), "name": pm.name,
                                         "module_type": module_type(pm.name), "block": pm.block})
    settings = {"types": None if type_set is None else sorted(type_set),
                "layers": None if chosen is None else list(chosen), "fit": fit,
                "null_draws": null_draws, "randomize": randomize, "seed": seed,
                "model": type(model).__name__}
    return MPDistanceReport(entries, settings=settings)

