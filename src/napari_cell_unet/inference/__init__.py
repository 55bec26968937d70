"""Inference: normalisation, device choice, tiled prediction, instance labels and huge images chunk by chunk
(no Qt, no napari)."""

from .chunked import iter_segment_dask, segment_dask
from .devices import DeviceError, available_devices, resolve_device
from .instances import instances_from_probabilities, instances_in_bands, remove_small_instances
from .normalize import ImageError, normalize_image
from .predict import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, TiledPredictor, predict_probabilities
from .rescale import FALLBACK_MODEL_DIAMETER, estimate_diameter, model_diameter
from .segment import ImageProgress, SegmentationResult, SegmentedImage, iter_segment, iter_segment_many, segment

__all__ = [
    "DEFAULT_OVERLAP",
    "DEFAULT_TILE_SIZE",
    "DeviceError",
    "FALLBACK_MODEL_DIAMETER",
    "ImageError",
    "ImageProgress",
    "SegmentationResult",
    "SegmentedImage",
    "TiledPredictor",
    "available_devices",
    "estimate_diameter",
    "instances_from_probabilities",
    "instances_in_bands",
    "iter_segment",
    "iter_segment_dask",
    "iter_segment_many",
    "model_diameter",
    "normalize_image",
    "predict_probabilities",
    "remove_small_instances",
    "resolve_device",
    "segment",
    "segment_dask",
]
