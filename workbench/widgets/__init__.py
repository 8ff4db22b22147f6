"""ipywidgets dashboards. They hold no analysis logic: every number comes from the modules
below them (``merge``, ``evaluation``, ``lmc``)."""

from workbench.widgets.interpolation import InterpolationSlider

__all__ = ["InterpolationSlider"]
