"""`cell-unet train` on a small real crop: writes a loadable model, refuses to overwrite."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import TINY_ARCHITECTURE, load_small_set


@pytest.fixture
def tiny_data(tmp_path):
    import tifffile
    from PIL import Image

    data = load_small_set("set21")
    window = (slice(200, 392), slice(400, 592))
    tifffile.imwrite(tmp_path / "cells.tif", data["image"][window])
    Image.fromarray(data["labels"][window]).save(tmp_path / "cells_labels.png")
    return tmp_path / "cells.tif", tmp_path / "cells_labels.png"


@pytest.fixture
def tiny_model_file(tmp_path):
    import torch

    from napari_cell_unet.model import CellModel, save_model

    torch.manual_seed(0)
    return save_model(CellModel.create(architecture=dict(TINY_ARCHITECTURE), name="tiny"), tmp_path / "tiny.safetensors")


def _train(image, labels, init, output, *extra):
    from napari_cell_unet.cli import main

    return main(["train", "--images", str(image), "--labels", str(labels), "--init", str(init), "--steps", "3",
                 "--crop-size", "64", "--batch-size", "2", "--device", "cpu", "--output", str(output), *extra])


def test_cli_train_writes_a_loadable_model_and_refuses_to_overwrite(tiny_data, tiny_model_file, tmp_path, capsys):
    from napari_cell_unet.model import load_model

    image, labels = tiny_data
    output = tmp_path / "mine.safetensors"
    assert _train(image, labels, tiny_model_file, output, "--val-fraction", "0.4", "--name", "my cells") == 0
    model = load_model(output)
    assert model.name == "my cells"
    assert model.metadata["training"]["steps"] == 3
    assert [name.split("@")[0] for name in model.metadata["training"]["data"]["train"]] == ["cells.tif"]
    assert "F1@0.5" in capsys.readouterr().err  # the per-validation metrics line

    before = output.read_bytes()
    assert _train(image, labels, tiny_model_file, output) == 2
    assert "already exists" in capsys.readouterr().err
    assert output.read_bytes() == before
    assert _train(image, labels, tiny_model_file, output, "--overwrite", "--val-fraction", "0") == 0
    assert output.read_bytes() != before


def test_cli_train_reports_bad_input_in_one_line(tiny_data, tmp_path, capsys):
    image, labels = tiny_data
    assert _train(image, labels, tmp_path / "missing.safetensors", tmp_path / "out.safetensors") == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cell-unet train: error:") and "missing.safetensors" in err and "\n" not in err
    assert _train(image, labels, "scratch", tmp_path / "out.pt") == 2
    assert ".safetensors" in capsys.readouterr().err
    assert not np.any([p.suffix == ".pt" for p in tmp_path.iterdir()])
