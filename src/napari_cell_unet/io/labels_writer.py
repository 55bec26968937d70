"""Writing label masks: compressed TIFF with the smallest integer type, or COCO JSON (RLE or polygons)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .errors import ImageFileError

MIN_POLYGON_POINTS = 3


def smallest_label_dtype(max_id: int) -> np.dtype:
    for dtype in (np.uint8, np.uint16, np.uint32, np.uint64):
        if max_id <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    raise ValueError(f"label id {max_id} does not fit in 64 bits")


OME_AXES = {2: "YX", 3: "TYX", 4: "TZYX"}


def write_labels_tiff(path: str | Path, labels: np.ndarray, *, overwrite: bool = False,
                      pixel_size: Sequence[float] | None = None) -> Path:
    """Save labels (2D, or a stack as pages) as a zlib-compressed TIFF of uint8/16/32 as needed.

    `pixel_size`: (y, x) size of a pixel in µm (the last two values are used); when given (and not 1, 1), the
    file is an OME-TIFF carrying it (PhysicalSizeY/X, plus the TIFF resolution tags), so the labels open at the
    image's scale in napari, Fiji and QuPath. Stacks of up to 4 axes keep it; deeper ones are written without.
    """
    path = Path(path)
    labels = _checked_labels(path, labels)
    dtype = smallest_label_dtype(int(labels.max()) if labels.size else 0)
    import tifffile

    extra = {}
    if pixel_size is not None and labels.ndim in OME_AXES:
        size_y, size_x = (float(v) for v in tuple(pixel_size)[-2:])
        if size_y > 0 and size_x > 0 and not (size_y == 1.0 and size_x == 1.0):
            extra = {"ome": True, "resolution": (1e4 / size_x, 1e4 / size_y), "resolutionunit": "CENTIMETER",
                     "metadata": {"axes": OME_AXES[labels.ndim], "PhysicalSizeX": size_x, "PhysicalSizeXUnit": "µm",
                                  "PhysicalSizeY": size_y, "PhysicalSizeYUnit": "µm"}}
    with atomic_path(path, overwrite) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype, copy=False), compression="zlib", photometric="minisblack",
                         **extra)
    return path


def write_labels_coco(path: str | Path, labels: np.ndarray, *, image_names: Sequence[str] | None = None,
                      polygons: bool = False, category: str = "cell", overwrite: bool = False) -> Path:
    """Save labels as COCO JSON (one image per 2D slice), RLE unless ``polygons``."""
    path = Path(path)
    data = labels_to_coco(_checked_labels(path, labels), image_names=image_names, polygons=polygons,
                          category=category)
    with atomic_path(path, overwrite) as tmp:
        tmp.write_text(json.dumps(data, separators=(",", ":")))
    return path


def labels_to_coco(labels: np.ndarray, *, image_names: Sequence[str] | None = None, polygons: bool = False,
                   category: str = "cell") -> dict:
    """COCO dict of a 2D label image or a stack of them. Annotation ids are the label values when those
    are unique across slices (so reading back gives the same ids), otherwise 1..N."""
    slices = labels[np.newaxis] if labels.ndim == 2 else labels.reshape(-1, *labels.shape[-2:])
    names = list(image_names) if image_names is not None else [f"image_{k:04d}.tif" for k in range(len(slices))]
    if len(names) != len(slices):
        raise ValueError(f"{len(names)} image names given for {len(slices)} label images")
    images, annotations = [], []
    keep_ids = _ids_unique_across_slices(slices)
    for image_id, (name, plane) in enumerate(zip(names, slices), start=1):
        height, width = plane.shape
        images.append({"id": image_id, "file_name": name, "height": int(height), "width": int(width)})
        for value, segmentation, area, bbox in _instances(plane, polygons):
            ann_id = int(value) if keep_ids else len(annotations) + 1
            annotations.append({"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": segmentation,
                                "area": area, "bbox": bbox, "iscrowd": 0})
    return {"info": {"description": "written by napari-cell-unet",
                     "segmentation_format": "polygon" if polygons else "rle"},
            "categories": [{"id": 1, "name": category, "supercategory": category}],
            "images": images, "annotations": annotations}


def _checked_labels(path: Path, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim < 2:
        raise ImageFileError(path, f"labels must be at least 2D, got shape {labels.shape}")
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        raise ImageFileError(path, f"labels must be integers, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ImageFileError(path, "labels must not be negative")
    return labels


def _ids_unique_across_slices(slices: np.ndarray) -> bool:
    seen: set[int] = set()
    for plane in slices:
        ids = set(np.unique(plane).tolist()) - {0}
        if ids & seen or any(i >= 2**32 for i in ids):
            return False
        seen |= ids
    return True


def _instances(plane: np.ndarray, polygons: bool):
    """(label value, segmentation, area, bbox) for every label of a 2D image, in increasing label order."""
    from scipy import ndimage

    values, compact = _compact(plane)
    for index, window in enumerate(ndimage.find_objects(compact), start=1):
        if window is None:
            continue
        crop = compact[window] == index
        rows, cols = window
        bbox = [int(cols.start), int(rows.start), int(cols.stop - cols.start), int(rows.stop - rows.start)]
        if polygons:
            segmentation = _polygons(crop, cols.start, rows.start)
            if not segmentation:
                continue
        else:
            rle = _compressed_rle(crop, window, plane.shape)
            segmentation = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        yield int(values[index]), segmentation, int(crop.sum()), bbox


def _compressed_rle(crop: np.ndarray, window: tuple[slice, slice], shape: tuple[int, int]) -> dict:
    """COCO RLE of one object, computed from its bounding box only (column-major runs, zeros first)."""
    from pycocotools import mask as mask_utils

    height, width = shape
    rows, cols = window
    slab = np.zeros((height, cols.stop - cols.start), dtype=bool)
    slab[rows, :] = crop
    flat = slab.ravel(order="F")
    edges = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    runs = np.diff(np.concatenate([[0], edges, [flat.size]]))
    if flat[0]:
        runs = np.concatenate([[0], runs])
    runs[0] += cols.start * height
    trailing = (width - cols.stop) * height
    if flat[-1]:
        runs = np.concatenate([runs, [trailing]])
    else:
        runs[-1] += trailing
    return mask_utils.frPyObjects({"counts": [int(r) for r in runs], "size": [height, width]}, height, width)


def _compact(plane: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label values (``values[0] == 0``) and the image renumbered 0..N, so ``find_objects`` does not
    allocate one slot per possible id."""
    values, inverse = np.unique(plane, return_inverse=True)
    compact = inverse.reshape(plane.shape).astype(np.int32)
    if values[0] != 0:
        values, compact = np.concatenate([[0], values]), compact + 1
    return values, compact


def _polygons(mask: np.ndarray, x0: int, y0: int) -> list[list[float]]:
    """Outlines along pixel edges, in image coordinates (COCO puts pixel centres at +0.5)."""
    from skimage import measure

    padded = np.pad(mask, 1).astype(np.uint8)
    out = []
    for contour in measure.find_contours(padded, 0.5):
        contour = _without_collinear_points(contour[:-1])  # find_contours repeats the first point at the end
        if len(contour) < MIN_POLYGON_POINTS:
            continue
        xy = np.stack([contour[:, 1] - 1 + 0.5 + x0, contour[:, 0] - 1 + 0.5 + y0], axis=1)
        out.append([round(float(v), 2) for v in xy.ravel()])
    return out


def _without_collinear_points(points: np.ndarray) -> np.ndarray:
    before = points - np.roll(points, 1, axis=0)
    after = np.roll(points, -1, axis=0) - points
    turns = np.abs(before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]) > 1e-9
    return points[turns]
