"""ipywidgets dashboards. They hold no analysis logic: every number comes from the modules
below them (``merge``, ``evaluation``, ``lmc``, ``comparison``, ``featviz``)."""

from workbench.widgets.interpolation import InterpolationSlider
from workbench.widgets.lmc_explorer import LMCExplorer
from workbench.widgets.method_comparison import MethodComparison
from workbench.widgets.neuron_explorer import NeuronExplorer

__all__ = ["InterpolationSlider", "LMCExplorer", "MethodComparison", "NeuronExplorer"]
