"""Labels TIFFs carry the image's pixel size (OME-TIFF PhysicalSizeX/Y), so they open at the image's scale."""

from __future__ import annotations

import numpy as np
import tifffile
from conftest import load_usiigaci_set

from napari_cell_unet.io import open_image, read_labels, write_labels_tiff


def test_pixel_size_round_trips_for_planes_and_stacks(shared_data, tmp_path):
    labels = load_usiigaci_set("set1")["labels"][:200, :300].astype(np.uint32) * 1000  # ids need uint32
    for data, axes, scale in ((labels, "YX", (0.65, 0.5)), (np.stack([labels, labels[::-1]]), "TYX", (1.0, 0.65, 0.5))):
        path = write_labels_tiff(tmp_path / f"{axes}.tif", data, pixel_size=(0.65, 0.5))
        opened = open_image(path)
        assert opened.axes == axes and opened.scale == scale and opened.unit == "µm"
        back = read_labels(path)
        assert back.dtype == np.uint32 and np.array_equal(back, data)
        with tifffile.TiffFile(path) as tif:
            assert tif.pages[0].compression != 1
    plain = write_labels_tiff(tmp_path / "plain.tif", labels)
    assert open_image(plain).scale is None
    assert open_image(write_labels_tiff(tmp_path / "ones.tif", labels, pixel_size=(1.0, 1.0))).scale is None


def test_napari_writer_stores_the_layer_scale(shared_data, tmp_path):
    from napari_cell_unet._writer import write_labels_tiff as napari_writer

    labels = load_usiigaci_set("set2")["labels"][:128, :128]
    [written] = napari_writer(str(tmp_path / "layer.tif"), labels, {"scale": (0.65, 0.65), "name": "x"})
    assert open_image(written).scale == (0.65, 0.65)
    assert np.array_equal(read_labels(written), labels)
