"""Per-cell measurements as a Labels layer's `features` (see `napari_cell_unet.measure`). No Qt here."""

from __future__ import annotations

import numpy as np

from .. import measure
from . import _layers

PIXEL_UNIT = "um"  # the unit of a layer's scale: the readers give µm when the file carries a pixel size


def layer_scale(layer) -> tuple[float, float] | None:
    """The (y, x) pixel size of the layer, None when it has none (scale 1, 1)."""
    scale = tuple(float(s) for s in np.asarray(layer.scale)[-2:])
    return None if np.allclose(scale, 1.0) else scale


def frame_number(shape: tuple[int, ...], plane: tuple[int, ...]) -> int | None:
    """The flat frame number of `plane` in a stack of `shape` (leading axes), None for a 2-D layer."""
    lead = tuple(shape[:-2])
    if not lead:
        return None
    return int(np.ravel_multi_index(plane, lead)) if plane else 0


def measure_planes(labels: np.ndarray, image: np.ndarray | None, scale, image_name: str,
                   layer_shape: tuple[int, ...], plane: tuple[int, ...]) -> dict[str, np.ndarray]:
    """Measurements of the labels written into `plane` (all planes when plane is ()), frames numbered in the layer."""
    if plane:
        return measure.measure_cells(labels, image, scale, frame_number(layer_shape, plane), image_name, PIXEL_UNIT)
    return measure.measure_stack(labels, image, scale, image_name, PIXEL_UNIT)


def set_features(layer, table: dict[str, np.ndarray], plane: tuple[int, ...] = ()) -> None:
    """Put `table` in `layer.features`; for one plane of a stack, replace only that frame's rows."""
    import pandas as pd

    new = pd.DataFrame(table)
    if plane:
        frame = frame_number(tuple(layer.data.shape), plane)
        old = layer.features
        if "frame" in old.columns and list(old.columns) == list(new.columns):
            new = pd.concat([old[old["frame"] != frame], new], ignore_index=True).sort_values(
                ["frame", "label"], kind="stable", ignore_index=True)
    if "frame" not in new.columns:
        new.insert(0, "index", new["label"].to_numpy())  # napari shows a label's row in the status bar by 'index'
    layer.features = new


def measure_layer(layer, image_layer=None) -> dict[str, np.ndarray]:
    """Measure the whole labels layer (every frame) against `image_layer` (optional) and set its features."""
    labels = np.asarray(layer.data)
    image = None
    name = layer.name
    if image_layer is not None:
        name = image_layer.name
        pixels = _layers.pixels(image_layer)
        if pixels.shape[:labels.ndim] == labels.shape:
            image = pixels
    table = measure_planes(labels, image, layer_scale(layer), name, tuple(labels.shape), ())
    set_features(layer, table)
    return table
