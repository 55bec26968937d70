"""Hide triton inside a running napari, before anything imports torch.

`_widgets/__init__` installs it before any widget module (and so the core) loads; the package
root installs it before its lazy API imports the core while napari is loaded.

Why: triton (pulled in by `torch._dynamo`, which torchvision and segmentation-models-pytorch
import) ships its own LLVM. Loading it after napari has created an OpenGL context on Mesa
(llvmpipe, used by Xvfb, VMs and many Linux desktops without a GPU driver) puts two LLVMs in
one process and it segfaults. We never use `torch.compile`, so inside napari we make triton
look absent: `sys.modules["triton"] = None` makes `import triton` raise ImportError and
`importlib.util.find_spec("triton")` return None, which is how torch checks for it. CUDA and
CPU inference/training do not need triton.

Set NAPARI_CELL_UNET_ALLOW_TRITON=1 to turn the guard off.
"""

from __future__ import annotations

import os
import sys

ALLOW_ENV = "NAPARI_CELL_UNET_ALLOW_TRITON"


def install_triton_guard() -> bool:
    """Hide triton from this process unless it is already loaded or allowed; True if hidden."""
    if os.environ.get(ALLOW_ENV, "") not in ("", "0"):
        return False
    if sys.modules.get("triton", None) is not None:
        return False  # already loaded (before any GL context): nothing left to prevent
    sys.modules["triton"] = None  # type: ignore[assignment]
    return True

