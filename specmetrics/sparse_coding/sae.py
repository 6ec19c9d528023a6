"""The metrics people report for sparse autoencoders (and sparse MLPs), defined carefully.

:func:`sae_metrics` takes any encoder/decoder pair's inputs ``x``, reconstructions ``x_hat`` and
latents, token by token:

- ``l0``: mean over tokens of the number of latents with ``|z| > active_threshold`` (default
  0: the count of non-zeros);
- ``dead_fraction``: fraction of latents never active on the tokens of the window;
- ``dense_fraction``: fraction of latents active on more than ``dense_threshold`` (default 0.1)
  of the tokens of the window;
- ``fve``: fraction of variance explained **about the mean**, over all tokens, in float64:
  ``1 − Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖²`` with ``x̄`` the mean token. The mean predictor
  ``x̂_t = x̄`` scores exactly 0 and the identity 1. Mistakes seen in released tools: variance
  about zero (``Σ ‖x_t‖²``: a mean-only predictor then "explains" the mean's share), a
  denominator that is the variance of the per-dimension means (``Var_i(x̄_i)``: not a spread of
  the tokens at all), and per-token ratios averaged afterwards (a token near the mean
  dominates). The tests check each of them against the two anchor properties;
- ``mse``: mean over tokens of ``‖x_t − x̂_t‖²``; ``relative_mse`` divides the sum by
  ``Σ ‖x_t‖²``.

``loss_recovered`` is ``1 − (L_patched − L_orig) / (L_ablated − L_orig)``: 1 when splicing the
reconstruction in costs nothing, 0 when it is as bad as the ablation; the ablation is explicit
(``"zero"``: the site's output replaced by zeros, ``"mean"``: by its mean over the tokens scored).
:func:`recovered_fraction` is the formula; :func:`loss_recovered` runs a causal LM three times
(original, patched, ablated) with a forward hook on one module.

:class:`SparseAutoencoder` and :func:`train_sae`: a small top-k (or ReLU + L1) autoencoder
trainer, so the metrics can be shown end to end; the metrics do not need it.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from .._validation import check_bool, check_choice, check_device, check_interval, \
    check_positive_int, check_real, check_seed, fail
from ..exceptions import SpecmetricsWarning
from ._checks import check_matrix

__all__ = ["SAEMetrics", "sae_metrics", "fraction_of_variance_explained", "recovered_fraction",
           "LossRecovered", "loss_recovered", "SparseAutoencoder", "train_sae"]


def _as_tokens(value, *, name: str, func: str, width: Optional[int] = None) -> torch.Tensor:
    if isinstance(value, np.ndarray):
        value = torch.from_numpy(np.ascontiguousarray(value))
    if not isinstance(value, torch.Tensor):
        raise fail(name, func, "a tensor of shape (..., width)", type(value).__name__)
    if value.ndim < 1 or value.numel() == 0:
        raise fail(name, func, "a non-empty tensor of shape (..., width)", tuple(value.shape))
    rows = value.detach().reshape(-1, value.shape[-1]) if value.ndim > 1 else \
        value.detach().reshape(1, -1)
    rows = check_matrix(rows, name=name, func=func)
    if width is not None and rows.shape[1] != width:
        raise fail(name, func, f"a last dimension of {width}", tuple(value.shape))
    return rows


def fraction_of_variance_explained(x, x_hat) -> float:
    """``1 − Σ_t ‖x_t − x̂_t‖² / Σ_t ‖x_t − x̄‖²`` over all tokens, in float64.

    Parameters
    ----------
    x, x_hat : torch.Tensor, shape (..., d)
        Inputs and reconstructions (every leading dimension is a token).

    Returns
    -------
    float
        NaN (with a warning) when every token is the same (zero variance).

    Examples
    --------
    >>> x = torch.randn(100, 8) + 3.0
    >>> abs(fraction_of_variance_explained(x, x.mean(0).expand_as(x))) < 1e-12  # float32 mean
    True
    """
    func = "fraction_of_variance_explained"
    xt = _as_tokens(x, name="x", func=func).to(torch.float64)
    xh = _as_tokens(x_hat, name="x_hat", func=func, width=int(xt.shape[1])).to(torch.float64)
    if xh.shape != xt.shape:
        raise fail("x_hat", func, f"the shape of x ({tuple(x.shape)})", tuple(x_hat.shape))
    return _fve(xt, xh.to(xt.device))


def _fve(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    total = float((x - x.mean(dim=0, keepdim=True)).pow(2).sum())
    if not total > 0:
        warnings.warn("fraction of variance explained: the inputs have zero variance",
                      SpecmetricsWarning, stacklevel=3)
        return math.nan
    return 1.0 - float((x - x_hat).pow(2).sum()) / total


@dataclass(frozen=True)
class SAEMetrics:
    """The metrics of one encoder/decoder pair on a set of tokens (see the module notes).

    Attributes
    ----------
    l0, dead_fraction, dense_fraction, fve, mse, relative_mse : float
    n_tokens : int
        Tokens in ``x``.
    window : int
        Tokens the dead/dense counts were taken over (the last ones).
    n_latents : int
    frequencies : numpy.ndarray of float64, shape (n_latents,)
        Fraction of the window's tokens on which each latent is active (read-only).
    active_threshold, dense_threshold : float
    """

    l0: float
    dead_fraction: float
    dense_fraction: float
    fve: float
    mse: float
    relative_mse: float
    n_tokens: int
    window: int
    n_latents: int
    frequencies: np.ndarray = field(repr=False)
    active_threshold: float = 0.0
    dense_threshold: float = 0.1

    def __post_init__(self):
        freq = np.array(self.frequencies, dtype=np.float64)
        freq.setflags(write=False)
        object.__setattr__(self, "frequencies", freq)

    def as_dict(self) -> dict:
        """The scalar fields as a plain ``dict`` (``frequencies`` left out)."""
        out = asdict(self)
        out.pop("frequencies")
        return out

    def to_frame(self):
        """One row: the fields of :meth:`as_dict`.

        Returns
        -------
        pandas.DataFrame
        """
        import pandas as pd

        return pd.DataFrame([self.as_dict()])


def sae_metrics(x, x_hat, latents, *, active_threshold: float = 0.0,
                dense_threshold: float = 0.1, window: Optional[int] = None) -> SAEMetrics:
    """L0, dead/dense latents, FVE and reconstruction error of any encoder/decoder pair.

    Parameters
    ----------
    x : torch.Tensor, shape (..., d)
        The inputs (every leading dimension is a token).
    x_hat : torch.Tensor, shape (..., d)
        The reconstructions, same shape.
    latents : torch.Tensor, shape (..., m)
        The latent activations, same leading shape.
    active_threshold : float, default 0.0
        A latent is active on a token when ``|z| > active_threshold``.
    dense_threshold : float, default 0.1
        A latent is dense when active on more than this fraction of the window, in (0, 1).
    window : int, optional
        Count dead and dense latents over the last ``window`` tokens (default: all).

    Returns
    -------
    SAEMetrics

    Examples
    --------
    >>> x = torch.randn(64, 4)
    >>> m = sae_metrics(x, x, torch.relu(x))
    >>> m.fve, m.dead_fraction
    (1.0, 0.0)
    """
    func = "sae_metrics"
    xt = _as_tokens(x, name="x", func=func)
    xh = _as_tokens(x_hat, name="x_hat", func=func, width=int(xt.shape[1]))
    z = _as_tokens(latents, name="latents", func=func)
    if xh.shape[0] != xt.shape[0]:
        raise fail("x_hat", func, f"as many tokens as x ({xt.shape[0]})", tuple(x_hat.shape))
    if z.shape[0] != xt.shape[0]:
        raise fail("latents", func, f"as many tokens as x ({xt.shape[0]})",
                   tuple(latents.shape))
    active_threshold = check_interval(active_threshold, 0.0, math.inf, name="active_threshold",
                                      func=func)
    dense_threshold = check_interval(dense_threshold, 0.0, 1.0, name="dense_threshold",
                                     func=func, closed="neither")
    n = int(xt.shape[0])
    if window is None:
        window = n
    else:
        window = check_positive_int(window, name="window", func=func)
        if window > n:
            raise fail("window", func, f"at most the number of tokens ({n})", window)
    x64 = xt.to(torch.float64)
    xh64 = xh.to(device=xt.device, dtype=torch.float64)
    active = z.abs() > active_threshold
    l0 = float(active.sum(dim=1).to(torch.float64).mean())
    recent = active[-window:]
    frequencies = recent.to(torch.float64).mean(dim=0)
    err = (x64 - xh64).pow(2).sum(dim=1)
    energy = float(x64.pow(2).sum())
    return SAEMetrics(
        l0=l0, dead_fraction=float((frequencies == 0).to(torch.float64).mean()),
        dense_fraction=float((frequencies > dense_threshold).to(torch.float64).mean()),
        fve=_fve(x64, xh64), mse=float(err.mean()),
        relative_mse=float(err.sum()) / energy if energy > 0 else math.nan,
        n_tokens=n, window=window, n_latents=int(z.shape[1]),
        frequencies=frequencies.cpu().numpy(), active_threshold=active_threshold,
        dense_threshold=dense_threshold)


# ----------------------------------------------------------------------------------------------
# loss recovered

def recovered_fraction(orig: float, patched: float, ablated: float) -> float:
    """``1 − (patched − orig) / (ablated − orig)``.

    NaN (with a warning) when the ablation does not change the loss (``ablated == orig``).

    Examples
    --------
    >>> recovered_fraction(2.0, 2.0, 5.0), recovered_fraction(2.0, 5.0, 5.0)
    (1.0, 0.0)
    """
    func = "recovered_fraction"
    orig = check_real(orig, name="orig", func=func)
    patched = check_real(patched, name="patched", func=func)
    ablated = check_real(ablated, name="ablated", func=func)
    if ablated == orig:
        warnings.warn("loss recovered: the ablation does not change the loss; the fraction is "
                      "undefined", SpecmetricsWarning, stacklevel=2)
        return math.nan
    return 1.0 - (patched - orig) / (ablated - orig)


@dataclass(frozen=True)
class LossRecovered:
    """Losses with the site original, patched with the reconstruction, and ablated.

    Attributes
    ----------
    orig, patched, ablated : float
        Mean next-token cross-entropy (nats per predicted token).
    recovered : float
        ``1 − (patched − orig) / (ablated − orig)``.
    ablation : str
        ``"zero"`` or ``"mean"``.
    module : str
        The module whose output was replaced.
    n_tokens : int
        Predicted tokens scored.
    """

    orig: float
    patched: float
    ablated: float
    recovered: float
    ablation: str
    module: str
    n_tokens: int

    def as_dict(self) -> dict:
        return asdict(self)


def _token_ids(input_ids, func: str) -> torch.Tensor:
    if hasattr(input_ids, "input_ids") and isinstance(getattr(input_ids, "input_ids"),
                                                       torch.Tensor):
        input_ids = input_ids.input_ids  # a CalibrationSet
    if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or \
            input_ids.is_floating_point() or input_ids.dtype == torch.bool or input_ids.is_meta:
        raise fail("input_ids", func, "an integer tensor of token ids of shape (n, seqlen) or a "
                   "CalibrationSet", getattr(input_ids, "shape", type(input_ids).__name__))
    if input_ids.shape[1] < 2 or input_ids.shape[0] < 1:
        raise fail("input_ids", func, "at least one sequence of at least 2 tokens",
                   tuple(input_ids.shape))
    return input_ids.to(torch.long)


@torch.no_grad()
def loss_recovered(model: nn.Module, input_ids, module: str,
                   reconstruct: Callable[[torch.Tensor], torch.Tensor], *,
                   ablation: str = "zero", batch_size: int = 8) -> LossRecovered:
    """Loss recovered by splicing a reconstruction into a causal LM (see the module notes).

    Parameters
    ----------
    model : torch.nn.Module
        A causal LM returning ``.logits`` (or a logits tensor) of shape (batch, seqlen, vocab).
    input_ids : torch.Tensor of shape (n, seqlen), or CalibrationSet
        The tokens scored (next-token cross-entropy on every position but the last).
    module : str
        Qualified name of the module whose (first) output is replaced.
    reconstruct : callable
        ``reconstruct(a) -> a_hat`` on the module's output ``a`` (shape (batch, seqlen, width));
        for a sparse autoencoder ``lambda a: sae(a)``.
    ablation : {"zero", "mean"}, default "zero"
        What the output is replaced by for ``L_ablated``: zeros, or its mean over every token
        of ``input_ids`` (computed in a first pass).
    batch_size : int, default 8
        Sequences per forward pass.

    Returns
    -------
    LossRecovered
    """
    func = "loss_recovered"
    if not isinstance(model, nn.Module):
        raise fail("model", func, "a torch.nn.Module", type(model).__name__)
    ids = _token_ids(input_ids, func)
    names = dict(model.named_modules())
    if not isinstance(module, str) or module not in names or module == "":
        raise fail("module", func, "the qualified name of a submodule of the model", module)
    if not callable(reconstruct):
        raise fail("reconstruct", func, "a callable a -> a_hat", type(reconstruct).__name__)
    ablation = check_choice(ablation, ("zero", "mean"), name="ablation", func=func)
    batch_size = check_positive_int(batch_size, name="batch_size", func=func)
    target = names[module]
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = torch.device("cpu")
    was_training = model.training
    model.eval()

    def replace(output, new):
        if isinstance(output, torch.Tensor):
            return new
        if isinstance(output, tuple) and output and isinstance(output[0], torch.Tensor):
            return (new,) + tuple(output[1:])
        raise RuntimeError(f"module {module!r} returned a {type(output).__name__}; cannot "
                           "replace its output")

    def first(output) -> torch.Tensor:
        return output if isinstance(output, torch.Tensor) else output[0]

    def run(transform: Optional[Callable[[torch.Tensor], torch.Tensor]]) -> tuple[float, int]:
        handle = None
        if transform is not None:
            def hook(_m, _args, output):
                a = first(output)
                new = transform(a)
                if not isinstance(new, torch.Tensor) or new.shape != a.shape:
                    raise RuntimeError(f"the replacement of {module!r}'s output must be a tensor "
                                       f"of shape {tuple(a.shape)}")
                return replace(output, new.to(a.dtype))
            handle = target.register_forward_hook(hook)
        total, count = 0.0, 0
        try:
            for i in range(0, ids.shape[0], batch_size):
                batch = ids[i:i + batch_size].to(device)
                out = model(batch)
                logits = out if isinstance(out, torch.Tensor) else out.logits
                logp = torch.log_softmax(logits[:, :-1].to(torch.float64), dim=-1)
                nll = -logp.gather(-1, batch[:, 1:, None]).squeeze(-1)
                total += float(nll.sum())
                count += int(nll.numel())
        finally:
            if handle is not None:
                handle.remove()
        return total / count, count

    try:
        orig, count = run(None)
        patched, _ = run(reconstruct)
        if ablation == "zero":
            ablated, _ = run(torch.zeros_like)
        else:
            sums: list[torch.Tensor] = []

            def collect(_m, _args, output):
                a = first(output).detach().to(torch.float64)
                sums.append(torch.cat([a.reshape(-1, a.shape[-1]).sum(dim=0),
                                       torch.tensor([a.numel() // a.shape[-1]],
                                                    dtype=torch.float64, device=a.device)]))
            handle = target.register_forward_hook(collect)
            try:
                for i in range(0, ids.shape[0], batch_size):
                    model(ids[i:i + batch_size].to(device))
            finally:
                handle.remove()
            acc = torch.stack(sums).sum(dim=0)
            mean = acc[:-1] / acc[-1]
            ablated, _ = run(lambda a: mean.to(a.dtype).expand_as(a).clone())
    finally:
        model.train(was_training)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecmetricsWarning)
        rec = recovered_fraction(orig, patched, ablated)
    if math.isnan(rec):
        warnings.warn(f"loss_recovered: the {ablation} ablation of {module!r} does not change "
                      "the loss; the fraction is undefined", SpecmetricsWarning, stacklevel=2)
    return LossRecovered(orig=orig, patched=patched, ablated=ablated, recovered=rec,
                         ablation=ablation, module=module, n_tokens=count)


# ----------------------------------------------------------------------------------------------
# a small SAE

class SparseAutoencoder(nn.Module):
    """A sparse autoencoder ``x ↦ z ↦ x̂`` with unit-norm decoder rows.

    ``z = σ(W_enc (x/s − b_dec) + b_enc)`` and ``x̂ = s (W_dec z + b_dec)``, with ``s`` the
    inputs' RMS norm at training time and ``σ`` either ReLU followed by keeping the ``k``
    largest entries (``k`` given: top-k) or ReLU alone (trained with an L1 penalty).

    Parameters
    ----------
    d : int
        Input width.
    n_latents : int
    k : int, optional
        Keep the ``k`` largest latents (top-k SAE); ``None``: ReLU latents.
    scale : float, default 1.0
        ``s``.
    """

    def __init__(self, d: int, n_latents: int, *, k: Optional[int] = None, scale: float = 1.0):
        super().__init__()
        self.d, self.n_latents, self.k = int(d), int(n_latents), k
        self.encoder = nn.Linear(d, n_latents)
        self.decoder = nn.Linear(n_latents, d)
        self.register_buffer("scale", torch.tensor(float(scale)))
        self.history: tuple = ()

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Latents ``z`` of shape (..., n_latents)."""
        pre = self.encoder(x / self.scale - self.decoder.bias)
        z = torch.relu(pre)
        if self.k is not None and self.k < self.n_latents:
            top = z.topk(self.k, dim=-1)
            z = torch.zeros_like(z).scatter_(-1, top.indices, top.values)
        return z

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Reconstructions of shape (..., d)."""
        return self.decoder(z) * self.scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Rescale every decoder column (one latent's direction) to unit norm."""
        w = self.decoder.weight  # (d, n_latents)
        w.div_(w.norm(dim=0, keepdim=True).clamp_min(1e-12))


