"""Lazy stacks of 2D slices that are decoded only when a slice is looked at (dask)."""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Callable

import numpy as np

from ..errors import CellUnetError


def lazy_stack(read_slice: Callable[[int], np.ndarray | None], count: int, shape: tuple[int, ...],
               dtype: np.dtype):
    """A dask array of ``count`` slices of ``shape``; slice ``k`` is ``read_slice(k)`` fitted to ``shape``
    (padded with zeros or cropped, cast to ``dtype``) the first time it is computed. ``None`` gives zeros."""
    import dask.array as da

    # One graph layer for all slices (a stack of `count` delayed arrays took seconds to build for LIVECell's
    # 1,500 images); an explicit name, because letting dask hash the arguments would pickle the reader.
    chunks = ((1,) * count, *((size,) for size in shape))
    return da.map_blocks(_fitted_block, read_slice, shape, np.dtype(dtype), chunks=chunks, dtype=dtype,
                         meta=np.empty((0,) * (len(shape) + 1), dtype), name=f"cell-unet-stack-{uuid.uuid4().hex}")


def _fitted_block(read_slice: Callable[[int], np.ndarray | None], shape: tuple[int, ...], dtype: np.dtype,
                  block_info: dict | None = None) -> np.ndarray:
    index = block_info[None]["chunk-location"][0]
    return _fitted(read_slice, index, shape, dtype)[np.newaxis]


def common_shape(shapes: list[tuple[int, ...]]) -> tuple[int, ...]:
    """The smallest shape that holds every one of ``shapes`` (all of the same length)."""
    return tuple(int(max(sizes)) for sizes in zip(*shapes))


def _fitted(read_slice: Callable[[int], np.ndarray | None], index: int, shape: tuple[int, ...],
            dtype: np.dtype) -> np.ndarray:
    out = np.zeros(shape, dtype=dtype)
    try:
        data = read_slice(index)
    except CellUnetError as exc:  # raised while napari draws a slice: an exception would only reach Qt's loop
        warnings.warn(f"slice {index} left empty: {exc}", UserWarning, stacklevel=2)
        return out
    if data is None:
        return out
    data = np.asarray(data)
    if data.ndim == len(shape) + 1 and data.shape[-1] in (3, 4):  # colour slice in a grey stack
        data = data[..., :3].mean(axis=-1)
    if data.ndim != len(shape):
        return out
    window = tuple(slice(0, min(a, b)) for a, b in zip(shape, data.shape))
    out[window] = data[window]
    return out
