"""Shared fixtures: real data from ../shared/data (small crops of it from tests/data) and tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CELL_UNET_SHARED_DATA", REPO.parent / "shared" / "data"))
USIIGACI = SHARED_DATA / "usiigaci_phase"
LIVECELL_FRAME = SHARED_DATA / "livecell_samples" / "A172_Phase_A7_1_00d00h00m_1.tif"

# A very small U-Net for fast tests (a few hundred k parameters).
TINY_ARCHITECTURE = {"name": "Unet", "encoder_name": "resnet18", "encoder_depth": 3,
                     "decoder_channels": [32, 16, 8]}


TEST_DATA = REPO / "tests" / "data"  # small crops shipped with the repository (see tests/data/README.md)
# the top-left (rows, columns) of each Usiigaci set that tests needing only a small real image use
SMALL_SETS = {"set1": (556, 556), "set18": (556, 556), "set19": (384, 384), "set20": (456, 684),
              "set21": (392, 592), "set25": (520, 700)}


def load_small_set(name: str) -> dict[str, np.ndarray]:
    """The top-left crop `SMALL_SETS[name]` of a Usiigaci set: cut from ../shared/data when it is there, else
    the same pixels shipped in tests/data, so a fresh clone runs these tests too."""
    rows, cols = SMALL_SETS[name]
    if USIIGACI.is_dir():
        return {key: value[:rows, :cols] for key, value in load_usiigaci_set(name).items()}
    return load_usiigaci_set(name, TEST_DATA / "usiigaci")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not USIIGACI.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (set CELL_UNET_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def usiigaci(shared_data) -> Path:
    return shared_data / "usiigaci_phase"


def load_usiigaci_set(name: str, root: Path = USIIGACI) -> dict[str, np.ndarray]:
    """Image, instance labels and (when present) border mask of one Usiigaci set."""
    import tifffile
    from PIL import Image

    folder = root / name
    out = {"image": tifffile.imread(folder / "raw.tif"),
           "labels": np.asarray(Image.open(folder / "instances_ids.png"))}
    border = folder / "feature_0.png"
    if border.exists():
        out["borders"] = np.asarray(Image.open(border)) > 0
    return out


def load_dsb_image(key: str, root: Path = SHARED_DATA / "dsb2018_nuclei") -> tuple[np.ndarray, np.ndarray]:
    """One DSB 2018 image (gray float32, colour as Rec. 709 luminance like the training data) and its instance labels."""
    import tifffile
    from PIL import Image

    from napari_cell_unet.inference.normalize import to_model_channels

    rgba = np.asarray(Image.open(root / "images" / f"{key}.png"))
    image = to_model_channels(rgba, 1, rgb=True)[0] if rgba.ndim == 3 else rgba.astype(np.float32)
    return image.astype(np.float32), tifffile.imread(root / "labels" / f"{key}.tif")


@pytest.fixture
def tiny_model():
    import torch

    from napari_cell_unet.model import CellModel

    torch.manual_seed(0)
    return CellModel.create(architecture=dict(TINY_ARCHITECTURE), name="tiny-test")
