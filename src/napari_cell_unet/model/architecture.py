"""Build the segmentation network from a JSON-able architecture description."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

# The two output channels, in order. Both are independent sigmoid maps:
#   cell   - the full extent of every cell (instance > 0)
#   border - the thin outline around / between cells (straddling each edge, ~2 px)
OUTPUT_CLASSES = ("cell", "border")

DEFAULT_ARCHITECTURE: dict[str, Any] = {
    "name": "Unet",
    "encoder_name": "resnet18",
    "encoder_depth": 5,
    "decoder_channels": [256, 128, 64, 32, 16],
}

_SUPPORTED = ("Unet", "UnetPlusPlus", "FPN", "Linknet")


def build_network(architecture: dict[str, Any] | None = None, in_channels: int = 1,
                  n_classes: int = len(OUTPUT_CLASSES)) -> nn.Module:
    """Return a randomly initialised segmentation-models-pytorch network.

    Encoder weights are never downloaded (`encoder_weights=None`): weights come only
    from our own model files.
    """
    import segmentation_models_pytorch as smp

    arch = dict(DEFAULT_ARCHITECTURE if architecture is None else architecture)
    name = arch.pop("name", "Unet")
    if name not in _SUPPORTED:
        raise ValueError(f"unsupported architecture {name!r}; choose one of {', '.join(_SUPPORTED)}")
    if "decoder_channels" in arch:
        arch["decoder_channels"] = list(arch["decoder_channels"])
    if name in ("FPN", "Linknet"):
        arch.pop("decoder_channels", None)
    cls = getattr(smp, name)
    return cls(encoder_weights=None, in_channels=in_channels, classes=n_classes, **arch)
