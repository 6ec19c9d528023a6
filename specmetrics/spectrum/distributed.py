"""Sharding :func:`~specmetrics.esd` across the ranks of ``torch.distributed``.

``esd(source, distributed=True)`` under ``torchrun --nproc-per-node N`` (or in any process where
``torch.distributed`` is initialised) works like this:

1. every rank lists the matrices of ``source`` itself (a checkpoint every rank can read: a
   shared file system, or a copy per node) and the ranks compare a hash of the names, kinds and
   shapes, and of the options that shape the numbers: any disagreement raises
   :class:`~specmetrics.ParameterError` on every rank (no rank is left waiting);
2. the batches of the single-process run (:func:`~specmetrics.spectrum.eigen.plan_batches`) are
   dealt to the ranks by :func:`balanced_split` (greedy longest-processing-time on the cost
   :func:`matrix_cost`, about ``rf * M**2 * (N + M)`` per matrix: the Gram product and
   ``eigvalsh``), so each matrix is computed by exactly one rank, in the same batch as in one
   process;
3. each rank computes its matrices' eigenvalues, fits and metrics; the results are exchanged with
   ``all_gather_object`` and **every rank returns the same full report**, in the model's order,
   equal to the single-process one. An error on one rank is raised on every rank (the failing
   rank re-raises its own exception, the others a :class:`~specmetrics.SpecmetricsError` naming
   it).

The process group: when ``torch.distributed`` is already initialised it is used as it is (and
left as it is). Otherwise the ``torchrun`` environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``,
``MASTER_PORT``) must be present: the group is created (``env://`` rendezvous, so multi-node
``torchrun --nnodes ... --rdzv-endpoint ...`` works) with the ``nccl`` backend when ``device`` is
CUDA and ``gloo`` otherwise, and destroyed again when :func:`~specmetrics.esd` returns. A CUDA
``device`` without an index becomes ``cuda:LOCAL_RANK`` on each rank.

Only rank 0 shows a progress bar (of its own share) and warns about failed fits.
"""
from __future__ import annotations

import contextlib
import hashlib
import heapq
import json
import os
from typing import Any, Callable, Iterator, Sequence

import torch

from .._validation import fail
from ..exceptions import ParameterError, SpecmetricsError
from ..models.matrices import WeightMatrix

__all__ = ["balanced_split", "matrix_cost", "fingerprint", "check_distributed", "process_group",
           "gather_or_raise", "check_same_everywhere", "TORCHRUN_ENV"]

#: The variables torchrun sets that an ``env://`` rendezvous needs.
TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def balanced_split(costs: Sequence[float], world_size: int) -> list[list[int]]:
    """Deal items to ``world_size`` ranks, balancing the summed cost (pure function).

    Greedy longest-processing-time: items by decreasing cost (ties: lower index first) each go
    to the least-loaded rank (ties: lower rank). The largest load is at most
    ``(4/3 - 1/(3 k))`` times the optimum (Graham 1969), and never more than the optimum plus
    the largest item.

    Parameters
    ----------
    costs : sequence of float, shape (n,)
        Non-negative cost of each item.
    world_size : int
        Number of ranks ``k >= 1``.

    Returns
    -------
    list of list of int
        ``k`` lists of item indices, each ascending; every index in exactly one list.

    References
    ----------
    R. L. Graham, "Bounds on multiprocessing timing anomalies", SIAM J. Appl. Math. 17 (1969).
    """
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise fail("world_size", "balanced_split", "a positive integer", world_size)
    costs = [float(c) for c in costs]
    if any(not (c >= 0) or c == float("inf") for c in costs):
        raise fail("costs", "balanced_split", "finite non-negative numbers", costs)
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    heap = [(0.0, rank) for rank in range(world_size)]
    shares: list[list[int]] = [[] for _ in range(world_size)]
    for i in order:
        load, rank = heapq.heappop(heap)
        shares[rank].append(i)
        heapq.heappush(heap, (load + costs[i], rank))
    return [sorted(s) for s in shares]


