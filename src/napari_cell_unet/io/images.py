"""Reading microscopy images and label masks (TIFF, OME-TIFF, ImageJ TIFF, PNG, JPEG).

TIFFs larger than ``LAZY_BYTES`` open lazily: memory-mapped when the pixels are stored
uncompressed and contiguous, otherwise as a dask array that decodes one page at a time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ImageFileError

TIFF_SUFFIXES = (".tif", ".tiff")
PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
IMAGE_SUFFIXES = TIFF_SUFFIXES + PIL_SUFFIXES
LABEL_FOLDER_NAMES = frozenset({"labels", "masks", "borders"})
LABEL_NAME_PATTERN = re.compile(r"_(labels|masks?|borders?)$", re.IGNORECASE)
LAZY_BYTES = 512 * 2**20

_UNIT_TO_MICRONS = {"µm": 1.0, "um": 1.0, "micron": 1.0, "microns": 1.0, "\\u00B5m": 1.0,
                    "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


@dataclass
class ImageData:
    """Pixels of one file plus what napari needs to show them at the right size."""

    data: Any  # numpy array, numpy memmap or dask array
    axes: str  # tifffile axis letters, e.g. "YX", "TYX", "ZCYX", "YXS" (S = RGB samples)
    scale: tuple[float, ...] | None = None  # physical size per axis, None when the file has none
    unit: str | None = None
    lazy: bool = False
    path: Path | None = None
    metadata: dict = field(default_factory=dict)

    @property
    def rgb(self) -> bool:
        return self.axes.endswith("S") and self.data.shape[-1] in (3, 4)


def is_labels_path(path: str | Path) -> bool:
    """True for files that hold label masks by naming convention (labels/ folder, *_mask.tif, ...)."""
    path = Path(path)
    return path.parent.name.lower() in LABEL_FOLDER_NAMES or bool(LABEL_NAME_PATTERN.search(file_stem(path)))


def open_image(path: str | Path, lazy: bool | None = None) -> ImageData:
    """Open an image file; ``lazy=None`` reads lazily only files larger than ``LAZY_BYTES``."""
    path = Path(path)
    if not path.is_file():
        raise ImageFileError(path, "file not found")
    if path.suffix.lower() in TIFF_SUFFIXES:
        return _open_tiff(path, lazy)
    if path.suffix.lower() in PIL_SUFFIXES:
        return _open_with_pillow(path)
    raise ImageFileError(path, f"unsupported image type {path.suffix!r} (expected one of {', '.join(IMAGE_SUFFIXES)})")


def image_shape(path: str | Path) -> tuple[int, ...]:
    """Array shape of an image file from its header, without decoding pixels (RGB samples last)."""
    path = Path(path)
    if path.suffix.lower() in PIL_SUFFIXES:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as im:
                bands = len(im.getbands())
                return (im.height, im.width, bands) if bands > 1 else (im.height, im.width)
        except (OSError, UnidentifiedImageError) as exc:
            raise ImageFileError(path, f"cannot read image ({exc})") from None
    return tuple(open_image(path, lazy=True).data.shape)


def read_image(path: str | Path) -> np.ndarray:
    """Read all pixels of an image file into memory (singleton axes kept, RGB last)."""
    return np.asarray(open_image(path, lazy=False).data)


def read_labels(path: str | Path) -> np.ndarray:
    """Read an integer label mask (0 = background) as uint32."""
    path = Path(path)
    data = read_image(path)
    return as_labels(data, path)


def as_labels(data: np.ndarray, path: str | Path) -> np.ndarray:
    if data.dtype == bool:
        return data.astype(np.uint32)
    if not np.issubdtype(data.dtype, np.integer):
        if np.issubdtype(data.dtype, np.floating) and data.size and np.array_equal(data, np.round(data)):
            data = data.astype(np.int64)
        else:
            raise ImageFileError(path, f"not a label mask: pixel type {data.dtype} is not integer")
    if data.size and data.min() < 0:
        raise ImageFileError(path, "not a label mask: it has negative values")
    if data.size and int(data.max()) > np.iinfo(np.uint32).max:
        raise ImageFileError(path, "label ids larger than 2**32-1 are not supported")
    return data.astype(np.uint32, copy=False)


def file_stem(path: Path) -> str:
    name = path.name
    for suffix in (".ome.tiff", ".ome.tif", *IMAGE_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _open_with_pillow(path: Path) -> ImageData:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            data = np.asarray(im)
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as exc:
        raise ImageFileError(path, f"cannot read image ({exc})") from None
    axes = "YXS" if data.ndim == 3 else "YX"
    return ImageData(data=data, axes=axes, path=path)


def _open_tiff(path: Path, lazy: bool | None) -> ImageData:
    import tifffile

    try:
        with _tifffile_problems() as problems, tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape, dtype = series.axes, tuple(series.shape), series.dtype
            scale, unit = _physical_scale(tif, axes)
            nbytes = math.prod(shape) * dtype.itemsize
            if lazy is None:
                lazy = nbytes > LAZY_BYTES
            if problems:
                raise ImageFileError(path, f"corrupt or truncated TIFF ({problems[0]})")
            if lazy:
                _check_not_truncated(path, series)
                data = _lazy_tiff(path, series)
            else:
                _check_not_truncated(path, series)
                data = series.asarray()
    except ImageFileError:
        raise
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise ImageFileError(path, f"cannot read TIFF ({type(exc).__name__}: {exc})") from None
    if "S" in axes and not axes.endswith("S"):
        s = axes.index("S")
        data = np.moveaxis(data, s, -1)
        axes = axes.replace("S", "") + "S"
        scale = None if scale is None else (*scale[:s], *scale[s + 1:], 1.0)
    return ImageData(data=data, axes=axes, scale=scale, unit=unit, lazy=lazy, path=path)


class _ProblemCollector(logging.Handler):
    def __init__(self, problems: list[str]):
        super().__init__(level=logging.WARNING)
        self.problems = problems

    def emit(self, record: logging.LogRecord) -> None:
        self.problems.append(re.sub(r"^<[^>]*>\s*", "", record.getMessage()))


@contextlib.contextmanager
def _tifffile_problems() -> Iterator[list[str]]:
    """tifffile logs (rather than raises) when IFDs are cut off; collect those messages."""
    problems: list[str] = []
    logger = logging.getLogger("tifffile")
    handler = _ProblemCollector(problems)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield problems
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def _check_not_truncated(path: Path, series) -> None:
    """Lazy opening reads no pixels, so compare the last page's data extent with the file size."""
    last = series.keyframe if len(series.pages) == 1 else series.pages[-1]
    offsets = getattr(last, "dataoffsets", ())
    counts = getattr(last, "databytecounts", ())
    if offsets and counts:
        end = max(o + c for o, c in zip(offsets, counts))
        size = path.stat().st_size
        if end > size:
            raise ImageFileError(path, f"TIFF is truncated: pixel data needs {end} bytes, file has {size}")


