"""Turn chosen napari layers (image + labels [+ borders]) into checked training pairs."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
from napari.layers import Image, Labels

from ..errors import CellUnetError
from ..training import TrainingPair, painted_region
from . import _layers, _maps


class PairError(CellUnetError, ValueError):
    """Layers that cannot be used for training; the message names the layers and the problem."""


@dataclass
class LayerPair:
    image: object   # expected: napari Image layer
    labels: object  # expected: napari Labels layer
    borders: object | None = None

    def describe(self) -> str:
        text = f"{getattr(self.image, 'name', '?')} + {getattr(self.labels, 'name', '?')}"
        return text + (f" + {self.borders.name}" if self.borders is not None else "")


def check_pair(pair: LayerPair) -> None:
    """Raise PairError unless the layer types and shapes fit together."""
    if not isinstance(pair.image, Image):
        raise PairError(f"'{getattr(pair.image, 'name', pair.image)}' is not an Image layer: choose the raw image")
    if not isinstance(pair.labels, Labels):
        raise PairError(f"'{getattr(pair.labels, 'name', pair.labels)}' is not a Labels layer: "
                        "choose or add the labels you painted")
    shape = _layers.spatial_shape(pair.image)
    for role, layer in (("labels", pair.labels), ("border", pair.borders)):
        if layer is not None and tuple(layer.data.shape) != shape:
            raise PairError(f"{role} layer '{layer.name}' has shape {tuple(layer.data.shape)} but image "
                            f"'{pair.image.name}' has shape {shape}: they must be the same size")


def training_pairs(pairs: list[LayerPair], only_painted: bool, margin: int) -> list[TrainingPair]:
    """One TrainingPair per painted plane of every layer pair (stacks give one per painted slice)."""
    out = []
    for pair in pairs:
        check_pair(pair)
        planes = _painted_planes(pair.labels)
        if not planes:
            raise PairError(f"labels layer '{pair.labels.name}' is empty (all background): "
                            "paint some cells, or segment first and correct the result")
        for plane in planes:
            out.append(_one_pair(pair, plane, only_painted, margin))
    return out


def _one_pair(pair: LayerPair, plane: tuple[int, ...], only_painted: bool, margin: int) -> TrainingPair:
    labels = _layers.pixels(pair.labels, plane)
    borders = _layers.pixels(pair.borders, plane) > 0 if pair.borders is not None else None
    region = _painted_or_corrected(pair.labels, plane, labels, margin) if only_painted else None
    if region is not None and borders is not None:
        region = region | borders
    suffix = f" {plane}" if plane else ""
    return TrainingPair(_layers.pixels(pair.image, plane), labels, borders, region, name=f"{pair.image.name}{suffix}")


def _painted_or_corrected(layer: Labels, plane: tuple[int, ...], labels: np.ndarray, margin: int) -> np.ndarray:
    """The pixels to learn from: around the cells that differ from Segment's output when the layer is one (the
    rest stays as the model had it), else around every painted cell; cells fixed with the Correct tools count."""
    changed = _maps.changed_cells(layer, plane, labels)
    if changed is not None and not changed.any():
        raise PairError(f"'{layer.name}' is still the model's own output: correct some cells first (brush, eraser "
                        "or the Correct tools), or untick 'train only where painted or corrected' if every cell "
                        "in it is right")
    region = painted_region(changed if changed is not None else labels, margin)
    corrected = _maps.corrected_mask(layer, plane)
    if corrected is not None:
        region = region | painted_region(corrected, margin)
    return region


def _painted_planes(labels: Labels) -> list[tuple[int, ...]]:
    data = np.asarray(labels.data)
    lead = data.shape[:-2]
    return [plane for plane in itertools.product(*(range(n) for n in lead)) if np.any(data[plane])]
