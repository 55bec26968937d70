"""The architecture callable named in exported bioimage.io packages (`weights.pytorch_state_dict.architecture`).

bioimage.io tools rebuild the network with ``CellUNet(**kwargs)`` and load the package's state dict into it;
the keyword arguments are the model's own ``architecture`` metadata, so this is ``build_network`` under a stable
name. Kept tiny and free of napari/Qt so that it imports wherever segmentation-models-pytorch does.
"""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from .architecture import OUTPUT_CLASSES, build_network


def CellUNet(architecture: dict[str, Any] | None = None, in_channels: int = 1,  # noqa: N802 (a "class" to callers)
             n_classes: int = len(OUTPUT_CLASSES)) -> nn.Module:
    """The randomly initialised network of a napari-cell-unet model (logits; sigmoid is the package's postprocessing)."""
    return build_network(architecture, in_channels=in_channels, n_classes=n_classes)
