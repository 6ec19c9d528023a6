"""How sparse are these data? The metrics of a given dictionary, and of a learned one.

- :func:`dictionary_metrics`: code the data with a *given* dictionary (the planted one of
  synthetic data: the oracle) and return every metric, λ adaptive by default.
- :func:`estimate_sparsity`: learn a dictionary (:func:`~specmetrics.sparse_coding.
  learn_dictionary`), then code all the data with it: the paper's measurement.
- :func:`sparsity_band`: the estimate repeated over seeds, with its spread.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Optional, Sequence

import torch

from .._results import KeyedResult, nan_if_none
from .._validation import check_bool, check_device, check_interval, check_positive_int, \
    check_seed, fail
from ._checks import check_dtype, check_matrix
from .coding import DEFAULT_STEP_TOL, check_step_tol, code_summary, default_chunk_size, \
    default_max_atoms, padded_gram
from .dictionary import DEFAULT_BATCH_SIZE, DEFAULT_LAMBDA_RATIO, DEFAULT_LR, DEFAULT_STEPS, \
    ConvergenceWarning, SampleSizeWarning, _learn, rms_scale
from .metrics import CodingMetrics, implied_a, metrics_from_summary
from .synthetic import SyntheticActivations

__all__ = ["dictionary_metrics", "estimate_sparsity", "SparsityEstimate", "sparsity_band",
           "SparsityBand", "MIN_SAMPLES_PER_ATOM"]

#: Fewer samples per atom than this draws a :class:`SampleSizeWarning`.
MIN_SAMPLES_PER_ATOM = 4


def _data_of(data: Any, func: str) -> torch.Tensor:
    if isinstance(data, SyntheticActivations):
        data = data.data
    return check_matrix(data, name="data", func=func, min_rows=2, min_cols=2)


def _center(x: torch.Tensor) -> torch.Tensor:
    return (x.to(torch.float64) - x.to(torch.float64).mean(dim=0, keepdim=True)).to(x.dtype)


def _solve(xs: torch.Tensor, phi: torch.Tensor, *, lam: Optional[float], kappa: float,
           max_atoms: int, step_tol: float, chunk_size: int, lambda_tol: float,
           max_lambda_iter: int, energy: float, scale: float, func: str,
           start: Optional[float] = None) -> CodingMetrics:
    """Code ``xs`` (data / scale) with ``phi``; λ given (data units) or the fixed point,
    iterated from ``start`` (normalised units) or from the first greedy step."""
    gram = padded_gram(phi)

    def summary(value):
        return code_summary(xs, phi, value, max_atoms=max_atoms, chunk_size=chunk_size,
                            step_tol=step_tol, gram=gram)

    if lam is not None:
        s = summary(lam / scale)
        return metrics_from_summary(s, lam / scale, scale=scale, total_energy=energy)
    # the fixed point lam = kappa * mean max alpha(lam), started from the first greedy step
    if start is not None and start > 0:
        value = float(start)
    else:
        first = torch.cat([(xs[i:i + chunk_size] @ phi).amax(dim=1)
                           for i in range(0, xs.shape[0], chunk_size)])
        value = kappa * float(first.clamp_min(0).to(torch.float64).mean()) / (1 + kappa / 2)
    if not value > 0:
        raise fail("data", func, "data with some positive dot product with the dictionary",
                   "no sample correlates positively with any atom")
    s = summary(value)
    iterations = 1
    for _ in range(max_lambda_iter):
        new = kappa * float(s.max.mean())
        if not new > 0:
            raise fail("data", func, "data the dictionary can code (every code is empty)",
                       "all-zero codes")
        change = abs(new - value) / value
        value = new
        s = summary(value)
        iterations += 1
        if change <= lambda_tol:
            break
    else:
        warnings.warn(f"{func}: the adaptive lambda did not reach its fixed point within "
                      f"{max_lambda_iter} iterations (last relative change {change:.2e})",
                      ConvergenceWarning, stacklevel=3)
    return metrics_from_summary(s, value, scale=scale, lambda_ratio=kappa,
                                lambda_iterations=iterations, total_energy=energy)


def _prepare_eval(x: torch.Tensor, *, device, dtype, func: str
                  ) -> tuple[torch.Tensor, float, float]:
    scale = rms_scale(x)
    if not scale > 0:
        raise fail("data", func, "data that are not all zero", "an all-zero tensor")
    xs = (x.to(torch.float64) / scale).to(device=device, dtype=dtype)
    energy = float(xs.to(torch.float64).pow(2).sum())
    return xs, scale, energy


@torch.no_grad()
def dictionary_metrics(data, dictionary, *, lam: Optional[float] = None,
                       lambda_ratio: float = DEFAULT_LAMBDA_RATIO,
                       max_atoms: Optional[int] = None, step_tol: float = DEFAULT_STEP_TOL,
                       dtype=torch.float64, device=None, chunk_size: Optional[int] = None,
                       lambda_tol: float = 1e-4, max_lambda_iter: int = 30) -> CodingMetrics:
    """Every metric of coding ``data`` with a given dictionary (e.g. the planted oracle).

    Parameters
    ----------
    data : torch.Tensor, numpy.ndarray or SyntheticActivations, shape (n, d)
    dictionary : torch.Tensor, shape (d, m)
        Atoms as columns; normalised to unit norm here (a zero column is an error).
    lam : float, optional
        A fixed ℓ1 weight in data units; default: adaptive (the fixed point
        ``λ = lambda_ratio · mean max α``).
    lambda_ratio : float, default 0.1
        κ of the adaptive λ, in (0, 1].
    max_atoms : int, optional
        Cap on greedy steps per sample (default ``max(4 d, 64)``).
    step_tol : float, default 1e-3
        Relative floor of a greedy step.
    dtype : torch.dtype, default torch.float64
        Compute dtype (float64 by default: the metrics are then invariant to rescaling the data
        far below 1e-6; float32 is exact for power-of-two factors).
    device : torch.device or str, optional
        Default: the device of ``data``.
    chunk_size : int, optional
        Samples coded together.
    lambda_tol : float, default 1e-4
        Relative tolerance of the fixed-point iteration. (``M(λ)`` jumps by tiny amounts where
        a sample's greedy path changes, so the iteration can end in a cycle of relative width
        about 1e-5; the metrics move far less than λ over such a cycle.)
    max_lambda_iter : int, default 30

    Returns
    -------
    CodingMetrics
    """
    func = "dictionary_metrics"
    x = _data_of(data, func)
    phi = check_matrix(dictionary, name="dictionary", func=func, rows=int(x.shape[1]))
    if lam is not None:
        lam = check_interval(lam, 0.0, math.inf, name="lam", func=func, closed="neither")
    kappa = check_interval(lambda_ratio, 0.0, 1.0, name="lambda_ratio", func=func,
                           closed="right")
    d, m = phi.shape
    max_atoms = default_max_atoms(d, m) if max_atoms is None else \
        check_positive_int(max_atoms, name="max_atoms", func=func)
    step_tol = check_step_tol(step_tol, func)
    dtype = check_dtype(dtype, func=func, allow_none=False)
    device = check_device(device, func=func)
    chunk_size = default_chunk_size(m) if chunk_size is None else \
        check_positive_int(chunk_size, name="chunk_size", func=func)
    lambda_tol = check_interval(lambda_tol, 0.0, 1.0, name="lambda_tol", func=func,
                                closed="neither")
    max_lambda_iter = check_positive_int(max_lambda_iter, name="max_lambda_iter", func=func)
    norms = phi.to(torch.float64).norm(dim=0)
    if bool((norms <= 0).any()):
        raise fail("dictionary", func, "a dictionary without zero columns",
                   f"{int((norms <= 0).sum())} zero columns")
    device = device if device is not None else x.device
    xs, scale, energy = _prepare_eval(x, device=device, dtype=dtype, func=func)
    phi = (phi.to(torch.float64) / norms).to(device=device, dtype=dtype)
    return _solve(xs, phi, lam=lam, kappa=kappa, max_atoms=max_atoms, step_tol=step_tol,
                  chunk_size=chunk_size, lambda_tol=lambda_tol,
                  max_lambda_iter=max_lambda_iter, energy=energy, scale=scale, func=func)


@dataclass(frozen=True)
class SparsityEstimate:
    """The sparsity of a data set measured with a learned dictionary.

    Attributes
    ----------
    n0 : float
        Mean number of non-zero coefficients per sample.
    loss : float
        Final loss ``L`` on all (evaluated) samples, in the squared units of the data.
    s1 : float
        Average coefficient norm ``mean ‖α‖₁ / mean max α`` (ratio of means).
    normalized_loss : float
        ``L_norm = L / (λ mean max α)``: the paper's sparsity measure (lower: sparser).
    dictionary : torch.Tensor, shape (d, n_features)
        The learned unit-norm atoms.
    converged : bool
        Whether the dictionary learning settled and every coding finished (see ``message``).
    message : str
    metrics : CodingMetrics
        Every metric of the final coding (λ, standard errors, relative error, ...).
    history : tuple of float
        Batch normalised loss at every training step.
    settings : mapping
        The options used.
    """

    n0: float
    loss: float
    s1: float
    normalized_loss: float
    dictionary: torch.Tensor = field(repr=False)
    converged: bool
    message: str
    metrics: CodingMetrics = field(repr=False)
    history: tuple = field(repr=False, default=())
    settings: Mapping = field(repr=False, default_factory=dict)

    @property
    def lam(self) -> float:
        """The final (adaptive) λ, in data units."""
        return self.metrics.lam

    @property
    def a_estimate(self) -> float:
        """``L_norm`` read as a number of active features per sample: the ``a`` of sparse linear
        data whose oracle ``S₁`` equals it (:func:`~specmetrics.sparse_coding.implied_a`)."""
        return implied_a(self.normalized_loss)

    def as_dict(self) -> dict:
        """The scalar metrics (every :class:`CodingMetrics` field, ``converged``, ``message``,
        ``a_estimate``) as a plain ``dict``."""
        out = self.metrics.as_dict()
        out.update(converged=self.converged, message=self.message,
                   a_estimate=self.a_estimate)
        return out

    def to_frame(self):
        """One row: the fields of :meth:`as_dict`.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        return pd.DataFrame([self.as_dict()])


