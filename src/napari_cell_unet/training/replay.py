"""Replay crops: what keeps a fine-tuned model doing, on images nobody corrected, what it did before.

Fine-tuning on one image's corrections moves the whole model, and other images pay for it (issue 8). During
fine-tuning a few crops of the shipped replay images join every batch, with the *starting* model's own
probabilities as their targets (distillation), so the weights may change only in ways that leave those images
as they were. The crops are 24 windows of the default model's training images (Usiigaci phase contrast,
DSB 2018 fluorescent and stained nuclei; none of the validation or test images), made by
scripts/make_replay_crops.py; their licenses are in `replay/README.md`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..model import CellModel

REPLAY_FILE = Path(__file__).with_name("replay") / "crops.npz"
# the crops were cut from images zoomed so that their median cell is this many pixels across
REPLAY_DIAMETER = 50.0


def replay_crops(path: Path = REPLAY_FILE) -> np.ndarray:
    """The replay crops, (N, H, W) uint8 (no pickled objects are read)."""
    with np.load(path, allow_pickle=False) as data:
        return data["images"]


def replay_images(model: CellModel) -> list[np.ndarray]:
    """The replay crops at `model`'s reference cell size; none for models that take more than one channel."""
    from skimage.transform import rescale

    from ..inference import model_diameter

    if model.in_channels != 1:
        return []
    zoom = model_diameter(model) / REPLAY_DIAMETER
    crops = [crop.astype(np.float32) for crop in replay_crops()]
    if abs(zoom - 1.0) > 0.05:
        crops = [rescale(crop, zoom, order=1, anti_aliasing=zoom < 1, preserve_range=True) for crop in crops]
    return crops


def replay_targets(model: CellModel, device: torch.device, images: list[np.ndarray]) -> list[np.ndarray]:
    """(6, H, W) uint8 targets in the training layout: no annotated region (cell, border, region = 0),
    distillation everywhere, and the starting model's cell and border probabilities (call before training)."""
    from ..inference.predict import predict_probabilities

    targets = []
    for image in images:
        probabilities = predict_probabilities(image, model, device=device)
        soft = np.rint(probabilities * 255).astype(np.uint8)
        empty = np.zeros(image.shape, np.uint8)
        targets.append(np.stack([empty, empty, empty, np.full(image.shape, 255, np.uint8), soft[0], soft[1]]))
    return targets
