"""Find the cells' diameter in an image from the image itself (`diameter="auto"`).

Two estimates, averaged in log space (they fail on different images). (1) A model that carries a size regression
(`size_model.py`; the bundled default does) guesses the size from its encoder's features of the image at nine
zooms, then one segmentation probe zoomed to that guess measures the median diameter of the cells it outlines
whole; guess and measurement are averaged in log space (cellpose's size model and its refinement). Cost: the
encoder on nine small windows and one 320-px probe. When that probe measures cells within 15 % of the guess, this
is the estimate and the probes below are skipped. (2) The probes, which models without a regression (or whose
encoder differs from the one it was fitted on) use alone: the network is shown small probes of the image zoomed as if the cells were a few candidate sizes apart (12 to 135 px). At the
candidate nearest the truth it sees cells of the size it was trained on and outlines them; far from it, it finds
nothing, or fragments much smaller than the candidate. The median diameter of the cells found whole inside the
probe (not cut by its edge) is the estimate, corrected for big cells touching the probe's edge more often. The two
most convincing candidates are refined by a larger probe zoomed to their estimate; the more convincing refinement
wins, and its estimate is averaged (in log space) with the one it was zoomed to. Cost: four probes of 256 and two
of 320 model pixels a side, whatever the image size.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from .._progress import Progress, result_of
from .instances import instances_from_probabilities
from .normalize import to_model_channels
from .rescale import model_diameter, rescale_plane
from .size_model import size_features, size_regression
from .taught_diameters import far_apart

CANDIDATE_DIAMETERS = (12.0, 27.0, 60.0, 135.0)  # px; neighbours 2.2x apart
COARSE_PROBE = 256  # side of a coarse probe, in the model's (zoomed) pixels
FINE_PROBE = 320
REFINED = 2  # the two most convincing coarse probes are refined; the more convincing refinement wins
MIN_CELLS = 2  # whole cells a probe must find for its estimate to count
# whole cells the probe zoomed to the size regression's guess must find to confirm it (replayed offline on the
# validation checks' probes: 46/69 within 15 % with 5, 44-45 with 2, 3, 4, 6 or 8)
CONFIRM_CELLS = 5
# the guess's probe measured within this ratio of the guess: the coarse probes are skipped. Replayed on the
# validation checks: within 15 % as often or more for all three bundled models (default 42 instead of 41 of 69,
# skipped on 13), at 1.25 the cells model lost one of 12 (benchmarks/RESULTS.md)
AGREED = 1.15
CONSISTENT = (0.4, 2.5)  # estimate / candidate ratios of a probe that saw real cells, not fragments
AGREEMENT = 0.35  # spread (natural log) of the estimate / candidate ratio weighting a probe's vote


@dataclass
class DiameterEstimate:
    """diameter: median cell diameter in the image (px), None when no probe found cells.
    cells: whole cells the final probe measured. probes: one dict per probe (candidate, cells, estimate).
    source: "probes" (with or without the size regression), or "training labels" when the model was fine-tuned on this very image
    (`taught_diameters`: the median size of the cells annotated there)."""

    diameter: float | None
    cells: int = 0
    probes: list[dict[str, Any]] = field(default_factory=list)
    source: str = "probes"


def iter_estimate_diameter(predictor: Any, plane: np.ndarray, rgb: bool = False
                           ) -> Generator[Progress, None, DiameterEstimate]:
    """Yield `Progress` per probe; return the `DiameterEstimate` for one 2-D (or colour) plane.

    `predictor` is an active `TiledPredictor` (its model, device and precision are used as they are).
    """
    tta, predictor.tta = getattr(predictor, "tta", False), False  # probes need no test-time augmentation
    try:
        return (yield from _iter_estimate(predictor, plane, rgb))
    finally:
        predictor.tta = tta


def _iter_estimate(predictor: Any, plane: np.ndarray, rgb: bool) -> Generator[Progress, None, DiameterEstimate]:
    model = predictor.model
    channels = to_model_channels(plane, model.in_channels, rgb)
    context = (predictor, plane, rgb, predictor.normalization_ranges(channels), _activity(channels),
               _instance_thresholds(model), model_diameter(model))
    regression = size_regression(model, model.network)
    if regression is None:
        return (yield from _iter_probed(*context))
    learned = yield from _iter_regressed(regression, *context)
    if _closely_confirmed(learned):
        yield Progress(1, 1, f"estimated cell diameter: {learned.diameter:.0f} px")
        return learned
    # a confirmed guess outweighs a probe leader that its own refinement did not confirm (fragments, most often)
    probed = yield from _iter_probed(*context, unrefined_leader=learned.diameter is None)
    probes = learned.probes + probed.probes
    if learned.diameter is None or probed.diameter is None:
        # one of them found nothing: the other one (the regression's guess, unconfirmed, as a last resort)
        found = probed if probed.diameter is not None else learned
        diameter = found.diameter if found.diameter is not None else learned.probes[0]["estimate"]
        return DiameterEstimate(round(diameter, 1), found.cells, probes, source="probes")
    # the two fail on different images; their log-space mean was within 15 % of the truth on 43 of 69 validation
    # checks, against 40 (probes) and 37 (regression) alone (benchmarks/RESULTS.md)
    diameter = float(np.sqrt(learned.diameter * probed.diameter))
    yield Progress(1, 1, f"estimated cell diameter: {diameter:.0f} px")
    return DiameterEstimate(round(diameter, 1), max(learned.cells, probed.cells), probes)


def _iter_probed(predictor, plane, rgb, ranges, activity, thresholds, reference, unrefined_leader: bool = True
                 ) -> Generator[Progress, None, DiameterEstimate]:
    """The coarse probes' vote and its two refinements (module doc); diameter None when no probe found cells, or
    when no refinement confirmed its leader and `unrefined_leader` is False."""
    total = len(CANDIDATE_DIAMETERS) + REFINED
    probes = []
    for number, candidate in enumerate(CANDIDATE_DIAMETERS):
        yield Progress(number, total, f"estimating cell size: trying {candidate:.0f} px")
        probes.append(_probe(predictor, plane, rgb, ranges, activity, candidate, reference, COARSE_PROBE, thresholds))
    leaders = _ranked(probes)[:REFINED]
    if not leaders:
        yield Progress(total, total, "estimating cell size: no cells found")
        return DiameterEstimate(None, 0, probes)
    refined = []
    for number, leader in enumerate(leaders):
        yield Progress(len(CANDIDATE_DIAMETERS) + number, total,
                       f"estimating cell size: refining around {leader['estimate']:.0f} px")
        refined.append(_probe(predictor, plane, rgb, ranges, activity, leader["estimate"], reference, FINE_PROBE,
                              thresholds))
    probes += refined
    confirmed = _ranked(refined)
    if not confirmed and not unrefined_leader:
        yield Progress(total, total, "estimating cell size: no probe confirmed")
        return DiameterEstimate(None, 0, probes)
    best = (confirmed or leaders)[0]
    # two measurements of the same cells at two zooms (the leader's, and the refinement's): their mean in log space
    diameter = float(np.sqrt(best["candidate"] * best["estimate"]))
    yield Progress(total, total, f"estimated cell diameter: {diameter:.0f} px")
    return DiameterEstimate(round(diameter, 1), int(best["cells"]), probes)


def _iter_regressed(regression, predictor, plane, rgb, ranges, activity, thresholds, reference
                    ) -> Generator[Progress, None, DiameterEstimate]:
    """The size regression's guess from encoder features, then one segmentation probe zoomed to it measures the
    cells it finds (cellpose's size model and its refinement); the two are averaged in log space. When that probe
    finds no whole cells of about the guessed size, the guess is unconfirmed: diameter None (the probes decide)."""
    yield Progress(0, 2, "estimating cell size")
    guess = regression.predict(_regression_features(predictor, plane, rgb, ranges, activity, reference,
                                                    regression.windows))
    yield Progress(1, 2, f"estimating cell size: refining around {guess:.0f} px")
    probe = _probe(predictor, plane, rgb, ranges, activity, guess, reference, FINE_PROBE, thresholds)
    probes = [{"candidate": "regression", "cells": 0, "estimate": round(guess, 2), "confidence": 0.0}, probe]
    if probe["cells"] < CONFIRM_CELLS or not _consistent(probe):
        return DiameterEstimate(None, 0, probes)
    # log-space mean of guess and measurement: on the validation images within 15 % as often as the measurement
    # alone (37/69 checks) and off by more than half less often (10 vs 12; the guess alone 28 and 14)
    diameter = float(np.sqrt(guess * probe["estimate"]))
    return DiameterEstimate(round(diameter, 1), int(probe["cells"]), probes)


def _closely_confirmed(learned: DiameterEstimate) -> bool:
    """Whether the probe zoomed to the regression's guess measured cells within `AGREED` of it: then the coarse
    probes are not needed (they cost twice the regression and its probe)."""
    if learned.diameter is None:
        return False
    return not far_apart(learned.probes[0]["estimate"], learned.probes[1]["estimate"], AGREED)


def regression_features(predictor: Any, plane: np.ndarray, rgb: bool = False, windows: int = 1) -> np.ndarray:
    """The size regression's input for a plane, exactly as `diameter="auto"` computes it (what
    `scripts/fit_size_model.py` fits on). `predictor`: an active `TiledPredictor`."""
    model = predictor.model
    channels = to_model_channels(plane, model.in_channels, rgb)
    return _regression_features(predictor, plane, rgb, predictor.normalization_ranges(channels), _activity(channels),
                                model_diameter(model), windows)


def _regression_features(predictor, plane, rgb, ranges, activity, reference, windows) -> np.ndarray:
    return size_features(predictor.network, plane, rgb, predictor.model.in_channels, ranges, reference,
                         lambda side: _busiest_windows(activity, plane.shape[:2], side, windows),
                         predictor.autocast, predictor.channels_last)


def estimate_cell_diameter(plane: np.ndarray, model: Any = None, *, device: str = "auto", rgb: bool | None = None,
                           threads: int | None = None) -> DiameterEstimate:
    """The cells' median diameter (px) in a 2-D image, estimated by the model. See module doc."""
    from .normalize import is_rgb
    from .predict import TiledPredictor
    from .segment import _resolve_model

    predictor = TiledPredictor(_resolve_model(model), device=device, threads=threads)
    try:
        rgb = is_rgb(np.shape(plane)) if rgb is None else rgb
        return result_of(iter_estimate_diameter(predictor, np.asarray(plane), rgb))
    finally:
        predictor.close()