def _check_estimate_options(func, *, n_features, d, n, seed, device, steps, batch_size, lr,
                            lambda_ratio, center, dtype, max_atoms, step_tol, tol,
                            eval_samples, progress, warn):
    m = 8 * d if n_features is None else check_positive_int(n_features, name="n_features",
                                                               func=func)
    out = dict(
        m=m, seed=check_seed(seed, func=func), device=check_device(device, func=func),
        steps=check_positive_int(steps, name="steps", func=func),
        batch_size=check_positive_int(batch_size, name="batch_size", func=func),
        lr=check_interval(lr, 0.0, 2.0, name="lr", func=func, closed="right"),
        kappa=check_interval(lambda_ratio, 0.0, 1.0, name="lambda_ratio", func=func,
                             closed="right"),
        center=check_bool(center, name="center", func=func),
        dtype=check_dtype(dtype, func=func, allow_none=False),
        max_atoms=default_max_atoms(d, m) if max_atoms is None else
        check_positive_int(max_atoms, name="max_atoms", func=func),
        step_tol=check_step_tol(step_tol, func),
        tol=check_interval(tol, 0.0, 1.0, name="tol", func=func, closed="neither"),
        eval_samples=None if eval_samples is None else
        check_positive_int(eval_samples, name="eval_samples", func=func),
        progress=check_bool(progress, name="progress", func=func),
        warn=check_bool(warn, name="warn", func=func))
    return out


