"""`cell-unet evaluate` on real Usiigaci crops: table, JSON, COCO input and user errors.

The segmentation itself is replaced by known label images (ground truth eroded by a known amount), so
the scores the CLI reports can be checked against the metrics computed directly.
"""

from __future__ import annotations

import hashlib
import json
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile
from PIL import Image
from scipy import ndimage

from napari_cell_unet import evaluation
from napari_cell_unet.cli import main
from napari_cell_unet.metrics import instance_scores

from conftest import load_small_set


@pytest.fixture
def crops(tmp_path):
    """Two real image/label crops written as files, and the 'predictions' the fake segmenter returns."""
    answers, files = {}, []
    for k, (name, box) in enumerate((("set18", np.s_[:300, :400]), ("set25", np.s_[200:520, 300:700]))):
        data = load_small_set(name)
        image, labels = data["image"][box], data["labels"][box]
        prediction = ndimage.grey_erosion(labels, size=(3 + 2 * k, 3 + 2 * k))
        answers[hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()] = prediction
        tifffile.imwrite(tmp_path / f"{name}.tif", image)
        Image.fromarray(labels).save(tmp_path / f"{name}_labels.png")
        files.append((tmp_path / f"{name}.tif", tmp_path / f"{name}_labels.png", labels, prediction))
    return SimpleNamespace(files=files, answers=answers)


@pytest.fixture
def fake_segment(monkeypatch, crops):
    def segment(image, model=None, return_probabilities=False, **params):
        assert return_probabilities
        key = hashlib.sha1(np.ascontiguousarray(image).tobytes()).hexdigest()
        return crops.answers[key], None  # (labels, probabilities), as segment(return_probabilities=True) gives

    monkeypatch.setattr(evaluation, "segment", segment)


@pytest.fixture
def model_file(tmp_path, tiny_model):
    from napari_cell_unet.model import save_model

    path = tmp_path / "tiny.safetensors"
    save_model(tiny_model, path)
    return path


def test_evaluate_files_prints_table_and_writes_json(crops, fake_segment, model_file, tmp_path, capsys):
    out = tmp_path / "scores.json"
    images = [str(f[0]) for f in crops.files]
    labels = [str(f[1]) for f in crops.files]
    rc = main(["evaluate", "--model", str(model_file), "--images", *images, "--labels", *labels,
               "--output", str(out)])
    printed = capsys.readouterr().out
    assert rc == 0
    assert "set18.tif" in printed and "set25.tif" in printed and "mean" in printed and "COCO" in printed
    report = json.loads(out.read_text())
    for row, (_, _, truth, prediction) in zip(report["images"], crops.files):
        expected = instance_scores(prediction, truth)
        for key in ("f1_50", "mean_f1", "pixel_iou", "n_pred", "n_true"):
            assert row[key] == pytest.approx(expected[key])
    assert report["mean"]["mean_f1"] == pytest.approx(np.mean([r["mean_f1"] for r in report["images"]]))
    assert report["mean"]["n_true"] == sum(r["n_true"] for r in report["images"])
    assert 0 < report["coco"]["AP"] < report["coco"]["AP50"] <= 1
    assert not list(tmp_path.glob(".scores.json*"))  # no temporary file left behind


def test_evaluate_coco_input(crops, fake_segment, model_file, tmp_path, capsys):
    from napari_cell_unet.io import write_labels_coco

    names = [f[0].name for f in crops.files]
    shapes = {f[2].shape for f in crops.files}
    assert len(shapes) == 2  # different sizes: one COCO file per crop keeps it simple
    for (image_path, _, truth, _), name in zip(crops.files, names):
        write_labels_coco(tmp_path / f"{image_path.stem}.json", truth[np.newaxis], image_names=[name])
    rc = main(["evaluate", "--model", str(model_file), "--coco", str(tmp_path / "set25.json"), "--no-ap"])
    printed = capsys.readouterr().out
    assert rc == 0 and "set25.tif" in printed and "COCO" not in printed
    expected = instance_scores(crops.files[1][3], crops.files[1][2])
    assert f"{expected['f1_50']:.3f}" in printed


