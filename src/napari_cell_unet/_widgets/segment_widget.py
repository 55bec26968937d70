"""The "Segment cells" dock widget: segment the chosen image (or every open image) in a worker thread."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import closing
from dataclasses import dataclass
from typing import Any

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QHBoxLayout, QLabel, QMessageBox,
                            QWidget)
from superqt import QCollapsible

from .._progress import Progress
from ..inference.segment import TAUGHT, TYPICAL, SegmentedImage, iter_segment_many
from ..model import OUTPUT_CLASSES
from . import _features, _layers, _maps
from ._common import (ModelComboBox, button, clear_stale_errors, device_names, double_spin, error_message, notify_error,
                      notify_info, scrolling_content, set_tooltips, spin)
from ._jobs import Job, run_sync_by_default
from ._registry import registry_for

AUTO_MIN_SIZE = -1  # the spin box's "auto": the model's rule (min_size=None)

CURRENT_SLICE, WHOLE_STACK = "current slice", "whole stack"
REPLACE, NEW_LAYER, SKIP = "replace", "new layer", "skip"


@dataclass
class SegmentTask:
    layer: Image
    plane: tuple[int, ...]  # indices on the leading axes; () = the whole layer
    target: Labels | None   # the labels layer to update in place, None = add a new one


@dataclass
class TaskDone:
    task: SegmentTask
    result: object  # SegmentationResult
    features: dict | None = None  # per-cell measurements (napari_cell_unet.measure), made in the worker


def overall_progress(event: Progress, task: int, tasks: int, name: str) -> Progress:
    """One task's progress on the scale of all of them (1000 steps each)."""
    return Progress(task * 1000 + round(1000 * event.fraction), 1000 * tasks, f"{name}: {event.message}".rstrip(": "))


def ask_replace(layer: Labels) -> str:
    """Ask before overwriting a labels layer the user has edited since we wrote it."""
    box = QMessageBox(QMessageBox.Icon.Question, "Replace edited labels?",
                      f"'{layer.name}' was edited since it was segmented.\n"
                      "Replace its contents (Ctrl+Z in the layer undoes this), or keep it and add a new layer?")
    replace = box.addButton("Replace", QMessageBox.ButtonRole.DestructiveRole)
    new = box.addButton("Keep it, add a new layer", QMessageBox.ButtonRole.AcceptRole)
    box.addButton("Skip this image", QMessageBox.ButtonRole.RejectRole)
    box.setDefaultButton(new)
    box.exec()
    return {replace: REPLACE, new: NEW_LAYER}.get(box.clickedButton(), SKIP)


