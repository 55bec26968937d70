"""Per-cell measurements of instance labels (scikit-image `regionprops_table`), counts per frame, CSV export.

No torch, Qt or napari. A table is a dict of equal-length 1-D numpy arrays (column name -> values), which is
what napari accepts as a layer's `features` and what `write_cells_csv` writes. Sizes are in pixels
("area_px", "perimeter_px", ...) or, when a pixel size is given (`scale`: size of a pixel along y and x, e.g.
from the TIFF's ImageJ/OME metadata), in that unit ("area_um2", "perimeter_um", ...). Lengths use the geometric
mean of the two pixel sizes (exact for square pixels).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np

ALL_CELLS_CSV = "all_cells.csv"  # `--measure` of cell-unet segment and batch: every image's rows in OUTPUT_DIR
SHAPE_PROPERTIES = ("label", "area", "perimeter", "equivalent_diameter_area", "eccentricity", "solidity", "centroid")
INTENSITY_PROPERTIES = ("intensity_mean", "intensity_min", "intensity_max")
LENGTHS = ("perimeter", "equivalent_diameter")


def _unit_suffix(scale, unit: str) -> tuple[str, str]:
    return ("px", "px2") if scale is None else (unit, f"{unit}2")


def measure_cells(labels: np.ndarray, image: np.ndarray | None = None, scale: Sequence[float] | None = None,
                  frame: int | None = None, image_name: str | None = None, unit: str = "um") -> dict[str, np.ndarray]:
    """One row per cell of a 2-D labels plane: label, area, perimeter, equivalent diameter, eccentricity,
    solidity, centroid (y, x) and, with `image` (2-D, or H x W x C averaged over C), its mean/min/max intensity.

    `scale`: (y, x) pixel size (the last two values are used); None = pixels. `frame` / `image_name` add
    constant columns "frame" / "image" in front.
    """
    # imported when used: the CLI imports this module for its help
    from skimage.measure import regionprops_table

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be a 2-D plane, got shape {labels.shape}")
    intensity = None
    if image is not None:
        intensity = np.asarray(image, dtype=np.float64)
        if intensity.ndim == 3 and intensity.shape[:2] == labels.shape:
            intensity = intensity.mean(axis=-1)
        if intensity.shape != labels.shape:
            raise ValueError(f"image of shape {np.asarray(image).shape} does not match labels of shape {labels.shape}")
    properties = SHAPE_PROPERTIES + (INTENSITY_PROPERTIES if intensity is not None else ())
    raw = regionprops_table(labels.astype(np.int64, copy=False), intensity_image=intensity, properties=properties)
    length_unit, area_unit = _unit_suffix(scale, unit)
    sy, sx = (1.0, 1.0) if scale is None else (float(scale[-2]), float(scale[-1]))
    length = float(np.sqrt(sy * sx))
    n = len(raw["label"])
    table: dict[str, np.ndarray] = {}
    if image_name is not None:
        table["image"] = np.full(n, image_name, dtype=object)
    if frame is not None:
        table["frame"] = np.full(n, int(frame), dtype=np.int64)
    table["label"] = raw["label"].astype(np.int64)
    table[f"area_{area_unit}"] = raw["area"] * sy * sx
    table[f"perimeter_{length_unit}"] = raw["perimeter"] * length
    table[f"equivalent_diameter_{length_unit}"] = raw["equivalent_diameter_area"] * length
    table["eccentricity"] = raw["eccentricity"]
    table["solidity"] = raw["solidity"]
    table[f"centroid_y_{length_unit}"] = raw["centroid-0"] * sy
    table[f"centroid_x_{length_unit}"] = raw["centroid-1"] * sx
    if intensity is not None:
        table["mean_intensity"] = raw["intensity_mean"]
        table["min_intensity"] = raw["intensity_min"]
        table["max_intensity"] = raw["intensity_max"]
    return table


def measure_stack(labels: np.ndarray, image: np.ndarray | None = None, scale: Sequence[float] | None = None,
                  image_name: str | None = None, unit: str = "um") -> dict[str, np.ndarray]:
    """`measure_cells` of every 2-D plane of a labels array (a 2-D array: one plane, no "frame" column).

    Leading axes are flattened in order into the "frame" number. `image` has the labels' shape (plus an optional
    colour axis)."""
    labels = np.asarray(labels)
    if labels.ndim == 2:
        return measure_cells(labels, image, scale, None, image_name, unit)
    lead = labels.shape[:-2]
    tables = [measure_cells(labels[index], None if image is None else np.asarray(image[index]), scale, frame,
                            image_name, unit)
              for frame, index in enumerate(np.ndindex(*lead))]
    return concatenate(tables)


def concatenate(tables: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    if not tables:
        return {}
    return {key: np.concatenate([t[key] for t in tables]) for key in tables[0]}


def per_frame(table: dict[str, np.ndarray], n_frames: int | None = None) -> dict[str, np.ndarray]:
    """Cells per frame and the median cell area per frame (NaN for a frame without cells)."""
    frames = np.asarray(table.get("frame", np.zeros(len(table.get("label", [])), dtype=np.int64)), dtype=np.int64)
    area_key = next(key for key in table if key.startswith("area_"))
    count = int(frames.max()) + 1 if frames.size else 0
    n = max(count, n_frames or 0)
    counts = np.bincount(frames, minlength=n)
    medians = np.array([np.median(table[area_key][frames == f]) if counts[f] else np.nan for f in range(n)])
    return {"frame": np.arange(n), "cells": counts, f"median_{area_key}": medians}


def write_cells_csv(table: dict[str, np.ndarray], path: str | Path, overwrite: bool = False) -> Path:
    """Write the table as CSV (header = column names), atomically (see `io._atomic`)."""
    from .io._atomic import atomic_path

    path = Path(path)
    columns = list(table)
    n = len(table[columns[0]]) if columns else 0
    with atomic_path(path, overwrite=overwrite) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(columns)
            for i in range(n):
                writer.writerow([_cell(table[c][i]) for c in columns])
    return path


def read_cells_csv(path: str | Path) -> dict[str, np.ndarray]:
    """A CSV written by `write_cells_csv` as a table of its text cells (column -> object array of str), so that
    `write_combined` copies the values unchanged."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        return {}
    columns = rows[0]
    return {c: np.array([row[i] for row in rows[1:]], dtype=object) for i, c in enumerate(columns)}


