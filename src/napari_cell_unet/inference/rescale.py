"""Cell diameter rescaling: bring cells to the size the model was trained on, predict, resize back.

A model sees cells of one typical size during training (`cell_diameter` in its metadata, pixels);
cells much smaller or larger are missed. Given the cells' diameter in an image, each 2-D plane is
zoomed by `model_diameter / diameter` (bilinear) before prediction and the probability maps are
resized back (bilinear) to the plane's shape, so instances are always computed at the original
resolution (and `min_size` counts original pixels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage

# Models saved before `cell_diameter` was recorded were all trained on Usiigaci cells (median ~50 px).
FALLBACK_MODEL_DIAMETER = 50.0
MIN_OBJECT_PIXELS = 10
MAX_ZOOM = 20.0
MAX_ZOOMED_PIXELS = 2_000_000_000


def model_diameter(model: Any) -> float:
    """The model's `cell_diameter` metadata (px), or `FALLBACK_MODEL_DIAMETER` for older files."""
    value = (getattr(model, "metadata", None) or {}).get("cell_diameter")
    return float(value) if value else FALLBACK_MODEL_DIAMETER


def diameter_scale(model: Any, diameter: float | None, plane: tuple[int, int] | None = None) -> float:
    """The zoom factor for images whose cells are `diameter` px across (1.0 when None).

    Raises ValueError for a diameter that is not a positive number, or one that would zoom by more
    than `MAX_ZOOM` either way or blow a `plane` of that (H, W) up beyond `MAX_ZOOMED_PIXELS`.
    """
    if diameter is None:
        return 1.0
    try:
        diameter = float(diameter)
    except (TypeError, ValueError):
        raise ValueError(f"cell diameter must be a number of pixels, got {diameter!r}") from None
    if not np.isfinite(diameter) or diameter <= 0:
        raise ValueError(f"cell diameter must be a positive number of pixels, got {diameter}")
    reference = model_diameter(model)
    scale = reference / diameter
    if not 1 / MAX_ZOOM <= scale <= MAX_ZOOM:
        raise ValueError(f"a cell diameter of {diameter:g} px is out of range for this model (cells of "
                         f"{reference:g} px): give {reference / MAX_ZOOM:g} to {reference * MAX_ZOOM:g} px, or 'auto'")
    if plane is not None and scaled_shape(plane, scale)[0] * scaled_shape(plane, scale)[1] > MAX_ZOOMED_PIXELS:
        raise ValueError(f"a cell diameter of {diameter:g} px would enlarge this {plane[0]} x {plane[1]} image "
                         f"{scale:.1f}x, beyond {MAX_ZOOMED_PIXELS / 1e6:.0f} megapixels: give a larger diameter")
    return scale


def rescale_plane(plane: np.ndarray, scale: float, rgb: bool = False) -> np.ndarray:
    """A 2-D (or H x W x C colour) plane zoomed by `scale` (bilinear, pixel centres aligned), float32.

    Shrinking first blurs away the detail the smaller grid cannot hold (a Gaussian of sigma (1/scale - 1) / 2,
    as skimage's `resize(anti_aliasing=True)`): bilinear sampling alone aliases noise and the halos of phase
    contrast into texture the network never saw. Returns `plane` itself when `scale` is 1. The zoomed plane is
    at least 1 x 1.
    """
    if scale == 1.0:
        return plane
    # float64 stays float64: values beyond float32's range (1e296) must reach normalisation intact
    dtype = np.float64 if np.asarray(plane).dtype == np.float64 else np.float32
    plane = np.asarray(plane, dtype=dtype)
    if scale < 1.0:
        plane = antialiased(plane, scale)
    return resize_bilinear(plane, scaled_shape(plane.shape[:2], scale), axes=(0, 1))


def antialiased(plane: np.ndarray, scale: float) -> np.ndarray:
    """`plane` blurred (spatial axes only) for shrinking by `scale` < 1; NaN and inf stay where they were."""
    sigma = (1.0 / scale - 1.0) / 2.0
    sigmas = (sigma, sigma) + (0.0,) * (plane.ndim - 2)
    finite = np.isfinite(plane)
    if finite.all():
        return ndimage.gaussian_filter(plane, sigmas, mode="nearest")
    blurred = ndimage.gaussian_filter(np.where(finite, plane, 0), sigmas, mode="nearest")
    return np.where(finite, blurred, plane)


