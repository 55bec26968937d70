"""Held-out validation: which pixels are held back, and how a model is scored on them.

Validation runs the inference path (`predict_probabilities` + `instances_from_probabilities`, with the
intensity range of the whole source image), so a score at step 0 is the base model's score as the
Segment widget would produce it, and "improved" means improved for the user.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch

from ..model import CellModel
from .losses import segmentation_loss
from .pairs import TrainingPair
from .targets import TrainingDataError, make_targets

MIN_SIDE = 64  # px: the narrowest held-out strip, and the least that must stay for training
# fewer held-back cells than this cannot tell a better model from luck (one cell moves F1 by 0.2 or more):
# `improved` is then None and the widget does not switch models by itself
MIN_HELD_OUT_CELLS = 8
# the longest side of a validation item, in the model's (zoomed) pixels: one inference tile. A held-back image zoomed
# to the model's cell size can be ~3000 px a side (small nuclei), and validating it 11 times took 3/4 of a 300-step
# fine-tuning run on a 2-core CPU; 1024 px still hold a few hundred cells of the model's size
MAX_VALIDATION_SIDE = 1024
CANDIDATE_STRIPS = 9


@dataclass
class HeldOut(TrainingPair):
    """A validation window cut out of a bigger training pair; `source` is the whole image, for its
    normalisation range (inference normalises the whole image, not the window)."""

    source: np.ndarray | None = None


@dataclass
class TrainPart(TrainingPair):
    """A training pair whose `excluded` window is held out for validation (no loss, no distillation)."""

    excluded: np.ndarray | None = None


def split_validation(pairs: Sequence[TrainingPair], val_pairs: Sequence[TrainingPair] | None,
                     fraction: float, seed: int,
                     base_cells: Callable[[TrainingPair], np.ndarray] | None = None
                     ) -> tuple[list[TrainingPair], list[TrainingPair]]:
    """(train, validation). With several pairs, a seeded `fraction` of them is held out; with one
    pair, a strip of `fraction` of its longer side (at least 64 px) is held out and left out of its
    training region. fraction 0 = no validation (the last model is kept).

    Which strip: with a region (partial painting), the one holding the share of painted pixels closest
    to `fraction`; without one, where the labels disagree most with `base_cells(pair)` (the base model's
    cell mask), i.e. where the user corrected the model; otherwise the last strip.
    """
    if val_pairs is not None:
        return list(pairs), list(val_pairs)
    if fraction <= 0:
        return list(pairs), []
    if len(pairs) > 1:
        n_val = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
        order = np.random.default_rng(seed).permutation(len(pairs))
        held = set(order[:n_val].tolist())
        return [p for i, p in enumerate(pairs) if i not in held], [p for i, p in enumerate(pairs) if i in held]
    return _split_single(pairs[0], fraction, base_cells)


def _split_single(pair: TrainingPair, fraction: float,
                  base_cells: Callable[[TrainingPair], np.ndarray] | None) -> tuple[list, list]:
    height, width = pair.shape
    axis = 1 if width >= height else 0
    length = pair.shape[axis]
    size = max(MIN_SIDE, int(round(length * fraction)))
    if length - size < MIN_SIDE:
        return [pair], []  # too small to split; train on everything, keep the last model
    start = _strip_start(pair, axis, size, fraction, base_cells)
    window = np.zeros(pair.shape, bool)
    cut = (slice(None), slice(start, start + size)) if axis == 1 else (slice(start, start + size), slice(None))
    window[cut] = True
    train_region = np.ones(pair.shape, bool) if pair.region is None else pair.region.copy()
    train_region[cut] = False
    val_region = None if pair.region is None else pair.region[cut]
    if not train_region.any() or (val_region is not None and not val_region.any()):
        return [pair], []
    train = TrainPart(pair.image, pair.labels, pair.borders, train_region, pair.name, excluded=window)
    val = HeldOut(pair.image[cut], pair.labels[cut], None if pair.borders is None else pair.borders[cut],
                  val_region, f"{pair.name} (held-out strip)", source=pair.image)
    return [train], [val]


def _strip_start(pair: TrainingPair, axis: int, size: int, fraction: float,
                 base_cells: Callable[[TrainingPair], np.ndarray] | None) -> int:
    length = pair.shape[axis]
    starts = np.unique(np.linspace(0, length - size, CANDIDATE_STRIPS).round().astype(int))
    other = 1 - axis
    if pair.region is not None:
        profile = pair.region.sum(axis=other).astype(float)
        shares = np.array([profile[s:s + size].sum() for s in starts]) / max(1.0, profile.sum())
        cost = np.where(shares > 0, np.abs(shares - fraction), np.inf)
    elif base_cells is not None:
        disagreement = ((np.asarray(pair.labels) > 0) != base_cells(pair)).sum(axis=other).astype(float)
        cost = -np.array([disagreement[s:s + size].sum() for s in starts])
    else:
        return int(starts[-1])
    best = np.flatnonzero(cost == cost.min())
    return int(starts[best[-1]])  # ties: the last strip (right or bottom)


@torch.no_grad()
def validate(model, val_data: list[dict[str, Any]], border_weight: float, device: torch.device) -> dict[str, float]:
    """Loss, cell Dice and instance F1@0.5 over prepared validation items, through the inference path.

    On a partially annotated item only the annotated region counts (metrics.annotated_scores):
    unpainted cells are neither false positives nor background.
    """
    from ..inference.instances import instances_from_probabilities, own_scale_params
    from ..inference.predict import predict_probabilities
    from ..metrics import annotated_scores

    losses, dices, f1s = [], [], []
    for item in val_data:
        probabilities = predict_probabilities(item["image"], model, device=device, ranges=item["ranges"])
        target = item["target"]
        logits = torch.logit(torch.from_numpy(probabilities).clamp(1e-6, 1 - 1e-6))[None]
        losses.append(float(segmentation_loss(logits, target[None, :2].float(), target[None, 2:3].float(),
                                              border_weight)))
        labels = instances_from_probabilities(probabilities[0], probabilities[1], **own_scale_params(model))
        scores = annotated_scores(labels, item["instances"], item["region"])
        dices.append(scores["dice"])
        f1s.append(scores["f1"])
    return {"val_loss": float(np.mean(losses)), "dice": float(np.mean(dices)), "f1": float(np.mean(f1s))}


def held_out_window(pair: TrainingPair) -> np.ndarray:
    """The window held out of a training pair for validation (boolean mask; all False when none is)."""
    if isinstance(pair, TrainPart) and pair.excluded is not None:
        return pair.excluded
    return np.zeros(pair.shape, bool)


def prepare_validation(pair: TrainingPair, model: CellModel, border_thickness: int) -> dict[str, Any]:
    """One validation item: the raw image, the intensity range inference would use (the whole source image's),
    the targets and the annotated instances."""
    source = pair.source if isinstance(pair, HeldOut) and pair.source is not None else pair.image
    ranges = intensity_ranges(source, model)
    annotated_cells = np.asarray(pair.labels) > 0
    if pair.region is not None:
        annotated_cells &= pair.region
    window = _busiest_window(annotated_cells, MAX_VALIDATION_SIDE)
    image, labels = pair.image[window], pair.labels[window]
    borders = None if pair.borders is None else pair.borders[window]
    region = None if pair.region is None else pair.region[window]
    instances, cell, border = make_targets(labels, borders, border_thickness)
    annotated = region if region is not None else np.ones(cell.shape, bool)
    return {"image": image, "ranges": ranges,
            "target": torch.from_numpy(np.stack([cell, border, annotated]).astype(np.uint8)),
            "instances": np.where(annotated, instances, 0), "region": region, "name": pair.name}


def _busiest_window(mask: np.ndarray, side: int) -> tuple[slice, slice]:
    """At most `side` px along each axis: on an axis that is longer, the span holding the most `mask` pixels
    (annotated cells; so a validation item costs at most one tile to predict, whatever the image's size)."""
    window = []
    for axis, length in enumerate(mask.shape):
        if length <= side:
            window.append(slice(None))
            continue
        profile = np.concatenate([[0], np.cumsum(mask.sum(axis=1 - axis))])
        start = int(np.argmax(profile[side:] - profile[:-side]))
        window.append(slice(start, start + side))
    return tuple(window)


def intensity_ranges(image: np.ndarray, model: CellModel) -> list[tuple[float, float]]:
    """Per-channel (low, high) percentiles of `image`, as inference computes them."""
    from ..inference.normalize import channel_ranges, is_rgb, to_model_channels

    try:
        channels = to_model_channels(np.asarray(image), model.in_channels, is_rgb(np.shape(image)))
        return channel_ranges(channels, model.normalization)
    except ValueError as exc:
        raise TrainingDataError(str(exc)) from None


def held_out_cells(val_data: list[dict[str, Any]]) -> int:
    """Annotated cells in the validation data."""
    return int(sum(np.count_nonzero(np.unique(item["instances"])) for item in val_data))


def improvement(base_metrics: dict[str, float] | None, best_metrics: dict[str, float] | None,
                held_out: int) -> bool | None:
    """Whether the best trained step beats the starting model: a better score (`score_key`) and an F1 on the
    held-back cells no lower than the start's (the number the widget shows before -> after). None when there
    is nothing to compare or too few held-back cells (`MIN_HELD_OUT_CELLS`) to tell."""
    if base_metrics is None or best_metrics is None or held_out < MIN_HELD_OUT_CELLS:
        return None
    return best_metrics["f1"] >= base_metrics["f1"] and score_key(best_metrics) > score_key(base_metrics)


def score_key(metrics: dict[str, float]) -> tuple[float, float]:
    """Instance F1 and Dice decide; the loss breaks ties (early on both are often 0)."""
    return ((metrics["f1"] + metrics["dice"]) / 2, -metrics["val_loss"])
