"""Continuous power-law fits of an eigenvalue spectrum's tail.

One vectorised KS scan serves every ``xmin`` policy:

``"ks"``
    WeightWatcher's default fit (``WW_powerlaw.WWFit``): every eigenvalue is an
    ``xmin`` candidate and the one with the smallest Kolmogorov-Smirnov distance wins.
``"peak"``
    AlphaPruning's ``alpha_peak``: candidates restricted to the window around the
    peak ``p`` of the log-ESD histogram, with the lower bound ``log10(0.95 p)``
    exactly as the reference computes it (a log value compared with linear
    eigenvalues, so in effect "any xmin <= 1.5 p").
``"peak_corrected"``
    The same window with the lower bound in linear units, ``[0.95 p, 1.5 p]``.
``"mid"``
    AlphaPruning's ``alpha_mid``: ``xmin`` is the eigenvalue at index ``n // 2``
    of the ascending spectrum; one Hill estimate.
a float
    A fixed ``xmin``: the smallest eigenvalue ``>= xmin`` starts the tail; one Hill
    estimate.

For a tail starting at the ``i``-th smallest eigenvalue, with ``n = N - i``::

    alpha_i = 1 + n / (sum_{j>=i} ln lambda_j - n ln lambda_i)
    D_i     = max_{j>=i} | 1 - (lambda_j / lambda_i)^(1 - alpha_i) - (j - i) / n |
    sigma_i = (alpha_i - 1) / sqrt(n)

References
----------
.. [1] C. H. Martin, M. W. Mahoney, "Implicit self-regularization in deep neural
   networks", JMLR 22 (2021); WeightWatcher 0.7 ``WW_powerlaw.WWFit``.
.. [2] H. Lu et al., "AlphaPruning: Using heavy-tailed self regularization theory
   for improved layer-wise pruning of large language models", NeurIPS 2024;
   ``lib/esd_utils.py::net_esd_estimator``.
.. [3] A. Clauset, C. R. Shalizi, M. E. J. Newman, "Power-law distributions in
   empirical data", SIAM Review 51 (2009).
"""
from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Any, Union

import numpy as np
import torch

from .._validation import (check_bool, check_choice, check_positive_int, fail, is_real_number)
from ..exceptions import DegenerateSpectrumWarning

__all__ = ["PowerLawFit", "DegenerateSpectrumWarning", "fit_power_law", "check_xmin",
           "XMIN_POLICIES", "MIN_TAIL"]

XMIN_POLICIES = ("ks", "peak", "peak_corrected", "mid")
#: The smallest tail (eigenvalues at or above ``xmin``) a fit reports as a success; a fit whose
#: chosen tail is shorter returns ``success=False`` with a message. 8 is what WeightWatcher 0.7.7
#: requires of the tails its small-sample fit considers (``fit_powerlaw_smallN``'s ``k_min``).
MIN_TAIL = 8
EVALS_THRESH = 1e-5  # WeightWatcher's EVALS_THRESH: eigenvalues at or below are dropped
SMALL_N = 20  # WeightWatcher switches to its bias-corrected small-sample fit below this
_CHUNK_ELEMENTS = 1 << 18  # elements of one (candidates x eigenvalues) block of the KS scan (cache-sized)


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """Result of :func:`fit_power_law`.

    Attributes
    ----------
    alpha : float
        Power-law exponent of the tail density ``p(x) ~ x^-alpha``; NaN on failure.
    xmin, xmax : float
        Smallest and largest eigenvalue of the fitted tail.
    ks_distance : float
        Kolmogorov-Smirnov distance of the fit (WeightWatcher's ``D``).
    sigma : float
        Standard error ``(alpha - 1) / sqrt(n_tail)``.
    n_tail : int
        Eigenvalues in the tail, ``#(lambda >= xmin)`` (WeightWatcher's ``num_pl_spikes``).
    success : bool
        Whether the fit produced a usable exponent.
    message : str
        Why the fit failed, or a short description of what was done.
    method : str
        The ``xmin`` policy used (``"ks"``, ``"peak"``, ``"peak_corrected"``, ``"mid"``,
        ``"fixed"``), suffixed with ``"+clip_xmax"`` / ``"+tpl"`` where those applied.
    truncation : float
        Exponential cut-off ``Lambda`` of a truncated power law (NaN otherwise).
    n_fingers : int
        Largest eigenvalues removed by ``clip_xmax`` (0 otherwise).
    """

    alpha: float
    xmin: float
    xmax: float
    ks_distance: float
    sigma: float
    n_tail: int
    success: bool
    message: str = ""
    method: str = "ks"
    truncation: float = math.nan
    n_fingers: int = 0

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _failed(message: str, method: str, *, warn: bool = True) -> PowerLawFit:
    if warn:
        warnings.warn(message, DegenerateSpectrumWarning, stacklevel=3)
    nan = math.nan
    return PowerLawFit(nan, nan, nan, nan, nan, 0, False, message, method)


