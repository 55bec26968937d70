"""`cell-unet segment` on real files: label files of the right shape and dtype, per-file errors, summary line."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import tifffile

from conftest import LIVECELL_FRAME, load_small_set, load_usiigaci_set
from napari_cell_unet.cli import main
from napari_cell_unet.model import save_model


@pytest.fixture
def model_file(tiny_model, tmp_path):
    tiny_model.metadata["postprocessing"] = {"cell_threshold": 0.5, "border_threshold": 0.5, "min_size": 5}
    return save_model(tiny_model, tmp_path / "tiny.safetensors")


def test_segment_files_and_folders_reporting_bad_files(model_file, usiigaci, tmp_path, capsys):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    shutil.copy(LIVECELL_FRAME, inputs / "livecell.tif")
    crop = load_usiigaci_set("set20")["image"][:128, :160]
    tifffile.imwrite(inputs / "stack.tif", np.stack([crop, crop[::-1], crop[:, ::-1]]), photometric="minisblack")
    (inputs / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    out = tmp_path / "out"

    code = main(["segment", str(inputs), str(usiigaci / "set21" / "raw.tif"), "--output-dir", str(out),
                 "--model", str(model_file), "--device", "cpu", "--tile-size", "1024", "--min-size", "5"])
    captured = capsys.readouterr()
    assert code == 1  # one file failed
    assert "broken.tif" in captured.err and "Traceback" not in captured.err
    summary = captured.out.strip().splitlines()[-1]
    assert summary.startswith("segmented 3 images, 1 failed:") and " cells in " in summary

    frame = tifffile.imread(out / "livecell_labels.tif")
    assert frame.shape == tifffile.imread(LIVECELL_FRAME).shape and frame.dtype.kind == "u"
    stack = tifffile.imread(out / "stack_labels.tif")
    assert stack.shape == (3, 128, 160) and stack.dtype.kind == "u"
    raw = tifffile.imread(out / "raw_labels.tif")
    assert raw.shape == (1022, 1024) and raw.dtype.kind == "u"
    with tifffile.TiffFile(out / "raw_labels.tif") as tif:
        assert tif.pages[0].compression != 1  # compressed
    assert not (out / "broken_labels.tif").exists()
    cells = sum(int(a.max()) for a in (frame, raw)) + sum(int(s.max()) for s in stack)
    assert f": {cells} cells in " in summary


def test_user_errors_are_one_line(model_file, tmp_path, capsys):
    import torch

    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.arange(64 * 64, dtype=np.uint16).reshape(64, 64))
    missing_model = main(["segment", str(image), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "nope.safetensors")])
    assert missing_model == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no such model file" in err
    if not torch.cuda.is_available():
        assert main(["segment", str(image), "-o", str(tmp_path / "o"), "--device", "cuda"]) == 2
        assert "not available" in capsys.readouterr().err


def test_diameter_option_rescales_and_keeps_the_shape(model_file, tmp_path, capsys):
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, load_small_set("set20")["image"][:80, :100])
    assert main(["segment", str(image), "-o", str(tmp_path / "o"), "--model", str(model_file), "--device", "cpu",
                 "--diameter", "100"]) == 0  # half size for a 50-px model
    assert tifffile.imread(tmp_path / "o" / "a_labels.tif").shape == (80, 100)
    with pytest.raises(SystemExit) as exit_info:
        main(["segment", str(image), "-o", str(tmp_path / "p"), "--model", str(model_file), "--diameter", "-3"])
    assert exit_info.value.code == 2 and "positive number of pixels" in capsys.readouterr().err
    assert main(["segment", str(image), "-o", str(tmp_path / "q"), "--model", str(model_file), "--device", "cpu",
                 "--diameter", "0.001"]) == 1  # would zoom 50,000x
    assert "out of range" in capsys.readouterr().err


def test_a_line_per_image_unless_quiet(model_file, tmp_path, capsys):
    image = tmp_path / "cells.tif"
    tifffile.imwrite(image, load_small_set("set20")["image"][:96, :96])
    assert main(["segment", str(image), "-o", str(tmp_path / "o"), "--model", str(model_file), "--device", "cpu",
                 "--diameter", "40"]) == 0
    out = capsys.readouterr().out
    assert f"{image}: " in out and " cells in " in out and "(cell diameter: 40 px)" in out
    assert main(["segment", str(image), "-o", str(tmp_path / "o"), "--model", str(model_file), "--device", "cpu",
                 "--quiet"]) == 1  # exists already
    captured = capsys.readouterr()
    assert f"{image}: " not in captured.out and "--overwrite" in captured.err


def test_tta_option_averages_flips_in_files_and_in_chunked_huge_images(model_file, tmp_path):
    from napari_cell_unet.inference import predict_probabilities, segment_dask
    from napari_cell_unet.model import load_model

    image = load_small_set("set20")["image"][:96, :128].astype(np.float32)
    tifffile.imwrite(tmp_path / "a.tif", image)
    for flag, out in (([], "plain"), (["--tta"], "flips")):
        assert main(["segment", str(tmp_path / "a.tif"), "-o", str(tmp_path / out), "--model", str(model_file),
                     "--device", "cpu", "--diameter", "none", *flag]) == 0
    model = load_model(model_file)
    plain = predict_probabilities(image, model, device="cpu", precision="fp32")
    flips = predict_probabilities(image, model, device="cpu", precision="fp32", tta=True)
    # a random tiny network is not flip-invariant, so the flipped average differs from one pass
    assert np.abs(plain - flips).max() > 1e-3
    mirrored = predict_probabilities(image[:, ::-1].copy(), model, device="cpu", precision="fp32", tta=True)
    np.testing.assert_allclose(mirrored[:, :, ::-1], flips, atol=1e-4)  # the average of all flips is flip-invariant
    # the chunked path for huge images takes the option too (it used to drop it)
    lazy = segment_dask(image, model, chunk=64, overlap=16, device="cpu", precision="fp32", tta=True, diameter=None)
    assert lazy.shape == image.shape and np.asarray(lazy).dtype.kind == "u"