def _lazy_tiff(path: Path, series):
    import tifffile

    try:
        return tifffile.memmap(path, mode="r")
    except (ValueError, OSError):
        pass  # compressed or scattered pixels: decode per page instead
    return _dask_tiff_pages(path, series)


def _read_tiff_page(path: Path, key: int) -> np.ndarray:
    import tifffile

    return tifffile.imread(path, key=key, series=0)


def _dask_tiff_pages(path: Path, series):
    import dask
    import dask.array as da

    page_shape = tuple(series.keyframe.shape)
    stack_shape = tuple(series.shape[: len(series.shape) - len(page_shape)])
    n_pages = math.prod(stack_shape)
    read = dask.delayed(_read_tiff_page, pure=True)
    pages = [da.from_delayed(read(path, i), shape=page_shape, dtype=series.dtype) for i in range(n_pages)]
    stacked = da.stack(pages) if n_pages > 1 else pages[0][np.newaxis]
    return stacked.reshape(stack_shape + page_shape) if stack_shape else stacked[0]


def _physical_scale(tif, axes: str) -> tuple[tuple[float, ...] | None, str | None]:
    sizes = _ome_pixel_sizes(tif) if tif.is_ome else None
    if sizes is None and tif.is_imagej:
        sizes = _imagej_pixel_sizes(tif)
    if not sizes:
        return None, None
    scale = tuple(float(sizes.get(axis, 1.0)) for axis in axes)
    return scale, "µm"


def _ome_pixel_sizes(tif) -> dict[str, float] | None:
    import tifffile

    try:
        ome = tifffile.xml2dict(tif.ome_metadata)["OME"]
        image = ome["Image"][0] if isinstance(ome["Image"], list) else ome["Image"]
        pixels = image["Pixels"]
    except (KeyError, TypeError, IndexError, ValueError):
        return None
    sizes = {}
    for axis in "XYZ":
        value = pixels.get(f"PhysicalSize{axis}")
        factor = _UNIT_TO_MICRONS.get(str(pixels.get(f"PhysicalSize{axis}Unit", "µm")), 1.0)
        if value:
            sizes[axis] = float(value) * factor
    return sizes or None


def _imagej_pixel_sizes(tif) -> dict[str, float] | None:
    meta = tif.imagej_metadata or {}
    page = tif.pages[0]
    sizes = {}
    for axis, tag in (("X", "XResolution"), ("Y", "YResolution")):
        resolution = page.tags.get(tag)
        if resolution is not None:
            num, den = resolution.value
            if num and den and num != den:  # 1/1 is ImageJ's "no calibration"
                sizes[axis] = den / num
    if sizes and meta.get("spacing"):
        sizes["Z"] = float(meta["spacing"])
    factor = _UNIT_TO_MICRONS.get(str(meta.get("unit", "µm")).replace("\\u00B5", "µ"), 1.0)
    return {axis: size * factor for axis, size in sizes.items()} or None
