"""Odd files through a real napari viewer: they open and draw, or are refused in one line; napari keeps
its layers (``gui`` tests, run under xvfb-run)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile

PLUGIN = "napari-cell-unet"


@pytest.mark.gui
@pytest.mark.parametrize("data, kwargs", [
    (np.eye(40, dtype=bool), {}),
    (np.arange(1600, dtype=np.float16).reshape(40, 40), {}),
    (np.arange(1600, dtype=np.int64).reshape(40, 40) + 2**40, {}),
    (np.zeros((40, 30, 2), np.uint16), {}),
    (np.ones((2, 1, 2, 1, 20, 20), np.uint8), {}),
], ids=["bool", "float16", "int64", "two-channel", "6-D"])
def test_odd_pixel_types_open_and_draw(make_napari_viewer, tmp_path, data, kwargs):
    viewer = make_napari_viewer()
    tifffile.imwrite(tmp_path / "odd.tif", data, **kwargs)
    viewer.open(str(tmp_path / "odd.tif"), plugin=PLUGIN)
    assert len(viewer.layers) == 1
    assert viewer.screenshot(canvas_only=True).size > 0  # rendering used to fail for some pixel types


@pytest.mark.gui
def test_complex_tiff_is_refused_and_the_viewer_keeps_its_layers(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.add_image(np.zeros((10, 10)), name="mine")
    tifffile.imwrite(tmp_path / "c.tif", np.ones((8, 8), np.complex64))
    with pytest.raises(Exception, match=r"c\.tif: unsupported pixel type complex64"):
        viewer.open(str(tmp_path / "c.tif"), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == ["mine"]


@pytest.mark.gui
def test_unreadable_slice_of_a_dataset_folder_draws_empty_with_a_warning(make_napari_viewer, tmp_path):
    for folder in ("images", "labels"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    for name in ("a", "b"):
        tifffile.imwrite(tmp_path / "data" / "images" / f"{name}.tif", np.full((16, 16), 9, np.uint8))
    tifffile.imwrite(tmp_path / "data" / "labels" / "a.tif", np.ones((16, 16), np.uint8))
    tifffile.imwrite(tmp_path / "data" / "labels" / "b.tif", np.full((16, 16), 0.5, np.float32))
    viewer = make_napari_viewer()
    viewer.open(str(tmp_path / "data"), plugin=PLUGIN)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        viewer.dims.set_current_step(0, 1)  # the slider: napari computes slice 1 of the lazy labels
        viewer.screenshot(canvas_only=True)
    assert any("b.tif: not a label mask" in str(w.message) for w in caught)
    assert not np.asarray(viewer.layers["data labels"].data[1]).any()
