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
    import dask
    import dask.array as da

    # Explicit names: letting dask hash the arguments would pickle the reader (and its dataset) per slice.
    prefix = f"cell-unet-stack-{uuid.uuid4().hex}"
    read = dask.delayed(_fitted, pure=False)
    slices = [da.from_delayed(read(read_slice, k, shape, np.dtype(dtype), dask_key_name=f"{prefix}-read-{k}"),
                              shape=shape, dtype=dtype, name=f"{prefix}-{k}")
              for k in range(count)]
    return da.stack(slices)


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
