"""Running many small torch/numpy operations without OpenMP barriers.

A loop of small torch operations (the KS scan of a power-law fit, SparseGPT's per-column
updates, a small model's block forward) opens one OpenMP parallel region per operation; with a
thread of the team descheduled by another process on the machine, every region waits at its
barrier for the scheduler, and such loops run 5-30 times slower on a busy machine (measured:
``benchmarks/bench_contention.py``). The remedy used here, per call and restored afterwards:

- :func:`map_single_threaded` runs independent items (one matrix's fits, one matrix's pruning)
  in ``workers`` Python threads, each with **one** intra-op thread, so the operations run inline
  (no parallel region, no barrier) and the workers share the cores through the OS scheduler;
- :func:`limited_threads` lowers the intra-op thread count for a block of code.

Both set ``torch.set_num_threads`` and restore the caller's count when they return (the count is
per thread for OpenMP, but torch also applies it to MKL, process-wide), so no setting outlives
the call. Nothing here runs at import. While they run, other threads of the process that start
MKL work see its thread count lowered too.
"""
from __future__ import annotations

import contextlib
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, Optional, TypeVar

__all__ = ["map_single_threaded", "limited_threads", "default_workers"]

T = TypeVar("T")
R = TypeVar("R")

_LOCK = threading.Lock()


def default_workers() -> int:
    """The intra-op thread count of the calling thread (``torch.get_num_threads()``)."""
    import torch

    return max(1, torch.get_num_threads())


@contextlib.contextmanager
def limited_threads(n: int) -> Iterator[None]:
    """Run the block with at most ``n`` intra-op threads; the caller's count is restored."""
    import torch

    previous = torch.get_num_threads()
    if n >= previous:
        yield
        return
    torch.set_num_threads(max(1, int(n)))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def map_single_threaded(fn: Callable[[T], R], items: Iterable[T], *,
                        workers: Optional[int] = None,
                        on_done: Optional[Callable[[R], None]] = None) -> list[R]:
    """``[fn(x) for x in items]`` computed by ``workers`` threads of one intra-op thread each.

    Parameters
    ----------
    fn : callable
        A function of one item; it must not depend on the order of the calls.
    items : iterable
    workers : int, optional
        Threads (default: the caller's intra-op thread count). ``1`` runs in the calling thread,
        with one intra-op thread.
    on_done : callable, optional
        Called in the calling thread with each result as it completes (e.g. a progress bar).

    Returns
    -------
    list
        The results, in the order of ``items``. The first exception raised by ``fn`` is raised
        again here (after the other workers stop taking new items).
    """
    import torch

    items = list(items)
    workers = default_workers() if workers is None else max(1, int(workers))
    workers = min(workers, max(1, len(items)))
    previous = torch.get_num_threads()
    if workers == 1:
        with limited_threads(1):
            out = []
            for item in items:
                out.append(fn(item))
                if on_done is not None:
                    on_done(out[-1])
            return out

    def one_thread():
        torch.set_num_threads(1)

    try:
        with ThreadPoolExecutor(max_workers=workers, initializer=one_thread,
                                thread_name_prefix="specmetrics") as pool:
            futures = [pool.submit(fn, item) for item in items]
            results = []
            try:
                for future in futures:
                    results.append(future.result())
                    if on_done is not None:
                        on_done(results[-1])
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            return results
    finally:
        with _LOCK:
            torch.set_num_threads(previous)  # the workers' count also reached MKL: restore it
