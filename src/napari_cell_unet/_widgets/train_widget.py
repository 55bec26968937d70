"""The "Train / fine-tune" dock widget: paint corrections, train in a worker, use the model at once."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFileDialog, QFormLayout, QHBoxLayout, QLabel, QListWidget,
                            QProgressBar, QPushButton, QWidget)

from .._progress import Progress
from ..inference.taught_diameters import METADATA_KEY as TAUGHT_SIZES
from ..inference.taught_diameters import typical_diameter
from ..model import save_model
from ..training import TrainConfig, TrainingPair, TrainResult, TrainStep, Validation, iter_train
from . import _layers, _maps
from ._common import (button, clear_stale_errors, device_names, double_spin, error_message, notify_error, notify_info,
                      scrolling_content, set_tooltips, spin)
from ._jobs import Job, run_sync_by_default
from ._pairs import LayerPair, check_pair, training_pairs
from ._plot import LossPlot
from ._registry import ModelEntry, registry_for

FROM_CURRENT, FROM_DEFAULT, FROM_SCRATCH = "model selected in Segment cells", "bundled default", "scratch"
STEPS, EPOCHS = "steps", "epochs"
AUTO = "auto"
# painting layers are named for what they hold, never like the Segment widget's output ('<image> labels')
PAINT_SUFFIX = {"labels": "annotations", "borders": "borders"}


class TrainWidget(QWidget):
    """Fine-tune (or train) a model on painted labels; the result becomes the segment widget's model."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.registry = registry_for(napari_viewer)
        self.job: Job | None = None
        self.result = None  # the last TrainResult
        self.previous_entry = None  # the model selected before the last training (for Revert)
        self.new_entry = None  # the last trained model's registry entry
        self._started = 0.0
        self.pairs: list[LayerPair] = []
        self.choose_save_path = self._ask_save_path  # tests replace this
        self._build()
        self._pair_labels_with_image()

    # ---- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        layout = scrolling_content(self)
        layout.addLayout(self._pair_form())
        layout.addLayout(self._settings_form())
        self.train_button = button("Train", lambda: self.train(),
                                   "Improve the model on your painted cells. The result is used in Segment cells "
                                   "only if it scores better on the held-back cells.")
        self.cancel_button = button("Cancel (keep best model)", self.cancel,
                                    "Stop training; the best model so far is kept.", enabled=False)
        layout.addLayout(_row(self.train_button, self.cancel_button))
        self.progress_bar = QProgressBar()
        self.progress_bar.setRange(0, 1000)
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p%")
        layout.addWidget(self.progress_bar)
        self.plot = LossPlot(self)
        layout.addWidget(self.plot, stretch=1)
        self.save_button = button("Save model...", lambda: self.save_model(),
                                  "Save the trained model as a .safetensors file, to load it later or share it.",
                                  enabled=False)
        self.revert_button = button("Revert to previous model", self.revert,
                                    "Go back to the model that was selected before this training.", enabled=False)
        self.use_new_button = button("Use the new model anyway", self.use_new_model,
                                     "Use the new model in Segment cells even though it did not score better.",
                                     enabled=False)
        self.progress_bar.setToolTip("Training progress and the estimated time left.")
        layout.addLayout(_row(self.revert_button, self.use_new_button))
        layout.addWidget(self.save_button)
        self.status = QLabel("Paint or correct labels for an image, then Train.")
        self.status.setWordWrap(True)
        layout.addWidget(self.status)
        clear_stale_errors(self.status, self.viewer, [self.image_combo, self.labels_combo, self.borders_combo])

    def _pair_form(self) -> QFormLayout:
        self.image_combo = _layers.LayerComboBox(self.viewer, (Image,), follow_active=True)
        self.image_combo.layer_changed.connect(self._pair_labels_with_image)
        self.labels_combo = _layers.LayerComboBox(self.viewer, (Labels,))
        # deferred: Segment adds its layer first and records its labels right after
        self.labels_combo.layer_changed.connect(lambda: QTimer.singleShot(0, self._tick_only_painted_for_segment_output))
        self.borders_combo = _layers.LayerComboBox(self.viewer, (Labels,), allow_none=True)
        add_labels = QPushButton("Add empty Labels layer")
        add_labels.clicked.connect(lambda: self.add_paint_layer("labels"))
        add_borders = QPushButton("Add empty Border layer")
        add_borders.clicked.connect(lambda: self.add_paint_layer("borders"))
        add_pair = QPushButton("Add pair to list")
        add_pair.clicked.connect(lambda: self.add_pair())
        remove_pair = QPushButton("Remove from list")
        remove_pair.clicked.connect(self._remove_selected_pair)
        self.image_combo.setToolTip("The image to learn from. Follows the layer you select in the layer list.")
        self.labels_combo.setToolTip("The cells you painted or corrected for that image, one number per cell "
                                     "('<image> annotations', or Segment's '<image> labels' after you fixed it).")
        self.borders_combo.setToolTip("Optional: painted cell edges. Leave at (none): the edges are worked out "
                                      "from the painted cells.")
        add_labels.setToolTip("Add an empty layer over the image, ready to paint cells with the brush "
                              "(a new number for each cell).")
        add_borders.setToolTip("Add an empty layer to paint cell edges by hand (rarely needed).")
        add_pair.setToolTip("Keep this image and its labels in the list, to train on several images at once.")
        remove_pair.setToolTip("Take the selected pair out of the list.")
        self.pair_list = QListWidget()
        self.pair_list.setMaximumHeight(70)
        self.pair_list.setToolTip("Pairs to train on; when empty, the pair chosen above is used.")
        form = QFormLayout()
        form.addRow("Image", self.image_combo)
        form.addRow("Labels", self.labels_combo)
        form.addRow("Borders (optional)", self.borders_combo)
        form.addRow(_row(add_labels, add_borders))
        form.addRow(_row(add_pair, remove_pair))
        form.addRow(self.pair_list)
        return form

    def _settings_form(self) -> QFormLayout:
        self.start_combo = QComboBox()
        self.start_combo.addItems([FROM_CURRENT, FROM_DEFAULT, FROM_SCRATCH])
        self.length = spin(1, 1_000_000, 100, 10)
        self.length_unit = QComboBox()
        self.length_unit.addItems([STEPS, EPOCHS])
        defaults = TrainConfig()  # the widget's defaults are the API's and the CLI's
        self.lr = double_spin(0.0, 0.1, defaults.lr or 0.0, 0.0001, decimals=5)
        self.lr.setSpecialValueText(AUTO)  # 0 = the API's default: 1e-4 fine-tuning, 1e-3 from scratch
        self.crop_size = spin(0, 1024, 0, 32, " px")
        self.crop_size.setSpecialValueText(AUTO)  # 0 = the API's default for the device
        self.val_fraction = double_spin(0.0, 0.5, defaults.val_fraction, 0.05)
        self.only_painted = QCheckBox("train only where painted or corrected")
        self.only_painted.setToolTip("Learn only around the cells you painted, or, in Segment's output, the cells "
                                     "you corrected; elsewhere the model is kept as it was, so unpainted cells are "
                                     "not taught as background and the model's uncorrected mistakes are not "
                                     "taught at all. Untick when every cell in the image is right.")
        self.margin = spin(0, 256, 16, 4, " px")
        self.device_combo = QComboBox()
        self.device_combo.addItems(device_names())
        set_tooltips({
            self.start_combo: "Which model to improve: the one selected in Segment cells (usual), the bundled "
                              "default, or a new empty model from scratch (needs many more painted cells and steps).",
            self.length: "How long to train. More: the model learns your cells better but takes longer (about 0.5 s "
                         "per step on a CPU) and can start to memorise your few cells. Fewer: quicker, smaller change.",
            self.length_unit: "Count the length in steps (one small batch of image pieces each) or in epochs "
                              "(about one pass over all painted images each).",
            self.lr: "How big each learning step is. 'auto' suits most cases (0.0001 when fine-tuning, 0.001 "
                     "from scratch). Higher: learns faster but can wreck what the model knew. Lower: safer, slower.",
            self.crop_size: "Side of the image pieces the model learns from. Larger: more context around each cell "
                            "but slower steps and more memory. Smaller: faster steps. 'auto': 128 px on a CPU "
                            "(about 0.5 s per step), 256 px on a GPU.",
            self.val_fraction: "Share of your painted cells held back to check that training helps (the 'before "
                               "→ after' score). Higher: a more reliable check but fewer cells to learn from. "
                               "Lower: more cells to learn from, a less reliable check. 0: no check, and the new "
                               "model is used without comparison.",
            self.margin: "With 'train only where painted or corrected': how far around your painted cells the model also "
                         "learns background. Larger: more background learnt, but unpainted cells nearby risk "
                         "being taught as background. Smaller: safer when neighbours are unpainted.",
            self.device_combo: "Where training runs. 'auto' uses a graphics card (GPU) when there is one, else "
                               "the processor (CPU), which is much slower.",
        })
        form = QFormLayout()
        form.addRow("Start from", self.start_combo)
        form.addRow("Length", _row(self.length, self.length_unit))
        form.addRow("Learning rate", self.lr)
        form.addRow("Crop size", self.crop_size)
        form.addRow("Validation fraction", self.val_fraction)
        form.addRow(self.only_painted)
        form.addRow("Margin around them", self.margin)
        form.addRow("Device", self.device_combo)
        return form

    # ---- pairs ----------------------------------------------------------------------------
    def _pair_labels_with_image(self, *_) -> None:
        """Preselect '<image> annotations' (else the Segment output '<image> labels') and '<image> borders'."""
        image = self.image_combo.layer()
        if image is None:
            return
        for combo, suffixes in ((self.labels_combo, ("annotations", "labels")), (self.borders_combo, ("borders",))):
            for suffix in suffixes:
                name = f"{image.name} {suffix}"
                if name in self.viewer.layers and isinstance(self.viewer.layers[name], Labels):
                    combo.set_layer(self.viewer.layers[name])
                    break

    def _tick_only_painted_for_segment_output(self) -> None:
        """Segment's output, corrected: learn from the corrections, not from the model's own uncorrected cells."""
        try:
            layer = self.labels_combo.layer()
            if layer is not None and _maps.has_segmentation(layer):
                self.only_painted.setChecked(True)
        except RuntimeError:  # the widget was closed before the deferred call
            pass

    def current_pair(self) -> LayerPair:
        return LayerPair(self.image_combo.layer(), self.labels_combo.layer(), self.borders_combo.layer())

    def add_pair(self, pair: LayerPair | None = None) -> bool:
        pair = pair or self.current_pair()
        try:
            check_pair(pair)
        except ValueError as exc:
            self._show_error(error_message(exc))
            return False
        self.pairs.append(pair)
        self.pair_list.addItem(pair.describe())
        return True

    def _remove_selected_pair(self) -> None:
        row = self.pair_list.currentRow()
        if 0 <= row < len(self.pairs):
            self.pairs.pop(row)
            self.pair_list.takeItem(row)

    def add_paint_layer(self, kind: str) -> Labels | None:
        """Add an empty annotations ('labels') or borders ('borders') layer over the chosen image, ready to paint.

        A new annotations layer also ticks "train only where painted": cells left unpainted there are
        not background."""
        image = self.image_combo.layer()
        if not isinstance(image, Image):
            self._show_error("Choose an Image layer first: the new layer takes its size.")
            return None
        shape = _layers.spatial_shape(image)
        layer = self.viewer.add_labels(np.zeros(shape, dtype=np.uint32 if kind == "labels" else np.uint8),
                                       name=_layers.unique_name(self.viewer, f"{image.name} {PAINT_SUFFIX[kind]}"),
                                       **_layers.copy_geometry(image, len(shape)))
        layer.brush_size = 10 if kind == "labels" else 2
        layer.selected_label = 1
        layer.mode = "paint"
        (self.labels_combo if kind == "labels" else self.borders_combo).set_layer(layer)
        if kind == "labels":
            self.only_painted.setChecked(True)
        self.viewer.layers.selection.active = layer
        return layer

    # ---- training -------------------------------------------------------------------------
    @property
    def busy(self) -> bool:
        return self.job is not None and self.job.running

    def train(self, sync: bool | None = None) -> Job | None:
        """Train on the listed pairs (or the chosen one) in a worker; False-y on a user error."""
        if self.busy:
            self._show_error("Training is already running.")
            return None
        try:
            pairs = self._training_pairs()
            start = self._start_model()
            config = self._config()
        except Exception as exc:
            self._show_error(error_message(exc))
            return None
        self.result = None
        self.previous_entry = self.registry.current_or_first()
        self.new_entry = None
        self.revert_button.setEnabled(False)
        self.use_new_button.setEnabled(False)
        self._started = time.perf_counter()
        self.plot.clear()
        self.progress_bar.setValue(0)
        self.progress_bar.setFormat("%p%")
        self.job = Job(lambda should_stop: iter_train(pairs, start, config, should_stop=should_stop),
                       "Training", on_event=self._on_event, on_done=self._on_done, on_error=self._on_error,
                       cooperative=True, on_result=self._take_result)
        self._set_running(True)
        self.status.setStyleSheet("")
        self.status.setText(f"Training on {len(pairs)} image(s)...")
        self.job.start(sync=run_sync_by_default() if sync is None else sync)
        return self.job

    def cancel(self) -> None:
        if self.job is not None and self.job.running:
            self.job.cancel()
            self.status.setText("Stopping after this step; the best model so far is kept...")

    def _training_pairs(self) -> list[TrainingPair]:
        chosen = self.pairs or [self.current_pair()]
        return training_pairs(chosen, self.only_painted.isChecked(), self.margin.value())

    def _start_model(self):
        choice = self.start_combo.currentText()
        if choice == FROM_SCRATCH:
            return "scratch"
        if choice == FROM_DEFAULT:
            if self.registry.default_entry() is None:
                raise ValueError("the bundled default model is missing from this installation")
            return "default"
        entry = self.registry.current_or_first()
        if entry is None:
            raise ValueError("no model is selected in Segment cells: load one, or start from scratch")
        return self.registry.load(entry)

    def _config(self) -> TrainConfig:
        length = {self.length_unit.currentText(): self.length.value()}
        return TrainConfig(
            **length, lr=self.lr.value() or None, crop_size=self.crop_size.value() or None,
            val_fraction=self.val_fraction.value(), device=self.device_combo.currentText())

    def _on_event(self, event) -> None:
        if isinstance(event, TrainStep):
            self.plot.add_train_step(event.step, event.loss)
            self.progress_bar.setValue(int(1000 * event.step / max(1, event.total_steps)))
            self.progress_bar.setFormat(f"%p%  {eta_text(time.perf_counter() - self._started, event.step, event.total_steps)}")
        elif isinstance(event, Validation):
            self.plot.add_validation(event.step, event.val_loss, event.dice, event.f1)
            self.status.setText(f"step {event.step}: val loss {event.val_loss:.3f}, Dice {event.dice:.3f}, "
                                f"F1@0.5 {event.f1:.3f}{' (best)' if event.is_best else ''}")
        elif isinstance(event, Progress) and event.message:
            self.status.setText(event.message)

    def _take_result(self, result: TrainResult) -> None:
        self.result = result

    def _on_done(self, cancelled: bool) -> None:
        self._set_running(False)
        self.plot.finish()
        if self.result is None:
            notify_info(self.status, "Training stopped before a model was ready.")
            return
        self.progress_bar.setValue(1000 if not cancelled else self.progress_bar.value())
        self.progress_bar.setFormat("%p%")
        # select a new model by itself only when it beat the start on enough held-back cells (or when the
        # user asked for no validation at all)
        result = self.result
        worse = result.improved is False or (result.improved is None and result.base_metrics is not None)
        self.new_entry = entry = self.registry.add_session_model(result.model, select=not worse)
        self.save_button.setEnabled(True)
        self.revert_button.setEnabled(not worse and self.previous_entry is not None)
        self.use_new_button.setEnabled(worse)
        head = "Training cancelled; kept the best model so far" if cancelled else "Training finished"
        typical = typical_diameter(result.model)
        size_note = (f" The automatic cell size misjudged your images: on new images this model uses the typical "
                     f"size of your cells, {typical:.0f} px, wherever its estimate is 2x away from it (type a "
                     f"diameter to override)." if typical is not None else "")
        size_note += blend_note(result)
        if worse:
            kept = self.previous_entry.label if self.previous_entry is not None else "the previous model"
            why = ("got worse" if result.improved is False else
                   f"only {result.held_out_cells} held-back cells, too few to tell")
            sizes = (" It also knows the size of the cells you annotated: on those images it segments at that size."
                     if result.model.metadata.get(TAUGHT_SIZES) else "")
            notify_info(self.status, f"{head}: {before_after(result)}: {why}, kept '{kept}' "
                                     f"in Segment cells ('Use the new model anyway' selects '{entry.label}')."
                                     f"{sizes}{size_note}")
        else:
            notify_info(self.status, f"{head}: {before_after(self.result)}. '{entry.label}' is now selected "
                                     f"in Segment cells.{size_note}")

    def revert(self) -> None:
        """Select the model that was selected before the last training."""
        if self.previous_entry is not None:
            self._select(self.previous_entry, f"Reverted: '{self.previous_entry.label}' is selected in Segment cells.")

    def use_new_model(self) -> None:
        """Select the last trained model, also when it scored worse than its start."""
        if self.new_entry is not None:
            self._select(self.new_entry, f"'{self.new_entry.label}' is selected in Segment cells.")

    def _select(self, entry: ModelEntry, message: str) -> None:
        """Select `entry` in Segment cells; Revert / Use the new model stay clickable for the other one."""
        self.registry.select(entry)
        self.revert_button.setEnabled(self.previous_entry not in (None, entry))
        self.use_new_button.setEnabled(self.new_entry not in (None, entry))
        notify_info(self.status, message)

    def _on_error(self, exc: BaseException) -> None:
        self._set_running(False)
        self._show_error(f"Training failed: {error_message(exc)}")

    def _set_running(self, running: bool) -> None:
        self.train_button.setEnabled(not running)
        self.cancel_button.setEnabled(running)

    # ---- saving ---------------------------------------------------------------------------
    def save_model(self, path: str | None = None) -> Path | None:
        """Write the trained model as .safetensors (asks for a path when none is given)."""
        if self.result is None:
            self._show_error("Nothing to save yet: train a model first.")
            return None
        path = path or self.choose_save_path()
        if not path:
            return None
        path = Path(path)
        if path.suffix != ".safetensors":
            path = path.with_name(path.name + ".safetensors")
        try:
            written = save_model(self.result.model, path)
        except Exception as exc:
            self._show_error(f"Could not save the model: {error_message(exc)}")
            return None
        notify_info(self.status, f"Saved the model to {written}")
        return written

    def _ask_save_path(self) -> str:
        path, _ = QFileDialog.getSaveFileName(self, "Save the trained model", "cell-model.safetensors",
                                              "Model files (*.safetensors)")
        return path

    def _show_error(self, text: str) -> None:
        notify_error(self.status, text)


