"""The npe2 adapters: what each reader claims, the layers it returns, the writers and the sample, and the
same through a real napari viewer (``gui`` tests, run under xvfb-run)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import load_usiigaci_set

from napari_cell_unet import _reader, _sample_data, _writer
from napari_cell_unet.io import CellUnetFileError, read_coco
from napari_cell_unet.io.coco import CocoDataset

PLUGIN = "napari-cell-unet"


@pytest.fixture
def dataset_folder(tmp_path, usiigaci) -> Path:
    root = tmp_path / "train"
    for sub in ("images", "labels", "borders"):
        (root / sub).mkdir(parents=True)
    for name in ("set18", "set19"):
        (root / "images" / f"{name}.tif").symlink_to(usiigaci / name / "raw.tif")
        (root / "labels" / f"{name}.png").symlink_to(usiigaci / name / "instances_ids.png")
        (root / "borders" / f"{name}.png").symlink_to(usiigaci / name / "feature_0.png")
    return root


def test_readers_leave_other_files_to_napari(tmp_path, usiigaci):
    (tmp_path / "notes.txt").write_text("x")
    assert _reader.get_tiff_reader(str(usiigaci / "set1" / "feature_1.png")) is None  # ordinary PNG
    assert _reader.get_tiff_reader(str(tmp_path / "notes.txt")) is None
    assert _reader.get_coco_reader(str(usiigaci / "set1" / "raw.tif")) is None
    assert _reader.get_dataset_reader(str(tmp_path)) is None
    assert _reader.get_dataset_reader(str(usiigaci / "set1" / "raw.tif")) is None
    assert _reader.get_tiff_reader([str(usiigaci / "set1" / "raw.tif"), str(tmp_path / "notes.txt")]) is None


def test_tiff_reader_layers(tmp_path, usiigaci):
    [(data, kwargs, kind)] = _reader.get_tiff_reader(str(usiigaci / "set18" / "raw.tif"))(str(usiigaci / "set18" / "raw.tif"))
    assert kind == "image" and data.shape == (1022, 1024) and kwargs["name"] == "raw"
    (tmp_path / "labels").mkdir()
    (tmp_path / "labels" / "set18.png").symlink_to(usiigaci / "set18" / "instances_ids.png")
    [(labels, _, kind)] = _reader.read_image_layers(tmp_path / "labels" / "set18.png")
    assert kind == "labels" and labels.max() == load_usiigaci_set("set18")["labels"].max()
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((8, 9, 3), np.uint8), photometric="rgb",
                     resolution=(2.0, 2.0), imagej=True)
    [(_, kwargs, _)] = _reader.read_image_layers(tmp_path / "rgb.tif")
    assert kwargs["rgb"] and kwargs["scale"] == pytest.approx((0.5, 0.5))


def test_coco_reader_builds_lazy_stacks_with_annotation_features(usiigaci, monkeypatch):
    decoded: list[int] = []
    real_labels = CocoDataset.labels
    monkeypatch.setattr(CocoDataset, "labels", lambda self, i, **kw: decoded.append(i) or real_labels(self, i, **kw))
    path = usiigaci / "coco_rle.json"
    (image, image_kwargs, kind_1), (labels, label_kwargs, kind_2) = _reader.get_coco_reader(str(path))(str(path))
    assert (kind_1, kind_2) == ("image", "labels") and decoded == []
    assert image.shape == labels.shape == (40, 1022, 1024)
    i = label_kwargs["metadata"]["coco"]["file_names"].index("set18/raw.tif")
    plane = np.asarray(labels[i])
    assert decoded == [i]
    dataset = read_coco(path)
    assert set(np.unique(plane)[1:]) == {a["id"] for a in dataset.annotations(i)}
    assert len(label_kwargs["features"]["index"]) == 2562
    np.testing.assert_array_equal(np.asarray(image[i]), load_usiigaci_set("set18")["image"])


def test_coco_reader_without_images_warns_and_gives_labels_only(tmp_path, usiigaci):
    truth = load_usiigaci_set("set5")["labels"]
    path = _writer.write_labels_coco(str(tmp_path / "moved.json"), truth, {"name": "set5"})[0]
    with pytest.warns(UserWarning, match=r"1 of 1 images not found .*Searched: .*images"):
        layers = _reader.read_coco_layers(path)
    [(labels, _, kind)] = layers
    assert kind == "labels"
    np.testing.assert_array_equal(labels, truth)


def test_claimed_but_broken_files_raise_one_line_errors(tmp_path):
    (tmp_path / "settings.json").write_text(json.dumps({"theme": "dark"}))
    (tmp_path / "cut.tif").write_bytes(b"II*\x00\x08\x00\x00\x00\x01")
    for reader, name in ((_reader.get_coco_reader, "settings.json"), (_reader.get_tiff_reader, "cut.tif")):
        read = reader(str(tmp_path / name))
        with pytest.raises(CellUnetFileError, match=name) as err:
            read(str(tmp_path / name))
        assert "\n" not in str(err.value)


def test_dataset_reader_layers(dataset_folder):
    layers = _reader.get_dataset_reader(str(dataset_folder))(str(dataset_folder))
    assert [(kw["name"], kind) for _, kw, kind in layers] == [
        ("train images", "image"), ("train labels", "labels"), ("train borders", "labels")]
    images, labels, borders = (layer[0] for layer in layers)
    assert images.shape == labels.shape == borders.shape == (2, 1022, 1024)
    truth = load_usiigaci_set("set19")
    np.testing.assert_array_equal(np.asarray(labels[1]), truth["labels"])
    np.testing.assert_array_equal(np.asarray(borders[1]) > 0, truth["borders"])


def test_writer_keeps_coco_image_names_for_the_round_trip(tmp_path, usiigaci):
    truth = load_usiigaci_set("set18")["labels"]
    meta = {"name": "corrected", "metadata": {"coco": {"file_names": ["set18/raw.tif"]}}}
    [json_path] = _writer.write_labels_coco(str(tmp_path / "c.json"), truth, meta)
    assert read_coco(json_path).file_name(0) == "set18/raw.tif"
    [tif_path] = _writer.write_labels_tiff(str(tmp_path / "c.tif"), truth, meta)
    np.testing.assert_array_equal(tifffile.imread(tif_path), truth)


def test_nuclei_sample_has_image_and_ground_truth():
    (image, image_kwargs, kind_1), (labels, _, kind_2) = _sample_data.nuclei_sample()
    assert (kind_1, kind_2) == ("image", "labels")
    assert image.shape == labels.shape == (512, 512) and labels.dtype == np.uint32
    assert len(np.unique(labels)) - 1 == 125
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()  # nuclei are the bright objects


def test_reading_and_writing_never_import_torch_or_qt():
    code = ("import sys, napari_cell_unet._reader, napari_cell_unet._writer, napari_cell_unet._sample_data;"
            "print([m for m in ('torch', 'qtpy', 'PyQt6', 'napari') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# ---- through a real napari viewer -------------------------------------------------------------------

@pytest.mark.gui
def test_viewer_opens_tiff_and_png_masks(make_napari_viewer, tmp_path, usiigaci):
    viewer = make_napari_viewer()
    (tmp_path / "set18_labels.png").symlink_to(usiigaci / "set18" / "instances_ids.png")
    viewer.open(str(usiigaci / "set18" / "raw.tif"), plugin=PLUGIN)
    viewer.open(str(tmp_path / "set18_labels.png"), plugin=PLUGIN)
    image, labels = viewer.layers
    assert type(image).__name__ == "Image" and type(labels).__name__ == "Labels"
    assert labels.data.max() == load_usiigaci_set("set18")["labels"].max()


@pytest.mark.gui
def test_viewer_opens_coco_stack_and_saves_corrections(make_napari_viewer, tmp_path, usiigaci):
    viewer = make_napari_viewer()
    viewer.open(str(usiigaci / "coco_rle.json"), plugin=PLUGIN)
    image, labels = viewer.layers
    assert labels.data.shape == (40, 1022, 1024) and viewer.dims.nsteps[0] == 40
    viewer.dims.set_point(0, 9)
    shown = np.asarray(labels._slice.image.raw)  # what the canvas shows: only this slice was decoded
    assert shown.shape == (1022, 1024)
    assert len(np.unique(shown)) - 1 == len(read_coco(usiigaci / "coco_rle.json").annotations(9))
    single = viewer.add_labels(np.asarray(labels.data[9]), name="one", metadata={"coco": {"file_names": ["set18/raw.tif"]}})
    out = tmp_path / "corrected.json"
    single.save(str(out), plugin=PLUGIN)
    np.testing.assert_array_equal(read_coco(out).labels(0, annotation_ids=True), single.data)


@pytest.mark.gui
def test_viewer_opens_dataset_folder(make_napari_viewer, dataset_folder):
    viewer = make_napari_viewer()
    viewer.open(str(dataset_folder), plugin=PLUGIN)
    assert [layer.name for layer in viewer.layers] == ["train images", "train labels", "train borders"]


@pytest.mark.gui
def test_viewer_opens_sample_and_reports_bad_files(make_napari_viewer, tmp_path):
    viewer = make_napari_viewer()
    viewer.open_sample(PLUGIN, "nuclei")
    assert [type(layer).__name__ for layer in viewer.layers] == ["Image", "Labels"]
    (tmp_path / "broken.json").write_text("{nope")
    with pytest.raises(Exception, match="broken.json: not valid JSON"):
        viewer.open(str(tmp_path / "broken.json"), plugin=PLUGIN)
    assert len(viewer.layers) == 2