def matrix_cost(w: WeightMatrix) -> float:
    """Relative cost of one matrix's eigenvalues: ``rf * M**2 * (N + M)`` (Gram product
    ``N M**2`` and ``eigvalsh`` ``~M**3`` for each of the ``rf`` kernel positions)."""
    n, m, rf = w.n_m_rf
    return float(rf) * m * m * (n + m)


def fingerprint(matrices: Sequence[WeightMatrix], skipped: dict, settings: dict) -> str:
    """SHA-256 of the matrix list (names, kinds, shapes), the skipped names and the settings."""
    payload = json.dumps({
        "matrices": [[w.name, w.kind, list(w.shape)] for w in matrices],
        "skipped": sorted(skipped.items()),
        "settings": settings,
    }, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def check_distributed(*, func: str = "esd") -> None:
    """Raise :class:`~specmetrics.ParameterError` unless a process group exists or can be made.

    Checked at the boundary, before any work: ``torch.distributed`` must be available, and
    either initialised already or the ``torchrun`` variables (:data:`TORCHRUN_ENV`) set.
    """
    import torch.distributed as dist

    if not dist.is_available():
        raise fail("distributed", func, "False on a torch build without torch.distributed", True)
    if dist.is_initialized():
        return
    missing = [k for k in TORCHRUN_ENV if not os.environ.get(k)]
    if missing:
        raise fail("distributed", func, "False unless torch.distributed is initialised or the "
                   "process was started by torchrun (missing environment variables: "
                   f"{', '.join(missing)})", True)


@contextlib.contextmanager
def process_group(device: torch.device, *, func: str = "esd") -> Iterator[tuple[int, int, torch.device]]:
    """``(rank, world_size, device)`` of this process, in the current or a new process group.

    A group created here (``env://``, ``nccl`` for a CUDA ``device``, else ``gloo``) is destroyed
    on exit; an existing one is left alone. A CUDA ``device`` without an index becomes
    ``cuda:LOCAL_RANK`` (and the current CUDA device).
    """
    import torch.distributed as dist

    check_distributed(func=func)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    created = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method="env://")
        created = True
    try:
        yield dist.get_rank(), dist.get_world_size(), device
    finally:
        if created:
            dist.destroy_process_group()


def gather_or_raise(fn: Callable[[], Any], *, func: str = "esd") -> list:
    """Run ``fn()`` on every rank and ``all_gather_object`` the results (one per rank).

    An exception on any rank is raised on every rank after the exchange (so none waits in a
    later collective): the failing rank re-raises its own, the others raise
    :class:`~specmetrics.SpecmetricsError` naming the first failing rank and its error.
    """
    import torch.distributed as dist

    error = None
    try:
        mine = ("ok", fn())
    except Exception as err:  # re-raised below, after every rank knows
        error = err
        mine = ("error", f"{type(err).__name__}: {err}")
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if error is not None:
        raise error
    failed = [(r, g[1]) for r, g in enumerate(gathered) if g[0] == "error"]
    if failed:
        rank, message = failed[0]
        raise SpecmetricsError(f"{func}(distributed=True): rank {rank} of {len(gathered)} "
                               f"failed: {message}")
    return [g[1] for g in gathered]


def check_same_everywhere(prints: Sequence[tuple[str, int]], *, func: str = "esd") -> None:
    """Raise :class:`~specmetrics.ParameterError` when the ranks' ``(hash, count)`` differ."""
    if len({p for p, _ in prints}) > 1:
        seen = ", ".join(f"rank {r}: {n} matrices (hash {p[:12]})" for r, (p, n) in
                         enumerate(prints))
        raise ParameterError(
            f"The 'source' parameter of {func} must be the same matrices, with the same "
            f"options, on every rank of torch.distributed. Got {seen} instead.",
            parameter="source", function=func)
