"""Whole images and stacks to instance labels, as a cancellable generator and as a plain function."""

from __future__ import annotations

import os
import time
import warnings
from collections import deque
from collections.abc import Callable, Generator, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._progress import Progress, result_of, relay
from .devices import instance_workers
from .diameter import DiameterEstimate, iter_estimate_diameter
from .instances import BAND_MARGIN, BandedInstances, instance_params, sized_params
from .normalize import ImageError, is_rgb
from .predict import DEFAULT_BATCH_SIZE, DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, RowsFinal, TiledPredictor
from .rescale import BilinearRows, diameter_scale, model_diameter, rescale_plane, scaled_shape
from .taught_diameters import far_apart, taught_diameter, typical_diameter


AUTO = "auto"
TAUGHT = "training labels"  # DiameterEstimate.source when the model was fine-tuned on this image
# DiameterEstimate.source when the estimate is far from the typical size of the cells a model was taught, on whose
# training images the estimate failed (`taught_diameters.size_check`)
TYPICAL = "typical training cells"
# The median size of the cells annotated on an image the model was trained on is used as that image's diameter when
# at least this many cells were annotated, or when it is 1.5x away from the automatic estimate (which then failed);
# a few painted cells' median is otherwise less exact than the estimate (validation, benchmarks/RESULTS.md)
TRUSTED_CELLS = 30
TAUGHT_DISAGREEMENT = 1.5


