"""Regenerate the widget screenshots in this folder:

    xvfb-run -a python docs/screenshots/make_screenshots.py [MODEL.safetensors]

Uses MODEL, else the bundled default model when it is installed, else a small model trained here.
Needs the Usiigaci data in ../shared/data (or CELL_UNET_SHARED_DATA).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
DATA = Path(os.environ.get("CELL_UNET_SHARED_DATA", REPO.parent / "shared" / "data")) / "usiigaci_phase"
TINY = {"name": "Unet", "encoder_name": "resnet18", "encoder_depth": 3, "decoder_channels": [32, 16, 8]}


def settle(app, n: int = 30) -> None:
    for _ in range(n):
        app.processEvents()


def load_set(name: str) -> tuple[np.ndarray, np.ndarray]:
    import tifffile
    from skimage.io import imread

    return tifffile.imread(DATA / name / "raw.tif"), imread(DATA / name / "instances_ids.png")


def main() -> int:
    import napari
    from qtpy.QtWidgets import QApplication

    os.environ.setdefault("NAPARI_CELL_UNET_SETTINGS", str(Path(tempfile.mkdtemp()) / "settings.ini"))
    viewer = napari.Viewer(title="napari-cell-unet")
    viewer.window.resize(1500, 950)
    image, truth = load_set("set12")
    viewer.add_image(image, name="set12", colormap="gray")
    app = QApplication.instance()
    settle(app)
    _, segment = viewer.window.add_plugin_dock_widget("napari-cell-unet", "Segment cells")
    if len(sys.argv) > 1:
        assert segment.load_model_file(sys.argv[1]), segment.status.text()
    elif segment.model_combo.entry() is None:
        segment.registry.add_session_model(quick_model())
    segment.segment(sync=True)
    viewer.layers["set12 labels"].contour = 0
    viewer.layers["set12 labels"].opacity = 0.45
    settle(app)
    viewer.screenshot(str(HERE / "segment_widget.png"), canvas_only=False, flash=False)

    _, train = viewer.window.add_plugin_dock_widget("napari-cell-unet", "Train / fine-tune", tabify=False)
    train.length.setValue(int(os.environ.get("SCREENSHOT_TRAIN_STEPS", "40")))
    train.crop_size.setValue(256)
    train.only_painted.setChecked(True)
    corrected = viewer.layers["set12 labels"]
    crop = (slice(0, 512), slice(0, 512))
    fixed = corrected.data.copy()
    fixed[crop] = truth[crop] + np.where(truth[crop] > 0, fixed.max(), 0)  # "the user corrected this corner"
    corrected.data = fixed
    train.labels_combo.set_layer(corrected)
    train.train(sync=True)
    settle(app)
    viewer.screenshot(str(HERE / "train_widget.png"), canvas_only=False, flash=False)
    train.grab().save(str(HERE / "train_widget_dock.png"))
    print(segment.status.text())
    print(train.status.text())
    viewer.close()
    return 0


def quick_model():
    from napari_cell_unet.training import TrainConfig, TrainingPair, train

    pairs = [TrainingPair(*load_set(name), name=name) for name in ("set2", "set3", "set4")]
    config = TrainConfig(steps=150, crop_size=256, architecture=TINY, name="quick demo model")
    return train(pairs, "scratch", config).model


if __name__ == "__main__":
    sys.exit(main())
