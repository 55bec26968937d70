"""Tiled prediction: layout, blending against whole-image prediction, odd sizes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import load_small_set
from napari_cell_unet.inference import predict_probabilities
from napari_cell_unet.inference.tiling import make_grid, ramp_window
from napari_cell_unet.model import CellModel


def conv_model() -> CellModel:
    """A purely local 'network' (one 3x3 conv): a tiled result must equal the whole-image one almost exactly."""
    torch.manual_seed(0)
    network = torch.nn.Conv2d(1, 2, 3, padding=1)
    return CellModel(network, {"architecture": {"encoder_depth": 0}, "in_channels": 1, "classes": ["cell", "border"]})


@pytest.mark.parametrize("shape", [(20, 20), (1022, 1024), (704, 520), (8000, 37), (3001, 4097)])
def test_grid_covers_image_with_aligned_tiles(shape):
    grid = make_grid(shape, tile_size=512, overlap=64, multiple=32)
    assert all(t % 32 == 0 and t <= 512 for t in grid.tile)
    for axis, starts in enumerate((grid.starts_y, grid.starts_x)):
        assert starts[0] == 0
        assert starts[-1] + grid.tile[axis] >= shape[axis]
        if len(starts) > 1:  # neighbours overlap by at least the requested margin
            assert np.max(np.diff(starts)) <= grid.tile[axis] - 64
            assert starts[-1] + grid.tile[axis] == shape[axis]
    rows, cols = grid.weight_sums()
    assert rows.min() > 0 and cols.min() > 0


def test_grid_wastes_little_on_frames_just_above_the_tile_size():
    grid = make_grid((520, 704), tile_size=512, overlap=64, multiple=32)
    covered = grid.n_tiles * grid.tile[0] * grid.tile[1]
    assert covered < 1.4 * 520 * 704  # two 512-px tiles per axis would be 2.9x


def test_overlap_as_fraction_and_invalid_overlap():
    assert make_grid((2000, 2000), 512, 0.125, 32).overlap == 64
    with pytest.raises(ValueError, match="overlap"):
        make_grid((2000, 2000), 256, 200, 32)


def test_ramp_window_is_smooth_and_positive():
    w = ramp_window(256, 64)
    assert w.min() > 0 and w.max() == 1
    assert np.all(w[128:] == w[:128][::-1])
    assert np.abs(np.diff(w)).max() < 0.05


def test_tiles_blend_to_the_whole_image_result_for_a_local_network():
    image = load_small_set("set20")["image"][:300, :450]
    model = conv_model()
    whole = predict_probabilities(image, model, device="cpu", tile_size=1024)
    tiled = predict_probabilities(image, model, device="cpu", tile_size=128, overlap=32)
    assert tiled.shape == whole.shape == (2, 300, 450)
    np.testing.assert_allclose(tiled, whole, atol=2e-3)


def test_tiles_match_whole_image_away_from_borders_and_leave_no_seams(tiny_model):
    image = load_small_set("set20")["image"][200:456, 300:684]  # 256 x 384
    whole = predict_probabilities(image, tiny_model, device="cpu", tile_size=512)
    tiled = predict_probabilities(image, tiny_model, device="cpu", tile_size=192, overlap=64)
    inner = np.abs(tiled - whole)[:, 24:-24, 24:-24]
    # measured with this random tiny model: mean 0.0015, 99th percentile 0.012, max 0.03
    assert inner.mean() < 0.005
    assert np.percentile(inner, 99) < 0.03
    # seams: the tiled map is no rougher across tile boundaries than inside tiles
    grid = make_grid(image.shape, 192, 64, 8)
    assert len(grid.starts_x) > 1
    seam_cols = [x + grid.tile[1] - 32 for x in grid.starts_x[:-1]]
    jumps = np.abs(np.diff(tiled[0], axis=1))
    assert jumps[:, seam_cols].mean() < 3 * jumps.mean() + 1e-6


@pytest.mark.parametrize("shape", [(20, 20), (33, 71), (130, 17), (5, 300)])
def test_odd_and_tiny_sizes_give_full_size_probabilities(tiny_model, shape):
    image = _noise(shape)
    probs = predict_probabilities(image, tiny_model, device="cpu", tile_size=64, overlap=8)
    assert probs.shape == (2, *shape) and probs.dtype == np.float32
    assert np.isfinite(probs).all() and probs.min() >= 0 and probs.max() <= 1


def test_rgb_input_is_converted_for_a_one_channel_model(tiny_model):
    gray = _noise((64, 96))
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    np.testing.assert_allclose(predict_probabilities(rgb, tiny_model, device="cpu"),
                               predict_probabilities(gray, tiny_model, device="cpu"), atol=1e-5)


def test_prediction_restores_model_state(tiny_model):
    tiny_model.network.train()
    threads = torch.get_num_threads()
    predict_probabilities(_noise((40, 40)), tiny_model, device="cpu", threads=1)
    assert tiny_model.network.training
    assert torch.get_num_threads() == threads


def _noise(shape):
    return np.random.default_rng(0).integers(0, 4000, shape).astype(np.uint16)


def test_default_tiles_cover_large_images_with_little_overlap_work():
    """Tiles of up to 1152 px: 8 per 8000-px axis instead of 9 at 1024 px, 2 per 2048 px instead of 3; the CLI's
    help states the same default without importing torch."""
    from napari_cell_unet.cli import _checks
    from napari_cell_unet.inference import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE
    from napari_cell_unet.inference.tiling import make_grid

    def work(grid):
        return grid.n_tiles * grid.tile[0] * grid.tile[1] / (grid.shape[0] * grid.shape[1])

    assert _checks.DEFAULT_TILE_SIZE == DEFAULT_TILE_SIZE
    for side, per_axis, before in ((8000, 8, 1.166), (2048, 2, 1.162), (1040, 1, 1.227)):
        grid = make_grid((side, side), DEFAULT_TILE_SIZE, DEFAULT_OVERLAP, 32)
        assert len(grid.starts_y) == len(grid.starts_x) == per_axis
        assert round(work(make_grid((side, side), 1024, DEFAULT_OVERLAP, 32)), 3) == before
        assert work(grid) < min(before, 1.12)