@dataclass
class SegmentationResult:
    """labels: uint32 (..., H, W), ids 1..n per 2-D slice; probabilities: float32 (..., 2, H, W) cell, border, or None.

    diameter: the cell diameter (px) the image was treated as having, None = the model's own size (no rescaling);
    diameter_estimate: the `DiameterEstimate` when `diameter="auto"`, else None.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    n_cells: int
    seconds: float
    device: str
    diameter: float | None = None
    diameter_estimate: DiameterEstimate | None = None


def iter_segment(image: Any, model: Any = None, *, device: str = "auto", tile_size: int = DEFAULT_TILE_SIZE,
                 overlap: int | float = DEFAULT_OVERLAP, batch_size: int | None = DEFAULT_BATCH_SIZE,
                 precision: str = "auto", threads: int | None = None, cell_threshold: float | None = None,
                 border_threshold: float | None = None, min_size: int | None = None,
                 return_probabilities: bool = False, rgb: bool | None = None, diameter: float | str | None = AUTO,
                 tta: bool = False) -> Generator[Progress, None, SegmentationResult]:
    """Segment a 2-D image or a stack; yield `Progress` per tile batch and return the `SegmentationResult`
    (`result = yield from iter_segment(...)`, or `_progress.result_of(iter_segment(...))`).

    image: (H, W), (H, W, 3|4) colour, or any leading axes (T, Z, ...) before those, as numpy,
        dask or any array that slices lazily; leading axes are processed slice by slice.
    model: a `CellModel`, a model file path, or None for the bundled default model.
    rgb: whether the last axis is colour; None = detect (last axis of size 3 or 4).
    cell_threshold, border_threshold, min_size: None = the model's tuned defaults (objects under a fraction of a
        cell's area at the diameter used, or under the model's `min_size`, are removed). A `min_size` given counts
        pixels of the original image, whatever `diameter` is, and is the whole rule. Objects holding two or more
        cell-sized seeds under the model's stricter `split_border_threshold` are split (`split_by_strict_seeds`).
    diameter: typical cell diameter in this image (px); each plane is zoomed by the model's
        `cell_diameter` metadata (50 px for older model files) / `diameter` before prediction and the
        probabilities are resized back, so labels (and probabilities) keep the image's shape.
        "auto" (default) = estimated from the image (a stack: from its middle slice, used for all);
        None = no rescaling (the cells are taken to be the model's own size).
    tta: test-time augmentation: probabilities averaged over the four flips of each tile (4x slower).
    Cancel by closing the generator (or just dropping it): the model goes back to where it
    was and GPU memory is freed. In a stack, a slice that is blank (constant or all NaN)
    gets empty labels and a warning; a single blank image raises `ImageError`.
    """
    model = _resolve_model(model)
    run = _Run(model, instance_params(model, cell_threshold, border_threshold, min_size),
               dict(device=device, tile_size=tile_size, overlap=overlap, batch_size=batch_size, precision=precision,
                    threads=threads, tta=tta))
    try:
        pending = yield from run.iter_start(image, rgb, diameter, return_probabilities)
        return (yield from pending.iter_finish())
    finally:
        run.close()


@dataclass
class ImageProgress:
    """`iter_segment_many`'s progress within image number `index` (from 0)."""

    index: int
    progress: Progress


@dataclass
class SegmentedImage:
    """`iter_segment_many`'s result for image number `index` (from 0)."""

    index: int
    result: SegmentationResult


def iter_segment_many(images: Iterable[Any], model: Any = None, *, rgb: bool | None | Sequence[bool | None] = None,
                      return_probabilities: bool | Sequence[bool] = False, diameter: float | str | None = AUTO,
                      cell_threshold: float | None = None, border_threshold: float | None = None,
                      min_size: int | None = None, **predictor_params: Any
                      ) -> Generator[ImageProgress | SegmentedImage, None, None]:
    """Segment several images or stacks, each as `iter_segment` does (same parameters; `rgb` and
    `return_probabilities` may also be given per image), with one copy of the network and one pool of instance
    threads: an image's last instances are computed while the next image is sized and predicted, so the network
    (a GPU above all) does not wait between images. `images` is read lazily, one image at a time.

    Yields `ImageProgress(index, progress)` while working and one `SegmentedImage(index, result)` per image, in
    order; an image's result comes once the next image is predicted. An error in one image ends the run after the
    results of the images before it. Cancel by closing the generator.
    """
    model = _resolve_model(model)
    run = _Run(model, instance_params(model, cell_threshold, border_threshold, min_size), predictor_params)
    try:
        pending = None
        for index, image in enumerate(images):
            steps = run.iter_start(image, _of_image(rgb, index), diameter, _of_image(return_probabilities, index))
            try:
                started = yield from relay(steps, lambda event, index=index: ImageProgress(index, event))
            except Exception:  # (not on GeneratorExit: a cancelled run yields nothing more)
                if pending is not None:
                    yield SegmentedImage(index - 1, result_of(pending.iter_finish()))
                raise
            if pending is not None:
                yield SegmentedImage(index - 1, result_of(pending.iter_finish()))
            pending = started
        if pending is not None:
            yield SegmentedImage(index, result_of(pending.iter_finish()))
    finally:
        run.close()


def _of_image(value: Any, index: int) -> Any:
    """A per-image option: the `index`-th of a list or tuple, else the value itself."""
    return value[index] if isinstance(value, (list, tuple)) else value


class _Run:
    """One copy of the network (a `TiledPredictor`, made at the first image) and one pool of instance threads for
    one or more images; `close()` frees both."""

    def __init__(self, model: Any, post_params: dict[str, Any], predictor_params: dict[str, Any]):
        self.model, self.post_params, self.predictor_params = model, post_params, predictor_params
        self.predictor: TiledPredictor | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.workers = 1

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)
        if self.predictor is not None:
            self.predictor.close()

    def iter_start(self, image: Any, rgb: bool | None, diameter: float | str | None, return_probabilities: bool
                   ) -> Generator[Progress, None, "_Pending"]:
        """Size and predict an image; its last slices' instances may still be running in the pool (`_Pending`)."""
        model = self.model
        shape = tuple(np.shape(image))
        rgb = is_rgb(shape) if rgb is None else rgb
        plane_ndim = 3 if rgb else 2
        if len(shape) < plane_ndim or min(shape[-plane_ndim:][:2], default=0) < 1:
            raise ImageError(f"expected an image of shape (..., H, W){' x C' if rgb else ''}, got {shape}")
        leading, plane = shape[:-plane_ndim], shape[-plane_ndim:][:2]
        slices = list(np.ndindex(*leading))
        auto = isinstance(diameter, str)
        if auto and diameter != AUTO:
            raise ValueError(f"diameter must be a number of pixels, 'auto' or None, not {diameter!r}")
        if not auto:
            diameter_scale(model, diameter, plane)  # a clear error before any work
        started = time.perf_counter()
        predictor = self._predictor()
        estimate = None
        if auto:
            estimate = yield from _iter_estimate(predictor, model, image, slices, rgb)
            diameter = estimate.diameter
            if diameter is None:
                warnings.warn("found no cells of any size to measure the cell diameter from: segmenting at the "
                              "model's own cell size", RuntimeWarning, stacklevel=3)
        scale = diameter_scale(model, diameter, plane)
        # rows of context around each band of the instance step: a few cell diameters
        margin = max(BAND_MARGIN, int(3 * diameter)) if diameter else BAND_MARGIN
        pending = _Pending(np.zeros(leading + plane, dtype=np.uint32),
                           np.zeros(leading + (len(model.classes),) + plane, dtype=np.float32)
                           if return_probabilities else None,
                           slices, predictor.grid(scaled_shape(plane, scale)).n_tiles + 1,  # tiles, then instances
                           started, predictor.device_name, None if diameter is None else float(diameter), estimate)
        # without a diameter the image is segmented as if its cells had the model's own size
        post_params = sized_params(self.post_params, diameter or model_diameter(model))
        yield from self._iter_slices(image, rgb, scale, {**post_params, "margin": margin}, pending)
        return pending

    def _predictor(self) -> TiledPredictor:
        if self.predictor is None:
            self.predictor = TiledPredictor(self.model, **self.predictor_params)
            self.workers = instance_workers(self.predictor.device)
            self.pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="cell-unet-instances")
        return self.predictor

    def _iter_slices(self, image: Any, rgb: bool, scale: float, post_params: dict[str, Any], pending: "_Pending"
                     ) -> Generator[Progress, None, None]:
        """Predict the slices one after another. The instance step runs in the pool while the network works: a
        slice's instances while the next slices are predicted (as many slices in flight as the pool has threads,
        the last ones left to `_Pending.iter_finish`), and a plane big enough to be done in bands band by band as
        its rows are predicted (and resized back, when zoomed)."""
        predictor, labels, probabilities, slices = self.predictor, pending.labels, pending.probabilities, pending.slices
        plane = labels.shape[-2:]
        steps = pending.steps
        total = len(slices) * steps
        for number, index in enumerate(slices):
            prefix = f"slice {number + 1}/{len(slices)}: " if labels.ndim > 2 else ""
            rows = _PlaneRows(plane, scaled_shape(plane, scale), predictor, self.pool.submit, post_params)
            try:
                zoomed = yield from _iter_slice(predictor, np.asarray(image[index]), rgb, scale, number * steps,
                                                steps, total, prefix, rows.rows_final)
            except ImageError as exc:
                if len(slices) == 1:
                    raise
                warnings.warn(f"slice {index}: {exc}; left empty", RuntimeWarning, stacklevel=2)
                continue
            probs = rows.finished(zoomed, wait=probabilities is not None)
            if probabilities is not None:
                probabilities[index] = probs
            pending.waiting.append((index, rows.bands, probs, prefix))
            while len(pending.waiting) > self.workers:
                yield _collect(labels, *pending.waiting.popleft(), Progress(number * steps + steps - 1, total))