def best_scores(result) -> str:
    """'best at step 15: Dice 0.873, F1@0.5 0.511' from the model's training record."""
    metrics = result.model.metadata.get("training", {}).get("metrics", {})
    names = {"dice": "Dice", "f1": "F1@0.5", "val_loss": "val loss"}
    scores = [f"{label} {metrics[key]:.3f}" for key, label in names.items()
              if isinstance(metrics.get(key), (int, float))]
    return f"best at step {result.best_step}" + (": " + ", ".join(scores) if scores else "")


def blend_note(result) -> str:
    """What the status says when the model kept only part of the training's change of its weights."""
    kept = (result.model.metadata.get("training") or {}).get("kept_change", 1.0)
    if kept >= 1.0:
        return ""
    return (f" It keeps {kept:.0%} of what training changed in the weights (scored no lower on your held-back "
            f"cells), so images you did not correct move less.")


def before_after(result) -> str:
    """'F1 on your held-back cells: 0.620 -> 0.710 (Dice 0.85 -> 0.88)', or the best scores without validation."""
    base, best = result.base_metrics, result.metrics
    if not base or not best:
        return best_scores(result) + " (no held-back cells to compare with the starting model)"
    return (f"F1 on your held-back cells: {base['f1']:.3f} \u2192 {best['f1']:.3f} "
            f"(Dice {base['dice']:.3f} \u2192 {best['dice']:.3f}, step {result.best_step})")


def eta_text(elapsed: float, step: int, total: int) -> str:
    """'ETA 0:42' from the time per step so far."""
    if step <= 0 or total <= step:
        return ""
    seconds = int(round(elapsed / step * (total - step)))
    return f"ETA {seconds // 60}:{seconds % 60:02d}"


def _row(*widgets: QWidget) -> QHBoxLayout:
    row = QHBoxLayout()
    for widget in widgets:
        row.addWidget(widget)
    return row
