"""`diameter="auto"`: the cells' size estimated from the image (mechanics, with a pointwise stand-in network)."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk
from test_inference_rescale import pointwise_model

from napari_cell_unet._progress import result_of
from napari_cell_unet.inference import estimate_diameter, iter_segment, segment
from napari_cell_unet.inference.diameter import estimate_cell_diameter


def disc_field(radius: float, shape=(420, 460), spacing: float = 2.6) -> tuple[np.ndarray, np.ndarray]:
    """Separate bright discs of one radius on a grid, and their labels."""
    image = np.full(shape, 1000, np.uint16)
    labels = np.zeros(shape, np.uint32)
    step = int(round(spacing * radius))
    number = 0
    for y in range(step // 2, shape[0] - int(radius), step):
        for x in range(step // 2, shape[1] - int(radius), step):
            number += 1
            rr, cc = disk((y, x), radius, shape=shape)
            image[rr, cc] = 3000
            labels[rr, cc] = number
    return image, labels


@pytest.mark.parametrize("radius", [5, 9, 16, 30])
def test_estimate_is_within_15_percent_of_the_true_median_diameter(radius):
    image, labels = disc_field(radius)
    estimate = estimate_cell_diameter(image, pointwise_model(cell_diameter=30.0), device="cpu")
    assert estimate.diameter == pytest.approx(estimate_diameter(labels), rel=0.15), estimate.probes
    assert estimate.cells >= 2 and len(estimate.probes) in (5, 6)  # four coarse, one or two refined


def test_auto_segments_at_the_estimated_diameter_and_reports_it():
    image, labels = disc_field(9)
    model = pointwise_model(cell_diameter=30.0)
    events = []
    result = result_of(iter_segment(image, model, device="cpu"), on_event=events.append)  # "auto" is the default
    assert result.diameter_estimate is not None and result.diameter == result.diameter_estimate.diameter
    assert result.diameter == pytest.approx(estimate_diameter(labels), rel=0.15)
    assert any("estimating cell size" in event.message for event in events)
    explicit = segment(image, model, device="cpu", diameter=result.diameter)
    np.testing.assert_array_equal(result.labels, explicit)
    assert result.n_cells == labels.max()


def test_a_number_or_none_overrides_auto():
    image, _ = disc_field(9)
    model = pointwise_model(cell_diameter=30.0)
    fixed = result_of(iter_segment(image, model, device="cpu", diameter=25.0))
    assert fixed.diameter == 25.0 and fixed.diameter_estimate is None
    plain = result_of(iter_segment(image, model, device="cpu", diameter=None))
    assert plain.diameter is None and plain.diameter_estimate is None
    with pytest.raises(ValueError, match="'auto'"):
        segment(image, model, device="cpu", diameter="big")
    with pytest.raises(ValueError, match="out of range"):
        segment(image, model, device="cpu", diameter=0.001)


def test_no_cells_at_any_size_warns_and_segments_at_the_models_size():
    rng = np.random.default_rng(0)
    noise = rng.normal(1000, 5, (200, 200)).astype(np.float32)
    noise[:, :100] += 3000  # one huge half-image "object": no whole cell in any probe
    model = pointwise_model(cell_diameter=30.0)
    with pytest.warns(RuntimeWarning, match="no cells of any size"):
        result = result_of(iter_segment(noise, model, device="cpu"))
    assert result.diameter is None and result.diameter_estimate.diameter is None
    assert result.labels.shape == noise.shape


def test_stack_uses_one_estimate_from_its_middle_slice():
    small, _ = disc_field(6)
    large, _ = disc_field(14)
    stack = np.stack([large, small, large])
    result = result_of(iter_segment(stack, pointwise_model(cell_diameter=30.0), device="cpu"))
    assert result.diameter == pytest.approx(12.0, rel=0.15)  # the middle slice's discs
    assert result.labels.shape == stack.shape
