"""Renormalizing a merged network, one registered handling per file: ``"none"``,
``"reset"`` (RESET) and ``"repair"`` (REPAIR), read by every consumer through the
registry (:mod:`~workbench.merging.renorm.registry`)."""

from workbench.alignment.calibration import reset_bn, reset_bn_
from workbench.merging.renorm import none, reset  # noqa: F401  (registers them)
from workbench.merging.renorm.registry import (
    BatchNormHandling,
    Correction,
    bn_modes,
    check_bn,
    get_bn,
    register_bn,
    unregister_bn,
)
from workbench.merging.renorm.repair import repair, repair_, repair_points

__all__ = [
    "BatchNormHandling",
    "Correction",
    "bn_modes",
    "check_bn",
    "get_bn",
    "register_bn",
    "repair",
    "repair_",
    "repair_points",
    "reset_bn",
    "reset_bn_",
    "unregister_bn",
]