def _estimate(x: torch.Tensor, o: dict, *, func: str) -> SparsityEstimate:
    n, d = x.shape
    if o["center"]:
        x = _center(x)
    device = o["device"] if o["device"] is not None else x.device
    scale = rms_scale(x)
    if not scale > 0:
        raise fail("data", func, "data that are not all zero (after centring)",
                   "an all-zero tensor")
    if o["warn"] and n < MIN_SAMPLES_PER_ATOM * o["m"]:
        warnings.warn(f"{func}: {n} samples for {o['m']} atoms ({n / o['m']:.1f} per atom); "
                      f"with fewer than {MIN_SAMPLES_PER_ATOM} per atom the dictionary fits the "
                      "sample itself and the normalised loss is biased low: use more samples or "
                      "fewer atoms (n_features)", SampleSizeWarning, stacklevel=3)
    learned = _learn(x, m=o["m"], steps=o["steps"], batch_size=min(o["batch_size"], n),
                     lr=o["lr"], kappa=o["kappa"], seed=o["seed"], device=device,
                     dtype=o["dtype"], init="data", max_atoms=o["max_atoms"],
                     step_tol=o["step_tol"], tol=o["tol"], progress=o["progress"],
                     warn=o["warn"], scale=scale)
    evaluated = x
    if o["eval_samples"] is not None and o["eval_samples"] < n:
        generator = torch.Generator().manual_seed(o["seed"] + 1)
        idx = torch.randperm(n, generator=generator)[:o["eval_samples"]].sort().values
        evaluated = x[idx.to(x.device)]
    xs = (evaluated.to(torch.float64) / scale).to(device=device, dtype=o["dtype"])
    energy = float(xs.to(torch.float64).pow(2).sum())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        metrics = _solve(xs, learned.dictionary, lam=None, kappa=o["kappa"],
                         max_atoms=o["max_atoms"], step_tol=o["step_tol"],
                         chunk_size=default_chunk_size(o["m"]), lambda_tol=1e-3,
                         max_lambda_iter=10, energy=energy, scale=scale, func=func,
                         start=learned.lam / scale)
    converged, message = learned.converged, learned.message
    if caught:
        converged = False
        message += "; the adaptive lambda of the final coding did not settle"
    if metrics.capped_fraction > 0:
        converged = False
        message += (f"; {metrics.capped_fraction:.2%} of the final codings hit max_atoms "
                    f"({o['max_atoms']})")
        if o["warn"]:
            warnings.warn(f"{func}: {metrics.capped_fraction:.2%} of the codings hit "
                          f"max_atoms={o['max_atoms']}", ConvergenceWarning, stacklevel=3)
    settings = {"n_features": o["m"], "seed": o["seed"], "steps": o["steps"],
                "batch_size": min(o["batch_size"], n), "lr": o["lr"],
                "lambda_ratio": o["kappa"], "center": o["center"],
                "dtype": str(o["dtype"]).replace("torch.", ""), "max_atoms": o["max_atoms"],
                "step_tol": o["step_tol"], "tol": o["tol"], "n_samples": n, "d": d,
                "eval_samples": int(evaluated.shape[0]), "device": str(device)}
    return SparsityEstimate(n0=metrics.n0, loss=metrics.loss, s1=metrics.s1,
                            normalized_loss=metrics.normalized_loss,
                            dictionary=learned.dictionary, converged=converged,
                            message=message, metrics=metrics, history=learned.history,
                            settings=settings)


