"""Segmentation quality: pixel IoU/Dice, one-to-one instance matching by IoU, COCO AP.

Instance matching follows cellpose/stardist: an IoU table built from a sparse contingency table of
(prediction id, ground-truth id) pixel pairs, then the optimal one-to-one assignment
(`scipy.optimize.linear_sum_assignment`) among pairs with IoU >= threshold. COCO AP uses pycocotools'
`COCOeval` on RLE-encoded instances with `maxDets` raised to 2000, as in the LIVECell paper.

Scoring only: it never runs a model (`evaluation.evaluate_model` segments, then scores with these).
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
from scipy import ndimage, sparse
from scipy.optimize import linear_sum_assignment

from .errors import CellUnetError

DEFAULT_THRESHOLDS: tuple[float, ...] = tuple(np.round(np.arange(0.5, 0.96, 0.05), 2).tolist())
COUNT_KEYS = ("n_pred", "n_true", "tp_50", "fp_50", "fn_50")


class MetricsError(CellUnetError, ValueError):
    """Predictions and ground truth that cannot be compared (shapes, types, counts)."""


class MatchResult(NamedTuple):
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    matched_ious: np.ndarray  # IoU of every true-positive pair, float64


class _Overlaps(NamedTuple):
    """Every (pred, true) pair that shares pixels, with its IoU; ids are 1-based compact indices."""
    pred: np.ndarray
    true: np.ndarray
    iou: np.ndarray
    n_pred: int
    n_true: int


# ---------------------------------------------------------------- pixel metrics

def _foreground(a: np.ndarray) -> np.ndarray:
    return np.asarray(a) > 0


def _check_shapes(pred: np.ndarray, gt: np.ndarray) -> None:
    if np.shape(pred) != np.shape(gt):
        raise MetricsError(f"prediction shape {np.shape(pred)} differs from ground truth shape {np.shape(gt)}")


def _pixel_counts(pred: np.ndarray, gt: np.ndarray) -> tuple[int, int, int]:
    """(intersection, |pred|, |gt|) of the foregrounds."""
    _check_shapes(pred, gt)
    p, g = _foreground(pred), _foreground(gt)
    return int(np.count_nonzero(p & g)), int(np.count_nonzero(p)), int(np.count_nonzero(g))


def pixel_iou(pred: np.ndarray, gt: np.ndarray) -> float:
    """IoU of the foregrounds (label > 0 or True). Two empty images score 1."""
    inter, n_p, n_g = _pixel_counts(pred, gt)
    union = n_p + n_g - inter
    return inter / union if union else 1.0


def dice(pred: np.ndarray, gt: np.ndarray) -> float:
    """Dice coefficient of the foregrounds. Two empty images score 1."""
    inter, n_p, n_g = _pixel_counts(pred, gt)
    total = n_p + n_g
    return 2 * inter / total if total else 1.0


# ---------------------------------------------------------------- instance matching

def _as_instances(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels as compact ids 0..n (0 = background) and n. A boolean mask becomes its connected components."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        compact, n = ndimage.label(labels)
        return compact, int(n)
    if not np.issubdtype(labels.dtype, np.integer):
        raise MetricsError(f"instance labels must be integers or a boolean mask, not {labels.dtype}")
    labels = np.where(labels > 0, labels, 0) if np.issubdtype(labels.dtype, np.signedinteger) else labels
    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return np.zeros(labels.shape, np.intp), 0
    if ids[-1] == ids.size:  # already 1..n
        return labels.astype(np.intp, copy=False), int(ids.size)
    lut = np.zeros(int(ids[-1]) + 1, np.intp)
    lut[ids] = np.arange(1, ids.size + 1)
    return lut[labels], int(ids.size)


def _overlaps(pred_labels: np.ndarray, gt_labels: np.ndarray) -> _Overlaps:
    _check_shapes(pred_labels, gt_labels)
    p, n_p = _as_instances(pred_labels)
    g, n_g = _as_instances(gt_labels)
    p, g = p.ravel(), g.ravel()
    area_p = np.bincount(p, minlength=n_p + 1)
    area_g = np.bincount(g, minlength=n_g + 1)
    both = (p > 0) & (g > 0)
    pp, gg = p[both].astype(np.int64), g[both].astype(np.int64)
    table = sparse.coo_matrix((np.ones(pp.size, np.int64), (pp, gg)), shape=(n_p + 1, n_g + 1)).tocsr().tocoo()
    inter = table.data.astype(np.float64)
    iou = inter / (area_p[table.row] + area_g[table.col] - inter)
    return _Overlaps(table.row.astype(np.int64), table.col.astype(np.int64), iou, n_p, n_g)


def _ratio(num: int, den: int, empty: float) -> float:
    return num / den if den else empty


def _match(ov: _Overlaps, threshold: float) -> MatchResult:
    ok = ov.iou >= threshold
    rows, cols, ious = ov.pred[ok], ov.true[ok], ov.iou[ok]
    matched = np.empty(0, np.float64)
    if rows.size:
        # Solve the assignment only over the objects that have a candidate partner.
        r_ids, r = np.unique(rows, return_inverse=True)
        c_ids, c = np.unique(cols, return_inverse=True)
        n = min(r_ids.size, c_ids.size)
        # stardist's cost: maximise the number of matches first, then their total IoU.
        cost = np.zeros((r_ids.size, c_ids.size))
        cost[r, c] = -1.0 - ious / (2 * n)
        ri, ci = linear_sum_assignment(cost)
        keep = cost[ri, ci] < 0
        score = np.zeros_like(cost)
        score[r, c] = ious
        matched = score[ri[keep], ci[keep]]
    tp = int(matched.size)
    fp, fn = ov.n_pred - tp, ov.n_true - tp
    perfect_if_empty = 1.0 if ov.n_pred == ov.n_true == 0 else 0.0
    return MatchResult(tp, fp, fn,
                       precision=_ratio(tp, tp + fp, perfect_if_empty),
                       recall=_ratio(tp, tp + fn, perfect_if_empty),
                       f1=_ratio(2 * tp, 2 * tp + fp + fn, perfect_if_empty),
                       matched_ious=matched)


def match_instances(pred_labels: np.ndarray, gt_labels: np.ndarray, iou_threshold: float = 0.5) -> MatchResult:
    """Optimal one-to-one matching of predicted and true instances; a pair counts when IoU >= `iou_threshold`.

    Labels are integer instance images (0 = background, any ids) or boolean masks (connected components).
    With nothing predicted and nothing true, precision, recall and F1 are 1; other 0/0 ratios are 0.
    """
    return _match(_overlaps(pred_labels, gt_labels), iou_threshold)


def annotated_scores(pred: np.ndarray, gt: np.ndarray, region: np.ndarray | None = None,
                     iou_threshold: float = 0.5) -> dict[str, float]:
    """F1 and Dice where only `region` is annotated (True = every cell there is in `gt`).

    A predicted cell is judged when it overlaps a true cell or lies mostly (>= half its pixels) inside
    the region; the others are unpainted cells outside the annotation and are neither right nor wrong.
    Dice counts pixels inside the region only. `region=None` (all annotated) gives the plain scores.
    """
    pred, gt = np.asarray(pred), np.asarray(gt)
    _check_shapes(pred, gt)
    if region is not None:
        region = np.asarray(region, bool)
        gt = np.where(region, gt, 0)
        pred = _judged_cells(pred, gt, region)
        pred_fg = (pred > 0) & region
    else:
        pred_fg = pred > 0
    match = match_instances(pred, gt, iou_threshold)
    return {"f1": match.f1, "dice": dice(pred_fg, gt), "tp": match.tp, "fp": match.fp, "fn": match.fn}


def _judged_cells(pred: np.ndarray, gt: np.ndarray, region: np.ndarray) -> np.ndarray:
    ids, inverse = np.unique(pred, return_inverse=True)
    inverse = inverse.reshape(pred.shape)
    size = np.bincount(inverse.ravel(), minlength=ids.size)
    inside = np.bincount(inverse[region], minlength=ids.size)
    keep = 2 * inside >= size
    keep[np.unique(inverse[gt > 0])] = True
    keep[ids == 0] = False
    return np.where(keep[inverse], pred, 0)


def is_semantic_mask(labels: np.ndarray) -> bool:
    """True for ground truth that marks cell pixels without telling cells apart: one label value (e.g.
    LIVECell's published semantic masks, a 0/255 PNG) over more than one separate blob. Instance scores
    against it would count all cells as one ("1 true cell, F1 0.000")."""
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return False  # a boolean mask is read as its connected components (see _as_instances)
    values = np.unique(labels)
    values = values[values != 0]
    if values.size != 1:
        return False
    _, n_blobs = ndimage.label(labels != 0, structure=np.ones((3,) * labels.ndim))
    return n_blobs > 1


def semantic_scores(pred: np.ndarray, gt: np.ndarray) -> dict[str, Any]:
    """What can be scored against a semantic mask (see `is_semantic_mask`): pixel IoU, Dice, predicted count."""
    return {"pixel_iou": pixel_iou(pred, gt), "dice": dice(pred, gt), "n_pred": int(_as_instances(pred)[1]),
            "instance_labels": False}


def semantic_warning(names: Sequence[str]) -> str:
    listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return (f"{listed}: the ground truth has a single label value (a binary/semantic mask), so cells are not told "
            "apart; instance scores (F1, precision, recall, AP) need instance labels (one number per cell). "
            "Only pixel IoU and Dice are reported for it.")


def instance_scores(pred: np.ndarray, gt: np.ndarray,
                    thresholds: Sequence[float] = DEFAULT_THRESHOLDS) -> dict[str, float]:
    """F1/precision/recall at IoU 0.5, F1 averaged over `thresholds`, pixel IoU, Dice and object counts."""
    ov = _overlaps(pred, gt)
    at_50 = _match(ov, 0.5)
    f1s = [at_50.f1 if t == 0.5 else _match(ov, t).f1 for t in thresholds]
    return {
        "f1_50": at_50.f1, "precision_50": at_50.precision, "recall_50": at_50.recall,
        "mean_f1": float(np.mean(f1s)),
        "pixel_iou": pixel_iou(pred, gt), "dice": dice(pred, gt),
        "mean_matched_iou_50": float(at_50.matched_ious.mean()) if at_50.tp else 0.0,
        "n_pred": ov.n_pred, "n_true": ov.n_true,
        "tp_50": at_50.tp, "fp_50": at_50.fp, "fn_50": at_50.fn,
    }


def aggregate(scores: Iterable[Mapping[str, Any]]) -> dict[str, float]:
    """Summary over images: the mean of every rate, the sum of every count, and pooled P/R/F1 at IoU 0.5
    (computed from the summed matches, so images with many cells weigh more)."""
    scores = list(scores)
    if not scores:
        raise MetricsError("no scores to aggregate")
    keys = list(dict.fromkeys(k for score in scores for k, v in score.items()
                              if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)))
    out: dict[str, float] = {"n_images": len(scores)}
    for key in keys:
        values = [float(s[key]) for s in scores if key in s]
        out[key] = int(sum(values)) if key in COUNT_KEYS else float(np.nanmean(values))
    if all(k in out for k in ("tp_50", "fp_50", "fn_50")):
        tp, fp, fn = out["tp_50"], out["fp_50"], out["fn_50"]
        empty = 1.0 if tp + fp + fn == 0 else 0.0
        out["pooled_precision_50"] = _ratio(tp, tp + fp, empty)
        out["pooled_recall_50"] = _ratio(tp, tp + fn, empty)
        out["pooled_f1_50"] = _ratio(2 * tp, 2 * tp + fp + fn, empty)
    return out


# ---------------------------------------------------------------- COCO AP

def _instance_rles(labels: np.ndarray) -> list[tuple[int, dict]]:
    """(label id, compressed RLE) of every instance; only each object's bounding box is written per object."""
    from pycocotools import mask as mask_utils

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise MetricsError(f"COCO evaluation needs 2D label images, got shape {labels.shape}")
    compact, _ = _as_instances(labels)
    buffer = np.zeros(labels.shape, dtype=np.uint8, order="F")
    out = []
    for index, box in enumerate(ndimage.find_objects(compact), start=1):
        if box is None:
            continue
        buffer[box] = compact[box] == index
        out.append((index, mask_utils.encode(buffer)))
        buffer[box] = 0
    return out


def _mean_per_instance(labels: np.ndarray, probability: np.ndarray) -> np.ndarray:
    compact, n = _as_instances(labels)
    sums = np.bincount(compact.ravel(), weights=np.asarray(probability, np.float64).ravel(), minlength=n + 1)
    counts = np.bincount(compact.ravel(), minlength=n + 1)
    return sums / np.maximum(counts, 1)


def _coco_annotation(ann_id: int, image_id: int, rle: dict, score: float | None) -> dict:
    from pycocotools import mask as mask_utils

    ann = {"id": ann_id, "image_id": image_id, "category_id": 1, "segmentation": rle,
           "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(), "iscrowd": 0}
    if score is not None:
        ann["score"] = float(score)
    return ann


def coco_ap(pred_list: Sequence[np.ndarray], gt_list: Sequence[np.ndarray], max_dets: int = 2000,
            probabilities: Sequence[np.ndarray] | None = None) -> dict[str, float]:
    """COCO mask AP (0.5:0.95), AP50 and AP75 over a list of label images, via pycocotools.

    `maxDets` is `[100, 500, max_dets]`, so the summary counts up to `max_dets` detections per image.
    Each predicted instance scores 1.0, or the mean of its cell probability when `probabilities`
    (one HxW map per prediction) is given. Returns NaN when there are no true objects at all.
    pycocotools matches in Python, detections x objects per image: a few seconds for 1,000 cells.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(pred_list) != len(gt_list):
        raise MetricsError(f"{len(pred_list)} predictions for {len(gt_list)} ground-truth images")
    images, gt_anns, dets = [], [], []
    for image_id, (pred, gt) in enumerate(zip(pred_list, gt_list), start=1):
        _check_shapes(pred, gt)
        images.append({"id": image_id, "height": int(gt.shape[0]), "width": int(gt.shape[1])})
        for _, rle in _instance_rles(gt):
            gt_anns.append(_coco_annotation(len(gt_anns) + 1, image_id, rle, None))
        scores = _mean_per_instance(pred, probabilities[image_id - 1]) if probabilities is not None else None
        for index, rle in _instance_rles(pred):
            dets.append(_coco_annotation(len(dets) + 1, image_id, rle, 1.0 if scores is None else scores[index]))
    if not gt_anns:
        return {"AP": float("nan"), "AP50": float("nan"), "AP75": float("nan")}
    if not dets:
        return {"AP": 0.0, "AP50": 0.0, "AP75": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress
        coco_gt = COCO()
        coco_gt.dataset = {"images": images, "annotations": gt_anns, "categories": [{"id": 1, "name": "cell"}]}
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(dets)
        evaluator = COCOeval(coco_gt, coco_dt, iouType="segm")
        max_dets = int(max_dets)
        evaluator.params.maxDets = [min(100, max_dets), min(500, max_dets), max_dets]
        # Only the 'all' area range is reported; each range costs a Python loop over detections x objects.
        evaluator.params.areaRng, evaluator.params.areaRngLbl = [[0, 1e10]], ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    return {"AP": _average_precision(evaluator), "AP50": _average_precision(evaluator, 0.5),
            "AP75": _average_precision(evaluator, 0.75)}


def _average_precision(evaluator: Any, iou: float | None = None) -> float:
    """Mask AP over all areas at the largest maxDets, read from `evaluator.eval`.

    Not `COCOeval.summarize()`: its AP@[.5:.95] is hard-wired to maxDets=100, whatever `params.maxDets` says.
    """
    precision = evaluator.eval["precision"][:, :, 0, 0, -1]  # [iou threshold, recall, class, area 'all', maxDets]
    if iou is not None:
        precision = precision[np.isclose(evaluator.params.iouThrs, iou)]
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else float("nan")
