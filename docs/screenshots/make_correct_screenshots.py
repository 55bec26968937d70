"""Regenerate the Correct & measure screenshots in this folder (correct_widget.png, correct_stack.png):

    bash scripts/with_display.sh python docs/screenshots/make_correct_screenshots.py

Uses the bundled default model. Needs the Usiigaci data in ../shared/data (or CELL_UNET_SHARED_DATA).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = Path(os.environ.get("CELL_UNET_SHARED_DATA", REPO.parent / "shared" / "data")) / "usiigaci_phase"
DIAMETER = 69.0  # px, set1's true cells


def settle(app, n: int = 30) -> None:
    for _ in range(n):
        app.processEvents()


def main() -> int:
    import napari
    import tifffile
    from qtpy.QtWidgets import QApplication

    from napari_cell_unet._widgets import correct_widget

    os.environ.setdefault("NAPARI_CELL_UNET_SETTINGS", str(Path(tempfile.mkdtemp()) / "settings.ini"))
    app = QApplication.instance() or QApplication([])
    viewer = napari.Viewer(title="napari-cell-unet: correct & measure")
    viewer.window.resize(1600, 1000)
    image = tifffile.imread(DATA / "set1" / "raw.tif")[:512, :512]
    viewer.add_image(image, name="set1", colormap="gray", scale=(0.65, 0.65))
    settle(app)
    _, segment = viewer.window.add_plugin_dock_widget("napari-cell-unet", "Segment cells")
    segment.diameter.setValue(DIAMETER)
    segment.segment(sync=True)
    _, correct = viewer.window.add_plugin_dock_widget("napari-cell-unet", "Correct & measure")
    layer = viewer.layers["set1 labels"]
    correct.labels_combo.set_layer(layer)
    # delete a cell and add it back by one click, then select a row of the table
    labels = np.asarray(layer.data)
    sizes = np.bincount(labels.ravel())
    biggest = int(sizes[1:].argmax()) + 1
    point = tuple(int(v) for v in np.argwhere(labels == biggest).mean(axis=0).round())
    correct.set_tool(correct_widget.DELETE)
    correct.click((), point)
    correct.set_tool(correct_widget.ADD)
    correct.click((), point)
    correct.measure()
    correct.table.selectRow(3)
    correct.select_row(3)
    viewer.reset_view()
    layer.show_selected_label = False
    layer.opacity = 0.5
    settle(app)
    viewer.screenshot(str(HERE / "correct_widget.png"), canvas_only=False, flash=False)

    # a "time lapse": one 384² crop of four Usiigaci sets as frames
    frames = [tifffile.imread(DATA / name / "raw.tif")[:384, :384] for name in ("set1", "set2", "set12", "set21")]
    viewer.layers.clear()
    viewer.add_image(np.stack(frames), name="movie", colormap="gray", scale=(1.0, 0.65, 0.65))
    segment.image_combo.set_layer(viewer.layers["movie"])
    segment.stack_combo.setCurrentText("whole stack")
    segment.segment(sync=True)
    correct.labels_combo.set_layer(viewer.layers["movie labels"])
    viewer.layers["movie labels"].opacity = 0.5
    viewer.dims.set_current_step(0, 2)
    settle(app)
    viewer.screenshot(str(HERE / "correct_stack.png"), canvas_only=False, flash=False)
    print(segment.status.text())
    print(correct.summary.text())
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
