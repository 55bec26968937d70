"""Click-to-fix corrections of a 2-D instance labels array, from the U-Net's own cell and border maps.

Pure numpy/scipy/scikit-image (no torch, Qt or napari). Every function reads the labels and returns an
`Edit` (or None when there is nothing to do): the changed bounding box and the labels inside it before and
after, so that a caller can apply it (`Edit.apply`), undo it (`Edit.revert`) or record exactly the changed
pixels (`Edit.changed`). The input array is never modified. Work is done on a crop around the clicked cell,
so an action costs milliseconds on a 2048² image (see benchmarks/bench_correction_tools.py).

`probs` is the pair of probability maps of the plane, shape (2, H, W) in the order ("cell", "border") of
`model.OUTPUT_CLASSES` (any float dtype; float16 is what the Segment widget keeps).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.segmentation import watershed

from .errors import CellUnetError

Point = tuple[float, float]
Box = tuple[slice, slice]

ADD_WINDOW = 96  # first half-size of the crop searched around a click by `add_cell`; doubled while too small


class CorrectionError(CellUnetError, ValueError):
    """A click that cannot be acted on; the message says why (e.g. 'no cell under the click')."""


@dataclass
class Edit:
    """One correction: `labels[box]` was `before` and becomes `after`; `label` is the id created or kept."""

    box: Box
    before: np.ndarray
    after: np.ndarray
    label: int = 0
    action: str = ""

    def apply(self, labels: np.ndarray) -> np.ndarray:
        labels[self.box] = self.after
        return labels

    def revert(self, labels: np.ndarray) -> np.ndarray:
        labels[self.box] = self.before
        return labels

    def changed(self) -> tuple[np.ndarray, np.ndarray]:
        """(rows, cols) of the changed pixels in full-image coordinates."""
        rows, cols = np.nonzero(self.before != self.after)
        return rows + self.box[0].start, cols + self.box[1].start

    @property
    def n_changed(self) -> int:
        return int(np.count_nonzero(self.before != self.after))


# ---- helpers ---------------------------------------------------------------------------------
def _check(labels: np.ndarray) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D array (one plane), got shape {labels.shape}")
    return labels


def _pixel(labels: np.ndarray, point: Point) -> tuple[int, int]:
    r, c = int(round(float(point[0]))), int(round(float(point[1])))
    if not (0 <= r < labels.shape[0] and 0 <= c < labels.shape[1]):
        raise CorrectionError(f"the point ({r}, {c}) is outside the image ({labels.shape[0]} x {labels.shape[1]})")
    return r, c


def _window(shape: tuple[int, int], center: tuple[int, int], half: int) -> Box:
    r, c = center
    return (slice(max(0, r - half), min(shape[0], r + half + 1)),
            slice(max(0, c - half), min(shape[1], c + half + 1)))


def _touches_edge(mask: np.ndarray, box: Box, shape: tuple[int, int]) -> bool:
    """True when `mask` (a crop at `box`) reaches a side of the crop that is not a side of the image."""
    return bool((box[0].start > 0 and mask[0].any()) or (box[0].stop < shape[0] and mask[-1].any())
                or (box[1].start > 0 and mask[:, 0].any()) or (box[1].stop < shape[1] and mask[:, -1].any()))


def label_box(labels: np.ndarray, label: int, pad: int = 1) -> Box:
    """Bounding box of every pixel of `label` (grown by `pad` px, clipped to the image)."""
    rows = np.flatnonzero(np.any(labels == label, axis=1))
    if rows.size == 0:
        raise CorrectionError(f"label {label} is not in the image")
    r0, r1 = int(rows[0]), int(rows[-1]) + 1
    cols = np.flatnonzero(np.any(labels[r0:r1] == label, axis=0))
    c0, c1 = int(cols[0]), int(cols[-1]) + 1
    h, w = labels.shape
    return slice(max(0, r0 - pad), min(h, r1 + pad)), slice(max(0, c0 - pad), min(w, c1 + pad))


def _union(a: Box, b: Box) -> Box:
    return (slice(min(a[0].start, b[0].start), max(a[0].stop, b[0].stop)),
            slice(min(a[1].start, b[1].start), max(a[1].stop, b[1].stop)))


def _maps(probs, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    cell, border = probs[0], probs[1]
    if tuple(cell.shape) != tuple(shape) or tuple(border.shape) != tuple(shape):
        raise ValueError(f"probability maps of shape {tuple(cell.shape)} do not match labels of shape {shape}")
    return cell, border


def next_label(labels: np.ndarray) -> int:
    return int(labels.max()) + 1 if labels.size else 1


def label_at(labels: np.ndarray, point: Point) -> int:
    return int(_check(labels)[_pixel(labels, point)])


# ---- the tools ---------------------------------------------------------------------------------
def add_cell(labels: np.ndarray, probs, point: Point, cell_threshold: float = 0.5, border_threshold: float = 0.5,
             new_label: int | None = None) -> Edit:
    """A new cell grown from a click on background, from the model's cell map.

    The cell may take only unlabelled pixels whose cell probability is above `cell_threshold` and that are
    connected to the click. It starts from the click's seed (its 4-connected piece of
    cell > threshold & border < border_threshold, or the click itself) and floods the cell map (watershed on
    border - cell) against competing seeds (the other such pieces nearby: neighbouring cells the model sees but
    the labels miss), so it stops at the border between them. When the model's cell probability at the click is
    below the threshold, the threshold is lowered to half the click's probability (if that is above 0.05).
    New id: `new_label` or max + 1.
    """
    labels = _check(labels)
    cell_map, border_map = _maps(probs, labels.shape)
    r, c = _pixel(labels, point)
    if labels[r, c]:
        raise CorrectionError(f"there is already a cell (label {int(labels[r, c])}) under the click")
    p_click = float(cell_map[r, c])
    threshold = cell_threshold
    if p_click <= threshold:
        threshold = p_click / 2
        if threshold < 0.05:
            raise CorrectionError(f"the model sees no cell at ({r}, {c}) (cell probability {p_click:.2f}): paint it")
    half = ADD_WINDOW
    while True:
        box = _window(labels.shape, (r, c), half)
        region = _grow(labels[box], cell_map[box], border_map[box], (r - box[0].start, c - box[1].start),
                       threshold, border_threshold)
        whole = box[0].start == 0 and box[1].start == 0 and box[0].stop == labels.shape[0] \
            and box[1].stop == labels.shape[1]
        if whole or not _touches_edge(region, box, labels.shape):
            break
        half *= 2
    label = next_label(labels) if new_label is None else int(new_label)
    before = labels[box].copy()
    after = np.where(region, np.asarray(label, labels.dtype), before)
    return Edit(box, before, after, label, "add")


def _grow(labels: np.ndarray, cell: np.ndarray, border: np.ndarray, seed: tuple[int, int], cell_threshold: float,
          border_threshold: float) -> np.ndarray:
    cell = np.asarray(cell, dtype=np.float32)
    border = np.asarray(border, dtype=np.float32)
    allowed = (cell > cell_threshold) & (labels == 0)
    allowed[seed] = True
    component, _ = ndimage.label(allowed)
    allowed = component == component[seed]
    interiors, n = ndimage.label(allowed & (border < border_threshold))
    markers = np.where(interiors > 0, 2, 0).astype(np.int32)  # competitors: other cells the labels miss
    own = interiors[seed]
    if own:
        markers[interiors == own] = 1
    else:
        markers[seed] = 1
    region = watershed(border - cell, markers, mask=allowed) == 1
    return region


# Splitting 13 merged pairs of touching cells (Usiigaci set1, a training image) at their true centroids: mean IoU
# with the true cells 0.775, worst 0.70; with the distance at full weight and no compactness (before) 0.724, worst
# 0.01 (one click sat on the slope of the other cell's basin and kept 17 px). benchmarks/RESULTS.md
DISTANCE_WEIGHT = 0.25
SPLIT_COMPACTNESS = 0.1  # divided by the cell's length scale (square root of its area): the same at every zoom


def split_cell(labels: np.ndarray, p1: Point, p2: Point, probs=None, new_label: int | None = None) -> Edit:
    """Split the cell under `p1` and `p2` (both must be on the same cell) into two.

    A compact watershed inside the cell from the two clicks, on the border map minus the cell map when `probs` is
    given, minus a quarter of the normalised distance to the cell's edge (so a waist between two round cells is the
    split line even where the model drew no border); without `probs`, each pixel goes to the click nearer along the
    cell. The part of `p1` keeps the id; the other gets `new_label` or max + 1.
    """
    labels = _check(labels)
    a, b = _pixel(labels, p1), _pixel(labels, p2)
    label = int(labels[a])
    if label == 0 or int(labels[b]) != label:
        raise CorrectionError("click two points inside the same cell to split it")
    if a == b:
        raise CorrectionError("click two different points inside the cell to split it")
    box = label_box(labels, label, pad=1)
    before = labels[box]
    mask = before == label
    compactness = 0.0
    if probs is not None:
        cell_map, border_map = _maps(probs, labels.shape)
        distance = ndimage.distance_transform_edt(mask)
        elevation = (np.asarray(border_map[box], np.float32) - np.asarray(cell_map[box], np.float32)
                     - DISTANCE_WEIGHT * distance / max(float(distance.max()), 1.0))
        # a compact watershed: a click on the slope of the other cell's basin still floods its own cell
        compactness = SPLIT_COMPACTNESS / np.sqrt(max(1, int(mask.sum())))
    else:
        elevation = np.zeros(mask.shape, np.float32)  # each pixel goes to the click nearest along the cell
    markers = np.zeros(mask.shape, np.int32)
    markers[a[0] - box[0].start, a[1] - box[1].start] = 1
    markers[b[0] - box[0].start, b[1] - box[1].start] = 2
    parts = watershed(elevation, markers, mask=mask, compactness=compactness)
    new = next_label(labels) if new_label is None else int(new_label)
    after = np.where(parts == 2, np.asarray(new, labels.dtype), before)
    return Edit(box, before.copy(), after, new, "split")


def merge_cells(labels: np.ndarray, p1: Point, p2: Point, bridge: int = 2) -> Edit:
    """Merge the cell under `p2` into the cell under `p1`; background gaps up to 2 x `bridge` px wide between
    them (a closing of their union) join the merged cell."""
    labels = _check(labels)
    a, b = label_at(labels, p1), label_at(labels, p2)
    if a == 0 or b == 0:
        raise CorrectionError("click two cells to merge them (one click was on background)")
    if a == b:
        raise CorrectionError(f"both clicks are on the same cell (label {a})")
    box = _union(label_box(labels, a, pad=bridge + 1), label_box(labels, b, pad=bridge + 1))
    before = labels[box]
    union = (before == a) | (before == b)
    if bridge > 0:
        structure = ndimage.generate_binary_structure(2, 1)
        closed = ndimage.binary_closing(union, structure, iterations=bridge)
        union |= closed & (before == 0)
    after = np.where(union, np.asarray(a, labels.dtype), before)
    return Edit(box, before.copy(), after, a, "merge")


def delete_cell(labels: np.ndarray, point: Point) -> Edit:
    """Remove the cell under the click (every pixel of its id)."""
    labels = _check(labels)
    label = label_at(labels, point)
    if label == 0:
        raise CorrectionError("there is no cell under the click")
    box = label_box(labels, label, pad=0)
    before = labels[box]
    after = np.where(before == label, np.asarray(0, labels.dtype), before)
    return Edit(box, before.copy(), after, label, "delete")


def remove_small(labels: np.ndarray, min_size: int) -> Edit | None:
    """Remove every object under `min_size` pixels; None when there is none."""
    labels = _check(labels)
    sizes = np.bincount(labels.ravel())
    small = sizes < int(min_size)
    small[0] = False
    present = sizes > 0
    if not (small & present).any():
        return None
    hit = small[labels]
    rows = np.flatnonzero(hit.any(axis=1))
    cols = np.flatnonzero(hit.any(axis=0))
    box = slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)
    before = labels[box]
    after = np.where(hit[box], np.asarray(0, labels.dtype), before)
    return Edit(box, before.copy(), after, 0, "remove small")
