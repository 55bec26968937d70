"""Tune the post-processing thresholds (cell_threshold, border_threshold, min_size) on validation images."""

from __future__ import annotations

import itertools
import os
from concurrent.futures import ProcessPoolExecutor
from typing import Any, Iterable, Sequence

import numpy as np

from ..model import CellModel
from .pairs import TrainingPair
from .targets import as_instance_labels

DEFAULT_GRID: dict[str, list[float]] = {
    "cell_threshold": [0.35, 0.45, 0.5, 0.55, 0.65],
    "border_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "min_size": [10, 30, 60, 120],
}


def predict_pairs(model: CellModel, pairs: Sequence[TrainingPair], device: str = "auto") -> list[np.ndarray]:
    """(2, H, W) cell/border probabilities of every pair's image, as inference computes them."""
    from ..inference import predict_probabilities

    return [np.asarray(predict_probabilities(pair.image, model, device=device), dtype=np.float32) for pair in pairs]


def score_postprocessing(probabilities: np.ndarray, truth: np.ndarray, params: dict[str, Any],
                         diameter: float | None = None) -> dict[str, float]:
    """Instance scores (metrics.instance_scores) of one image under one parameter set; a `min_size_fraction` in
    `params` counts for cells of `diameter` px (the diameter the image was segmented at; None: no such rule)."""
    from ..inference import instances_from_probabilities
    from ..inference.instances import sized_params
    from ..metrics import instance_scores

    labels = instances_from_probabilities(probabilities[0], probabilities[1], **sized_params(params, diameter))
    return instance_scores(labels, truth)


def tune_postprocessing(model: CellModel, pairs: Sequence[TrainingPair], grid: dict[str, list] | None = None,
                        device: str = "auto", workers: int | None = None,
                        probabilities: Sequence[np.ndarray] | None = None) -> tuple[dict[str, Any], list[dict]]:
    """Grid-search the post-processing parameters on annotated pairs.

    The objective is pooled F1 at IoU 0.5 plus a quarter of the mean pixel IoU (ties broken
    toward the finer matching, mean F1 over IoU 0.5:0.95). Returns (best parameters, one row
    per grid point sorted best first).
    """
    grid = grid or DEFAULT_GRID
    if probabilities is None:
        probabilities = predict_pairs(model, pairs, device)
    truths = [as_instance_labels(p.labels) for p in pairs]
    keys = list(grid)
    candidates = [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]
    for params in candidates:
        if "min_size" in params:
            params["min_size"] = int(params["min_size"])
    # one job per image (not per grid point): each image's probabilities are sent to a worker once
    per_image = _run_jobs([(p, t, candidates) for p, t in zip(probabilities, truths)], workers)
    rows = [{**params, **summarize([scores[i] for scores in per_image])} for i, params in enumerate(candidates)]
    rows.sort(key=lambda r: (r["objective"], r["mean_f1"]), reverse=True)
    best = {k: rows[0][k] for k in keys}
    return best, rows


def summarize(scores: Iterable[dict[str, float]]) -> dict[str, float]:
    """Pooled F1@0.5 over images, mean F1 over 0.5:0.95, mean pixel IoU, and the tuning objective."""
    from ..metrics import aggregate

    total = aggregate(list(scores))
    out = {"f1_50": total.get("pooled_f1_50", total["f1_50"]), "mean_f1": total["mean_f1"],
           "pixel_iou": total["pixel_iou"], "n_pred": total.get("n_pred"), "n_true": total.get("n_true")}
    out["objective"] = out["f1_50"] + 0.25 * out["pixel_iou"]
    return out


def _score_image(job: tuple) -> list[dict[str, float]]:
    """(probabilities, truth, candidates[, diameter]): the scores of every candidate on one image."""
    probabilities, truth, candidates, *diameter = job
    return [score_postprocessing(probabilities, truth, params, *diameter) for params in candidates]


def _run_jobs(jobs: list, workers: int | None) -> list[list[dict[str, float]]]:
    workers = min(len(jobs), workers if workers is not None else max(1, (os.cpu_count() or 1) - 1))
    if workers <= 1:
        return [_score_image(job) for job in jobs]
    import multiprocessing

    # spawn: never fork a process that may hold a CUDA context
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        return list(pool.map(_score_image, jobs))
