"""Pure numpy functions from per-unit scores to sparsity ratios.

Every allocation is two steps:

1. a *mapping* turns the scores of the units into unnormalised per-unit values, either relative
   ratios ``r`` that are later scaled (AlphaPruning, uniform: ``s = η r``) or offsets ``d`` that
   are later shifted (OWL: ``s = c + d``);
2. :func:`solve_budget` finds the scale ``η`` or shift ``c`` that makes the parameter-weighted mean
   of the (optionally clipped) ratios exactly equal to the target.

References
----------
.. [1] H. Lu, Y. Zhou, S. Liu, Z. Wang, M. W. Mahoney, Y. Yang, "AlphaPruning: Using Heavy-Tailed
   Self Regularization Theory for Improved Layer-wise Pruning of Large Language Models",
   NeurIPS 2024 (code: ``lib/prune.py::ww_sparsity``).
.. [2] L. Yin et al., "Outlier Weighed Layerwise Sparsity (OWL): A Missing Secret Sauce for Pruning
   LLMs to High Sparsity", ICML 2024 (code: ``lib/prune_all.py``).
"""
from __future__ import annotations

import numpy as np

from .._validation import ParameterError, check_choice

__all__ = [
    "normalize_scores",
    "alphapruning_ratios",
    "owl_offsets",
    "outlier_ratio",
    "solve_budget",
    "weighted_mean",
]

NORMALIZATIONS = ("minmax", "rank")


def _as_1d(values, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one-dimensional, got shape {arr.shape}.")
    return arr


def normalize_scores(scores, method: str = "minmax") -> np.ndarray:
    """Map scores onto [0, 1], preserving their order.

    Parameters
    ----------
    scores : array_like, shape (n_units,)
        Finite scores.
    method : {"minmax", "rank"}, default "minmax"
        ``"minmax"``: ``(x - min) / (max - min)`` (AlphaPruning, OWL). ``"rank"``: the average
        rank of each score (ties share a rank), ``(rank - 1) / (n - 1)``; insensitive to outlying
        values.

    Returns
    -------
    ndarray, shape (n_units,)
        Values in [0, 1]. When all scores are equal (or there is one unit) every value is 0.5, the
        limit that makes both mappings uniform.
    """
    check_choice(method, NORMALIZATIONS, name="normalize", func="normalize_scores")
    x = _as_1d(scores, "scores")
    if x.size == 0:
        return x.copy()
    if not np.all(np.isfinite(x)):
        raise ValueError("scores must be finite; handle degenerate metrics before normalising.")
    if method == "minmax":
        lo, hi = x.min(), x.max()
        if hi == lo:
            return np.full_like(x, 0.5)
        return (x - lo) / (hi - lo)
    if x.size == 1:
        return np.full_like(x, 0.5)
    order = np.argsort(x, kind="stable")
    sorted_x = x[order]
    ranks = np.empty_like(x)
    # average rank within runs of equal values (1-based)
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], x.size]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2.0
    return (ranks - 1.0) / (x.size - 1.0)


def alphapruning_ratios(scores, epsilon: float, *, normalize: str = "minmax",
                        invert: bool = False) -> np.ndarray:
    """AlphaPruning's relative ratios ``r`` in ``[1 - ε, 1 + ε]`` (before the budget scale).

    Parameters
    ----------
    scores : array_like, shape (n_units,)
        Finite per-unit metric values (e.g. ``alpha_peak``).
    epsilon : float
        Half-width ε of the band, in [0, 1]. ε = 0 gives uniform ratios.
    normalize : {"minmax", "rank"}, default "minmax"
        How scores are mapped to [0, 1] (see :func:`normalize_scores`).
    invert : bool, default False
        ``False``: a higher score gives a higher ratio (more sparsity), AlphaPruning's direction
        for alpha. ``True`` reverses it, for metrics where higher means better trained.

    Returns
    -------
    ndarray, shape (n_units,)
        ``r = u · 2ε + (1 - ε)`` with ``u`` the normalised scores.

    Notes
    -----
    AlphaPruning [1]_ then sets ``s = η r`` with ``η = S Σ p / Σ p r`` (``p`` parameter counts,
    ``S`` the target); :func:`solve_budget` with ``base=0, slope=r`` does this, and also clips.

    References
    ----------
    .. [1] H. Lu et al., "AlphaPruning", NeurIPS 2024, ``lib/prune.py::ww_sparsity``.
    """
    u = normalize_scores(scores, normalize)
    if invert:
        u = 1.0 - u
    # (1 + ε) - (1 - ε) computed as in the reference so that ε's rounding matches
    lo, hi = 1.0 - epsilon, 1.0 + epsilon
    return u * (hi - lo) + lo


