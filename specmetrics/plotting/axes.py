"""The one helper every plot uses: draw on the given ``Axes`` or on a new figure."""
from __future__ import annotations

__all__ = ["new_axes"]


def new_axes(ax=None, **subplots_kw):
    """``ax`` itself, or the ``Axes`` of a new ``matplotlib.pyplot.subplots()`` figure (so it
    shows in notebooks). Changes no global matplotlib state."""
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    _, ax = plt.subplots(**subplots_kw)
    return ax
