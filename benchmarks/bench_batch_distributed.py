"""`cell-unet batch` (dask.distributed, 1 and 2 local worker processes) vs `cell-unet segment` on the same files.

Usage:
  python benchmarks/bench_batch_distributed.py [--files 4] [--size 384] [--model PATH] [--diameter auto]
  python benchmarks/bench_batch_distributed.py --huge 10000,20000 --chunk 2048 --diameter 50 [--model PATH]
      [--workers 2] [--tmp /tmp]

The inputs are crops (--size x --size) of real Usiigaci phase-contrast frames from ../shared/data, written to a
temporary folder. Each command runs as a fresh process, end to end (start-up, cluster start, model load,
writing labels, report), cold rerun each time into an empty output folder; files/s = files / wall seconds. Also:
the summed per-file task seconds from batch_report.json (work done on the workers without the cluster start),
and a rerun of the finished batch (everything skipped: the cost of resuming). Labels of every run are checked
to equal `cell-unet segment`'s. Prints a Markdown table and the CPU model.

--huge: one mosaic per side (a grid of the 40 real Usiigaci frames, side x side, written strip by strip as an
uncompressed 512-px tiled TIFF in --tmp) through `distributed.segment_huge` (what `cell-unet batch --zarr-above`
runs) on a fresh LocalCluster of --workers processes: total seconds, cells, and each worker's peak RSS (ru_maxrss,
the kernel's high-water mark), which should stay flat as the image grows (memory bounded by the chunk, not the
image). --stand-in replaces the network by a cheap texture filter (`TextureStandIn`) to measure everything
else at sizes the network would take hours for on a small CPU. --diameter: a number (50 = the bundled model's own cell size: no zoom), "model" or "auto".
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
DATA = Path(os.environ.get("CELL_UNET_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
SETS = ("set20", "set21", "set22", "set24", "set25", "set26", "set27", "set28")


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown CPU"
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return f"{fields.get('Model name', '?').strip()}, {fields.get('CPU(s)', '?').strip()} CPUs"


def cli(*args: str) -> float:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")])}
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "napari_cell_unet.cli", *args, "--quiet"], env=env, check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def labels(folder: Path) -> dict[str, np.ndarray]:
    import tifffile

    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*_labels.tif"))}


def _peak_rss_mb() -> float:
    """This process's peak resident memory (the kernel's high-water mark: no spike between samples is missed)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def usiigaci_frames() -> list[np.ndarray]:
    import tifffile

    return [tifffile.imread(path) for path in sorted((DATA / "usiigaci_phase").glob("set*/raw.tif"))]


