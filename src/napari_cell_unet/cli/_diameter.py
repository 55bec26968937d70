"""`--diameter auto|none|PIXELS`, shared by `cell-unet segment` and `cell-unet evaluate`."""

from __future__ import annotations

import argparse
import math

HELP = ("typical cell diameter in pixels; images are rescaled so their cells have the size the model was "
        "trained on. 'auto' (default): estimated from each image; 'none': no rescaling")


def diameter_value(text: str) -> float | str | None:
    word = text.strip().lower()
    if word == "auto":
        return "auto"
    if word in ("none", "model"):
        return None
    try:
        value = float(word)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto', 'none' or a number of pixels, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"a cell diameter must be a positive number of pixels, got {text!r}")
    return value


def add_diameter_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--diameter", type=diameter_value, default="auto", metavar="auto|none|PX", help=HELP)
