"""Per-image percentile normalisation and channel handling, for any dtype."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import CellUnetError

# Percentiles of huge images are estimated on an evenly strided sample of at most this many
# pixels: the estimate is accurate to a fraction of a percentile and avoids copying
# (and partially sorting) an 8000 x 8000 image.
PERCENTILE_SAMPLE_PIXELS = 4_000_000
_RGB_TO_GRAY = np.array([0.2125, 0.7154, 0.0721], dtype=np.float32)  # ITU-R 709, as skimage.color.rgb2gray


class ImageError(CellUnetError, ValueError):
    """An image that cannot be segmented (empty, constant, no finite values, wrong shape)."""


def percentile_sample(image: Any) -> np.ndarray:
    """The pixels of `image` (numpy, memmap or dask), or for a larger image an evenly spaced grid of at most
    `PERCENTILE_SAMPLE_PIXELS` of them (every n-th row, every m-th column); only the sample is read from a lazy
    image. A grid, not every k-th pixel of the flattened image: that stride can fall in step with the rows."""
    size = int(np.prod(image.shape))
    if size <= PERCENTILE_SAMPLE_PIXELS:
        return np.asarray(image).reshape(-1)
    if len(image.shape) < 2:
        return np.asarray(image[:: -(-size // PERCENTILE_SAMPLE_PIXELS)])
    row_step = int(np.ceil(np.sqrt(size / PERCENTILE_SAMPLE_PIXELS)))
    column_step = -(-size // (PERCENTILE_SAMPLE_PIXELS * row_step))
    return np.asarray(image[..., ::row_step, ::column_step]).reshape(-1)


def percentile_range(image: Any, low: float = 1.0, high: float = 99.8) -> tuple[float, float]:
    """The `low` and `high` percentiles of the finite pixels of `image` (of `percentile_sample(image)`).

    Raises `ImageError` for an empty image, one without finite values, or a constant one.
    """
    image = image if hasattr(image, "shape") else np.asarray(image)
    if int(np.prod(image.shape)) == 0:
        raise ImageError(f"image is empty (shape {tuple(image.shape)})")
    if not 0 <= low < high <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {low}, {high}")
    sample = percentile_sample(image)
    if sample.dtype.kind == "f":
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            raise ImageError("image has no finite pixel values (all NaN or Inf)")
    elif sample.dtype.kind == "b":
        sample = sample.view(np.uint8)  # numpy's percentile cannot subtract booleans
    elif sample.dtype.kind not in "ui":
        raise ImageError(f"unsupported pixel type {image.dtype}")
    lo, hi = np.percentile(sample, [low, high])
    if not hi > lo:
        lo, hi = float(sample.min()), float(sample.max())
        if not hi > lo:
            raise ImageError(f"image is constant (every pixel is {lo:g}): nothing to segment")
    return float(lo), float(hi)


def apply_normalization(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Map `lo` -> 0 and `hi` -> 1 (not clipped) as float32; NaN -> 0, +Inf -> 1, -Inf -> 0."""
    image = np.asarray(image)
    if _needs_float64(image.dtype, lo, hi):
        # float32 would overflow (floats near 1e296) or merge neighbouring values (integers above 2**24)
        half = np.float64(0.5)
        scaled = (image * half - lo * half) / (hi * half - lo * half)
        out = np.clip(scaled, -1e30, 1e30, out=scaled).astype(np.float32)
    else:
        out = (image.astype(np.float32) - np.float32(lo)) * np.float32(1.0 / (hi - lo))
    if not np.isfinite(out).all():
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    return out


def _needs_float64(dtype: np.dtype, lo: float, hi: float) -> bool:
    if dtype.kind in "iu":
        return dtype.itemsize >= 4 and max(abs(lo), abs(hi)) >= 2**24
    return dtype.kind == "f" and dtype.itemsize > 4 and (
        max(abs(lo), abs(hi)) > 1e30 or 0 < hi - lo < 1e-30 * max(abs(lo), abs(hi), 1.0))


def channel_ranges(channels: np.ndarray, normalization: dict[str, Any]) -> list[tuple[float, float]]:
    """Per-channel (low, high) intensities of a (C, H, W) image, as a model's `normalization` metadata asks
    (`CellModel.normalization`): what inference maps to 0 and 1."""
    if normalization.get("method", "percentile") != "percentile":
        raise ImageError(f"unsupported normalisation method {normalization.get('method')!r} in the model metadata")
    return [percentile_range(channel, normalization["low"], normalization["high"]) for channel in channels]


def normalize_channels(channels: np.ndarray, ranges: list[tuple[float, float]]) -> np.ndarray:
    """(C, H, W) float32: each channel mapped from its (low, high) range to 0..1 (`apply_normalization`)."""
    return np.stack([apply_normalization(channel, lo, hi) for channel, (lo, hi) in zip(channels, ranges)])


def normalize_image(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """Per-image percentile normalisation of any dtype to float32 (low percentile -> 0, high -> 1).

    Values outside the percentile range are kept (not clipped). NaN pixels become 0 and
    infinities 0 or 1; percentiles are computed on the finite pixels only. An empty,
    all-NaN or constant image raises `ImageError` rather than returning garbage.
    """
    lo, hi = percentile_range(image, low, high)
    return apply_normalization(image, lo, hi)


def is_rgb(shape: tuple[int, ...]) -> bool:
    """Whether the last axis looks like RGB(A) colour channels (napari's rule: size 3 or 4, ndim >= 3)."""
    return len(shape) >= 3 and shape[-1] in (3, 4) and shape[-2] > 4


def to_model_channels(image: np.ndarray, in_channels: int, rgb: bool) -> np.ndarray:
    """(C, H, W) array with the model's channel count from a 2-D image or an (H, W, 3|4) colour image.

    Colour -> gray (Rec. 709 luminance) for one-channel models; gray is repeated for
    multi-channel models; alpha is dropped.
    """
    image = np.asarray(image)
    if rgb:
        colour = image[..., :3]
        if in_channels == 1:
            gray = colour.astype(np.float32) @ _RGB_TO_GRAY
            return gray[None]
        if in_channels == 3:
            return np.moveaxis(colour, -1, 0)
        raise ImageError(f"a colour image cannot feed a model with {in_channels} input channels")
    if image.ndim != 2:
        raise ImageError(f"expected a 2-D image, got shape {image.shape}")
    return np.broadcast_to(image, (in_channels, *image.shape))
