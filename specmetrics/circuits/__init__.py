"""Circuit analyses of transformer weights: the notebook analyses of the user's seeds as functions.

- :func:`qk_ov_spectra`: per layer and head, the spectra of the QK (``W_Q^T W_K``) and OV
  (``W_O W_V``) products (grouped-query heads paired with their KV head), their ranks, entropy and
  power-law alpha, and their leading singular directions (and the token embedding's) as tokens;
- :func:`token_congruence`: dot products of token embeddings with each MLP neuron's input and
  output weights and with the OV circuit unembedded, against random directions of the same norm
  (seed 002);
- :func:`output_variance`: variance of each block's attention output, MLP output and their sum
  on real text, and of the change in its output with chosen projections pruned (seed 003);
- :func:`mp_distance` / :func:`mp_distances`: a scale-free distance between a matrix's ESD and the
  Marchenko-Pastur law fitted to it, beside WeightWatcher's ``rand_distance`` (seed 003).

Results derive from :class:`~specmetrics._results.KeyedResult` (``to_frame``, ``to_json`` /
``from_json``, ``plot``).

May import: the base files, :mod:`specmetrics.models`, :mod:`specmetrics.calibration`,
:mod:`specmetrics.spectrum` and :mod:`specmetrics.plotting` (plots, lazily). pandas and
matplotlib are imported where used.
"""
from .congruence import KINDS, congruence_scores, token_congruence
from .mp import FITS, ks_distance, mp_cdf, mp_distance, mp_distances
from .qk_ov import embedding_directions, qk_ov_spectra
from .results import (BlockVariance, CircuitSpectrum, CongruenceEntry, Direction, HeadSpectra,
                      MPDistance, MPDistanceReport, OutputVariance, QKOVSpectra, TokenCongruence,
                      Unit)
from .variance import DEFAULT_SETS, RunningVariance, magnitude_prune, output_variance

__all__ = [
    "qk_ov_spectra", "token_congruence", "output_variance", "mp_distance", "mp_distances",
    "QKOVSpectra", "HeadSpectra", "CircuitSpectrum", "Direction",
    "TokenCongruence", "CongruenceEntry", "Unit",
    "OutputVariance", "BlockVariance",
    "MPDistance", "MPDistanceReport",
    "magnitude_prune", "RunningVariance", "DEFAULT_SETS", "KINDS", "FITS",
    "mp_cdf", "ks_distance", "congruence_scores", "embedding_directions",
]
