"""Cell diameter rescaling (`diameter=`) and `estimate_diameter`, with a pointwise stand-in network."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.draw import disk

from conftest import load_usiigaci_set
from napari_cell_unet._progress import Progress, result_of
from napari_cell_unet.inference import (FALLBACK_MODEL_DIAMETER, SegmentationResult, estimate_diameter, iter_segment,
                                        model_diameter, segment)
from napari_cell_unet.inference.rescale import diameter_scale
from napari_cell_unet.metrics import match_instances
from napari_cell_unet.model import CellModel


class Pointwise(torch.nn.Module):
    """cell = a steep sigmoid of the normalised intensity, border = 0: each output pixel depends on its input
    pixel only, so predictions at any zoom agree and labels are just the bright connected blobs."""

    def __init__(self):
        super().__init__()
        self.gain = torch.nn.Parameter(torch.tensor(20.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cell = self.gain * (x - 0.5)
        return torch.cat([cell, torch.full_like(cell, -20.0)], dim=1)


def pointwise_model(**metadata) -> CellModel:
    meta = {"name": "pointwise", "architecture": {"encoder_depth": 0}, "in_channels": 1,
            "classes": ["cell", "border"], "postprocessing": {"cell_threshold": 0.5, "border_threshold": 0.5,
                                                              "min_size": 5}}
    return CellModel(Pointwise(), {**meta, **metadata})


def discs_image(radius: int = 8) -> tuple[np.ndarray, np.ndarray]:
    """A 150 x 170 uint16 image of 12 separate bright discs and their labels."""
    image = np.full((150, 170), 1000, np.uint16)
    labels = np.zeros(image.shape, np.uint32)
    centres = [(25 + 35 * i, 22 + 42 * j) for i in range(3) for j in range(4)]
    for number, centre in enumerate(centres, 1):
        rr, cc = disk(centre, radius, shape=image.shape)
        image[rr, cc] = 3000
        labels[rr, cc] = number
    return image, labels


def test_diameter_equal_to_the_models_is_a_no_op():
    image, _ = discs_image()
    model = pointwise_model(cell_diameter=30.0)
    plain = segment(image, model, device="cpu", tile_size=64, overlap=8)
    assert plain.max() == 12
    np.testing.assert_array_equal(segment(image, model, device="cpu", tile_size=64, overlap=8, diameter=30.0), plain)


@pytest.mark.parametrize("diameter", [12.0, 50.0])  # zoom 2.5x up and 0.6x down
def test_rescaled_prediction_keeps_shape_and_objects(diameter):
    image, truth = discs_image()
    model = pointwise_model(cell_diameter=30.0)
    progress = []
    result = result_of(iter_segment(np.stack([image, image[::-1]]), model, device="cpu", tile_size=64, overlap=8,
                                    diameter=diameter, return_probabilities=True), on_event=progress.append)
    assert isinstance(result, SegmentationResult)
    assert result.labels.shape == (2, *image.shape) and result.probabilities.shape == (2, 2, *image.shape)
    assert all(isinstance(p, Progress) for p in progress)
    assert progress[-1].done == progress[-1].total and [p.done for p in progress] == sorted(p.done for p in progress)
    for labels, expected in ((result.labels[0], truth), (result.labels[1], truth[::-1])):
        assert labels.max() == 12
        matches = match_instances(labels, expected, iou_threshold=0.8)
        assert matches.tp == 12 and matches.matched_ious.min() > 0.8


def test_model_diameter_metadata_and_fallback():
    assert model_diameter(pointwise_model(cell_diameter=32.5)) == 32.5
    assert model_diameter(pointwise_model()) == FALLBACK_MODEL_DIAMETER == 50.0
    assert diameter_scale(pointwise_model(), 25.0) == 2.0
    assert diameter_scale(pointwise_model(), None) == 1.0
    with pytest.raises(ValueError, match="positive"):
        segment(discs_image()[0], pointwise_model(), device="cpu", diameter=0)


def test_min_size_counts_original_pixels_when_rescaled():
    image, _ = discs_image(radius=4)  # ~49-px discs
    model = pointwise_model(cell_diameter=30.0)
    assert segment(image, model, device="cpu", diameter=8.0, min_size=40).max() == 12  # zoomed 3.75x: ~700 px
    assert segment(image, model, device="cpu", diameter=8.0, min_size=60).max() == 0


def test_estimate_diameter_of_discs_and_real_cells(usiigaci):
    _, labels = discs_image(radius=8)
    labels[0, 0] = 99  # a 1-px speck is ignored
    assert estimate_diameter(labels) == pytest.approx(16.0, abs=0.6)
    assert estimate_diameter(np.stack([labels, labels])) == pytest.approx(16.0, abs=0.6)
    with pytest.raises(ValueError, match="no labelled objects"):
        estimate_diameter(np.zeros((10, 10), np.uint16))
    usiigaci_diameter = estimate_diameter(load_usiigaci_set("set20")["labels"])
    assert 35 < usiigaci_diameter < 70


@pytest.mark.parametrize(("shape", "target", "axes", "dtype"), [
    ((37, 53), (80, 20), (0, 1), np.uint16),   # up in rows, down in columns
    ((37, 53, 3), (37, 90), (0, 1), np.float32),  # colour, rows unchanged
    ((2, 301, 53), (11, 7), (1, 2), np.float32),  # probability maps shrunk 27x
    ((1, 1), (4, 5), (0, 1), np.float64),
])
def test_bilinear_resize_matches_scipy_zoom_in_grid_mode(shape, target, axes, dtype):
    """The separable resize is scipy's `zoom(order=1, grid_mode=True, mode="nearest")`, up to float rounding, and
    NaN spreads no further (scipy's also spreads it across an axis whose size does not change); float64 stays
    float64."""
    from scipy import ndimage

    from napari_cell_unet.inference.rescale import resize_bilinear

    array = (np.random.default_rng(0).random(shape) * 1000).astype(dtype)
    if dtype == np.float32:
        for (y, x), value in [((5, 7), np.inf), ((20, 30), np.nan)]:
            index = [0] * array.ndim
            index[axes[0]], index[axes[1]] = y, x
            array[tuple(index)] = value
    zoom = [1.0] * array.ndim
    for axis, size in zip(axes, target):
        zoom[axis] = size / array.shape[axis]
    expected = ndimage.zoom(array, zoom, order=1, mode="nearest", grid_mode=True, prefilter=False,
                            output=np.float64 if dtype == np.float64 else np.float32)
    resized = resize_bilinear(array, target, axes)
    assert resized.dtype == expected.dtype and resized.shape == expected.shape
    finite = np.isfinite(expected)
    np.testing.assert_allclose(resized[finite], expected[finite], rtol=1e-6, atol=1e-3)
    assert np.all(np.isinf(resized) == np.isinf(expected)) and np.all(np.isnan(resized) <= np.isnan(expected))


@pytest.mark.parametrize(("source", "target"), [((100, 50), (180, 90)), ((180, 90), (100, 50))])
def test_rows_resized_from_the_first_rows_of_a_plane_are_final(source, target):
    """`rows_from(k)` output rows need only the first k source rows: resized from a plane whose later rows are
    still garbage, they equal the whole plane's resize, and the next row would not."""
    from napari_cell_unet.inference.rescale import BilinearRows, resize_bilinear

    plane = np.random.default_rng(1).random((2,) + source).astype(np.float32)
    whole = resize_bilinear(plane, target, axes=(1, 2))
    resizer = BilinearRows(source, target, axis=1)
    assert resizer.rows_from(0) == 0 and resizer.rows_from(source[0]) == target[0]
    for known in (1, 17, source[0] // 2, source[0] - 1):
        partial = plane.copy()
        partial[:, known:] = np.nan
        out = np.zeros_like(whole)
        stop = resizer.rows_from(known)
        resizer.resize(partial, out, 0, stop + 1)
        np.testing.assert_array_equal(out[:, :stop], whole[:, :stop])
        assert np.isnan(out[:, stop]).all()  # the first row that is not final reads a row not yet known
