"""napari-cell-unet: U-Net cell segmentation for napari, the command line and Python.

The public API is imported lazily so that opening napari (which reads this package's
manifest) never imports torch.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:  # one source for the version: pyproject.toml, through the installed distribution's metadata
    __version__ = version("napari-cell-unet")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"

from .errors import CellUnetError  # noqa: E402  (no heavy imports: keeps napari start-up light)

_LAZY = {
    "load_model": ("napari_cell_unet.model", "load_model"),
    "save_model": ("napari_cell_unet.model", "save_model"),
    "CellModel": ("napari_cell_unet.model", "CellModel"),
    "ModelFileError": ("napari_cell_unet.model", "ModelFileError"),
    "segment": ("napari_cell_unet.inference", "segment"),
    "train": ("napari_cell_unet.training", "train"),
}

__all__ = ["CellUnetError", "__version__", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        import sys

        if "napari" in sys.modules:  # e.g. napari's console: same Mesa/triton hazard as the widgets
            from ._torch_guard import install_triton_guard

            install_triton_guard()

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'napari_cell_unet' has no attribute {name!r}")