def test_evaluate_user_errors(crops, fake_segment, model_file, tmp_path, capsys):
    image, labels = str(crops.files[0][0]), str(crops.files[0][1])
    existing = tmp_path / "keep.json"
    existing.write_text("{}")
    assert main(["evaluate", "--model", str(model_file), "--images", image, "--labels", image, labels,
                 "--output", str(existing)]) == 2
    assert "already exists" in capsys.readouterr().err and existing.read_text() == "{}"
    assert main(["evaluate", "--model", str(model_file), "--images", image]) == 2
    assert "--labels" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(model_file), "--images", image, image, "--labels", labels]) == 2
    assert "paired by order" in capsys.readouterr().err
    assert main(["evaluate", "--model", str(tmp_path / "missing.safetensors"), "--images", image,
                 "--labels", labels]) == 2
    err = capsys.readouterr().err
    assert "missing.safetensors" in err and "Traceback" not in err


def test_evaluate_runs_a_real_model_end_to_end(crops, model_file, tmp_path, capsys):
    out = tmp_path / "real.json"
    rc = main(["evaluate", "--model", str(model_file), "--images", str(crops.files[0][0]),
               "--labels", str(crops.files[0][1]), "--device", "cpu", "--tile-size", "256", "--output", str(out)])
    assert rc == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    row = report["images"][0]
    assert row["n_true"] == len(np.unique(crops.files[0][2])) - 1
    assert 0.0 <= row["f1_50"] <= 1.0 and 0.0 <= row["pixel_iou"] <= 1.0
    assert report["segment_params"] == {"device": "cpu", "tile_size": 256, "diameter": "auto"}


def test_evaluate_against_a_binary_mask_reports_pixel_scores_only(crops, fake_segment, model_file, tmp_path,
                                                                   capsys):
    """LIVECell's semantic masks (one label value for every cell) cannot score instances: say so."""
    from napari_cell_unet.metrics import dice, pixel_iou

    (image, _, truth, prediction), (image2, labels2, truth2, prediction2) = crops.files
    binary = tmp_path / "set18_semantic.png"
    Image.fromarray(((truth > 0) * 255).astype(np.uint8)).save(binary)
    out = tmp_path / "scores.json"
    rc = main(["evaluate", "--model", str(model_file), "--images", str(image), str(image2),
               "--labels", str(binary), str(labels2), "--output", str(out)])
    captured = capsys.readouterr()
    assert rc == 0
    assert "instance scores" in captured.err and "instance labels" in captured.err and "set18" in captured.err
    row = next(line for line in captured.out.splitlines() if line.startswith("set18"))
    assert "0.000" not in row and row.split()[1:4] == ["-", str(len(np.unique(prediction)) - 1), "-"], row
    report = json.loads(out.read_text())
    semantic, instance = report["images"]
    assert "f1_50" not in semantic and "n_true" not in semantic and semantic["instance_labels"] is False
    assert semantic["pixel_iou"] == pytest.approx(pixel_iou(prediction, truth > 0))
    assert semantic["dice"] == pytest.approx(dice(prediction, truth > 0))
    assert instance["f1_50"] == pytest.approx(instance_scores(prediction2, truth2)["f1_50"])
    assert report["mean"]["f1_50"] == pytest.approx(instance["f1_50"])  # the mean F1 is over instance labels only
    assert report["warnings"] and "coco" in report


def test_one_cell_with_one_label_is_still_an_instance_mask():
    from napari_cell_unet.metrics import is_semantic_mask

    one_cell = np.zeros((20, 20), np.uint8)
    one_cell[5:10, 5:10] = 255
    assert not is_semantic_mask(one_cell)
    one_cell[12:15, 12:15] = 255
    assert is_semantic_mask(one_cell)
    one_cell[12:15, 12:15] = 7
    assert not is_semantic_mask(one_cell) and not is_semantic_mask(one_cell > 0)