def train_sae(x, *, n_latents: int, k: Optional[int] = None,
              l1_coefficient: Optional[float] = None, steps: int = 1000,
              batch_size: int = 256, lr: float = 1e-3, seed: int = 0, device=None,
              progress: bool = False) -> SparseAutoencoder:
    """Train a small top-k (``k``) or ReLU + L1 (``l1_coefficient``) sparse autoencoder.

    Adam on the mean squared error of inputs divided by their RMS norm (plus
    ``l1_coefficient · mean ‖z‖₁`` for the L1 variant), minibatches drawn with a seeded
    generator, decoder columns renormalised after every step; decoder initialised with random
    unit columns, the encoder with its transpose, ``b_dec`` with the mean input.

    Parameters
    ----------
    x : torch.Tensor, shape (n, d)
        Training inputs.
    n_latents : int
    k : int, optional
        Top-k sparsity (exactly one of ``k`` and ``l1_coefficient``).
    l1_coefficient : float, optional
        L1 weight (> 0) for a ReLU SAE.
    steps : int, default 1000
    batch_size : int, default 256
    lr : float, default 1e-3
    seed : int, default 0
    device : torch.device or str, optional
    progress : bool, default False

    Returns
    -------
    SparseAutoencoder
        In eval mode, on ``device``; ``.history`` holds the training loss of every step.
    """
    from tqdm.auto import tqdm

    func = "train_sae"
    xt = check_matrix(x, name="x", func=func, min_rows=2)
    n, d = xt.shape
    n_latents = check_positive_int(n_latents, name="n_latents", func=func)
    if (k is None) == (l1_coefficient is None):
        raise fail("k", func, "given, or else l1_coefficient (exactly one of them)", k)
    if k is not None:
        k = check_positive_int(k, name="k", func=func)
        if k > n_latents:
            raise fail("k", func, f"at most n_latents ({n_latents})", k)
    if l1_coefficient is not None:
        l1_coefficient = check_interval(l1_coefficient, 0.0, math.inf, name="l1_coefficient",
                                        func=func, closed="neither")
    steps = check_positive_int(steps, name="steps", func=func)
    batch_size = check_positive_int(batch_size, name="batch_size", func=func)
    lr = check_interval(lr, 0.0, 1.0, name="lr", func=func, closed="right")
    seed = check_seed(seed, func=func)
    device = check_device(device, func=func) or xt.device
    progress = check_bool(progress, name="progress", func=func)
    data = xt.to(device=device, dtype=torch.float32)
    scale = math.sqrt(float(data.to(torch.float64).pow(2).sum(dim=1).mean()))
    if not scale > 0:
        raise fail("x", func, "inputs that are not all zero", "an all-zero tensor")
    generator = torch.Generator().manual_seed(seed)
    sae = SparseAutoencoder(d, n_latents, k=k, scale=scale).to(device)
    with torch.no_grad():
        w = torch.randn((d, n_latents), generator=generator).to(device)
        sae.decoder.weight.copy_(w / w.norm(dim=0, keepdim=True))
        sae.encoder.weight.copy_(sae.decoder.weight.T)
        sae.encoder.bias.zero_()
        sae.decoder.bias.copy_(data.mean(dim=0) / scale)
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    history = []
    sae.train()
    for _ in tqdm(range(steps), desc=func, unit="step", disable=not progress):
        idx = torch.randint(0, n, (min(batch_size, n),), generator=generator).to(device)
        raw = data[idx]
        z = sae.encode(raw)
        loss = (sae.decoder(z) - raw / scale).pow(2).sum(dim=1).mean()
        if l1_coefficient is not None:
            loss = loss + l1_coefficient * z.abs().sum(dim=1).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        sae.normalize_decoder()
        history.append(float(loss.detach()))
    sae.eval()
    sae.history = tuple(history)
    return sae
