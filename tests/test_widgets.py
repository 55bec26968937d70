"""The napari dock widgets in a real viewer (run under `xvfb-run -a`): segment, train, errors.

Every widget is opened through napari's plugin machinery, like a user would from the Plugins menu.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import TINY_ARCHITECTURE, load_small_set

pytestmark = [pytest.mark.gui, pytest.mark.timeout(300)]

PLUGIN = "napari-cell-unet"
CROP = (slice(300, 556), slice(300, 556))  # 256 x 256 px, ~15 cells in set1
SCALE = (0.65, 0.65)
TINY_TRAINING_STEPS = 60
TRANSLATE = (10.0, -4.0)


@pytest.fixture(autouse=True)
def isolated_settings(tmp_path, monkeypatch):
    """Recent model files go to a temporary ini file, not the user's settings; no modal dialogs."""
    from napari_cell_unet._widgets import segment_widget

    monkeypatch.setenv("NAPARI_CELL_UNET_SETTINGS", str(tmp_path / "settings.ini"))

    def unexpected_dialog(layer):
        raise AssertionError(f"unexpected 'replace {layer.name}?' dialog")

    monkeypatch.setattr(segment_widget, "ask_replace", unexpected_dialog)


@pytest.fixture(scope="module")
def cells() -> dict[str, np.ndarray]:
    data = load_small_set("set1")
    return {"image": data["image"][CROP], "labels": data["labels"][CROP]}


@pytest.fixture(scope="session")
def segmenting_model_file(request):
    """The bundled default model when installed; else a tiny model trained briefly on other Usiigaci sets.

    The tiny model is deterministic (seeded), so it is kept in pytest's cache between runs.
    """
    from napari_cell_unet.model import ModelFileError, files, load_model, save_model

    if files.default_model_available():
        return files.DEFAULT_MODEL_PATH
    path = request.config.cache.mkdir("napari-cell-unet") / f"widget-test-tiny-{TINY_TRAINING_STEPS}.safetensors"
    try:
        load_model(path)
        return path
    except ModelFileError:
        pass
    from napari_cell_unet.training import TrainConfig, TrainingPair, train

    corner = (slice(0, 384), slice(0, 384))
    pairs = [TrainingPair(**{k: v[corner] for k, v in load_small_set(name).items()}, name=name)
             for name in ("set18", "set19")]
    config = TrainConfig(steps=TINY_TRAINING_STEPS, crop_size=128, batch_size=4, validations=1,
                         architecture=dict(TINY_ARCHITECTURE), name="tiny trained")
    return save_model(train(pairs, "scratch", config).model, path)


@pytest.fixture
def viewer(make_napari_viewer, cells):
    viewer = make_napari_viewer()
    viewer.add_image(cells["image"], name="cells", scale=SCALE, translate=TRANSLATE)
    return viewer


@pytest.fixture
def segment_widget(viewer, segmenting_model_file):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    assert widget.load_model_file(str(segmenting_model_file))
    return widget


@pytest.fixture
def train_widget(viewer, segment_widget):
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / fine-tune")
    return widget


def gt_cell_count(labels: np.ndarray) -> int:
    return len(np.unique(labels)) - 1


def last_error(widget) -> str:
    from napari.utils.notifications import NotificationSeverity, notification_manager

    errors = [n for n in notification_manager.records if n.severity == NotificationSeverity.ERROR]
    assert errors, "expected an error notification"
    assert widget.status.text() == errors[-1].message
    return errors[-1].message


# ---- segmentation ----------------------------------------------------------------------------

def test_segment_real_image_adds_labels_layer(viewer, segment_widget, cells):
    from napari.layers import Labels

    job = segment_widget.segment(sync=True)
    assert job is not None and not job.cancelled
    layer = viewer.layers["cells labels"]
    assert isinstance(layer, Labels)
    assert layer.data.shape == cells["image"].shape and layer.data.dtype == np.uint32
    np.testing.assert_allclose(layer.scale, SCALE)
    np.testing.assert_allclose(layer.translate, TRANSLATE)
    n_found, n_true = int(layer.data.max()), gt_cell_count(cells["labels"])
    assert 0.5 * n_true <= n_found <= 2 * n_true, (n_found, n_true)
    assert len(np.unique(layer.data)) - 1 == n_found  # consecutive ids
    assert f"{n_found} cells" in segment_widget.status.text() and "cpu" in segment_widget.status.text()


