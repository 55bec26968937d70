"""Milliseconds per click in the Correct & measure widget on a 2048 x 2048 labels layer, in a real viewer.

Same plane as bench_correction_tools.py (Usiigaci set1 tiled 2 x 2, default model's labels and float16 maps kept in
the layer's metadata as Segment keeps them). For 30 cells: Delete then Add at the cell's centroid through the
widget (`CorrectWidget.click`: correction + `Labels.data_setitem` in one history step + the corrected mask), timed
apart from napari's redraw that follows (`processEvents`). Run with a display:

    bash scripts/with_display.sh python benchmarks/bench_correction_widget.py
"""

from __future__ import annotations

import os
import time

import numpy as np
from bench_correction_tools import cpu_model, tiled_plane


def main() -> None:
    import napari
    from qtpy.QtWidgets import QApplication
    from skimage.measure import regionprops

    from napari_cell_unet._widgets import _maps, correct_widget
    from napari_cell_unet.model import load_model

    post = load_model().postprocessing
    plane = tiled_plane()
    viewer = napari.Viewer(show=True)
    viewer.add_image(plane["image"], name="img")
    layer = viewer.add_labels(plane["labels"].copy(), name="img labels")
    _maps.keep_maps(layer, (), plane["probs"], "img", None, (post["cell_threshold"], post["border_threshold"]))
    _, widget = viewer.window.add_plugin_dock_widget("napari-cell-unet", "Correct & measure")
    widget.labels_combo.set_layer(layer)
    app = QApplication.instance()
    for _ in range(10):
        app.processEvents()
    times: dict[str, list[float]] = {}
    points = [tuple(int(round(v)) for v in r.centroid) for r in regionprops(np.asarray(layer.data))][::7][:30]
    for point in points:
        if layer.data[point] == 0:
            continue
        for tool in (correct_widget.DELETE, correct_widget.ADD):
            widget.set_tool(tool)
            t0 = time.perf_counter()
            widget.click((), point)
            t1 = time.perf_counter()
            app.processEvents()
            t2 = time.perf_counter()
            times.setdefault(f"{tool}: widget", []).append(1000 * (t1 - t0))
            times.setdefault(f"{tool}: napari redraw", []).append(1000 * (t2 - t1))
    widget.set_tool(correct_widget.OFF)
    t0 = time.perf_counter()
    widget.remove_small(30)
    times["remove small: widget"] = [1000 * (time.perf_counter() - t0)]
    t0 = time.perf_counter()
    layer.undo()
    times["undo (napari)"] = [1000 * (time.perf_counter() - t0)]
    viewer.close()
    print(f"\nCPU: {cpu_model()} ({os.cpu_count()} cores visible), load average {os.getloadavg()[0]:.1f}\n")
    print("| step | n | median ms | max ms |")
    print("|---|---:|---:|---:|")
    for name, values in times.items():
        print(f"| {name} | {len(values)} | {np.median(values):.1f} | {np.max(values):.1f} |")


if __name__ == "__main__":
    main()