def scaled_shape(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    """A plane's (H, W) after zooming by `scale` (each side at least 1)."""
    if scale == 1.0:
        return tuple(shape)
    return max(1, round(shape[0] * scale)), max(1, round(shape[1] * scale))


def resize_probabilities(probabilities: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """(classes, h, w) probability maps resized (bilinear) to (classes, *shape), float32."""
    if tuple(probabilities.shape[-2:]) == tuple(shape):
        return probabilities
    return resize_bilinear(probabilities, shape, axes=(1, 2))


def resize_bilinear(array: np.ndarray, shape: tuple[int, int], axes: tuple[int, int]) -> np.ndarray:
    """`array` with the two consecutive `axes` resized to exactly `shape` by linear interpolation (grid mode: pixel
    centres map to pixel centres, edges repeated, as skimage.transform.resize and scipy's `zoom(grid_mode=True)`),
    other axes untouched; float64 stays float64, anything else becomes float32."""
    resizer = BilinearRows(array.shape[axes[0]:axes[0] + 2], shape, axis=axes[0])
    output = np.float64 if array.dtype == np.float64 else np.float32
    out = np.empty(array.shape[:axes[0]] + tuple(shape) + array.shape[axes[0] + 2:], output)
    resizer.resize(array, out, 0, shape[0])
    return out


class BilinearRows:
    """Bilinear resizing of the two axes `axis`, `axis` + 1 from `source` (h, w) to `target` (H, W) shape, a block
    of output rows at a time: each output row is a weighted mean of two source rows, so the rows computable from
    the source's first rows are known (`rows_from`) and a plane being predicted can be resized as its rows are
    final. Separable: one pass along the rows, one along the columns (3-7x faster than scipy's `zoom`, which
    interpolates both axes per pixel: benchmarks/RESULTS.md)."""

    BLOCK_ROWS = 256  # output rows per step: bounds the temporary copies of source rows

    def __init__(self, source: tuple[int, int], target: tuple[int, int], axis: int = 0):
        self.source, self.target, self.axis = tuple(source), tuple(target), axis
        self.rows = _linear_taps(source[0], target[0])
        self.cols = _linear_taps(source[1], target[1])

    def rows_from(self, source_rows: int) -> int:
        """How many output rows (from the first) need only the source's first `source_rows` rows."""
        if source_rows >= self.source[0]:
            return self.target[0]
        if self.rows is None:
            return max(0, source_rows)
        return int(np.searchsorted(self.rows[1], source_rows, side="left"))

    def resize(self, array: np.ndarray, out: np.ndarray, start: int, stop: int) -> None:
        """Write output rows [`start`, `stop`) of `array` resized into `out` (which has the target shape)."""
        axis, calc = self.axis, np.float64 if out.dtype == np.float64 else np.float32
        for first in range(start, stop, self.BLOCK_ROWS):
            last = min(stop, first + self.BLOCK_ROWS)
            if self.rows is None:
                block = np.asarray(array[(slice(None),) * axis + (slice(first, last),)], dtype=calc)
            else:
                block = _interpolate(array, [taps[first:last] for taps in self.rows], axis, calc)
            block = _interpolate(block, self.cols, axis + 1, calc)
            out[(slice(None),) * axis + (slice(first, last),)] = block


def _linear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """For each output position: the source positions below and above its centre and the weight of the one above
    (None when the sizes agree)."""
    if n_in == n_out:
        return None
    centres = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0, n_in - 1)
    below = np.floor(centres).astype(np.intp)
    return below, np.minimum(below + 1, n_in - 1), centres - below


def _interpolate(array: np.ndarray, taps, axis: int, calc: type) -> np.ndarray:
    if taps is None:
        return np.asarray(array, dtype=calc)
    below, above, weight = taps
    weight = weight.astype(calc).reshape((-1,) + (1,) * (array.ndim - axis - 1))
    lower = np.take(array, below, axis=axis).astype(calc, copy=False)
    upper = np.take(array, above, axis=axis).astype(calc, copy=False)
    # (1 - w) a + w b, not a + w (b - a): b - a overflows for values near float64's limits, which must stay intact
    lower *= 1 - weight
    upper *= weight
    lower += upper
    return lower


def estimate_diameter(labels: np.ndarray, min_pixels: int = MIN_OBJECT_PIXELS) -> float:
    """Median equivalent diameter (px, the diameter of a disc of equal area) of the objects in
    instance `labels` (any leading axes; every 2-D slice counted) with at least `min_pixels` pixels.

    Raises `ValueError` when there is no such object.
    """
    labels = np.asarray(labels)
    planes = labels.reshape(-1, *labels.shape[-2:]) if labels.ndim >= 2 else labels[None, None]
    areas = [np.bincount(plane.ravel().astype(np.int64, copy=False))[1:] for plane in planes if plane.any()]
    areas = np.concatenate(areas) if areas else np.empty(0)
    areas = areas[areas >= min_pixels]
    if areas.size == 0:
        raise ValueError(f"no labelled objects of at least {min_pixels} pixels to measure a diameter from")
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))
