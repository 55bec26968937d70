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
from skimage.measure import regionprops_table

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


def _cell(value):
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}"
    return value.item() if isinstance(value, np.generic) else value
