"""``bn="none"``: the merged network keeps the statistics it was combined with."""

from __future__ import annotations

from workbench.merging.renorm.registry import register_bn


@register_bn("none", label="", linestyle="-", needs_data=False, keeps_endpoints=True)
def no_correction(endpoints, data, *, spec, batch_size, max_batches) -> None:
    """No correction: BatchNorm statistics (and every other parameter) as combined."""
    return None