def test_test_time_flips_are_an_advanced_choice_that_reaches_the_run(viewer, segment_widget, cells, monkeypatch):
    from napari_cell_unet._widgets import segment_widget as module

    assert not segment_widget.tta_check.isChecked() and segment_widget._parameters()["tta"] is False
    segment_widget.tta_check.setChecked(True)
    seen = []
    real = module.iter_segment_many
    monkeypatch.setattr(module, "iter_segment_many", lambda *a, **k: seen.append(k.get("tta")) or real(*a, **k))
    job = segment_widget.segment(sync=True)
    assert job is not None and not job.cancelled and seen == [True]
    assert viewer.layers["cells labels"].data.max() > 0


def test_cell_diameter_rescales_small_cells_to_the_model(make_napari_viewer, segmenting_model_file, cells):
    """Cells shrunk to half size are found again when the user gives their diameter."""
    from skimage.transform import rescale

    from napari_cell_unet.model import load_model

    viewer = make_napari_viewer()
    small = rescale(cells["image"].astype(np.float32), 0.5, order=1, preserve_range=True, anti_aliasing=True)
    viewer.add_image(small, name="small cells")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    assert widget.load_model_file(str(segmenting_model_file))
    trained = float(load_model(segmenting_model_file).metadata.get("cell_diameter", 50.0))
    widget.diameter.setValue(trained / 2)
    assert widget._parameters()["diameter"] == pytest.approx(trained / 2)
    widget.segment(sync=True)
    labels = viewer.layers["small cells labels"].data
    assert labels.shape == small.shape
    n_true = gt_cell_count(cells["labels"])
    assert 0.5 * n_true <= int(labels.max()) <= 2 * n_true, (int(labels.max()), n_true)


def test_cell_diameter_auto_is_the_default_and_shown(viewer, segment_widget, cells):
    from napari_cell_unet._widgets._layers import METADATA_KEY
    from napari_cell_unet.inference import estimate_diameter

    assert segment_widget.diameter.text() == "auto" and segment_widget._parameters()["diameter"] == "auto"
    segment_widget.segment(sync=True)
    record = viewer.layers["cells labels"].metadata[METADATA_KEY]
    assert record["cell_diameter_estimated"] is True and record["cell_diameter"] > 0
    assert f"cell diameter: auto, {record['cell_diameter']:.0f} px" in segment_widget.status.text()
    assert record["cell_diameter"] == pytest.approx(estimate_diameter(cells["labels"]), rel=0.5)


def test_status_says_when_the_size_is_that_of_the_cells_trained_on():
    from types import SimpleNamespace

    from napari_cell_unet._widgets.segment_widget import diameter_text
    from napari_cell_unet.inference.diameter import DiameterEstimate
    from napari_cell_unet.inference.segment import TAUGHT, TYPICAL

    def done(diameter, source):
        estimate = DiameterEstimate(diameter, 5, source=source)
        return SimpleNamespace(result=SimpleNamespace(diameter=diameter, diameter_estimate=estimate))

    assert diameter_text([done(64.2, TAUGHT)]) == "cell diameter: as the cells you trained on, 64 px"
    assert diameter_text([done(27.0, "probes")]) == "cell diameter: auto, 27 px"
    assert diameter_text([done(64.0, TAUGHT), done(27.0, "probes")]) == "cell diameter: auto, 27-64 px"
    assert diameter_text([done(16.4, TYPICAL)]) == "cell diameter: typical of the cells this model was trained on, 16 px"


def test_resegment_is_undoable_and_asks_before_overwriting_edits(viewer, segment_widget):
    asked = []
    segment_widget.confirm_replace = lambda layer: asked.append(layer.name) or "skip"
    segment_widget.segment(sync=True)
    layer = viewer.layers["cells labels"]
    first = layer.data.copy()

    assert first.max() > 0
    segment_widget.min_size.setValue(segment_widget.min_size.maximum())  # larger than the crop: no cells
    segment_widget.segment(sync=True)
    assert [lay.name for lay in viewer.layers] == ["cells", "cells labels"] and not asked
    assert layer.data.max() == 0
    layer.undo()
    np.testing.assert_array_equal(layer.data, first)

    layer.data_setitem((np.array([5]), np.array([5])), 999)  # the user paints
    painted = layer.data.copy()
    segment_widget.segment(sync=True)
    assert asked == ["cells labels"]
    np.testing.assert_array_equal(layer.data, painted)  # "skip" left it alone

    segment_widget.confirm_replace = lambda layer: "new layer"
    segment_widget.segment(sync=True)
    np.testing.assert_array_equal(layer.data, painted)
    assert "cells labels [2]" in viewer.layers


