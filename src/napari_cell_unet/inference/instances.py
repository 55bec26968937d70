"""Instance labels from the cell and border probability maps."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any

import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential, watershed

# Planes above this many pixels get their instances in row bands (see `instances_in_bands`).
BAND_PIXELS = 16_000_000
BAND_MARGIN = 128


def instance_params(model: Any, cell_threshold: float | None = None, border_threshold: float | None = None,
                    min_size: int | None = None) -> dict[str, Any]:
    """The model's `postprocessing` with the given values in place of its own (None keeps the model's). A
    `min_size` given is the whole rule: the model's `min_size_fraction` is then off."""
    given = {"cell_threshold": cell_threshold, "border_threshold": border_threshold, "min_size": min_size}
    params = {**model.postprocessing, **{key: value for key, value in given.items() if value is not None}}
    if min_size is not None:
        params["min_size_fraction"] = 0.0
    params["min_size"] = int(params["min_size"])
    return params


def sized_params(params: dict[str, Any], diameter: float | None) -> dict[str, Any]:
    """`params` (from `instance_params`) for an image whose cells are `diameter` px across, as
    `instances_from_probabilities` takes them: objects under `min_size_fraction` of such a cell's area
    (pi / 4 * diameter**2) are removed too, whatever `min_size` (a floor in pixels) says. Pieces of a
    cell that a fixed pixel count cannot tell from small cells at every zoom (benchmarks/RESULTS.md, issue 9).
    `split_seed_fraction` becomes `split_seed_size`, pixels of such a cell (see `split_by_strict_seeds`)."""
    out = dict(params)
    area = np.pi / 4 * float(diameter) ** 2 if diameter else 0.0
    fraction = float(out.pop("min_size_fraction", 0.0) or 0.0)
    if fraction > 0 and area:
        out["min_size"] = max(int(out["min_size"]), int(fraction * area))
    seed_fraction = float(out.pop("split_seed_fraction", 0.0) or 0.0)
    out["split_seed_size"] = int(seed_fraction * area) if seed_fraction > 0 else 0
    return out


def own_scale_params(model: Any) -> dict[str, Any]:
    """The model's `sized_params` for maps predicted at its own scale (cells `cell_diameter` px across)."""
    from .rescale import model_diameter

    return sized_params(instance_params(model), model_diameter(model))


