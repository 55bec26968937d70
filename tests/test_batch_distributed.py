"""`cell-unet batch` on dask.distributed (loopback only): a LocalCluster of two worker *processes*
(processes=True, shared by the tests of this module) segments crops of real images exactly as `cell-unet segment`
does, reports a corrupt file and goes on, skips finished outputs on a rerun, and resumes a batch killed midway
(the whole process tree, SIGKILL) with no half-written file left."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import REPO, TINY_ARCHITECTURE, load_usiigaci_set
from napari_cell_unet import distributed as dist
from napari_cell_unet._progress import result_of
from napari_cell_unet.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster():
    client = dist.local_client(2, threads_per_worker=1, processes=True)
    yield client
    dist.close_client(client)


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    import torch

    from napari_cell_unet.model import CellModel, save_model

    torch.manual_seed(0)
    model = CellModel.create(architecture=dict(TINY_ARCHITECTURE), name="tiny")
    model.metadata["postprocessing"] = {"cell_threshold": 0.5, "border_threshold": 0.5, "min_size": 5}
    return save_model(model, tmp_path_factory.mktemp("model") / "tiny.safetensors")


def _crops(folder: Path, sets=("set20", "set21", "set22"), size=(96, 128)) -> list[Path]:
    paths = []
    for name in sets:
        (folder / name).mkdir(parents=True, exist_ok=True)
        paths.append(folder / name / "raw.tif")  # every Usiigaci image is raw.tif: names by folder
        tifffile.imwrite(paths[-1], load_usiigaci_set(name)["image"][:size[0], :size[1]])
    return paths


def _labels(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*_labels.tif"))}


def _report(folder: Path) -> dict:
    return json.loads((folder / "batch_report.json").read_text())


FAST = ["--device", "cpu", "--diameter", "40"]  # a given diameter: zoomed, but no probes


def test_batch_on_two_worker_processes_matches_segment_exactly(cluster, tiny_file, usiigaci, tmp_path, capsys):
    paths = _crops(tmp_path / "in")
    listing = tmp_path / "more.txt"
    listing.write_text(f"# a file list\n{paths[2]}\n")
    inputs = [str(tmp_path / "in" / "set2[01]" / "raw.tif"), str(listing)]  # a glob and a file list

    assert main(["segment", *map(str, paths), "-o", str(tmp_path / "seg"), "--model", str(tiny_file), *FAST]) == 0
    assert main(["batch", *inputs, "-o", str(tmp_path / "batch"), "--model", str(tiny_file), *FAST,
                 "--scheduler", cluster.scheduler.address]) == 0
    out = capsys.readouterr().out
    assert "3 segmented, 0 already complete, 0 failed" in out

    expected, got = _labels(tmp_path / "seg"), _labels(tmp_path / "batch")
    assert sorted(got) == sorted(expected) == ["set20_raw_labels.tif", "set21_raw_labels.tif", "set22_raw_labels.tif"]
    for name in expected:
        assert got[name].dtype == expected[name].dtype
        np.testing.assert_array_equal(got[name], expected[name])
    report = _report(tmp_path / "batch")
    assert report["summary"]["done"] == 3 and report["summary"]["failed"] == 0
    workers = {entry["worker"] for entry in report["files"]}
    assert all(entry["status"] == "done" and entry["cells"] == int(got[Path(entry["output"]).name].max())
               and entry["diameter"] == 40 and entry["seconds"] > 0 for entry in report["files"])
    assert workers <= {"0", "1"}
    assert {entry["device"] for entry in report["files"]} == {"cpu"}  # --device cpu
    # each worker process read the model file at most once, whatever the number of files it segmented
    assert all(loads <= 1 for loads in cluster.run(dist.model_loads).values())
    assert sum(cluster.run(dist.model_loads).values()) >= 1


def test_corrupt_input_is_reported_and_a_rerun_skips_finished_outputs(cluster, tiny_file, usiigaci, tmp_path,
                                                                     capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    for index, name in enumerate(("set24", "set26")):
        tifffile.imwrite(inputs / f"frame{index}.tif", load_usiigaci_set(name)["image"][:80, :96])
    (inputs / "broken.tif").write_bytes(b"II*\x00 not really a tiff")
    out = tmp_path / "out"
    args = ["batch", str(inputs), "-o", str(out), "--model", str(tiny_file), *FAST,
            "--scheduler", cluster.scheduler.address]

    assert main(args) == 1
    captured = capsys.readouterr()
    assert "broken.tif" in captured.err and "Traceback" not in captured.err
    assert "2 segmented, 0 already complete, 1 failed" in captured.out
    entries = {Path(e["input"]).name: e for e in _report(out)["files"]}
    assert entries["broken.tif"]["status"] == "failed" and "\n" not in entries["broken.tif"]["error"]
    assert "broken.tif" in entries["broken.tif"]["error"] and entries["broken.tif"]["output"] is None
    assert entries["frame0.tif"]["status"] == entries["frame1.tif"]["status"] == "done"
    rows = (out / "batch_report.csv").read_text().splitlines()
    assert rows[0] == "input,output,status,cells,diameter,seconds,worker,device,error" and len(rows) == 4
    assert not (out / "broken_labels.tif").exists() and not (out / "broken_labels.json").exists()
    sidecar = json.loads((out / "frame0_labels.json").read_text())
    assert sidecar["status"] == "complete" and sidecar["input"]["path"] == str((inputs / "frame0.tif").resolve())
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("frame*_labels.*")}

    assert main(args) == 1  # the corrupt file still fails, the finished ones are not redone
    captured = capsys.readouterr()
    assert "0 segmented, 2 already complete, 1 failed" in captured.out
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("frame*_labels.*")} == stamps
    assert [e["status"] for e in _report(out)["files"]] == ["failed", "skipped", "skipped"]

    # other settings: the outputs are not silently replaced ...
    assert main(args[:-2] + ["--min-size", "50", "--scheduler", cluster.scheduler.address]) == 1
    assert "other settings" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("frame*_labels.*")} == stamps
    # ... nor a labels file that cell-unet batch did not write
    (out / "frame0_labels.json").unlink()
    (inputs / "broken.tif").unlink()
    assert main(args) == 1
    assert "not written by cell-unet batch" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0
    assert json.loads((out / "frame0_labels.json").read_text())["status"] == "complete"


def test_a_killed_batch_resumes_with_no_half_written_file(cluster, tiny_file, usiigaci, tmp_path, capsys):
    inputs = tmp_path / "in"
    inputs.mkdir()
    image = load_usiigaci_set("set25")["image"]
    n_files = 12  # enough that the batch cannot finish between two polls (a tiny model is fast)
    for index in range(n_files):
        tifffile.imwrite(inputs / f"t{index}.tif", np.ascontiguousarray(image[index * 40:index * 40 + 192, :256]))
    out = tmp_path / "out"
    command = [sys.executable, "-m", "napari_cell_unet.cli", "batch", str(inputs), "-o", str(out),
               "--model", str(tiny_file), *FAST, "--workers", "1", "--threads", "1", "--quiet"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    process = subprocess.Popen(command, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and process.poll() is None:
            finished = [p for p in out.glob("*_labels.json") if dist.read_sidecar(p.with_suffix(".tif"))
                        and dist.read_sidecar(p.with_suffix(".tif"))["status"] == "complete"]
            if finished:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the batch ended before it could be killed"
        assert finished, "no output finished in time"
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the client, the scheduler and the worker process at once
        process.wait()
    complete_before = {p.name for p in out.glob("*_labels.json") if json.loads(p.read_text())["status"] == "complete"}
    assert 1 <= len(complete_before) < n_files and not (out / "batch_report.json").exists()
    # what a kill while writing leaves behind: a temporary file next to an output
    (out / ".t5_labels.tif.abcd1234.tmp").write_bytes(b"II*\x00 half")

    assert main(["batch", str(inputs), "-o", str(out), "--model", str(tiny_file), *FAST,
                 "--scheduler", cluster.scheduler.address]) == 0
    summary = capsys.readouterr().out
    assert f"{n_files - len(complete_before)} segmented, {len(complete_before)} already complete, 0 failed" in summary
    assert not list(out.glob(".*")), "temporary files left"
    assert all(json.loads(p.read_text())["status"] == "complete" for p in out.glob("*_labels.json"))
    assert main(["segment", str(inputs), "-o", str(tmp_path / "seg"), "--model", str(tiny_file), *FAST]) == 0
    expected, got = _labels(tmp_path / "seg"), _labels(out)
    assert sorted(got) == sorted(expected) and len(got) == n_files
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name])


def test_batch_measure_writes_each_files_cells_and_all_cells(cluster, tiny_file, usiigaci, tmp_path, capsys):
    import csv

    from napari_cell_unet.measure import measure_cells

    inputs = tmp_path / "in"
    inputs.mkdir()
    images = {}
    for index, name in enumerate(("set20", "set21", "set22")):
        images[f"f{index}"] = load_usiigaci_set(name)["image"][:96, :128]
        tifffile.imwrite(inputs / f"f{index}.tif", images[f"f{index}"], imagej=True,
                         resolution=(1 / 0.65, 1 / 0.65), metadata={"unit": "um"})
    out = tmp_path / "out"
    args = ["batch", str(inputs), "-o", str(out), "--model", str(tiny_file), *FAST, "--measure",
            "--scheduler", cluster.scheduler.address]

    def rows(path):
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))

    assert main(args) == 0
    assert "3 segmented, 0 already complete, 0 failed" in capsys.readouterr().out
    every = []
    for stem, image in images.items():
        labels = tifffile.imread(out / f"{stem}_labels.tif")
        expected = measure_cells(labels, image, scale=(0.65, 0.65), image_name=f"{stem}.tif")
        got = rows(out / f"{stem}_cells.csv")
        assert len(got) == len(expected["label"]) == len(np.unique(labels[labels > 0])) > 0
        assert list(got[0]) == ["image", "frame", *(c for c in expected if c != "image")]  # in µm: the pixel size
        assert {r["image"] for r in got} == {f"{stem}.tif"} and {r["frame"] for r in got} == {"0"}
        for column, values in expected.items():
            if column != "image":
                np.testing.assert_allclose([float(r[column]) for r in got], values, rtol=1e-5, atol=1e-9)
        sidecar = json.loads((out / f"{stem}_labels.json").read_text())
        assert sidecar["status"] == "complete" and sidecar["cells_csv"] == f"{stem}_cells.csv"
        every += got
    assert rows(out / "all_cells.csv") == every  # every file's rows, in input order
    assert not list(out.glob(".*"))

    # a rerun skips complete outputs and still combines their rows; a missing cells CSV is redone
    (out / "f1_cells.csv").unlink()
    (out / "all_cells.csv").unlink()
    stamp = (out / "f0_labels.tif").stat().st_mtime_ns
    assert main(args) == 0
    assert "1 segmented, 2 already complete, 0 failed" in capsys.readouterr().out
    assert (out / "f0_labels.tif").stat().st_mtime_ns == stamp
    assert rows(out / "f1_cells.csv") == [r for r in every if r["image"] == "f1.tif"]
    assert rows(out / "all_cells.csv") == every


def test_default_model_on_a_real_crop_matches_segment(cluster, usiigaci, tmp_path, capsys):
    image = tmp_path / "in" / "phase.tif"
    image.parent.mkdir()
    tifffile.imwrite(image, load_usiigaci_set("set20")["image"][:256, :256])
    assert main(["segment", str(image), "-o", str(tmp_path / "seg"), "--device", "cpu"]) == 0  # --diameter auto
    assert main(["batch", str(image), "-o", str(tmp_path / "batch"), "--device", "cpu",
                 "--scheduler", cluster.scheduler.address]) == 0
    expected = tifffile.imread(tmp_path / "seg" / "phase_labels.tif")
    assert expected.max() > 10  # the real model finds the real cells (27)
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "batch" / "phase_labels.tif"), expected)
    entry = _report(tmp_path / "batch")["files"][0]
    assert entry["cells"] == int(expected.max()) and 20 < entry["diameter"] < 80  # estimated (40 px)


def test_local_workers_share_the_gpus_out_and_a_given_device_overrides():
    assert [dist.local_worker_device("auto", index, 2) for index in range(5)] == \
        ["cuda:0", "cuda:1", "cuda:0", "cuda:1", "cuda:0"]
    assert dist.local_worker_device("auto", 7, 3) == "cuda:1"
    assert dist.local_worker_device("auto", 1, 0) == "auto"  # no GPU: the CPU (or MPS)
    assert dist.local_worker_device("cpu", 1, 2) == "cpu"
    assert dist.local_worker_device("cuda:0", 1, 2) == "cuda:0"


def _device_of_each_worker(client, device: str = "auto") -> dict:
    """{worker name: the device a task given `device` uses there}, asked of every worker."""
    workers = client.scheduler_info()["workers"]
    return {info["name"]: client.submit(dist.task_device, device, workers=[address], pure=False).result()
            for address, info in workers.items()}


def test_each_local_worker_takes_its_own_gpu_and_other_clusters_keep_theirs(monkeypatch):
    import torch
    from distributed import Client, LocalCluster

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # threads: the workers see the patched count
    client = dist.local_client(3, processes=False)
    try:
        assert _device_of_each_worker(client) == {0: "cuda:0", 1: "cuda:1", 2: "cuda:0"}
        assert _device_of_each_worker(client, "cpu") == {0: "cpu", 1: "cpu", 2: "cpu"}
    finally:
        dist.close_client(client)
    # a cluster cell-unet did not start (--scheduler): each worker uses its own visible GPU
    with LocalCluster(n_workers=2, processes=False, dashboard_address=":0") as cluster, Client(cluster) as other:
        assert set(_device_of_each_worker(other).values()) == {"auto"}


def test_chunk_tasks_use_the_given_torch_threads(tiny_file):
    import torch

    sha = dist.file_sha256(tiny_file)
    seen = []
    hook = dist.worker_model(str(tiny_file), sha).network.register_forward_hook(
        lambda *_: seen.append(torch.get_num_threads()))
    try:
        for threads in (1, 3):  # --threads reaches the chunks of --zarr-above images too
            probs = dist.ChunkPredictor(str(tiny_file), sha, "cpu", threads=threads)(np.zeros((64, 80), np.float32))
            assert probs.shape == (2, 64, 80) and set(seen) == {threads}
            seen.clear()
    finally:
        hook.remove()


def _auto_device() -> str:
    from napari_cell_unet.inference.devices import resolve_device

    return str(resolve_device(dist.task_device("auto")))


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks workers on a machine without a GPU")
def test_worker_processes_without_a_gpu_use_the_cpu(cluster):
    workers = cluster.scheduler_info()["workers"]
    assert {cluster.submit(_auto_device, workers=[address], pure=False).result() for address in workers} == {"cpu"}


def test_inputs_from_globs_lists_and_coco_files(tmp_path, usiigaci):
    from napari_cell_unet.io import write_labels_coco

    paths = _crops(tmp_path / "data", sets=("set20", "set21"), size=(32, 40))
    coco = tmp_path / "data" / "set20" / "annotations.json"
    write_labels_coco(coco, np.ones((2, 32, 40), np.uint16), image_names=["raw.tif", "gone.tif"])
    listing = tmp_path / "list.txt"
    listing.write_text("data/set21/raw.tif\n\n# comment\ndata/set2*/raw.tif\n")
    found = dist.collect_inputs([str(coco), str(listing)])
    assert [(p.resolve(), problem) for p, problem in found[:1]] == [(paths[0].resolve(), None)]
    assert found[1][0].name == "gone.tif" and "not found" in found[1][1]
    assert [p.resolve() for p, _ in found[2:]] == [paths[1].resolve()]  # no repeats
    with pytest.raises(dist.BatchInputError, match="matches no files"):
        dist.collect_inputs([str(tmp_path / "nothing*.tif")])


def test_cli_errors_are_one_line(tmp_path, capsys, monkeypatch):
    image = tmp_path / "a.tif"
    tifffile.imwrite(image, np.zeros((32, 32), np.uint16))
    assert main(["batch", str(tmp_path / "none*.tif"), "-o", str(tmp_path / "o")]) == 2
    assert capsys.readouterr().err.strip().endswith("matches no files")
    assert main(["batch", str(image), "-o", str(tmp_path / "o"), "--model", str(tmp_path / "x.safetensors")]) == 2
    assert "no such model file" in capsys.readouterr().err
    monkeypatch.setattr(dist, "CONNECT_TIMEOUT_S", 2)
    assert main(["batch", str(image), "-o", str(tmp_path / "o"), "--scheduler", "tcp://127.0.0.1:9"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "cannot reach the dask scheduler" in err


def test_a_huge_image_in_chunks_across_workers_matches_the_chunked_and_whole_image_results(cluster, tmp_path):
    import cloudpickle
    import zarr
    from test_batch import CHUNK, OVERLAP, _disc_image, _FakeModel, assert_discs_across_chunk_borders_keep_one_id
    from test_batch import _pointwise_probabilities as _pointwise

    from napari_cell_unet.inference import chunked
    from napari_cell_unet.inference.instances import instances_from_probabilities
    from napari_cell_unet.inference.normalize import percentile_range
    from napari_cell_unet.metrics import match_instances

    cloudpickle.register_pickle_by_value(sys.modules[_pointwise.__module__])  # the workers cannot import test modules
    image, truth = _disc_image(shape=(400, 460))
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64), compression="zlib")  # read back tile by tile on the workers
    result = dist.segment_huge(path, tmp_path / "slide_labels.ome.zarr", cluster, model=_FakeModel(),
                               chunk=CHUNK, overlap=OVERLAP, predict=_pointwise)
    root = zarr.open_group(str(result.output), mode="r")
    labels = np.asarray(root["0"])
    assert labels.shape == (400, 460) and root["0"].chunks == (CHUNK, CHUNK)
    assert [d["path"] for d in root.attrs["multiscales"][0]["datasets"]] == ["0", "1", "2"] == \
        [str(k) for k in range(result.levels)]
    np.testing.assert_array_equal(np.asarray(root["1"]), labels[::2, ::2])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial output left
    # napari opens it through the plugin's manifest: one lazy multiscale Labels layer
    import npe2

    from napari_cell_unet._reader import get_ome_zarr_reader

    manifest = npe2.PluginManifest.from_file(Path(dist.__file__).with_name("napari.yaml"))
    assert any(r.command == "napari-cell-unet.get_ome_zarr_reader" and r.accepts_directories
               for r in manifest.contributions.readers)
    [(data, meta, kind)] = get_ome_zarr_reader(str(result.output))(str(result.output))
    assert kind == "labels" and meta["multiscale"] and meta["name"] == "slide labels"
    assert [level.shape for level in data] == [(400, 460), (200, 230), (100, 115)]
    np.testing.assert_array_equal(np.asarray(data[0][:CHUNK + 10, :CHUNK + 10]), labels[:CHUNK + 10, :CHUNK + 10])

    # identical to chunked.iter_segment_dask in one process (same chunks, same renumbering) ...
    reference = result_of(chunked.iter_segment_dask(image, _FakeModel(), chunk=CHUNK, overlap=OVERLAP,
                                                    predict=_pointwise))
    np.testing.assert_array_equal(labels, reference)
    assert result.n_cells == int(labels.max()) == len(np.unique(labels)) - 1
    # ... and the same objects as the whole image segmented at once; discs across chunk borders keep one id
    lo, hi = percentile_range(image, 0.0, 100.0)
    probs = _pointwise((image - lo) / (hi - lo))
    whole = instances_from_probabilities(probs[0], probs[1], cell_threshold=0.5, border_threshold=0.5, min_size=0)
    assert match_instances(labels, whole, iou_threshold=0.98).tp == len(np.unique(whole)) - 1 == result.n_cells
    assert_discs_across_chunk_borders_keep_one_id(labels, truth)


@pytest.mark.gui
def test_the_ome_zarr_output_opens_in_a_napari_viewer_through_the_plugin(make_napari_viewer, tmp_path):
    import zarr
    from test_batch import CHUNK, OVERLAP, _disc_image, _FakeModel
    from test_batch import _pointwise_probabilities as _pointwise

    image, _ = _disc_image(shape=(400, 460))
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(64, 64))
    client = dist.local_client(1, processes=False)  # threads: the test module's predictor travels unpickled
    try:
        result = dist.segment_huge(path, tmp_path / "slide_labels.ome.zarr", client, model=_FakeModel(),
                                   chunk=CHUNK, overlap=OVERLAP, predict=_pointwise)
    finally:
        dist.close_client(client)
    viewer = make_napari_viewer()
    viewer.open(str(result.output), plugin="napari-cell-unet")
    [layer] = viewer.layers
    assert type(layer).__name__ == "Labels" and layer.multiscale and len(layer.data) == result.levels == 3
    assert not isinstance(layer.data[0], np.ndarray)  # lazy: read chunk by chunk as the canvas needs it
    written = np.asarray(zarr.open_group(str(result.output), mode="r")["0"])
    np.testing.assert_array_equal(np.asarray(layer.data[0]), written)
    assert len(np.unique(written)) - 1 == result.n_cells > 0


def test_batch_sends_huge_images_through_chunks_into_ome_zarr(cluster, tiny_file, usiigaci, tmp_path, capsys):
    import zarr

    from napari_cell_unet.inference import chunked
    from napari_cell_unet.model import load_model

    inputs = tmp_path / "in"
    inputs.mkdir()
    slide = load_usiigaci_set("set27")["image"][:1000, :900]
    tifffile.imwrite(inputs / "slide.tif", slide, tile=(256, 256), compression="zlib")
    tifffile.imwrite(inputs / "small.tif", slide[:64, :80])
    out = tmp_path / "out"
    args = ["batch", str(inputs), "-o", str(out), "--model", str(tiny_file), *FAST, "--zarr-above", "500000",
            "--chunk", "512", "--scheduler", cluster.scheduler.address]
    assert main(args) == 0
    assert "2 segmented" in capsys.readouterr().out
    assert (out / "small_labels.tif").is_file() and not (out / "slide_labels.tif").exists()
    labels = np.asarray(zarr.open_group(str(out / "slide_labels.ome.zarr"), mode="r")["0"])
    reference = result_of(chunked.iter_segment_dask(slide, load_model(tiny_file), chunk=512, overlap=128,
                                                    device="cpu", diameter=40.0))
    np.testing.assert_array_equal(labels, reference)  # the same chunked result as in one process
    sidecar = json.loads((out / "slide_labels.json").read_text())
    assert sidecar["status"] == "complete" and sidecar["n_cells"] == int(labels.max())
    assert main(args) == 0
    assert "0 segmented, 2 already complete" in capsys.readouterr().out


def _die_on_the_next_file():
    """Run on a worker: its next file kills the whole worker process (as a segfault or the OOM killer would)."""
    from napari_cell_unet import batch

    def die(*args, **kwargs):
        os._exit(1)

    batch._segment_file = die


def test_a_worker_that_dies_is_replaced_and_its_file_rerun(cluster, tiny_file, usiigaci, tmp_path):
    import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    paths = _crops(tmp_path / "in", sets=("set28", "set29"), size=(64, 80))
    pids = cluster.run(os.getpid)
    cluster.run(_die_on_the_next_file)  # on both workers
    report = result_of(dist.iter_batch([str(p) for p in paths], tmp_path / "out", cluster, model=tiny_file,
                                       diameter=None, device="cpu"))
    assert [r.status for r in report.records] == ["done", "done"], report.records
    assert set(cluster.run(os.getpid).values()).isdisjoint(pids.values())  # both workers were replaced
    assert sorted(p.name for p in (tmp_path / "out").glob("*_labels.tif")) == ["set28_raw_labels.tif",
                                                                            "set29_raw_labels.tif"]