def test_stack_current_slice_or_whole_stack(viewer, segment_widget, cells):
    stack = np.stack([cells["image"][:128, :128], cells["image"][128:, 128:], cells["image"][:128, 128:]])
    layer = viewer.add_image(stack, name="stack")
    viewer.layers.selection.active = layer
    assert segment_widget.image_combo.currentText() == "stack"  # plugins get proxies: compare names
    assert segment_widget.stack_combo.isEnabled()
    viewer.dims.set_current_step(0, 1)
    segment_widget.stack_combo.setCurrentText("current slice")
    segment_widget.segment(sync=True)
    labels = viewer.layers["stack labels"].data
    assert labels.shape == stack.shape
    assert labels[1].max() > 0 and labels[0].max() == 0 and labels[2].max() == 0

    segment_widget.stack_combo.setCurrentText("whole stack")
    segment_widget.segment(sync=True)
    assert all(labels[i].max() > 0 for i in range(3))


def test_rgb_image_gets_2d_labels(make_napari_viewer, segmenting_model_file, cells):
    """A colour image (e.g. a bright-field RGB export) is segmented as one gray plane, not as three."""
    viewer = make_napari_viewer()
    gray = cells["image"].astype(np.float32)
    rgb = np.clip((gray - gray.min()) / np.ptp(gray) * 255, 0, 255).astype(np.uint8)[..., None].repeat(3, axis=-1)
    viewer.add_image(rgb, name="rgb cells", rgb=True)
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    assert widget.load_model_file(str(segmenting_model_file))
    widget.segment(sync=True)
    labels = viewer.layers["rgb cells labels"].data
    assert labels.shape == gray.shape
    n_true = gt_cell_count(cells["labels"])
    assert 0.5 * n_true <= int(labels.max()) <= 2 * n_true, (int(labels.max()), n_true)


def test_apply_to_all_open_images_with_probabilities(viewer, segment_widget, cells):
    viewer.add_image(cells["image"][:96, :160], name="small")
    segment_widget.probabilities_check.setChecked(True)
    segment_widget.segment_all(sync=True)
    for name, shape in (("cells", cells["image"].shape), ("small", (96, 160))):
        assert viewer.layers[f"{name} labels"].data.shape == shape
        for kind in ("cell", "border"):
            probability = viewer.layers[f"{name} {kind} probability"].data
            assert probability.shape == shape and 0 <= probability.min() and probability.max() <= 1
    assert len(segment_widget.results) == 2
    assert "in 2 images" in segment_widget.status.text()


def test_cancel_mid_run_keeps_viewer_working(viewer, segment_widget, cells, qtbot):
    stack = np.stack([cells["image"]] * 12)
    viewer.add_image(stack, name="long stack")
    before = [layer.name for layer in viewer.layers]
    messages = []
    segment_widget.segment_all(sync=False)
    job = segment_widget.job
    job.worker.yielded.connect(lambda event: messages.append(event))
    qtbot.waitUntil(lambda: len(messages) >= 1, timeout=60_000)
    viewer.add_points([[5, 5]])  # the viewer keeps working while the worker runs
    segment_widget.cancel_button.click()
    qtbot.waitUntil(lambda: not segment_widget.busy, timeout=60_000)
    assert job.cancelled
    assert "Cancelled" in segment_widget.status.text()
    assert "long stack labels" not in viewer.layers
    assert [layer.name for layer in viewer.layers][:len(before)] == before
    assert segment_widget.segment_button.isEnabled()


def test_widget_follows_active_layer_and_model_defaults(viewer, segment_widget, cells):
    other = viewer.add_image(cells["image"][:64, :64], name="other")
    viewer.layers.selection.active = other
    assert segment_widget.image_combo.currentText() == "other"
    model = segment_widget.registry.load(segment_widget.model_combo.entry())
    # the bundled model removes pieces under a fraction of a cell's area: "auto", the model's own rule
    assert model.postprocessing["min_size_fraction"] > 0
    assert segment_widget.min_size.text() == "auto" and segment_widget._parameters()["min_size"] is None
    segment_widget.min_size.setValue(25)
    assert segment_widget._parameters()["min_size"] == 25
    assert segment_widget.cell_threshold.value() == pytest.approx(model.postprocessing["cell_threshold"])
    devices = [segment_widget.device_combo.itemText(i) for i in range(segment_widget.device_combo.count())]
    assert devices[0] == "auto" and "cpu" in devices


# ---- training ----------------------------------------------------------------------------------

