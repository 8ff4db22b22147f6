"""merge-workbench: align, merge and inspect CNNs trained from different seeds.

The public API, re-exported from the modules that implement it::

    import workbench as wb
    train = wb.load_dataset("mnist-5k", "train")
    model_a, model_b = wb.load_quickstart_models(seeds=(0, 1))
    curve = wb.lmc_curve(model_a, model_b, train, alphas=11, bn="reset")
    curve.barrier, curve.accuracy_barrier
"""

__version__ = "0.1.0"

from workbench import figures, widgets
from workbench.checkpoints import (
    CheckpointError,
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
    dataset_info,
    list_datasets,
    load_dataset,
    train_val_split,
)
from workbench.device import default_device
from workbench.evaluation import Metrics, evaluate
from workbench.lmc import (
    LMCCurve,
    barrier_table,
    curves_frame,
    lmc_curve,
    lmc_curves,
    plot_curves,
    write_csv,
)
from workbench.merge import average, interpolate, reset_bn
from workbench.training import random_translate, train_model, train_models
from workbench.zoo import create_model, list_models

__all__ = [
    "CheckpointError",
    "DatasetInfo",
    "DatasetUnavailableError",
    "LMCCurve",
    "Metrics",
    "TensorImageDataset",
    "__version__",
    "average",
    "barrier_table",
    "create_model",
    "curves_frame",
    "dataset_info",
    "default_device",
    "evaluate",
    "figures",
    "interpolate",
    "list_datasets",
    "list_models",
    "lmc_curve",
    "lmc_curves",
    "load_checkpoint",
    "load_dataset",
    "load_quickstart_models",
    "plot_curves",
    "random_translate",
    "read_metadata",
    "reset_bn",
    "save_checkpoint",
    "shipped_models_dir",
    "train_model",
    "train_models",
    "train_val_split",
    "widgets",
    "write_csv",
]