def owl_offsets(outlier_ratios, lam: float, *, normalize: str = "minmax") -> np.ndarray:
    """OWL's per-unit offsets ``d`` in ``[-2λ, 0]`` (before the budget shift).

    Parameters
    ----------
    outlier_ratios : array_like, shape (n_units,)
        Per-unit outlier ratio ``D`` (percent of Wanda scores above ``M · mean``).
    lam : float
        λ: the ratios span at most ``2λ``.
    normalize : {"minmax", "rank"}, default "minmax"
        How ``D`` is mapped to [0, 1].

    Returns
    -------
    ndarray, shape (n_units,)
        ``d = -2λ u``: a unit with more outliers is pruned less. With ``s = c + d`` and equal unit
        sizes, the budget shift gives OWL's ``s_l = S - 2λ u_l + mean(2λ u)`` [1]_.

    References
    ----------
    .. [1] L. Yin et al., "OWL", ICML 2024, ``lib/prune_all.py::prune_wanda_outlier``.
    """
    u = normalize_scores(outlier_ratios, normalize)
    return -(u * (lam * 2.0))


def outlier_ratio(scores, m: float) -> float:
    """Percentage of entries above ``m`` times their mean (OWL's layer outlier ratio).

    Parameters
    ----------
    scores : array_like
        Nonnegative scores of any shape (e.g. the concatenated Wanda scores of a block).
    m : float
        Threshold multiple ``M``.

    Returns
    -------
    float
        ``100 · #{A > M · mean(A)} / #A``; NaN for an empty input.
    """
    a = np.asarray(scores, dtype=np.float64).ravel()
    if a.size == 0:
        return float("nan")
    return float(np.count_nonzero(a > a.mean() * m)) * 100.0 / a.size


def weighted_mean(values, weights) -> float:
    """Parameter-weighted mean ``Σ w v / Σ w``.

    Parameters
    ----------
    values, weights : array_like, shape (n,)

    Returns
    -------
    float
    """
    v = _as_1d(values, "values")
    w = _as_1d(weights, "weights")
    return float(np.dot(w, v) / w.sum())


def _clipped_mean(t: float, base, slope, weights, lo, hi) -> float:
    return float(np.dot(weights, np.clip(base + t * slope, lo, hi)))


