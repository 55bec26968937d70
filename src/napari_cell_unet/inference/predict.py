"""Tiled sliding-window prediction of the cell and border probability maps.

Memory is bounded by the tile batch: tiles are cut, normalised and padded one batch at a
time and blended straight into one preallocated float32 (classes, H, W) array. The
blending weights are separable, so their sum is two 1-D arrays, not another image.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Generator
from typing import Any

import numpy as np
import torch

from .._progress import Progress, result_of
from .devices import autocast_dtype, channels_last, cpu_threads, resolve_device, resolve_precision
from .inference_network import inference_network
from .normalize import channel_ranges, is_rgb, normalize_channels, to_model_channels
from .tiling import TileGrid, make_grid

# on_rows_final(probabilities being filled, stop): rows [0, stop) of them are final
RowsFinal = Callable[[np.ndarray, int], None]

# Tiles of up to 1152 px: 8000 px take 8 tiles of 1056 px where 1024 took 9 of 960 (4 % less work, 9 % on
# 2048 px, 8 % on a 1040 x 1392 camera frame), at the same speed per pixel (benchmarks/RESULTS.md).
DEFAULT_TILE_SIZE = 1152
DEFAULT_OVERLAP = 64
DEFAULT_BATCH_SIZE = None  # 4 tiles per forward on a GPU, 1 on the CPU (no faster batched, ~1 GB more RSS)
MIN_TILE_SIZE = 4 * DEFAULT_OVERLAP  # after GPU out-of-memory; 128 px left no room for the overlap


def predict_probabilities(image2d: np.ndarray, model: Any, device: str | torch.device = "auto",
                          tile_size: int = DEFAULT_TILE_SIZE, overlap: int | float = DEFAULT_OVERLAP,
                          batch_size: int | None = DEFAULT_BATCH_SIZE, precision: str = "auto",
                          rgb: bool | None = None, threads: int | None = None,
                          ranges: list[tuple[float, float]] | None = None, tta: bool = False) -> np.ndarray:
    """Cell and border probabilities, float32 of shape (2, H, W), for one 2-D (or H x W x RGB[A]) image.

    `overlap` is pixels (int) or a fraction of the tile (float < 1). `precision`: "auto"
    (fp16 autocast on CUDA, fp32 elsewhere), "fp32", "bf16" or "fp16" (CUDA only).
    `threads`: torch CPU threads while predicting (default: the cores this process may use).
    `ranges`: per-channel (low, high) intensities mapped to 0 and 1 (default: this image's percentiles
    as the model's metadata asks; pass [(0.0, 1.0)] for an image that is already normalised).
    `tta`: test-time augmentation, the mean over the four flips of each tile (4x the compute).
    """
    predictor = TiledPredictor(model, device=device, tile_size=tile_size, overlap=overlap,
                               batch_size=batch_size, precision=precision, threads=threads, tta=tta)
    try:
        return result_of(predictor.iter_predict(image2d, rgb=rgb, ranges=ranges))
    finally:
        predictor.close()


class TiledPredictor:
    """A model placed on a device for a run of predictions; `close()` puts everything back.

    While active it owns torch's CPU thread count and the network's device, memory format
    and eval mode. A CUDA out-of-memory error halves the tile size (down to
    `MIN_TILE_SIZE`) and then moves the work to the CPU, with a warning each time.
    """

    def __init__(self, model: Any, device: str | torch.device = "auto", tile_size: int = DEFAULT_TILE_SIZE,
                 overlap: int | float = DEFAULT_OVERLAP, batch_size: int | None = DEFAULT_BATCH_SIZE,
                 precision: str = "auto", threads: int | None = None, tta: bool = False):
        self.model = model
        self.tta = bool(tta)
        self.tile_size = int(tile_size)
        self.overlap = overlap
        self.requested_batch_size = batch_size
        self.threads = threads
        self.multiple = size_multiple(model.metadata.get("architecture") or {})
        self.requested_precision = precision
        self._threads_before = torch.get_num_threads()
        self._cudnn_benchmark_before = torch.backends.cudnn.benchmark
        self._activate(resolve_device(device))

    @property
    def device_name(self) -> str:
        return str(self.device)

    def grid(self, shape: tuple[int, int]) -> TileGrid:
        return make_grid(shape, self.tile_size, self.overlap, self.multiple)

    def iter_predict(self, image: np.ndarray, rgb: bool | None = None,
                     ranges: list[tuple[float, float]] | None = None,
                     on_rows_final: RowsFinal | None = None) -> Generator[Progress, None, np.ndarray]:
        """Yield `Progress(tiles done, tiles total)` per tile batch; return the (classes, H, W) probabilities.

        `ranges`: per-channel (low, high) values mapped to 0 and 1; None = this image's own
        percentiles (pass the whole image's ranges when `image` is one chunk of a bigger one).
        `on_rows_final(probabilities, stop)` is called whenever rows `[0, stop)` of the (classes, H, W) array being
        filled are final (no later tile touches them), so their instances can be computed while the rest is
        predicted.
        """
        if rgb is None:
            rgb = is_rgb(np.shape(image))
        channels = to_model_channels(image, self.model.in_channels, rgb)
        if ranges is None:
            ranges = self.normalization_ranges(channels)
        while True:
            try:
                return (yield from self._iter_tiles(channels, ranges, on_rows_final))
            except torch.OutOfMemoryError:
                self._recover_from_oom()

    def normalization_ranges(self, channels: np.ndarray) -> list[tuple[float, float]]:
        """Per-channel percentile (low, high) of a (C, H, W) image, as the model's metadata asks."""
        return channel_ranges(channels, self.model.normalization)

    def close(self) -> None:
        """Drop the inference copy of the network, restore torch's thread count, free GPU memory."""
        was_cuda = self.device.type == "cuda"
        self.network = self.model.network
        torch.set_num_threads(self._threads_before)
        torch.backends.cudnn.benchmark = self._cudnn_benchmark_before
        if was_cuda:
            torch.cuda.empty_cache()

    def _activate(self, device: torch.device) -> None:
        self.device = device
        self.precision = resolve_precision(self.requested_precision, device)
        self.autocast = autocast_dtype(self.precision)
        default_batch = 1 if device.type == "cpu" else 4
        self.batch_size = max(1, int(self.requested_batch_size or default_batch))
        torch.set_num_threads(self.threads or (cpu_threads() if device.type == "cpu" else self._threads_before))
        # every tile of a run has one shape: cuDNN picks its fastest kernels once (as training does)
        torch.backends.cudnn.benchmark = device.type == "cuda" or self._cudnn_benchmark_before
        self.channels_last = channels_last(device, self.precision)
        self.network = inference_network(self.model.network, device, channels_last=self.channels_last,
                                         fold=self.autocast is None)  # folding under autocast: see that module

    def _recover_from_oom(self) -> None:
        if self.device.type != "cuda":
            raise
        torch.cuda.empty_cache()
        if self.tile_size // 2 >= MIN_TILE_SIZE:
            self.tile_size //= 2
            warnings.warn(f"GPU out of memory: retrying with {self.tile_size}-px tiles", RuntimeWarning, stacklevel=3)
            return
        warnings.warn("GPU out of memory even with small tiles: continuing on the CPU", RuntimeWarning, stacklevel=3)
        self.requested_precision = "auto"
        self._activate(torch.device("cpu"))

    def _iter_tiles(self, channels: np.ndarray, ranges: list[tuple[float, float]],
                    on_rows_final: RowsFinal | None = None) -> Generator[Progress, None, np.ndarray]:
        height, width = channels.shape[1:]
        grid = self.grid((height, width))
        wy, wx = grid.window()
        window = np.outer(wy, wx)
        rows, cols = grid.weight_sums()
        probabilities = np.zeros((len(self.model.classes), height, width), dtype=np.float32)
        positions = grid.positions()  # row-major: a row of tiles after another
        final = 0

        def blend(first: int, batch: list[tuple[int, int]], launched: Any) -> Progress:
            nonlocal final
            for (y, x), tile_probs in zip(batch, self._result(launched)):
                h, w = min(grid.tile[0], height - y), min(grid.tile[1], width - x)
                probabilities[:, y:y + h, x:x + w] += tile_probs[:, :h, :w] * window[:h, :w]
            done_rows = (first + len(batch)) // len(grid.starts_x)
            stop = grid.starts_y[done_rows] if done_rows < len(grid.starts_y) else height
            if stop > final:  # rows no later tile reaches: blend weights divided out, handed on
                _divide_rows(probabilities, rows, cols, final, stop)
                final = stop
                if on_rows_final is not None:
                    on_rows_final(probabilities, stop)
            return Progress(first + len(batch), len(positions), f"tile {first + len(batch)}/{len(positions)}")

        previous = None
        for first in range(0, len(positions), self.batch_size):
            batch = positions[first:first + self.batch_size]
            tiles = np.stack([_cut_tile(channels, ranges, y, x, grid.tile) for y, x in batch])
            launched = (first, batch, self._launch(tiles))
            if not self._queues_work():  # done already: nothing to overlap, progress and cancelling at once
                yield blend(*launched)
                continue
            if previous is not None:  # the GPU computes this batch while the previous one is blended here
                yield blend(*previous)
            previous = launched
        if previous is not None:
            yield blend(*previous)
        return probabilities

    def _forward(self, tiles: np.ndarray) -> np.ndarray:
        """The (n, classes, h, w) probabilities of a batch of normalised (n, channels, h, w) tiles."""
        return self._result(self._launch(tiles))

    def _launch(self, tiles: np.ndarray) -> Any:
        """Start the network on a batch of tiles. On a GPU the work is only queued and this returns at once: tiles
        go in from pinned memory and the probabilities come back into pinned memory, without blocking; elsewhere
        the probabilities are computed. `_result` waits for them."""
        cuda = self.device.type == "cuda"
        x = torch.from_numpy(tiles)
        x = x.pin_memory().to(self.device, non_blocking=True) if cuda else x.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.autocast or torch.float32,
                                                     enabled=self.autocast is not None):
            if self.tta:
                flips = ((), (-1,), (-2,), (-2, -1))
                probabilities = sum(torch.sigmoid(self._flipped(x, axes).float()) for axes in flips) / len(flips)
            else:
                probabilities = torch.sigmoid(self.network(x).float())
            if not cuda:
                return probabilities.cpu().numpy()
            host = torch.empty(probabilities.shape, dtype=torch.float32, pin_memory=True)
            host.copy_(probabilities, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(self.device))
        return host, copied

    def _queues_work(self) -> bool:
        """Whether `_launch` only queues the work (CUDA) instead of doing it."""
        return self.device.type == "cuda"

    @staticmethod
    def _result(launched: Any) -> np.ndarray:
        if isinstance(launched, np.ndarray):
            return launched
        host, copied = launched
        copied.synchronize()
        return host.numpy()

    def _flipped(self, x: torch.Tensor, axes: tuple[int, ...]) -> torch.Tensor:
        """The network's logits for `x` flipped along `axes`, flipped back."""
        if not axes:
            return self.network(x)
        return torch.flip(self.network(torch.flip(x, axes)), axes)


def _divide_rows(probabilities: np.ndarray, rows: np.ndarray, cols: np.ndarray, start: int, stop: int) -> None:
    """Divide rows `[start, stop)` of blended (classes, H, W) maps by the sum of the blending weights there."""
    part = probabilities[:, start:stop]
    part /= rows[None, start:stop, None]
    part /= cols[None, None, :]


def size_multiple(architecture: dict[str, Any]) -> int:
    """Tile sides must be multiples of 2**encoder_depth for the U-Net's skip connections."""
    return 2 ** int(architecture.get("encoder_depth", 5))


def _cut_tile(channels: np.ndarray, ranges: list[tuple[float, float]], y: int, x: int,
              tile: tuple[int, int]) -> np.ndarray:
    out = normalize_channels(channels[:, y:y + tile[0], x:x + tile[1]], ranges)
    pad = ((0, 0), (0, tile[0] - out.shape[1]), (0, tile[1] - out.shape[2]))
    if pad[1][1] or pad[2][1]:
        out = np.pad(out, pad, mode="symmetric")
    return out

