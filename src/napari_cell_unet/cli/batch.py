"""Segment a whole experiment on dask.distributed: one OUTPUT_DIR/<stem>_labels.tif per input, named as
`cell-unet segment` names them, with identical labels.

Inputs are image files, folders, globs ('frames/*.tif'), file lists (.txt: one path a line) and COCO .json files
(their images). By default a local cluster of --workers processes runs on this machine; --scheduler
tcp://host:8786 uses a running dask cluster instead. Resumable: each finished output gets a <stem>_labels.json
record, and a rerun skips inputs whose outputs are complete. A file that cannot be segmented is reported and the
others still run; batch_report.json and batch_report.csv list every input. Exit status 1 when any input failed.
"""

from __future__ import annotations

import argparse
import sys

from ..measure import ALL_CELLS_CSV
from . import _checks as checks
from ._diameter import add_diameter_argument
from ._segmentation_options import add_segmentation_options, segmentation_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="INPUT",
                        help="image files, folders, globs, file lists (.txt) or COCO .json files")
    parser.add_argument("--output-dir", "-o", required=True, help="folder for the *_labels.tif files and the report")
    parser.add_argument("--model", default=None, help=checks.MODEL_HELP)
    add_diameter_argument(parser)
    parser.add_argument("--workers", type=checks.int_range(1, 256), default=None,
                        help="worker processes of the local cluster (default: one per 2 cores, at least 1)")
    parser.add_argument("--threads", type=checks.int_range(1, 1024), default=None,
                        help="torch threads per worker (default: the cores divided among the local workers; "
                             "with --scheduler, each worker's cores)")
    parser.add_argument("--scheduler", default=None, metavar="ADDRESS",
                        help="address of a running dask scheduler (tcp://host:8786) instead of a local cluster")
    parser.add_argument("--device", default="auto",
                        help="auto, cpu, cuda, cuda:N or mps, on each worker (auto: on the local cluster worker i "
                             "uses GPU i mod GPUs; with --scheduler each worker its own visible GPU; else the CPU)")
    add_segmentation_options(parser)
    parser.add_argument("--zarr-above", type=checks.int_range(1), default=None, metavar="PIXELS",
                        help="2-D images with more pixels than this are split into chunks segmented across all "
                             "workers and written as <stem>_labels.ome.zarr (OME-Zarr pyramid); default: off, "
                             "every image is one task writing a TIFF, as cell-unet segment does")
    parser.add_argument("--chunk", type=checks.int_range(512, 16384), default=2048,
                        help="chunk side in pixels with --zarr-above (default: 2048; 128 px of context around each)")
    parser.add_argument("--retries", type=checks.int_range(0, 100), default=2,
                        help="times a file is rerun on another worker when its worker dies (default: 2; with "
                             "--scheduler, that cluster's distributed.scheduler.allowed-failures decides)")
    parser.add_argument("--measure", action="store_true",
                        help="also write <stem>_cells.csv beside each labels file (one row per cell, as cell-unet "
                             f"segment --measure; in µm when the image has a pixel size) and OUTPUT_DIR/{ALL_CELLS_CSV} "
                             "with every input's rows; an output without its cells CSV is segmented again. Not "
                             "supported for --zarr-above images (they are not measured)")
    parser.add_argument("--overwrite", action="store_true",
                        help="redo every input and replace existing label files")
    parser.add_argument("--quiet", "-q", action="store_true", help="no line per image, only the summary")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .. import distributed as dist
    from .._progress import Progress, result_of
    from ..inference.devices import cpu_threads
    from ..io._atomic import check_output_folder

    # one-line errors before any cluster starts
    check_output_folder(args.output_dir)
    dist.model_file(args.model)
    files = dist.collect_inputs(args.inputs)
    if not files:
        raise dist.BatchInputError("no image files in the given inputs")
    if args.measure and args.zarr_above is not None:
        tqdm.write(f"cell-unet batch: note: --measure does not measure images above --zarr-above {args.zarr_above} "
                   f"pixels (OME-Zarr outputs); their cells are not in {ALL_CELLS_CSV}", file=sys.stderr)
    threads = args.threads
    if not args.scheduler:
        cores = cpu_threads()
        workers = args.workers or max(1, cores // 2)
        threads = threads or max(1, cores // workers)
    clients = []

    def start_client():
        client = dist.connect(args.scheduler) if args.scheduler else dist.local_client(workers, retries=args.retries)
        clients.append(client)
        link = dist.dashboard_link(client)
        if link and not args.quiet:
            tqdm.write(f"dask dashboard: {link}", file=sys.stderr)
        return client

    try:  # a given scheduler is reached first (a typo is one line at once); a local cluster starts when needed
        steps = dist.iter_batch(args.inputs, args.output_dir, start_client() if args.scheduler else start_client, model=args.model, files=files,
                                diameter=args.diameter, overwrite=args.overwrite, retries=args.retries,
                                threads=threads, huge_pixels=args.zarr_above, chunk=args.chunk, measure=args.measure,
                                **segmentation_params(args))
        with tqdm(total=len(files), unit="image", file=sys.stderr, dynamic_ncols=True) as bar:
            def show(item) -> None:
                if isinstance(item, Progress):
                    bar.reset(total=item.total)
                    bar.set_postfix_str(item.message, refresh=True)
                else:
                    bar.update(1)
                    if item.status == dist.FAILED:
                        bar.write(f"cell-unet batch: error: {item.error}", file=sys.stderr)
                    elif not args.quiet:
                        bar.write(_line(item))

            report = result_of(steps, on_event=show)
    finally:
        for client in clients:
            dist.close_client(client)
    workers = f"{report.workers} worker{'s' * (report.workers != 1)}"
    cells = f", cells: {report.files['cells'].name}" if "cells" in report.files else ""
    print(f"batch: {report.count(dist.DONE)} segmented, {report.count(dist.SKIPPED)} already complete, "
          f"{report.failed} failed: {sum(r.cells or 0 for r in report.records if r.ok)} cells in "
          f"{report.seconds:.1f} s on {workers} -> {args.output_dir} "
          f"(report: {report.files['json'].name}, {report.files['csv'].name}{cells})")
    return report.exit_code


def _line(item) -> str:
    if item.status == "skipped":
        return f"{item.input}: already complete ({item.cells} cells), skipped"
    diameter = "model's own size" if item.diameter is None else f"{item.diameter:.0f} px"
    return f"{item.input}: {item.cells} cells in {item.seconds:.1f} s (cell diameter: {diameter}; {item.worker})"


