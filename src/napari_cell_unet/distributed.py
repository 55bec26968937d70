"""Whole experiments on dask.distributed (behind `cell-unet batch`): one labels TIFF per input, resumable.

The client plans the run: it expands the inputs (folders, globs, file lists, COCO files' images), names each
output as `cell-unet segment` does (`batch.output_paths`), skips inputs whose *complete* outputs exist, and
submits one task per remaining input. Each task runs on a worker exactly what `cell-unet segment` runs for that
file (`batch._segment_file`), so the labels are identical; the worker loads the model once per process
(`worker_model`) and reuses it for every file it gets.

Complete = a sidecar `<stem>_labels.json` next to `<stem>_labels.tif` with `"status": "complete"`, written
atomically *after* the TIFF (itself written atomically), recording the input (resolved path, size, mtime), the
settings that change labels (model file SHA-256, diameter option, thresholds, ...), the output's size, the
cells found, the diameter used, seconds and worker. A rerun skips an input when its sidecar is complete, matches
the input and the settings, and the TIFF has the recorded size. A task first writes a `"status": "running"`
sidecar: an output left by a killed run is recognised as this batch's own and redone, while a labels file that
`cell-unet batch` did not write (or wrote with other settings) is never replaced without `overwrite`.
Temporary files of a killed run (`.<name>.*.tmp`) are removed when the next run starts.

With `measure=True` each task also measures the labels it made (`measure.measure_labels_file`: against the
image, in µm when it has a pixel size) into `<stem>_cells.csv` beside them, written atomically before the
complete sidecar, which records it; a rerun with `measure` redoes (segments again) an input whose sidecar records
no cells CSV or whose CSV is gone or changed. The client then writes `OUTPUT_DIR/all_cells.csv` (atomic) with
every done or skipped input's rows, in input order. Huge images (`segment_huge`) are not measured.

A task that fails on its input (unreadable, wrong dimensions) returns a failed record with a one-line reason;
dask retries a task only when its worker dies (`retries`). No Qt, no napari.
"""

from __future__ import annotations

import csv
import glob
import hashlib
import io
import json
import os
import socket
import threading
import time
from collections.abc import Generator, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from distributed import WorkerPlugin

from ._progress import Progress
from .errors import CellUnetError

SIDECAR_SUFFIX = ".json"
REPORT_NAME = "batch_report"  # batch_report.json and batch_report.csv in the output folder
LIST_SUFFIXES = (".txt", ".lst", ".list")
DONE, SKIPPED, FAILED = "done", "skipped", "failed"
DEFAULT_RETRIES = 2
HUGE_CHUNK, HUGE_OVERLAP = 2048, 128  # segment_huge: chunk side and halo (px)
CONNECT_TIMEOUT_S = 15
# parameters of batch._segment_file / iter_segment that change the labels (part of the sidecar's settings)
LABEL_PARAMS = ("device", "precision", "tile_size", "min_size", "cell_threshold", "border_threshold", "tta")


class ClusterError(CellUnetError):
    """The dask cluster cannot be started or reached (one line naming the address and the problem)."""


class BatchInputError(CellUnetError, ValueError):
    """An input argument that names no images (empty glob, unreadable file list or COCO file)."""


@dataclass
class BatchRecord:
    """What happened to one input; one row of the report."""

    input: str
    output: str | None
    status: str  # done, skipped (complete output from an earlier run) or failed
    cells: int | None = None
    diameter: float | None = None  # cell diameter used (px); None = the model's own size
    seconds: float | None = None
    worker: str | None = None
    device: str | None = None  # the torch device the worker used (e.g. cpu, cuda:1)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status != FAILED


@dataclass
class BatchReport:
    records: list[BatchRecord]
    output_dir: Path
    seconds: float
    settings: dict[str, Any]
    workers: int | None = None
    dashboard: str | None = None
    files: dict[str, Path] = field(default_factory=dict)  # "json"/"csv" -> report files written

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.records)

    @property
    def failed(self) -> int:
        return self.count(FAILED)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed else 0


@dataclass
class _Job:
    input: Path
    output: Path
    identity: dict[str, Any]
    huge: bool = False  # split into chunks across the workers (segment_huge), output <stem>_labels.ome.zarr


# ---------------------------------------------------------------- inputs

