"""Training targets: instance labels from masks, and the thin `border` class derived from instances."""

from __future__ import annotations

import numpy as np

from ..errors import CellUnetError


class TrainingDataError(CellUnetError, ValueError):
    """Training data that cannot be used; the message is one line naming the problem."""


def as_instance_labels(labels: np.ndarray) -> np.ndarray:
    """Instance labels (int32, 0 = background) from instance labels or a binary mask.

    A binary mask (bool, or only the values 0 and one other value) is split into
    connected components, each becoming one cell.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise TrainingDataError(f"labels must be a 2D image, got shape {labels.shape}")
    if labels.dtype == bool or np.issubdtype(labels.dtype, np.floating):
        labels = labels > 0 if labels.dtype == bool else np.rint(labels).astype(np.int64)
    values = np.unique(labels)
    if values.size <= 2 and not (values.size == 2 and values[0] != 0):
        from skimage.measure import label

        return label(labels > 0, connectivity=1).astype(np.int32)
    if values[0] < 0:
        raise TrainingDataError("labels must not be negative")
    return labels.astype(np.int32, copy=False)


def derive_borders(labels: np.ndarray, thickness: int = 2) -> np.ndarray:
    """The thin outline between and around cells, as a boolean mask.

    `thickness=2` marks the pixels on both sides of every edge between two different
    labels (cell/cell and cell/background), like the ~2 px `feature_0.png` masks of the
    Usiigaci data (`skimage.segmentation.find_boundaries(mode="thick")`). `thickness=1`
    keeps only the inner side; larger values widen the outline symmetrically.
    """
    from scipy import ndimage
    from skimage.segmentation import find_boundaries

    if thickness < 1:
        raise TrainingDataError(f"border thickness must be at least 1, got {thickness}")
    instances = as_instance_labels(labels)
    if thickness == 1:
        return find_boundaries(instances, mode="inner")
    borders = find_boundaries(instances, mode="thick")
    extra = (thickness - 1) // 2  # each dilation adds one pixel on both sides
    if extra:
        borders = ndimage.binary_dilation(borders, iterations=extra)
    return borders


def make_targets(labels: np.ndarray, borders: np.ndarray | None = None,
                 thickness: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(instances int32, cell bool, border bool) for one labelled image.

    A painted/provided border mask is OR-ed with the borders derived from the instances,
    so a user's extra strokes only ever add border pixels.
    """
    instances = as_instance_labels(labels)
    border = derive_borders(instances, thickness)
    if borders is not None:
        borders = np.asarray(borders)
        if borders.shape != instances.shape:
            raise TrainingDataError(f"border mask shape {borders.shape} differs from labels shape {instances.shape}")
        border |= borders > 0
    return instances, instances > 0, border