def cells_csv_path(labels_path: str | Path) -> Path:
    """<dir>/<stem>_labels.tif -> <dir>/<stem>_cells.csv (beside the labels file)."""
    labels_path = Path(labels_path)
    name = labels_path.name
    for suffix in (".ome.tiff", ".ome.tif", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return labels_path.with_name(f"{name.removesuffix('_labels')}_cells.csv")


def write_combined(tables: Sequence[dict], path: str | Path) -> Path:
    """One CSV with the rows of every image (columns: those of the first table; px and µm tables kept apart)."""
    columns = list(tables[0])
    same = [t for t in tables if list(t) == columns]
    return write_cells_csv(concatenate(same), path, overwrite=True)  # a summary of this run: always replaced


def measure_labels_file(image_path: str | Path, labels_path: str | Path, overwrite: bool = False) -> dict:
    """Measure the cells of a labels file against the image it was segmented from (in µm when the image has a
    pixel size) and write `cells_csv_path(labels_path)` atomically; returns the table (columns image, frame,
    label, ...). Used by `cell-unet segment --measure` and, on the workers, `cell-unet batch --measure`."""
    from .io import read_labels
    from .io.images import open_image

    image = open_image(image_path, lazy=False)
    labels = np.asarray(read_labels(labels_path))
    pixels = np.asarray(image.data)
    channels = pixels.shape[-1] if image.rgb else 1
    pixels = pixels.reshape(labels.shape + pixels.shape[-1:] * image.rgb) if pixels.size == labels.size * channels \
        else None
    scale = None
    if image.scale is not None:
        spatial = image.scale[:-1] if image.rgb else image.scale
        scale = tuple(spatial[-2:]) if not np.allclose(spatial[-2:], 1.0) else None
    table = measure_stack(labels, pixels, scale, image_name=Path(image_path).name, unit="um")
    n = len(table["label"])
    if "frame" not in table:
        table = {"image": table.pop("image"), "frame": np.zeros(n, dtype=np.int64), **table}
    write_cells_csv(table, cells_csv_path(labels_path), overwrite=overwrite)
    return table


def _cell(value):
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return value.item() if isinstance(value, np.generic) else value
