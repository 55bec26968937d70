"""The "Correct & measure" dock widget in a real viewer (run under `xvfb-run -a`): every tool through napari's
mouse callbacks on a real image segmented by the default model, checked against the true cells, and undo."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_usiigaci_set
from scipy import ndimage
from skimage.measure import regionprops

pytestmark = [pytest.mark.gui, pytest.mark.timeout(300)]

PLUGIN = "napari-cell-unet"
CROP = (slice(0, 320), slice(0, 320))
SCALE = (0.65, 0.65)
TRANSLATE = (10.0, -4.0)
DIAMETER = 69.0  # px: estimate_diameter of set1's true cells (the whole image)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_CELL_UNET_SETTINGS", str(tmp_path / "settings.ini"))


@pytest.fixture(scope="module")
def cells(shared_data):
    from napari_cell_unet.model import default_model_available

    if not default_model_available():
        pytest.skip("the bundled default model is not installed")
    data = load_usiigaci_set("set1")
    return {"image": data["image"][CROP], "truth": data["labels"][CROP]}


def iou(a, b) -> float:
    return float((a & b).sum() / max(1, (a | b).sum()))


def click(layer, data_point, plane=()):
    """A left click at a data point of `layer`, through napari's mouse callbacks (world coordinates)."""
    from napari.utils._test_utils import read_only_mouse_event
    from napari.utils.interactions import mouse_press_callbacks, mouse_release_callbacks

    world = layer.data_to_world(np.asarray(tuple(plane) + tuple(data_point), dtype=float))
    for kind, run in (("mouse_press", mouse_press_callbacks), ("mouse_release", mouse_release_callbacks)):
        run(layer, read_only_mouse_event(type=kind, button=1, position=tuple(world),
                                         dims_displayed=[layer.ndim - 2, layer.ndim - 1]))


def segmented_viewer(make_napari_viewer, image, stack_axis=False):
    viewer = make_napari_viewer()
    scale = ((1.0,) if stack_axis else ()) + SCALE
    translate = ((0.0,) if stack_axis else ()) + TRANSLATE
    viewer.add_image(image, name="cells", scale=scale, translate=translate)
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    segment.stack_combo.setCurrentText("whole stack")
    segment.diameter.setValue(DIAMETER)  # a 320² crop holds too few cells for the automatic estimate
    segment.segment(sync=True)
    _, correct = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct & measure")
    correct.labels_combo.set_layer(viewer.layers["cells labels"])
    correct.segment_widget = segment  # for tests that segment again
    return viewer, correct, viewer.layers["cells labels"]


def supported(truth, labels):
    """{predicted id: (true id, centroid)} of true cells the model found at IoU >= 0.7."""
    out = {}
    for region in regionprops(truth):
        r, c = (int(round(v)) for v in region.centroid)
        pred = int(labels[r, c])
        if truth[r, c] == region.label and pred and iou(labels == pred, truth == region.label) >= 0.7:
            out[pred] = (region.label, (r, c))
    return out