def collect_inputs(items: Iterable[str | Path]) -> list[tuple[Path, str | None]]:
    """Every image named by `items`, in order, without repeats: files as given, folders as their images
    (`batch.expand_inputs`), globs (`*`, `?`, `[`), file lists (.txt/.lst/.list: one path, folder or glob a line,
    relative to the list's folder, `#` comments) and COCO .json files (their images, found as `read_coco` finds
    them). Returns (path, problem): problem is a one-line reason for an image named but missing (a COCO image
    not found), None otherwise. Raises `BatchInputError` for a glob that matches nothing or an unreadable list.
    """
    found: list[tuple[Path, str | None]] = []
    seen: set[str] = set()
    for path, problem in _expand(items, depth=0):
        key = str(path.resolve()) if problem is None else str(path)
        if key not in seen:
            seen.add(key)
            found.append((path, problem))
    return found


def _expand(items: Iterable[str | Path], depth: int) -> Iterator[tuple[Path, str | None]]:
    from .batch import expand_inputs

    for item in items:
        text = str(item)
        path = Path(text)
        if not path.exists() and any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise BatchInputError(f"{text}: matches no files")
            yield from _expand(matches, depth)
        elif path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            if depth > 4:
                raise BatchInputError(f"{path}: file lists nested too deeply")
            yield from _expand(_read_list(path), depth + 1)
        elif path.is_file() and path.suffix.lower() == ".json":
            yield from _coco_images(path)
        else:
            yield from ((p, None) for p in expand_inputs([path]))


