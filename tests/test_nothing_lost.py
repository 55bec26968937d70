"""Nothing lost: a process killed (SIGKILL) while training or writing, or a disk that fills up while saving,
leaves the previous file intact and no half-written file under the final name."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import REPO, TINY_ARCHITECTURE

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork and SIGKILL")


def _cells(shape=(96, 96)) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for k, (cy, cx) in enumerate([(20, 20), (30, 70), (70, 40), (75, 80)], start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 100] = k
    image = (labels > 0) * 100.0 + np.random.default_rng(0).normal(10, 3, shape)
    return image.astype(np.float32), labels


@pytest.fixture
def training_files(tmp_path) -> dict[str, Path]:
    import torch

    from napari_cell_unet.model import CellModel, save_model

    image, labels = _cells()
    torch.manual_seed(0)
    tiny = save_model(CellModel.create(architecture=dict(TINY_ARCHITECTURE), name="tiny"), tmp_path / "tiny.safetensors")
    output = tmp_path / "out" / "model.safetensors"
    output.parent.mkdir()
    output.write_bytes(tiny.read_bytes())  # "the previous good model"
    tifffile.imwrite(tmp_path / "img.tif", image)
    tifffile.imwrite(tmp_path / "lab.tif", labels)
    return {"image": tmp_path / "img.tif", "labels": tmp_path / "lab.tif", "tiny": tiny, "output": output}


def _wait_for(predicate, timeout: float, process: subprocess.Popen) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"process ended early with status {process.returncode}")
        if time.monotonic() > end:
            process.kill()
            raise AssertionError("timed out")
        time.sleep(0.1)


def test_sigkill_while_training_keeps_the_previous_model(training_files, tmp_path):
    files = training_files
    before = files["output"].read_bytes()
    log = tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "napari_cell_unet.cli", "train", "--images", files["image"], "--labels",
               files["labels"], "--init", files["tiny"], "--output", files["output"], "--overwrite",
               "--steps", "100000", "--crop-size", "64", "--batch-size", "1", "--device", "cpu", "--threads", "1"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    with open(log, "w") as stderr:
        process = subprocess.Popen([str(c) for c in command], stderr=stderr, stdout=subprocess.DEVNULL, env=env)
        try:
            _wait_for(lambda: "step" in log.read_text(), 120, process)  # the progress bar: training has begun
            time.sleep(0.5)
            process.send_signal(signal.SIGKILL)
            process.wait(10)
        finally:
            if process.poll() is None:
                process.kill()
    assert process.returncode == -signal.SIGKILL
    assert files["output"].read_bytes() == before
    assert [p.name for p in files["output"].parent.iterdir() if not p.name.startswith(".")] == ["model.safetensors"]


def test_sigkill_while_writing_keeps_the_old_file(tmp_path):
    """The writer is killed half-way through writing: the old file is untouched and nothing else carries its
    name (the temporary file is hidden, next to it)."""
    from napari_cell_unet.io import write_labels_tiff

    target = tmp_path / "labels.tif"
    tifffile.imwrite(target, np.full((8, 8), 7, np.uint8))
    before = target.read_bytes()
    ready_read, ready_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: write half a file, then wait to be killed
        try:
            def slow_write(path, data, **kwargs):
                Path(path).write_bytes(b"II*\x00" + b"\x00" * 1000)
                os.write(ready_write, b"1")
                time.sleep(60)

            tifffile.imwrite = slow_write
            write_labels_tiff(target, np.ones((64, 64), np.uint8), overwrite=True)
        finally:
            os._exit(1)
    try:
        assert os.read(ready_read, 1) == b"1"
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    finally:
        os.close(ready_read)
        os.close(ready_write)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert target.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name != "labels.tif"]
    assert all(name.startswith(".labels.tif.") and name.endswith(".tmp") for name in leftovers), leftovers


def test_a_full_disk_at_the_end_of_training_keeps_the_model(training_files, monkeypatch, capsys):
    """Saving fails after training (disk full): the old file stays, the new model goes to a temporary file
    and the one-line error says where."""
    import safetensors.torch

    from napari_cell_unet.cli import main
    from napari_cell_unet.model import load_model

    files = training_files
    before = files["output"].read_bytes()
    real_save = safetensors.torch.save_file

    def full_disk(tensors, filename, metadata=None):
        if Path(filename).parent == files["output"].parent:
            raise OSError(28, "No space left on device")
        real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    rc = main(["train", "--images", str(files["image"]), "--labels", str(files["labels"]), "--init",
               str(files["tiny"]), "--output", str(files["output"]), "--overwrite", "--steps", "2",
               "--crop-size", "64", "--batch-size", "1", "--device", "cpu", "--val-fraction", "0"])
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert rc == 2 and "No space left on device" in err and "the trained model was saved to" in err
    rescued = Path(err.rsplit("saved to ", 1)[1])
    try:
        assert load_model(rescued).metadata["training"]["steps"] == 2
    finally:
        rescued.unlink()
    assert files["output"].read_bytes() == before
    assert [p.name for p in files["output"].parent.iterdir()] == ["model.safetensors"]


def test_sigkill_while_segmenting_a_folder_leaves_only_whole_files(training_files, tmp_path):
    """Each output is the old file or a complete new one, never a part (cell-unet segment --overwrite)."""
    images = tmp_path / "images"
    out = tmp_path / "labels"
    images.mkdir()
    out.mkdir()
    old = np.full((96, 96), 7, np.uint8)
    for k in range(12):
        tifffile.imwrite(images / f"img{k:02d}.tif", _cells()[0])
        tifffile.imwrite(out / f"img{k:02d}_labels.tif", old)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    command = [sys.executable, "-m", "napari_cell_unet.cli", "segment", images, "-o", out, "--overwrite",
               "--model", training_files["tiny"], "--device", "cpu"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen([str(c) for c in command], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                               env=env)
    try:
        _wait_for(lambda: any(p.read_bytes() != before[p.name] for p in out.iterdir() if p.name in before),
                  120, process)
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    finally:
        if process.poll() is None:
            process.kill()
    visible = sorted(p for p in out.iterdir() if not p.name.startswith("."))
    assert [p.name for p in visible] == sorted(before)
    replaced = 0
    for path in visible:
        labels = tifffile.imread(path)
        assert labels.shape == (96, 96)
        replaced += not np.array_equal(labels, old)
    assert 1 <= replaced
