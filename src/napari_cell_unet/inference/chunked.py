"""Huge 2D images (numpy, memmap, dask) segmented chunk by chunk through dask (`segment_dask`).

1. Normalisation uses percentiles of the *whole* image (`normalize.percentile_range`: only its strided sample
   is read), so every chunk is scaled alike.
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
from collections.abc import Callable, Generator
from typing import Any

import numpy as np

from .._progress import Progress
from .devices import resolve_device
from .diameter import estimate_cell_diameter
from .instances import instance_params, keyed_instances, keyed_label_dtype, relabel_consecutive, sized_params
from .normalize import apply_normalization, percentile_range
from .predict import predict_probabilities
from .rescale import diameter_scale, model_diameter, rescale_plane, resize_probabilities

DEFAULT_CHUNK = 2048
DEFAULT_OVERLAP = 128


class ChunkedCancelled(Exception):
    """Raised inside dask tasks to stop a run that the consumer cancelled."""


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


def model_predictor(model: Any, device: Any, tile_size: int | None, threads: int | None = None,
                    precision: str = "auto", tta: bool = False) -> Callable[[np.ndarray], np.ndarray]:
    """Chunk -> (2, h, w) probabilities with the model, for chunks already normalised with global percentiles."""
    def predict(normalized: np.ndarray) -> np.ndarray:
        # identity ranges: by default each chunk would be normalised by its own percentiles
        return predict_probabilities(normalized, model, device=device, rgb=False,
                                     ranges=[(0.0, 1.0)] * model.in_channels, threads=threads,
                                     precision=precision, tta=tta,
                                     **({"tile_size": tile_size} if tile_size else {}))

    return predict


def _rescaled_predictor(predict: Callable[[np.ndarray], np.ndarray], scale: float
                        ) -> Callable[[np.ndarray], np.ndarray]:
    def rescaled(normalized: np.ndarray) -> np.ndarray:
        return resize_probabilities(predict(rescale_plane(normalized, scale)), normalized.shape)

    return rescaled


def central_diameter(image: Any, model: Any, device: str = "auto", side: int = 2048) -> float | None:
    """The cells' diameter (px) estimated on the central `side` x `side` pixels of a huge 2-D image."""
    height, width = (int(n) for n in image.shape)
    top, left = max(0, (height - side) // 2), max(0, (width - side) // 2)
    centre = np.asarray(image[top:top + side, left:left + side])
    return estimate_cell_diameter(centre, model, device=device, rgb=False).diameter


def segment_dask(image: Any, model: Any, chunk: int = DEFAULT_CHUNK, overlap: int = DEFAULT_OVERLAP, *,
                 device: str = "auto", tile_size: int | None = None, low: float | None = None,
                 high: float | None = None, cell_threshold: float | None = None,
                 border_threshold: float | None = None, min_size: int | None = None,
                 diameter: float | str | None = None, on_block: Callable[[], None] | None = None,
                 predict: Callable[[np.ndarray], np.ndarray] | None = None, precision: str = "auto",
                 tta: bool = False) -> Any:
    """Lazy instance labels of a huge 2D image (numpy, memmap or dask), computed chunk by chunk.

    Returns a dask array of unique (not consecutive) ids, uint32 (uint64 beyond 2**32 pixels); see the module
    docstring for why an object crossing chunk borders keeps one id. `on_block` is called after each labelled
    chunk (progress; raising cancels). `predict` maps a globally normalised float32 chunk to its (2, h, w)
    probabilities (default: `model` through the tiled predictor). `diameter`: typical cell diameter (px); each
    chunk is zoomed to the model's cell size for prediction (see `inference.iter_segment`); "auto" estimates it
    on the image's central 2048 x 2048 pixels; `overlap` and `min_size` stay in original pixels; `precision` and
    `tta` (test-time flips) as in `inference.iter_segment`. Other parameters
    default to the model's (`normalization`, `postprocessing`).
    """
    import dask.array as da

    if image.ndim != 2:
        raise ValueError(f"segment_dask needs a 2D image, got shape {tuple(image.shape)}")
    height, width = (int(n) for n in image.shape)
    chunk, overlap = int(chunk), int(overlap)
    if chunk <= 2 * overlap:
        raise ValueError(f"chunk ({chunk}) must be larger than twice the overlap ({overlap})")
    params = instance_params(model, cell_threshold, border_threshold, min_size)
    norm = model.normalization
    lo, hi = percentile_range(image, norm["low"] if low is None else low, norm["high"] if high is None else high)
    if predict is None:
        predict = model_predictor(model, resolve_device(device), tile_size, precision=precision, tta=tta)
    if diameter == "auto":
        diameter = central_diameter(image, model, device)
    scale = diameter_scale(model, diameter)
    if scale != 1.0:
        predict = _rescaled_predictor(predict, scale)
    params = sized_params(params, diameter or model_diameter(model))
    label_dtype = keyed_label_dtype(height, width)

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
        keyed = keyed_instances(block[0], block[1], _extended_origin(chunks, block_id, overlap), width, label_dtype,
                                **params)
        core = _crop_core(keyed, block_id, (1, *numblocks), overlap)
        if on_block is not None:
            on_block()
        return core

    extended_probs = da.overlap.overlap(probabilities, depth={0: 0, 1: overlap, 2: overlap}, boundary="none")
    return extended_probs.map_blocks(label_block, dtype=label_dtype, drop_axis=0, chunks=chunks,
                                     meta=np.empty((0, 0), label_dtype))


def iter_segment_dask(image: Any, model: Any, out: Any | None = None, *, consecutive: bool = True,
                      **params: Any) -> Generator[Progress, None, Any]:
    """Segment a huge 2D image into `out` (a numpy array, np.memmap or zarr array of its shape; allocated in
    memory when None), yielding `Progress` per chunk; returns `out`. Stop iterating (or `.close()`) to cancel.
    """
    stop = threading.Event()
    events: queue.Queue = queue.Queue()
    done = [0]

    def on_block() -> None:
        if stop.is_set():
            raise ChunkedCancelled()
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
        return out
    finally:
        stop.set()
        worker.join()
