"""Reading microscopy images and label masks (TIFF, OME-TIFF, ImageJ TIFF, PNG, JPEG).

TIFFs larger than ``LAZY_BYTES`` open lazily: memory-mapped when the pixels are stored
uncompressed and contiguous, otherwise as a dask array that decodes one page at a time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import warnings
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
MANY_PAGES = 1024  # above this, series detection is bounded and pixels are read lazily
PIXEL_SIZE_RANGE_UM = (1e-5, 1e5)  # 0.01 nm .. 10 cm per pixel; anything else is a broken header
_GRAY_WITH_ALPHA = ("LA", "La", "PA")  # Pillow modes whose second band is transparency: dropped
_CHUNK_BYTES, _CHUNK_PAGES = 16 * 2**20, 64  # at most this much per dask chunk when decoding lazily

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
                bands = 1 if im.mode in _GRAY_WITH_ALPHA else len(im.getbands())
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
            if im.mode in _GRAY_WITH_ALPHA:
                data = data[..., 0]
    except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageFileError(path, f"cannot read image ({exc})") from None
    if data.ndim < 2 or data.dtype == object:
        raise ImageFileError(path, f"cannot read image (decoded to shape {data.shape}, type {data.dtype})")
    axes = "YXS" if data.ndim == 3 else "YX"
    return _usable(ImageData(data=data, axes=axes, path=path))


def _usable(image: ImageData) -> ImageData:
    """Pixel types and layouts that napari and the network cannot take: refuse, or convert cheaply."""
    path, dtype = image.path, np.dtype(image.data.dtype)
    if dtype.kind not in "biuf":
        raise ImageFileError(path, f"unsupported pixel type {dtype}: save a real-valued image (e.g. the magnitude)")
    if dtype == np.float16:  # numpy and OpenGL handle it poorly; float32 holds every value exactly
        image.data = image.data.astype(np.float32)
    if min(image.data.shape, default=0) == 0:
        raise ImageFileError(path, f"image has no pixels (shape {tuple(image.data.shape)})")
    if _trailing_channels(image):
        image.data = np.moveaxis(image.data, -1, 0)
        image.axes = "C" + (image.axes[:-1] if image.axes.endswith("S") else image.axes[:-3] + "YX")
        image.scale = None if image.scale is None else (1.0, *image.scale[:-1])
    return image


def _trailing_channels(image: ImageData) -> bool:
    """A last axis of 1 or 2 values per pixel (not RGB): samples, or an (H, W, 2) array that tifffile stored as
    H pages 2 pixels wide (a stack of a few narrow images stays a stack). It becomes a leading channel axis."""
    shape = image.data.shape
    if len(shape) < 3 or shape[-1] > 2:
        return False
    return image.axes.endswith("S") or (len(shape) == 3 and min(shape[:2]) > 16)


def _open_tiff(path: Path, lazy: bool | None) -> ImageData:
    import tifffile

    try:
        with _tifffile_problems() as problems, tifffile.TiffFile(path) as tif:
            series = _first_series(tif, path)
            axes, shape, dtype = series.axes, tuple(series.shape), series.dtype
            scale, unit = _physical_scale(tif, axes, path)
            nbytes = math.prod(shape) * dtype.itemsize
            if lazy is None:
                lazy = nbytes > LAZY_BYTES or len(tif.pages) > MANY_PAGES
            if problems:
                raise ImageFileError(path, f"corrupt or truncated TIFF ({problems[0]})")
            if np.dtype(dtype).kind not in "biuf":
                raise ImageFileError(path, f"unsupported pixel type {dtype}: save a real-valued image (e.g. the magnitude)")
            _check_not_truncated(path, series)
            if not lazy:
                _check_fits_in_memory(path, nbytes)
            data = _lazy_tiff(path, tif, series) if lazy else series.asarray()
    except ImageFileError:
        raise
    except MemoryError:
        raise ImageFileError(path, "the image does not fit in memory") from None
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise ImageFileError(path, f"cannot read TIFF ({type(exc).__name__}: {_first_line(exc)})") from None
    if "S" in axes and not axes.endswith("S"):
        s = axes.index("S")
        data = np.moveaxis(data, s, -1)
        axes = axes.replace("S", "") + "S"
        scale = None if scale is None else (*scale[:s], *scale[s + 1:], 1.0)
    return _usable(ImageData(data=data, axes=axes, scale=scale, unit=unit, lazy=lazy, path=path))


def _check_fits_in_memory(path: Path, nbytes: int) -> None:
    """A (corrupt or huge) header can ask for more memory than the computer has; say so instead of swapping."""
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not on every platform
        return
    if nbytes > memory:
        raise ImageFileError(path, f"the image needs {nbytes / 2**30:,.0f} GiB, more than this computer's "
                             f"{memory / 2**30:.1f} GiB of memory")


def _first_series(tif, path: Path):
    """The first image series, in bounded time. tifffile's series detection compares every page with every
    other one (quadratic: a 100,000-page file of mixed page types never opens); a file with many pages that are
    not all alike is read as its first page only, with a warning."""
    import tifffile

    n_pages = len(tif.pages)
    if n_pages <= MANY_PAGES or tif.is_imagej or tif.is_ome:
        return tif.series[0]
    if tif.is_uniform:
        if tif.is_shaped and _shaped_page_count(tif) != n_pages:
            tif.is_shaped = False  # one "shaped" series per page: read all alike pages as one stack instead
        return tif.series[0]
    first = tif.pages.first
    warnings.warn(f"{path}: {n_pages} pages of different shapes or types; reading the first page only",
                  UserWarning, stacklevel=4)
    return tifffile.TiffPageSeries([first], first.shape, first.dtype, first.axes, kind="first page")


def _shaped_page_count(tif) -> int | None:
    """How many pages the first page's tifffile "shaped" description says its series spans."""
    import json

    try:
        shape = json.loads(tif.pages.first.shaped_description)["shape"]
        return math.prod(shape) // math.prod(tif.pages.first.shape)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):
        return None


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else ""


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


