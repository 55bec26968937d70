"""Save and load models as one `.safetensors` file: weights plus JSON metadata. Nothing is ever unpickled."""

from __future__ import annotations

import functools
import json
import math
import os
import re
from pathlib import Path
from typing import Any

import torch

from ..errors import CellUnetError
from ..io._atomic import atomic_path, check_output_folder
from .architecture import OUTPUT_CLASSES
from .cell_model import CellModel

METADATA_KEY = "napari_cell_unet"
FORMAT_VERSION = 1
WEIGHTS = Path(__file__).parent / "weights"
DEFAULT_MODEL_PATH = WEIGHTS / "default.safetensors"
# the models shipped in the package, by the name `load_model`, `--model` and the widgets accept: one model for
# phase contrast and nuclei, and a specialist for each (each beat the generalist trained the same way on its own
# validation images, issue 9; model card in README)
BUNDLED_MODELS = {"default": "phase contrast + nuclei", "cells": "phase contrast", "nuclei": "fluorescent and stained nuclei"}
_TORCH_SUFFIXES = (".pt", ".pth", ".ckpt")


class ModelFileError(CellUnetError, ValueError):
    """A model file that cannot be used; the message is one line naming the file and the problem."""


def default_model_available() -> bool:
    return DEFAULT_MODEL_PATH.is_file()


def bundled_model_path(name: str) -> Path:
    """The file of the bundled model called `name` (a key of `BUNDLED_MODELS`)."""
    if name not in BUNDLED_MODELS:
        raise ModelFileError(f"{name}: no bundled model of that name (bundled: {', '.join(BUNDLED_MODELS)})")
    return DEFAULT_MODEL_PATH if name == "default" else WEIGHTS / f"{name}.safetensors"


def bundled_names() -> list[str]:
    """The bundled models this installation has, default first."""
    return [name for name in BUNDLED_MODELS if bundled_model_path(name).is_file()]


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
    check_output_folder(path.parent)
    with atomic_path(path, overwrite=True) as tmp:
        save_file(tensors, str(tmp), metadata={METADATA_KEY: json.dumps(metadata)})
    return path


def bundled_model() -> CellModel:
    """The bundled default model, read once per process and shared: do not train or modify it (copy it first)."""
    return _bundled_at(DEFAULT_MODEL_PATH)


@functools.lru_cache(maxsize=1)
def _bundled_at(path: Path) -> CellModel:  # keyed by the path, so a test can point it elsewhere
    return load_model(None)


BUNDLED_PROBES = "bundled"  # metadata["diameter_model"]: this model's cell size is measured by the bundled model


def descends_from_bundled(model: CellModel) -> bool:
    """Whether `model` is the bundled default, or was fine-tuned from it (its weights, not its name, tell)."""
    if model.metadata.get("diameter_model") == BUNDLED_PROBES:
        return True
    if not default_model_available():
        return False
    reference = bundled_model().network.state_dict()
    state = model.network.state_dict()
    return state.keys() == reference.keys() and all(
        state[k].shape == v.shape and torch.equal(state[k].detach().cpu(), v) for k, v in reference.items())


def load_model(path: str | os.PathLike | None = None) -> CellModel:
    """Load a model on the CPU. `None` loads the bundled default model; "default", "cells" or "nuclei" (a name
    of `BUNDLED_MODELS`, when no file of that name exists) loads that bundled model.

    `.safetensors` files written by this package carry their own architecture, and so do bioimage.io packages
    exported by it (a folder, .zip or rdf.yaml: `bioimageio.from_bioimageio`). A plain
    PyTorch state dict (`.pt`/`.pth`) is read with `torch.load(weights_only=True)` and must
    match the default architecture.
    """
    if path is None:
        if not default_model_available():
            raise ModelFileError(f"{DEFAULT_MODEL_PATH}: the bundled default model is missing from this installation")
        path = DEFAULT_MODEL_PATH
    elif isinstance(path, str) and path in BUNDLED_MODELS and not Path(path).exists():
        path = bundled_model_path(path)
        if not path.is_file():
            raise ModelFileError(f"{path}: this bundled model is missing from this installation")
    path = Path(path)
    if path.suffix == ".zip" or path.is_dir() or path.name == "rdf.yaml" or path.name.endswith("bioimageio.yaml"):
        from .bioimageio import from_bioimageio  # a bioimage.io package exported by `cell-unet export-bioimageio`

        return from_bioimageio(path)
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
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ModelFileError(f"{path}: model metadata is not valid JSON ({getattr(exc, 'msg', 'nested too deeply')})") from None
    problem = metadata_problem(metadata)
    if problem:
        raise ModelFileError(f"{path}: {problem}")
    return state, metadata


