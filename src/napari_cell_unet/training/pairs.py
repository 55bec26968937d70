"""Training pairs (image + labels [+ painted borders] [+ annotated region]) from arrays, files, folders and COCO."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .targets import TrainingDataError


@dataclass
class TrainingPair:
    """One annotated image.

    image    2D (H, W) or channels-last (H, W, C) array.
    labels   instance labels (0 = background) or a binary cell mask, (H, W).
    borders  optional painted border mask, OR-ed with the borders derived from `labels`.
    region   optional boolean mask, True where the annotation is complete. Pixels outside
             it get no loss at all, so unpainted cells there are never taught as background
             (partial annotation, see docs/partial_annotation.md). None = everything annotated.
    name     shown in reports and the model's training record.
    weight   how often crops come from this pair, relative to its annotated area (1 = in proportion
             to it): balances domains when one kind of image would otherwise dominate.
    """

    image: np.ndarray
    labels: np.ndarray
    borders: np.ndarray | None = None
    region: np.ndarray | None = None
    name: str = ""
    weight: float = 1.0

    def __post_init__(self) -> None:
        self.image = np.asarray(self.image)
        self.labels = np.asarray(self.labels)
        where = f"{self.name}: " if self.name else ""
        if self.image.ndim not in (2, 3):
            raise TrainingDataError(f"{where}image must be 2D (H, W) or (H, W, C), got shape {self.image.shape}")
        if self.labels.shape != self.image.shape[:2]:
            raise TrainingDataError(f"{where}labels shape {self.labels.shape} differs from image shape {self.image.shape[:2]}")
        for field_name in ("borders", "region"):
            mask = getattr(self, field_name)
            if mask is not None:
                mask = np.asarray(mask)
                if mask.shape != self.labels.shape:
                    raise TrainingDataError(f"{where}{field_name} shape {mask.shape} differs from labels shape {self.labels.shape}")
                setattr(self, field_name, mask.astype(bool, copy=False))
        if not np.isfinite(self.weight) or self.weight <= 0:
            raise TrainingDataError(f"{where}sampling weight must be a positive number, got {self.weight}")
        if self.region is not None and not self.region.any():
            raise TrainingDataError(f"{where}the annotated region is empty")

    @property
    def shape(self) -> tuple[int, int]:
        return self.labels.shape  # type: ignore[return-value]


def annotated_cells(pair: TrainingPair) -> np.ndarray:
    """The pair's instance labels; with a region, only the cells mostly inside it: the cells the user painted or
    corrected, whose size can be trusted (a corrected Segment output keeps the model's own, possibly wrong-sized,
    cells outside it)."""
    from .targets import as_instance_labels

    labels = as_instance_labels(pair.labels)
    if pair.region is None:
        return labels
    area = np.bincount(labels.ravel())
    inside = np.bincount(labels[pair.region].ravel(), minlength=area.size)
    keep = 2 * inside > area
    keep[0] = False
    kept = np.where(keep[labels], labels, 0)
    return kept if kept.any() else labels


def zoom_to_diameter(pair: TrainingPair, reference: float, tolerance: float = 0.1) -> TrainingPair:
    """The pair zoomed so its annotated cells' median diameter (`annotated_cells`) becomes `reference` px.

    Inference zooms images to the model's cell size (`diameter="auto"`), so fine-tuning must show
    the network cells of that size too. Pairs already within `tolerance` of it, and pairs without
    a measurable cell, are returned as they are. Image: bilinear (anti-aliased when shrinking);
    labels, borders and region: nearest neighbour.
    """
    from skimage.transform import resize

    from ..inference import estimate_diameter
    from ..inference.rescale import MAX_ZOOM

    try:
        diameter = estimate_diameter(annotated_cells(pair))
    except ValueError:
        return pair
    zoom = float(np.clip(reference / diameter, 1 / MAX_ZOOM, MAX_ZOOM))
    if abs(zoom - 1.0) <= tolerance:
        return pair
    shape = tuple(max(1, int(round(n * zoom))) for n in pair.shape)

    def nearest(array: np.ndarray | None) -> np.ndarray | None:
        if array is None:
            return None
        return resize(array, shape, order=0, anti_aliasing=False, preserve_range=True).astype(array.dtype)

    image = resize(pair.image.astype(np.float32), shape + pair.image.shape[2:], order=1, anti_aliasing=zoom < 1,
                   preserve_range=True).astype(np.float32)
    return TrainingPair(image, nearest(pair.labels), nearest(pair.borders), nearest(pair.region),
                        f"{pair.name}@{zoom:.2f}x", pair.weight)


def painted_region(labels: np.ndarray, margin: int = 16) -> np.ndarray:
    """The region around painted cells: every pixel within `margin` px of a labelled pixel.

    Training only there ("train only where I painted") teaches the painted cells and the
    background right around them, and leaves the rest of the image out of the loss.
    """
    from scipy import ndimage

    painted = np.asarray(labels) > 0
    if not painted.any():
        raise TrainingDataError("nothing is painted: the labels are all background")
    if margin <= 0:
        return painted
    return ndimage.distance_transform_edt(~painted) <= margin


def require_cells(pairs: Sequence[TrainingPair]) -> None:
    """Refuse training data without a single cell: a model trained on it learns to find nothing."""
    if not any(np.any(pair.labels) for pair in pairs):
        raise TrainingDataError(f"no cells to learn from: the labels of all {len(pairs)} training image(s) are "
                                "empty (all 0); paint or load at least a few cells")


def pairs_from_arrays(images: Sequence[np.ndarray], labels: Sequence[np.ndarray],
                      borders: Sequence[np.ndarray | None] | None = None) -> list[TrainingPair]:
    if len(images) != len(labels):
        raise TrainingDataError(f"{len(images)} images but {len(labels)} label images")
    borders = list(borders) if borders is not None else [None] * len(images)
    if len(borders) != len(images):
        raise TrainingDataError(f"{len(images)} images but {len(borders)} border masks")
    return [TrainingPair(image, mask, border, name=f"image {n}") for n, (image, mask, border) in enumerate(zip(images, labels, borders))]


def pairs_from_files(images: Sequence[str | os.PathLike], labels: Sequence[str | os.PathLike],
                     borders: Sequence[str | os.PathLike] | None = None) -> list[TrainingPair]:
    """Pairs from lists of files, matched by order."""
    if len(images) != len(labels):
        raise TrainingDataError(f"{len(images)} images but {len(labels)} label files (they are paired by order)")
    if borders is not None and len(borders) != len(images):
        raise TrainingDataError(f"{len(images)} images but {len(borders)} border files (they are paired by order)")
    pairs = []
    names = _distinct_names(images)
    for n, (image_path, label_path) in enumerate(zip(images, labels)):
        border = _read_labels(borders[n]) > 0 if borders is not None else None
        pairs.append(_pair(_read_image(image_path), _read_labels(label_path), border, names[n]))
    return pairs


def _distinct_names(paths: Sequence[str | os.PathLike]) -> list[str]:
    """File names, or parent/name where file names repeat (e.g. set5/raw.tif, set13/raw.tif)."""
    names = [Path(p).name for p in paths]
    if len(set(names)) == len(names):
        return names
    return [f"{Path(p).parent.name}/{Path(p).name}" for p in paths]


def pairs_from_folder(folder: str | os.PathLike) -> list[TrainingPair]:
    """Pairs from a dataset folder with `images/`, `labels/` and optional `borders/` (see io.find_dataset_pairs)."""
    from ..io import find_dataset_pairs

    pairs = []
    for entry in find_dataset_pairs(folder):
        image_path, label_path, border_path = _dataset_entry(entry)
        border = _read_labels(border_path) > 0 if border_path is not None else None
        pairs.append(_pair(_read_image(image_path), _read_labels(label_path), border, Path(image_path).name))
    if not pairs:
        raise TrainingDataError(f"{folder}: no image/label pairs found")
    return pairs


def pairs_from_coco(json_path: str | os.PathLike) -> list[TrainingPair]:
    """Pairs from a COCO instance-segmentation json (LIVECell format); images are looked up as io.read_coco does."""
    from ..io import read_coco

    dataset = read_coco(json_path)
    pairs = [_pair(np.asarray(dataset.read_image(i)), dataset.labels(i), None, dataset.file_name(i))
             for i in range(len(dataset)) if dataset.annotations(i)]
    if not pairs:
        raise TrainingDataError(f"{json_path}: no annotated images")
    return pairs


def _pair(image: np.ndarray, labels: np.ndarray, borders: np.ndarray | None, name: str) -> TrainingPair:
    return TrainingPair(image=image, labels=labels, borders=borders, name=name)


def _read_image(path: str | os.PathLike) -> np.ndarray:
    from ..io import read_image

    return np.asarray(read_image(path))


def _read_labels(path: str | os.PathLike) -> np.ndarray:
    from ..io import read_labels

    return np.asarray(read_labels(path))


def _dataset_entry(entry) -> tuple[Path, Path, Path | None]:
    """(image, labels, borders) paths of one io.DatasetPair."""
    return Path(entry.image), Path(entry.labels), (Path(entry.borders) if entry.borders is not None else None)
