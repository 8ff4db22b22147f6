"""``bn="reset"``: RESET, the BatchNorm statistics of the merged network measured again on
data (Jordan et al., 2023, "REPAIR: REnormalizing Permuted Activations for Interpolation
Repair"; the exact, batch-size independent version of
:func:`~workbench.alignment.calibration.reset_bn_`, which lives with the alignment so that a
linear method's mapped model can be reset too)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from workbench.alignment.calibration import reset_bn_
from workbench.batching import on_device
from workbench.merging.renorm.registry import Correction, register_bn
from workbench.modules import model_device


@register_bn("reset", label="RESET", linestyle="--", needs_batchnorm=True, batch_statistics=True)
def reset(endpoints, data, *, spec, batch_size, max_batches) -> Correction:
    """RESET: every BatchNorm layer's running statistics become the exact statistics of
    its inputs over the data, layer by layer in forward order."""
    on = on_device(data, model_device(endpoints[0]))

    def correct(work: nn.Module, _weights: Sequence[float]) -> None:
        reset_bn_(work, data=on, batch_size=batch_size, max_batches=max_batches)

    return correct
