"""Save and load models as one `.safetensors` file: weights plus JSON metadata. Nothing is ever unpickled."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from ..errors import CellUnetError
from ..io._atomic import atomic_path
from .cell_model import CellModel

METADATA_KEY = "napari_cell_unet"
FORMAT_VERSION = 1
DEFAULT_MODEL_PATH = Path(__file__).parent / "weights" / "default.safetensors"
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


class ModelFileError(CellUnetError, ValueError):
    """A model file that cannot be used; the message is one line naming the file and the problem."""


def default_model_available() -> bool:
    return DEFAULT_MODEL_PATH.is_file()


def library_versions() -> dict[str, str]:
    import segmentation_models_pytorch as smp

    from .. import __version__

    return {"napari_cell_unet": __version__, "torch": torch.__version__,
            "segmentation_models_pytorch": smp.__version__}


def save_model(model: CellModel, path: str | os.PathLike, half: bool = False) -> Path:
    """Write `model` atomically to `path` (.safetensors); `half` stores float weights as float16."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix != ".safetensors":
        raise ModelFileError(f"{path}: model files must end in .safetensors")
    metadata = {**model.metadata, "format_version": FORMAT_VERSION, "versions": library_versions()}
    tensors = {}
    for key, value in model.network.state_dict().items():
        value = value.detach().to("cpu")
        if half and value.is_floating_point():
            value = value.half()
        tensors[key] = value.contiguous()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(metadata)})
    return path


def load_model(path: str | os.PathLike | None = None) -> CellModel:
    """Load a model on the CPU. `None` loads the bundled default model.

    `.safetensors` files written by this package carry their own architecture. A plain
    PyTorch state dict (`.pt`/`.pth`) is read with `torch.load(weights_only=True)` and must
    match the default architecture.
    """
    if path is None:
        if not default_model_available():
            raise ModelFileError(f"{DEFAULT_MODEL_PATH}: the bundled default model is missing from this installation")
        path = DEFAULT_MODEL_PATH
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    if path.suffix == ".safetensors":
        state, metadata = _read_safetensors(path)
    elif path.suffix in _TORCH_SUFFIXES:
        state, metadata = _read_torch_state_dict(path), {"name": path.stem}
    else:
        raise ModelFileError(f"{path}: unknown model file type {path.suffix!r} (expected .safetensors, .pt or .pth)")
    return _assemble(path, state, metadata)


def _read_safetensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            raw = (f.metadata() or {}).get(METADATA_KEY)
            if raw is None:
                raise ModelFileError(f"{path}: a safetensors file, but not a napari-cell-unet model (no metadata)")
            state = {key: f.get_tensor(key) for key in f.keys()}
    except ModelFileError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated/corrupt headers
        raise ModelFileError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from None
    try:
        metadata = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ModelFileError(f"{path}: model metadata is not valid JSON ({exc.msg})") from None
    if metadata.get("format_version", FORMAT_VERSION) > FORMAT_VERSION:
        raise ModelFileError(f"{path}: written by a newer napari-cell-unet (format {metadata['format_version']}); please upgrade")
    return state, metadata


def _read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelFileError(f"{path}: refused or unreadable PyTorch file; only plain state dicts load "
                             f"(weights_only=True): {_one_line(exc)}") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: does not hold a state dict of tensors")
    return obj


def _assemble(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> CellModel:
    try:
        model = CellModel.create(architecture=metadata.get("architecture"),
                                 in_channels=int(metadata.get("in_channels", 1)))
    except Exception as exc:
        raise ModelFileError(f"{path}: cannot build the architecture it describes ({_one_line(exc)})") from None
    model.metadata.update(metadata)
    expected = model.network.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shape_errors = [k for k in expected.keys() & state.keys() if expected[k].shape != state[k].shape]
    if missing or unexpected or shape_errors:
        details = []
        if missing:
            details.append(f"{len(missing)} missing tensors (e.g. {missing[0]})")
        if unexpected:
            details.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        if shape_errors:
            details.append(f"{len(shape_errors)} tensors of the wrong shape (e.g. {shape_errors[0]})")
        raise ModelFileError(f"{path}: weights do not match the architecture: " + "; ".join(details))
    cast = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    model.network.load_state_dict(cast, strict=True)
    model.network.eval()
    model.metadata.setdefault("source", str(path))
    return model


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