@dataclass
class _Pending:
    """An image predicted whose last slices' instances may still be running (`waiting`)."""

    labels: np.ndarray
    probabilities: np.ndarray | None
    slices: list[tuple[int, ...]]
    steps: int  # progress steps per slice: its tiles, then its instances
    started: float
    device: str
    diameter: float | None
    estimate: DiameterEstimate | None
    waiting: deque = field(default_factory=deque)

    def iter_finish(self) -> Generator[Progress, None, SegmentationResult]:
        """Wait for the instances still running; the `SegmentationResult`."""
        total = len(self.slices) * self.steps
        while self.waiting:
            yield _collect(self.labels, *self.waiting.popleft(), Progress(total - (1 if self.waiting else 0), total))
        n_cells = sum(int(self.labels[index].max(initial=0)) for index in self.slices)
        return SegmentationResult(self.labels, self.probabilities, n_cells, time.perf_counter() - self.started,
                                  self.device, self.diameter, self.estimate)


def _iter_estimate(predictor: TiledPredictor, model: Any, image: Any, slices: list[tuple[int, ...]], rgb: bool
                   ) -> Generator[Progress, None, DiameterEstimate]:
    """`diameter="auto"`: the size of the cells annotated when the model was fine-tuned on this very image, else
    the automatic estimate (corrected by what the model remembers of its training images)."""
    taught = taught_diameter(model, image, slices)
    if taught is not None and taught[1] >= TRUSTED_CELLS:  # an image this model was fine-tuned on
        return DiameterEstimate(taught[0], taught[1], source=TAUGHT)
    estimate = yield from _iter_auto_diameter(predictor, _probe_model(model), image, slices, rgb)
    if taught is not None and far_apart(taught[0], estimate.diameter, TAUGHT_DISAGREEMENT):
        return DiameterEstimate(taught[0], taught[1], estimate.probes, source=TAUGHT)
    return _typical_if_misjudged(model, estimate)


