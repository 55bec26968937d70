"""Metrics against hand-computed cases and against pycocotools on real Usiigaci labels."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from scipy import ndimage

from napari_cell_unet.metrics import (
    aggregate,
    coco_ap,
    dice,
    instance_scores,
    match_instances,
    pixel_iou,
)

from conftest import load_small_set, load_usiigaci_set


def _squares(shift: int) -> tuple[np.ndarray, np.ndarray]:
    """A 10x10 true square and the same square shifted `shift` pixels to the right."""
    gt = np.zeros((30, 40), np.uint16)
    pred = np.zeros_like(gt)
    gt[5:15, 5:15] = 3
    pred[5:15, 5 + shift:15 + shift] = 7
    return pred, gt


@pytest.mark.parametrize("shift", [0, 2, 4, 6])
def test_shifted_squares_exact_iou_and_dice(shift):
    pred, gt = _squares(shift)
    inter = 10 * (10 - shift)
    expected_iou = inter / (200 - inter)
    assert pixel_iou(pred, gt) == pytest.approx(expected_iou)
    assert dice(pred, gt) == pytest.approx(2 * inter / 200)
    match = match_instances(pred, gt)
    assert match.tp == (1 if expected_iou >= 0.5 else 0)
    assert match.matched_ious.tolist() == pytest.approx([expected_iou] if match.tp else [])
    scores = instance_scores(pred, gt)
    thresholds = np.arange(0.5, 0.96, 0.05)
    assert scores["mean_f1"] == pytest.approx(np.mean(expected_iou >= thresholds - 1e-12))


def test_one_missed_one_false_object():
    gt = np.zeros((50, 50), np.uint8)
    gt[2:10, 2:10], gt[20:30, 20:30], gt[40:48, 5:15] = 1, 2, 3
    pred = np.zeros_like(gt)
    pred[2:10, 2:10] = 5            # exact match of 1
    pred[21:30, 20:30] = 9          # IoU 0.9 with 2
    pred[35:45, 35:45] = 4          # false positive; 3 is missed
    match = match_instances(pred, gt)
    assert (match.tp, match.fp, match.fn) == (2, 1, 1)
    assert match.precision == pytest.approx(2 / 3)
    assert match.recall == pytest.approx(2 / 3)
    assert match.f1 == pytest.approx(2 / 3)
    assert sorted(match.matched_ious) == pytest.approx([0.9, 1.0])
    assert match_instances(pred, gt, iou_threshold=0.95).tp == 1


def test_matching_is_optimal_not_greedy():
    # One row of pixels: true objects [0,10) and [10,20); predictions B=[0,3) and A=[3,15).
    # IoU(A,t1)=7/15, IoU(A,t2)=5/17, IoU(B,t1)=3/10. Greedy takes A-t1 and leaves B unmatched;
    # the optimal assignment at threshold 0.25 is A-t2 and B-t1.
    gt = np.zeros((1, 30), np.int32)
    gt[0, 0:10], gt[0, 10:20] = 1, 2
    pred = np.zeros_like(gt)
    pred[0, 0:3], pred[0, 3:15] = 1, 2
    match = match_instances(pred, gt, iou_threshold=0.25)
    assert match.tp == 2
    assert sorted(match.matched_ious) == pytest.approx(sorted([5 / 17, 3 / 10]))


def test_ids_dtype_and_mask_inputs_do_not_matter():
    labels = load_small_set("set18")["labels"][:300, :300]
    eroded = ndimage.grey_erosion(labels, size=(5, 5))
    reference = instance_scores(eroded, labels)
    big_ids = np.where(labels > 0, labels.astype(np.uint32) * 1000 + 123456, 0)
    assert instance_scores(eroded, big_ids) == reference
    assert instance_scores(eroded.astype(np.int64), labels.astype(np.uint16)) == reference
    # a boolean mask counts its connected components as instances
    blobs = np.zeros((20, 20), bool)
    blobs[1:5, 1:5] = blobs[10:15, 10:15] = True
    assert match_instances(blobs, ndimage.label(blobs)[0]).tp == 2


def test_empty_images():
    empty = np.zeros((10, 10), np.uint8)
    one = empty.copy()
    one[2:5, 2:5] = 1
    assert match_instances(empty, empty).f1 == 1.0
    assert pixel_iou(empty, empty) == 1.0
    missed = match_instances(empty, one)
    assert (missed.tp, missed.fn, missed.f1, missed.recall) == (0, 1, 0.0, 0.0)
    assert match_instances(one, empty).fp == 1
    with pytest.raises(ValueError, match="shape"):
        match_instances(one, one[:5])


def test_identical_real_labels_score_perfectly():
    labels = load_small_set("set20")["labels"]
    scores = instance_scores(labels, labels)
    assert scores["f1_50"] == scores["mean_f1"] == scores["pixel_iou"] == 1.0
    assert scores["n_pred"] == scores["n_true"] == len(np.unique(labels)) - 1
    ap = coco_ap([labels], [labels])
    assert ap == {"AP": 1.0, "AP50": 1.0, "AP75": 1.0}


def test_matched_ious_agree_with_pycocotools(usiigaci):
    from pycocotools import mask as mask_utils

    labels = load_usiigaci_set("set18")["labels"]  # the whole image: some cells keep IoU >= 0.85
    # perturb: erode each cell and shift everything, so the IoUs spread over 0.3..0.95
    perturbed = np.roll(ndimage.grey_erosion(labels, size=(5, 5)), (3, -2), axis=(0, 1))

    def rles(lab):
        return [mask_utils.encode(np.asfortranarray((lab == i).astype(np.uint8)))
                for i in np.unique(lab) if i > 0]

    coco_iou = np.asarray(mask_utils.iou(rles(perturbed), rles(labels), [0] * (len(np.unique(labels)) - 1)))
    for threshold in (0.5, 0.6, 0.75, 0.85):
        ours = match_instances(perturbed, labels, threshold)
        # at IoU >= 0.5 every object has at most one partner, so the matches are the entries above threshold
        expected = np.sort(coco_iou[coco_iou >= threshold])
        assert ours.tp == expected.size
        np.testing.assert_allclose(np.sort(ours.matched_ious), expected, rtol=1e-9)
    assert 0 < match_instances(perturbed, labels, 0.85).tp < match_instances(perturbed, labels, 0.5).tp


def test_coco_ap_with_missed_and_false_objects_matches_hand_computation(usiigaci):
    labels = load_usiigaci_set("set18")["labels"]  # the whole image (the false objects are placed up to 1000 px)
    n_true = len(np.unique(labels)) - 1
    pred = np.where(labels > 10, labels, 0).astype(np.uint16)        # cells 1..10 missed
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    false_centres = [(y, x) for y in range(20, 1000, 60) for x in range(20, 1000, 60)
                     if labels[max(y - 12, 0):y + 12, max(x - 12, 0):x + 12].max() == 0][:3]
    assert len(false_centres) == 3
    for k, (y, x) in enumerate(false_centres):
        pred[(yy - y) ** 2 + (xx - x) ** 2 < 64] = 200 + k
    # false objects get a lower score than the true ones, so the PR curve is 1 up to recall tp/n_true, then 0
    probability = np.where(pred >= 200, 0.1, 0.9).astype(np.float32)
    tp = n_true - 10
    ap = coco_ap([pred], [labels], probabilities=[probability])
    recall_thresholds = np.linspace(0.0, 1.0, 101)
    expected = np.count_nonzero(recall_thresholds <= tp / n_true) / 101
    assert ap["AP50"] == pytest.approx(expected) and ap["AP"] == pytest.approx(expected)
    scores = instance_scores(pred, labels)
    assert (scores["tp_50"], scores["fp_50"], scores["fn_50"]) == (tp, 3, 10)
    assert scores["f1_50"] == pytest.approx(2 * tp / (2 * tp + 13))


def test_coco_ap_max_dets_counts_more_than_100_objects():
    # 300 small true squares: with COCO's usual 100 detections per image, recall stops at 1/3
    ids = np.arange(1, 301, dtype=np.uint16).reshape(15, 20)
    gt = np.kron(ids, np.ones((6, 6), np.uint16))
    gt[np.arange(gt.shape[0]) % 6 == 5, :] = 0                  # gaps so every square stays separate
    assert coco_ap([gt], [gt], max_dets=300)["AP"] == pytest.approx(1.0)
    expected = np.count_nonzero(np.linspace(0, 1, 101) <= 100 / 300) / 101
    assert coco_ap([gt], [gt], max_dets=100)["AP"] == pytest.approx(expected)


def test_aggregate_means_rates_and_pools_counts():
    a = {"f1_50": 1.0, "precision_50": 1.0, "n_pred": 2, "n_true": 2, "tp_50": 2, "fp_50": 0, "fn_50": 0}
    b = {"f1_50": 0.0, "precision_50": 0.0, "n_pred": 8, "n_true": 8, "tp_50": 0, "fp_50": 8, "fn_50": 8}
    summary = aggregate([a, b])
    assert summary["n_images"] == 2
    assert summary["f1_50"] == pytest.approx(0.5)
    assert (summary["n_pred"], summary["tp_50"], summary["fn_50"]) == (10, 2, 8)
    assert summary["pooled_f1_50"] == pytest.approx(4 / (4 + 16))
    with pytest.raises(ValueError):
        aggregate([])


def test_metrics_import_does_not_import_torch():
    code = "import sys, napari_cell_unet.metrics; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
