"""Figures of every result type (matplotlib imported when a plot is drawn).

Every function draws on a given ``Axes`` or, when ``ax`` is omitted, on a new figure, returns
the ``Axes``, and changes no global matplotlib state. The result objects' ``.plot(ax=None)``
methods call these functions; the functions read the results duck-typed, so this package
imports no result module (it is a base layer every other package may use).

May import: the base files only.
"""
from .allocation import (plot_allocation, plot_allocation_metric, plot_allocation_ratios,
                         plot_allocations)
from .axes import new_axes
from .spectrum import (ALPHA_BOUNDS, plot_layer_spectrum, plot_report, save_report_plots,
                       short_names)

__all__ = [
    "new_axes", "plot_layer_spectrum", "plot_report", "save_report_plots", "short_names",
    "ALPHA_BOUNDS", "plot_allocation", "plot_allocation_ratios", "plot_allocation_metric",
    "plot_allocations",
]
