"""Batch work: every image in folders or file lists, and single images too large for memory (through dask).

Huge 2D images (`segment_dask`)
-------------------------------
1. Normalisation uses percentiles of a strided subsample of the *whole* image, so every chunk is scaled alike.
2. Probabilities: each chunk is predicted on the chunk plus `overlap` pixels of image context on every side
   (none at the image edge) and cropped back to the chunk, so each pixel's probability is computed once.
3. Instances: each chunk runs `instances_from_probabilities` on the stitched probabilities of the chunk plus
   `overlap` pixels around it, and keeps the labels of its own pixels. Neighbouring chunks see the same
   probabilities in their shared margins, so an object crossing a chunk border is segmented identically by both
   chunks as long as it (and the cells touching it) lies within `overlap` pixels of the border. Each object
   is then named by a key that does not depend on which chunk computed it: 1 + the full-image row-major index
   of its first interior pixel (cell and not border, so never a pixel that watershed ties could give to a
   neighbour). Both halves of a crossing object therefore carry the same id, with no merge step. Where two
   chunks break a watershed tie differently, each pixel keeps the label of the chunk that owns it.
   The ids are unique but not consecutive; `iter_segment_dask` renumbers them 1..N in a cheap second pass
   over the written result.
Memory is bounded by a few chunks (plus the output array, which may be a memory-mapped file).
"""

from __future__ import annotations

import queue
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ._progress import Progress
from .inference.instances import relabel_consecutive

DEFAULT_CHUNK = 2048
DEFAULT_OVERLAP = 128
SAMPLE_PIXELS = 4_000_000
LARGE_IMAGE_PIXELS = 8192 * 8192  # above this, files go through segment_dask


class BatchCancelled(Exception):
    """Raised inside dask tasks to stop a run that the consumer cancelled."""


# ---------------------------------------------------------------- huge images through dask

def _model_defaults(model: Any) -> dict[str, Any]:
    meta = getattr(model, "metadata", {}) or {}
    norm = meta.get("normalization", {}) or {}
    post = meta.get("postprocessing", {}) or {}
    return {"low": norm.get("low", 1.0), "high": norm.get("high", 99.8),
            "cell_threshold": post.get("cell_threshold", 0.5), "border_threshold": post.get("border_threshold", 0.5),
            "min_size": post.get("min_size", 0)}


def global_percentiles(image: Any, low: float, high: float, max_pixels: int = SAMPLE_PIXELS) -> tuple[float, float]:
    """Percentiles of a regular 2D subsample of a (dask or numpy) image, as inference computes them.

    Only the subsample is read, so a lazy image is not loaded whole.
    """
    from .inference.normalize import percentile_range

    step = max(1, int(np.ceil(np.sqrt(image.shape[0] * image.shape[1] / max_pixels))))
    return percentile_range(np.asarray(image[::step, ::step]), low, high)