class SegmentWidget(QWidget):
    """Segment the chosen image layer (or all of them) with the chosen model."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self.confirm_replace: Callable[[Labels], str] = ask_replace  # tests replace this
        self.job: Job | None = None
        self.results: list[TaskDone] = []
        self.notes: list[str] = []  # what the last run did that the user did not ask for (e.g. a new layer)
        self.last_model = None  # the model of the last run
        self._build()
        self.registry.changed.connect(self._on_model_changed)
        self._update_stack_choice()
        self._on_model_changed()

    # ---- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        self.image_combo = _layers.LayerComboBox(self.viewer, (Image,), follow_active=True)
        self.image_combo.layer_changed.connect(self._update_stack_choice)
        self.model_combo = ModelComboBox(self.registry, self._show_error)
        self.device_combo = QComboBox()
        self.device_combo.addItems(device_names())
        self.cell_threshold = double_spin(0.05, 0.95, 0.5, 0.05)
        self.border_threshold = double_spin(0.05, 0.95, 0.5, 0.05)
        self.min_size = spin(AUTO_MIN_SIZE, 100_000, 30, 5, " px")
        self.min_size.setSpecialValueText("auto")
        self.diameter = double_spin(0.0, 1000.0, 0.0, 5.0)
        self.diameter.setSpecialValueText("auto")
        self.diameter.setSuffix(" px")
        self.diameter.setToolTip("Typical cell diameter in this image, in pixels. The image is rescaled so that its "
                                 "cells have the size the model was trained on. 'auto' measures it from the image "
                                 "(the status line shows the estimate); type a number if cells come out split "
                                 "(number too small) or merged (number too large).")
        self.stack_combo = QComboBox()
        self.stack_combo.addItems([CURRENT_SLICE, WHOLE_STACK])
        self.probabilities_check = QCheckBox("add probability layers (cell, border)")
        self.tile_size = spin(0, 8192, 0, 64)
        self.tile_size.setSpecialValueText("auto")
        self.tta_check = QCheckBox("test-time flips (4x slower)")

        set_tooltips({
            self.image_combo: "The image to segment. Follows the layer you select in the layer list.",
            self.model_combo: "The network that finds the cells: the bundled default (phase contrast and fluorescent "
                              "nuclei), a bundled specialist (cells: phase contrast; nuclei: fluorescent and stained "
                              "nuclei; each more accurate on its kind of image), a model you trained in Train / "
                              "fine-tune, or a model file.",
            self.device_combo: "Where the computation runs. 'auto' uses a graphics card (GPU) when there is one, "
                               "else the processor (CPU), which is slower but always works.",
            self.cell_threshold: "How sure the model must be that a pixel belongs to a cell. Higher: cells come out "
                                 "smaller and faint cells are missed. Lower: cells come out larger and background "
                                 "specks can become cells. Set from the model's tuning when you choose a model.",
            self.border_threshold: "How sure the model must be that a pixel is a cell edge before it separates two "
                                   "cells. Lower: touching cells are split apart more readily, but a cell can be cut "
                                   "in two. Higher: touching cells merge into one object.",
            self.min_size: "Objects smaller than this area (in pixels) are removed. Higher: fewer specks and "
                           "debris, but small cells disappear too. Lower: small cells are kept, and so is noise. "
                           "'auto' (the model's choice) removes pieces under a fraction of a typical cell's area "
                           "at the cell diameter used, so it follows the cells' size.",
            self.stack_combo: "For a stack or time-lapse: segment only the plane shown now (fast, to check the "
                              "settings), or every plane.",
            self.probabilities_check: "Also add the model's raw maps (how likely each pixel is cell or edge, 0 to 1) "
                                      "as image layers: useful to see why cells were missed or merged.",
            self.tile_size: "Large images are processed in square pieces of this many pixels. 'auto' picks a size "
                            "for your device; a smaller number uses less memory but takes longer.",
            self.tta_check: "Also look at the image mirrored three ways and average the four answers: a little more "
                            "accurate (about +0.03 F1 on the validation images), four times the computing time.",
        })

        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Model", self.model_combo)
        form.addRow("Device", self.device_combo)
        form.addRow("Cell threshold", self.cell_threshold)
        form.addRow("Border threshold", self.border_threshold)
        form.addRow("Minimum size", self.min_size)
        form.addRow("Cell diameter", self.diameter)
        form.addRow("Stack", self.stack_combo)
        form.addRow(self.probabilities_check)
        advanced = QCollapsible("Advanced")
        advanced_body = QWidget()
        advanced_form = QFormLayout(advanced_body)
        advanced_form.addRow("Tile size", self.tile_size)
        advanced_form.addRow(self.tta_check)
        advanced.addWidget(advanced_body)

        self.segment_button = button("Segment", lambda: self.segment(),
                                     "Find the cells in the chosen image; they appear as a labels layer '<image> "
                                     "labels' (running again replaces it; Ctrl+Z in that layer undoes).")
        self.all_button = button("Apply to all open images", lambda: self.segment_all(),
                                 "Segment every open image, whole stacks, each into its own labels layer.")
        self.cancel_button = button("Cancel", self.cancel,
                                    "Stop after the current image; images already finished keep their labels.",
                                    enabled=False)
        advanced.setToolTip("Settings you rarely need to change.")
        buttons = QHBoxLayout()
        for each in (self.segment_button, self.all_button, self.cancel_button):
            buttons.addWidget(each)
        self.status = QLabel("")
        self.status.setWordWrap(True)
        clear_stale_errors(self.status, self.viewer, [self.image_combo])

        layout = scrolling_content(self)
        layout.addLayout(form)
        layout.addWidget(advanced)
        layout.addLayout(buttons)
        layout.addWidget(self.status)
        layout.addStretch(1)

    # ---- reactions ----------------------------------------------------------------------
    def _update_stack_choice(self, *_) -> None:
        layer = self.image_combo.layer()
        self.stack_combo.setEnabled(layer is not None and _layers.leading_axes(layer) > 0)

    def _on_model_changed(self) -> None:
        entry = self.model_combo.entry()
        if entry is None:
            return
        try:
            model = self.registry.load(entry)
        except Exception as exc:
            self._show_error(error_message(exc))
            return
        post = model.postprocessing
        self.cell_threshold.setValue(float(post["cell_threshold"]))
        self.border_threshold.setValue(float(post["border_threshold"]))
        self.min_size.setValue(AUTO_MIN_SIZE if post["min_size_fraction"] > 0 else int(post["min_size"]))

    def _show_error(self, text: str) -> None:
        notify_error(self.status, text)

    # ---- public API ---------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def load_model_file(self, path: str) -> bool:
        """Load a model file, add it to the recent files and select it; False (and a notification) on error."""
        return self.model_combo.load_file(path)

    def segment(self, sync: bool | None = None) -> Job | None:
        """Segment the chosen image layer (current slice or whole stack)."""
        layer = self.image_combo.layer()
        if not isinstance(layer, Image):
            name = "nothing" if layer is None else f"'{layer.name}' ({type(layer).__name__})"
            self._show_error(f"Choose an Image layer to segment; {name} is selected.")
            return None
        whole = _layers.leading_axes(layer) == 0 or self.stack_combo.currentText() == WHOLE_STACK
        plane = () if whole else _layers.current_plane_index(self.viewer, layer)
        return self._start([(layer, plane)], sync)

    def segment_all(self, sync: bool | None = None) -> Job | None:
        """Segment every Image layer (whole stacks), each into its own labels layer, as one job."""
        layers = _layers.images(self.viewer)
        if not layers:
            self._show_error("There is no Image layer to segment.")
            return None
        return self._start([(layer, ()) for layer in layers], sync)

    def cancel(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.status.setText("Cancelling...")

    # ---- running ------------------------------------------------------------------------
    def _start(self, requests: list[tuple[Image, tuple[int, ...]]], sync: bool | None) -> Job | None:
        if self.busy:
            self._show_error("A segmentation is already running.")
            return None
        entry = self.model_combo.entry()
        if entry is None:
            self._show_error("No model: load a model file or train one first.")
            return None
        try:
            model = self.registry.load(entry)
        except Exception as exc:
            self._show_error(error_message(exc))
            return None
        self.notes = []
        tasks = [task for task in (self._plan(layer, plane) for layer, plane in requests) if task is not None]
        if not tasks:
            return None
        self.results = []
        self.last_model = model
        description = f"Segmenting {tasks[0].layer.name}" if len(tasks) == 1 else f"Segmenting {len(tasks)} images"
        self.job = Job(lambda should_stop: self._run(tasks, model, self._parameters()), description, on_event=self._on_event,
                       on_done=self._on_done, on_error=self._on_error)
        self._set_running(True)
        self.status.setStyleSheet("")
        self.status.setText(description + "...")
        self.job.start(sync=run_sync_by_default() if sync is None else sync)
        return self.job

    def _plan(self, layer: Image, plane: tuple[int, ...]) -> SegmentTask | None:
        """Decide where the labels go, asking first when that would overwrite the user's edits."""
        target = self.viewer.layers[labels_name(layer)] if labels_name(layer) in self.viewer.layers else None
        if target is None:
            return SegmentTask(layer, plane, None)
        if not isinstance(target, Labels) or target.data.shape != _layers.spatial_shape(layer):
            what = "is not a Labels layer" if not isinstance(target, Labels) else (
                f"is {shape_text(target.data.shape)}, the image {shape_text(_layers.spatial_shape(layer))}")
            self.notes.append(f"'{target.name}' {what}: left it alone, the labels went to a new layer.")
            return SegmentTask(layer, plane, None)
        if not _layers.edited_since_written(target):
            return SegmentTask(layer, plane, target)
        choice = self.confirm_replace(target)
        if choice == SKIP:
            return None
        return SegmentTask(layer, plane, target if choice == REPLACE else None)

    def _parameters(self) -> dict:
        params = {"device": self.device_combo.currentText(),
                  "cell_threshold": self.cell_threshold.value(),
                  "border_threshold": self.border_threshold.value(),
                  "min_size": None if self.min_size.value() == AUTO_MIN_SIZE else self.min_size.value(),
                  "return_probabilities": self.probabilities_check.isChecked(),
                  "tta": self.tta_check.isChecked()}
        if self.tile_size.value() > 0:
            params["tile_size"] = self.tile_size.value()
        params["diameter"] = self.diameter.value() if self.diameter.value() > 0 else "auto"
        return params

    def _run(self, tasks: list[SegmentTask], model, params: dict) -> Iterator:
        """Runs in the worker thread: one Progress scale over all tasks, a TaskDone per task. The tasks go through
        one run of the core (`iter_segment_many`), so an image's last instances overlap the next one's prediction."""
        images: dict[int, Any] = {}

        def pixels():
            for index, task in enumerate(tasks):
                images[index] = _layers.pixels(task.layer, task.plane)
                yield images[index]

        keep = [params["return_probabilities"] or keeps_maps(task) for task in tasks]
        steps = iter_segment_many(pixels(), model, rgb=[bool(task.layer.rgb) for task in tasks],
                                  return_probabilities=keep, **{k: v for k, v in params.items()
                                                                if k != "return_probabilities"})
        with closing(steps):  # cancelled: the core's network copy and threads are freed at once
            yield from self._task_events(steps, tasks, images)

    @staticmethod
    def _task_events(steps: Iterator, tasks: list[SegmentTask], images: dict[int, Any]) -> Iterator:
        for event in steps:
            if isinstance(event, SegmentedImage):
                task = tasks[event.index]
                yield TaskDone(task, event.result, measure_result(task, images.pop(event.index), event.result))
            else:
                yield overall_progress(event.progress, event.index, len(tasks), tasks[event.index].layer.name)

    def _on_event(self, event) -> None:
        if isinstance(event, TaskDone):
            self._write_result(event)
            self.results.append(event)

    def _write_result(self, done: TaskDone) -> None:
        task, result = done.task, done.result
        labels = np.asarray(result.labels)
        target = self._still_writable(task)
        if target is not None:
            _layers.replace_labels(target, labels, task.plane)
        else:
            target = self._add_labels_layer(task, labels)
            if task.target is not None:
                self.notes.append(f"'{task.target.name}' was removed or changed while segmenting: "
                                  f"the labels went to a new layer '{target.name}'.")
        _maps.forget_corrections(target, task.plane)
        _maps.keep_segmented(target, task.plane, labels)
        if result.probabilities is not None:
            # the Correct widget's tools grow and split cells on these maps
            _maps.keep_maps(target, task.plane, result.probabilities, task.layer.name, result.diameter,
                            (self.cell_threshold.value(), self.border_threshold.value()))
            if self.probabilities_check.isChecked():
                self._write_probabilities(task, np.asarray(result.probabilities))
        if done.features is not None:
            _features.set_features(target, done.features, task.plane)
        target.metadata[_layers.METADATA_KEY].update(
            n_cells=int(result.n_cells), device=str(result.device), cell_diameter=result.diameter,
            cell_diameter_estimated=result.diameter_estimate is not None)

    def _still_writable(self, task: SegmentTask) -> Labels | None:
        """The planned labels layer if it is still in the viewer (the same layer, under any name) with the
        image's shape; None when it was removed or re-shaped meanwhile (then a new layer is added)."""
        target = _layers.live_layer(self.viewer, task.target)
        if not isinstance(target, Labels) or target.data.shape != _layers.spatial_shape(task.layer):
            return None
        return target

    def _add_labels_layer(self, task: SegmentTask, labels: np.ndarray) -> Labels:
        shape = _layers.spatial_shape(task.layer)
        data = labels if not task.plane else np.zeros(shape, dtype=labels.dtype)
        if task.plane:
            data[task.plane] = labels
        layer = self.viewer.add_labels(data, name=_layers.unique_name(self.viewer, labels_name(task.layer)),
                                       **_layers.copy_geometry(task.layer, len(shape)))
        _layers.mark_written(layer)
        return layer

    def _write_probabilities(self, task: SegmentTask, probabilities: np.ndarray) -> None:
        shape = _layers.spatial_shape(task.layer)
        for index, name in enumerate(OUTPUT_CLASSES):
            plane_data = probabilities[..., index, :, :]
            layer_name = f"{task.layer.name} {name} probability"
            existing = self.viewer.layers[layer_name] if layer_name in self.viewer.layers else None
            if isinstance(existing, Image) and existing.data.shape == shape:
                data = existing.data if task.plane else plane_data
            else:
                existing = None
                data = plane_data if not task.plane else np.zeros(shape, dtype=np.float32)
            if task.plane:
                data[task.plane] = plane_data
            if existing is not None:
                existing.data = data
                existing.refresh()
                continue
            self.viewer.add_image(data, name=layer_name, colormap="magenta" if name == "border" else "green",
                                  blending="additive", opacity=0.5, contrast_limits=(0.0, 1.0), visible=True,
                                  **_layers.copy_geometry(task.layer, len(shape)))

    def _on_done(self, cancelled: bool) -> None:
        self._set_running(False)
        n_cells = sum(int(done.result.n_cells) for done in self.results)
        seconds = sum(float(done.result.seconds) for done in self.results)
        devices = sorted({str(done.result.device) for done in self.results}) or ["-"]
        if cancelled:
            notify_info(self.status, f"Cancelled after {len(self.results)} image(s); "
                                     "finished layers were kept, nothing else was changed.")
            return
        where = "" if len(self.results) == 1 else f" in {len(self.results)} images"
        summary = (f"{n_cells} cells{where} in {seconds:.1f} s on {', '.join(devices)}; "
                   f"{diameter_text(self.results)}.")
        if n_cells == 0 and self.results:
            summary = (f"Found no cells ({seconds:.1f} s; {diameter_text(self.results)}). This model was trained on "
                       "phase contrast and fluorescent nuclei: try another Cell diameter, or paint a few cells "
                       "and fine-tune it with Train / fine-tune (Plugins menu).")
        short = f"{n_cells} cells found in {seconds:.1f} s" + (" (see Segment cells)" if self.notes else ".")
        notify_info(self.status, " ".join([summary, *self.notes]), short=short)

    def _on_error(self, exc: BaseException) -> None:
        self._set_running(False)
        self._show_error(f"Segmentation failed: {error_message(exc)}")

    def _set_running(self, running: bool) -> None:
        self.segment_button.setEnabled(not running)
        self.all_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)


