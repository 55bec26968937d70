"""Cell size in training: pairs zoomed to the model's cell diameter, zoom augmentation and domain weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk

from napari_cell_unet.inference import estimate_diameter
from napari_cell_unet.training import TrainingDataError, TrainingPair
from napari_cell_unet.training.augment import AugmentConfig, CropSampler
from napari_cell_unet.training.pairs import zoom_to_diameter


def discs(radius: int, shape=(160, 200)) -> TrainingPair:
    image = np.full(shape, 100, np.uint16)
    labels = np.zeros(shape, np.uint16)
    for number, (y, x) in enumerate([(40, 40), (40, 120), (110, 60), (110, 150)], 1):
        rr, cc = disk((y, x), radius, shape=shape)
        image[rr, cc], labels[rr, cc] = 900, number
    region = np.zeros(shape, bool)
    region[:, :100] = True
    return TrainingPair(image, labels, borders=labels == 1, region=region, name="discs")


def test_pairs_are_zoomed_to_the_reference_diameter():
    pair = discs(8)
    zoomed = zoom_to_diameter(pair, reference=32.0)
    zoom = 32.0 / estimate_diameter(pair.labels)  # ~2: discs of radius 8 measure ~15.7 px
    assert zoomed.shape == (round(160 * zoom), round(200 * zoom))
    assert zoomed.name == f"discs@{32.0 / estimate_diameter(pair.labels):.2f}x"
    assert estimate_diameter(zoomed.labels) == pytest.approx(32.0, rel=0.05)
    split = round(100 * zoom)
    assert zoomed.region.dtype == bool and zoomed.region[:, :split - 1].all() and not zoomed.region[:, split + 1:].any()
    assert zoomed.borders.sum() == pytest.approx(zoom ** 2 * pair.borders.sum(), rel=0.1)
    assert set(np.unique(zoomed.labels)) == set(np.unique(pair.labels))  # nearest neighbour: no new ids
    assert zoom_to_diameter(pair, reference=17.0) is pair  # within 10 %: untouched
    empty = TrainingPair(pair.image, np.zeros_like(pair.labels))
    assert zoom_to_diameter(empty, reference=50.0) is empty


def checkerboard(period: int, size: int = 256) -> torch.Tensor:
    yy, xx = np.mgrid[:size, :size]
    return torch.from_numpy((((yy // period) + (xx // period)) % 2).astype(np.uint8))


def transitions(row: torch.Tensor) -> int:
    return int((row[1:] != row[:-1]).sum())


def test_zoom_augmentation_enlarges_what_a_crop_shows():
    cells = checkerboard(8)
    target = torch.stack([cells, torch.zeros_like(cells), torch.ones_like(cells)])
    image = cells[None].float()
    generator = torch.Generator().manual_seed(0)
    plain = CropSampler([image], [target], 64, generator, AugmentConfig(probability=0.0))
    zoomed = CropSampler([image], [target], 64, generator, AugmentConfig(probability=0.0, scale=(2.0, 2.0)))
    _, plain_targets = plain.sample(4)
    _, zoomed_targets = zoomed.sample(4)
    assert zoomed_targets.shape == plain_targets.shape == (4, 3, 64, 64)
    for b in range(4):
        assert 6 <= transitions(plain_targets[b, 0, 0]) <= 8  # 8-px squares: a change every 8 px
        assert 3 <= transitions(zoomed_targets[b, 0, 0]) <= 4  # shown twice as large
    assert set(torch.unique(zoomed_targets).tolist()) <= {0.0, 1.0}  # targets stay binary (nearest)


def test_sampling_weights_balance_images():
    size = 64
    images = [torch.zeros(1, size, size), torch.ones(1, size, size)]
    targets = [torch.ones(3, size, size, dtype=torch.uint8)] * 2
    sampler = CropSampler(images, targets, 32, torch.Generator().manual_seed(0), None, weights=[9.0, 1.0])
    crops, _ = sampler.sample(400)
    share_of_first = float((crops.mean(dim=(1, 2, 3)) == 0).float().mean())
    assert 0.85 <= share_of_first <= 0.95
    with pytest.raises(TrainingDataError, match="weight"):
        TrainingPair(np.zeros((8, 8)), np.zeros((8, 8)), weight=0.0)