def paint_cells(viewer, train_widget, truth: np.ndarray, n_cells: int):
    """Paint `n_cells` ground-truth cells into a fresh Labels layer, as a user would with the brush."""
    layer = train_widget.add_paint_layer("labels")
    assert layer is not None and str(layer.mode) == "paint" and viewer.layers.selection.active.name == layer.name
    ids = [i for i in np.unique(truth) if i][:n_cells]
    for i in ids:
        layer.data_setitem(np.nonzero(truth == i), int(i))
    return layer


def test_train_on_painted_cells_then_segment_with_the_new_model(viewer, segment_widget, train_widget,
                                                               cells, tmp_path):
    from napari_cell_unet.model import load_model

    layer = paint_cells(viewer, train_widget, cells["labels"], n_cells=8)
    # named for what it holds, not like Segment's output: the next Segment cannot overwrite it
    assert train_widget.labels_combo.currentText() == layer.name == "cells annotations"
    assert train_widget.only_painted.isChecked()  # unpainted cells of an annotations layer are not background
    train_widget.length.setValue(4)
    train_widget.crop_size.setValue(128)
    train_widget.train(sync=True)
    result = train_widget.result
    assert result is not None and not result.cancelled
    assert train_widget.plot.point_count() >= 4 and train_widget.plot.train_loss[1]
    assert train_widget.progress_bar.value() == 1000
    assert "F1 on your held-back cells" in train_widget.status.text()
    kept = result.model.metadata["training"]["kept_change"]
    from napari_cell_unet.training import TrainConfig

    assert kept in (TrainConfig().blend, 1.0) and (f"It keeps {kept:.0%} of what training changed" in train_widget.status.text()) == (kept < 1)
    if result.improved is not True:  # kept the previous model; one click uses the new one
        assert "kept" in train_widget.status.text()
        train_widget.use_new_button.click()
    entry = segment_widget.model_combo.entry()
    assert entry.kind == "session" and entry.model is result.model

    segment_widget.segment(sync=True)
    assert segment_widget.last_model is result.model
    assert viewer.layers["cells labels"].data.shape == cells["image"].shape
    assert np.array_equal(layer.data > 0, np.isin(cells["labels"], np.unique(layer.data)[1:]))

    saved = train_widget.save_model(str(tmp_path / "mine"))
    assert saved.name == "mine.safetensors"
    assert load_model(saved).metadata["training"]["steps"] == 4


def test_corrected_segment_output_trains_around_the_corrections_only(viewer, segment_widget, train_widget,
                                                                     cells, qtbot):
    from napari_cell_unet._widgets._pairs import PairError

    segment_widget.segment(sync=True)
    layer = viewer.layers["cells labels"]
    qtbot.waitUntil(train_widget.only_painted.isChecked, timeout=5_000)  # Segment's output: learn from corrections
    with pytest.raises(PairError, match="still the model's own output"):
        train_widget._training_pairs()
    true_cell = [i for i in np.unique(cells["labels"]) if i][0]
    pixels = np.nonzero(cells["labels"] == true_cell)
    layer.data_setitem(pixels, int(layer.data.max()) + 1)  # one cell corrected with the brush
    (pair,) = train_widget._training_pairs()
    assert pair.region[pixels].all()
    far = np.ones_like(pair.region)
    far[max(0, pixels[0].min() - 80):pixels[0].max() + 80, max(0, pixels[1].min() - 80):pixels[1].max() + 80] = False
    assert not pair.region[far].any()  # the uncorrected rest is left to the starting model
    train_widget.only_painted.setChecked(False)  # "every cell is right": the whole image is taught
    (pair,) = train_widget._training_pairs()
    assert pair.region is None


def test_a_worse_model_is_not_selected_and_revert_is_one_click(viewer, segment_widget, train_widget, cells):
    before = segment_widget.model_combo.entry()
    paint_cells(viewer, train_widget, cells["labels"], n_cells=8)
    train_widget.length.setValue(3)
    train_widget.crop_size.setValue(64)
    train_widget.lr.setValue(0.1)  # wrecks the decoder in three steps
    train_widget.train(sync=True)
    assert train_widget.result.improved is not True  # worse, or too few held-back cells to tell
    assert segment_widget.model_combo.entry() is before
    assert "kept" in train_widget.status.text() and "F1 on your held-back cells" in train_widget.status.text()
    train_widget.use_new_button.click()
    assert segment_widget.model_combo.entry().model is train_widget.result.model
    train_widget.revert_button.click()
    assert segment_widget.model_combo.entry() is before


