"""TIFF/PNG reading: real files, pixel types, physical scale, lazy opening, label detection, bad files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_cell_unet.io import ImageFileError, is_labels_path, open_image, read_image, read_labels
from napari_cell_unet.io import images as image_io
from conftest import LIVECELL_FRAME


def test_reads_real_usiigaci_image_and_labels(usiigaci):
    image = open_image(usiigaci / "set18" / "raw.tif")
    assert image.data.shape == (1022, 1024) and image.data.dtype == np.uint16
    assert image.axes == "YX" and image.scale is None and not image.lazy
    labels = read_labels(usiigaci / "set18" / "instances_ids.png")
    assert labels.dtype == np.uint32 and labels.shape == (1022, 1024)
    n_cells = int(open(usiigaci / "sets.csv").read().split("\nset18,")[1].split(",")[2])
    assert len(np.unique(labels)) - 1 == n_cells


def test_reads_lzw_compressed_livecell_frame(shared_data):
    data = read_image(LIVECELL_FRAME)
    reference = np.asarray(Image.open(LIVECELL_FRAME))
    assert data.shape == (520, 704) and data.dtype == np.uint8
    np.testing.assert_array_equal(data, reference)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_pixel_types_round_trip(tmp_path, dtype):
    data = (np.random.default_rng(0).random((3, 40, 50)) * 200).astype(dtype)
    tifffile.imwrite(tmp_path / "stack.tif", data, photometric="minisblack")
    image = open_image(tmp_path / "stack.tif")
    assert image.data.dtype == dtype and image.data.shape == (3, 40, 50)
    np.testing.assert_array_equal(image.data, data)


@pytest.mark.parametrize("channels", [3, 4])
def test_rgb_and_rgba(tmp_path, channels):
    data = np.random.default_rng(1).integers(0, 255, (30, 20, channels), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "colour.tif", data, photometric="rgb")
    image = open_image(tmp_path / "colour.tif")
    assert image.rgb and image.data.shape == (30, 20, channels)


def test_planar_rgb_puts_samples_last(tmp_path):
    data = np.random.default_rng(1).integers(0, 255, (3, 30, 20), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", data, photometric="rgb", planarconfig="separate")
    image = open_image(tmp_path / "planar.tif")
    assert image.rgb and image.data.shape == (30, 20, 3)
    np.testing.assert_array_equal(image.data, np.moveaxis(data, 0, -1))


def test_imagej_calibration_becomes_scale(tmp_path):
    data = np.zeros((4, 30, 40), np.uint16)
    tifffile.imwrite(tmp_path / "ij.tif", data, imagej=True, resolution=(1 / 0.65, 1 / 0.65),
                     metadata={"spacing": 2.5, "unit": "um", "axes": "ZYX"})
    image = open_image(tmp_path / "ij.tif")
    assert image.axes == "ZYX"
    assert image.scale == pytest.approx((2.5, 0.65, 0.65))


def test_ome_physical_size_in_nanometres_becomes_microns(tmp_path):
    data = np.zeros((2, 30, 40), np.uint8)
    tifffile.imwrite(tmp_path / "x.ome.tif", data, ome=True,
                     metadata={"axes": "TYX", "PhysicalSizeX": 325.0, "PhysicalSizeXUnit": "nm",
                               "PhysicalSizeY": 325.0, "PhysicalSizeYUnit": "nm"})
    assert open_image(tmp_path / "x.ome.tif").scale == pytest.approx((1.0, 0.325, 0.325))


def test_uncalibrated_imagej_file_has_no_scale(tmp_path):
    tifffile.imwrite(tmp_path / "plain.tif", np.zeros((2, 8, 8), np.uint8), imagej=True)
    assert open_image(tmp_path / "plain.tif").scale is None


def test_large_uncompressed_stack_is_memory_mapped(tmp_path, monkeypatch):
    data = np.arange(50 * 64 * 64, dtype=np.uint16).reshape(50, 64, 64)
    tifffile.imwrite(tmp_path / "big.tif", data)
    monkeypatch.setattr(image_io, "LAZY_BYTES", 1000)
    image = open_image(tmp_path / "big.tif")
    assert image.lazy and isinstance(image.data, np.memmap)
    np.testing.assert_array_equal(image.data[37], data[37])


def test_large_compressed_stack_decodes_only_the_pages_looked_at(tmp_path, monkeypatch):
    data = np.random.default_rng(2).integers(0, 1000, (40, 64, 64), dtype=np.uint16)
    tifffile.imwrite(tmp_path / "big.tif", data, compression="zlib")
    monkeypatch.setattr(image_io, "LAZY_BYTES", 1000)
    monkeypatch.setattr(image_io, "_CHUNK_PAGES", 4)
    pages_read: list[int] = []
    real_read = image_io._read_tiff_pages

    def counting_read(path, offsets, *args):
        pages_read.append(len(offsets))
        return real_read(path, offsets, *args)

    monkeypatch.setattr(image_io, "_read_tiff_pages", counting_read)
    image = open_image(tmp_path / "big.tif")
    assert image.lazy and pages_read == []
    np.testing.assert_array_equal(np.asarray(image.data[12]), data[12])
    assert pages_read == [4]  # the one chunk of 4 pages that holds page 12
    np.testing.assert_array_equal(np.asarray(image.data), data)


@pytest.mark.parametrize("lazy", [False, True])
def test_truncated_tiff_is_a_one_line_error(tmp_path, lazy):
    tifffile.imwrite(tmp_path / "whole.tif", np.ones((5, 100, 100), np.uint16))
    content = (tmp_path / "whole.tif").read_bytes()
    (tmp_path / "cut.tif").write_bytes(content[: len(content) // 2])
    with pytest.raises(ImageFileError, match=r"cut\.tif: .*(truncated|corrupt)") as err:
        open_image(tmp_path / "cut.tif", lazy=lazy)
    assert "\n" not in str(err.value)


def test_garbage_tiff_and_png_are_errors(tmp_path):
    (tmp_path / "junk.tif").write_bytes(b"II*\x00" + b"\xff" * 50)
    (tmp_path / "junk_mask.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    for name in ("junk.tif", "junk_mask.png"):
        with pytest.raises(ImageFileError, match=name):
            read_image(tmp_path / name)


def test_float_mask_with_fractions_is_not_labels(tmp_path):
    tifffile.imwrite(tmp_path / "x_mask.tif", np.full((4, 4), 0.5, np.float32))
    with pytest.raises(ImageFileError, match="not a label mask"):
        read_labels(tmp_path / "x_mask.tif")


@pytest.mark.parametrize("path, expected", [
    ("a/labels/x.tif", True), ("a/masks/x.png", True), ("a/borders/x.tif", True), ("a/x_labels.tif", True),
    ("a/x_mask.tif", True), ("a/x_masks.png", True), ("a/x_border.tif", True), ("a/x_borders.ome.tif", True),
    ("a/images/x.tif", False), ("a/raw.tif", False), ("a/mask_x.tif", False), ("a/x_labelsfoo.tif", False),
])
def test_label_file_naming(path, expected):
    assert is_labels_path(path) is expected


def test_written_files_get_the_usual_permissions_not_owner_only(tmp_path):
    """Atomic writes go through mkstemp (owner-only 0600); the saved file must not keep that."""
    from napari_cell_unet.io import _atomic, write_labels_tiff

    path = write_labels_tiff(tmp_path / "cells_labels.tif", np.ones((4, 4), np.uint8))
    assert path.stat().st_mode & 0o777 == 0o666 & ~_atomic._UMASK
    path.chmod(0o640)
    write_labels_tiff(path, np.zeros((4, 4), np.uint8), overwrite=True)
    assert path.stat().st_mode & 0o777 == 0o640  # a replaced file keeps its permissions
