"""Calibration statistics of a linear layer's inputs, accumulated in float32.

Both classes count *samples* the way the reference wrappers do: for an input of shape
(batch, seq, in_features) the batch dimension is the number of samples; an input of shape
(tokens, in_features) is one sample. The running means are rescaled at every update exactly as
Wanda's ``WrappedGPT.add_batch`` and SparseGPT's ``SparseGPT.add_batch`` do, so the result after
any sequence of batches equals the reference's.

Typical use, from a forward hook::

    stats = SquaredNormStats()
    handle = linear.register_forward_hook(lambda mod, args, out: stats.update(args[0]))
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from .._validation import check_positive_int, fail

__all__ = ["SquaredNormStats", "HessianStats", "input_weighted_magnitude"]


class _RunningStats:
    """Shared bookkeeping: shape checks, sample counting, device and lazy allocation."""

    _owner = "_RunningStats"

    def __init__(self, in_features: Optional[int] = None, *, device=None):
        if in_features is not None:
            check_positive_int(in_features, name="in_features", func=self._owner)
        self.in_features = in_features
        self.device = torch.device(device) if device is not None else None
        self.nsamples = 0
        self._value: Optional[Tensor] = None

    def _prepare(self, x) -> Optional[tuple[Tensor, int]]:
        """Tokens as a float32 (tokens, in_features) tensor and the sample count of ``x``."""
        func = f"{self._owner}.update"
        if not isinstance(x, Tensor) or x.ndim not in (2, 3):
            got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
            raise fail("x", func, "a tensor of shape (batch, seq, in_features) or "
                       "(tokens, in_features)", got)
        if self.in_features is None:
            self.in_features = int(x.shape[-1])
        if x.shape[-1] != self.in_features:
            raise fail("x", func, f"a tensor whose last dimension is in_features = "
                       f"{self.in_features}", tuple(x.shape))
        batch = int(x.shape[0]) if x.ndim == 3 else 1
        if batch == 0 or x.numel() == 0:
            return None  # nothing to add (the reference would divide 0 by 0 here)
        if self.device is None:
            self.device = x.device
        tokens = x.detach().reshape(-1, self.in_features).to(self.device, torch.float32)
        return tokens, batch

    @property
    def value(self) -> Tensor:
        """The accumulated statistic (see the subclass); ``RuntimeError`` before any data."""
        if self._value is None:
            raise RuntimeError(
                f"{self._owner} has no calibration data: call update() with at least one "
                "non-empty batch of inputs first."
            )
        return self._value


class SquaredNormStats(_RunningStats):
    """Wanda's input statistic: the per-channel squared norm of the calibration inputs.

    After updates with batches of ``b_1, b_2, ...`` samples, ``value[j]`` is
    ``s_j = (1 / Σ b) · Σ_tokens x_j²``: the mean over calibration sequences of the sum over each
    sequence's tokens of ``x_j²``, accumulated as the running mean of Wanda's
    ``WrappedGPT.add_batch`` (``s ← s · n/(n+b); n ← n+b; s ← s + ‖x_j‖² / n``). The Wanda score
    is then ``|W_ij| · sqrt(s_j)``.

    Parameters
    ----------
    in_features : int, optional
        Number of input channels; taken from the first input when omitted.
    device : torch.device or str, optional
        Where to accumulate; the device of the first input when omitted (inputs are moved there).

    Attributes
    ----------
    nsamples : int
        Samples seen so far (sum of the batch sizes).
    value : torch.Tensor, shape (in_features,), float32
        ``s_j``; raises ``RuntimeError`` before the first non-empty update. The internal buffer
        is returned (not a copy): do not modify it in place.

    References
    ----------
    .. [1] M. Sun et al., "A Simple and Effective Pruning Approach for Large Language Models",
       2023; ``lib/layerwrapper.py::WrappedGPT``.
    """

    _owner = "SquaredNormStats"

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
        if self._value is None:
            self._value = torch.zeros(self.in_features, dtype=torch.float32, device=self.device)
        self._value *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        self._value += torch.linalg.vector_norm(tokens, ord=2, dim=0) ** 2 / self.nsamples


class HessianStats(_RunningStats):
    """SparseGPT's layer Hessian ``H = (2/N) Σ x xᵀ`` of the calibration inputs.

    ``N`` is the number of samples (sum of the batch sizes) and the sum runs over all tokens;
    accumulated with SparseGPT's running rescaling
    (``H ← H · n/(n+b); n ← n+b; x ← sqrt(2/n) · x; H ← H + x xᵀ``) in float32.

    Parameters
    ----------
    in_features : int, optional
        Number of input channels; taken from the first input when omitted.
    device : torch.device or str, optional
        Where to accumulate; the device of the first input when omitted (inputs are moved there).

    Attributes
    ----------
    nsamples : int
        Samples seen so far.
    value : torch.Tensor, shape (in_features, in_features), float32
        ``H`` (symmetric positive semi-definite); raises ``RuntimeError`` before the first
        non-empty update. The internal buffer is returned (not a copy, which could double the
        memory of a large layer): do not modify it in place.

    References
    ----------
    .. [1] E. Frantar, D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned
       in One-Shot", ICML 2023; ``sparsegpt.py::SparseGPT.add_batch``.
    """

    _owner = "HessianStats"

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
        if self._value is None:
            self._value = torch.zeros(self.in_features, self.in_features, dtype=torch.float32,
                                      device=self.device)
        self._value *= self.nsamples / (self.nsamples + batch)
        self.nsamples += batch
        tokens = math.sqrt(2 / self.nsamples) * tokens
        self._value.addmm_(tokens.T, tokens)


def input_weighted_magnitude(weight: Tensor, sq_norms: Tensor) -> Tensor:
    """``|W_ij| · sqrt(s_j)``: weight magnitudes scaled by their input channel's norm.

    The Wanda score (and OWL's outlier statistic), with ``s_j`` the
    :class:`SquaredNormStats` value of the layer's inputs.

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
    sq_norms : torch.Tensor, shape (in_features,)
        Finite, >= 0; moved to the weight's device.

    Returns
    -------
    torch.Tensor, shape (out_features, in_features), float32
    """
    s = sq_norms.detach().to(weight.device, torch.float32)
    return weight.detach().float().abs() * torch.sqrt(s).reshape(1, -1)