def test_train_widget_defaults_are_the_api_defaults(train_widget):
    from napari_cell_unet.training import TrainConfig

    config, defaults = train_widget._config(), TrainConfig()
    assert (config.steps, config.lr, config.val_fraction) == (100, defaults.lr, defaults.val_fraction)
    assert config.crop_size is defaults.crop_size is None and config.batch_size is defaults.batch_size
    assert train_widget.crop_size.text() == "auto" and train_widget.lr.text() == "auto"


def test_train_cancel_keeps_best_model(viewer, train_widget, cells, qtbot):
    paint_cells(viewer, train_widget, cells["labels"], n_cells=5)
    train_widget.length.setValue(10_000)
    train_widget.crop_size.setValue(64)
    steps = []
    train_widget.train(sync=False)
    train_widget.job.worker.yielded.connect(lambda e: steps.append(e) if type(e).__name__ == "TrainStep" else None)
    qtbot.waitUntil(lambda: len(steps) >= 2, timeout=60_000)
    train_widget.cancel_button.click()
    qtbot.waitUntil(lambda: not train_widget.busy, timeout=60_000)
    assert train_widget.result is not None and train_widget.result.cancelled
    assert len(steps) < 100
    result = train_widget.result
    assert (train_widget.registry.current.model is result.model) == (result.improved is True)
    assert "cancelled" in train_widget.status.text()


# ---- errors: a notification, the viewer keeps working, no layer lost ---------------------------

def test_error_empty_labels(viewer, train_widget):
    train_widget.add_paint_layer("labels")
    layers_before = list(viewer.layers)
    assert train_widget.train(sync=True) is None
    assert "empty" in last_error(train_widget)
    assert list(viewer.layers) == layers_before


def test_error_mismatched_shapes(viewer, train_widget):
    viewer.add_labels(np.ones((50, 60), np.uint32), name="wrong size")
    train_widget.labels_combo.set_layer(viewer.layers["wrong size"])
    assert train_widget.train(sync=True) is None
    assert "(50, 60)" in last_error(train_widget) and "same size" in last_error(train_widget)


def test_error_non_image_layer(make_napari_viewer, segmenting_model_file):
    from napari_cell_unet._widgets._pairs import LayerPair

    viewer = make_napari_viewer()
    labels = viewer.add_labels(np.ones((32, 32), np.uint32), name="just labels")
    _, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    _, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / fine-tune")
    assert segment.load_model_file(str(segmenting_model_file))
    assert segment.segment(sync=True) is None
    assert "Image layer" in last_error(segment)
    assert not train.add_pair(LayerPair(labels, labels))
    assert "not an Image layer" in last_error(train)
    assert list(viewer.layers) == [labels]


def test_error_missing_or_broken_model_file(viewer, segment_widget, tmp_path):
    selected = segment_widget.model_combo.entry()
    assert not segment_widget.load_model_file(str(tmp_path / "gone.safetensors"))
    assert "no such model file" in last_error(segment_widget)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    assert not segment_widget.load_model_file(str(broken))
    assert "broken.safetensors" in last_error(segment_widget)
    assert segment_widget.model_combo.entry() is selected


def test_error_device_failure(viewer, segment_widget):
    segment_widget.device_combo.addItem("cuda")  # not present on this machine
    segment_widget.device_combo.setCurrentText("cuda")
    segment_widget.segment(sync=True)
    assert "Segmentation failed" in last_error(segment_widget)
    assert [layer.name for layer in viewer.layers] == ["cells"]
    assert segment_widget.segment_button.isEnabled()