def _lazy_tiff(path: Path, tif, series):
    """Uncompressed contiguous pixels are memory-mapped; others are decoded page by page (dask)."""
    offset = series.dataoffset
    if offset is not None and series.keyframe.is_memmappable:
        dtype = np.dtype(series.dtype).newbyteorder(tif.byteorder)
        return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(series.shape))
    return _dask_tiff_pages(path, series)


def _read_tiff_pages(path: Path, offsets: tuple[int, ...], page_shape: tuple[int, ...], dtype) -> np.ndarray:
    """Decode the pages whose IFDs start at ``offsets``, without series detection (which costs a full scan of
    the file each time). A page that is missing or unreadable raises ``ImageFileError``."""
    import tifffile

    out = np.empty((len(offsets), *page_shape), dtype)
    with tifffile.TiffFile(path) as tif:
        for k, offset in enumerate(offsets):
            tif.filehandle.seek(offset)
            page = tifffile.TiffPage(tif, index=0)
            data = page.asarray()
            if data.shape != page_shape:
                raise ImageFileError(path, f"page at byte {offset} has shape {data.shape}, expected {page_shape}")
            out[k] = data
    return out


def _dask_tiff_pages(path: Path, series):
    import dask.array as da

    page_shape = tuple(series.keyframe.shape)
    stack_shape = tuple(series.shape[: len(series.shape) - len(page_shape)])
    offsets = tuple(page.offset for page in series.pages)
    if any(offset is None for offset in offsets):
        raise ImageFileError(path, "TIFF is truncated: some pages of the image are missing")
    page_bytes = max(1, math.prod(page_shape) * np.dtype(series.dtype).itemsize)
    per_chunk = max(1, min(len(offsets), _CHUNK_PAGES, _CHUNK_BYTES // page_bytes))
    sizes = (per_chunk,) * (len(offsets) // per_chunk) + ((len(offsets) % per_chunk,) if len(offsets) % per_chunk else ())
    chunks = (sizes, *((n,) for n in page_shape))

    def read_block(block_info=None) -> np.ndarray:
        start, stop = block_info[None]["array-location"][0]
        return _read_tiff_pages(path, offsets[start:stop], page_shape, series.dtype)

    stacked = da.map_blocks(read_block, chunks=chunks, dtype=series.dtype,
                            meta=np.empty((0,) * (1 + len(page_shape)), series.dtype))
    return stacked.reshape(stack_shape + page_shape) if stack_shape else stacked[0]


def _physical_scale(tif, axes: str, path: Path) -> tuple[tuple[float, ...] | None, str | None]:
    try:
        sizes = _ome_pixel_sizes(tif) if tif.is_ome else None
        if sizes is None and tif.is_imagej:
            sizes = _imagej_pixel_sizes(tif)
    except (ValueError, TypeError, ZeroDivisionError, OverflowError):
        sizes = None
    if not sizes:
        return None, None
    low, high = PIXEL_SIZE_RANGE_UM
    odd = {axis: size for axis, size in sizes.items() if not (math.isfinite(size) and low <= size <= high)}
    if odd:
        listed = ", ".join(f"{axis} {size:g} µm" for axis, size in odd.items())
        warnings.warn(f"{path}: ignoring the pixel size in the file ({listed} is not a pixel size); "
                      "showing pixels at size 1", UserWarning, stacklevel=4)
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