def _collect(labels: np.ndarray, index: tuple[int, ...], bands: BandedInstances, probs: np.ndarray, prefix: str,
             progress: Progress) -> Progress:
    """Wait for a slice's instances, write them to `labels`; the progress event that says so."""
    labels[index] = bands.labels_of(probs[0], probs[1])
    return progress._replace(message=f"{prefix}instances done")


class _PlaneRows:
    """One plane's probability maps at the plane's own size, taken from its (zoomed) prediction as rows of it become
    final, and the plane's `BandedInstances` fed with them. Resizing and bands run in `submit`'s thread pool; a
    band first waits for the resizing submitted before it (which a pool takes up in the order submitted, so it is
    running or done: no worker waits for a task queued behind it)."""

    def __init__(self, plane: tuple[int, int], zoomed: tuple[int, int], predictor: TiledPredictor,
                 submit: Callable[..., Any], post_params: dict[str, Any]):
        self.resizer = None if tuple(zoomed) == tuple(plane) else BilinearRows(zoomed, plane, axis=1)
        tile_rows = predictor.grid(zoomed).starts_y
        final_rows = tile_rows if self.resizer is None else [self.resizer.rows_from(row) for row in tile_rows]
        self.submit = submit
        self.bands = BandedInstances(plane, submit=self._submit_band, final_rows=final_rows, **post_params)
        self.maps: np.ndarray | None = None  # the resized maps (zoomed planes only)
        self.resized = 0
        self.resizing: list[Any] = []

    def rows_final(self, zoomed: np.ndarray, stop: int) -> None:
        """Rows [0, `stop`) of the prediction `zoomed` (classes, h, w) are final."""
        if self.resizer is None:
            self.maps = zoomed
            self.bands.rows_final(zoomed[0], zoomed[1], stop)
            return
        if self.maps is None:
            self.maps = np.empty((zoomed.shape[0],) + self.bands.shape, np.float32)
        stop = self.resizer.rows_from(stop)
        if stop > self.resized:
            self.resizing.append(self.submit(self.resizer.resize, zoomed, self.maps, self.resized, stop))
            self.resized = stop
            self.bands.rows_final(self.maps[0], self.maps[1], stop)

    def _submit_band(self, function: Callable[..., Any], *args: Any) -> Any:
        return self.submit(_after, list(self.resizing), function, *args)

    def finished(self, zoomed: np.ndarray, wait: bool) -> np.ndarray:
        """The whole prediction is in: the plane's maps at its own size (complete once `wait`ed for)."""
        self.rows_final(zoomed, zoomed.shape[1])
        if wait:
            for future in self.resizing:
                future.result()
        return self.maps


def _after(futures: list[Any], function: Callable[..., Any], *args: Any) -> Any:
    for future in futures:
        future.result()
    return function(*args)


def _typical_if_misjudged(model: Any, estimate: DiameterEstimate) -> DiameterEstimate:
    """The typical size of the model's training cells instead of an estimate that far from it, for a model whose
    training images the estimate misjudged (a kind of image the measuring model does not know)."""
    typical = typical_diameter(model)
    if typical is None or not far_apart(typical, estimate.diameter):
        return estimate
    return DiameterEstimate(typical, 0, estimate.probes, source=TYPICAL)