def diameter_text(results: list[TaskDone]) -> str:
    """'cell diameter: auto, 27 px' (or 'auto, 25-31 px' over several images, '40 px' when typed in; 'as the
    cells you trained on, 42 px' for an image the model was fine-tuned on; 'typical of the cells this model was trained
    on, 16 px' where the estimate failed on the model's training images and again here)."""
    diameters = [done.result.diameter for done in results if done.result.diameter is not None]
    estimates = [done.result.diameter_estimate for done in results if done.result.diameter_estimate is not None]
    auto = bool(estimates)
    taught = auto and all(estimate.source == TAUGHT for estimate in estimates)
    typical = auto and all(estimate.source == TYPICAL for estimate in estimates)
    prefix = ("cell diameter: as the cells you trained on, " if taught else
              "cell diameter: typical of the cells this model was trained on, " if typical else
              "cell diameter: auto, " if auto else "cell diameter: ")
    if not diameters:
        return prefix + ("no cells to measure, model's own size" if auto else "model's own size")
    low, high = min(diameters), max(diameters)
    return prefix + (f"{low:.0f} px" if round(low) == round(high) else f"{low:.0f}-{high:.0f} px")


def keeps_maps(task: SegmentTask) -> bool:
    """Whether the task's probability maps are small enough to keep with its labels (see `_maps`)."""
    shape = _layers.spatial_shape(task.layer)
    return int(np.prod(shape[len(task.plane):])) <= _maps.MAX_KEPT_PIXELS


def measure_result(task: SegmentTask, image: np.ndarray, result) -> dict | None:
    """The per-cell table of a task's labels (None if measuring fails: segmenting must not)."""
    try:
        return _features.measure_planes(np.asarray(result.labels), image, _features.layer_scale(task.layer),
                                        task.layer.name, _layers.spatial_shape(task.layer), task.plane)
    except Exception as exc:  # noqa: BLE001 - a measurement problem must not lose the segmentation
        warnings.warn(f"measuring the cells of '{task.layer.name}' failed: {exc}", stacklevel=2)
        return None


def shape_text(shape) -> str:
    return "\u00d7".join(str(int(n)) for n in shape)


def labels_name(layer) -> str:
    return f"{layer.name} labels"