def write_mosaic(path: Path, side: int, frames: list[np.ndarray], tile: int = 512) -> None:
    """A side x side tiled TIFF (uncompressed, `tile` px tiles): a grid of real Usiigaci frames, a different frame
    in each cell of the grid (cycling through the sets), written one strip of tiles at a time (never whole in
    memory)."""
    import tifffile

    frame_h, frame_w = frames[0].shape
    grid_w = -(-side // frame_w)

    def frame_strip(top: int) -> np.ndarray:
        rows = np.arange(top, min(top + tile, side))
        strip = np.empty((tile, grid_w * frame_w), np.uint16)
        strip[len(rows):] = 0
        for column in range(grid_w):
            for grid_row in np.unique(rows // frame_h):
                inside = rows // frame_h == grid_row
                frame = frames[(int(grid_row) * grid_w + column) % len(frames)]
                strip[np.flatnonzero(inside), column * frame_w:(column + 1) * frame_w] = frame[rows[inside] % frame_h]
        return strip[:, :side]

    def tiles():
        for top in range(0, side, tile):
            strip = frame_strip(top)
            for left in range(0, side, tile):
                block = np.zeros((tile, tile), np.uint16)
                part = strip[:, left:left + tile]
                block[:, :part.shape[1]] = part
                yield block

    tifffile.imwrite(path, tiles(), shape=(side, side), dtype=np.uint16, tile=(tile, tile))


class TextureStandIn:
    """--stand-in: a cheap stand-in for the network (for runs the network would take hours for on this CPU):
    cell probability rises with the local texture of the phase-contrast image (smoothed gradient magnitude), the
    border probability with the edges of that map. Objects are cell-sized blobs (tens per megapixel on Usiigaci),
    not validated cells: it exercises every other step (reading, halo, labelling, ids, writing) at full size."""

    def __call__(self, normalized: np.ndarray) -> np.ndarray:
        from scipy import ndimage

        image = np.asarray(normalized, np.float32)
        texture = ndimage.gaussian_filter(np.hypot(ndimage.sobel(image, 0), ndimage.sobel(image, 1)), 6)
        cell = np.clip((texture - 0.25) / 0.1 + 0.5, 0, 1)
        border = np.clip(ndimage.gaussian_gradient_magnitude(cell, 3) * 3, 0, 1)
        return np.stack([cell, border]).astype(np.float32)


def huge(sides: list[int], chunk: int, workers: int, model: str | None, diameter: str, folder: str | None,
         stand_in: bool = False) -> None:
    sys.path.insert(0, str(SRC))
    from napari_cell_unet import distributed as dist
    from napari_cell_unet.inference.devices import cpu_threads

    threads = max(1, cpu_threads() // workers)  # as cell-unet batch divides the cores
    diameter_value = None if diameter == "model" else (diameter if diameter == "auto" else float(diameter))
    frames = usiigaci_frames()
    print(f"CPU: {cpu_model()}; --chunk {chunk}, {workers} worker processes ({threads} torch thread{'s' * (threads > 1)} each), --diameter "
          f"{diameter}, {model or 'bundled model'}{' (thresholds only: --stand-in predicts)' if stand_in else ''}; mosaic of {len(frames)} Usiigaci frames; load average at start "
          f"(1/5/15 min) {', '.join(f'{n:.1f}' for n in os.getloadavg())}\n")
    print("| image | seconds | MP/s | cells | peak RSS per worker (MB) | client peak RSS (MB) | pyramid levels | "
          "load avg (5 min) after |")
    print("|---|---:|---:|---:|---|---:|---:|---:|", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_huge_", dir=folder) as tmp:
        for side in sides:
            path = Path(tmp) / f"mosaic{side}.tif"
            write_mosaic(path, side, frames)
            client = dist.local_client(workers, retries=0)
            try:
                client.run(_peak_rss_mb)  # workers started
                result = dist.segment_huge(path, Path(tmp) / f"mosaic{side}_labels.ome.zarr", client, model=model,
                                           chunk=chunk, diameter=diameter_value, device="cpu", threads=threads,
                                           predict=TextureStandIn() if stand_in else None)
                peaks = sorted(client.run(_peak_rss_mb).values())
            finally:
                dist.close_client(client)
            path.unlink()
            print(f"| {side:,}x{side:,} | {result.seconds:.0f} | {side * side / 1e6 / result.seconds:.3f} | "
                  f"{result.n_cells:,} | {', '.join(f'{p:.0f}' for p in peaks)} | {_peak_rss_mb():.0f} | "
                  f"{result.levels} | {os.getloadavg()[1]:.1f} |", flush=True)


def seams(sets: list[str], chunk: int, model: str | None) -> None:
    """The measured difference at chunk seams: each real frame segmented whole (`segment`) and in chunks of
    `chunk` px with the huge-image path's 128-px context (`inference.iter_segment_dask`, which `segment_huge` equals),
    the bundled model at its own cell size on the CPU."""
    import tifffile

    sys.path.insert(0, str(SRC))
    from napari_cell_unet import segment
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.distributed import HUGE_OVERLAP
    from napari_cell_unet.inference import iter_segment_dask
    from napari_cell_unet.inference.devices import cpu_threads
    from napari_cell_unet.metrics import match_instances
    from napari_cell_unet.model import load_model
    from napari_cell_unet.model.files import DEFAULT_MODEL_PATH

    network = load_model(model or DEFAULT_MODEL_PATH)
    print(f"CPU: {cpu_model()}; chunks of {chunk} px with {HUGE_OVERLAP} px of context vs the whole frame, "
          f"{model or 'bundled model'} at its own cell size, {cpu_threads()} threads; load average at start "
          f"{os.getloadavg()[1]:.1f}\n")
    print("| frame | cells whole | cells chunked | F1@0.5 | F1@0.9 | mean IoU of matches | fg/bg pixels differing | "
          "of them within 32 px of a seam |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for name in sets:
        image = tifffile.imread(DATA / "usiigaci_phase" / name / "raw.tif")
        whole = segment(image, network, device="cpu", diameter=None)
        chunked = result_of(iter_segment_dask(image, network, chunk=chunk, overlap=HUGE_OVERLAP, device="cpu",
                                              diameter=None))
        loose, strict = match_instances(chunked, whole, 0.5), match_instances(chunked, whole, 0.9)
        differ = (chunked > 0) != (whole > 0)
        lines = np.zeros(image.shape, bool)
        for axis in (0, 1):
            for seam in range(chunk, image.shape[axis], chunk):
                index = [slice(None), slice(None)]
                index[axis] = slice(max(0, seam - 32), seam + 32)
                lines[tuple(index)] = True
        print(f"| {name} | {whole.max()} | {chunked.max()} | {loose.f1:.3f} | {strict.f1:.3f} | "
              f"{loose.matched_ious.mean():.3f} | {differ.mean():.3%} | "
              f"{(differ & lines).sum() / max(1, differ.sum()):.0%} |", flush=True)


def main() -> None:
    import tifffile

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--model", default=None)
    parser.add_argument("--diameter", default="auto")
    parser.add_argument("--huge", default=None, help="comma-separated image sides for the huge-image run")
    parser.add_argument("--chunk", type=int, default=1024)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--stand-in", action="store_true",
                        help="--huge: predict with a cheap texture stand-in instead of the network (see TextureStandIn)")
    parser.add_argument("--seams", default=None,
                        help="comma-separated Usiigaci sets: segmented whole vs in --chunk chunks (seam difference)")
    parser.add_argument("--tmp", default=None, help="folder for the --huge mosaics and outputs (default: the system's)")
    args = parser.parse_args()
    if args.seams:
        return seams(args.seams.split(","), args.chunk, args.model)
    if args.huge:
        return huge([int(side) for side in args.huge.split(",")], args.chunk, args.workers, args.model,
                    args.diameter, args.tmp, args.stand_in)
    common = ["--device", "cpu", "--diameter", args.diameter] + (["--model", args.model] if args.model else [])
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        tmp = Path(tmp)
        inputs = tmp / "in"
        inputs.mkdir()
        others = sorted((d.name for d in (DATA / "usiigaci_phase").glob("set*") if d.is_dir() and d.name not in SETS),
                        key=lambda name: int(name[3:]))
        names = (list(SETS) + others)[:args.files]
        if len(names) < args.files:
            raise SystemExit(f"--files {args.files}: only {len(names)} Usiigaci sets")
        for name in names:
            image = tifffile.imread(DATA / "usiigaci_phase" / name / "raw.tif")[:args.size, :args.size]
            tifffile.imwrite(inputs / f"{name}.tif", image)
        rows = []
        seconds = cli("segment", str(inputs), "-o", str(tmp / "segment"), *common)
        reference = labels(tmp / "segment")
        assert len(reference) == args.files, "cell-unet segment failed"
        rows.append(("`cell-unet segment` (one process, 2 torch threads)", seconds, None))
        for workers in (1, 2):
            out = tmp / f"batch{workers}"
            seconds = cli("batch", str(inputs), "-o", str(out), "--workers", str(workers), *common)
            got = labels(out)
            assert got.keys() == reference.keys() and all(np.array_equal(got[k], reference[k]) for k in got), \
                f"batch with {workers} workers differs from segment"
            report = json.loads((out / "batch_report.json").read_text())
            task_seconds = sum(entry["seconds"] for entry in report["files"])
            rows.append((f"`cell-unet batch --workers {workers}` ({2 // workers} torch thread"
                         f"{'s' * (workers == 1)} each)", seconds, task_seconds))
        resume = cli("batch", str(inputs), "-o", str(tmp / "batch2"), *common)
    print(f"CPU: {cpu_model()}; {args.files} files of {args.size}x{args.size} px, --diameter {args.diameter}, "
          f"{'bundled model' if not args.model else args.model}; load average {os.getloadavg()[0]:.1f}\n")
    print("| command | wall s | files/s | summed task s (on workers) |")
    print("|---|---:|---:|---:|")
    for name, seconds, task_seconds in rows:
        tasks = "" if task_seconds is None else f"{task_seconds:.1f}"
        print(f"| {name} | {seconds:.1f} | {args.files / seconds:.3f} | {tasks} |")
    print(f"| rerun of the finished batch (all skipped, no cluster started) | {resume:.1f} | | |")
    print("\nlabels of every batch run equal cell-unet segment's")


if __name__ == "__main__":
    main()
