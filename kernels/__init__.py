"""Triton sparse-inference kernels, each next to its plain torch reference.

Installed as ``specmetrics.kernels`` (the ``package-dir`` mapping in pyproject.toml), in editable
and wheel installs alike. One folder per op::

    kernels/<op>/__init__.py   dispatch: the Triton kernel on CUDA when available, else the reference
    kernels/<op>/reference.py  plain torch, the oracle the tests compare against
    kernels/<op>/triton.py     the kernel and its host wrapper

``triton`` is imported only inside ``<op>/triton.py``, at first use; importing this package or
``specmetrics`` never imports it.
"""
