"""Score a model on annotated images: segment each image, then score it with `metrics`.

Kept apart from `metrics.py` so that scoring never depends on the inference engine (or torch).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np

from ._progress import Progress
from .inference import segment
from .metrics import aggregate, coco_ap, instance_scores, is_semantic_mask, semantic_scores, semantic_warning


def evaluate_model(model: Any, pairs: Iterable[Any], *, names: Sequence[str] | None = None,
                   progress: Callable[[Progress], None] | None = None, with_ap: bool = True,
                   **segment_params: Any) -> dict[str, Any]:
    """Segment every pair's image with `model` and score it against the pair's labels.

    Returns `{"images": [per-image scores with "name"], "mean": aggregate(...), "coco": coco_ap(...)}`.
    `segment_params` go to `napari_cell_unet.inference.segment` (thresholds, tile size, device...).
    """
    pairs = list(pairs)
    per_image, preds, gts, probs, semantic = [], [], [], [], []
    for i, pair in enumerate(pairs):
        image, labels, name = _pair_arrays(pair)
        name = names[i] if names is not None else (name or f"image {i + 1}")
        if progress is not None:
            progress(Progress(i, len(pairs), f"segmenting {name}"))
        pred, prob = _segment_labels(image, model, segment_params)
        if is_semantic_mask(labels):  # one label value over many blobs: cells are not told apart
            semantic.append(name)
            per_image.append({"name": name, **semantic_scores(pred, labels)})
            continue
        per_image.append({"name": name, **instance_scores(pred, labels)})
        if with_ap and pred.ndim == 2:
            preds.append(pred)
            gts.append(labels)
            probs.append(prob[0] if prob is not None and prob.ndim == 3 else None)
    if progress is not None:
        progress(Progress(len(pairs), len(pairs), "done"))
    report: dict[str, Any] = {"images": per_image, "mean": aggregate(per_image) if per_image else {},
                              "warnings": [semantic_warning(semantic)] if semantic else []}
    if with_ap and preds:
        use_probs = probs if all(p is not None for p in probs) else None
        report["coco"] = coco_ap(preds, gts, probabilities=use_probs)
    return report


def _pair_arrays(pair: Any) -> tuple[np.ndarray, np.ndarray, str]:
    """(image, labels, name) from a TrainingPair-like object or an (image, labels[, ...]) tuple."""
    if hasattr(pair, "image") and hasattr(pair, "labels"):
        return np.asarray(pair.image), np.asarray(pair.labels), str(getattr(pair, "name", "") or "")
    image, labels = pair[0], pair[1]
    return np.asarray(image), np.asarray(labels), ""


def _segment_labels(image: np.ndarray, model: Any, params: dict) -> tuple[np.ndarray, np.ndarray | None]:
    labels, probabilities = segment(image, model, return_probabilities=True, **params)
    return np.asarray(labels), None if probabilities is None else np.asarray(probabilities)
