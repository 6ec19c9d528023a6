"""Triton sparse-inference kernels, each next to its plain torch reference.

Installed as ``specmetrics.kernels`` (the ``package-dir`` mapping in pyproject.toml), in editable
and wheel installs alike. One folder per op::

    kernels/<op>/__init__.py   the public function: checks, dispatch, the torch.library custom op
    kernels/<op>/reference.py  plain torch, the oracle the tests compare against
    kernels/<op>/triton.py     the kernel(s) and the host wrapper

- :func:`sparse_gemv` (``act_sparse_gemv/``): ``x_masked @ W.T`` with ``|x| <= t`` zeroed, reading
  only the weight columns of the kept inputs (TEAL's sites); :func:`prepare_weight` converts a
  weight once to the K-major layout the kernel reads coalesced.
- :func:`sparse_mlp` (``sparse_mlp/``): the CATS MLP ``down(SiLU(gate x) ⊙ m ⊙ up x)`` with
  ``m = |SiLU(gate x)| > t``, reading only the kept channels of ``up`` and ``down``.

The dispatch rule (``backend=None``: Triton for CUDA tensors when ``triton`` is installed, the
reference elsewhere; ``"torch"`` / ``"triton"`` force one) and the boundary checks live in
``_dispatch.py``. The Triton backend runs the sparse kernels up to ``max_rows`` rows of ``x``
(default :data:`DENSE_FALLBACK_ROWS`) and the dense product of the masked input above.

May import: torch, and from specmetrics only the base files ``exceptions`` and ``_validation``.
``triton`` is imported only inside ``<op>/triton.py``, at first use of the Triton backend;
importing this package or ``specmetrics`` never imports it. Importing this package registers
the custom ops ``specmetrics::sparse_gemv``, ``specmetrics::sparse_gemv_out`` and
``specmetrics::sparse_mlp`` with ``torch.library`` (needed before ``torch.compile`` traces a
caller).
"""
from ._dispatch import (BACKENDS, DENSE_FALLBACK_ROWS, FLOAT_DTYPES, resolve_backend,
                        rounded_threshold, triton_available)
from .act_sparse_gemv import is_prepared, prepare_weight, sparse_gemv
from .sparse_mlp import sparse_mlp

__all__ = [
    "sparse_gemv",
    "sparse_mlp",
    "prepare_weight",
    "is_prepared",
    "BACKENDS",
    "DENSE_FALLBACK_ROWS",
    "FLOAT_DTYPES",
    "resolve_backend",
    "rounded_threshold",
    "triton_available",
]
