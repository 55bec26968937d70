"""Training and fine-tuning: targets (borders), training pairs, augmentation and the loop.

Importing this package imports torch (it is only imported on demand by the CLI, the widgets
and `napari_cell_unet.train`).
"""

from .config import TrainConfig
from .events import TrainResult, TrainStep, Validation
from .loop import Trainer, iter_train, resolve_model, train
from .pairs import TrainingPair, painted_region, pairs_from_arrays, pairs_from_coco, pairs_from_files, pairs_from_folder
from .targets import TrainingDataError, as_instance_labels, derive_borders, make_targets

__all__ = [
    "TrainConfig", "Trainer", "TrainResult", "TrainStep", "TrainingDataError", "TrainingPair", "Validation",
    "as_instance_labels", "derive_borders", "iter_train", "make_targets", "painted_region", "pairs_from_arrays",
    "pairs_from_coco", "pairs_from_files", "pairs_from_folder", "resolve_model", "train",
]