def segment(image: Any, model: Any = None, *, progress: Callable[[Progress], None] | None = None,
            should_stop: Callable[[], bool] | None = None, **params: Any):
    """Instance labels (uint32, same leading shape as `image` without colour) for an image or stack.

    Returns `(labels, probabilities)` with `return_probabilities=True`, and None when
    `should_stop()` returned True (cancelled). Other parameters: see `iter_segment`.
    """
    result = result_of(iter_segment(image, model, **params), on_event=progress, should_stop=should_stop)
    if result is None:
        return None
    return (result.labels, result.probabilities) if params.get("return_probabilities") else result.labels


def _iter_auto_diameter(predictor: TiledPredictor, probe_model: Any, image: Any, slices: list[tuple[int, ...]],
                        rgb: bool) -> Generator[Progress, None, DiameterEstimate]:
    """The cells' diameter estimated by `probe_model` (on the predictor's device and precision); by the model
    itself when `probe_model` finds no cells (diameter None when neither does)."""
    estimate = None
    if probe_model is not predictor.model:
        probes = TiledPredictor(probe_model, device=predictor.device_name, precision=predictor.requested_precision,
                                threads=predictor.threads, tile_size=predictor.tile_size, overlap=predictor.overlap)
        try:
            estimate = yield from _iter_middle_slice_estimate(probes, image, slices, rgb)
        finally:
            probes.close()
    if estimate is None or estimate.diameter is None:
        estimate = yield from _iter_middle_slice_estimate(predictor, image, slices, rgb)
    return estimate


def iter_measured_diameter(model: Any, plane: np.ndarray, *, device: str = "auto", threads: int | None = None
                           ) -> Generator[Progress, None, float | None]:
    """The automatic estimate of a 2-D (or colour) plane as `diameter="auto"` measures it for `model`, before
    anything the model remembers of its training images is consulted (what `taught_diameters.size_check` judges);
    None when no cells were found."""
    predictor = TiledPredictor(model, device=device, threads=threads)
    try:
        estimate = yield from _iter_auto_diameter(predictor, _probe_model(model), plane, [()], is_rgb(np.shape(plane)))
    finally:
        predictor.close()
    return estimate.diameter


def _iter_middle_slice_estimate(predictor: TiledPredictor, image: Any, slices: list[tuple[int, ...]], rgb: bool
                                ) -> Generator[Progress, None, DiameterEstimate]:
    """The estimate on the middle slice (the first non-blank one from there on)."""
    order = slices[len(slices) // 2:] + slices[:len(slices) // 2]
    for number, index in enumerate(order):
        try:
            return (yield from iter_estimate_diameter(predictor, np.asarray(image[index]), rgb))
        except ImageError:  # a blank slice: try the next one
            if number == len(order) - 1:
                raise
    raise ImageError("the image has no slices")


def _iter_slice(predictor: TiledPredictor, plane: np.ndarray, rgb: bool, scale: float, offset: int, steps: int,
                total: int, prefix: str, on_rows_final: RowsFinal | None = None
                ) -> Generator[Progress, None, np.ndarray]:
    """Predict one 2-D slice zoomed by `scale` (the probabilities at the zoomed size), turning its tile progress
    into progress over the whole run."""
    tiles = predictor.iter_predict(rescale_plane(plane, scale, rgb), rgb=rgb, on_rows_final=on_rows_final)
    return (yield from relay(tiles, lambda step: Progress(offset + round(step.fraction * (steps - 1)), total,
                                                          prefix + step.message)))


def _resolve_model(model: Any):
    from ..model import CellModel, files, load_model

    if model is None:
        return files.bundled_model()
    if isinstance(model, (str, os.PathLike)):
        return load_model(model)
    if not isinstance(model, CellModel):
        raise TypeError(f"model must be a CellModel, a model file path or None, not {type(model).__name__}")
    return model


def _probe_model(model: Any) -> Any:
    """The model that measures the cell size for `model`: a model fine-tuned from the bundled default is measured
    by the bundled model, whose probes a few painted cells have not moved (fine-tuned at one zoom, a model's
    response at the probes' other zooms drifts and the automatic diameter with it; benchmarks/RESULTS.md)."""
    from ..model import files

    if model.metadata.get("diameter_model") != files.BUNDLED_PROBES or not files.default_model_available():
        return model
    return files.bundled_model()
