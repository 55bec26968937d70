"""The default model's data: every shared data set, split by experiment, brought to one cell size.

Used by scripts/train_default_all_data.py (training, validation) and scripts/evaluate_default_model.py
(the held-out test report). The split is fixed here, so no choice is ever made on the test images:

Usiigaci phase contrast (40 sets; neighbouring sets are frames of the same dish)
  test        set5, set13, set21, set29, set35, set41: the sets the earlier default model never trained on
              (one or two per group of neighbouring sets; see the model card for why they are not
              whole held-out experiments)
  validation  set10, set27, set38, set42
  train       the other 30 sets
DSB 2018 nuclei (624 images; groups = appearance x image size, which is mostly one experiment each)
  test        fluorescence 360x360 (86 images), fluorescence 512x640 (11): whole groups;
              stained tissue: every 10th image (97 images are one group, so this part is a random split)
  new domain  brightfield_gray 1024x1024 (10): in no split; the fine-tuning experiment's unseen modality
  validation  fluorescence 603x1272, 256x320, 260x347 (10 images); stained tissue: every 10th image, offset 5
  train       fluorescence 256x256 (326), 520x696 (84); the remaining stained tissue (78)

Every image is zoomed so that its median cell diameter (from its labels) is the model's reference
diameter: the network learns one cell size, and inference brings images to it (`diameter="auto"`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REFERENCE_DIAMETER = 50.0
USIIGACI_TEST = ["set5", "set13", "set21", "set29", "set35", "set41"]
USIIGACI_VALIDATION = ["set10", "set27", "set38", "set42"]
DSB_TEST_GROUPS = {("fluorescence", 360, 360), ("fluorescence", 512, 640)}
DSB_VALIDATION_GROUPS = {("fluorescence", 603, 1272), ("fluorescence", 256, 320), ("fluorescence", 260, 347)}
DSB_NEW_DOMAIN = "brightfield_gray"
TISSUE = "stained_tissue_rgb"


@dataclass
class Item:
    """One annotated image of the split: `domain` is usiigaci, fluorescence, tissue or brightfield."""

    name: str
    domain: str
    group: str
    load: object  # () -> (image float32 (H, W), instance labels (H, W))


def usiigaci_items(data: Path) -> dict[str, list[Item]]:
    root = data / "usiigaci_phase"
    sets = sorted((d for d in root.iterdir() if d.is_dir() and d.name.startswith("set")), key=lambda d: int(d.name[3:]))
    split = {"train": [], "validation": [], "test": []}
    for folder in sets:
        part = "test" if folder.name in USIIGACI_TEST else "validation" if folder.name in USIIGACI_VALIDATION else "train"
        split[part].append(Item(folder.name, "usiigaci", _usiigaci_group(folder.name), _usiigaci_loader(folder)))
    return split


def dsb_items(data: Path) -> dict[str, list[Item]]:
    root = data / "dsb2018_nuclei"
    split = {"train": [], "validation": [], "test": [], "new_domain": []}
    with open(root / "images.csv") as handle:
        rows = list(csv.DictReader(handle))
    tissue_seen = 0
    for row in rows:
        appearance, height, width = row["appearance"], int(row["height"]), int(row["width"])
        group = (appearance, height, width)
        if appearance == DSB_NEW_DOMAIN:
            part = "new_domain"
        elif appearance == TISSUE:
            part = "test" if tissue_seen % 10 == 0 else "validation" if tissue_seen % 10 == 5 else "train"
            tissue_seen += 1
        elif group in DSB_TEST_GROUPS:
            part = "test"
        elif group in DSB_VALIDATION_GROUPS:
            part = "validation"
        else:
            part = "train"
        domain = {"fluorescence": "fluorescence", TISSUE: "tissue", DSB_NEW_DOMAIN: "brightfield"}[appearance]
        split[part].append(Item(row["id"][:12], domain, f"{appearance} {height}x{width}", _dsb_loader(root, row["id"])))
    return split


def all_items(data: Path) -> dict[str, list[Item]]:
    usiigaci, dsb = usiigaci_items(data), dsb_items(data)
    return {part: usiigaci.get(part, []) + dsb.get(part, []) for part in ("train", "validation", "test", "new_domain")}


def at_reference_size(image: np.ndarray, labels: np.ndarray, reference: float = REFERENCE_DIAMETER):
    """(image, labels, zoom): both zoomed so the labels' median cell diameter becomes `reference`."""
    from skimage.transform import resize

    from napari_cell_unet.inference import estimate_diameter

    zoom = reference / estimate_diameter(labels)
    shape = tuple(max(1, int(round(s * zoom))) for s in labels.shape)
    image = resize(image.astype(np.float32), shape, order=1, anti_aliasing=zoom < 1, preserve_range=True)
    labels = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(labels.dtype)
    return image.astype(np.float32), labels, zoom


def _usiigaci_group(name: str) -> str:
    number = int(name[3:])
    for low, high in ((1, 12), (13, 16), (17, 29), (30, 39), (41, 42)):
        if low <= number <= high:
            return f"set{low}-{high}"
    return "other"


def _usiigaci_loader(folder: Path):
    def load():
        import tifffile
        from PIL import Image

        return tifffile.imread(folder / "raw.tif").astype(np.float32), np.asarray(Image.open(folder / "instances_ids.png"))
    return load


def _dsb_loader(root: Path, image_id: str):
    def load():
        import tifffile
        from PIL import Image

        from napari_cell_unet.inference.normalize import to_model_channels

        rgba = np.asarray(Image.open(root / "images" / f"{image_id}.png"))
        image = to_model_channels(rgba, 1, rgb=True)[0] if rgba.ndim == 3 else rgba.astype(np.float32)
        return image.astype(np.float32), tifffile.imread(root / "labels" / f"{image_id}.tif")
    return load