def estimate_sparsity(data, *, n_features: Optional[int] = None, seed: int = 0, device=None,
                      steps: int = DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE,
                      lr: float = DEFAULT_LR, lambda_ratio: float = DEFAULT_LAMBDA_RATIO,
                      center: bool = False, dtype=torch.float32,
                      max_atoms: Optional[int] = None, step_tol: float = DEFAULT_STEP_TOL,
                      tol: float = 0.02, eval_samples: Optional[int] = None,
                      progress: bool = False, warn: bool = True) -> SparsityEstimate:
    """Measure how sparse-linear ``data`` are: learn a dictionary, code the data, report.

    The measurement of Deng, Tao & Benton (2023): a dictionary of ``n_features`` unit atoms is
    learned by SGD with the greedy non-negative coding and an adaptive λ
    (:func:`~specmetrics.sparse_coding.learn_dictionary`); then every sample is coded with it,
    λ at its fixed point ``λ = lambda_ratio · mean max α``, and the metrics are computed
    (:mod:`~specmetrics.sparse_coding.metrics`). Every metric is invariant to rescaling the data
    (they are divided by their RMS norm first). Lower ``normalized_loss`` means sparser; for
    sparse linear data with ``a`` active features per sample it tracks the oracle
    ``oracle_s1(a)``; Gaussian data score about 30 at ``d = 256``.

    Parameters
    ----------
    data : torch.Tensor, numpy.ndarray or SyntheticActivations, shape (n, d)
        One sample (token) per row.
    n_features : int, optional
        Dictionary size; default ``8 d`` (the paper's).
    seed : int, default 0
        Seeds the initial dictionary, the minibatches and the evaluation subset.
    device : torch.device or str, optional
        Where to compute (default: the device of ``data``); on a GPU everything runs there.
    steps, batch_size, lr, lambda_ratio
        Of the dictionary learning (defaults 300, 1024, 0.5, 0.1).
    center : bool, default False
        Subtract the mean sample first (the synthetic data are centred already).
    dtype : torch.dtype, default torch.float32
        Compute dtype (float32 or float64).
    max_atoms : int, optional
        Cap on greedy steps per sample (default ``max(4 d, 64)``); hitting it is reported.
    step_tol : float, default 1e-3
        Relative floor of a greedy step.
    tol : float, default 0.02
        Relative tolerance of the convergence check of the learning.
    eval_samples : int, optional
        Evaluate the final metrics on this many samples drawn without replacement (default:
        all).
    progress : bool, default False
    warn : bool, default True
        Emit :class:`~specmetrics.sparse_coding.ConvergenceWarning` when something did not
        settle (``converged`` and ``message`` say it either way).

    Returns
    -------
    SparsityEstimate

    Warns
    -----
    SampleSizeWarning
        With fewer than 4 samples per atom (``n < 4 n_features``): the dictionary then fits the
        sample itself and ``normalized_loss`` is biased low (Gaussian data, d = 64, 256 atoms:
        7.8 with 4 samples per atom, 13.1 with 16). The paper has 8 (16384 samples, 2048
        atoms).
    ConvergenceWarning
        When the learning or the final λ did not settle, or codings hit ``max_atoms``.

    Notes
    -----
    Cost: each step codes ``batch_size`` samples, about ``batch_size × N₀' × n_features``
    memory-bound operations (``N₀'``: greedy steps per sample, a little above ``N₀``), plus a
    few full coding passes at the end for λ. Measured on one CPU core (2-core shared machine):
    d = 256, n = 16384, 8d atoms, 300 steps of 1024: 106 s (``benchmarks/RESULTS.md``, sparse coding).

    Examples
    --------
    >>> from specmetrics.sparse_coding import make_sparse_linear, estimate_sparsity
    >>> est = estimate_sparsity(make_sparse_linear(32, 4096, 2.0, sigma=0.02))  # doctest: +SKIP
    >>> est.normalized_loss, est.converged  # doctest: +SKIP
    (1.9..., True)
    """
    func = "estimate_sparsity"
    x = _data_of(data, func)
    n, d = x.shape
    options = _check_estimate_options(
        func, n_features=n_features, d=d, n=n, seed=seed, device=device, steps=steps,
        batch_size=batch_size, lr=lr, lambda_ratio=lambda_ratio, center=center, dtype=dtype,
        max_atoms=max_atoms, step_tol=step_tol, tol=tol, eval_samples=eval_samples,
        progress=progress, warn=warn)
    return _estimate(x, options, func=func)


