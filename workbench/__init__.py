"""merge-workbench: align, merge and inspect CNNs trained from different seeds.

The public API, re-exported from the modules that implement it::

    import workbench as wb
    train = wb.load_dataset("mnist-5k", "train")
    model_a, model_b = wb.load_quickstart_models(seeds=(0, 1))
    curve = wb.lmc_curve(model_a, model_b, train, alphas=11, bn="reset")
    curve.barrier, curve.accuracy_barrier
"""

__version__ = "0.1.0"

from workbench import (
    alignment,
    cache,
    comparison,
    diagnostics,
    featviz,
    figures,
    merging,
    sweeps,
    widgets,
)
from workbench.alignment import (
    activation_matching,
    align,
    apply_linear_maps,
    apply_permutation,
    cca_align,
    methods,
    random_permutation,
    register_method,
    weight_matching,
)
from workbench.cache import ResultCache, default_cache, fingerprint
from workbench.checkpoints import (
    CheckpointError,
    load_checkpoint,
    load_quickstart_models,
    read_metadata,
    save_checkpoint,
    shipped_models_dir,
)
from workbench.comparison import compare_methods, plot_comparison
from workbench.data import (
    DatasetInfo,
    DatasetUnavailableError,
    TensorImageDataset,
    dataset_info,
    list_datasets,
    load_dataset,
    train_val_split,
)
from workbench.device import default_device
from workbench.evaluation import Metrics, evaluate
from workbench.featviz import render_channels, top_exemplars
from workbench.graph import PermutationSpec, permutation_spec
from workbench.lmc import (
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
from workbench.merge import average, interpolate, repair, reset_bn
from workbench.merging import MergeReport, cca_merge, merge_many
from workbench.planes import LossPlane, loss_plane
from workbench.training import random_translate, train_model, train_models
from workbench.zoo import create_model, list_models

__all__ = [
    "CheckpointError",
    "DatasetInfo",
    "DatasetUnavailableError",
    "LMCCurve",
    "LossPlane",
    "MergeReport",
    "Metrics",
    "PermutationSpec",
    "ResultCache",
    "TensorImageDataset",
    "__version__",
    "activation_matching",
    "align",
    "alignment",
    "apply_linear_maps",
    "apply_permutation",
    "average",
    "barrier_table",
    "cache",
    "cca_align",
    "cca_merge",
    "compare_methods",
    "comparison",
    "create_model",
    "curves_frame",
    "dataset_info",
    "default_cache",
    "default_device",
    "diagnostics",
    "evaluate",
    "featviz",
    "figures",
    "fingerprint",
    "interpolate",
    "list_datasets",
    "list_models",
    "lmc_curve",
    "lmc_curves",
    "load_checkpoint",
    "load_dataset",
    "load_quickstart_models",
    "loss_plane",
    "merge_many",
    "merging",
    "methods",
    "pairwise_curves",
    "permutation_spec",
    "plot_bands",
    "plot_comparison",
    "plot_curves",
    "random_permutation",
    "random_translate",
    "read_metadata",
    "register_method",
    "render_channels",
    "repair",
    "reset_bn",
    "save_checkpoint",
    "shipped_models_dir",
    "sweeps",
    "top_exemplars",
    "train_model",
    "train_models",
    "train_val_split",
    "weight_matching",
    "widgets",
    "write_csv",
]
