"""Loss and accuracy over the plane through three models in weight space.

The plane is spanned by the three models' parameter vectors (Garipov et al., 2018): with
``d2 = theta2 - theta1`` and ``d3 = theta3 - theta1`` over all floating-point parameters,
Gram-Schmidt gives the orthonormal basis ``u = d2 / |d2|`` and ``v`` (the part of ``d3``
orthogonal to ``u``, normalized), so that plane coordinates are true Euclidean distances
in parameter space and model 1 sits at the origin, model 2 on the x axis.

Every point ``theta1 + x u + y v`` is the affine combination
``(1 - a - b) theta1 + a theta2 + b theta3`` of the three models; BatchNorm running
statistics (buffers, not parameters) are combined with the same weights ``(1 - a - b, a,
b)``, which gives each model's own statistics at its own position, and with ``bn="reset"``
they are recomputed at every point instead (recommended: the combined statistics are not
the statistics of the combined network).
"""

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
