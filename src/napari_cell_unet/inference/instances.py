"""Instance labels from the cell and border probability maps."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.segmentation import relabel_sequential, watershed


def instances_from_probabilities(cell_prob: np.ndarray, border_prob: np.ndarray, cell_threshold: float = 0.5,
                                 border_threshold: float = 0.5, min_size: int = 30) -> np.ndarray:
    """Instance labels (uint32, 0 = background, ids 1..N consecutive) from 2-D probability maps.

    Seeds are the 4-connected components of (cell > cell_threshold) & (border < border_threshold);
    each seed grows back over the cell mask (watershed on -cell probability) so cells keep
    their full extent. Seeds under half of `min_size` are dropped first (specks in a cell's
    narrow neck would split it). Parts of the cell mask that no seed reaches (a small cell covered by
    border probability) become instances of their own. Objects under `min_size` pixels are
    removed.
    """
    cell_prob = np.asarray(cell_prob)
    border_prob = np.asarray(border_prob)
    if cell_prob.shape != border_prob.shape or cell_prob.ndim != 2:
        raise ValueError(f"cell and border probabilities must be 2-D arrays of one shape, "
                         f"got {cell_prob.shape} and {border_prob.shape}")
    mask = cell_prob > cell_threshold
    seeds, n_seeds = ndimage.label(mask & (border_prob < border_threshold))
    if n_seeds and min_size > 1:
        # Specks of seed in the narrow necks of a cell would split it: let big seeds flood them.
        seeds = remove_small_instances(seeds, max(2, min_size // 2))
        n_seeds = int(seeds.max())
    labels = watershed(-cell_prob, seeds, mask=mask) if n_seeds else seeds
    unreached, _ = ndimage.label(mask & (labels == 0))
    labels = np.where(unreached > 0, unreached + n_seeds, labels)
    return remove_small_instances(labels, min_size)


def remove_small_instances(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Drop instances with fewer than `min_size` pixels and renumber the rest 1..N as uint32."""
    labels = np.asarray(labels)
    if min_size > 0 and labels.size:
        sizes = np.bincount(labels.ravel())
        too_small = sizes < min_size
        too_small[0] = False
        if too_small.any():
            labels = np.where(too_small[labels], 0, labels)
    relabelled, _, _ = relabel_sequential(labels)
    return relabelled.astype(np.uint32, copy=False)
