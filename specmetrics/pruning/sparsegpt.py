"""SparseGPT: one-shot pruning with an approximate second-order (OBS) weight update.

For a linear layer with weight ``W`` (out × in) and calibration Hessian ``H = (2/N) Σ x xᵀ``
(:class:`~specmetrics.pruning.stats.HessianStats`), :func:`sparsegpt_prune` follows the
reference ``SparseGPT.fasterprune``:

1. dead inputs (``H_jj == 0``) get ``H_jj := 1`` and ``W[:, j] := 0``;
2. damping ``λ = percdamp · mean(diag H)`` is added to the diagonal;
3. ``U`` = upper Cholesky factor of ``(H + λI)⁻¹`` (cholesky → cholesky_inverse → cholesky);
4. columns are processed left to right in blocks of ``blocksize``. Unstructured: at the start of
   a block, prune the lowest ``w_ij² / U_jj²`` over the whole rows × block tile; N:M: at the
   start of each group of M columns, prune the N lowest of that group of every row, from the
   weights as updated so far. Each column's pruning error ``(w - q) / U_jj`` is propagated to
   the remaining columns of the block through row ``j`` of ``U``, and at the end of the block to
   all later columns in one matrix product (the "lazy batch" update).

Pruning one column this way gives the least-squares refit of the later columns on the
calibration inputs (with ``λI`` added to ``H``), which is what makes the update exact for a
single weight and cheap for all of them.

References
----------
.. [1] E. Frantar, D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned in
   One-Shot", ICML 2023 (code: github.com/IST-DASLab/sparsegpt, ``sparsegpt.py``).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from .._validation import fail
from ..exceptions import CholeskyError
from .configs import check_sparsegpt_options, resolve_pattern
from .masks import check_weight, lowest_k, spread_counts

__all__ = ["sparsegpt_prune", "SparseGPTResult", "CholeskyError"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class SparseGPTResult:
    """Outcome of :func:`sparsegpt_prune` for one weight matrix.

    Attributes
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        The pruned and updated weight: a new tensor with the input's dtype and device (computed
        in float32). Zero wherever ``mask`` is True.
    mask : torch.BoolTensor, shape (out_features, in_features)
        ``True`` = pruned: the entries the algorithm selected, plus every entry of a dead input
        column (``H_jj == 0``, zeroed as in the reference).
    damp : float
        The damping ``λ`` finally added to the diagonal of H (``percdamp · mean(diag H) ·
        damp_growth ** retries``).
    retries : int
        Number of failed Cholesky factorisations before ``damp`` succeeded (0 normally).
    dead_inputs : int
        Number of input columns with ``H_jj == 0`` (never active in the calibration data).
    """

    weight: Tensor
    mask: Tensor
    damp: float
    retries: int
    dead_inputs: int

    def __repr__(self) -> str:
        shape = tuple(self.weight.shape)
        pruned = int(self.mask.sum())
        return (f"SparseGPTResult(shape={shape}, dtype={self.weight.dtype}, pruned={pruned}/"
                f"{self.mask.numel()}, damp={self.damp:.4g}, retries={self.retries}, "
                f"dead_inputs={self.dead_inputs})")


def _upper_cholesky_of_inverse(h: Tensor) -> tuple[Optional[Tensor], str]:
    """``U`` with ``Uᵀ U = h⁻¹`` (upper triangular), or ``None`` and the reason it failed."""
    lower, info = torch.linalg.cholesky_ex(h)
    if int(info) != 0:
        return None, (f"H + λI is not positive definite (Cholesky failed at the leading minor "
                      f"of order {int(info)})")
    if not bool(torch.isfinite(lower).all()):
        return None, "the Cholesky factor of H + λI has NaN or inf entries"
    upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
    if int(info) != 0 or not bool(torch.isfinite(upper).all()):
        return None, ("(H + λI)⁻¹ could not be factorised (H + λI is too ill-conditioned in "
                      "float32)")
    return upper, ""


def damped_inverse_cholesky(hessian: Tensor, percdamp: float, *, max_damp_retries: int = 5,
                            damp_growth: float = 10.0) -> tuple[Tensor, float, int]:
    """Upper Cholesky factor of ``(H + λI)⁻¹``, retrying with more damping on failure.

    Parameters
    ----------
    hessian : torch.Tensor, shape (in, in), float32
        Symmetric H with no zero diagonal entry (dead inputs already set to 1). Not modified.
    percdamp : float
        ``λ₀ = percdamp · mean(diag H)``.
    max_damp_retries : int, default 5
        Retries after the first failure; retry ``r`` uses ``λ₀ · damp_growth ** r``.
    damp_growth : float, default 10.0

    Returns
    -------
    upper : torch.Tensor, shape (in, in)
        Upper triangular ``U`` with ``Uᵀ U = (H + λI)⁻¹``.
    damp : float
        The ``λ`` used.
    retries : int
        Failed attempts before success.

    Raises
    ------
    CholeskyError
        If no attempt succeeds, or a retry cannot help because ``λ₀ <= 0``.
    """
    diag_mean = float(torch.diagonal(hessian).mean())
    damp = percdamp * diag_mean
    retries = 0
    while True:
        damped = hessian.clone()
        damped.diagonal().add_(damp)
        upper, problem = _upper_cholesky_of_inverse(damped)
        if upper is not None:
            if retries:
                logger.info("SparseGPT: Cholesky succeeded after %d retries with damping λ = %.4g",
                            retries, damp)
            return upper, damp, retries
        if retries >= max_damp_retries:
            raise CholeskyError(
                f"SparseGPT cannot factorise the layer Hessian: {problem}, with damping "
                f"λ = {damp:.6g} after {retries} retries (max_damp_retries = "
                f"{max_damp_retries}, mean(diag H) = {diag_mean:.6g}). H is not positive "
                "definite enough; raise percdamp or max_damp_retries, or check the calibration "
                "statistics."
            )
        if not damp > 0:
            raise CholeskyError(
                f"SparseGPT cannot factorise the layer Hessian: {problem}, and the damping "
                f"λ = percdamp · mean(diag H) = {percdamp:g} · {diag_mean:.6g} = {damp:.6g} is not "
                "positive, so growing it cannot help. H must be positive semi-definite with a "
                "positive diagonal (percdamp > 0)."
            )
        logger.info("SparseGPT: %s with λ = %.4g; retrying with λ × %g", problem, damp,
                    damp_growth)
        damp *= damp_growth
        retries += 1


def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float,
    *,
    pattern: str = "unstructured",
    blocksize: int = 128,
    percdamp: float = 0.01,
    max_damp_retries: int = 5,
    damp_growth: float = 10.0,
) -> SparseGPTResult:
    """Prune one weight matrix with SparseGPT and update its remaining weights.

    Parameters
    ----------
    weight : torch.Tensor, shape (out_features, in_features)
        float16, bfloat16, float32 or float64; not modified. Computation is in float32.
    hessian : torch.Tensor, shape (in_features, in_features)
        ``H = (2/N) Σ x xᵀ`` of the layer's calibration inputs
        (:attr:`HessianStats.value <specmetrics.pruning.stats.HessianStats>`); symmetric, finite.
        Not modified (a float32 copy is made on the weight's device).
    sparsity : float
        Fraction in [0, 1]. Unstructured: the matrix prunes exactly ``round(numel · s)``
        entries, spread over the rows × block tiles (each within one weight of
        ``tile.numel() · s``, see :func:`~specmetrics.pruning.masks.spread_counts`; so
        ``sparsity = 0`` changes nothing). For an N:M pattern it must equal N/M.
    pattern : str, default "unstructured"
        ``"unstructured"`` or ``"N:M"`` (``in_features`` and ``blocksize`` divisible by M).
    blocksize : int, default 128
        Columns per lazy-update block, and the width of the unstructured mask tile.
    percdamp : float, default 0.01
        ``λ = percdamp · mean(diag H)`` is added to the diagonal of H (after the dead-input fix).
    max_damp_retries : int, default 5
        If the Cholesky factorisation fails (H + λI not positive definite, or NaN), retry up to
        this many times with λ multiplied by ``damp_growth`` each time.
    damp_growth : float, default 10.0
        Growth factor (> 1) of λ per retry.

    Returns
    -------
    SparseGPTResult
        ``weight`` (new tensor, input dtype and device), ``mask`` (True = pruned), ``damp``,
        ``retries``, ``dead_inputs``.

    Raises
    ------
    CholeskyError
        If H + λI cannot be factorised within the retries. There is no fallback to a method
        without weight update.
    specmetrics.ParameterError
        For bad shapes, non-finite inputs or bad options.

    Notes
    -----
    Selection counts are exact (``round(numel · s)`` per matrix spread over the tiles, ties to
    the lower index) where the reference prunes every entry ``<=`` the score at sorted position
    ``int(tile.numel · s)`` of each tile, i.e. one more per tile (plus ties), so that it prunes
    one weight per tile even at ``s = 0``.

    References
    ----------
    .. [1] E. Frantar, D. Alistarh, "SparseGPT: Massive Language Models Can Be Accurately Pruned
       in One-Shot", ICML 2023; ``sparsegpt.py::SparseGPT.fasterprune``.
    """
    func = "sparsegpt_prune"
    w_in = check_weight(weight, func)
    nm, s = resolve_pattern(pattern, sparsity, func)
    _, blocksize, percdamp, max_damp_retries, damp_growth = check_sparsegpt_options(
        func, pattern, blocksize, percdamp, max_damp_retries, damp_growth)
    rows, cols = w_in.shape
    if not isinstance(hessian, Tensor) or hessian.shape != (cols, cols):
        got = tuple(hessian.shape) if isinstance(hessian, Tensor) else type(hessian).__name__
        raise fail("hessian", func, f"a tensor of shape (in_features, in_features) = "
                   f"({cols}, {cols})", got)
    if nm is not None and cols % nm[1] != 0:
        raise fail("weight", func, f"of a shape whose in_features is divisible by M = {nm[1]} "
                   f"for pattern {pattern!r}", tuple(w_in.shape))

    W = w_in.to(torch.float32).clone()
    H = hessian.detach().to(W.device, torch.float32).clone()
    if not bool(torch.isfinite(H).all()):
        raise fail("hessian", func, "finite (no NaN or inf)", "a tensor with non-finite entries")
    if not bool(torch.isfinite(W).all()):
        raise fail("weight", func, "finite (no NaN or inf)", "a tensor with non-finite entries")

    dead = torch.diagonal(H) == 0
    H.diagonal()[dead] = 1.0
    W[:, dead] = 0.0
    U, damp, retries = damped_inverse_cholesky(
        H, percdamp, max_damp_retries=max_damp_retries, damp_growth=damp_growth)
    del H

    mask = torch.zeros((rows, cols), dtype=torch.bool, device=W.device)
    starts = list(range(0, cols, blocksize))
    tile_counts = spread_counts([rows * (min(i1 + blocksize, cols) - i1) for i1 in starts], s) \
        if nm is None else None
    for t, i1 in enumerate(starts):
        i2 = min(i1 + blocksize, cols)
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diagonal(U1)
        if nm is None:
            tile = W1 ** 2 / d1.reshape(1, -1) ** 2
            mask1 = lowest_k(tile.reshape(1, -1), tile_counts[t]).reshape(tile.shape)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)
        for i in range(i2 - i1):
            if nm is not None and i % nm[1] == 0:
                group = W1[:, i:i + nm[1]] ** 2 / d1[i:i + nm[1]].reshape(1, -1) ** 2
                mask1[:, i:i + nm[1]] = lowest_k(group, nm[0])
            w = W1[:, i]
            q = w.masked_fill(mask1[:, i], 0.0)
            err = (w - q) / U1[i, i]
            Q1[:, i] = q
            Err1[:, i] = err
            W1[:, i:].addr_(err, U1[i, i:], alpha=-1.0)
        W[:, i1:i2] = Q1
        mask[:, i1:i2] = mask1
        W[:, i2:].addmm_(Err1, U[i1:i2, i2:], alpha=-1.0)

    mask[:, dead] = True
    return SparseGPTResult(
        weight=W.to(w_in.dtype),
        mask=mask,
        damp=float(damp),
        retries=int(retries),
        dead_inputs=int(dead.sum()),
    )
