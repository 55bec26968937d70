"""Regression for the Mesa/LLVM crash: a viewer (and its OpenGL context) exists BEFORE torch is imported.

Importing torchvision (-> torch._dynamo -> triton and its bundled LLVM) after napari created its
GL context on Mesa segfaulted the process. This is exactly what a user does: start napari, then
open our widget. It must run in a fresh process: in the pytest process torch is already loaded.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from conftest import TEST_DATA, TINY_ARCHITECTURE

pytestmark = pytest.mark.gui

SCRIPT = textwrap.dedent("""
    import sys
    import napari
    import numpy as np
    import tifffile
    from qtpy.QtWidgets import QApplication

    assert "torch" not in sys.modules
    viewer = napari.Viewer(show=True)
    viewer.add_image(tifffile.imread(sys.argv[1])[:192, :192], name="cells")
    for _ in range(20):
        QApplication.processEvents()  # the canvas is drawn: the GL context is live
    assert "torch" not in sys.modules, "napari start-up must not import torch"

    _, segment = viewer.window.add_plugin_dock_widget("napari-cell-unet", "Segment cells")
    _, train = viewer.window.add_plugin_dock_widget("napari-cell-unet", "Train / fine-tune")
    _, correct = viewer.window.add_plugin_dock_widget("napari-cell-unet", "Correct & measure")
    import torchvision, segmentation_models_pytorch  # what used to crash
    from napari_cell_unet.model import CellModel, save_model
    save_model(CellModel.create(architecture={architecture!r}, name="tiny"), sys.argv[2])
    assert segment.load_model_file(sys.argv[2])
    segment.segment(sync=True)
    labels = viewer.layers["cells labels"].data
    assert labels.shape == (192, 192) and labels.dtype == np.uint32, (labels.shape, labels.dtype)
    correct.labels_combo.set_layer(viewer.layers["cells labels"])
    correct.measure()
    assert len(viewer.layers["cells labels"].features) == len(np.unique(labels[labels > 0]))
    for _ in range(20):
        QApplication.processEvents()
    viewer.close()
    print("FRESH-PROCESS-OK")
""").format(architecture=TINY_ARCHITECTURE)


@pytest.mark.skipif(not os.environ.get("DISPLAY"), reason="needs an X display (run under xvfb-run -a)")
def test_viewer_first_then_widgets_in_fresh_process(tmp_path):
    script = tmp_path / "viewer_first.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "NAPARI_CELL_UNET_SETTINGS": str(tmp_path / "settings.ini")}
    env.pop("NAPARI_CELL_UNET_ALLOW_TRITON", None)
    run = subprocess.run([sys.executable, str(script), str(TEST_DATA / "usiigaci" / "set18" / "raw.tif"),
                          str(tmp_path / "tiny.safetensors")],
                         capture_output=True, text=True, timeout=240, env=env)
    assert run.returncode == 0, f"exit code {run.returncode}\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    assert "FRESH-PROCESS-OK" in run.stdout
