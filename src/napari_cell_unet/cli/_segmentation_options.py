"""Options that decide how images are segmented, shared by `cell-unet segment` and `cell-unet batch`."""

from __future__ import annotations

import argparse

from . import _checks as checks


def add_segmentation_options(parser: argparse.ArgumentParser) -> None:
    """`--tile-size`, `--min-size`, `--cell-threshold`, `--border-threshold`, `--precision`, `--tta` (device apart: its help
    differs between one process and a cluster's workers)."""
    parser.add_argument("--tile-size", type=checks.tile_size, default=None,
                        help=f"tile side in pixels, {checks.MIN_TILE_SIZE} or more (default: {checks.DEFAULT_TILE_SIZE})")
    parser.add_argument("--min-size", type=checks.non_negative_int,
                        help="smallest object kept, in pixels (default: the model's rule, a fraction of a cell's area at the "
                             "cell diameter used)")
    parser.add_argument("--cell-threshold", type=checks.probability,
                        help="cell probability threshold, between 0 and 1 (default: the model's)")
    parser.add_argument("--border-threshold", type=checks.probability,
                        help="border probability threshold, between 0 and 1 (default: the model's)")
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                        help="arithmetic precision (default: fp16 on CUDA; bf16 on CPUs that do it natively, "
                             "fp32 on others)")
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average the four flips of each tile (4x the network time; "
                             "+0.03 F1 on the validation images, README)")


def segmentation_params(args: argparse.Namespace) -> dict:
    """The segmentation keyword arguments the options above (and `--device`) give; None = the model's default."""
    return {"device": args.device, "precision": args.precision, "tile_size": args.tile_size,
            "min_size": args.min_size, "cell_threshold": args.cell_threshold,
            "border_threshold": args.border_threshold, "tta": args.tta}
