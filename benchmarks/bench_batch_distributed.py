"""`cell-unet batch` (dask.distributed, 1 and 2 local worker processes) vs `cell-unet segment` on the same files.

Usage:
  python benchmarks/bench_batch_distributed.py [--files 4] [--size 384] [--model PATH] [--diameter auto]
  python benchmarks/bench_batch_distributed.py --huge 2048,4096 [--chunk 1024] [--model PATH] [--workers 2]

The inputs are crops (--size x --size) of real Usiigaci phase-contrast frames from ../shared/data, written to a
temporary folder. Each command runs as a fresh process, end to end (start-up, cluster start, model load,
writing labels, report), cold rerun each time into an empty output folder; files/s = files / wall seconds. Also:
the summed per-file task seconds from batch_report.json (work done on the workers without the cluster start),
and a rerun of the finished batch (everything skipped: the cost of resuming). Labels of every run are checked
to equal `cell-unet segment`'s. Prints a Markdown table and the CPU model.

--huge: one synthetic image per side (a Usiigaci frame tiled to side x side, written as a tiled TIFF) through
`distributed.segment_huge` on a fresh LocalCluster of --workers processes: total seconds and each worker's peak
RSS (ru_maxrss), which should stay flat as the image grows (memory bounded by the chunk, not the image).
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
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def huge(sides: list[int], chunk: int, workers: int, model: str | None) -> None:
    import tifffile

    sys.path.insert(0, str(SRC))
    from napari_cell_unet import distributed as dist

    frame = tifffile.imread(DATA / "usiigaci_phase" / "set20" / "raw.tif")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_huge_") as tmp:
        for side in sides:
            path = Path(tmp) / f"huge{side}.tif"
            reps = -(-side // min(frame.shape))
            tifffile.imwrite(path, np.tile(frame, (reps, reps))[:side, :side], tile=(512, 512), compression="zlib")
            client = dist.local_client(workers, retries=0)
            try:
                client.run(_peak_rss_mb)  # workers started
                result = dist.segment_huge(path, Path(tmp) / f"huge{side}_labels.ome.zarr", client, model=model,
                                           chunk=chunk, diameter=40.0, device="cpu")
                peaks = sorted(client.run(_peak_rss_mb).values())
            finally:
                dist.close_client(client)
            rows.append((side, result.seconds, result.n_cells, peaks, result.levels))
    print(f"CPU: {cpu_model()}; --chunk {chunk}, {workers} worker processes, diameter 40 px, "
          f"{model or 'bundled model'}; load average {os.getloadavg()[0]:.1f}\n")
    print("| image | seconds | MP/s | cells | peak RSS per worker (MB) | pyramid levels |")
    print("|---|---:|---:|---:|---|---:|")
    for side, seconds, cells, peaks, levels in rows:
        print(f"| {side}x{side} | {seconds:.1f} | {side * side / 1e6 / seconds:.2f} | {cells} | "
              f"{', '.join(f'{p:.0f}' for p in peaks)} | {levels} |")


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
    args = parser.parse_args()
    if args.huge:
        return huge([int(side) for side in args.huge.split(",")], args.chunk, args.workers, args.model)
    common = ["--device", "cpu", "--diameter", args.diameter] + (["--model", args.model] if args.model else [])
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as tmp:
        tmp = Path(tmp)
        inputs = tmp / "in"
        inputs.mkdir()
        for name in SETS[:args.files]:
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
