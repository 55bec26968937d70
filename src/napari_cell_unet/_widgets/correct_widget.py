"""The "Correct & measure" dock widget: click-to-fix tools on a Labels layer made by Segment.

A thin adapter over `napari_cell_unet.correction`: a click on the layer (its `mouse_drag_callbacks`) runs the
chosen tool on the clicked plane, and the changed pixels go through `Labels.data_setitem` inside one
`block_history()`, so every action is one step of napari's own undo (Ctrl+Z in the layer, or the Undo button).
The probability maps come from the Segment widget (kept in the layer's metadata, see `_maps`); when they were
too large to keep, *Add* recomputes them with the chosen model in a window around the click.
"""

from __future__ import annotations

import numpy as np
from napari.layers import Labels
from qtpy.QtWidgets import (QAbstractItemView, QButtonGroup, QFileDialog, QFormLayout, QGridLayout, QHBoxLayout,
                            QLabel, QPushButton, QTableWidget, QTableWidgetItem, QWidget)

from .. import correction, measure
from . import _features, _layers, _maps
from ._common import clear_stale_errors, error_message, notify_error, notify_info, scrolling_content, spin
from ._plot import FramePlot

OFF, ADD, SPLIT, MERGE, DELETE = "off", "add", "split", "merge", "delete"
TOOLS = {ADD: ("Add", "Shift-A", "Click inside a missed cell: it grows from the click over the model's cell map."),
         SPLIT: ("Split", "Shift-S", "Click twice inside a merged cell, once in each part: two cells."),
         MERGE: ("Merge", "Shift-M", "Click two cells: they become one."),
         DELETE: ("Delete", "Shift-D", "Click a cell: it is removed.")}
RECOMPUTE_HALF = 256  # half-size of the window whose maps are recomputed when they were not kept


