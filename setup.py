"""Package discovery for specmetrics (all metadata lives in pyproject.toml).

``kernels/`` is installed as ``specmetrics.kernels`` through the ``package-dir`` mapping in
pyproject.toml. pyproject's ``packages.find`` cannot rename a folder, so the package list is
computed here: every package under ``specmetrics/`` plus every package under ``kernels/`` with the
``specmetrics.kernels`` prefix. New subpackages need no edit anywhere.
"""
from setuptools import find_packages, setup

packages = find_packages(include=["specmetrics", "specmetrics.*"])
packages += ["specmetrics.kernels"]
packages += ["specmetrics.kernels." + name for name in find_packages(where="kernels")]

setup(packages=packages)
