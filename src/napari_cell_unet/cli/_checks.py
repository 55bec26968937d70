"""Argument types that refuse nonsense before any work starts (`--steps 0`, `--cell-threshold nan`, ...)."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

DEFAULT_TILE_SIZE = 1152  # inference.DEFAULT_TILE_SIZE (the CLI reads its options before importing torch)
MIN_TILE_SIZE = 256  # twice the tiles' 64-px blended overlap on each side, with room left to predict
MAX_TILE_SIZE = 16384
MAX_VAL_FRACTION = 0.5


def _number(text: str, kind: type) -> float:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {'a whole number' if kind is int else 'a number'}, "
                                         f"got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = int(_number(text, int))
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(_range_text(low, high, text))
        return value

    parse.__name__ = "whole number"
    return parse


def float_range(low: float, high: float | None = None, low_open: bool = False,
                high_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        value = _number(text, float)
        too_low = value <= low if low_open else value < low
        too_high = high is not None and (value >= high if high_open else value > high)
        if too_low or too_high:
            raise argparse.ArgumentTypeError(_range_text(low, high, text, low_open, high_open))
        return value

    parse.__name__ = "number"
    return parse


def _range_text(low, high, text, low_open=False, high_open=False) -> str:
    if high is None:
        return f"must be {'>' if low_open else '>='} {low}, got {text}"
    return f"must be in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}, got {text}"


positive_int = int_range(1)
non_negative_int = int_range(0)
positive_float = float_range(0.0, low_open=True)
probability = float_range(0.0, 1.0, low_open=True, high_open=True)
tile_size = int_range(MIN_TILE_SIZE, MAX_TILE_SIZE)
val_fraction = float_range(0.0, MAX_VAL_FRACTION)


MODEL_HELP = ("model: a .safetensors file, or a bundled model: default (phase contrast + nuclei), cells (phase "
              "contrast specialist) or nuclei (fluorescent and stained nuclei specialist); default: default")