@dataclass(frozen=True)
class _BandRow:
    seed: int
    n0: float
    loss: float
    s1: float
    normalized_loss: float
    converged: bool


class SparsityBand(KeyedResult):
    """:func:`estimate_sparsity` over several seeds, keyed ``"seed=<s>"``.

    Each value is a row with ``seed``, ``n0``, ``loss``, ``s1``, ``normalized_loss`` and
    ``converged``; :attr:`mean`, :attr:`low`, :attr:`high` and :attr:`std` summarise
    ``normalized_loss`` over the seeds.

    Attributes
    ----------
    rows : tuple
        The per-seed rows, in the order run.
    settings : Settings
        The options of :func:`estimate_sparsity` and the seeds.
    """

    rows: tuple

    def __init__(self, rows, settings: Optional[Mapping] = None):
        rows = tuple(rows)
        object.__setattr__(self, "rows", rows)
        self._init_result({f"seed={r.seed}": r for r in rows}, settings or {})

    def _values(self, name: str = "normalized_loss") -> list[float]:
        return [getattr(r, name) for r in self.rows]

    @property
    def mean(self) -> float:
        """Mean ``normalized_loss`` over the seeds."""
        v = self._values()
        return math.fsum(v) / len(v)

    @property
    def std(self) -> float:
        """Sample standard deviation of ``normalized_loss`` (NaN for one seed)."""
        v = self._values()
        if len(v) < 2:
            return math.nan
        mu = math.fsum(v) / len(v)
        return math.sqrt(math.fsum((x - mu) ** 2 for x in v) / (len(v) - 1))

    @property
    def low(self) -> float:
        """Smallest ``normalized_loss`` over the seeds."""
        return min(self._values())

    @property
    def high(self) -> float:
        """Largest ``normalized_loss`` over the seeds."""
        return max(self._values())

    def to_frame(self):
        """One row per seed (index ``"seed=<s>"``), the fields of each row.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        frame = pd.DataFrame([asdict(r) for r in self.rows],
                             index=[f"seed={r.seed}" for r in self.rows])
        frame.index.name = "run"
        return frame

    def plot(self, ax=None):
        """``normalized_loss`` of every seed with the mean and the min–max band.

        Returns
        -------
        matplotlib.axes.Axes
        """
        from ..plotting.sparse_coding import plot_sparsity_band

        return plot_sparsity_band(self, ax=ax)

    def _to_payload(self) -> Any:
        return {"rows": [asdict(r) for r in self.rows]}

    @classmethod
    def _from_payload(cls, data: Any, settings: Mapping) -> "SparsityBand":
        rows = []
        for row in data["rows"]:
            row = dict(row)
            for f in ("n0", "loss", "s1", "normalized_loss"):
                row[f] = nan_if_none(row[f])
            rows.append(_BandRow(**row))
        return cls(rows, dict(settings))


def sparsity_band(data, *, seeds: Sequence[int] = (0, 1, 2), **options) -> SparsityBand:
    """:func:`estimate_sparsity` once per seed: the estimate with its spread over seeds.

    Parameters
    ----------
    data : as for :func:`estimate_sparsity`
    seeds : sequence of int, default (0, 1, 2)
        Distinct seeds (at least one).
    **options
        Any keyword option of :func:`estimate_sparsity` but ``seed`` (checked before the first
        run).

    Returns
    -------
    SparsityBand
    """
    func = "sparsity_band"
    x = _data_of(data, func)
    try:
        seeds = [check_seed(s, name="seeds", func=func) for s in seeds]
    except TypeError:
        raise fail("seeds", func, "a sequence of integer seeds >= 0", seeds) from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise fail("seeds", func, "a non-empty sequence of distinct seeds", seeds)
    allowed = {f.name for f in fields(_OptionNames)}
    unknown = sorted(set(options) - allowed)
    if unknown:
        raise fail(unknown[0], func, f"one of the options of estimate_sparsity "
                   f"({', '.join(sorted(allowed))})", options[unknown[0]])
    n, d = x.shape
    checked = _check_estimate_options(func, d=d, n=n, seed=seeds[0], **{
        **{f.name: f.default for f in fields(_OptionNames)}, **options})
    rows = []
    settings = None
    for s in seeds:
        est = _estimate(x, {**checked, "seed": s}, func=func)
        rows.append(_BandRow(seed=s, n0=est.n0, loss=est.loss, s1=est.s1,
                             normalized_loss=est.normalized_loss, converged=est.converged))
        if settings is None:
            settings = {k: v for k, v in est.settings.items() if k != "seed"}
    return SparsityBand(rows, {**settings, "seeds": list(seeds)})


@dataclass(frozen=True)
class _OptionNames:
    """The keyword options of :func:`estimate_sparsity` (but ``seed``) and their defaults."""

    n_features: Optional[int] = None
    device: Any = None
    steps: int = DEFAULT_STEPS
    batch_size: int = DEFAULT_BATCH_SIZE
    lr: float = DEFAULT_LR
    lambda_ratio: float = DEFAULT_LAMBDA_RATIO
    center: bool = False
    dtype: Any = torch.float32
    max_atoms: Optional[int] = None
    step_tol: float = DEFAULT_STEP_TOL
    tol: float = 0.02
    eval_samples: Optional[int] = None
    progress: bool = False
    warn: bool = True
