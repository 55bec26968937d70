"""bioimage.io model packages (spec format 0.5): export a `CellModel`, and load such a package back.

An exported package (a folder or a ``.zip``) holds ``rdf.yaml``; the weights as a PyTorch state dict, whose
architecture is ``napari_cell_unet.model.bioimageio_arch:CellUNet(**kwargs)``, and as TorchScript (for deepImageJ,
QuPath, ilastik, which need no Python package of ours); a test input (a real image crop, raw intensities) and the
test output our own inference path computes from it; a cover; the model card as documentation. The description says
what our inference does: the input's ``[low, high]`` percentiles become 0 and 1 (``scale_range``), the two output
channels ``cell`` and ``border`` are ``sigmoid``s of the network's logits. Thresholds, the cell diameter and the full
metadata are in ``config.napari_cell_unet``, from which `from_bioimageio` restores the `CellModel`.

``bioimageio.spec`` (validation) and ``bioimageio.core`` (`run_bioimageio_test`) are imported only when exporting or
testing; loading needs neither (plain YAML and ``torch.load(weights_only=True)``: nothing is unpickled).
"""

from __future__ import annotations

import datetime
import io
import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..io._atomic import atomic_path, check_output_folder
from .cell_model import CellModel
from .files import ModelFileError, _assemble, library_versions, metadata_problem

ARCHITECTURE_MODULE = "napari_cell_unet.model.bioimageio_arch"
ARCHITECTURE_CALLABLE = "CellUNet"
CONFIG_KEY = "napari_cell_unet"
RDF_NAME = "rdf.yaml"
TEST_SIZE = 256
INPUT_ID, OUTPUT_ID = "raw", "probabilities"

TRAINING_DATA_CITATIONS = [
    {"text": "Tsai H.-F., Gajda J., Sloan T. F. W., Rares A., Shen A. Q. Usiigaci: instance-aware cell tracking in "
             "stain-free phase contrast microscopy enabled by machine learning. SoftwareX 9 (2019) 230-237. "
             "Training data: Usiigaci phase-contrast sets (MIT, (c) 2018 OIST).",
     "doi": "10.1016/j.softx.2019.02.007"},
    {"text": "Caicedo J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science Bowl. "
             "Nature Methods 16 (2019) 1247-1253. Training data: DSB 2018 stage 1 nuclei (BBBC038, CC0).",
     "doi": "10.1038/s41592-019-0612-7"},
]


class BioimageioError(ModelFileError):
    """A bioimage.io package that cannot be written, read, or is not of our architecture (one line)."""


# ---------------------------------------------------------------------------------------------------- loading

def is_bioimageio_package(path: str | os.PathLike) -> bool:
    """Whether `path` looks like a bioimage.io package: a folder with rdf.yaml, a .zip, or an rdf/bioimageio yaml."""
    path = Path(path)
    if path.is_dir():
        return (path / RDF_NAME).is_file() or any(path.glob("*bioimageio.yaml"))
    return path.suffix == ".zip" or path.name == RDF_NAME or path.name.endswith("bioimageio.yaml")


def from_bioimageio(path: str | os.PathLike) -> CellModel:
    """The `CellModel` of a bioimage.io package exported by `export_bioimageio` (folder, .zip or its rdf.yaml).

    Raises `BioimageioError` for anything else, including valid packages of other architectures.
    """
    path = Path(path)
    package = _Package(path)
    try:
        return _from_package(path, package)
    finally:
        package.close()