def instances_from_probabilities(cell_prob: np.ndarray, border_prob: np.ndarray, cell_threshold: float = 0.5,
                                 border_threshold: float = 0.5, min_size: int = 30,
                                 merge_threshold: float = 0.0, split_border_threshold: float = 0.0,
                                 split_seed_size: int = 0) -> np.ndarray:
    """Instance labels (uint32, 0 = background, ids 1..N consecutive) from 2-D probability maps.

    Seeds are the 4-connected components of (cell > cell_threshold) & (border < border_threshold);
    each seed grows back over the cell mask (watershed on -cell probability) so cells keep
    their full extent. Seeds under half of `min_size` are dropped first (specks in a cell's
    narrow neck would split it). Parts of the cell mask that no seed reaches (a small cell covered by
    border probability) become instances of their own. With `split_border_threshold` (below `border_threshold`) and
    `split_seed_size` > 0, an object is split where it holds two or more seeds of that size under the stricter
    border threshold (`split_by_strict_seeds`). With `merge_threshold` > 0, touching instances whose
    contact is not a border (mean border probability along it below `merge_threshold`) are merged: one cell split
    by a weak border blob. Objects under `min_size` pixels are removed.
    """
    cell_prob = np.asarray(cell_prob)
    border_prob = np.asarray(border_prob)
    if cell_prob.shape != border_prob.shape or cell_prob.ndim != 2:
        raise ValueError(f"cell and border probabilities must be 2-D arrays of one shape, "
                         f"got {cell_prob.shape} and {border_prob.shape}")
    mask = cell_prob > cell_threshold
    seeds, n_seeds = ndimage.label(seed_mask(cell_prob, border_prob, cell_threshold, border_threshold))
    if n_seeds and min_size > 1:
        # Specks of seed in the narrow necks of a cell would split it: let big seeds flood them.
        seeds = remove_small_instances(seeds, max(2, min_size // 2))
        n_seeds = int(seeds.max())
    labels = flood_seeds(cell_prob, seeds, mask) if n_seeds else seeds
    unreached, n_unreached = ndimage.label(mask & (labels == 0))
    if n_unreached:  # few pixels: written in place (a whole-plane np.where made two int64 copies of a band)
        where = np.nonzero(unreached)
        labels[where] = unreached[where] + n_seeds
    if 0 < split_border_threshold < border_threshold and split_seed_size > 0:
        labels = split_by_strict_seeds(labels, cell_prob, border_prob, cell_threshold, split_border_threshold,
                                       split_seed_size)
    if merge_threshold > 0:
        labels = merge_weak_contacts(labels, border_prob, merge_threshold)
    return remove_small_instances(labels, min_size)


def flood_seeds(cell_prob: np.ndarray, seeds: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Grow `seeds` (labels inside `mask`) over `mask`: watershed on -`cell_prob`, one connected part of the mask at
    a time. A part with one seed is all that seed's; the others are flooded each in its bounding box. Each part
    floods as in one watershed of the whole plane (up to the order of exactly equal probabilities), 7x faster on
    a band of a large image, where skimage's single heap of every seed pixel is what costs (benchmarks/RESULTS.md)."""
    parts, n_parts = ndimage.label(mask)
    ids, first = first_pixels(seeds)
    part_of_seed = parts.ravel()[first]
    seeds_per_part = np.bincount(part_of_seed, minlength=n_parts + 1)
    seeds_per_part[0] = 0  # a seed whose first pixel lies outside the mask claims no part of it
    single = np.zeros(seeds_per_part.size, seeds.dtype)
    alone = seeds_per_part[part_of_seed] == 1
    single[part_of_seed[alone]] = ids[alone]
    labels = single[parts]
    boxes = ndimage.find_objects(parts)
    for part in np.flatnonzero(seeds_per_part > 1):
        box = boxes[part - 1]
        inside = parts[box] == part
        labels[box][inside] = watershed(-cell_prob[box], seeds[box], mask=inside)[inside]
    return labels


def split_by_strict_seeds(labels: np.ndarray, cell_prob: np.ndarray, border_prob: np.ndarray, cell_threshold: float,
                          border_threshold: float, seed_size: int) -> np.ndarray:
    """Flood again, from the stricter seeds, every object holding two or more seeds of at least `seed_size` pixels
    under `border_threshold`; the other objects are left as they are. Two touching cells whose border the network
    drew only faintly (a clump of nuclei, a pair of cells side by side) come apart, while a cell whose strict
    seed breaks into specks stays whole: only pieces of a sizeable part of a cell count (benchmarks/RESULTS.md,
    issue 9). New ids are appended above the largest; callers renumber."""
    strict, _ = ndimage.label(seed_mask(cell_prob, border_prob, cell_threshold, border_threshold))
    big = np.bincount(strict.ravel()) >= seed_size
    big[0] = False
    big_ids = np.flatnonzero(big)
    if big_ids.size < 2:
        return labels
    in_big = big[strict]
    owner = np.zeros(big.size, np.int64)
    owner[strict[in_big]] = labels[in_big]  # a strict seed lies inside one object: any of its pixels names it
    holders = np.flatnonzero(np.bincount(owner[big_ids], minlength=int(labels.max()) + 1)[1:] >= 2) + 1
    boxes = ndimage.find_objects(labels)
    next_id = int(labels.max()) + 1
    for obj in holders:
        box = boxes[obj - 1]
        inside = labels[box] == obj
        seeds = np.where(inside & big[strict[box]], strict[box], 0)
        parts = watershed(-cell_prob[box], seeds, mask=inside)[inside]
        found = np.unique(parts[parts > 0])
        ids = np.concatenate([[obj], next_id + np.arange(found.size - 1)]).astype(labels.dtype)
        labels[box][inside] = np.where(parts > 0, ids[np.searchsorted(found, parts)], obj)  # unreached: keep obj
        next_id += found.size - 1
    return labels


def merge_weak_contacts(labels: np.ndarray, border_prob: np.ndarray, threshold: float) -> np.ndarray:
    """Merge each pair of 4-touching instances whose contact pixels have a mean border probability under
    `threshold` (a pixel pair's evidence: the larger of its two border probabilities). Merged groups take a new
    shared id; callers renumber."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    lows, highs, evidence = [], [], []
    for a, b, pa, pb in ((labels[:, :-1], labels[:, 1:], border_prob[:, :-1], border_prob[:, 1:]),
                         (labels[:-1], labels[1:], border_prob[:-1], border_prob[1:])):
        contact = (a != b) & (a > 0) & (b > 0)
        x, y = a[contact].astype(np.int64), b[contact].astype(np.int64)
        lows.append(np.minimum(x, y))
        highs.append(np.maximum(x, y))
        evidence.append(np.maximum(pa[contact], pb[contact]))
    low, high = np.concatenate(lows), np.concatenate(highs)
    if not low.size:
        return labels
    pairs, inverse = np.unique(np.stack([low, high], 1), axis=0, return_inverse=True)
    inverse = inverse.ravel()
    mean = np.bincount(inverse, weights=np.concatenate(evidence)) / np.bincount(inverse)
    weak = pairs[mean < threshold]
    if not weak.size:
        return labels
    n = int(labels.max()) + 1
    graph = coo_matrix((np.ones(len(weak)), (weak[:, 0], weak[:, 1])), shape=(n, n))
    _, group = connected_components(graph, directed=False)
    table = group.astype(labels.dtype) + 1
    table[0] = 0  # background is in no pair: its own group, kept 0
    return table[labels]


def instances_in_bands(cell_prob: np.ndarray, border_prob: np.ndarray, cell_threshold: float = 0.5,
                       border_threshold: float = 0.5, min_size: int = 30, band_pixels: int = BAND_PIXELS,
                       margin: int = BAND_MARGIN, merge_threshold: float = 0.0, split_border_threshold: float = 0.0,
                       split_seed_size: int = 0) -> np.ndarray:
    """`instances_from_probabilities` on a large plane, a band of rows (about `band_pixels` pixels) at a time.

    Each band is computed with `margin` rows of context above and below and keeps its own rows; objects
    get band-independent ids (`canonical_lut`), so a cell crossing a band edge keeps one id as long as it
    (and the cells touching it) lies within `margin` rows of the edge, then ids are renumbered 1..N.
    Peak memory is that of one band instead of the whole plane (skimage's watershed copies its input to
    float64 and pads it: ~25 bytes per pixel). Planes of at most one band are done in one piece.
    """
    bands = BandedInstances(np.shape(cell_prob), cell_threshold=cell_threshold, border_threshold=border_threshold,
                            min_size=min_size, band_pixels=band_pixels, margin=margin,
                            merge_threshold=merge_threshold, split_border_threshold=split_border_threshold,
                            split_seed_size=split_seed_size)
    return bands.labels_of(cell_prob, border_prob)


class BandedInstances:
    """`instances_in_bands` fed while the probability maps are being written: `rows_final(cell, border, stop)` says
    that rows above `stop` will not change any more, and each band whose rows and `margin` rows below are final
    is handed to `submit` (a thread pool's `submit`, returning a `Future`, so that the instance step runs while
    later rows are predicted; by default it runs at once). `labels_of(cell, border)` computes what is left and
    returns the labels, the same as `instances_in_bands` gives for the finished maps.

    `final_rows`: the rows at which the maps will be reported final (the tile rows' starts); bands then end
    `margin` rows above them, so each starts as soon as a row of tiles is done and only the rows of the last
    row of tiles wait for the end (bands still of at most about `band_pixels`).
    """

    def __init__(self, shape: tuple[int, int], *, cell_threshold: float = 0.5, border_threshold: float = 0.5,
                 min_size: int = 30, band_pixels: int | None = None, margin: int = BAND_MARGIN,
                 merge_threshold: float = 0.0, split_border_threshold: float = 0.0, split_seed_size: int = 0,
                 submit: Callable[..., Any] | None = None, final_rows: Sequence[int] = ()):
        self.shape = tuple(shape)
        height, width = self.shape
        self.params = {"cell_threshold": cell_threshold, "border_threshold": border_threshold,
                       "min_size": min_size, "merge_threshold": merge_threshold,
                       "split_border_threshold": split_border_threshold, "split_seed_size": split_seed_size}
        band_rows = max(1, (band_pixels or BAND_PIXELS) // max(1, width), 2 * margin)
        self.whole = height <= band_rows + margin
        self.margin = margin
        self.bounds = [(0, height)] if self.whole else _band_bounds(height, band_rows, margin, final_rows)
        self.dtype = keyed_label_dtype(height, width)
        self.labels = None if self.whole else np.zeros(self.shape, np.uint32)  # band-local ids, then final ids
        self.submit = submit or _run_now
        self.pending: list[Future] = []

    def rows_final(self, cell_prob: np.ndarray, border_prob: np.ndarray, stop: int) -> None:
        """Rows `[0, stop)` of the maps are final: start every band that needs no other rows."""
        height = self.shape[0]
        while len(self.pending) < len(self.bounds):
            band = self.bounds[len(self.pending)]
            if (height if self.whole else min(height, band[1] + self.margin)) > stop:
                return
            self.pending.append(self.submit(self._band, cell_prob, border_prob, band))

    def labels_of(self, cell_prob: np.ndarray, border_prob: np.ndarray) -> np.ndarray:
        """The instance labels (uint32, ids 1..N) of the finished maps."""
        self.rows_final(cell_prob, border_prob, self.shape[0])
        results = [band.result() for band in self.pending]
        if self.whole:
            return results[0]
        # one id per key, numbered in key order (as a sort of the keyed image would): a table per band, no sort
        keys = np.unique(np.concatenate([lut[present] for _, lut, present in results]))
        for (start, stop), lut, present in results:
            table = np.zeros(lut.size, np.uint32)
            table[present] = np.searchsorted(keys, lut[present]) + 1
            self.labels[start:stop] = table[self.labels[start:stop]]
        return self.labels

    def _band(self, cell_prob: np.ndarray, border_prob: np.ndarray, band: tuple[int, int]):
        if self.whole:
            return instances_from_probabilities(cell_prob, border_prob, **self.params)
        height, width = self.shape
        start, stop = band
        top, bottom = max(0, start - self.margin), min(height, stop + self.margin)
        local, lut = keyed_window(cell_prob[top:bottom], border_prob[top:bottom], (top, 0), width, self.dtype,
                                  **self.params)
        self.labels[start:stop] = local[start - top:stop - top]
        present = np.flatnonzero(np.bincount(self.labels[start:stop].ravel(), minlength=lut.size))
        return band, lut, present[present > 0]


def _band_bounds(height: int, band_rows: int, margin: int, final_rows: Sequence[int]) -> list[tuple[int, int]]:
    """(start, stop) of each band: at most `band_rows` rows, ending `margin` rows above the last of `final_rows`
    that allows (every `band_rows` rows when none does)."""
    ends = sorted({row - margin for row in final_rows if 2 * margin <= row - margin <= height - 2 * margin})
    if not ends:
        return [(start, min(height, start + band_rows)) for start in range(0, height, band_rows)]
    bounds, start = [], 0
    while start < height:
        fitting = [end for end in ends if start + 2 * margin <= end <= start + band_rows]
        stop = fitting[-1] if fitting else min(height, start + band_rows)
        bounds.append((start, stop))
        start = stop
    return bounds


def _run_now(function: Callable[..., Any], *args: Any) -> Future:
    done: Future = Future()
    done.set_result(function(*args))
    return done


def seed_mask(cell_prob: np.ndarray, border_prob: np.ndarray, cell_threshold: float,
              border_threshold: float) -> np.ndarray:
    """Where instances grow from: cell and not border. A pointwise test, so overlapping windows agree on it."""
    return (cell_prob > cell_threshold) & (border_prob < border_threshold)


def keyed_instances(cell_prob: np.ndarray, border_prob: np.ndarray, origin: tuple[int, int], width: int,
                    dtype: np.dtype, **params: Any) -> np.ndarray:
    """`instances_from_probabilities` of a window at `origin` (row, column) of an image `width` pixels wide, its
    ids keyed by position (`canonical_lut`), so overlapping windows (bands, dask chunks) name a shared object alike.
    """
    local, lut = keyed_window(cell_prob, border_prob, origin, width, dtype, **params)
    return lut[local]


def keyed_window(cell_prob: np.ndarray, border_prob: np.ndarray, origin: tuple[int, int], width: int,
                 dtype: np.dtype, cell_threshold: float = 0.5, border_threshold: float = 0.5, min_size: int = 30,
                 merge_threshold: float = 0.0, split_border_threshold: float = 0.0,
                 split_seed_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(local instance labels of the window, the table from local ids to position keys: `canonical_lut`)."""
    local = instances_from_probabilities(cell_prob, border_prob, cell_threshold, border_threshold, min_size,
                                         merge_threshold, split_border_threshold, split_seed_size)
    interior = seed_mask(cell_prob, border_prob, cell_threshold, border_threshold)
    return local, canonical_lut(local, interior, origin, width, dtype)


def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop instances with fewer than `min_size` pixels and renumber the rest 1..N as uint32."""
    labels = np.asarray(labels)
    top = int(labels.max(initial=0))
    if labels.size and top > 4 * labels.size:  # sparse ids (keyed by position): no table that large
        if min_size > 0:
            ids, counts = np.unique(labels, return_counts=True)
            labels = np.where(np.isin(labels, ids[(counts < min_size) & (ids > 0)]), 0, labels)
        relabelled, _, _ = relabel_sequential(labels)
        return relabelled.astype(np.uint32, copy=False)
    # one pass to count, one lookup to drop and renumber (4x faster than relabel_sequential's sort on 16 MP)
    sizes = np.bincount(labels.ravel(), minlength=top + 1)
    keep = sizes >= max(1, min_size)
    keep[0] = False
    table = np.zeros(sizes.size, np.uint32)
    table[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.uint32)
    return table[labels]


def keyed_label_dtype(height: int, width: int) -> np.dtype:
    """The label type of position-keyed ids (`canonical_lut`) in an image of `height` x `width` pixels: the ids go
    up to height * width, so uint32 (uint64 from 2**32 pixels)."""
    return np.dtype(np.uint32 if height * width < 2**32 - 1 else np.uint64)


def canonical_lut(local: np.ndarray, interior: np.ndarray, origin: tuple[int, int], width: int,
                  dtype: np.dtype) -> np.ndarray:
    """A table from local ids to 1 + the full-image row-major index of each object's first *interior* pixel.

    Interior pixels (cell and not border, a pointwise test of the shared probabilities) never sit on a contested
    edge between two objects, so neighbouring chunks agree on them even where watershed ties assign an edge
    pixel differently; objects without interior pixels fall back to their first pixel.
    """
    ids, first = first_pixels(local)
    inner_ids, inner_first = first_pixels(np.where(interior, local, 0))
    first[np.searchsorted(ids, inner_ids)] = inner_first  # every inner id is also in ids
    rows, cols = np.divmod(first, local.shape[1])
    lut = np.zeros(int(ids[-1]) + 1 if ids.size else 1, dtype)
    lut[ids] = (rows + origin[0]).astype(np.uint64) * width + (cols + origin[1]).astype(np.uint64) + 1
    return lut


def first_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids > 0 present in 2-D `labels`, ascending; the flat row-major index of each one's first pixel). Reads each
    object's bounding box (one C pass) and its first row: ~9x faster than np.unique(..., return_index=True)."""
    ids, first = [], []
    for index, box in enumerate(ndimage.find_objects(labels)):
        if box is None:
            continue
        row = labels[box[0].start, box[1]]
        ids.append(index + 1)
        first.append(box[0].start * labels.shape[1] + box[1].start + int(np.argmax(row == index + 1)))
    return np.array(ids, dtype=np.int64), np.array(first, dtype=np.int64)


def relabel_consecutive(labels: Any, block_rows: int = 2048) -> int:
    """Renumber a written label array (numpy, memmap, zarr) in place to 1..N, a band of rows at a time.
    Returns N."""
    ids: np.ndarray = np.empty(0, np.uint64)
    for start in range(0, labels.shape[0], block_rows):
        ids = np.union1d(ids, np.unique(np.asarray(labels[start:start + block_rows])).astype(np.uint64))
    ids = ids[ids > 0]
    for start in range(0, labels.shape[0], block_rows):
        band = np.asarray(labels[start:start + block_rows]).astype(np.uint64)
        new = np.searchsorted(ids, band) + 1
        labels[start:start + block_rows] = np.where(band > 0, new, 0).astype(labels.dtype)
    return int(ids.size)
