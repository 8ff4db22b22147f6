"""merge-workbench: align, merge and inspect CNNs trained from different seeds.

The public API, re-exported from the rooms that implement it::

    import workbench as wb
    train = wb.load_dataset("mnist-5k", "train")  # wb.datasets() lists the names
    test = wb.load_dataset("mnist-5k", "test")
    model_a, model_b = wb.load_quickstart_models(seeds=(0, 1))
    curve = wb.lmc_curve(model_a, model_b, eval_data=test, data=train, bn="reset")
    curve.barrier, curve.accuracy_barrier

Feature visualization (:mod:`workbench.featviz`, on lucent) and the dashboards
(:mod:`workbench.widgets`, on ipywidgets) are imported on first use, so that
``import workbench`` and ``workbench info`` stay light.
"""

import importlib
import importlib.metadata
from typing import Any

from workbench import alignment, analysis, cache, figures, graph, merging
from workbench.alignment import (
    AlignmentResult,
    activation_matching,
    align,
    apply_linear_maps,
    apply_permutation,
    c2m3_matching,
    cca_align,
    match,
    match_to_universe,
    methods,
    ot_fusion,
    ot_maps,
    random_permutation,
    register_method,
    ste_matching,
    weight_matching,
)
from workbench.analysis.coefficients import plot_coefficients
from workbench.analysis.comparison import compare_methods, plot_comparison
from workbench.analysis.instability import spawn_sweep
from workbench.analysis.lmc import (
    LMCCurve,
    barrier_table,
    curves_frame,
    lmc_curve,
    lmc_curves,
    pairwise_curves,
    plot_bands,
    plot_curves,
    write_csv,
)
from workbench.analysis.planes import LossPlane, loss_plane
from workbench.analysis.sweeps import sweep
from workbench.cache import ResultCache, cache_dir, default_cache
from workbench.checkpoints import (
    CheckpointError,
    checkpoint_metadata,
    load_checkpoint,
    load_quickstart_models,
    read_metadata,
    save_checkpoint,
    shipped_models_dir,
)
from workbench.data import (
    DatasetInfo,
    DatasetUnavailableError,
    TensorImageDataset,
    as_image_dataset,
    dataset_info,
    datasets,
    list_datasets,
    load_dataset,
    register_dataset,
    train_val_split,
    unregister_dataset,
)
from workbench.evaluation import Metrics, evaluate, per_part_accuracy
from workbench.fingerprints import fingerprint
from workbench.graph import PermutationSpec, permutation_spec
from workbench.merging import (
    BatchNormHandling,
    Ensemble,
    MergeReport,
    MergeResult,
    average,
    bn_modes,
    cca_merge,
    ensemble,
    get_bn,
    interpolate,
    merge_many,
    np_merge,
    register_bn,
    repair,
    reset_bn,
    unregister_bn,
    zipit,
    zipit_merge,
)
from workbench.modules import default_device
from workbench.populations import (
    Population,
    population_methods,
    train_population,
    train_populations,
)
from workbench.results import Result, load_result
from workbench.splits import partition
from workbench.training import (
    TrainingRun,
    random_translate,
    train_model,
    train_models,
    training_run,
    training_runs,
)
from workbench.training_health import DidNotLearnWarning
from workbench.zoo import (
    architectures,
    create_model,
    list_models,
    register_architecture,
    unregister_architecture,
)

__version__ = importlib.metadata.version("merge-workbench")

_LAZY = {
    "featviz": ("workbench.featviz", None),
    "widgets": ("workbench.widgets", None),
    "render_channels": ("workbench.featviz", "render_channels"),
    "top_exemplars": ("workbench.featviz", "top_exemplars"),
}


def __getattr__(name: str) -> Any:
    """The heavy parts of the API (lucent, ipywidgets), imported when first asked for."""
    if name not in _LAZY:
        raise AttributeError(f"module 'workbench' has no attribute {name!r}")
    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])


__all__ = [
    "AlignmentResult",
    "BatchNormHandling",
    "CheckpointError",
    "DatasetInfo",
    "DatasetUnavailableError",
    "DidNotLearnWarning",
    "Ensemble",
    "LMCCurve",
    "LossPlane",
    "MergeReport",
    "MergeResult",
    "Metrics",
    "PermutationSpec",
    "Population",
    "Result",
    "ResultCache",
    "TensorImageDataset",
    "TrainingRun",
    "__version__",
    "activation_matching",
    "align",
    "alignment",
    "analysis",
    "apply_linear_maps",
    "apply_permutation",
    "architectures",
    "as_image_dataset",
    "average",
    "barrier_table",
    "bn_modes",
    "c2m3_matching",
    "cache",
    "cache_dir",
    "cca_align",
    "cca_merge",
    "checkpoint_metadata",
    "compare_methods",
    "create_model",
    "curves_frame",
    "dataset_info",
    "datasets",
    "default_cache",
    "default_device",
    "ensemble",
    "evaluate",
    "featviz",
    "figures",
    "fingerprint",
    "get_bn",
    "graph",
    "interpolate",
    "list_datasets",
    "list_models",
    "lmc_curve",
    "lmc_curves",
    "load_checkpoint",
    "load_dataset",
    "load_quickstart_models",
    "load_result",
    "loss_plane",
    "match",
    "match_to_universe",
    "merge_many",
    "merging",
    "methods",
    "np_merge",
    "ot_fusion",
    "ot_maps",
    "pairwise_curves",
    "partition",
    "per_part_accuracy",
    "permutation_spec",
    "plot_bands",
    "plot_coefficients",
    "plot_comparison",
    "plot_curves",
    "population_methods",
    "random_permutation",
    "random_translate",
    "read_metadata",
    "register_architecture",
    "register_bn",
    "register_dataset",
    "register_method",
    "render_channels",
    "repair",
    "reset_bn",
    "save_checkpoint",
    "shipped_models_dir",
    "spawn_sweep",
    "ste_matching",
    "sweep",
    "top_exemplars",
    "train_model",
    "train_models",
    "train_population",
    "train_populations",
    "train_val_split",
    "training_run",
    "training_runs",
    "unregister_architecture",
    "unregister_bn",
    "unregister_dataset",
    "weight_matching",
    "widgets",
    "write_csv",
    "zipit",
    "zipit_merge",
]