def _from_package(path: Path, package: "_Package") -> CellModel:
    import torch

    rdf = package.rdf()
    weights = rdf.get("weights") if isinstance(rdf, dict) else None
    state_entry = weights.get("pytorch_state_dict") if isinstance(weights, dict) else None
    if not isinstance(state_entry, dict):
        raise BioimageioError(f"{path}: a bioimage.io package without pytorch_state_dict weights; only packages "
                              "exported by napari-cell-unet can be loaded")
    arch = state_entry.get("architecture") or {}
    where = f"{arch.get('import_from') or arch.get('source')}:{arch.get('callable')}"
    if arch.get("import_from") != ARCHITECTURE_MODULE or arch.get("callable") != ARCHITECTURE_CALLABLE:
        raise BioimageioError(f"{path}: a bioimage.io package of another architecture ({where[:80]}); only "
                              "packages exported by napari-cell-unet can be loaded")
    config = (rdf.get("config") or {}).get(CONFIG_KEY)
    if not isinstance(config, dict) or not isinstance(config.get("metadata"), dict):
        raise BioimageioError(f"{path}: a napari-cell-unet bioimage.io package without config.{CONFIG_KEY}.metadata")
    metadata = dict(config["metadata"])
    kwargs = arch.get("kwargs") or {}
    metadata["architecture"] = kwargs.get("architecture", metadata.get("architecture"))
    metadata["in_channels"] = kwargs.get("in_channels", metadata.get("in_channels", 1))
    problem = metadata_problem(metadata)
    if problem:
        raise BioimageioError(f"{path}: {problem}")
    data = package.read(str(state_entry.get("source", "")))
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError for anything but plain tensors: refused, never retried unsafely
        raise BioimageioError(f"{path}: the state dict weights are not plain tensors ({type(exc).__name__})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BioimageioError(f"{path}: the state dict weights do not hold a dict of tensors")
    model = _assemble(path, state, metadata)
    model.metadata["source"] = str(path)
    return model


class _Package:
    """Files of a package folder or zip, read by name (relative to rdf.yaml), never outside the package."""

    def __init__(self, path: Path):
        self.path = path
        if not path.exists():
            raise BioimageioError(f"{path}: no such model file or package")
        if path.is_dir():
            names = [RDF_NAME] + sorted(p.name for p in path.glob("*bioimageio.yaml"))
            found = [n for n in names if (path / n).is_file()]
            if not found:
                raise BioimageioError(f"{path}: a folder without {RDF_NAME}: not a bioimage.io package")
            self.root, self.rdf_name, self.zip = path, found[0], None
        elif path.suffix == ".zip":
            try:
                self.zip = zipfile.ZipFile(path)
            except (zipfile.BadZipFile, OSError) as exc:
                raise BioimageioError(f"{path}: not a readable zip file ({type(exc).__name__})") from None
            names = self.zip.namelist()
            found = [n for n in names if n == RDF_NAME or (n.endswith("bioimageio.yaml") and "/" not in n)]
            if not found:
                raise BioimageioError(f"{path}: a zip without {RDF_NAME}: not a bioimage.io package")
            self.root, self.rdf_name = None, found[0]
        else:
            self.root, self.rdf_name, self.zip = path.parent, path.name, None

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()

    def read(self, name: str) -> bytes:
        if not name or "://" in name or name.startswith(("/", "\\")) or ".." in Path(name).parts:
            raise BioimageioError(f"{self.path}: file {name[:60]!r} is not inside the package")
        try:
            if self.zip is not None:
                return self.zip.read(name)
            return (self.root / name).read_bytes()
        except (KeyError, OSError):
            raise BioimageioError(f"{self.path}: the package lacks its file {name[:60]!r}") from None

    def rdf(self) -> dict:
        import yaml

        try:
            rdf = yaml.safe_load(self.read(self.rdf_name))
        except yaml.YAMLError as exc:
            raise BioimageioError(f"{self.path}: {self.rdf_name} is not valid YAML ({type(exc).__name__})") from None
        if not isinstance(rdf, dict) or rdf.get("type") != "model":
            raise BioimageioError(f"{self.path}: {self.rdf_name} does not describe a bioimage.io model")
        return rdf


# ---------------------------------------------------------------------------------------------------- export

def export_bioimageio(model: CellModel, output: str | os.PathLike, image: np.ndarray | None = None,
                      torchscript: bool = True, overwrite: bool = False, documentation: str | None = None,
                      validate: bool = True) -> Path:
    """Write `model` as a bioimage.io package: a ``.zip`` when `output` ends in .zip, else a folder.

    `image`: a real 2-D (or H x W x RGB) image whose centre crop (up to 256 x 256) becomes the test input, and whose
    output through `inference.predict_probabilities` becomes the test output (default: the bundled nuclei sample).
    `validate` checks the description with bioimageio.spec before anything is written (raises `BioimageioError`).
    Written atomically: an existing output is replaced only with `overwrite`, and only once the new one is complete.
    """
    output = Path(output)
    _check_output(output, overwrite)
    check_output_folder(output.parent)
    with tempfile.TemporaryDirectory(prefix=".cell-unet-bioimageio-", dir=output.parent) as staging:
        staging = Path(staging) / "package"
        staging.mkdir()
        _write_package_files(model, staging, image, torchscript, documentation)
        if validate:
            _validate(staging)
        if output.suffix == ".zip":
            with atomic_path(output, overwrite=overwrite) as tmp:
                with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
                    for name in [RDF_NAME] + sorted(set(os.listdir(staging)) - {RDF_NAME}):
                        zf.write(staging / name, name)
        else:
            _replace_folder(staging, output, overwrite)
    return output


def run_bioimageio_test(path: str | os.PathLike, weight_format: str | None = None, devices: list[str] | None = None):
    """bioimageio.core's own test of a package (format + reproducing the test output); its ValidationSummary."""
    try:
        from bioimageio.core import test_model
    except ImportError:
        raise BioimageioError("testing a bioimage.io package needs bioimageio.core: "
                              "pip install 'napari-cell-unet[bioimageio]'") from None

    return test_model(str(path), weight_format=weight_format, devices=devices or ["cpu"])


def _check_output(output: Path, overwrite: bool) -> None:
    from ..errors import OutputError, OutputExistsError

    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: already exists (pass overwrite=True / --overwrite to replace it)")
    if output.suffix == ".zip" and output.is_dir():
        raise OutputError(f"{output}: is a folder, not a file")
    if output.suffix != ".zip" and output.exists() and not output.is_dir():
        raise OutputError(f"{output}: is a file, not a folder (name the output ….zip to write a zip file)")


def _replace_folder(staging: Path, output: Path, overwrite: bool) -> None:
    """Move the finished `staging` folder to `output`; an old `output` is removed only after the move."""
    new = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    new.rmdir()
    shutil.move(str(staging), new)
    old = None
    if output.exists():
        if not overwrite:  # appeared meanwhile
            shutil.rmtree(new)
            _check_output(output, overwrite)
        old = output.with_name(f".{output.name}.old-{os.getpid()}")
        os.replace(output, old)
    os.replace(new, output)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_package_files(model: CellModel, folder: Path, image: np.ndarray | None, torchscript: bool,
                         documentation: str | None) -> dict:
    import torch
    import yaml

    from .architecture import OUTPUT_CLASSES

    metadata = {**model.metadata, "versions": library_versions()}
    metadata.pop("source", None)
    metadata = json.loads(json.dumps(metadata, default=str))  # plain YAML-able types (torch's version is a str subclass)
    arch = metadata.get("architecture") or {}
    kwargs = {"architecture": arch, "in_channels": model.in_channels, "n_classes": len(model.classes)}
    network = _float_network(model)

    test_input, test_output = _test_tensors(model, image)
    np.save(folder / "test_input.npy", test_input)
    np.save(folder / "test_output.npy", test_output)
    _write_cover(folder / "cover.png", test_input, test_output)
    import tifffile  # sample tensors: the same crop and output as TIFF, for people and imageio-based viewers

    tifffile.imwrite(folder / "sample_input.tif", np.squeeze(test_input, axis=0 if model.in_channels > 1 else (0, 1)))
    tifffile.imwrite(folder / "sample_output.tif", test_output[0])
    torch.save({k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}, folder / "weights.pt")
    if torchscript:
        import warnings

        with torch.no_grad(), warnings.catch_warnings():  # torch deprecates jit (FutureWarning); tools still need it
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            traced = torch.jit.trace(network, torch.from_numpy(test_input), check_trace=False)
        traced.save(str(folder / "weights_torchscript.pt"))
    (folder / "README.md").write_text(documentation or _documentation(model), encoding="utf-8")

    norm, post = model.normalization, model.postprocessing
    multiple = 2 ** int(arch.get("encoder_depth", 5))
    space = [{"type": "space", "id": a, "size": {"min": multiple, "step": multiple}} for a in ("y", "x")]
    out_space = [{"type": "space", "id": a, "size": {"tensor_id": INPUT_ID, "axis_id": a}} for a in ("y", "x")]
    channel_names = ["gray"] if model.in_channels == 1 else [f"channel{i}" for i in range(model.in_channels)]
    torch_version = str(torch.__version__).split("+")[0]
    weights: dict[str, Any] = {"pytorch_state_dict": {
        "source": "weights.pt", "pytorch_version": torch_version,
        "architecture": {"callable": ARCHITECTURE_CALLABLE, "import_from": ARCHITECTURE_MODULE, "kwargs": kwargs},
    }}
    if torchscript:
        weights["torchscript"] = {"source": "weights_torchscript.pt", "pytorch_version": torch_version,
                                  "parent": "pytorch_state_dict"}
    rdf = {
        "type": "model",
        "format_version": _format_version(),
        "name": _name(model.name),
        "description": "Cell and border probability maps of a U-Net (segmentation-models-pytorch) for cells in "
                       "microscopy images; napari-cell-unet turns them into instances (seeded watershed).",
        "authors": [{"name": "napari-cell-unet developers"}],
        "cite": TRAINING_DATA_CITATIONS,
        "license": "BSD-3-Clause",
        "documentation": {"source": "README.md"},
        "covers": [{"source": "cover.png"}],
        "tags": ["segmentation", "instance-segmentation", "cells", "nuclei", "phase-contrast", "fluorescence",
                 "unet", "2d", "pytorch", "napari-cell-unet"],
        "timestamp": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "inputs": [{
            "id": INPUT_ID,
            "description": f"raw image (any scale); its {norm['low']:g} and {norm['high']:g} percentiles become 0 and 1",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": channel_names}] + space,
            "test_tensor": {"source": "test_input.npy"},
            "sample_tensor": {"source": "sample_input.tif"},
            "data": {"type": "float32"},
            "preprocessing": [{"id": "scale_range", "kwargs": {
                "axes": ["y", "x"], "min_percentile": float(norm["low"]), "max_percentile": float(norm["high"])}}],
        }],
        "outputs": [{
            "id": OUTPUT_ID,
            "description": "probabilities of 'cell' (full cell extent) and 'border' (~2 px outline straddling "
                           "each cell edge)",
            "axes": [{"type": "batch"}, {"type": "channel", "channel_names": list(OUTPUT_CLASSES)}] + out_space,
            "test_tensor": {"source": "test_output.npy"},
            "sample_tensor": {"source": "sample_output.tif"},
            "data": {"type": "float32", "range": [0.0, 1.0]},
            "postprocessing": [{"id": "sigmoid"}],
        }],
        "weights": weights,
        "config": {
            CONFIG_KEY: {
                "cell_diameter": float(metadata.get("cell_diameter", 50)),
                "cell_threshold": float(post["cell_threshold"]),
                "border_threshold": float(post["border_threshold"]),
                "min_size": int(post["min_size"]),
                "min_size_fraction": float(post["min_size_fraction"]),
                "merge_threshold": float(post["merge_threshold"]),
                "split_border_threshold": float(post["split_border_threshold"]),
                "split_seed_fraction": float(post["split_seed_fraction"]),
                "metadata": metadata,
            },
            "bioimageio": {"architecture_type": "U-Net", "modality": "phase contrast, fluorescence",
                           "target_structure": ["cells", "nuclei"], "task": "instance segmentation",
                           "model_parameter_count": int(sum(p.numel() for p in network.parameters()))},
        },
    }
    (folder / RDF_NAME).write_text(yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return rdf


def _float_network(model: CellModel):
    import copy

    network = copy.deepcopy(model.network).to("cpu").float()
    network.eval()
    return network


def _test_tensors(model: CellModel, image: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(1, C, h, w) raw crop and (1, 2, h, w) probabilities from `inference.predict_probabilities` (CPU, fp32)."""
    from ..inference import predict_probabilities
    from ..inference.normalize import is_rgb, to_model_channels
    from ..inference.predict import size_multiple

    if image is None:
        from .._sample_data import NUCLEI_IMAGE, sample_path
        from ..io.images import read_image

        image = read_image(sample_path(NUCLEI_IMAGE))
    image = np.asarray(image)
    rgb = is_rgb(image.shape)
    if image.ndim != (3 if rgb else 2):
        raise BioimageioError(f"the test image must be 2-D (or 2-D colour), not of shape {image.shape}")
    multiple = size_multiple(model.metadata.get("architecture") or {})
    h, w = ((min(s, TEST_SIZE) // multiple) * multiple for s in image.shape[:2])
    if not h or not w:
        raise BioimageioError(f"the test image {image.shape[:2]} is smaller than {multiple} px")
    top, left = (image.shape[0] - h) // 2, (image.shape[1] - w) // 2
    crop = image[top:top + h, left:left + w]
    channels = to_model_channels(crop, model.in_channels, rgb).astype(np.float32)  # (C, h, w), raw intensities
    image2d = channels[0] if model.in_channels == 1 else np.moveaxis(channels, 0, -1)
    probs = predict_probabilities(image2d, _float_model(model), device="cpu", tile_size=max(h, w), overlap=0,
                                  precision="fp32", rgb=False if model.in_channels == 1 else None)
    return channels[None], np.asarray(probs, dtype=np.float32)[None]


def _float_model(model: CellModel) -> CellModel:
    return CellModel(_float_network(model), dict(model.metadata))


def _write_cover(path: Path, test_input: np.ndarray, test_output: np.ndarray) -> None:
    from PIL import Image

    raw = test_input[0, 0]
    lo, hi = np.percentile(raw, [1, 99.8])
    gray = np.clip((raw - lo) / max(hi - lo, 1e-12), 0, 1)
    rgb = np.stack([gray] * 3, axis=-1)
    cell, border = test_output[0, 0], test_output[0, 1]
    overlay = np.stack([border, cell, np.zeros_like(cell)], axis=-1)
    both = np.concatenate([rgb, overlay], axis=1)
    Image.fromarray((both * 255).astype(np.uint8)).save(path)


def _documentation(model: CellModel) -> str:
    norm, post = model.normalization, model.postprocessing
    training = json.dumps(model.metadata.get("training") or {}, indent=2, default=str)
    return f"""# {model.name}

A napari-cell-unet model: a segmentation-models-pytorch U-Net that predicts two independent sigmoid maps of a 2-D
microscopy image, **cell** (full cell extent) and **border** (a ~2 px outline straddling each cell edge).

## Input and output
- Input `{INPUT_ID}`: (batch, channel, y, x), {model.in_channels} channel(s), any intensity scale; sides multiples of
  {2 ** int((model.metadata.get('architecture') or {}).get('encoder_depth', 5))}. Preprocessing: the
  {norm['low']} and {norm['high']} percentiles of each image become 0 and 1 (not clipped).
- Output `{OUTPUT_ID}`: (batch, channel, y, x), channels `cell`, `border`, in [0, 1] (sigmoid of the logits).
- Cell size: trained with cells about **{float(model.metadata.get('cell_diameter', 50)):g} px** across; zoom images so
  their cells are about that size for the best results (napari-cell-unet does this itself with `diameter="auto"`).

## From probabilities to cells
napari-cell-unet: seeds = connected components of (cell > {post['cell_threshold']} and border <
{post['border_threshold']}), grown back into the cell mask (cell > {post['cell_threshold']}) by watershed;{_split_sentence(post)}{_merge_sentence(post)} objects
smaller than {post['min_size']} px{_fraction_sentence(post)} are removed. These numbers are in `config.{CONFIG_KEY}`.

## Use it
- In napari-cell-unet: `load_model("this_package.zip")`, `cell-unet segment --model this_package.zip ...`.
- Anywhere bioimage.io models run (deepImageJ, ilastik, QuPath, bioimageio.core): the TorchScript weights need no
  napari-cell-unet; the state dict weights need `pip install napari-cell-unet` for their architecture.

## Training data (please cite)
- Usiigaci phase-contrast cells (MIT, (c) 2018 OIST): Tsai et al., SoftwareX 2019, doi:10.1016/j.softx.2019.02.007.
- Data Science Bowl 2018 nuclei (CC0): Caicedo et al., Nature Methods 2019, doi:10.1038/s41592-019-0612-7.

## Training record
```json
{training}
```

# Validation
The test input is a real image crop; the test output is what napari-cell-unet's own inference
(`predict_probabilities`, CPU, float32) computes for it, and `bioimageio.core`'s test reproduces it from this package.
Segmentation scores on held-out data (instance F1, pixel IoU, COCO AP), where measured, are in the training record
above and in the napari-cell-unet README's model card (`cell-unet evaluate` recomputes them on your annotations).

## Limitations
Not trained on bright field, DIC, dense confluent monolayers or 3-D data; see the napari-cell-unet README's model
card for test scores.
"""


def _name(name: str) -> str:
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_+- ()")
    cleaned = "".join(c if c in allowed else " " for c in name).strip()
    cleaned = " ".join(cleaned.split())[:128]
    return cleaned if len(cleaned) >= 5 else f"napari-cell-unet {cleaned}".strip()


def _format_version() -> str:
    try:
        from bioimageio.spec.model.v0_5 import ModelDescr

        return str(ModelDescr.implemented_format_version)
    except ImportError:
        return "0.5.4"


def _validate(folder: Path) -> None:
    """The description checked by bioimageio.spec (format only, no inference); `BioimageioError` if invalid."""
    try:
        from bioimageio.spec import ValidationContext, load_description
    except ImportError:
        raise BioimageioError("exporting to bioimage.io needs bioimageio.spec: "
                              "pip install 'napari-cell-unet[bioimageio]'") from None
    with ValidationContext(perform_io_checks=True):
        descr = load_description(folder / RDF_NAME, format_version="latest")
    status = descr.validation_summary.status
    if status not in ("passed", "valid-format"):
        errors = descr.validation_summary.details[0].errors if descr.validation_summary.details else []
        if any("index_key" in e.msg for e in errors):  # bioimageio.spec <= 0.5.12 under pydantic >= 2.14
            import pydantic

            raise BioimageioError(f"bioimageio.spec cannot validate under pydantic {pydantic.VERSION}: "
                                  "pip install 'napari-cell-unet[bioimageio]' (pydantic<2.14)")
        first = "; ".join(f"{'.'.join(map(str, e.loc))}: {e.msg}" for e in errors[:3]) or status
        raise BioimageioError(f"the exported description is not valid bioimage.io: {first[:200]}")


def _fraction_sentence(post: dict) -> str:
    fraction = float(post.get("min_size_fraction", 0.0))
    return (f" or than {fraction:g} of a cell's area (pi / 4 x the cell diameter squared, in the image's pixels)"
            if fraction > 0 else "")


def _split_sentence(post: dict) -> str:
    threshold, fraction = float(post["split_border_threshold"]), float(post["split_seed_fraction"])
    if not (0 < threshold < float(post["border_threshold"]) and fraction > 0):
        return ""
    return (f" an object holding two or more seeds under the stricter border threshold {threshold:g} that each cover"
            f" {fraction:g} of a cell's area is grown again from those seeds"
            f" (`inference.instances.split_by_strict_seeds`);")


def _merge_sentence(post: dict) -> str:
    threshold = float(post["merge_threshold"])
    if threshold <= 0:
        return ""
    return (f" touching objects whose contact has a mean border probability under {threshold:g} are merged"
            f" (`inference.instances.merge_weak_contacts`);")
