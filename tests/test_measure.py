"""Per-cell measurements (`napari_cell_unet.measure`) on real labels, and `cell-unet segment --measure`."""

from __future__ import annotations

import csv

import numpy as np
import pytest
import tifffile
from conftest import load_usiigaci_set

from napari_cell_unet import measure


@pytest.fixture(scope="module")
def set1(shared_data):
    data = load_usiigaci_set("set1")
    return {"image": data["image"][:400, :400], "labels": data["labels"][:400, :400].astype(np.uint32)}


def test_measure_cells_in_pixels_matches_the_pixels(set1):
    image, labels = set1["image"], set1["labels"]
    table = measure.measure_cells(labels, image, image_name="set1")
    ids = np.unique(labels[labels > 0])
    assert np.array_equal(table["label"], ids)
    assert set(table["image"]) == {"set1"} and "frame" not in table
    sizes = np.bincount(labels.ravel())
    assert np.array_equal(table["area_px2"], sizes[ids])
    np.testing.assert_allclose(table["equivalent_diameter_px"], np.sqrt(4 * sizes[ids] / np.pi))
    for i, label in enumerate(ids[:5]):
        mask = labels == label
        assert table["mean_intensity"][i] == pytest.approx(image[mask].mean())
        assert table["min_intensity"][i] == image[mask].min() and table["max_intensity"][i] == image[mask].max()
        rows, cols = np.nonzero(mask)
        assert table["centroid_y_px"][i] == pytest.approx(rows.mean())
        assert table["centroid_x_px"][i] == pytest.approx(cols.mean())
    assert np.all((table["solidity"] > 0) & (table["solidity"] <= 1))
    assert np.all((table["eccentricity"] >= 0) & (table["eccentricity"] < 1))
    # a disc's perimeter is about pi x its diameter
    ratio = table["perimeter_px"] / (np.pi * table["equivalent_diameter_px"])
    assert np.all(ratio > 0.8)


def test_scale_gives_micrometres(set1):
    pixels = measure.measure_cells(set1["labels"])
    microns = measure.measure_cells(set1["labels"], scale=(0.65, 0.65))
    np.testing.assert_allclose(microns["area_um2"], pixels["area_px2"] * 0.65 ** 2)
    np.testing.assert_allclose(microns["perimeter_um"], pixels["perimeter_px"] * 0.65)
    np.testing.assert_allclose(microns["equivalent_diameter_um"], pixels["equivalent_diameter_px"] * 0.65)
    np.testing.assert_allclose(microns["centroid_x_um"], pixels["centroid_x_px"] * 0.65)
    np.testing.assert_allclose(microns["solidity"], pixels["solidity"])


def test_stack_frames_per_frame_counts_and_csv(set1, tmp_path):
    labels = np.stack([set1["labels"], np.zeros_like(set1["labels"]), set1["labels"][::-1]])
    image = np.stack([set1["image"]] * 3)
    table = measure.measure_stack(labels, image, image_name="movie")
    n = len(np.unique(set1["labels"])) - 1
    assert np.array_equal(np.bincount(table["frame"]), [n, 0, n])
    frames = measure.per_frame(table, n_frames=3)
    assert list(frames["cells"]) == [n, 0, n]
    assert np.isnan(frames["median_area_px2"][1])
    assert frames["median_area_px2"][0] == pytest.approx(np.median(np.bincount(set1["labels"].ravel())[1:][
        np.bincount(set1["labels"].ravel())[1:] > 0]))
    path = measure.write_cells_csv(table, tmp_path / "cells.csv")
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 2 * n and rows[0]["image"] == "movie" and rows[-1]["frame"] == "2"
    assert float(rows[0]["area_px2"]) == table["area_px2"][0]
    with pytest.raises(FileExistsError):
        measure.write_cells_csv(table, path)


def test_cli_segment_measure_writes_cells_csv_in_micrometres(shared_data, tmp_path, capsys):
    from napari_cell_unet.cli import main
    from napari_cell_unet.model import default_model_available

    if not default_model_available():
        pytest.skip("the bundled default model is not installed")
    image = load_usiigaci_set("set1")["image"][:256, :256]
    source = tmp_path / "phase.tif"
    tifffile.imwrite(source, image, imagej=True, resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "um"})
    second = tmp_path / "other.tif"
    tifffile.imwrite(second, load_usiigaci_set("set2")["image"][:256, :256], imagej=True,
                     resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "um"})
    out = tmp_path / "out"
    code = main(["segment", str(source), str(second), "-o", str(out), "--device", "cpu", "--diameter", "69",
                 "--measure"])
    assert code == 0, capsys.readouterr()
    labels = tifffile.imread(out / "phase_labels.tif")
    assert labels.max() > 3
    from napari_cell_unet.io import open_image
    assert open_image(out / "phase_labels.tif").scale == pytest.approx((0.65, 0.65))  # the image's pixel size
    with open(out / "phase_cells.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    ids = np.unique(labels[labels > 0])
    assert [int(r["label"]) for r in rows] == list(ids)
    assert {r["image"] for r in rows} == {"phase.tif"} and {r["frame"] for r in rows} == {"0"}
    sizes = np.bincount(labels.ravel())[ids]
    np.testing.assert_allclose([float(r["area_um2"]) for r in rows], sizes * 0.65 ** 2, rtol=1e-5)
    assert float(rows[0]["mean_intensity"]) == pytest.approx(image[labels == ids[0]].mean(), rel=1e-5)
    with open(out / "other_cells.csv", newline="", encoding="utf-8") as handle:
        other = list(csv.DictReader(handle))
    assert len(other) == len(np.unique(tifffile.imread(out / "other_labels.tif"))) - 1
    with open(out / "all_cells.csv", newline="", encoding="utf-8") as handle:
        combined = list(csv.DictReader(handle))
    assert combined == rows + other  # every image's rows, in input order
