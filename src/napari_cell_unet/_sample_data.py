"""npe2 sample data: a real fluorescence nuclei image with its ground-truth instance labels, shipped offline."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from .io.images import read_image, read_labels

NUCLEI_IMAGE = "dsb2018_nuclei.tif"
NUCLEI_LABELS = "dsb2018_nuclei_labels.tif"


def sample_path(name: str) -> Path:
    """Path of a file shipped in ``napari_cell_unet/sample_data`` (see its ATTRIBUTION.md)."""
    return Path(str(resources.files("napari_cell_unet") / "sample_data" / name))


def nuclei_sample() -> list[tuple[Any, dict, str]]:
    """DSB 2018 (BBBC038) fluorescent nuclei, 512x512 uint16, with ground-truth instance labels."""
    source = "Data Science Bowl 2018 / BBBC038v1 (CC0), via StarDist (BSD-3); see sample_data/ATTRIBUTION.md"
    return [
        (read_image(sample_path(NUCLEI_IMAGE)), {"name": "nuclei (DSB 2018)", "metadata": {"source": source}}, "image"),
        (read_labels(sample_path(NUCLEI_LABELS)), {"name": "nuclei ground truth", "metadata": {"source": source}},
         "labels"),
    ]