# ---------------------------------------------------------------------------
# the KS scan
# ---------------------------------------------------------------------------


def ks_scan(x: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Hill exponents and KS distances for tails starting at ``x[lo:hi]``.

    Parameters
    ----------
    x : torch.Tensor, shape (N,)
        Positive eigenvalues sorted ascending (any float dtype, any device).
    lo, hi : int
        Candidate start indices ``lo <= i < hi``, ``hi <= N - 1``.

    Returns
    -------
    alphas, ds : torch.Tensor, shape (hi - lo,)
        ``alpha_i`` and ``D_i``; ``D_i = 1`` where ``alpha_i <= 1`` (WeightWatcher's
        convention, so such candidates never win).
    """
    n_all = x.shape[0]
    logx = torch.log(x)
    # suffix sums of ln(x): suffix[i] = sum_{j>=i} ln x_j
    suffix = torch.flip(torch.cumsum(torch.flip(logx, (0,)), 0), (0,))
    idx = torch.arange(lo, hi, device=x.device)
    n = (n_all - idx).to(x.dtype)
    alphas = 1.0 + n / (suffix[idx] - n * logx[idx])
    ds = torch.ones_like(alphas)
    cols = torch.arange(n_all, device=x.device, dtype=x.dtype)
    # cache-sized chunks of candidates; each chunk's columns start at its first candidate
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, n_all - lo))
    for start in range(0, hi - lo, rows_per_chunk):
        stop = min(hi - lo, start + rows_per_chunk)
        i = idx[start:stop]
        first = int(i[0])
        # t = (x_j / x_i)^(1 - alpha) as exp((1 - alpha)(ln x_j - ln x_i)), in place; a tail of
        # equal values has alpha = inf, and 1^(-inf) = 1 as in WeightWatcher's power (not nan)
        t = logx[None, first:] - logx[i][:, None]
        same = t == 0
        t.mul_(1.0 - alphas[start:stop, None]).masked_fill_(same, 0.0).exp_()
        # empirical CDF (j - i) / n; entries j < i are masked out below
        k = cols[None, first:] - i[:, None].to(x.dtype)
        below = k < 0
        k.div_(n[start:stop, None])
        t.neg_().add_(1.0).sub_(k).abs_().masked_fill_(below, 0.0)
        d = t.amax(dim=1)
        ds[start:stop] = torch.where(alphas[start:stop] > 1, d, ds[start:stop])
    return alphas, ds


def _small_n_scan(x: torch.Tensor, k_min: int = 8) -> tuple[int, float, float]:
    """WeightWatcher 0.7.7's fit for fewer than 20 eigenvalues.

    Bias-corrected exponent ``1 + (n - 1) / sum ln(x / xmin)`` over tails of at
    least ``k_min`` eigenvalues. ``fit_powerlaw_smallN`` ranks candidates by
    ``D - 0.868 / sqrt(n)``, but ``WWFit.__init__`` then re-selects ``argmin D``
    over the same candidates, and that is what ``analyze()`` reports; so the
    smallest ``D`` (first on ties) wins here too.
    Returns ``(index, alpha, D)``.
    """
    xs = x.double().cpu().numpy()
    logx = np.log(xs)
    n_all = len(xs)
    best = (math.inf, 0, math.nan, math.nan)
    for i in range(n_all - 1):
        n = n_all - i
        if n < k_min:
            continue
        s = float(np.sum(logx[i:]) - n * logx[i])
        if s <= 1e-12:
            continue
        a = 1.0 + (n - 1.0) / s
        if a <= 1.0:
            continue
        theo = 1.0 - (xs[i:] / xs[i]) ** (1.0 - a)
        d = float(np.max(np.abs(np.arange(n) / n - theo)))
        if d < best[0]:
            best = (d, i, a, d)
    if not math.isfinite(best[0]):
        s = float(np.sum(logx) - n_all * logx[0])
        if s <= 1e-12:
            return 0, 1.0, 1.0
        a = 1.0 + (n_all - 1.0) / s
        theo = 1.0 - (xs / xs[0]) ** (1.0 - a)
        return 0, a, float(np.max(np.abs(np.arange(n_all) / n_all - theo)))
    return best[1], best[2], best[3]


def log10_peak(x: torch.Tensor, bins: int = 100) -> torch.Tensor:
    """Left edge ``10**edge`` of the fullest bin of the histogram of ``log10(x)``.

    Bins are ``torch.histc`` bins over ``[min, max]`` of ``log10(x)`` with edges
    ``linspace(min, max, bins + 1)``, computed in ``x``'s dtype (as AlphaPruning did).
    """
    h = torch.log10(x)
    lo, hi = h.min(), h.max()
    counts = torch.histc(h, bins=bins, min=float(lo), max=float(hi))
    edges = torch.linspace(float(lo), float(hi), bins + 1, dtype=x.dtype, device=x.device)
    return 10 ** edges[torch.argmax(counts)]


def _window(x: torch.Tensor, policy: str, bins: int) -> tuple[int, int, float]:
    """Candidate index range ``[lo, hi)`` of the peak policies (``hi <= N - 1``)."""
    p = log10_peak(x, bins)
    upper = 1.5 * p
    lower = torch.log10(0.95 * p) if policy == "peak" else 0.95 * p
    n_all = x.shape[0]
    lo = int(torch.searchsorted(x, lower.to(x.dtype), right=False))
    hi = int(torch.searchsorted(x, upper.to(x.dtype), right=True))
    return lo, min(hi, n_all - 1), float(p)


# ---------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------


def _as_tensor(eigenvalues: Any, func: str) -> torch.Tensor:
    if isinstance(eigenvalues, torch.Tensor):
        t = eigenvalues.detach()
    else:
        try:
            t = torch.as_tensor(np.asarray(eigenvalues))
        except (TypeError, ValueError) as err:
            raise fail("eigenvalues", func, "a 1-D array of real numbers", type(eigenvalues).__name__) from err
    if t.is_complex() or t.dtype == torch.bool:
        raise fail("eigenvalues", func, "a 1-D array of real numbers", str(t.dtype))
    if sum(s > 1 for s in t.shape) > 1:  # a weight matrix passed by mistake
        raise fail("eigenvalues", func, "a 1-D array of real numbers", f"an array of shape {tuple(t.shape)}")
    return t.reshape(-1)


def fit_power_law(
    eigenvalues: Any,
    *,
    xmin: Union[str, float] = "ks",
    clip_xmax: bool = False,
    distribution: str = "power_law",
    thresh: float | None = EVALS_THRESH,
    precision: str = "float64",
    bins: int = 100,
    max_fingers: int = 10,
    warn: bool = True,
) -> PowerLawFit:
    """Fit a continuous power law to the upper tail of an eigenvalue spectrum.

    Parameters
    ----------
    eigenvalues : array-like or torch.Tensor, shape (N,)
        Eigenvalues of ``W^T W`` (squared singular values); any order.
    xmin : {"ks", "peak", "peak_corrected", "mid"} or float, default "ks"
        How the start of the tail is chosen (see the module docstring).
    clip_xmax : bool, default False
        WeightWatcher's ``fix_fingers="clip_xmax"``: refit with the top 2, 3, ...
        eigenvalues removed; keep the first refit whose alpha is more than 1 below
        the original, stop at alpha <= 2 or after ``max_fingers - 1`` tries.
    distribution : {"power_law", "truncated_power_law"}, default "power_law"
        ``"truncated_power_law"`` refits the chosen tail with the ``powerlaw``
        package (optional dependency) and reports its ``alpha`` and ``Lambda``.
    thresh : float or None, default 1e-5
        Eigenvalues ``<= thresh`` are dropped before fitting (WeightWatcher's
        ``EVALS_THRESH``). ``None`` keeps them all (AlphaPruning), non-positive
        eigenvalues are dropped regardless.
    precision : {"float64", "float32"}, default "float64"
        ``"float32"`` rounds the eigenvalues to float32 and, for the ``"peak"``,
        ``"peak_corrected"`` and ``"mid"`` policies, runs AlphaPruning's float32
        arithmetic (histogram, window and per-candidate exponents), so that its
        ``alpha_peak`` is reproduced to float32 rounding; other policies compute the
        exponents in float64.
    bins : int, default 100
        Histogram bins of the peak policies.
    max_fingers : int, default 10
        Bound of the ``clip_xmax`` search (WeightWatcher forces 10).
    warn : bool, default True
        Emit :class:`DegenerateSpectrumWarning` when the fit fails.

    Returns
    -------
    PowerLawFit
        ``success=False`` with ``alpha=nan`` and a message when no fit is possible;
        never a ``-1`` sentinel.

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> lam = (1 - rng.random(5000)) ** (-1 / 2.0)  # density ~ x^-3 above 1
    >>> fit = fit_power_law(lam, xmin=1.0)
    >>> round(fit.alpha, 1)
    3.0
    """
    func = "fit_power_law"
    checked = check_xmin(xmin, func=func)
    fixed: float | None = None if isinstance(checked, str) else checked
    policy = checked if isinstance(checked, str) else "fixed"
    check_choice(distribution, ("power_law", "truncated_power_law"), name="distribution", func=func)
    check_choice(precision, ("float64", "float32"), name="precision", func=func)
    check_positive_int(bins, name="bins", func=func, minimum=2)
    check_positive_int(max_fingers, name="max_fingers", func=func, minimum=2)
    clip_xmax = check_bool(clip_xmax, name="clip_xmax", func=func)
    warn = check_bool(warn, name="warn", func=func)
    if thresh is not None:
        if not is_real_number(thresh) or not (math.isfinite(float(thresh)) and thresh >= 0):
            raise fail("thresh", func, "a non-negative number or None", thresh)
        thresh = float(thresh)

    t = _as_tensor(eigenvalues, func)
    method = policy
    if not torch.is_floating_point(t):
        t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        return _failed("the spectrum contains NaN or inf", method, warn=warn)
    work = torch.float32 if precision == "float32" else torch.float64
    x = torch.sort(t.to(work)).values
    x = x[x > (thresh if thresh is not None else 0.0)]
    if x.shape[0] < 2:
        return _failed(f"too few eigenvalues above the threshold to fit a tail ({x.shape[0]})", method, warn=warn)
    if float(x[-1]) == float(x[0]):
        return _failed("all eigenvalues are equal: no tail to fit", method, warn=warn)

    fit = _fit_sorted(x, policy, fixed, bins)
    if fit.success and clip_xmax:
        fit = _clip_fingers(x, fit, policy, fixed, bins, max_fingers)
    if fit.success and distribution == "truncated_power_law":
        fit = _truncated(x, fit)
    if fit.success and fit.n_tail < MIN_TAIL:
        fit = _failed(f"the tail from xmin={fit.xmin:.6g} holds {fit.n_tail} eigenvalues, fewer "
                      f"than the {MIN_TAIL} a fit needs (MIN_TAIL)", fit.method, warn=False)
    if not fit.success and warn:
        warnings.warn(fit.message, DegenerateSpectrumWarning, stacklevel=2)
    # n_tail counts the eigenvalues as given (WeightWatcher counts before thresholding)
    if fit.success:
        n_tail = int((t.to(torch.float64) >= fit.xmin).sum())
        fit = dataclasses.replace(fit, n_tail=n_tail)
    return fit


def check_xmin(xmin: Any, *, func: str) -> Union[str, float]:
    """Validate an ``xmin`` option: one of :data:`XMIN_POLICIES` or a positive number (numpy
    scalars accepted). Returns the policy name or the number as a float."""
    requirement = f"one of {', '.join(repr(p) for p in XMIN_POLICIES)} or a positive number"
    if isinstance(xmin, str):
        if xmin not in XMIN_POLICIES:
            raise fail("xmin", func, requirement, xmin)
        return xmin
    if not is_real_number(xmin):
        raise fail("xmin", func, requirement, xmin)
    value = float(xmin)
    if not (math.isfinite(value) and value > 0):
        raise fail("xmin", func, requirement, xmin)
    return value


def _fit_sorted(x: torch.Tensor, policy: str, fixed: float | None, bins: int) -> PowerLawFit:
    """Fit ascending positive eigenvalues ``x`` with one ``xmin`` policy."""
    n_all = x.shape[0]
    xmax = float(x[-1])
    x64 = x.to(torch.float64)
    if policy in ("mid", "fixed"):
        if policy == "mid":
            i = n_all // 2
        else:
            i = int(torch.searchsorted(x64, torch.tensor(fixed, dtype=torch.float64)))
        if i >= n_all - 1:
            return _failed("the fixed xmin leaves fewer than 2 eigenvalues in the tail", policy, warn=False)
        a, d = _scan(x, x64, i, i + 1, policy)
        return _result(x64, i, float(a[0]), float(d[0]), policy)
    if policy == "ks" and n_all < SMALL_N:
        i, a, d = _small_n_scan(x64)
        return _result(x64, i, a, d, policy, note=f"small-sample fit (N={n_all} < {SMALL_N})")
    if policy == "ks":
        lo, hi = 0, n_all - 1
    else:
        lo, hi, _ = _window(x, policy, bins)
        if hi <= lo:
            return _failed("no eigenvalue lies in the peak window of the log-ESD", policy, warn=False)
    alphas, ds = _scan(x, x64, lo, hi, policy)
    k = int(torch.argmin(ds))
    if float(ds[k]) >= 1.0:
        return _failed("no xmin candidate gives alpha > 1", policy, warn=False)
    return _result(x64, lo + k, float(alphas[k]), float(ds[k]), policy)


def _scan(x: torch.Tensor, x64: torch.Tensor, lo: int, hi: int, policy: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The KS scan in float64, or AlphaPruning's float32 arithmetic for its policies."""
    if x.dtype == torch.float32 and policy in ("peak", "peak_corrected", "mid"):
        return float32_loop_scan(x, lo, hi)
    return ks_scan(x64, lo, hi)


def float32_loop_scan(x: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """AlphaPruning's per-candidate float32 arithmetic, one candidate at a time.

    The same operations in the same dtype as ``net_esd_estimator`` (a sum of the
    tail's logs per candidate, ``torch.arange(n)`` empirical CDF, float32 powers),
    so that ``precision="float32"`` reproduces its exponents to float32 rounding.
    Used only for the peak window and the mid point, which hold few candidates.
    """
    logx = torch.log(x)
    n_all = x.shape[0]
    alphas = torch.zeros(hi - lo, dtype=x.dtype, device=x.device)
    ds = torch.ones(hi - lo, dtype=x.dtype, device=x.device)
    for k, i in enumerate(range(lo, hi)):
        n = float(n_all - i)
        alpha = 1 + n / (torch.sum(logx[i:]) - n * logx[i])
        alphas[k] = alpha
        if alpha > 1:
            seq = torch.arange(n, dtype=x.dtype, device=x.device)
            ds[k] = torch.max(torch.abs(1 - (x[i:] / x[i]) ** (-alpha + 1) - seq / n))
    return alphas, ds


def _result(x: torch.Tensor, i: int, alpha: float, d: float, method: str, note: str = "") -> PowerLawFit:
    n = x.shape[0] - i
    if not (math.isfinite(alpha) and alpha > 1.0):
        why = "<= 1" if alpha <= 1.0 else "a tail of equal eigenvalues" if alpha == math.inf else "not a number"
        return _failed(f"the tail from xmin={float(x[i]):.6g} gives alpha={alpha:.6g} ({why})", method, warn=False)
    sigma = (alpha - 1.0) / math.sqrt(n)
    return PowerLawFit(alpha, float(x[i]), float(x[-1]), d, sigma, n, True, note, method)


def _clip_fingers(
    x: torch.Tensor, first: PowerLawFit, policy: str, fixed: float | None, bins: int, max_fingers: int
) -> PowerLawFit:
    """WeightWatcher's ``fit_clipped_powerlaw`` (finger threshold 1.0, minimum alpha 2)."""
    for k in range(2, max_fingers):
        if x.shape[0] - k < 2:
            break
        fit = _fit_sorted(x[:-k], policy, fixed, bins)
        if not fit.success:
            break
        if fit.alpha + 1.0 < first.alpha:
            return dataclasses.replace(fit, method=f"{fit.method}+clip_xmax", n_fingers=k - 1)
        if fit.alpha <= 2.0:
            break
    return dataclasses.replace(first, method=f"{first.method}+clip_xmax")


def _truncated(x: torch.Tensor, fit: PowerLawFit) -> PowerLawFit:
    """Refit the chosen tail as a truncated power law with the ``powerlaw`` package."""
    try:
        import powerlaw  # optional dependency
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "distribution='truncated_power_law' needs the 'powerlaw' package: pip install 'specmetrics[ww]'"
        ) from err
    import contextlib
    import io

    data = x.to(torch.float64).cpu().numpy()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        warnings.simplefilter("ignore")
        pl = powerlaw.Fit(data, xmin=fit.xmin, verbose=False)
        tpl = pl.truncated_power_law
        alpha, lam = float(tpl.alpha), float(tpl.Lambda)
        ks = float(tpl.D) if tpl.D is not None else math.nan
    if not math.isfinite(alpha):
        return dataclasses.replace(fit, success=False, alpha=math.nan, message="truncated power-law fit failed")
    return dataclasses.replace(fit, alpha=alpha, truncation=lam, ks_distance=ks, method=f"{fit.method}+tpl")
