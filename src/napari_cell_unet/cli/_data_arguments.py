"""The annotated-data arguments, and the checks before work, shared by `cell-unet train` and `cell-unet evaluate`."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_data_arguments(parser: argparse.ArgumentParser, borders: bool) -> None:
    data = parser.add_mutually_exclusive_group(required=True)
    data.add_argument("--images", nargs="+", type=Path, help="image files, paired by order with --labels")
    data.add_argument("--folder", type=Path, help="dataset folder with images/, labels/"
                      + (" and optional borders/" if borders else ""))
    data.add_argument("--coco", type=Path, help="COCO instance-segmentation json (LIVECell format)")
    parser.add_argument("--labels", nargs="+", type=Path, help="instance labels or binary masks for --images")
    if borders:
        parser.add_argument("--borders", nargs="+", type=Path, help="optional painted border masks for --images")


def check_before_work(args: argparse.Namespace) -> None:
    """What both commands can refuse before loading anything: data arguments that do not fit together, a device
    that is not here, an --output that cannot be written."""
    from ..inference import resolve_device
    from ..io._atomic import check_output_file

    _check_data_arguments(args)
    resolve_device(args.device)
    if args.output:
        check_output_file(args.output, args.overwrite)


def _check_data_arguments(args: argparse.Namespace) -> None:
    from ..errors import CellUnetError as UsageError

    borders = getattr(args, "borders", None)
    if args.images is not None and not args.labels:
        raise UsageError("--images needs --labels (one label file per image, in the same order)")
    if args.images is None and (args.labels or borders):
        raise UsageError("--labels" + (" and --borders go" if hasattr(args, "borders") else " goes") + " with --images")


def load_pairs(args: argparse.Namespace) -> list:
    from ..training import pairs_from_coco, pairs_from_files, pairs_from_folder

    if args.folder is not None:
        return pairs_from_folder(args.folder)
    if args.coco is not None:
        return pairs_from_coco(args.coco)
    return pairs_from_files(args.images, args.labels, getattr(args, "borders", None))
