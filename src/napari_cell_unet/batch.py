"""Batch work: every image in folders or file lists, one file at a time (2D images too large for memory go
through `inference.chunked`, into a memory-mapped TIFF)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._progress import Progress, relay

LARGE_IMAGE_PIXELS = 8192 * 8192  # above this, files go through inference.chunked


@dataclass
class FileResult:
    """What happened to one input file."""

    input: Path
    output: Path | None
    n_cells: int = 0
    seconds: float = 0.0
    error: str | None = None
    diameter: float | None = None  # cell diameter used (px); None = the model's own size

    @property
    def ok(self) -> bool:
        return self.error is None


def expand_inputs(inputs: Iterable[str | Path]) -> list[Path]:
    """Files as given, folders as their image files (sorted, label files such as *_labels.tif skipped)."""
    from .io.images import IMAGE_SUFFIXES, is_labels_path

    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files.extend(sorted(p for p in item.iterdir()
                                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not is_labels_path(p)))
        else:
            files.append(item)
    return files


def output_path(input_path: Path, output_dir: Path, suffix: str = "_labels.tif", prefix: str = "") -> Path:
    name = input_path.name
    for ext in (".ome.tiff", ".ome.tif"):
        if name.lower().endswith(ext):
            return output_dir / (prefix + name[: -len(ext)] + suffix)
    return output_dir / (prefix + input_path.stem + suffix)


def output_paths(files: Sequence[Path], output_dir: Path, suffix: str = "_labels.tif") -> list[Path]:
    """One distinct output per input: `<stem><suffix>`; where stems collide (every Usiigaci image is raw.tif),
    `<parent>_<stem><suffix>`; where those collide too, a counter goes before the suffix
    (`<parent>_<stem>_2<suffix>`)."""
    plain = [output_path(path, output_dir, suffix) for path in files]
    counts = Counter(str(p).lower() for p in plain)  # case-insensitive file systems collide too
    named = [output_path(path, output_dir, suffix, prefix=f"{path.resolve().parent.name}_")
             if counts[str(p).lower()] > 1 else p for path, p in zip(files, plain)]
    seen: Counter = Counter()
    unique = []
    for path in named:
        seen[str(path).lower()] += 1
        number = seen[str(path).lower()]
        unique.append(path if number == 1 else path.with_name(f"{path.name[:-len(suffix)]}_{number}{suffix}"))
    return unique


def segment_folder(inputs: str | Path | Sequence[str | Path], output_dir: str | Path, model: Any, *,
                   overwrite: bool = False, suffix: str = "_labels.tif",
                   large_image_pixels: int = LARGE_IMAGE_PIXELS, **params: Any) -> Iterator[Progress | FileResult]:
    """Segment every image file (or every image in the given folders) into `output_dir/<stem>_labels.tif`
    (`<parent folder>_<stem>_labels.tif` where stems collide, see `output_paths`; existing files are never
    replaced unless `overwrite`).

    Yields `Progress(files done, files, message)` while working and one `FileResult` per file; a file that
    cannot be read, has the wrong dimensions or would overwrite an existing output (without `overwrite`) gives
    a `FileResult` with `error` set and the run goes on. 2D images above `large_image_pixels` go through
    `inference.chunked.iter_segment_dask` into a memory-mapped TIFF. Stop iterating (or `.close()`) to cancel.
    """
    files = expand_inputs([inputs] if isinstance(inputs, (str, Path)) else inputs)
    from .io._atomic import check_output_folder

    output_dir = check_output_folder(output_dir)
    for index, (path, target) in enumerate(zip(files, output_paths(files, output_dir, suffix))):
        yield Progress(index, len(files), f"segmenting {path.name}")
        yield from _segment_file(path, target, model, overwrite, large_image_pixels, params, index, len(files))
    yield Progress(len(files), len(files), "done")


def _segment_file(path: Path, target: Path, model: Any, overwrite: bool, large_image_pixels: int,
                  params: dict, index: int, total: int) -> Iterator[Progress | FileResult]:
    from .errors import CellUnetError
    from .io import open_image

    start = time.perf_counter()
    try:
        if target.exists() and not overwrite:
            raise FileExistsError(f"{target} already exists (--overwrite, or overwrite=True, replaces it)")
        opened = open_image(path)
        data = opened.data
        if data.ndim == 2 and data.shape[0] * data.shape[1] > large_image_pixels:
            n_cells, diameter = yield from _segment_large(data, target, model, params, index, total, path.name)
        else:
            n_cells, diameter = yield from _segment_in_memory(np.asarray(data), target, model, params, overwrite,
                                                              index, total, path.name, pixel_size(opened))
    except (CellUnetError, ValueError, OSError) as exc:
        message = str(exc) if str(path) in str(exc) or str(target) in str(exc) else f"{path}: {exc}"
        yield FileResult(path, None, seconds=time.perf_counter() - start, error=message)
        return
    yield FileResult(path, target, n_cells=n_cells, seconds=time.perf_counter() - start, diameter=diameter)


def pixel_size(opened) -> tuple[float, float] | None:
    """(y, x) pixel size in µm of an opened image (`io.ImageData`), None when the file has none."""
    if opened.scale is None:
        return None
    spatial = opened.scale[:-1] if opened.rgb else opened.scale
    return (float(spatial[-2]), float(spatial[-1])) if len(spatial) >= 2 else None


def _segment_in_memory(image: np.ndarray, target: Path, model: Any, params: dict, overwrite: bool,
                       index: int, total: int, name: str, pixel_size: tuple[float, float] | None = None
                       ) -> Iterator[Progress]:
    from .inference import iter_segment
    from .io import write_labels_tiff

    result = yield from relay(iter_segment(image, model, **params),
                              lambda item: Progress(index, total, f"{name}: {item.message or f'{item.done}/{item.total}'}"))
    write_labels_tiff(target, result.labels, overwrite=overwrite, pixel_size=pixel_size)
    return int(result.n_cells), result.diameter


def _segment_large(image: Any, target: Path, model: Any, params: dict, index: int, total: int,
                   name: str) -> Iterator[Progress]:
    import tifffile

    from .inference.chunked import central_diameter, iter_segment_dask
    from .inference.instances import keyed_label_dtype
    from .io._atomic import atomic_path

    dtype = keyed_label_dtype(*image.shape)
    dask_params = _dask_params(params)
    if dask_params.get("diameter", "auto") == "auto":
        yield Progress(index, total, f"{name}: estimating cell size")
        dask_params["diameter"] = central_diameter(image, model, params.get("device", "auto"))
    with atomic_path(target, overwrite=True) as tmp:
        out = tifffile.memmap(tmp, shape=tuple(image.shape), dtype=dtype, photometric="minisblack")
        yield from relay(iter_segment_dask(image, model, out, **dask_params),
                         lambda item: Progress(index, total, f"{name}: {item.message}"))
        out.flush()
        n_cells = int(out.max()) if out.size else 0
        del out
    return n_cells, dask_params["diameter"]


def _dask_params(params: dict) -> dict:
    allowed = {"chunk", "overlap", "device", "tile_size", "low", "high", "cell_threshold", "border_threshold",
               "min_size", "diameter", "precision", "tta"}
    return {k: v for k, v in params.items() if k in allowed}