# smp keyword arguments that only shape the network; anything else (e.g. "activation", which would apply a second
# sigmoid so that nothing is ever found, or "aux_params") is refused rather than passed on.
_ARCHITECTURE_KEYS = frozenset({
    "name", "encoder_name", "encoder_depth", "decoder_channels", "decoder_use_batchnorm", "decoder_use_norm",
    "decoder_attention_type", "decoder_pyramid_channels", "decoder_segmentation_channels", "decoder_merge_policy",
    "decoder_dropout", "decoder_interpolation", "upsampling",
})
_MAX_CHANNELS = 4096


def metadata_problem(metadata: Any) -> str | None:
    """What is wrong with a model file's metadata, or None. Checked before anything is built from it."""
    if not isinstance(metadata, dict):
        return "model metadata is not a JSON object"
    version = metadata.get("format_version", FORMAT_VERSION)
    if not _is_int(version) or version < 1:
        return f"unknown model format_version {_show(version)}"
    if version > FORMAT_VERSION:
        return f"written by a newer napari-cell-unet (format {version}); please upgrade"
    for check in (_architecture_problem, _channels_problem, _settings_problem):
        problem = check(metadata)
        if problem:
            return problem
    return None


def _architecture_problem(metadata: dict) -> str | None:
    arch = metadata.get("architecture")
    if arch is None:
        return None
    if not isinstance(arch, dict):
        return "metadata 'architecture' is not a JSON object"
    unknown = sorted(map(str, set(arch) - _ARCHITECTURE_KEYS))
    if unknown:
        return f"metadata 'architecture' has settings this version refuses: {', '.join(unknown)[:80]}"
    depth = arch.get("encoder_depth", 5)
    if not _is_int(depth) or not 3 <= depth <= 5:
        return f"metadata encoder_depth {_show(depth)} is not 3, 4 or 5"
    channels = arch.get("decoder_channels")
    if channels is not None and not (isinstance(channels, list) and len(channels) == depth
                                     and all(_is_int(c) and 1 <= c <= _MAX_CHANNELS for c in channels)):
        return f"metadata decoder_channels {_show(channels)} is not {depth} channel counts"
    return None


def _channels_problem(metadata: dict) -> str | None:
    in_channels = metadata.get("in_channels", 1)
    if not _is_int(in_channels) or not 1 <= in_channels <= 64:
        return f"metadata in_channels {_show(in_channels)} is not a channel count"
    classes = metadata.get("classes", list(OUTPUT_CLASSES))
    if classes != list(OUTPUT_CLASSES):
        return f"metadata classes {_show(classes)} are not {_show(list(OUTPUT_CLASSES))}"
    return None


def _settings_problem(metadata: dict) -> str | None:
    norm, post = metadata.get("normalization", {}), metadata.get("postprocessing", {})
    if not isinstance(norm, dict) or not isinstance(post, dict):
        return "metadata normalization and postprocessing must be JSON objects"
    low, high = norm.get("low", 1.0), norm.get("high", 99.8)
    if norm.get("method", "percentile") != "percentile" or not (_is_number(low) and _is_number(high)
                                                                 and 0 <= low < high <= 100):
        return f"metadata normalization {_show(norm)} is not percentiles 0 <= low < high <= 100"
    for key in ("cell_threshold", "border_threshold", "merge_threshold", "split_border_threshold",
                "split_seed_fraction"):
        if key in post and not (_is_number(post[key]) and 0 <= post[key] <= 1):
            return f"metadata {key} {_show(post[key])} is not between 0 and 1"
    if "min_size" in post and not (_is_int(post["min_size"]) and post["min_size"] >= 0):
        return f"metadata min_size {_show(post['min_size'])} is not a pixel count"
    if "min_size_fraction" in post and not (_is_number(post["min_size_fraction"]) and 0 <= post["min_size_fraction"] < 1):
        return f"metadata min_size_fraction {_show(post['min_size_fraction'])} is not a fraction of a cell's area"
    diameter = metadata.get("cell_diameter")
    if diameter is not None and not (_is_number(diameter) and 0 < diameter <= 1e5):
        return f"metadata cell_diameter {_show(diameter)} is not a diameter in pixels"
    return None


def _show(value: Any) -> str:
    """A metadata value as it is written in the file (a string keeps its quotes), cut short."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _read_torch_state_dict(path: Path) -> dict[str, torch.Tensor]:
    import pickle

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch's message advises weights_only=False, which would run the file's code: never pass that on
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        if found is None:
            raise ModelFileError(f"{path}: not a readable PyTorch file (not a pickled state dict)") from None
        raise ModelFileError(f"{path}: refused: it holds pickled Python objects ({found.group(1)}), which could run "
                             "code; only plain tensors are read. Save the weights as .safetensors instead") from None
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable PyTorch file ({type(exc).__name__})") from None
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ModelFileError(f"{path}: does not hold a state dict of tensors")
    return obj


def _assemble(path: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any]) -> CellModel:
    try:
        model = CellModel.create(architecture=metadata.get("architecture"),
                                 in_channels=int(metadata.get("in_channels", 1)))
    except MemoryError:
        raise ModelFileError(f"{path}: the architecture it describes does not fit in memory") from None
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