class CorrectWidget(QWidget):
    """Tool buttons and shortcuts that correct a labels layer by clicks on it."""

    def __init__(self, napari_viewer, parent: QWidget | None = None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self.tool = OFF
        self.pending: tuple[tuple[int, ...], tuple[float, float]] | None = None  # first click of split / merge
        self.last_edit: correction.Edit | None = None
        self._hooked: Labels | None = None
        self._build()
        clear_stale_errors(self.status, self.viewer, [self.labels_combo])
        self.labels_combo.layer_changed.connect(self._hook_layer)
        self._hook_layer()

    # ---- layout -------------------------------------------------------------------------
    def _build(self) -> None:
        self.labels_combo = _layers.LayerComboBox(self.viewer, (Labels,))
        self.buttons: dict[str, QPushButton] = {}
        self.group = QButtonGroup(self)
        self.group.setExclusive(False)
        grid = QGridLayout()
        for i, (tool, (text, key, tip)) in enumerate(TOOLS.items()):
            button = QPushButton(f"{text} ({key.replace('Shift-', 'Shift+')})")
            button.setCheckable(True)
            button.setToolTip(tip)
            button.clicked.connect(lambda checked, t=tool: self.set_tool(t if checked else OFF))
            self.buttons[tool] = button
            self.group.addButton(button)
            grid.addWidget(button, i // 2, i % 2)
        self.labels_combo.setToolTip("The labels layer to correct (made by Segment cells, or any labels layer). "
                                     "Clicks on it run the chosen tool on the slice you are looking at.")
        self.min_size = spin(1, 1_000_000, 30, 5, " px")
        self.min_size.setToolTip("Objects smaller than this many pixels are removed by 'Remove smaller'. Higher "
                                 "removes more (also small real cells); lower keeps more specks.")
        self.remove_button = QPushButton("Remove smaller")
        self.remove_button.setToolTip("Remove every object of the current plane smaller than this (one undo step).")
        self.remove_button.clicked.connect(lambda: self.remove_small())
        small = QHBoxLayout()
        small.addWidget(self.min_size)
        small.addWidget(self.remove_button)
        self.undo_button = QPushButton("Undo (Ctrl+Z)")
        self.undo_button.setToolTip("Take back the last correction (each click is one step; Ctrl+Z on the layer "
                                    "does the same).")
        self.undo_button.clicked.connect(lambda: self.undo())
        form = QFormLayout()
        form.addRow("Labels", self.labels_combo)
        form.addRow("Objects under", small)
        self.status = QLabel("Choose a tool, then click on the labels layer.")
        self.status.setWordWrap(True)

        self.measure_button = QPushButton("Measure")
        self.measure_button.setToolTip("Measure every cell of the layer again (after corrections): area, perimeter, "
                                       "shape and intensity, in µm when the layer has a pixel size.")
        self.measure_button.clicked.connect(lambda: self.measure())
        self.export_button = QPushButton("Export CSV...")
        self.export_button.setToolTip("Save the table as a CSV file: one row per cell, with the image name and "
                                      "frame, ready for a spreadsheet or R/pandas.")
        self.export_button.clicked.connect(lambda: self.export_csv())
        measure_row = QHBoxLayout()
        measure_row.addWidget(self.measure_button)
        measure_row.addWidget(self.export_button)
        self.table = QTableWidget(0, 0)
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.table.setMinimumHeight(160)
        self.table.setToolTip("One row per cell. Click a row to select that cell in the viewer.")
        self.table.cellClicked.connect(lambda row, _column: self.select_row(row))
        self.summary = QLabel("")
        self.frame_plot = FramePlot(self)
        self.frame_plot.setVisible(False)

        layout = scrolling_content(self)
        layout.addLayout(form)
        layout.addLayout(grid)
        layout.addWidget(self.undo_button)
        layout.addWidget(self.status)
        layout.addLayout(measure_row)
        layout.addWidget(self.summary)
        layout.addWidget(self.table)
        layout.addWidget(self.frame_plot)

    # ---- the layer ------------------------------------------------------------------------
    def layer(self) -> Labels | None:
        layer = self.labels_combo.layer()
        return layer if isinstance(layer, Labels) else None

    def _hook_layer(self, *_) -> None:
        """Move the click callback and the shortcuts to the chosen layer."""
        if self._hooked is not None:
            callbacks = self._hooked.mouse_drag_callbacks
            if self._on_click in callbacks:
                callbacks.remove(self._on_click)
            self._hooked.events.features.disconnect(self.show_features)
        self._hooked = layer = self.layer()
        self.pending = None
        self.show_features()
        if layer is None:
            return
        layer.mouse_drag_callbacks.append(self._on_click)
        layer.events.features.connect(self.show_features)
        for tool, (_, key, _) in TOOLS.items():
            layer.bind_key(key, lambda _layer, t=tool: self.set_tool(OFF if self.tool == t else t), overwrite=True)

    def set_tool(self, tool: str) -> None:
        self.tool = tool
        self.pending = None
        for name, button in self.buttons.items():
            button.blockSignals(True)
            button.setChecked(name == tool)
            button.blockSignals(False)
        layer = self.layer()
        if layer is not None and tool != OFF:
            layer.mode = "pan_zoom"  # a click must not paint
            self.viewer.layers.selection.active = layer
        self.status.setStyleSheet("")
        self.status.setText(TOOLS[tool][2] if tool in TOOLS else "Choose a tool, then click on the labels layer.")

    # ---- clicks ---------------------------------------------------------------------------
    def _on_click(self, layer, event) -> None:
        if self.tool == OFF or event.type != "mouse_press" or getattr(event, "button", 1) not in (1, None):
            return
        data_point = np.asarray(layer.world_to_data(event.position), dtype=float)
        shape = layer.data.shape
        if np.any(data_point < -0.5) or np.any(data_point > np.asarray(shape) - 0.5):
            return
        plane = tuple(int(round(v)) for v in data_point[:-2])
        self.click(plane, (float(data_point[-2]), float(data_point[-1])))

    def click(self, plane: tuple[int, ...], point: tuple[float, float]) -> correction.Edit | None:
        """Act with the current tool at `point` (row, col) of `plane` (data coordinates of the layer)."""
        layer = self.layer()
        if layer is None or self.tool == OFF:
            return None
        labels = np.asarray(layer.data[plane] if plane else layer.data)
        try:
            if self.tool in (SPLIT, MERGE):
                if self.pending is None or self.pending[0] != plane:
                    self.pending = (plane, point)
                    notify_info(self.status, "First point set: click the second one.")
                    return None
                first, self.pending = self.pending[1], None
                if self.tool == SPLIT:
                    edit = correction.split_cell(labels, first, point, _maps.maps_for(layer, plane))
                else:
                    edit = correction.merge_cells(labels, first, point)
            elif self.tool == DELETE:
                edit = correction.delete_cell(labels, point)
            else:
                edit = self._add(layer, labels, plane, point)
        except correction.CorrectionError as exc:
            notify_error(self.status, str(exc))
            return None
        self._apply(layer, plane, edit)
        return edit

    def _add(self, layer: Labels, labels: np.ndarray, plane: tuple[int, ...], point) -> correction.Edit:
        maps = _maps.maps_for(layer, plane)
        if maps is not None:
            return correction.add_cell(labels, maps, point, **self._thresholds(layer))
        return self._add_recomputing(layer, labels, plane, point)

    @staticmethod
    def _thresholds(layer: Labels) -> dict:
        """The thresholds the layer was segmented with (a new cell grows like the model's own cells)."""
        source = _maps.maps_source(layer)
        return {key: float(source.get(key, 0.5)) for key in ("cell_threshold", "border_threshold")}

    def _add_recomputing(self, layer: Labels, labels, plane, point) -> correction.Edit:
        """Add without kept maps: predict the maps of a window around the click with the Segment widget's model."""
        source = _maps.maps_source(layer)
        image_name = source.get("image") or layer.name.removesuffix(" labels")
        if image_name not in self.viewer.layers:
            raise correction.CorrectionError(f"no probability maps are kept for '{layer.name}' and its image "
                                             f"'{image_name}' is not open: segment it again")
        from ..inference import segment  # here, not above: opening this widget does not import torch
        from ._registry import registry_for

        registry = registry_for(self.viewer)
        entry = registry.current_or_first()
        model = registry.load(entry) if entry is not None else None
        r, c = (int(round(v)) for v in point)
        box = (slice(max(0, r - RECOMPUTE_HALF), min(labels.shape[0], r + RECOMPUTE_HALF)),
               slice(max(0, c - RECOMPUTE_HALF), min(labels.shape[1], c + RECOMPUTE_HALF)))
        image = _layers.pixels(self.viewer.layers[image_name], plane)[box]
        result = segment(image, model, diameter=source.get("diameter") or "auto", return_probabilities=True)
        probs = np.asarray(result[1])
        local = correction.add_cell(labels[box], probs, (r - box[0].start, c - box[1].start),
                                    new_label=correction.next_label(labels), **self._thresholds(layer))
        shifted = tuple(slice(b.start + s.start, b.start + s.stop) for b, s in zip(box, local.box))
        return correction.Edit(shifted, local.before, local.after, local.label, local.action)

    # ---- whole-plane actions ------------------------------------------------------------
    def current_plane(self) -> tuple[int, ...]:
        layer = self.layer()
        return _layers.current_plane_index(self.viewer, layer) if layer is not None else ()

    def remove_small(self, min_size: int | None = None) -> correction.Edit | None:
        layer = self.layer()
        if layer is None:
            notify_error(self.status, "Choose a Labels layer first.")
            return None
        plane = self.current_plane()
        labels = np.asarray(layer.data[plane] if plane else layer.data)
        size = int(self.min_size.value() if min_size is None else min_size)
        edit = correction.remove_small(labels, size)
        if edit is None:
            notify_info(self.status, f"No object under {size} px.")
            return None
        self._apply(layer, plane, edit)
        return edit

    def undo(self) -> None:
        layer = self.layer()
        if layer is not None:
            layer.undo()
            notify_info(self.status, "Undone.")

    # ---- writing ----------------------------------------------------------------------------
    def _apply(self, layer: Labels, plane: tuple[int, ...], edit: correction.Edit) -> None:
        rows, cols = edit.changed()
        if rows.size:
            prefix = tuple(np.full(rows.size, i, dtype=np.intp) for i in plane)
            values = edit.after[rows - edit.box[0].start, cols - edit.box[1].start]
            with layer.block_history():  # one undo step
                layer.data_setitem(prefix + (rows, cols), values)
            _maps.mark_corrected(layer, plane, rows, cols, layer.data.shape[-2:])
        self.last_edit = edit
        what = {"add": f"Added cell {edit.label}", "split": f"Split off cell {edit.label}",
                "merge": f"Merged into cell {edit.label}", "delete": f"Deleted cell {edit.label}",
                "remove small": "Removed small objects"}.get(edit.action, edit.action)
        notify_info(self.status, f"{what} ({rows.size} px changed). Ctrl+Z undoes it.")

    # ---- measuring ------------------------------------------------------------------------
    def image_layer(self):
        """The image the labels were made from (kept by Segment; else '<name>' for '<name> labels')."""
        layer = self.layer()
        if layer is None:
            return None
        name = _maps.maps_source(layer).get("image") or layer.name.removesuffix(" labels")
        found = self.viewer.layers[name] if name in self.viewer.layers else None
        return found if found is not None and found is not layer and hasattr(found, "contrast_limits") else None

    def measure(self) -> dict | None:
        layer = self.layer()
        if layer is None:
            notify_error(self.status, "Choose a Labels layer first.")
            return None
        try:
            table = _features.measure_layer(layer, self.image_layer())
        except Exception as exc:  # noqa: BLE001 - shown to the user
            notify_error(self.status, f"Measuring failed: {error_message(exc)}")
            return None
        notify_info(self.status, f"Measured {len(table.get('label', []))} cells.")
        return table

    def show_features(self, event=None) -> None:
        """Fill the table (and, for a stack, the per-frame plot) from the layer's features."""
        layer = self.layer()
        features = layer.features if layer is not None else None
        if features is None or features.shape[1] == 0:
            self.table.setRowCount(0)
            self.table.setColumnCount(0)
            self.summary.setText("No measurements: segment, or press Measure.")
            self.frame_plot.setVisible(False)
            return
        columns = [c for c in features.columns if c not in ("index", "image")]
        self.table.setSortingEnabled(False)
        self.table.setColumnCount(len(columns))
        self.table.setHorizontalHeaderLabels(columns)
        self.table.setRowCount(len(features))
        for column, name in enumerate(columns):
            values = features[name].to_numpy()
            for row, value in enumerate(values):
                text = f"{value:.4g}" if isinstance(value, (float, np.floating)) else str(value)
                self.table.setItem(row, column, QTableWidgetItem(text))
        self._features_shown = features
        table = {c: features[c].to_numpy() for c in features.columns if c != "index"}
        if "frame" in features.columns:
            frames = measure.per_frame(table, n_frames=int(np.prod(layer.data.shape[:-2])))
            area = next(k for k in frames if k.startswith("median_area"))
            self.frame_plot.show_frames(frames["frame"], frames["cells"], frames[area], area.replace("_", " "))
            self.frame_plot.setVisible(True)
            self.summary.setText(f"{len(features)} cells in {len(frames['frame'])} frames.")
        else:
            self.frame_plot.setVisible(False)
            self.summary.setText(f"{len(features)} cells.")

    def select_row(self, row: int) -> None:
        """Select the cell of a table row: show only it, on its frame, centred in the view."""
        layer = self.layer()
        if layer is None or row < 0 or row >= len(layer.features):
            return
        record = layer.features.iloc[row]
        label = int(record["label"])
        plane: tuple[int, ...] = ()
        if "frame" in layer.features.columns and layer.data.ndim > 2:
            plane = tuple(int(i) for i in np.unravel_index(int(record["frame"]), layer.data.shape[:-2]))
            world = layer.data_to_world(np.asarray(plane + (0, 0), dtype=float))
            for axis, value in enumerate(world[:len(plane)]):
                self.viewer.dims.set_point(self.viewer.dims.ndim - layer.ndim + axis, value)
        layer.selected_label = label
        layer.show_selected_label = True
        pixels = np.argwhere(np.asarray(layer.data[plane] if plane else layer.data) == label)
        if pixels.size:
            center = layer.data_to_world(np.asarray(plane + tuple(pixels.mean(axis=0)), dtype=float))
            camera = self.viewer.scene.camera if hasattr(self.viewer, "scene") else self.viewer.camera  # napari < 0.9
            camera.center = tuple(center[-2:])

    def export_csv(self, path: str | None = None) -> str | None:
        """Write the layer's measurements (one row per cell, with image name and frame) to a CSV file."""
        layer = self.layer()
        if layer is None or layer.features.shape[1] == 0:
            notify_error(self.status, "Nothing to export: segment, or press Measure first.")
            return None
        if path is None:
            path, _ = QFileDialog.getSaveFileName(self, "Export cell measurements", f"{layer.name}_cells.csv",
                                                  "CSV files (*.csv)")
            if not path:
                return None
        features = layer.features
        table = {c: features[c].to_numpy() for c in features.columns if c != "index"}
        n = len(features)
        if "frame" not in table:
            table = {"frame": np.zeros(n, dtype=np.int64), **table}
        if "image" not in table:
            image = self.image_layer()
            table = {"image": np.full(n, image.name if image is not None else layer.name, dtype=object), **table}
        table = {"image": table.pop("image"), "frame": table.pop("frame"), **table}
        try:
            measure.write_cells_csv(table, path, overwrite=True)  # the file dialog asked before replacing
        except Exception as exc:  # noqa: BLE001 - shown to the user
            notify_error(self.status, f"Export failed: {error_message(exc)}")
            return None
        notify_info(self.status, f"Wrote {n} cells to {path}.")
        return str(path)
