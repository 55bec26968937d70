"""Cell sizes a fine-tuned model was shown: `diameter="auto"` on an image it was trained on uses its labels' size.

The automatic diameter of a model fine-tuned from the bundled one is measured by the bundled model's probes,
which a few corrections cannot move (issue 8, benchmarks/RESULTS.md). Where those probes misjudge an image,
painting its cells would not help that image. So training records, per training image, the median diameter of
its annotated cells, keyed by a fingerprint of the image's pixels, and segmenting that very image again uses it
when at least `segment.TRUSTED_CELLS` cells were annotated or the automatic estimate is 1.5x away from it (since
the size model, the estimate beats the median of 20 painted cells elsewhere: benchmarks/RESULTS.md).

On a kind of image the measuring model never saw (bright field, DIC) the estimate can be wrong by 5-10x on every
image, and a model taught that kind of image would segment new ones at that wrong size. So training also checks
the estimate on its training images (`size_check`): when it misjudged most of them by `MISJUDGED` or more, the
model remembers their typical annotated size, and `diameter="auto"` uses it on new images whose estimate is that
far from it (`typical_diameter`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._fingerprint import fingerprint

METADATA_KEY = "taught_diameters"  # {fingerprint: {"diameter": px, "cells": n}}
MIN_CELLS = 5  # annotated cells an image needs for its median size to be remembered
MAX_REMEMBERED = 256  # most recent images kept (a model fine-tuned many times)
TYPICAL_KEY = "typical_diameter"  # {"diameter": px, "misjudged": images, "images": n, "checks": [[taught, estimate]]}
# an estimate this many times off the annotated size is a failure of the estimate, not a matter of precision: on DSB
# bright field the bundled model estimated 4.4-12.5x the annotated size (benchmarks/RESULTS.md), while phase-contrast
# sets of one experiment differ by less than 2x
MISJUDGED = 2.0
CHECKED_IMAGES = 4  # training images the estimate is checked on (each costs one estimate)


def remember(metadata: dict[str, Any], images_and_labels: Sequence[tuple[Any, np.ndarray]]) -> None:
    """Record each image's median annotated cell diameter (images with at least `MIN_CELLS` cells)."""
    known = dict(metadata.get(METADATA_KEY) or {})
    for image, labels in images_and_labels:
        size = annotated_size(labels)
        if size is None:
            continue
        key = fingerprint(image)
        known.pop(key, None)  # re-inserted last: the most recent stays
        known[key] = {"diameter": round(size[0], 2), "cells": size[1]}
    if known:
        metadata[METADATA_KEY] = dict(list(known.items())[-MAX_REMEMBERED:])


def annotated_size(labels: np.ndarray) -> tuple[float, int] | None:
    """(median diameter, cells) of annotated instance labels; None with fewer than `MIN_CELLS` cells, whose median
    is not trusted."""
    from .rescale import estimate_diameter

    cells = int(np.count_nonzero(np.unique(labels)))
    return (float(estimate_diameter(labels)), cells) if cells >= MIN_CELLS else None


def taught_diameter(model: Any, image: Any, slices: list[tuple[int, ...]]) -> tuple[float, int] | None:
    """(diameter, cells) remembered for this image (a stack: any of its in-memory planes, else its middle one)."""
    known = (getattr(model, "metadata", None) or {}).get(METADATA_KEY)
    if not known or not isinstance(known, dict):  # none, or a model file that wrote something else there
        return None
    planes = slices if isinstance(image, np.ndarray) else slices[len(slices) // 2:][:1]
    for index in planes:
        entry = known.get(fingerprint(image[index]))
        try:
            diameter, cells = float(entry["diameter"]), int(entry["cells"])
        except (TypeError, KeyError, ValueError):
            continue
        if np.isfinite(diameter) and diameter > 0:
            return diameter, cells
    return None


def far_apart(known: float, estimated: float | None, ratio: float = MISJUDGED) -> bool:
    """Whether an estimate is `ratio` times (or more) away from a known size, or missing."""
    return estimated is None or max(known, estimated) / min(known, estimated) >= ratio


def size_check(metadata: dict[str, Any], checks: Sequence[tuple[float, float | None]]) -> None:
    """Record the training images' typical cell size when the automatic estimate misjudged most of them.

    `checks`: (median annotated diameter, automatic estimate or None) per checked training image. A check where the
    estimate did well removes an earlier run's record (the estimate works on this model's images again)."""
    if not checks:
        return
    wrong = [taught for taught, estimated in checks if far_apart(taught, estimated)]
    if 2 * len(wrong) <= len(checks):
        metadata.pop(TYPICAL_KEY, None)
        return
    metadata[TYPICAL_KEY] = {
        "diameter": round(float(np.median([taught for taught, _ in checks])), 2), "misjudged": len(wrong),
        "images": len(checks),
        "checks": [[round(float(t), 1), None if e is None else round(float(e), 1)] for t, e in checks]}


def typical_diameter(model: Any) -> float | None:
    """The typical annotated cell size a model remembers because the estimate misjudged its training images."""
    entry = (getattr(model, "metadata", None) or {}).get(TYPICAL_KEY)
    try:
        diameter = float(entry["diameter"])
    except (TypeError, KeyError, ValueError):
        return None
    return diameter if np.isfinite(diameter) and diameter > 0 else None
