"""npe2 writer adapters: a Labels layer to compressed TIFF or to COCO JSON (LIVECell format).

napari's save dialog has already asked before replacing an existing file, so these overwrite.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .io.labels_writer import write_labels_coco as _write_coco
from .io.labels_writer import write_labels_tiff as _write_tiff


def write_labels_tiff(path: str, data: Any, meta: dict) -> list[str]:
    scale = meta.get("scale")
    pixel_size = tuple(float(v) for v in scale[-2:]) if scale is not None and len(scale) >= 2 else None
    return [str(_write_tiff(path, np.asarray(data), overwrite=True, pixel_size=pixel_size))]


def write_labels_coco(path: str, data: Any, meta: dict) -> list[str]:
    labels = np.asarray(data)
    names = _image_names(labels, meta)
    return [str(_write_coco(path, labels, image_names=names, overwrite=True))]


def _image_names(labels: np.ndarray, meta: dict) -> list[str]:
    """Keep the image file names of a layer that came from a COCO file, so the images are found again."""
    n_images = 1 if labels.ndim == 2 else int(np.prod(labels.shape[:-2]))
    coco = (meta.get("metadata") or {}).get("coco") or {}
    names = coco.get("file_names")
    if names and len(names) == n_images:
        return list(names)
    stem = Path(str(meta.get("name") or "labels")).name
    return [f"{stem}.tif"] if n_images == 1 else [f"{stem}_{k:04d}.tif" for k in range(n_images)]
