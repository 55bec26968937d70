"""Click-to-fix corrections (`napari_cell_unet.correction`) on a real Usiigaci image and the default model's maps."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_usiigaci_set
from scipy import ndimage
from skimage.measure import regionprops

from napari_cell_unet import correction

CROP = (slice(0, 512), slice(0, 512))


@pytest.fixture(scope="module")
def segmented(shared_data):
    """set1 (512² corner): image, truth, the default model's labels and its (cell, border) maps as float16."""
    from napari_cell_unet.inference import segment
    from napari_cell_unet.model import default_model_available

    if not default_model_available():
        pytest.skip("the bundled default model is not installed")
    data = load_usiigaci_set("set1")
    image, truth = data["image"][CROP], data["labels"][CROP]
    labels, probs = segment(image, return_probabilities=True)
    return {"image": image, "truth": truth, "labels": labels, "probs": probs.astype(np.float16)}


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def supported_cells(segmented) -> list[tuple[int, int, int, int]]:
    """(truth id, predicted id, row, col at the centroid) of true cells the model found at IoU >= 0.7."""
    truth, labels = segmented["truth"], segmented["labels"]
    out = []
    for region in regionprops(truth):
        r, c = (int(round(v)) for v in region.centroid)
        pred = int(labels[r, c])
        if truth[r, c] != region.label or pred == 0:
            continue
        if iou(labels == pred, truth == region.label) >= 0.7:
            out.append((region.label, pred, r, c))
    return out


def test_delete_then_add_back_matches_the_true_cell(segmented):
    truth, labels, probs = segmented["truth"], segmented["labels"], segmented["probs"]
    cells = supported_cells(segmented)
    assert len(cells) >= 10
    scores = []
    for true_id, pred, r, c in cells:
        work = labels.copy()
        deleted = correction.delete_cell(work, (r, c))
        assert deleted.label == pred
        deleted.apply(work)
        assert not np.any(work == pred) and np.array_equal(work != 0, (labels != 0) & (labels != pred))
        added = correction.add_cell(work, probs, (r, c))
        assert added.label == int(labels.max()) + 1
        before = work.copy()
        added.apply(work)
        # only background pixels changed, all to the new id
        changed = before != work
        assert np.all(before[changed] == 0) and np.all(work[changed] == added.label)
        scores.append(iou(work == added.label, truth == true_id))
    scores = np.asarray(scores)
    assert np.median(scores) >= 0.75, scores
    assert np.mean(scores >= 0.7) >= 0.8, scores


def test_add_is_bounded_by_labelled_neighbours_and_refuses_labelled_or_empty_clicks(segmented):
    labels, probs = segmented["labels"], segmented["probs"]
    _, pred, r, c = supported_cells(segmented)[0]
    with pytest.raises(correction.CorrectionError, match="already a cell"):
        correction.add_cell(labels, probs, (r, c))
    background = np.argwhere((labels == 0) & (probs[0] < 0.02))[0]
    with pytest.raises(correction.CorrectionError, match="no cell"):
        correction.add_cell(labels, probs, tuple(background))
    # with the cell removed, adding it back never takes a neighbour's pixels
    work = labels.copy()
    correction.delete_cell(work, (r, c)).apply(work)
    edit = correction.add_cell(work, probs, (r, c))
    assert np.all(edit.before[edit.after != edit.before] == 0)


def touching_pairs(segmented, limit: int = 6):
    """Pairs of touching predicted cells that each match a true cell at IoU >= 0.7 (the ground truth to split)."""
    labels = segmented["labels"]
    good = {pred: (true_id, r, c) for true_id, pred, r, c in supported_cells(segmented)}
    pairs = []
    for a in sorted(good):
        grown = ndimage.binary_dilation(labels == a, iterations=2)
        for b in np.unique(labels[grown]):
            if b > a and int(b) in good:
                pairs.append((good[a], good[int(b)], a, int(b)))
    return pairs[:limit]


def test_merge_then_split_recovers_both_cells(segmented):
    truth, labels, probs = segmented["truth"], segmented["labels"], segmented["probs"]
    pairs = touching_pairs(segmented)
    assert len(pairs) >= 2
    for (ta, ra, ca), (tb, rb, cb), a, b in pairs:
        work = labels.copy()
        merged = correction.merge_cells(work, (ra, ca), (rb, cb))
        merged.apply(work)
        assert merged.label == a and not np.any(work == b)
        assert np.all((work == a)[(labels == a) | (labels == b)])
        split = correction.split_cell(work, (ra, ca), (rb, cb), probs)
        split.apply(work)
        assert work[ra, ca] == a and work[rb, cb] == split.label != a
        assert iou(work == a, truth == ta) >= 0.7
        assert iou(work == split.label, truth == tb) >= 0.7
        # without the maps (distance only) the split is still sensible
        distance_only = labels.copy()
        merged.apply(distance_only)
        correction.split_cell(distance_only, (ra, ca), (rb, cb)).apply(distance_only)
        assert iou(distance_only == a, truth == ta) >= 0.6


def test_split_and_merge_refuse_wrong_clicks(segmented):
    labels = segmented["labels"]
    (_, ra, ca), (_, rb, cb), _, _ = touching_pairs(segmented)[0]
    with pytest.raises(correction.CorrectionError, match="same cell"):
        correction.split_cell(labels, (ra, ca), (rb, cb))
    with pytest.raises(correction.CorrectionError, match="same cell"):
        correction.merge_cells(labels, (ra, ca), (ra + 1, ca))
    background = tuple(np.argwhere(labels == 0)[0])
    with pytest.raises(correction.CorrectionError, match="background"):
        correction.merge_cells(labels, (ra, ca), background)
    with pytest.raises(correction.CorrectionError, match="no cell"):
        correction.delete_cell(labels, background)


def test_remove_small_and_revert_are_exact(segmented):
    labels = segmented["labels"]
    sizes = np.bincount(labels.ravel())
    threshold = int(np.percentile(sizes[1:][sizes[1:] > 0], 25))
    work = labels.copy()
    edit = correction.remove_small(work, threshold)
    assert edit is not None
    edit.apply(work)
    kept = np.unique(work[work > 0])
    assert np.all(sizes[kept] >= threshold)
    assert set(np.unique(labels[labels > 0])) - set(kept) == {i for i in range(1, sizes.size)
                                                            if 0 < sizes[i] < threshold}
    rows, cols = edit.changed()
    assert np.all(work[rows, cols] == 0) and np.all(labels[rows, cols] > 0)
    assert edit.n_changed == rows.size == int(np.count_nonzero(labels != work))
    edit.revert(work)
    assert np.array_equal(work, labels)
    assert correction.remove_small(labels, 0) is None
