"""Cell sizes a fine-tuned model was shown: `diameter="auto"` on an image it was trained on uses its labels' size.

The automatic diameter of a model fine-tuned from the bundled one is measured by the bundled model's probes,
which a few corrections cannot move (issue 8, benchmarks/RESULTS.md). Where those probes misjudge an image,
painting its cells would not help that image. So training records, per training image, the median diameter of
its annotated cells, keyed by a fingerprint of the image's pixels, and segmenting that very image again uses it
when at least `segment.TRUSTED_CELLS` cells were annotated or the automatic estimate is 1.5x away from it (since
the size model, the estimate beats the median of 20 painted cells elsewhere: benchmarks/RESULTS.md).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .._fingerprint import fingerprint

METADATA_KEY = "taught_diameters"  # {fingerprint: {"diameter": px, "cells": n}}
MIN_CELLS = 5  # annotated cells an image needs for its median size to be remembered
MAX_REMEMBERED = 256  # most recent images kept (a model fine-tuned many times)


def remember(metadata: dict[str, Any], images_and_labels: Sequence[tuple[Any, np.ndarray]]) -> None:
    """Record each image's median annotated cell diameter (images with at least `MIN_CELLS` cells)."""
    from .rescale import estimate_diameter

    known = dict(metadata.get(METADATA_KEY) or {})
    for image, labels in images_and_labels:
        cells = int(np.count_nonzero(np.unique(labels)))
        if cells < MIN_CELLS:
            continue
        key = fingerprint(image)
        known.pop(key, None)  # re-inserted last: the most recent stays
        known[key] = {"diameter": round(float(estimate_diameter(labels)), 2), "cells": cells}
    if known:
        metadata[METADATA_KEY] = dict(list(known.items())[-MAX_REMEMBERED:])


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