def _probe(predictor, plane, rgb, ranges, activity, candidate, reference, side, thresholds) -> dict[str, Any]:
    """Zoom a window of the plane so cells of `candidate` px would look `reference` px; measure what is found."""
    zoom = reference / candidate
    window = min(plane.shape[0], plane.shape[1], max(8, int(round(side / zoom))))
    top, left = _busiest_window(activity, plane.shape[:2], window)
    crop = plane[top:top + window, left:left + window]
    probabilities = result_of(predictor.iter_predict(rescale_plane(crop, zoom, rgb), rgb=rgb, ranges=ranges))
    labels = instances_from_probabilities(probabilities[0], probabilities[1], **thresholds)
    diameters = _whole_cell_diameters(labels)
    estimate = _edge_corrected_median(diameters, labels.shape) / zoom if diameters.size else float("nan")
    return {"candidate": round(float(candidate), 1), "cells": int(diameters.size), "estimate": estimate,
            "confidence": float(probabilities[0][labels > 0].mean()) if labels.any() else 0.0}


def _ranked(probes: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Probes that found whole cells of about their candidate size, most convincing first: at the right zoom
    the network outlines cells of the size it was trained on, at a wrong one it finds fragments of another size.
    Vote: cells x confidence x agreement of the measured size with the candidate (a Gaussian in log ratio)."""
    usable = [p for p in probes if p["cells"] >= MIN_CELLS and _consistent(p)]

    def vote(probe: dict[str, Any]) -> float:
        agreement = np.exp(-(np.log(probe["estimate"] / probe["candidate"]) / AGREEMENT) ** 2)
        return probe["cells"] * probe["confidence"] * agreement

    return sorted(usable, key=vote, reverse=True)


def _consistent(probe: dict[str, Any]) -> bool:
    ratio = probe["estimate"] / probe["candidate"]
    return CONSISTENT[0] <= ratio <= CONSISTENT[1]


def _whole_cell_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameters (px) of the instances that do not touch the probe's edge."""
    if not labels.any():
        return np.empty(0)
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    areas = np.bincount(labels.ravel())
    keep = np.ones(areas.size, bool)
    keep[0] = False
    keep[edge] = False
    areas = areas[keep & (areas >= 10)]
    return 2.0 * np.sqrt(areas / np.pi)


def _edge_corrected_median(diameters: np.ndarray, shape: tuple[int, int]) -> float:
    """Median diameter of the cells whole inside a window, corrected for big cells touching its edge more often
    (Miles-Lantuejoul: a cell of diameter d lies whole inside with a chance proportional to (H - d)(W - d))."""
    inside = np.clip((shape[0] - diameters) * (shape[1] - diameters), 1.0, None)
    weights = 1.0 / inside
    order = np.argsort(diameters)
    cumulative = np.cumsum(weights[order])
    return float(diameters[order][np.searchsorted(cumulative, cumulative[-1] / 2)])


def _activity(channels: np.ndarray, size: int = 256) -> tuple[np.ndarray, int]:
    """A coarse map of local contrast (|gradient| of the first channel, every `step`-th pixel) and its step."""
    first = channels[0]
    step = max(1, int(np.ceil(max(first.shape) / size)))
    small = np.asarray(first[::step, ::step], dtype=np.float64)  # float32 would overflow on values like 1e296
    lo, hi = np.nanpercentile(small, (1, 99)) if small.size else (0.0, 1.0)
    small = np.nan_to_num((small - lo) / max(hi - lo, 1e-300)).astype(np.float32)
    return np.hypot(ndimage.sobel(small, 0), ndimage.sobel(small, 1)), step


def _busiest_window(activity: tuple[np.ndarray, int], shape: tuple[int, int], window: int) -> tuple[int, int]:
    """(top, left) of the `window`-px square with the most local contrast (cells rather than empty background)."""
    return _busiest_windows(activity, shape, window, 1)[0]


def _busiest_windows(activity: tuple[np.ndarray, int], shape: tuple[int, int], window: int, count: int
                     ) -> list[tuple[int, int]]:
    """(top, left) of up to `count` non-overlapping `window`-px squares, the most local contrast first."""
    grid, step = activity
    cells = max(1, window // step)
    if cells >= min(grid.shape):
        return [((shape[0] - window) // 2, (shape[1] - window) // 2)]
    totals = ndimage.uniform_filter(grid, size=cells, mode="constant")
    half = cells // 2
    inner = totals[half:grid.shape[0] - (cells - half) + 1, half:grid.shape[1] - (cells - half) + 1].copy()
    corners = []
    while len(corners) < count and np.isfinite(inner).any():
        y, x = np.unravel_index(int(np.argmax(inner)), inner.shape)
        corners.append((min(max(0, y * step), shape[0] - window), min(max(0, x * step), shape[1] - window)))
        inner[max(0, y - cells + 1):y + cells, max(0, x - cells + 1):x + cells] = -np.inf  # no overlap with it
    return corners


def _instance_thresholds(model: Any) -> dict[str, Any]:
    post = model.postprocessing
    return {"cell_threshold": post["cell_threshold"], "border_threshold": post["border_threshold"], "min_size": 0}