def _read_list(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise BatchInputError(f"{path}: cannot read this file list ({exc})") from None
    entries = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    return [entry if Path(entry).is_absolute() else str(path.parent / entry) for entry in entries]


def _coco_images(path: Path) -> Iterator[tuple[Path, str | None]]:
    from .io import read_coco

    dataset = read_coco(path)  # CocoFormatError (one line) for a bad file
    for index in range(len(dataset)):
        image = dataset.image_path(index)
        if image is None:
            name = dataset.file_name(index)
            yield (path.parent / name, f"{path}: image {name!r} not found (searched "
                                       f"{', '.join(dataset.searched_folders)})")
        else:
            yield image, None


# ---------------------------------------------------------------- identity of inputs, settings and outputs

def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def model_file(model: str | Path | None) -> Path:
    """The model file a batch uses (the bundled default for None), checked to exist."""
    from .model import files

    if model is None:
        if not files.default_model_available():
            raise CellUnetError(f"{files.DEFAULT_MODEL_PATH}: the bundled default model is missing")
        return files.DEFAULT_MODEL_PATH
    if isinstance(model, str) and model in files.BUNDLED_MODELS and not Path(model).exists():
        path = files.bundled_model_path(model)
    else:
        path = Path(model)
    if not path.is_file():
        from .model import ModelFileError

        raise ModelFileError(f"{path}: no such model file")
    return path


def input_identity(path: Path) -> dict[str, Any]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def batch_settings(model_path: Path, diameter: Any, params: dict[str, Any]) -> dict[str, Any]:
    """What makes two runs' labels the same: the model's bytes, the diameter option and the label parameters."""
    return {"model_sha256": file_sha256(model_path), "diameter": diameter,
            **{key: params[key] for key in LABEL_PARAMS if params.get(key) is not None}}


ZARR_SUFFIX = ".ome.zarr"


def sidecar_path(output: Path) -> Path:
    """`<stem>_labels.json` for `<stem>_labels.tif` and `<stem>_labels.ome.zarr`."""
    if output.name.endswith(ZARR_SUFFIX):
        return output.with_name(output.name[:-len(ZARR_SUFFIX)] + SIDECAR_SUFFIX)
    return output.with_suffix(SIDECAR_SUFFIX)


def zarr_output(output: Path) -> Path:
    return output.with_name(output.with_suffix("").name + ZARR_SUFFIX)


def read_sidecar(output: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(sidecar_path(output).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_json(path: Path, data: Any) -> None:
    from .io._atomic import atomic_path

    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=1, default=str))


def remove_stale_temporaries(outputs: Iterable[Path]) -> list[Path]:
    """Temporary files (`.<name>.*.tmp`, see `io._atomic.atomic_path`) that a killed run left next to
    these outputs and their sidecars; removed and returned."""
    import shutil

    from .measure import cells_csv_path

    removed = []
    for output in outputs:
        names = [output.name, sidecar_path(output).name]
        if not output.name.endswith(ZARR_SUFFIX):
            names.append(cells_csv_path(output).name)
        for name in names:
            for stale in output.parent.glob(f".{glob.escape(name)}.*.tmp"):
                stale.unlink(missing_ok=True)
                removed.append(stale)
        if output.name.endswith(ZARR_SUFFIX):
            for stale in (output.with_name(f".{output.name}.partial"), output.with_name(f".{output.name}.raw")):
                if stale.exists():
                    shutil.rmtree(stale, ignore_errors=True)
                    removed.append(stale)
    return removed


def plan(files: Sequence[tuple[Path, str | None]], output_dir: Path, settings: dict[str, Any],
         overwrite: bool = False, huge_pixels: int | None = None,
         measure: bool = False) -> tuple[list[_Job], list[BatchRecord]]:
    """Split inputs into jobs to run and records already known (skipped: complete; failed: missing input,
    or an output this batch may not replace). With `huge_pixels`, 2-D inputs above it become chunked jobs
    writing `<stem>_labels.ome.zarr`. With `measure`, a TIFF output is complete only with its cells CSV."""
    from .batch import output_paths

    outputs = output_paths([path for path, _ in files], output_dir)
    remove_stale_temporaries(outputs)
    outputs = [zarr_output(output) if problem is None and _is_huge(path, huge_pixels) else output
               for (path, problem), output in zip(files, outputs)]
    remove_stale_temporaries(o for o in outputs if o.name.endswith(ZARR_SUFFIX))
    jobs, known = [], []
    for (path, problem), output in zip(files, outputs):
        if problem is None and not path.is_file():
            problem = f"{path}: file not found"
        if problem is not None:
            known.append(BatchRecord(str(path), None, FAILED, error=problem))
            continue
        identity = input_identity(path)
        sidecar = read_sidecar(output)
        state = _output_state(output, sidecar, identity, settings)
        if state == "complete" and measure and not _cells_csv_complete(output, sidecar):
            state = "ours"  # labels without their measurements: segmented and measured again
        if state == "complete" and not overwrite:
            known.append(BatchRecord(str(path), str(output), SKIPPED, cells=sidecar.get("n_cells"),
                                     diameter=sidecar.get("diameter"), seconds=sidecar.get("seconds"),
                                     worker=sidecar.get("worker"), device=sidecar.get("device")))
        elif state in ("absent", "complete", "ours") or overwrite:
            jobs.append(_Job(path, output, identity, huge=output.name.endswith(ZARR_SUFFIX)))
        else:
            known.append(BatchRecord(str(path), None, FAILED, error=f"{output}: {state}; --overwrite "
                                                                    f"(overwrite=True) replaces it"))
    return jobs, known


def _is_huge(path: Path, huge_pixels: int | None) -> bool:
    if huge_pixels is None or not path.is_file():
        return False
    from .io import image_shape

    try:
        shape = image_shape(path)
    except (CellUnetError, ValueError, OSError):
        return False  # the task reports it
    return len(shape) == 2 and shape[0] * shape[1] > huge_pixels


def _cells_csv_complete(output: Path, sidecar: dict) -> bool:
    from .measure import cells_csv_path

    if output.name.endswith(ZARR_SUFFIX):
        return True  # huge images are not measured
    path = cells_csv_path(output)
    return (sidecar.get("cells_csv") == path.name and path.is_file()
            and path.stat().st_size == sidecar.get("cells_csv_size"))


def _output_state(output: Path, sidecar: dict | None, identity: dict, settings: dict) -> str:
    if sidecar is None:
        return "exists, not written by cell-unet batch" if output.exists() else "absent"
    status = sidecar.get("status")
    if status == "running":
        return "ours"  # a run killed while writing it: redo
    if status != "complete":
        return "exists with an unreadable record"
    if sidecar.get("input") != identity:
        return "exists for another version of the input (path, size or modification time differ)"
    if sidecar.get("settings") != settings:
        return "exists from a run with other settings (model, diameter or thresholds)"
    if output.name.endswith(ZARR_SUFFIX):
        return "complete" if output.is_dir() else "ours"
    if not output.is_file() or output.stat().st_size != sidecar.get("output_size"):
        return "ours"  # recorded complete but the file is gone or changed: redo
    return "complete"


# ---------------------------------------------------------------- on the workers

_MODELS: dict[tuple[str, str], Any] = {}
_MODELS_LOCK = threading.Lock()
_MODEL_LOADS = [0]


def worker_model(path: str, sha256: str) -> Any:
    """The model of this file, loaded once per process (keyed by path and content hash)."""
    from .model import load_model

    key = (str(path), sha256)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = load_model(path)
            _MODEL_LOADS[0] += 1
        return _MODELS[key]


def model_loads() -> int:
    """How many times this process has read a model file for batch tasks (for tests: once per worker)."""
    return _MODEL_LOADS[0]


GPU_PER_WORKER_PLUGIN = "cell-unet-gpu-per-worker"


def local_worker_device(device: str, index: int, gpu_count: int) -> str:
    """The device worker `index` of a local cluster uses on a machine with `gpu_count` GPUs: "auto" becomes
    GPU (index mod gpu_count), so the workers share the GPUs out instead of all using the first; "auto" stays
    "auto" (the CPU, or Apple MPS) without GPUs; any other device is kept (`--device` overrides)."""
    if str(device).strip().lower() != "auto" or gpu_count < 1:
        return device
    return f"cuda:{index % gpu_count}"


class GpuPerWorker(WorkerPlugin):
    """Marks the workers of a cluster started by `local_client` (a dask worker plugin, kept by replaced workers):
    their tasks spread "auto" over the GPUs by worker index (`local_worker_device`). Workers of an existing
    cluster have no mark and use their own visible GPU (their deployment sets CUDA_VISIBLE_DEVICES)."""

    name = GPU_PER_WORKER_PLUGIN
    idempotent = True


def task_device(device: str) -> str:
    """The device a task uses on this worker (see `GpuPerWorker`); `device` itself off a worker."""
    try:
        from distributed import get_worker

        worker = get_worker()
    except (ImportError, ValueError):
        return device
    if GPU_PER_WORKER_PLUGIN not in worker.plugins or not isinstance(worker.name, int):
        return device
    import torch

    return local_worker_device(device, worker.name, torch.cuda.device_count())


def worker_name() -> str:
    try:
        from distributed import get_worker

        worker = get_worker()
        return str(worker.name if worker.name is not None else worker.address)
    except (ImportError, ValueError):
        return f"{socket.gethostname()}:{os.getpid()}"


def segment_task(input_path: str, output: str, identity: dict, settings: dict, model_path: str,
                 params: dict, measure: bool = False) -> BatchRecord:
    """Segment one input exactly as `cell-unet segment` does (with `measure`, also write its `<stem>_cells.csv`
    as `cell-unet segment --measure` does) and mark its output complete (runs on a worker)."""
    from .batch import LARGE_IMAGE_PIXELS, FileResult, _segment_file
    from .inference.devices import resolve_device

    path, target = Path(input_path), Path(output)
    name = worker_name()
    started = time.perf_counter()
    device = None
    try:
        device = str(resolve_device(task_device(params.get("device", "auto"))))
        params = {**params, "device": device}
        model = worker_model(model_path, settings["model_sha256"])
        _write_json(sidecar_path(target), {"status": "running", "input": identity, "settings": settings,
                                           "worker": name})
        result = None
        for item in _segment_file(path, target, model, True, LARGE_IMAGE_PIXELS, params, 0, 1):
            if isinstance(item, FileResult):
                result = item
        if result is None or not result.ok:
            sidecar_path(target).unlink(missing_ok=True)
            error = result.error if result is not None else f"{path}: segmentation returned no result"
            return BatchRecord(input_path, None, FAILED, seconds=time.perf_counter() - started, worker=name,
                               device=device, error=error)
        cells_csv = {}
        if measure:
            from .measure import cells_csv_path, measure_labels_file

            measure_labels_file(path, target, overwrite=True)  # atomic; the sidecar still says "running"
            csv_path = cells_csv_path(target)
            cells_csv = {"cells_csv": csv_path.name, "cells_csv_size": csv_path.stat().st_size}
        seconds = time.perf_counter() - started
        _write_json(sidecar_path(target), {
            "status": "complete", "input": identity, "settings": settings, "output": target.name,
            "output_size": target.stat().st_size, **cells_csv, "n_cells": result.n_cells,
            "diameter": result.diameter, "seconds": round(seconds, 3), "worker": name, "device": device,
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return BatchRecord(input_path, output, DONE, cells=result.n_cells, diameter=result.diameter,
                           seconds=seconds, worker=name, device=device)
    except (CellUnetError, ValueError, OSError) as exc:
        return BatchRecord(input_path, None, FAILED, seconds=time.perf_counter() - started, worker=name,
                           device=device, error=_one_line(exc, path))
    except Exception as exc:  # a bug: reported for this input, the batch goes on
        return BatchRecord(input_path, None, FAILED, seconds=time.perf_counter() - started, worker=name,
                           device=device, error=f"{path}: unexpected error (please report it): {type(exc).__name__}: "
                                 f"{_one_line(exc, None)}")


def _huge_job(job: _Job, client: Any, settings: dict, model_path: Path, diameter: Any, chunk: int,
              params: dict) -> BatchRecord:
    started = time.perf_counter()
    name = f"{len(client.scheduler_info().get('workers', {}))} workers (chunks)"
    options = {key: params[key] for key in ("device", "tile_size", "threads", "min_size", "cell_threshold",
                                            "border_threshold") if params.get(key) is not None}
    try:
        _write_json(sidecar_path(job.output), {"status": "running", "input": job.identity, "settings": settings})
        result = segment_huge(job.input, job.output, client, model=model_path, chunk=chunk, diameter=diameter,
                              overwrite=True, **options)
        seconds = time.perf_counter() - started
        _write_json(sidecar_path(job.output), {
            "status": "complete", "input": job.identity, "settings": settings, "output": job.output.name,
            "output_size": None, "n_cells": result.n_cells, "diameter": result.diameter, "seconds": round(seconds, 3),
            "worker": name, "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")})
        return BatchRecord(str(job.input), str(job.output), DONE, cells=result.n_cells, diameter=result.diameter,
                           seconds=seconds, worker=name)
    except (CellUnetError, ValueError, OSError) as exc:
        sidecar_path(job.output).unlink(missing_ok=True)
        return BatchRecord(str(job.input), None, FAILED, seconds=time.perf_counter() - started, worker=name,
                           error=_one_line(exc, job.input))


def _one_line(exc: BaseException, path: Path | None) -> str:
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else type(exc).__name__
    return text if path is None or str(path) in text else f"{path}: {text}"


# ---------------------------------------------------------------- the cluster

def local_client(workers: int, threads_per_worker: int = 1, processes: bool = True,
                 retries: int = DEFAULT_RETRIES, **cluster_options: Any):
    """A `distributed.Client` on a new `LocalCluster` of `workers` workers (processes unless `processes=False`);
    the dashboard on a free port. A worker that dies is replaced by its nanny and its task rerun elsewhere, up to
    `retries` times (the scheduler's `allowed-failures`). With device "auto", worker i uses GPU (i mod GPUs)
    (`GpuPerWorker`). Closing the client closes the cluster."""
    import logging

    import dask

    Client, LocalCluster = _distributed()
    options = {"n_workers": workers, "threads_per_worker": threads_per_worker, "processes": processes,
               "dashboard_address": ":0", "silence_logs": logging.ERROR, **cluster_options}
    try:
        with dask.config.set({"distributed.scheduler.allowed-failures": int(retries)}):
            cluster = LocalCluster(**options)
    except Exception as exc:
        raise ClusterError(f"cannot start a local dask cluster of {workers} workers "
                           f"({type(exc).__name__}: {_one_line(exc, None)})") from None
    client = Client(cluster)
    client._cell_unet_cluster = cluster  # closed with the client (see close_client)
    client.register_plugin(GpuPerWorker())
    return client


def connect(address: str, timeout: float | None = None):
    """A client of the running dask scheduler at `address` (e.g. tcp://host:8786)."""
    Client, _ = _distributed()
    try:
        return Client(address, timeout=CONNECT_TIMEOUT_S if timeout is None else timeout)
    except (OSError, TimeoutError) as exc:
        raise ClusterError(f"{address}: cannot reach the dask scheduler ({_one_line(exc, None)})") from None
    except ValueError as exc:
        raise ClusterError(f"{address}: not a dask scheduler address ({_one_line(exc, None)})") from None


def close_client(client: Any) -> None:
    cluster = getattr(client, "_cell_unet_cluster", None)
    client.close()
    if cluster is not None:
        cluster.close()


def dashboard_link(client: Any) -> str | None:
    try:
        if "dashboard" not in client.scheduler_info().get("services", {}):
            return None
        return client.dashboard_link
    except Exception:  # no dashboard (bokeh missing) is not an error
        return None


def _distributed():
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ClusterError("dask.distributed is not installed (pip install distributed)") from None
    return Client, LocalCluster


# ---------------------------------------------------------------- the batch

def iter_batch(inputs: Iterable[str | Path], output_dir: str | Path, client: Any, *, model: str | Path | None = None,
               diameter: float | str | None = "auto", overwrite: bool = False, retries: int = DEFAULT_RETRIES,
               threads: int | None = None, files: Sequence[tuple[Path, str | None]] | None = None,
               huge_pixels: int | None = None, chunk: int = HUGE_CHUNK, measure: bool = False,
               **params: Any) -> Generator[Progress | BatchRecord, None, BatchReport]:
    """Segment every input on `client`'s workers into `output_dir`; yield `Progress(0, inputs, ...)` once
    planned and a `BatchRecord` per input (those known
    before any work first, then as tasks complete); returns the `BatchReport`, also written as
    `batch_report.json` and `.csv` in `output_dir`. `threads`: torch threads per task (None: the worker's
    cores). `client`: a `distributed.Client`, or a function returning one, called only when some input needs
    work (a rerun with every output complete starts no cluster). `files`: `collect_inputs(inputs)` when already
    computed. `huge_pixels`: 2-D inputs with more pixels go through `segment_huge` (chunks of `chunk` pixels
    across all workers) into `<stem>_labels.ome.zarr`; None (default): every input is one task writing a TIFF,
    as `cell-unet segment` does. Other parameters as for `cell-unet segment` (device, thresholds, tile_size, ...).
    `retries`: reruns of a task that raised (a worker that dies is governed by the scheduler's
    `allowed-failures`; `local_client(retries=...)` sets it). Closing the generator cancels the remaining tasks.
    `measure`: each TIFF output also gets `<stem>_cells.csv` (one row per cell) and the report's
    `files["cells"]` is `output_dir/all_cells.csv` with the rows of every done or skipped input (huge images,
    written as OME-Zarr, are not measured).
    """
    from distributed import as_completed

    from .io._atomic import check_output_folder

    started = time.perf_counter()
    output_dir = check_output_folder(output_dir)
    if files is None:
        files = collect_inputs([inputs] if isinstance(inputs, (str, Path)) else inputs)
    if not files:
        raise BatchInputError("no image files in the given inputs")
    path = model_file(model)
    params = {key: value for key, value in params.items() if value is not None}
    settings = batch_settings(path, diameter, params)
    if huge_pixels is not None:
        settings["chunked"] = {"above_pixels": int(huge_pixels), "chunk": int(chunk), "overlap": HUGE_OVERLAP}
    task_params = {**params, "diameter": diameter, **({"threads": threads} if threads else {})}
    jobs, records = plan(files, output_dir, settings, overwrite, huge_pixels, measure)
    skipped = sum(r.status == SKIPPED for r in records)
    yield Progress(0, len(files), f"{len(jobs)} to segment, {skipped} already complete")
    yield from records
    futures = {}
    if jobs and not hasattr(client, "submit"):
        client = client()
    for number, job in enumerate(jobs):
        if job.huge:
            continue
        future = client.submit(segment_task, str(job.input), str(job.output), job.identity, settings, str(path),
                               task_params, measure, retries=retries, pure=False,
                               key=f"cell-unet-segment-{number}-{job.input.name}-{time.time_ns()}")
        futures[future] = job
    try:
        for job in (job for job in jobs if job.huge):  # each across all workers, the small ones alongside
            record = _huge_job(job, client, settings, path, diameter, chunk, task_params)
            records.append(record)
            yield record
        for future in as_completed(futures):
            job = futures[future]
            try:
                record = future.result()
            except Exception as exc:  # the worker died on every try (KilledWorker), or the task was cancelled
                record = BatchRecord(str(job.input), None, FAILED,
                                     error=f"{job.input}: worker lost while segmenting it, on every try "
                                           f"({type(exc).__name__}: {_one_line(exc, None)})")
            records.append(record)
            yield record
    finally:
        if futures:
            client.cancel([f for f in futures if not f.done()])
    order = {str(path): index for index, (path, _) in enumerate(files)}
    records.sort(key=lambda r: order.get(r.input, len(order)))
    started_client = hasattr(client, "submit")
    report = BatchReport(records, output_dir, time.perf_counter() - started, settings,
                         workers=len(client.scheduler_info().get("workers", {})) if started_client else 0,
                         dashboard=dashboard_link(client) if started_client else None)
    report.files = write_report(report, str(path))
    if measure:
        combined = write_all_cells(report)
        if combined is not None:
            report.files["cells"] = combined
    return report


def write_all_cells(report: BatchReport) -> Path | None:
    """`all_cells.csv` in the output folder: the `<stem>_cells.csv` rows of every done or skipped TIFF output, in
    input order (as `cell-unet segment --measure` writes it); None when there is none."""
    from .measure import ALL_CELLS_CSV, cells_csv_path, read_cells_csv, write_combined

    paths = [cells_csv_path(Path(r.output)) for r in report.records
             if r.ok and r.output and not r.output.endswith(ZARR_SUFFIX)]
    tables = [table for table in (read_cells_csv(p) for p in paths if p.is_file()) if table]
    if not tables:
        return None
    return write_combined(tables, report.output_dir / ALL_CELLS_CSV)


def write_report(report: BatchReport, model: str | None = None) -> dict[str, Path]:
    """`batch_report.json` (summary and one entry per input) and `batch_report.csv` (one row per input)."""
    base = report.output_dir / REPORT_NAME
    rows = [asdict(record) for record in report.records]
    summary = {"inputs": len(report.records), DONE: report.count(DONE), SKIPPED: report.count(SKIPPED),
               FAILED: report.failed, "cells": sum(r.cells or 0 for r in report.records if r.ok),
               "seconds": round(report.seconds, 3), "workers": report.workers}
    _write_json(base.with_suffix(".json"), {"summary": summary, "model": model, "settings": report.settings,
                                            "output_dir": str(report.output_dir), "files": rows})
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(BatchRecord.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    from .io._atomic import atomic_path

    with atomic_path(base.with_suffix(".csv"), overwrite=True) as tmp:
        tmp.write_text(text.getvalue())
    return {"json": base.with_suffix(".json"), "csv": base.with_suffix(".csv")}


# ---------------------------------------------------------------- one huge image across the cluster

_OPEN_ARRAYS: dict[str, Any] = {}


class LazyRegions:
    """A 2-D image file (TIFF/OME-TIFF through `tifffile.imread(aszarr=True)`, or (OME-)Zarr) that reads only the
    regions asked for. Picklable: a worker reopens the file by path (once per process), so
    `dask.array.from_array(LazyRegions(path), chunks)` reads each chunk on the worker that needs it."""

    def __init__(self, path: str | Path):
        self.path = str(path)
        array = self._array()
        self.shape = tuple(int(n) for n in array.shape if n != 1)
        self._index = tuple(slice(None) if n != 1 else 0 for n in array.shape)
        self.dtype = np.dtype(array.dtype)
        self.ndim = len(self.shape)
        if self.ndim != 2:
            from .io import ImageFileError

            raise ImageFileError(Path(path), f"chunked segmentation needs a 2-D image, got shape {array.shape}")

    def _array(self):
        if self.path not in _OPEN_ARRAYS:
            _OPEN_ARRAYS[self.path] = _open_zarr_like(Path(self.path))
        return _OPEN_ARRAYS[self.path]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        key = list(key) + [slice(None)] * (2 - len(key))
        full = [item if item == 0 else key.pop(0) for item in self._index]
        return np.asarray(self._array()[tuple(full)])


def _open_zarr_like(path: Path):
    import zarr

    from .io import ImageFileError

    if not path.exists():
        raise ImageFileError(path, "file not found")
    try:
        if path.is_dir():
            node = zarr.open(str(path), mode="r")
        else:
            import tifffile

            node = zarr.open(tifffile.imread(path, aszarr=True), mode="r")
        if isinstance(node, zarr.Group):  # multiscale: the full resolution
            datasets = node.attrs.get("multiscales", [{}])[0].get("datasets", [{"path": "0"}])
            node = node[datasets[0]["path"]]
        return node
    except Exception as exc:
        raise ImageFileError(path, f"cannot read it chunk by chunk ({type(exc).__name__}: "
                                   f"{_one_line(exc, None)})") from None


class ChunkPredictor:
    """Globally normalised chunk -> (2, h, w) probabilities with the model that `worker_model` keeps on each
    worker (read once per process); picklable, so the task graph carries a file name instead of the weights."""

    def __init__(self, model_path: str, sha256: str, device: str = "auto", tile_size: int | None = None,
                 threads: int | None = None):
        self.model_path, self.sha256, self.device, self.tile_size = str(model_path), sha256, device, tile_size
        self.threads = threads

    def __call__(self, normalized: np.ndarray) -> np.ndarray:
        from .inference.chunked import model_predictor
        from .inference.devices import resolve_device

        model = worker_model(self.model_path, self.sha256)
        device = resolve_device(task_device(self.device))
        return model_predictor(model, device, self.tile_size, self.threads)(normalized)


@dataclass
class HugeResult:
    output: Path
    shape: tuple[int, int]
    n_cells: int
    diameter: float | None
    seconds: float
    levels: int


def segment_huge(path: str | Path, output: str | Path, client: Any, *, model: str | Path | None = None,
                 chunk: int = HUGE_CHUNK, overlap: int = HUGE_OVERLAP, diameter: float | str | None = None,
                 device: str = "auto", tile_size: int | None = None, threads: int | None = None,
                 overwrite: bool = False, levels: int | None = None, predict: Any = None, **params: Any) -> HugeResult:
    """Segment one huge 2-D image (TIFF/OME-TIFF read tile by tile, or OME-Zarr) on `client`'s workers into an
    OME-Zarr (NGFF 0.4) labels pyramid at `output`: level 0 chunked `chunk` x `chunk`, then x2 downsampled
    levels (nearest) until the smallest fits one chunk (or `levels` levels).

    Builds on `inference.chunked.segment_dask`: each chunk is predicted with `overlap` pixels of context and
    labelled on the stitched probabilities around it, and named by a position key, so a cell crossing chunk
    borders keeps one id.
    Here each chunk is a task on any worker, which reads its region of the file and uses its own copy of the
    model (`ChunkPredictor`), and writes its labels straight into its zarr chunk; a second distributed pass
    renumbers the ids 1..N. Memory per worker is a few chunks; the client holds the sorted cell ids only. The
    result is written next to `output` and renamed into place when complete. `predict`: a picklable stand-in
    for the model (tests). `threads`: torch threads per chunk task (None: the worker's cores, as `--threads`).
    Other parameters as for `segment_dask`.
    """
    import shutil

    import dask
    import dask.array as da
    import zarr

    from .inference.chunked import central_diameter, segment_dask
    from .errors import OutputExistsError
    from .io._atomic import check_output_folder
    from .model import load_model

    started = time.perf_counter()
    output = Path(output)
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: already exists (--overwrite, or overwrite=True, replaces it)")
    check_output_folder(output.parent)
    regions = LazyRegions(path)
    height, width = regions.shape
    chunk = int(chunk)
    if model is not None and hasattr(model, "metadata"):  # a model object (with `predict`: a stand-in's metadata)
        model_object = model
        if predict is None:
            raise ValueError("segment_huge needs a model file (or a picklable `predict`) to send to the workers")
    else:
        model_path = model_file(model)
        model_object = load_model(model_path)  # its metadata: thresholds, cell size
        if predict is None:
            predict = ChunkPredictor(str(model_path), file_sha256(model_path), device, tile_size, threads)
    partial, raw = output.with_name(f".{output.name}.partial"), output.with_name(f".{output.name}.raw")
    for stale in (partial, raw):
        shutil.rmtree(stale, ignore_errors=True)
    try:
        with dask.config.set(scheduler=client.get):
            source = da.from_array(regions, chunks=(chunk, chunk), asarray=False, fancy=False)
            if diameter == "auto":
                diameter = central_diameter(source, model_object, device)
            labels = segment_dask(source, model_object, chunk, overlap, device=device, diameter=diameter,
                                  predict=predict, **params).rechunk((chunk, chunk))  # zarr: regular chunks
            keyed = zarr.create_array(str(raw), shape=(height, width), chunks=(chunk, chunk), dtype=labels.dtype,
                                      fill_value=0, zarr_format=2)
            da.store(labels, keyed, lock=False)
            stored = da.from_zarr(keyed)
            uniques = dask.compute(*[dask.delayed(np.unique)(block) for block in stored.to_delayed().ravel()])
            ids = np.unique(np.concatenate(uniques))
            ids = ids[ids > 0]
            from .io import smallest_label_dtype

            dtype = smallest_label_dtype(max(int(ids.size), 255))
            root = zarr.open_group(str(partial), mode="w", zarr_format=2)
            level = root.create_array("0", shape=(height, width), chunks=(chunk, chunk), dtype=dtype, fill_value=0)
            da.store(stored.map_blocks(_renumber, ids, dtype, dtype=dtype), level, lock=False)
            n_levels = 1
            while (levels is None and max(level.shape) > chunk) or (levels is not None and n_levels < levels):
                smaller = da.from_zarr(level)[::2, ::2].rechunk((chunk, chunk))
                level = root.create_array(str(n_levels), shape=smaller.shape, chunks=(chunk, chunk), dtype=dtype,
                                          fill_value=0)
                da.store(smaller, level, lock=False)
                n_levels += 1
        root.attrs["multiscales"] = [{
            "version": "0.4", "name": f"{Path(path).name} labels",
            "axes": [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}],
            "datasets": [{"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [2.0**k, 2.0**k]}]}
                         for k in range(n_levels)],
            "metadata": {"method": "nearest (every second pixel)", "source": str(path)}}]
        root.attrs["image-label"] = {"version": "0.4", "source": {"image": str(path)}}
        if output.exists():
            shutil.rmtree(output) if output.is_dir() else output.unlink()
        os.replace(partial, output)
    finally:
        shutil.rmtree(raw, ignore_errors=True)
        shutil.rmtree(partial, ignore_errors=True)
    return HugeResult(output, (height, width), int(ids.size), None if diameter is None else float(diameter),
                      time.perf_counter() - started, n_levels)


def _renumber(block: np.ndarray, ids: np.ndarray, dtype: np.dtype) -> np.ndarray:
    return np.where(block > 0, np.searchsorted(ids, block) + 1, 0).astype(dtype)