def test_every_tool_by_mouse_against_the_truth_then_undo_restores_exactly(make_napari_viewer, cells, tmp_path):
    from napari_cell_unet._widgets import _maps, correct_widget
    from napari_cell_unet._widgets._pairs import LayerPair, training_pairs

    viewer, widget, layer = segmented_viewer(make_napari_viewer, cells["image"])
    truth = cells["truth"]
    original = np.array(layer.data, copy=True)
    maps = _maps.maps_for(layer, ())
    assert maps is not None and maps.shape == (2,) + original.shape and maps.dtype == np.float16
    good = supported(truth, original)
    assert len(good) >= 5

    # a touching pair of well-found cells (for merge / split), and another cell to delete and add back
    pair = next((a, int(b)) for a in sorted(good)
                for b in np.unique(original[ndimage.binary_dilation(original == a, iterations=2)])
                if b > a and int(b) in good)
    other = next(p for p in sorted(good) if p not in pair)
    true_id, centroid = good[other]

    # Delete through the Shift-D shortcut bound on the layer, then a click
    layer.keymap[next(k for k in layer.keymap if str(k) in ("Shift-D", "Shift+D"))](layer)
    assert widget.tool == correct_widget.DELETE
    click(layer, centroid)
    assert not np.any(layer.data == other)
    steps = 1

    widget.set_tool(correct_widget.ADD)
    click(layer, centroid)
    steps += 1
    added = widget.last_edit.label
    assert added == original.max() + 1
    score_add = iou(np.asarray(layer.data) == added, truth == true_id)
    # measured 0.700 (the model's own cell: 0.700 with a fixed 60-px minimum size, 0.753 with the fraction of a cell)
    assert score_add >= 0.68, score_add
    # the add took only background: every other cell is untouched
    others = (original > 0) & (original != other)
    assert np.array_equal(np.asarray(layer.data)[others], original[others])

    (ta, pa), (tb, pb) = good[pair[0]], good[pair[1]]
    widget.set_tool(correct_widget.MERGE)
    click(layer, pa)
    assert np.any(layer.data == pair[1])  # the first click only marks a point
    click(layer, pb)
    steps += 1
    assert not np.any(layer.data == pair[1]) and layer.data[pb] == pair[0]

    widget.set_tool(correct_widget.SPLIT)
    click(layer, pa)
    click(layer, pb)
    steps += 1
    new = widget.last_edit.label
    data = np.asarray(layer.data)
    score_a, score_b = iou(data == pair[0], truth == ta), iou(data == new, truth == tb)
    assert score_a >= 0.7 and score_b >= 0.7, (score_a, score_b)

    sizes = np.bincount(data.ravel())
    threshold = int(np.sort(sizes[1:][sizes[1:] > 0])[2]) + 1  # the three smallest objects go
    assert widget.remove_small(threshold) is not None
    steps += 1
    assert np.all(np.bincount(np.asarray(layer.data).ravel())[1:][np.unique(layer.data)[1:] - 1] >= 0)
    remaining = np.bincount(np.asarray(layer.data).ravel())
    assert all(remaining[i] >= threshold for i in np.unique(layer.data) if i)

    # corrected pixels count as painted for "train only where painted": the deleted-and-readded cell's area is in
    corrected = _maps.corrected_mask(layer, ())
    assert corrected is not None and corrected[centroid]
    training = training_pairs([LayerPair(viewer.layers["cells"], layer)], True, 4)
    assert training[0].region[corrected].all()

    # each action was one undo step; undoing them all gives back the segmentation exactly
    for _ in range(steps):
        widget.undo_button.click()
    assert np.array_equal(np.asarray(layer.data), original)

    # measurements: Segment filled the layer's features (µm: the image has a pixel size), the table shows them
    features = layer.features
    ids = np.unique(original[original > 0])
    assert list(features["label"]) == list(ids) and list(features["index"]) == list(ids)
    np.testing.assert_allclose(features["area_um2"], np.bincount(original.ravel())[ids] * SCALE[0] * SCALE[1])
    assert widget.table.rowCount() == len(ids) and widget.frame_plot.isHidden()
    header = [widget.table.horizontalHeaderItem(i).text() for i in range(widget.table.columnCount())]
    assert "area_um2" in header and "mean_intensity" in header
    row = int(np.flatnonzero(features["label"].to_numpy() == pair[0])[0])
    widget.table.cellClicked.emit(row, 0)
    assert layer.selected_label == pair[0] and layer.show_selected_label
    expected = layer.data_to_world(np.argwhere(original == pair[0]).mean(axis=0))
    np.testing.assert_allclose((viewer.scene.camera if hasattr(viewer, "scene") else viewer.camera).center[-2:], expected, atol=1e-6)
    # after a deletion, Measure counts one cell less; Export writes one row per cell with image and frame
    layer.show_selected_label = False
    widget.set_tool(correct_widget.DELETE)
    click(layer, good[other][1])
    widget.measure()
    assert len(layer.features) == len(ids) - 1 and widget.table.rowCount() == len(ids) - 1
    path = widget.export_csv(str(tmp_path / "cells.csv"))
    import csv
    with open(path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(ids) - 1 and {r["image"] for r in rows} == {"cells"} and {r["frame"] for r in rows} == {"0"}
    assert [int(r["label"]) for r in rows] == [i for i in ids if i != other]
    viewer.close()


def test_stack_tools_act_on_the_current_slice_only(make_napari_viewer, cells):
    from napari_cell_unet._widgets import _maps, correct_widget

    stack = np.stack([cells["image"][:160, :160], cells["image"][160:, 160:]])
    viewer, widget, layer = segmented_viewer(make_napari_viewer, stack, stack_axis=True)
    assert layer.data.shape == (2, 160, 160)
    assert _maps.maps_for(layer, (1,)) is not None
    original = np.array(layer.data, copy=True)
    viewer.dims.set_current_step(0, 1)
    assert widget.current_plane() == (1,)
    target = int(np.bincount(original[1].ravel())[1:].argmax()) + 1
    point = tuple(int(v) for v in np.argwhere(original[1] == target)[len(np.argwhere(original[1] == target)) // 2])
    widget.set_tool(correct_widget.DELETE)
    click(layer, point, plane=(1,))
    assert not np.any(layer.data[1] == target)
    assert np.array_equal(layer.data[0], original[0])
    widget.set_tool(correct_widget.ADD)
    click(layer, point, plane=(1,))
    assert layer.data[1][point] == original[1].max() + 1 and np.array_equal(layer.data[0], original[0])
    sizes = np.bincount(np.asarray(layer.data[1]).ravel())
    if widget.remove_small(int(sizes[1:][sizes[1:] > 0].min()) + 1) is not None:
        assert np.array_equal(layer.data[0], original[0])
        layer.undo()
    layer.undo()
    layer.undo()
    assert np.array_equal(np.asarray(layer.data), original)

    # per-frame measurements and plot; a row of frame 1 moves the viewer to frame 1
    features = layer.features
    counts = [len(np.unique(original[f])) - 1 for f in range(2)]
    assert list(np.bincount(features["frame"], minlength=2)) == counts
    assert not widget.frame_plot.isHidden() and widget.frame_plot.counts == counts
    medians = [np.median(np.bincount(original[f].ravel())[np.unique(original[f])[1:]]) * SCALE[0] * SCALE[1]
               for f in range(2)]
    np.testing.assert_allclose(widget.frame_plot.areas, medians)
    viewer.dims.set_current_step(0, 0)
    row = int(np.flatnonzero(features["frame"].to_numpy() == 1)[0])
    widget.select_row(row)
    assert viewer.dims.current_step[0] == 1 and layer.selected_label == int(features["label"].iloc[row])

    # segmenting again replaces the corrected slice: its corrections no longer count as painted
    assert _maps.corrected_mask(layer, (1,)) is not None
    widget.segment_widget.segment(sync=True)
    assert _maps.corrected_mask(layer, (1,)) is None and np.array_equal(np.asarray(layer.data), original)
    viewer.close()


def test_add_recomputes_the_maps_when_they_were_too_large_to_keep(make_napari_viewer, cells, monkeypatch):
    from napari_cell_unet._widgets import _maps, correct_widget

    monkeypatch.setattr(_maps, "MAX_KEPT_PIXELS", 1000)  # this 320² image counts as too large
    viewer, widget, layer = segmented_viewer(make_napari_viewer, cells["image"])
    assert _maps.maps_for(layer, ()) is None
    original = np.array(layer.data, copy=True)
    good = supported(cells["truth"], original)
    # the true cell the model found best
    pred, (true_id, centroid) = max(good.items(), key=lambda item: iou(original == item[0],
                                                                        cells["truth"] == item[1][0]))
    widget.set_tool(correct_widget.DELETE)
    click(layer, centroid)
    widget.set_tool(correct_widget.ADD)
    click(layer, centroid)  # predicts the maps of a window around the click with the chosen model
    added = widget.last_edit.label
    score = iou(np.asarray(layer.data) == added, cells["truth"] == true_id)
    assert score >= 0.7, score
    viewer.close()
