"""Sliding-window tile layout and smooth blending weights (separable, so never a full-size weight image)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import product

import numpy as np


@dataclass(frozen=True)
class TileGrid:
    """Tiles of `tile` = (th, tw) pixels at the Cartesian product of `starts_y` x `starts_x`.

    When the image is smaller than a tile along an axis the single tile there extends past
    the image and is padded (reflection) before prediction.
    """

    shape: tuple[int, int]
    tile: tuple[int, int]
    starts_y: tuple[int, ...]
    starts_x: tuple[int, ...]
    overlap: int

    @property
    def n_tiles(self) -> int:
        return len(self.starts_y) * len(self.starts_x)

    def positions(self) -> list[tuple[int, int]]:
        return list(product(self.starts_y, self.starts_x))

    def window(self) -> tuple[np.ndarray, np.ndarray]:
        """1-D blending weights along y and x; the 2-D weight is their outer product."""
        return ramp_window(self.tile[0], self.overlap), ramp_window(self.tile[1], self.overlap)

    def weight_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-row and per-column sums of the blending weights over all tiles.

        Because the window is separable and the tiles form a Cartesian grid, the sum of
        the 2-D weights at (y, x) is `rows[y] * cols[x]`.
        """
        wy, wx = self.window()
        return (_axis_sum(self.shape[0], self.starts_y, wy), _axis_sum(self.shape[1], self.starts_x, wx))


def make_grid(shape: tuple[int, int], tile_size: int, overlap: int | float, multiple: int) -> TileGrid:
    """The fewest tiles of at most `tile_size` (rounded to `multiple`) that cover `shape` with `overlap`.

    Tiles are shrunk to just cover the image (a 704-px axis with 512-px tiles gets two
    384-px tiles, not two 512-px ones) so that little work is wasted on overlap.
    `overlap` is pixels (int) or a fraction of `tile_size` (float < 1).
    """
    tile_size = max(multiple, _round_up(int(tile_size), multiple))
    overlap_px = int(round(overlap * tile_size)) if isinstance(overlap, float) and overlap < 1 else int(overlap)
    if not 0 <= overlap_px < tile_size // 2:
        raise ValueError(f"overlap must be between 0 and half the tile size ({tile_size // 2} px), got {overlap_px} px")
    tiles, starts = zip(*(_axis_layout(n, tile_size, overlap_px, multiple) for n in shape))
    return TileGrid(shape=tuple(shape), tile=tuple(tiles), starts_y=starts[0], starts_x=starts[1], overlap=overlap_px)


def ramp_window(length: int, overlap: int) -> np.ndarray:
    """Weights that are 1 in the middle and fall smoothly (raised cosine) over `overlap` px at both ends.

    The ends stay slightly above zero so that image edges, covered by a single tile edge,
    still have weight.
    """
    weights = np.ones(length, dtype=np.float32)
    ramp = min(overlap, length // 2)
    if ramp > 0:
        t = (np.arange(ramp, dtype=np.float32) + 0.5) / ramp
        edge = (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)
        weights[:ramp] = edge
        weights[length - ramp:] = edge[::-1]
    return np.maximum(weights, np.float32(1e-3))


def _axis_layout(length: int, tile_size: int, overlap: int, multiple: int) -> tuple[int, tuple[int, ...]]:
    if length <= tile_size:
        return _round_up(length, multiple), (0,)
    count = math.ceil((length - overlap) / (tile_size - overlap))
    tile = min(tile_size, _round_up(math.ceil((length + (count - 1) * overlap) / count), multiple))
    last = length - tile
    starts = sorted({round(i * last / (count - 1)) for i in range(count)})
    return tile, tuple(starts)


def _axis_sum(length: int, starts: tuple[int, ...], window: np.ndarray) -> np.ndarray:
    total = np.zeros(length, dtype=np.float32)
    for start in starts:
        stop = min(length, start + window.size)
        total[start:stop] += window[: stop - start]
    return total


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple
