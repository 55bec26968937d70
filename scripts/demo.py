"""The demo behind `make run`: napari with both widgets docked and a real image, segmented by the bundled model.

Opens the plugin's sample image (or --image PATH), docks the Segment and Train widgets and clicks Segment.
With a real display the window stays open; under a virtual display (CELL_UNET_HEADLESS=1, set by
scripts/with_display.sh when there is no DISPLAY) it saves a screenshot and the labels TIFF, then exits.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

PLUGIN = "napari-cell-unet"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--image", type=Path, help="an image to open instead of the bundled sample")
    parser.add_argument("--output-dir", type=Path, default=Path("output"))
    parser.add_argument("--headless", action="store_true", default=os.environ.get("CELL_UNET_HEADLESS") == "1",
                        help="save a screenshot and the labels, then exit (default under a virtual display)")
    args = parser.parse_args()

    import napari
    from qtpy.QtCore import Qt

    from napari_cell_unet.io import write_labels_tiff

    viewer = napari.Viewer(title="napari-cell-unet demo")
    if args.image:
        layers = viewer.open(args.image, plugin=PLUGIN)
    else:
        layers = viewer.open_sample(PLUGIN, "nuclei")
    image = next(layer for layer in layers if layer._type_string == "image")
    for layer in layers:
        if layer is not image:
            layer.visible = False  # ground truth stays available, but the prediction is what we show
    # one above the other, no tabs: each scrolls, so both fit a laptop screen and neither hides behind a tab
    segment_dock, segmenter = viewer.window.add_plugin_dock_widget(PLUGIN, "Segment cells")
    train_dock, _ = viewer.window.add_plugin_dock_widget(PLUGIN, "Train / fine-tune")
    if args.headless:  # the screenshot's size, before anything is shown in it
        viewer.window.resize(1500, 950)
    viewer.window._qt_window.resizeDocks([segment_dock, train_dock], [420, 480], Qt.Orientation.Vertical)
    viewer.layers.selection.active = image

    start = time.perf_counter()
    segmenter.segment(sync=True)
    labels_layer = viewer.layers[f"{image.name} labels"]
    n_cells = len(set(labels_layer.data.ravel().tolist()) - {0})
    print(f"segmented {image.name!r}: {n_cells} cells in {time.perf_counter() - start:.1f} s")

    if not args.headless:
        napari.run()
        return 0
    args.output_dir.mkdir(parents=True, exist_ok=True)
    labels_path = args.output_dir / f"{re.sub(r'[^A-Za-z0-9_.-]+', '_', image.name).strip('_')}_labels.tif"
    write_labels_tiff(labels_path, labels_layer.data, overwrite=True)
    shot = args.output_dir / "demo_screenshot.png"
    # let the notification finish sliding in (napari animates it), else the screenshot cuts it off
    settle = time.perf_counter() + 1.5
    while time.perf_counter() < settle:
        napari.qt.get_qapp().processEvents()
        time.sleep(0.02)
    viewer.screenshot(str(shot), canvas_only=False)
    viewer.close()
    print(f"wrote {shot} and {labels_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
