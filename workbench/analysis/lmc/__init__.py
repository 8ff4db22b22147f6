"""Linear mode connectivity: loss and accuracy along the straight path between two models.

:mod:`~workbench.analysis.lmc.result` (the curve, its barriers and tables),
:mod:`~workbench.analysis.lmc.compute` (curves of pairs and populations, cached) and
:mod:`~workbench.analysis.lmc.plot` (figures).
"""

from workbench.analysis.lmc.compute import (
    cached_curves,
    lmc_curve,
    lmc_curves,
    pairwise_curves,
)
from workbench.analysis.lmc.plot import plot_bands, plot_curves
from workbench.analysis.lmc.result import (
    LMCCurve,
    alpha_grid,
    barrier_table,
    curves_frame,
    write_csv,
)

__all__ = [
    "LMCCurve",
    "alpha_grid",
    "barrier_table",
    "cached_curves",
    "curves_frame",
    "lmc_curve",
    "lmc_curves",
    "pairwise_curves",
    "plot_bands",
    "plot_curves",
    "write_csv",
]
