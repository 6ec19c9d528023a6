"""Hypothesis strategies shared by the test suite.

Import them as ``from strategies import random_matrices`` (``tests/`` is on pytest's
``pythonpath``). Every strategy draws an integer seed and builds its data with
``np.random.default_rng(seed)``, so Hypothesis controls (and shrinks, and replays) all randomness.
Add new strategies here rather than in test modules.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "PlantedPowerLaw",
    "planted_power_laws",
    "power_law_samples",
    "random_matrices",
    "seeds",
]

#: A seed for ``np.random.default_rng`` / ``torch.Generator.manual_seed``.
seeds = st.integers(min_value=0, max_value=2**32 - 1)


@st.composite
def random_matrices(
    draw: st.DrawFn,
    *,
    min_side: int = 10,
    max_side: int = 60,
    dtype: type = np.float64,
) -> np.ndarray:
    """Dense real matrices with i.i.d. standard normal entries.

    Each side is drawn independently from ``[min_side, max_side]`` (so both wide and tall shapes
    appear); the entries come from a Hypothesis-drawn seed.

    Returns
    -------
    numpy.ndarray, shape (m, n), dtype ``dtype``
    """
    m = draw(st.integers(min_side, max_side))
    n = draw(st.integers(min_side, max_side))
    rng = np.random.default_rng(draw(seeds))
    return rng.standard_normal((m, n)).astype(dtype, copy=False)


class PlantedPowerLaw(NamedTuple):
    """A sample from a continuous power law with known parameters.

    ``values`` follows the density ``p(x) = (alpha - 1) / xmin * (x / xmin) ** -alpha`` for
    ``x >= xmin`` (no upper cut-off), in the order drawn (unsorted).
    """

    values: np.ndarray
    alpha: float
    xmin: float


@st.composite
def planted_power_laws(
    draw: st.DrawFn,
    *,
    min_alpha: float = 1.5,
    max_alpha: float = 6.0,
    min_n: int = 200,
    max_n: int = 2000,
    min_log10_xmin: float = -3.0,
    max_log10_xmin: float = 3.0,
) -> PlantedPowerLaw:
    """Pure power-law samples with their true ``alpha`` and ``xmin`` (inverse-CDF sampling).

    ``alpha`` in ``[min_alpha, max_alpha]``, sample size in ``[min_n, max_n]``, ``xmin`` log-uniform
    in ``[10**min_log10_xmin, 10**max_log10_xmin]`` (always > 0). float64 values.
    """
    alpha = draw(st.floats(min_alpha, max_alpha, allow_nan=False, allow_infinity=False))
    n = draw(st.integers(min_n, max_n))
    xmin = 10.0 ** draw(st.floats(min_log10_xmin, max_log10_xmin, allow_nan=False))
    rng = np.random.default_rng(draw(seeds))
    # Inverse CDF: P(X > x) = (x / xmin) ** (1 - alpha). 1 - U is in (0, 1], so values >= xmin.
    u = 1.0 - rng.random(n)
    values = xmin * u ** (-1.0 / (alpha - 1.0))
    return PlantedPowerLaw(values=values, alpha=float(alpha), xmin=float(xmin))


def power_law_samples(**kwargs) -> st.SearchStrategy[np.ndarray]:
    """Only the sample array of :func:`planted_power_laws` (same keyword arguments)."""
    return planted_power_laws(**kwargs).map(lambda planted: planted.values)


# ---------------------------------------------------------------------------------------------
# allocation: per-matrix scores of a LLaMA-style model, keyed by module name

#: The seven LLaMA projections of a decoder block, in registration order.
LLAMA_TYPES = (
    "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
    "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj",
)


class ModelScores(NamedTuple):
    """Per-matrix scores and parameter counts of a LLaMA-style model (``model.layers.<i>.<type>``).

    ``scores`` and ``n_params`` are dicts keyed by module name in model order.
    """

    scores: dict
    n_params: dict
    n_blocks: int


def llama_names(n_blocks: int) -> list:
    """``model.layers.<i>.<type>`` for every block and LLaMA projection, in model order."""
    return [f"model.layers.{i}.{t}" for i in range(n_blocks) for t in LLAMA_TYPES]


@st.composite
def model_scores(
    draw: st.DrawFn,
    *,
    min_blocks: int = 1,
    max_blocks: int = 12,
    min_score: float = 1.0,
    max_score: float = 8.0,
    ties: bool = True,
) -> ModelScores:
    """Scores (alpha-like, in ``[min_score, max_score]``) and parameter counts of a LLaMA-style
    model with a hidden size and an MLP width drawn per model.

    With ``ties=True`` a third of the drawn models take their scores from a handful of values, so
    equal scores (and equal block means) occur.
    """
    n_blocks = draw(st.integers(min_blocks, max_blocks))
    rng = np.random.default_rng(draw(seeds))
    hidden = int(rng.integers(8, 64))
    inter = int(rng.integers(8, 192))
    names = llama_names(n_blocks)
    if ties and draw(st.integers(0, 2)) == 0:
        pool = rng.uniform(min_score, max_score, size=3)
        values = rng.choice(pool, size=len(names))
    else:
        values = rng.uniform(min_score, max_score, size=len(names))
    counts = [hidden * hidden] * 4 + [hidden * inter] * 3
    return ModelScores(
        scores={n: float(v) for n, v in zip(names, values)},
        n_params={n: counts[j % 7] for j, n in enumerate(names)},
        n_blocks=n_blocks,
    )


__all__ += ["LLAMA_TYPES", "ModelScores", "llama_names", "model_scores"]


# ---------------------------------------------------------------------------
# Spectra and weight matrices (test_powerlaw, test_metrics, test_spectrum, test_layers)
# ---------------------------------------------------------------------------


class TailOverBulk(NamedTuple):
    """A Pareto tail (density ``~ x**-alpha`` above ``xmin``) appended to a bulk below ``xmin``.

    ``values`` holds the bulk then the tail (unsorted); ``n_tail`` values are ``>= xmin``.
    """

    values: np.ndarray
    alpha: float
    xmin: float
    n_tail: int


def _mp_bulk(rng: np.random.Generator, n: int, q: float) -> np.ndarray:
    """``n`` draws from the Marchenko-Pastur law of ratio ``q >= 1`` (inverse CDF on a grid),
    rescaled so that the bulk edge is 1."""
    hi, lo = (1 + q**-0.5) ** 2, (1 - q**-0.5) ** 2
    grid = np.linspace(lo, hi, 4001)
    density = np.sqrt(np.clip((hi - grid) * (grid - lo), 0.0, None)) / grid
    cdf = np.concatenate([[0.0], np.cumsum((density[1:] + density[:-1]) / 2)])
    return np.interp(rng.random(n), cdf / cdf[-1], grid) / hi


@st.composite
def tails_over_bulk(
    draw: st.DrawFn,
    *,
    min_alpha: float = 1.5,
    max_alpha: float = 6.0,
    min_n: int = 500,
    max_n: int = 5000,
    min_tail_fraction: float = 0.1,
    max_tail_fraction: float = 0.5,
    bulks: tuple = ("uniform", "mp"),
) -> TailOverBulk:
    """A planted power-law tail over a bulk: ``"uniform"`` on ``[0.01, 1) xmin`` or a
    Marchenko-Pastur bulk (ratio in [1, 4]) whose edge sits just below ``xmin``.

    ``xmin`` is log-uniform in ``[0.01, 100]``, well above the 1e-5 eigenvalue floor.
    """
    alpha = draw(st.floats(min_alpha, max_alpha))
    n = draw(st.integers(min_n, max_n))
    fraction = draw(st.floats(min_tail_fraction, max_tail_fraction))
    bulk_kind = draw(st.sampled_from(bulks))
    xmin = 10.0 ** draw(st.floats(-2.0, 2.0))
    rng = np.random.default_rng(draw(seeds))
    n_tail = max(2, int(n * fraction))
    tail = xmin * (1.0 - rng.random(n_tail)) ** (-1.0 / (alpha - 1.0))
    if bulk_kind == "uniform":
        bulk = xmin * rng.uniform(0.01, 1.0, n - n_tail)
    else:
        bulk = xmin * 0.999 * _mp_bulk(rng, n - n_tail, float(rng.uniform(1.0, 4.0)))
    return TailOverBulk(np.concatenate([bulk, tail]), float(alpha), float(xmin), n_tail)


@st.composite
def positive_spectra(draw: st.DrawFn, *, min_n: int = 20, max_n: int = 300) -> np.ndarray:
    """Positive eigenvalue-like spectra of assorted shapes, float64, unsorted.

    Log-normal, Pareto, Marchenko-Pastur (squared singular values of a Gaussian matrix),
    uniform, a bulk plus a few spikes, and spectra rounded to 2 significant digits (ties).
    Values lie in [1e-4, ...): above the 1e-5 eigenvalue floor (a scale of 10**[-1, 3] times
    values clipped at 1e-3).
    """
    n = draw(st.integers(min_n, max_n))
    kind = draw(st.sampled_from(("lognormal", "pareto", "mp", "uniform", "spiked", "ties")))
    scale = 10.0 ** draw(st.floats(-1.0, 3.0))
    rng = np.random.default_rng(draw(seeds))
    if kind == "lognormal":
        x = rng.lognormal(0.0, rng.uniform(0.2, 3.0), n)
    elif kind == "pareto":
        x = 1.0 + rng.pareto(rng.uniform(0.5, 5.0), n)
    elif kind == "mp":
        m = n + int(rng.integers(0, 3 * n))
        x = np.linalg.svd(rng.standard_normal((m, n)), compute_uv=False) ** 2 / m
    elif kind == "uniform":
        x = rng.uniform(0.01, 1.0, n)
    elif kind == "spiked":
        x = rng.uniform(0.1, 1.0, n)
        k = int(rng.integers(1, max(2, n // 10)))
        x[:k] *= 10.0 ** rng.uniform(0.5, 3.0, k)
    else:
        x = np.round(rng.lognormal(0.0, 1.0, n), 1) + 0.1
    return np.clip(x, 1e-3, None) * scale


@st.composite
def weight_matrices(
    draw: st.DrawFn,
    *,
    min_side: int = 20,
    max_side: int = 200,
    kinds: tuple = ("gaussian", "student_t", "pareto"),
    dtype: type = np.float32,
    min_aspect: float = 1.0,
) -> np.ndarray:
    """Random weight matrices, Gaussian or heavy-tailed (Student-t with 2-5 degrees of freedom,
    symmetric Pareto with index 2-5), wide and tall; scaled by ``10**[-1, 1]``.

    ``min_aspect > 1`` makes the long side at least that multiple of the short one (well away
    from square, so the smallest eigenvalue of ``W^T W`` stays away from 0).
    """
    m = draw(st.integers(min_side, max_side))
    n = draw(st.integers(min_side, max_side))
    if min_aspect > 1.0:
        short, long_ = min(m, n), max(m, n, int(np.ceil(min_aspect * min(m, n))))
        m, n = (short, long_) if draw(st.booleans()) else (long_, short)
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(seeds))
    if kind == "gaussian":
        w = rng.standard_normal((m, n))
    elif kind == "student_t":
        w = rng.standard_t(rng.uniform(2.0, 5.0), (m, n))
    else:
        w = rng.pareto(rng.uniform(2.0, 5.0), (m, n)) * rng.choice([-1.0, 1.0], (m, n))
    return (w * 10.0 ** rng.uniform(-1.0, 1.0)).astype(dtype)


class PlantedSpectrumMatrix(NamedTuple):
    """``matrix = U diag(sqrt(eigenvalues)) V^T`` with random orthonormal ``U`` and ``V``.

    ``eigenvalues`` (of ``W^T W``, unsorted) are a :class:`TailOverBulk` sample, or a pure Pareto
    sample (``xmin`` = its planted lower bound, in ``[0.1, 10]``) when drawn with ``pure=True``.
    """

    matrix: np.ndarray
    eigenvalues: np.ndarray
    alpha: float
    xmin: float
    n_tail: int


def orthonormal_columns(rng: np.random.Generator, n: int, m: int) -> np.ndarray:
    """An ``(n, m)`` matrix with orthonormal columns (Haar, via QR with sign fix), ``n >= m``."""
    q, r = np.linalg.qr(rng.standard_normal((n, m)))
    return q * np.sign(np.diag(r))


@st.composite
def planted_spectrum_matrices(
    draw: st.DrawFn,
    *,
    min_m: int = 200,
    max_m: int = 500,
    max_aspect: float = 2.0,
    min_alpha: float = 1.5,
    max_alpha: float = 6.0,
    pure: bool = False,
    transpose: bool | None = None,
) -> PlantedSpectrumMatrix:
    """A float64 matrix whose ``W^T W`` has a planted power-law tail (see :class:`PlantedSpectrumMatrix`).

    ``M = min(shape)`` in ``[min_m, max_m]``, ``N / M`` in ``[1, max_aspect]``; wide or tall
    at random unless ``transpose`` is given.
    """
    m = draw(st.integers(min_m, max_m))
    n = int(m * draw(st.floats(1.0, max_aspect)))
    if not pure:
        planted = draw(tails_over_bulk(min_alpha=min_alpha, max_alpha=max_alpha, min_n=m, max_n=m))
        evals, alpha, xmin, n_tail = planted.values, planted.alpha, planted.xmin, planted.n_tail
    else:
        alpha = draw(st.floats(min_alpha, max_alpha))
        xmin = 10.0 ** draw(st.floats(-1.0, 1.0))
        rng = np.random.default_rng(draw(seeds))
        evals = xmin * (1.0 - rng.random(m)) ** (-1.0 / (alpha - 1.0))
        n_tail = m
    rng = np.random.default_rng(draw(seeds))
    u = orthonormal_columns(rng, n, m)
    v = orthonormal_columns(rng, m, m)
    w = (u * np.sqrt(evals)) @ v.T
    if transpose if transpose is not None else draw(st.booleans()):
        w = w.T
    return PlantedSpectrumMatrix(np.ascontiguousarray(w), evals, float(alpha), float(xmin), int(n_tail))


__all__ += [
    "PlantedSpectrumMatrix",
    "TailOverBulk",
    "orthonormal_columns",
    "planted_spectrum_matrices",
    "positive_spectra",
    "tails_over_bulk",
    "weight_matrices",
]


class KnownSpectrumMatrix(NamedTuple):
    """``matrix = U diag(singular_values) V^T`` (float64) with random orthonormal ``U``, ``V``."""

    matrix: np.ndarray
    singular_values: np.ndarray  # length min(shape), descending, zeros where rank-deficient


@st.composite
def known_spectrum_matrices(
    draw: st.DrawFn,
    *,
    min_side: int = 10,
    max_side: int = 80,
    kinds: tuple = ("spread", "equal", "low_rank", "rank_one"),
) -> KnownSpectrumMatrix:
    """Matrices with known singular values: log-uniformly spread over 3 decades, all equal, a
    random rank (the rest exactly 0), or rank one; wide or tall, scaled by ``10**[-2, 2]``."""
    rows = draw(st.integers(min_side, max_side))
    cols = draw(st.integers(min_side, max_side))
    kind = draw(st.sampled_from(kinds))
    rng = np.random.default_rng(draw(seeds))
    m, n = min(rows, cols), max(rows, cols)
    scale = 10.0 ** rng.uniform(-2.0, 2.0)
    if kind == "spread":
        s = 10.0 ** rng.uniform(-1.5, 1.5, m)
    elif kind == "equal":
        s = np.ones(m)
    else:
        rank = 1 if kind == "rank_one" else int(rng.integers(2, m))
        s = np.zeros(m)
        s[:rank] = 10.0 ** rng.uniform(-1.0, 1.0, rank)
    s = np.sort(s)[::-1] * scale
    w = (orthonormal_columns(rng, n, m) * s) @ orthonormal_columns(rng, m, m).T
    if rows < cols:
        w = w.T
    return KnownSpectrumMatrix(np.ascontiguousarray(w), s)


__all__ += ["KnownSpectrumMatrix", "known_spectrum_matrices"]


# ----------------------------------------------------------------------------------------------
# activations (tests/activations)

#: Distribution families of :func:`activation_samples`.
ACTIVATION_FAMILIES = ("normal", "shifted_normal", "laplace", "silu_normal", "student_t",
                       "lognormal_signs", "relu_normal", "rounded")


class ActivationSample(NamedTuple):
    """A float32 sample of activations drawn from a named family."""

    values: np.ndarray
    family: str
    scale: float


@st.composite
def activation_samples(
    draw: st.DrawFn,
    *,
    min_n: int = 50,
    max_n: int = 5000,
    families: tuple = ACTIVATION_FAMILIES,
    min_log10_scale: float = -3.0,
    max_log10_scale: float = 3.0,
) -> ActivationSample:
    """Activation-like samples: symmetric, skewed (SiLU of a Gaussian), heavy-tailed, with exact
    zeros (ReLU) or with ties (values rounded to a coarse grid).

    ``values`` has shape (n,), float32, ``n`` in ``[min_n, max_n]``, multiplied by ``scale``
    (log-uniform in ``[10**min_log10_scale, 10**max_log10_scale]``).
    """
    family = draw(st.sampled_from(families))
    n = draw(st.integers(min_n, max_n))
    scale = 10.0 ** draw(st.floats(min_log10_scale, max_log10_scale, allow_nan=False))
    rng = np.random.default_rng(draw(seeds))
    if family == "normal":
        x = rng.standard_normal(n)
    elif family == "shifted_normal":
        x = rng.standard_normal(n) + rng.uniform(-2, 2)
    elif family == "laplace":
        x = rng.laplace(size=n)
    elif family == "silu_normal":
        z = rng.standard_normal(n) * rng.uniform(0.2, 3) + rng.uniform(-1.5, 0.5)
        x = z / (1.0 + np.exp(-z))
    elif family == "student_t":
        x = rng.standard_t(df=rng.uniform(1.5, 5), size=n)
    elif family == "lognormal_signs":
        x = rng.lognormal(sigma=rng.uniform(0.5, 3), size=n) * rng.choice([-1.0, 1.0], size=n,
                                                                       p=[0.3, 0.7])
    elif family == "relu_normal":
        x = np.maximum(rng.standard_normal(n), 0.0)
    else:  # rounded: many ties
        x = np.round(rng.standard_normal(n) * 4) / 4
    return ActivationSample((x * scale).astype(np.float32), family, scale)


#: Target sparsities used by the activation threshold tests.
sparsity_targets = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)

__all__ += ["ACTIVATION_FAMILIES", "ActivationSample", "activation_samples", "sparsity_targets"]


@st.composite
def gqa_projection_sizes(draw: st.DrawFn) -> dict:
    """Parameter counts of the four TEAL projections of a LLaMA-style block with GQA.

    ``{"qkv": d (h + 2 h_kv) d_head, "o": h d_head d, "gate_up": 2 d d_ff, "down": d_ff d}`` with
    ``h`` heads of ``d_head``, ``h_kv`` key/value heads (a divisor of ``h``: MHA, GQA or MQA),
    ``d = h d_head`` and ``d_ff`` between ``d`` and ``4 d``. The ratios span the configurations of
    LLaMA-2/3, Mistral and the tiny test models (k/v from 1/64 to 1 of q).
    """
    d_head = draw(st.sampled_from([8, 16, 32, 64, 128]))
    h = draw(st.integers(1, 64))
    h_kv = draw(st.sampled_from([k for k in range(1, h + 1) if h % k == 0]))
    d = h * d_head
    d_ff = draw(st.integers(d, 4 * d))
    return {"qkv": d * (h + 2 * h_kv) * d_head, "o": h * d_head * d, "gate_up": 2 * d * d_ff,
            "down": d_ff * d}


__all__ += ["gqa_projection_sizes"]