def test_error_inside_worker_thread(viewer, segment_widget, qtbot, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("simulated failure inside the worker")
        yield  # a generator, like the real one

    monkeypatch.setattr("napari_cell_unet._widgets.segment_widget.iter_segment_many", explode)
    segment_widget.segment(sync=False)
    qtbot.waitUntil(lambda: not segment_widget.busy, timeout=30_000)
    assert "simulated failure" in last_error(segment_widget)
    assert [layer.name for layer in viewer.layers] == ["cells"]


# ---- napari never aborts from our code (issue 11) ----------------------------------------------

@pytest.fixture
def movie(viewer, segment_widget, cells, monkeypatch):
    """A 5-frame time-lapse, chosen in Segment cells; buttons run in the test's thread."""
    monkeypatch.setenv("NAPARI_CELL_UNET_SYNC", "1")
    frames = np.stack([np.roll(cells["image"], 17 * i, axis=1) for i in range(5)])
    layer = viewer.add_image(frames, name="movie")
    viewer.layers.selection.active = layer
    segment_widget.stack_combo.setCurrentText("current slice")
    return layer


def test_hidden_labels_then_another_frame_then_segment(viewer, segment_widget, movie):
    """The exact sequence that aborted napari: IndexError in Labels.data_setitem on a hidden layer."""
    viewer.dims.set_current_step(0, 1)
    segment_widget.segment_button.click()
    labels = viewer.layers["movie labels"]
    assert labels.data[1].max() > 0 and labels.data[3].max() == 0
    labels.visible = False  # the eye icon
    viewer.dims.set_current_step(0, 3)  # the time slider
    segment_widget.segment_button.click()
    assert [layer.name for layer in viewer.layers] == ["cells", "movie", "movie labels"]
    assert viewer.layers["movie labels"].data[3].max() > 0 and labels.data[1].max() > 0
    assert "cells" in segment_widget.status.text() and "failed" not in segment_widget.status.text()
    labels.undo()  # still one undoable edit
    assert labels.data[3].max() == 0 and labels.data[1].max() > 0
    labels.visible = True
    viewer.dims.set_current_step(0, 1)


@pytest.mark.parametrize("change", ["deleted", "renamed", "reshaped"])
def test_labels_layer_changed_between_two_segment_clicks(viewer, segment_widget, movie, change):
    segment_widget.segment_button.click()
    labels = viewer.layers["movie labels"]
    if change == "deleted":
        viewer.layers.remove(labels)
    elif change == "renamed":
        labels.name = "my movie labels"
    else:
        labels.data = np.zeros((2, 64, 64), np.uint32)
    kept = labels.data.copy()
    viewer.dims.set_current_step(0, 2)
    segment_widget.segment_button.click()
    new = [layer for layer in viewer.layers if layer.name.startswith("movie labels")][-1]
    assert new.data.shape == movie.data.shape and new.data[2].max() > 0
    if change != "deleted":
        np.testing.assert_array_equal(viewer.layers[labels.name].data, kept)  # the user's layer is untouched
    if change == "reshaped":
        assert new.name == "movie labels [2]"
        assert "2×64×64" in segment_widget.status.text() and "new layer" in segment_widget.status.text()
        from napari.utils.notifications import notification_manager

        shown = notification_manager.records[-1].message  # napari's toast elides after ~40 characters
        assert shown.startswith(f"{int(new.data[2].max())} cells found") and len(shown) <= 45, shown


@pytest.mark.parametrize("change", ["deleted", "reshaped", "hidden, other frame"])
def test_labels_layer_changed_while_the_worker_runs(viewer, segment_widget, movie, qtbot, monkeypatch, change):
    viewer.dims.set_current_step(0, 1)
    segment_widget.segment_button.click()
    labels = viewer.layers["movie labels"]
    first = labels.data.copy()
    monkeypatch.setenv("NAPARI_CELL_UNET_SYNC", "0")
    viewer.dims.set_current_step(0, 4)
    job = segment_widget.segment()
    assert job is not None and job.worker is not None
    changed = []

    def change_layer(event):  # runs in the GUI thread right after the widget saw the first progress
        if changed:
            return
        changed.append(change)
        if change == "deleted":
            viewer.layers.remove(labels)
        elif change == "reshaped":
            labels.data = np.zeros((3, 32, 32), np.uint32)
        else:
            labels.visible = False
            viewer.dims.set_current_step(0, 2)

    job.worker.yielded.connect(change_layer)
    qtbot.waitUntil(lambda: not segment_widget.busy, timeout=120_000)
    assert changed and "failed" not in segment_widget.status.text()
    if change == "hidden, other frame":  # the same layer, still the right shape: written there
        assert labels.data[4].max() > 0
        np.testing.assert_array_equal(labels.data[1], first[1])
        return
    new = viewer.layers[[layer.name for layer in viewer.layers if layer.name.startswith("movie labels")][-1]]
    assert new.data.shape == movie.data.shape and new.data[4].max() > 0
    assert "while segmenting" in segment_widget.status.text()
    if change == "reshaped":
        assert labels.data.shape == (3, 32, 32) and labels.data.max() == 0


def test_an_error_while_writing_results_is_a_notification(viewer, segment_widget, movie, monkeypatch):
    from napari_cell_unet._widgets import _layers

    segment_widget.segment_button.click()
    labels = viewer.layers["movie labels"]
    before = labels.data.copy()

    def broken(*args, **kwargs):
        raise IndexError("simulated failure while writing")

    monkeypatch.setattr(_layers, "replace_labels", broken)
    viewer.dims.set_current_step(0, 2)
    segment_widget.segment_button.click()  # would abort napari if it reached Qt's event loop
    assert "simulated failure while writing" in last_error(segment_widget)
    np.testing.assert_array_equal(labels.data, before)
    assert segment_widget.segment_button.isEnabled() and not segment_widget.busy


# ---- fits a laptop screen (issue 11) -------------------------------------------------------------

def test_both_widgets_fit_a_1366x768_laptop(make_napari_viewer, segmenting_model_file, qtbot):
    from qtpy.QtWidgets import QDockWidget

    viewer = make_napari_viewer(show=True)
    segment_dock, segment = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    train_dock, train = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / fine-tune")
    _, correct = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct & measure")
    window = viewer.window._qt_window
    window.showNormal()
    window.resize(1366, 768)
    qtbot.waitUntil(lambda: window.height() <= 768, timeout=5_000)
    for widget in (segment, train, correct):
        assert widget.minimumSizeHint().height() <= 600, widget.minimumSizeHint()
    assert sum(w.minimumSizeHint().height() for w in (segment, train)) < 700  # both fit docked one above the other
    # the train widget opened last is not hidden behind a tab: both docks show
    assert isinstance(segment_dock, QDockWidget) and not window.tabifiedDockWidgets(segment_dock)
    for widget in (segment, train):
        qtbot.waitUntil(lambda w=widget: not w.visibleRegion().isEmpty(), timeout=5_000)
    # everything is reachable by scrolling: the last controls of each widget
    for widget, control in ((train, train.save_button), (train, train.status),
                            (segment, segment.segment_button), (segment, segment.status)):
        widget.scroll_area.ensureWidgetVisible(control)
        qtbot.waitUntil(lambda c=control: not c.visibleRegion().isEmpty(), timeout=5_000)


def effective_tooltip(control, root) -> str:
    """What Qt shows on hover: the control's tooltip, else its nearest parent's inside the widget."""
    while control is not None and control is not root:
        if control.toolTip().strip():
            return control.toolTip()
        control = control.parentWidget()
    return ""


def test_every_control_has_a_tooltip(viewer, segment_widget, train_widget):
    from qtpy.QtWidgets import QAbstractButton, QAbstractSpinBox, QComboBox, QListWidget, QTableWidget

    _, correct_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Correct & measure")
    kinds = (QAbstractSpinBox, QComboBox, QAbstractButton, QListWidget, QTableWidget)
    for widget in (segment_widget, train_widget, correct_widget):
        controls = [c for c in widget.findChildren(kinds)]
        assert len(controls) >= 10
        missing = [c.objectName() or c.text() if hasattr(c, "text") else type(c).__name__
                   for c in controls if not effective_tooltip(c, widget)]
        assert not missing, missing
    # in a biologist's words, saying what a change does
    for control in (segment_widget.cell_threshold, segment_widget.border_threshold, segment_widget.min_size,
                    train_widget.crop_size, train_widget.val_fraction, train_widget.lr, train_widget.length,
                    train_widget.margin):
        text = control.toolTip()
        assert ("Higher" in text or "More" in text or "Larger" in text) and \
               ("Lower" in text or "Fewer" in text or "Smaller" in text), text


def test_train_widget_image_follows_the_active_layer(viewer, segment_widget, train_widget, cells):
    other = viewer.add_image(cells["image"][:64, :64], name="other")
    mine = viewer.add_labels(np.zeros((64, 64), np.uint32), name="other annotations")
    viewer.layers.selection.active = viewer.layers["cells"]
    assert train_widget.image_combo.currentText() == "cells"
    viewer.layers.selection.active = other
    assert train_widget.image_combo.currentText() == segment_widget.image_combo.currentText() == "other"
    assert train_widget.labels_combo.currentText() == "other annotations"  # its pair comes along
    viewer.layers.selection.active = mine  # a labels layer is no image: the image choice stays
    assert train_widget.image_combo.currentText() == "other"


def test_an_error_about_a_layer_goes_when_the_layer_or_the_choice_goes(viewer, segment_widget, train_widget):
    wrong = viewer.add_labels(np.ones((50, 60), np.uint32), name="wrong size")
    train_widget.labels_combo.set_layer(wrong)
    assert train_widget.train(sync=True) is None
    assert "'wrong size'" in last_error(train_widget)
    viewer.layers.remove(wrong)  # the layer the error is about
    assert train_widget.status.text() == ""

    other = viewer.add_labels(np.ones((40, 40), np.uint32), name="other size")
    train_widget.labels_combo.set_layer(other)
    assert train_widget.train(sync=True) is None
    assert "'other size'" in last_error(train_widget)
    viewer.add_points([[1, 1]], name="unrelated")
    viewer.layers.remove("unrelated")  # another layer: the error still applies
    assert "'other size'" in train_widget.status.text()
    train_widget.add_paint_layer("labels")  # a new layer to paint, chosen as Labels
    assert train_widget.status.text() == ""  # the choice changed

    viewer.layers.remove(viewer.layers["cells"])
    assert segment_widget.segment(sync=True) is None and "nothing is selected" in last_error(segment_widget)
    viewer.add_image(np.zeros((32, 32), np.float32), name="new image")
    assert segment_widget.image_combo.currentText() == "new image"
    assert segment_widget.status.text() == ""


def test_bundled_specialists_are_listed_and_segment_their_kind_of_image(make_napari_viewer):
    """The Segment widget lists the bundled nuclei and cells specialists next to the default; choosing the nuclei
    one segments held-out nuclei (the right half of the nuclei sample) into a labels layer."""
    from napari_cell_unet._sample_data import sample_path
    from napari_cell_unet.io import read_image, read_labels
    from napari_cell_unet.metrics import instance_scores
    from napari_cell_unet.model.files import bundled_names

    if "nuclei" not in bundled_names():
        pytest.skip("this installation has no bundled specialists")
    right = (slice(None), slice(256, None))
    image = read_image(sample_path("dsb2018_nuclei.tif"))[right]
    truth = read_labels(sample_path("dsb2018_nuclei_labels.tif"))[right]
    viewer = make_napari_viewer()
    viewer.add_image(image, name="nuclei")
    _, widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    labels = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
    assert labels[0].startswith("bundled default")
    assert any(text.startswith("bundled cells") for text in labels)
    index = next(i for i, text in enumerate(labels) if text.startswith("bundled nuclei"))
    widget.model_combo.setCurrentIndex(index)
    widget.model_combo.activated.emit(index)
    assert widget.registry.current.kind == "bundled"
    assert widget.cell_threshold.value() == pytest.approx(
        widget.registry.load(widget.registry.current).postprocessing["cell_threshold"])
    widget.segment(sync=True)
    assert "nuclei" in widget.last_model.name
    scores = instance_scores(viewer.layers["nuclei labels"].data, truth)
    assert scores["f1_50"] >= 0.8, scores


@pytest.mark.usefixtures("shared_data")
def test_teaching_bright_field_in_the_widgets_teaches_its_cell_size(make_napari_viewer):
    """Bright field, which the bundled models size 5x wrong: paint (here: load) the nuclei of one image, train from
    the bundled default, and the Train widget says the model keeps the cells' typical size; Segment then uses it on
    another bright-field image (issue 9 §4)."""
    from conftest import load_dsb_image
    from test_size_check import BRIGHT_FIELD

    from napari_cell_unet._widgets import train_widget as train_module
    from napari_cell_unet.inference import estimate_diameter

    image, labels = load_dsb_image(BRIGHT_FIELD["train"])
    other, _ = load_dsb_image(BRIGHT_FIELD["new"])
    viewer = make_napari_viewer()
    viewer.add_image(image[256:768, 256:768], name="bf")
    viewer.add_labels(labels[256:768, 256:768].astype(np.int32), name="bf annotations")
    _, segment_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    _, train_widget = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / fine-tune")
    train_widget.image_combo.setCurrentText("bf")
    train_widget.labels_combo.setCurrentText("bf annotations")
    train_widget.start_combo.setCurrentText(train_module.FROM_DEFAULT)
    train_widget.length.setValue(2)
    train_widget.crop_size.setValue(128)
    train_widget.train(sync=True)
    typical = estimate_diameter(labels[256:768, 256:768])
    assert f"typical size of your cells, {typical:.0f} px" in train_widget.status.text()
    if train_widget.use_new_button.isEnabled():
        train_widget.use_new_button.click()
    viewer.add_image(other[:384, :384], name="bf 2")
    viewer.layers.selection.active = viewer.layers["bf 2"]
    segment_widget.segment(sync=True)
    assert segment_widget.last_model is train_widget.result.model
    assert f"typical of the cells this model was trained on, {typical:.0f} px" in segment_widget.status.text()
    assert viewer.layers["bf 2 labels"].data.max() > 10
