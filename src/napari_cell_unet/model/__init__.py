"""The U-Net and its single-file `.safetensors` format (weights + JSON metadata, never pickled)."""

from .architecture import DEFAULT_ARCHITECTURE, OUTPUT_CLASSES, build_network
from .files import (
    BUNDLED_MODELS,
    DEFAULT_MODEL_PATH,
    ModelFileError,
    default_model_available,
    load_model,
    save_model,
)
from .cell_model import CellModel
from .bioimageio import BioimageioError, export_bioimageio, from_bioimageio

__all__ = [
    "BUNDLED_MODELS",
    "BioimageioError",
    "CellModel",
    "DEFAULT_ARCHITECTURE",
    "DEFAULT_MODEL_PATH",
    "ModelFileError",
    "OUTPUT_CLASSES",
    "build_network",
    "default_model_available",
    "export_bioimageio",
    "from_bioimageio",
    "load_model",
    "save_model",
]
