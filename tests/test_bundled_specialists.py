"""The bundled specialists ("cells": phase contrast, "nuclei": fluorescent and stained nuclei): loaded by name in
the API and the CLI, sized by their own size regression, and better than the default on held-out images of their
kind (issue 9: each beat the generalist trained the same way on its validation images)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import load_usiigaci_set

from napari_cell_unet.model.files import bundled_names

pytestmark = pytest.mark.skipif(not {"cells", "nuclei"} <= set(bundled_names()),
                                reason="this installation has no bundled specialists")
HELD_OUT_SET = "set21"  # a Usiigaci test set: no model of this package was trained on it
TEST_SETS = ("set5", "set13", "set21", "set29", "set35", "set41")


@pytest.fixture(scope="module")
def specialists():
    from napari_cell_unet import load_model

    return {name: load_model(name) for name in ("cells", "nuclei")}


def _nuclei_sample_right_half():
    from napari_cell_unet._sample_data import sample_path
    from napari_cell_unet.io import read_image, read_labels

    right = (slice(None), slice(256, None))  # the left half trained the model both specialists start from
    return (read_image(sample_path("dsb2018_nuclei.tif"))[right],
            read_labels(sample_path("dsb2018_nuclei_labels.tif"))[right])


def test_loaded_by_name_with_their_own_size_regression(specialists):
    from napari_cell_unet import load_model
    from napari_cell_unet.inference.size_model import size_regression
    from napari_cell_unet.model import ModelFileError

    for name, model in specialists.items():
        assert name in model.name
        assert size_regression(model, model.network) is not None  # fitted to this encoder
        assert "diameter_model" not in model.metadata and "taught_diameters" not in model.metadata
        trained_on = {entry.split("/")[0] for entry in model.metadata["training"]["data"]["train"]}
        assert trained_on == ({"usiigaci"} if name == "cells" else {"fluorescence", "tissue"})
        assert not any(HELD_OUT_SET == entry.split("/")[-1].split("@")[0]
                       for entry in model.metadata["training"]["data"]["train"])
    with pytest.raises(ModelFileError, match="no such model file"):
        load_model("cellz")


def test_cells_specialist_and_the_default_on_the_held_out_phase_contrast_sets(specialists):
    """Pooled over the six Usiigaci test sets at the default call (single sets go either way). Since both split
    objects holding two cell-sized strict seeds, the default is ahead here at 1x (0.854 vs 0.844) and the
    specialist at the other zooms (0.5x 0.856 vs 0.802, 2x 0.853 vs 0.843: benchmarks/RESULTS.md)."""
    from napari_cell_unet import load_model, segment
    from napari_cell_unet.metrics import aggregate, instance_scores

    if not _has_shared():
        pytest.skip("needs ../shared/data")
    scores = {"cells": [], "default": []}
    for name in TEST_SETS:
        data = load_usiigaci_set(name)
        for model_name, model in (("cells", specialists["cells"]), ("default", load_model())):
            scores[model_name].append(instance_scores(segment(data["image"], model, device="cpu"), data["labels"]))
    cells, default = (aggregate(scores[name])["pooled_f1_50"] for name in ("cells", "default"))
    # measured: cells 0.844, default 0.854 (0.848 and 0.839 before the split; 0.816 and 0.792 before the size rule)
    assert cells >= 0.83 and default >= 0.84 and abs(cells - default) <= 0.02, (cells, default)


def test_nuclei_specialist_on_held_out_nuclei(specialists):
    from napari_cell_unet import segment
    from napari_cell_unet.metrics import instance_scores

    image, truth = _nuclei_sample_right_half()
    scores = instance_scores(segment(image, specialists["nuclei"], device="cpu"), truth)
    assert scores["f1_50"] >= 0.85, scores  # measured 0.899 (the default 0.826)


def test_cli_segments_with_a_bundled_model_named(tmp_path, capsys):
    from napari_cell_unet.cli import main

    image, _ = _nuclei_sample_right_half()
    tifffile.imwrite(tmp_path / "nuclei.tif", image)
    code = main(["segment", str(tmp_path / "nuclei.tif"), "--output-dir", str(tmp_path / "out"), "--model", "nuclei",
                 "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    labels = tifffile.imread(tmp_path / "out" / "nuclei_labels.tif")
    assert labels.shape == image.shape and 40 <= len(np.unique(labels)) - 1 <= 80
    assert main(["segment", str(tmp_path / "nuclei.tif"), "--output-dir", str(tmp_path / "out2"),
                 "--model", "cellz"]) != 0
    assert "no such model file" in capsys.readouterr().err


def _has_shared() -> bool:
    from conftest import USIIGACI

    return USIIGACI.is_dir()