def solve_budget(base, slope, weights, target: float, *, clip=None) -> tuple[np.ndarray, float]:
    """Ratios ``s_i = clip(base_i + t · slope_i)`` whose weighted mean is exactly ``target``.

    The weighted mean is a continuous, nondecreasing, piecewise-linear function of ``t`` whose
    breakpoints are where an item reaches a clip bound. The segment holding the target is found by
    binary search over the sorted breakpoints and ``t`` is solved in closed form on it, so the
    mean is exact to rounding (no iteration tolerance).

    Parameters
    ----------
    base : array_like, shape (n,)
        Value of each item at ``t = 0`` (0 for a scale, the offsets for a shift).
    slope : array_like, shape (n,)
        Nonnegative rate of each item (the relative ratios for a scale, 1 for a shift).
    weights : array_like, shape (n,)
        Positive weights (parameter counts).
    target : float
        Required weighted mean.
    clip : tuple of (float, float) or None, default None
        ``(lo, hi)`` bounds applied to every ratio; ``None`` for none.

    Returns
    -------
    ratios : ndarray, shape (n,)
    t : float
        The solved scale or shift.

    Raises
    ------
    ParameterError
        When no ``t`` reaches the target: the target is outside what the clip bounds allow, or no
        item can move (every slope zero) and the fixed mean differs from the target.

    Examples
    --------
    >>> import numpy as np
    >>> from specmetrics.allocation.mapping import solve_budget
    >>> s, eta = solve_budget([0, 0, 0], [0.8, 1.0, 1.2], [1, 1, 2], 0.9, clip=(0.0, 0.99))
    >>> np.round(s, 6).tolist(), round(eta, 6), round(float(np.dot([1, 1, 2], s) / 4), 12)
    ([0.72, 0.9, 0.99], 0.9, 0.9)
    """
    b = _as_1d(base, "base")
    k = _as_1d(slope, "slope")
    w = _as_1d(weights, "weights")
    if not (b.shape == k.shape == w.shape):
        raise ValueError("base, slope and weights must have the same shape.")
    if b.size == 0:
        return b.copy(), 0.0
    if np.any(k < 0) or not np.all(np.isfinite(k)) or not np.all(np.isfinite(b)):
        raise ValueError("slope must be finite and nonnegative, base finite.")
    if np.any(w <= 0) or not np.all(np.isfinite(w)):
        raise ValueError("weights must be finite and positive.")
    total = w.sum()
    goal = target * total
    moving = k > 0
    tol = 1e-12 * max(1.0, abs(goal), float(total))  # 1e-12 in units of the mean ratio

    if clip is None:
        fixed = float(np.dot(w[~moving], b[~moving]))
        rate = float(np.dot(w[moving], k[moving]))
        offset = float(np.dot(w[moving], b[moving]))
        if rate == 0.0:
            if abs(fixed - goal) > tol:
                raise ParameterError(
                    f"The 'target' parameter of allocate must equal the mean of the fixed ratios "
                    f"({fixed / total!r}) when no ratio can move. Got {target!r} instead."
                )
            return b.copy(), 0.0
        t = (goal - fixed - offset) / rate
        return b + t * k, float(t)

    lo, hi = float(clip[0]), float(clip[1])
    fixed_vals = np.clip(b[~moving], lo, hi)
    fixed = float(np.dot(w[~moving], fixed_vals))
    reach_lo = fixed + lo * float(w[moving].sum())
    reach_hi = fixed + hi * float(w[moving].sum())
    if goal < reach_lo - tol or goal > reach_hi + tol:
        raise ParameterError(
            f"The 'target' parameter of allocate must be reachable with clip=({lo!r}, {hi!r}), "
            f"i.e. in [{reach_lo / total!r}, {reach_hi / total!r}] for these ratios. "
            f"Got {target!r} instead."
        )
    if not np.any(moving):
        return fixed_vals.astype(np.float64), 0.0
    bm, km = b[moving], k[moving]
    points = np.unique(np.concatenate(((lo - bm) / km, (hi - bm) / km)))
    # smallest breakpoint index whose mean reaches the goal (the mean at points[-1] is reach_hi)
    left, right = 0, points.size - 1
    if _clipped_mean(points[0], b, k, w, lo, hi) >= goal:
        right = 0
    while left < right:
        mid = (left + right) // 2
        if _clipped_mean(points[mid], b, k, w, lo, hi) >= goal:
            right = mid
        else:
            left = mid + 1
    if right == 0:
        t = float(points[0])
    else:
        t0, t1 = float(points[right - 1]), float(points[right])
        middle = 0.5 * (t0 + t1)
        vals = b + middle * k
        free = moving & (vals > lo) & (vals < hi)
        clamped = np.clip(vals, lo, hi)
        rate = float(np.dot(w[free], k[free]))
        if rate == 0.0:
            t = t0
        else:
            rest = float(np.dot(w[~free], clamped[~free]))
            t = (goal - rest - float(np.dot(w[free], b[free]))) / rate
            t = min(max(t, t0), t1)
    return np.clip(b + t * k, lo, hi), float(t)
