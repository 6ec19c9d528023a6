"""Per-channel moments of a linear layer's calibration inputs (mean, mean square, variance).

:class:`InputMomentStats` is what DSnoT needs: besides Wanda's squared norms (it *is* a
:class:`~specmetrics.calibration.SquaredNormStats`, so its ``value`` is the Wanda statistic and
one instance serves a Wanda-scored base mask too) it accumulates, per input channel ``j``,

``sums``
    ``(1 / Σ b) · Σ_tokens x_j``: the mean over calibration samples of each sample's token sum
    (the reference's ``sum_metric_row``; with samples of ``L`` tokens it is ``L`` times the
    token mean). DSnoT's expected reconstruction error is measured in these units.
``mean`` and ``mean_square``
    ``Σ_tokens x_j / T`` and ``Σ_tokens x_j² / T`` over all ``T`` tokens seen.
``variance``
    The pooled per-token variance ``mean_square - mean²`` over all tokens.
``within_variance``
    The token-weighted mean of the variances *within* each update (``Σ_u T_u var_u / T``, each
    ``var_u`` the population variance of the ``T_u`` tokens of update ``u``), which is how the
    DSnoT reference (``lib/layerwrapper.py``) combines its batches. It leaves out the spread of
    the per-update means, so it depends on how the inputs were batched: with one calibration
    sequence per update (what :class:`~specmetrics.calibration.SequentialRunner` and the
    reference both do) it is the mean within-sequence variance.

Counts follow :mod:`~specmetrics.calibration.stats`: the batch dimension of a (batch, seq,
in_features) input is its number of samples, a (tokens, in_features) input is one sample. Token
sums are accumulated in float64 (the variance is a difference of two moments); the properties
return float32 tensors, like the other statistics.

References
----------
.. [1] Y. Zhang, L. Zhao, M. Lin, Y. Sun, Y. Yao, X. Han, J. Tanner, S. Liu, R. Ji, "Dynamic
   Sparse No Training: Training-Free Fine-tuning for Sparse LLMs", ICLR 2024 (code:
   github.com/zyxxmu/DSnoT, ``lib/layerwrapper.py::WrappedGPT.add_batch``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from .stats import SquaredNormStats

__all__ = ["InputMomentStats"]


class InputMomentStats(SquaredNormStats):
    """Wanda's squared norms plus the per-channel mean, mean square and variance of the inputs.

    Parameters
    ----------
    in_features : int, optional
        Number of input channels; taken from the first input when omitted.
    device : torch.device or str, optional
        Where to accumulate; the device of the first input when omitted.

    Attributes
    ----------
    nsamples : int
        Samples seen (sum of the batch sizes).
    ntokens : int
        Tokens seen.
    value : torch.Tensor, shape (in_features,), float32
        Wanda's ``s_j`` (see :class:`~specmetrics.calibration.SquaredNormStats`), identical to
        what that class accumulates from the same inputs.
    sums, mean, mean_square, variance, within_variance : torch.Tensor, shape (in_features,)
        See the module docstring; float32. Each raises ``RuntimeError`` before any data.

    Examples
    --------
    >>> stats = InputMomentStats()
    >>> stats.update(torch.tensor([[[1.0], [3.0]]]))  # one sample of 2 tokens, 1 channel
    >>> stats.update(torch.tensor([[[5.0], [7.0]]]))  # another
    >>> stats.mean.item(), stats.variance.item(), stats.within_variance.item()
    (4.0, 5.0, 1.0)
    >>> stats.sums.item()  # mean over the 2 samples of their token sums
    8.0
    """

    _owner = "InputMomentStats"

    def __init__(self, in_features: Optional[int] = None, *, device=None):
        super().__init__(in_features, device=device)
        self.ntokens = 0
        self._sum: Optional[Tensor] = None  # Σ x over all tokens, float64
        self._sum_sq: Optional[Tensor] = None  # Σ x² over all tokens, float64
        self._within: Optional[Tensor] = None  # Σ_u T_u · var_u, float64

    def update(self, x: Tensor) -> None:
        """Add a batch of inputs.

        Parameters
        ----------
        x : torch.Tensor, shape (batch, seq, in_features) or (tokens, in_features)
            Layer inputs, any floating dtype (converted to float32). A 2-D input is one sample.
        """
        prepared = self._prepare(x)
        if prepared is None:
            return
        tokens, batch = prepared
        count = int(tokens.shape[0])
        if self._value is None:
            zeros = dict(dtype=torch.float64, device=self.device)
            self._value = torch.zeros(self.in_features, dtype=torch.float32, device=self.device)
            self._sum = torch.zeros(self.in_features, **zeros)
            self._sum_sq = torch.zeros(self.in_features, **zeros)
            self._within = torch.zeros(self.in_features, **zeros)
        # Wanda's running mean over samples, exactly as SquaredNormStats.update
        self._value *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        self._value += torch.linalg.vector_norm(tokens, ord=2, dim=0) ** 2 / self.nsamples
        wide = tokens.double()
        self._sum += wide.sum(dim=0)
        self._sum_sq += (wide * wide).sum(dim=0)
        # the reference's per-batch population variance, computed in float32 as it does
        self._within += torch.var(tokens, dim=0, unbiased=False).double() * count
        self.ntokens += count

    def _ready(self) -> None:
        if self._value is None:
            self.value  # raises the RuntimeError of the base class

    @property
    def sums(self) -> Tensor:
        """``(1 / nsamples) · Σ_tokens x_j``: the mean over samples of each sample's token sum."""
        self._ready()
        return (self._sum / self.nsamples).float()

    @property
    def mean(self) -> Tensor:
        """Per-token mean ``Σ_tokens x_j / ntokens``."""
        self._ready()
        return (self._sum / self.ntokens).float()

    @property
    def mean_square(self) -> Tensor:
        """Per-token mean square ``Σ_tokens x_j² / ntokens``."""
        self._ready()
        return (self._sum_sq / self.ntokens).float()

    @property
    def variance(self) -> Tensor:
        """Pooled per-token variance ``mean_square - mean²`` (population, >= 0)."""
        self._ready()
        mean = self._sum / self.ntokens
        return (self._sum_sq / self.ntokens - mean * mean).clamp_min(0.0).float()

    @property
    def within_variance(self) -> Tensor:
        """Token-weighted mean of the per-update variances (the DSnoT reference's ``var``)."""
        self._ready()
        return (self._within / self.ntokens).float()
