"""Loss and accuracy over the plane through three models in weight space:
:mod:`~workbench.analysis.planes.result` (the plane), :mod:`~workbench.analysis.planes.compute`
(the basis and the grid, with the construction explained) and
:mod:`~workbench.analysis.planes.plot` (contours)."""

from workbench.analysis.planes.compute import loss_plane, loss_planes, plane_basis
from workbench.analysis.planes.plot import log_ticks, plot_plane
from workbench.analysis.planes.result import LossPlane, plane_weights

__all__ = [
    "LossPlane",
    "log_ticks",
    "loss_plane",
    "loss_planes",
    "plane_basis",
    "plane_weights",
    "plot_plane",
]