def _chunks_for(length: int, chunk: int, overlap: int) -> tuple[int, ...]:
    """Chunk sizes of `chunk`, where a last remainder shorter than the overlap joins its neighbour."""
    sizes = [chunk] * (length // chunk) + ([length % chunk] if length % chunk else [])
    if len(sizes) > 1 and sizes[-1] < overlap:
        sizes[-2] += sizes.pop()
    return tuple(sizes)


def _crop_core(block: np.ndarray, block_id: tuple[int, ...], numblocks: tuple[int, ...], depth: int) -> np.ndarray:
    """Remove the overlap that `dask.array.overlap(boundary='none')` added to the last two axes."""
    i, j = block_id[-2:]
    top, left = (depth if i > 0 else 0), (depth if j > 0 else 0)
    bottom = block.shape[-2] - (depth if i < numblocks[-2] - 1 else 0)
    right = block.shape[-1] - (depth if j < numblocks[-1] - 1 else 0)
    return block[..., top:bottom, left:right]


def _extended_origin(chunks: tuple[tuple[int, ...], ...], block_id: tuple[int, ...], depth: int) -> tuple[int, int]:
    i, j = block_id[-2:]
    y0, x0 = sum(chunks[-2][:i]), sum(chunks[-1][:j])
    return y0 - (depth if i > 0 else 0), x0 - (depth if j > 0 else 0)


def _model_predictor(model: Any, device: Any, tile_size: int | None, threads: int | None = None
                     ) -> Callable[[np.ndarray], np.ndarray]:
    """Chunk -> (2, h, w) probabilities with the model, for chunks already normalised with global percentiles."""
    from .inference.predict import predict_probabilities

    def predict(normalized: np.ndarray) -> np.ndarray:
        # identity ranges: by default each chunk would be normalised by its own percentiles
        return predict_probabilities(normalized, model, device=device, rgb=False,
                                     ranges=[(0.0, 1.0)] * model.in_channels, threads=threads,
                                     **({"tile_size": tile_size} if tile_size else {}))

    return predict


def _rescaled_predictor(predict: Callable[[np.ndarray], np.ndarray], scale: float
                        ) -> Callable[[np.ndarray], np.ndarray]:
    from .inference.rescale import rescale_plane, resize_probabilities

    def rescaled(normalized: np.ndarray) -> np.ndarray:
        return resize_probabilities(predict(rescale_plane(normalized, scale)), normalized.shape)

    return rescaled


def central_diameter(image: Any, model: Any, device: str = "auto", side: int = 2048) -> float | None:
    """The cells' diameter (px) estimated on the central `side` x `side` pixels of a huge 2-D image."""
    from .inference.diameter import estimate_cell_diameter

    height, width = (int(n) for n in image.shape)
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    centre = np.asarray(image[top:top + side, left:left + side])
    return estimate_cell_diameter(centre, model, device=device, rgb=False).diameter


def segment_dask(image: Any, model: Any, chunk: int = DEFAULT_CHUNK, overlap: int = DEFAULT_OVERLAP, *,
                 device: str = "auto", tile_size: int | None = None, low: float | None = None,
                 high: float | None = None, cell_threshold: float | None = None,
                 border_threshold: float | None = None, min_size: int | None = None,
                 diameter: float | str | None = None, on_block: Callable[[], None] | None = None,
                 predict: Callable[[np.ndarray], np.ndarray] | None = None) -> Any:
    """Lazy instance labels of a huge 2D image (numpy, memmap or dask), computed chunk by chunk.

    Returns a dask array of unique (not consecutive) ids, uint32 (uint64 beyond 2**32 pixels); see the module
    docstring for why an object crossing chunk borders keeps one id. `on_block` is called after each labelled
    chunk (progress; raising cancels). `predict` maps a globally normalised float32 chunk to its (2, h, w)
    probabilities (default: `model` through the tiled predictor). `diameter`: typical cell diameter (px); each
    chunk is zoomed to the model's cell size for prediction (see `inference.iter_segment`); "auto" estimates it
    on the image's central 2048 x 2048 pixels; `overlap` and `min_size` stay in original pixels. Other parameters
    default to the model's metadata.
    """
    import dask.array as da

    from .inference.instances import canonical_ids, instances_from_probabilities
    from .inference.normalize import apply_normalization
    from .inference.rescale import diameter_scale

    if image.ndim != 2:
        raise ValueError(f"segment_dask needs a 2D image, got shape {tuple(image.shape)}")
    height, width = (int(n) for n in image.shape)
    chunk, overlap = int(chunk), int(overlap)
    if chunk <= 2 * overlap:
        raise ValueError(f"chunk ({chunk}) must be larger than twice the overlap ({overlap})")
    params = _model_defaults(model)
    params.update({k: v for k, v in dict(low=low, high=high, cell_threshold=cell_threshold,
                                         border_threshold=border_threshold, min_size=min_size).items()
                   if v is not None})
    lo, hi = global_percentiles(image, params["low"], params["high"])
    if predict is None:
        from .inference.devices import resolve_device

        predict = _model_predictor(model, resolve_device(device), tile_size)
    if diameter == "auto":
        diameter = central_diameter(image, model, device)
    scale = diameter_scale(model, diameter)
    if scale != 1.0:
        predict = _rescaled_predictor(predict, scale)
    label_dtype = np.dtype(np.uint32 if height * width < 2**32 - 1 else np.uint64)

    chunks = (_chunks_for(height, chunk, overlap), _chunks_for(width, chunk, overlap))
    source = da.asarray(image).rechunk(chunks)
    numblocks = source.numblocks

    def predict_block(block: np.ndarray, block_id=None) -> np.ndarray:
        probs = predict(apply_normalization(block, lo, hi))
        return _crop_core(np.asarray(probs, np.float32), block_id, numblocks, overlap)

    extended_image = da.overlap.overlap(source, depth={0: overlap, 1: overlap}, boundary="none")
    probabilities = extended_image.map_blocks(predict_block, dtype=np.float32, new_axis=0,
                                              chunks=((2,), *chunks), meta=np.empty((0, 0, 0), np.float32))

    def label_block(block: np.ndarray, block_id=None) -> np.ndarray:
        local = instances_from_probabilities(block[0], block[1], cell_threshold=params["cell_threshold"],
                                             border_threshold=params["border_threshold"],
                                             min_size=params["min_size"])
        # the same pointwise test as the seeds of instances_from_probabilities
        interior = (block[0] > params["cell_threshold"]) & (block[1] < params["border_threshold"])
        keyed = canonical_ids(np.asarray(local), interior, _extended_origin(chunks, block_id, overlap), width,
                               label_dtype)
        core = _crop_core(keyed, block_id, (1, *numblocks), overlap)
        if on_block is not None:
            on_block()
        return core

    extended_probs = da.overlap.overlap(probabilities, depth={0: 0, 1: overlap, 2: overlap}, boundary="none")
    return extended_probs.map_blocks(label_block, dtype=label_dtype, drop_axis=0, chunks=chunks,
                                     meta=np.empty((0, 0), label_dtype))


def iter_segment_dask(image: Any, model: Any, out: Any | None = None, *, consecutive: bool = True,
                      **params: Any) -> Iterator[Progress | Any]:
    """Segment a huge 2D image into `out` (a numpy array, np.memmap or zarr array of its shape; allocated in
    memory when None), yielding `Progress` per chunk and finally `out`. Stop iterating (or `.close()`) to cancel.
    """
    stop = threading.Event()
    events: queue.Queue = queue.Queue()
    done = [0]

    def on_block() -> None:
        if stop.is_set():
            raise BatchCancelled()
        done[0] += 1
        events.put(Progress(done[0], total, f"chunk {done[0]}/{total}"))

    labels = segment_dask(image, model, on_block=on_block, **params)
    total = int(np.prod(labels.numblocks))
    if out is None:
        out = np.zeros(labels.shape, labels.dtype)

    def work() -> None:
        try:
            # synchronous: torch already uses every core, and one chunk at a time bounds memory
            labels.store(out, lock=False, scheduler="synchronous")
            events.put(None)
        except BaseException as exc:  # handed to the consumer thread
            events.put(exc)

    worker = threading.Thread(target=work, name="segment-dask", daemon=True)
    worker.start()
    try:
        while (item := events.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
        if consecutive:
            yield Progress(total, total, "renumbering cells")
            relabel_consecutive(out)
        yield out
    finally:
        stop.set()
        worker.join()


# ---------------------------------------------------------------- folders and file lists

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
    `segment_dask` into a memory-mapped TIFF. Stop iterating (or `.close()`) to cancel.
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

    result = None
    for item in iter_segment(image, model, **params):
        if isinstance(item, Progress):
            yield Progress(index, total, f"{name}: {item.message or f'{item.done}/{item.total}'}")
        else:
            result = item
    if result is None:
        raise ValueError(f"{name}: segmentation returned no result")
    write_labels_tiff(target, result.labels, overwrite=overwrite, pixel_size=pixel_size)
    return int(result.n_cells), result.diameter


def _segment_large(image: Any, target: Path, model: Any, params: dict, index: int, total: int,
                   name: str) -> Iterator[Progress]:
    import tifffile

    from .io._atomic import atomic_path

    dtype = np.uint32 if image.shape[0] * image.shape[1] < 2**32 - 1 else np.uint64
    dask_params = _dask_params(params)
    if dask_params.get("diameter", "auto") == "auto":
        yield Progress(index, total, f"{name}: estimating cell size")
        dask_params["diameter"] = central_diameter(image, model, params.get("device", "auto"))
    with atomic_path(target, overwrite=True) as tmp:
        out = tifffile.memmap(tmp, shape=tuple(image.shape), dtype=dtype, photometric="minisblack")
        for item in iter_segment_dask(image, model, out, **dask_params):
            if isinstance(item, Progress):
                yield Progress(index, total, f"{name}: {item.message}")
        out.flush()
        n_cells = int(out.max()) if out.size else 0
        del out
    return n_cells, dask_params["diameter"]


def _dask_params(params: dict) -> dict:
    allowed = {"chunk", "overlap", "device", "tile_size", "low", "high", "cell_threshold", "border_threshold",
               "min_size", "diameter"}
    return {k: v for k, v in params.items() if k in allowed}
