"""Segment images into instance labels: writes OUTPUT_DIR/<input stem>_labels.tif for every input
(OUTPUT_DIR/<folder>_<stem>_labels.tif where two inputs share a stem, e.g. set1/raw.tif and set2/raw.tif).

Inputs are image files or folders (every image in them). Stacks keep their leading axes.
A file that cannot be read or has the wrong dimensions is reported and the others still run;
the exit status is 1 when any file failed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ..measure import ALL_CELLS_CSV
from ._checks import MODEL_HELP
from ._diameter import add_diameter_argument
from ._segmentation_options import add_segmentation_options, segmentation_params


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", type=Path, metavar="INPUT", help="image files or folders of images")
    parser.add_argument("--output-dir", "-o", type=Path, required=True, help="folder for the *_labels.tif files")
    parser.add_argument("--model", default=None, help=MODEL_HELP)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    add_segmentation_options(parser)
    add_diameter_argument(parser)
    parser.add_argument("--measure", action="store_true",
                        help="also write <stem>_cells.csv beside each labels file: one row per cell (area, "
                             "perimeter, shape, intensity; in µm when the image has a pixel size), and "
                             f"OUTPUT_DIR/{ALL_CELLS_CSV} with the rows of every image")
    parser.add_argument("--overwrite", action="store_true", help="replace existing label files")
    parser.add_argument("--quiet", "-q", action="store_true", help="no line per image, only the summary")


def run(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from ..batch import FileResult, expand_inputs, segment_folder
    from ..errors import CellUnetError
    from ..inference import resolve_device
    from ..io._atomic import check_output_folder
    from ..measure import measure_labels_file, write_combined
    from ..model import load_model

    files = expand_inputs(args.inputs)
    if not files:
        raise CellUnetError("no image files in the given inputs")
    resolve_device(args.device)
    check_output_folder(args.output_dir)
    model = load_model(args.model)
    started = time.perf_counter()
    done, failed, cells = 0, 0, 0
    tables = []
    with tqdm(total=len(files), unit="image", file=sys.stderr, dynamic_ncols=True) as bar:
        for item in segment_folder(files, args.output_dir, model, overwrite=args.overwrite, **_params(args)):
            if not isinstance(item, FileResult):
                bar.set_postfix_str(item.message[-60:], refresh=True)
                continue
            bar.update(1)
            if item.ok and args.measure:
                try:
                    tables.append(measure_labels_file(item.input, item.output, overwrite=args.overwrite))
                except CellUnetError as exc:
                    item.error = f"{item.input}: labels written, measurements not: {exc}"
            if item.ok:
                done, cells = done + 1, cells + item.n_cells
                if not args.quiet:
                    bar.write(_image_line(item, args.diameter == "auto"))
            else:
                failed += 1
                bar.write(f"cell-unet segment: error: {item.error}", file=sys.stderr)
    if tables:
        write_combined(tables, args.output_dir / ALL_CELLS_CSV)
    failures = f", {failed} failed" if failed else ""
    print(f"segmented {done} image{'s' * (done != 1)}{failures}: {cells} cells in "
          f"{time.perf_counter() - started:.1f} s -> {args.output_dir}")
    return 1 if failed else 0


def _image_line(item, auto: bool) -> str:
    diameter = "model's own size" if item.diameter is None else f"{item.diameter:.0f} px"
    if auto:
        diameter = f"auto, {diameter}"
    return f"{item.input}: {item.n_cells} cells in {item.seconds:.1f} s (cell diameter: {diameter})"


def _params(args: argparse.Namespace) -> dict:
    params = segmentation_params(args)
    return {**{key: value for key, value in params.items() if value is not None}, "diameter": args.diameter}
