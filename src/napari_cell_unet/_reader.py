"""npe2 reader adapters: TIFF/PNG images and masks, COCO (LIVECell) JSON, dataset folders, OME-Zarr pyramids
(the `<stem>_labels.ome.zarr` that `cell-unet batch --zarr-above` writes).

Each ``get_*_reader`` returns None for paths it does not claim; the returned reader raises a
``CellUnetFileError`` (one line: file and problem) for claimed files it cannot read.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .io import images as image_io
from .io.coco import CocoDataset, paused_garbage_collection, read_coco
from .io.dataset import DatasetPair, find_dataset_pairs, is_dataset_folder
from .io.errors import DatasetFolderError, ImageFileError
from .io.stacks import common_shape, lazy_stack

LayerData = tuple[Any, dict, str]
Reader = Callable[[Any], list[LayerData]]


def get_tiff_reader(path: str | list[str]) -> Reader | None:
    return _for_each_path(path, _claims_image_file, read_image_layers)


def get_coco_reader(path: str | list[str]) -> Reader | None:
    return _for_each_path(path, lambda p: p.suffix.lower() == ".json" and p.is_file(), read_coco_layers)


def get_dataset_reader(path: str | list[str]) -> Reader | None:
    return _for_each_path(path, lambda p: p.is_dir() and is_dataset_folder(p), read_dataset_layers)


def get_ome_zarr_reader(path: str | list[str]) -> Reader | None:
    return _for_each_path(path, _claims_ome_zarr, read_ome_zarr_layers)


def _claims_ome_zarr(path: Path) -> bool:
    return path.suffix.lower() == ".zarr" and path.is_dir() and (
        (path / ".zattrs").is_file() or (path / "zarr.json").is_file())


def read_ome_zarr_layers(path: str | Path) -> list[LayerData]:
    """One lazy multiscale layer (Labels when the group says `image-label`): napari reads only what it shows."""
    import dask.array as da
    import zarr

    path = Path(path)
    try:
        root = zarr.open_group(str(path), mode="r")
        datasets = root.attrs["multiscales"][0]["datasets"]
        levels = [da.from_zarr(root[d["path"]]) for d in datasets]
    except Exception as exc:  # zarr raises many types for broken stores
        raise ImageFileError(path, f"cannot read this OME-Zarr ({type(exc).__name__}: {exc})") from None
    kind = "labels" if "image-label" in root.attrs or path.name.endswith("_labels.ome.zarr") else "image"
    name = path.name[:-len(".ome.zarr")] if path.name.endswith(".ome.zarr") else path.stem
    meta = {"name": name.replace("_labels", " labels"), "multiscale": len(levels) > 1}
    return [(levels if len(levels) > 1 else levels[0], meta, kind)]


def read_image_layers(path: str | Path) -> list[LayerData]:
    """One Image layer, or a Labels layer for masks named by convention (labels/ folder, *_mask.tif...)."""
    path = Path(path)
    image = image_io.open_image(path)
    kwargs: dict[str, Any] = {"name": image_io.file_stem(path), "metadata": {"path": str(path), "axes": image.axes}}
    scale = image.scale[:-1] if (image.scale and image.rgb) else image.scale
    if scale:
        kwargs["scale"] = scale
    if image_io.is_labels_path(path) and _is_integer(image.data.dtype) and not image.rgb:
        data = image.data if image.lazy else image_io.as_labels(np.asarray(image.data), path)
        return [(data, kwargs, "labels")]
    kwargs["rgb"] = image.rgb
    return [(image.data, kwargs, "image")]


def read_coco_layers(path: str | Path) -> list[LayerData]:
    """Labels (annotation ids as label values) and, when the files are found, the images; many images
    become lazily decoded stacks."""
    with paused_garbage_collection():
        return _coco_layers(Path(path))


def _coco_layers(path: Path) -> list[LayerData]:
    dataset = read_coco(path, lazy=True)
    if len(dataset) == 0:
        raise ImageFileError(path, "COCO file lists no images")
    found = [dataset.image_path(i) is not None for i in range(len(dataset))]
    _warn_missing_images(dataset, found)
    metadata = {"coco": {"path": str(path), "image_ids": dataset.image_ids,
                         "file_names": [dataset.file_name(i) for i in range(len(dataset))],
                         "categories": dataset.categories}}
    table = dataset.annotation_table()
    features = {"index": table["annotation_id"], **table}
    labels = _coco_labels(dataset)
    layers: list[LayerData] = []
    if any(found):
        image, limits = _coco_images(dataset, found)
        layers.append((image, {"name": f"{path.stem} image", "metadata": metadata, "contrast_limits": limits},
                       "image"))
    layers.append((labels, {"name": f"{path.stem} labels", "metadata": metadata, "features": features}, "labels"))
    return layers


def read_dataset_layers(path: str | Path) -> list[LayerData]:
    """Image, Labels and (if any) border layers of a dataset folder; several pairs become lazy stacks."""
    path = Path(path)
    pairs = find_dataset_pairs(path)
    _check_pair_shapes(pairs)
    metadata = {"dataset": {"path": str(path), "names": [p.name for p in pairs]}}
    first = image_io.read_image(pairs[0].image)
    image = _pair_stack(pairs, lambda p: p.image, image_io.read_image, first)
    labels = _pair_stack(pairs, lambda p: p.labels, image_io.read_labels, None)
    layers: list[LayerData] = [
        (image, {"name": f"{path.name} images", "metadata": metadata, "rgb": first.ndim == 3 and first.shape[-1] in (3, 4),
                 "contrast_limits": _limits(first)}, "image"),
        (labels, {"name": f"{path.name} labels", "metadata": metadata}, "labels"),
    ]
    if any(p.borders is not None for p in pairs):
        borders = _pair_stack(pairs, lambda p: p.borders, _read_border, None)
        layers.append((borders, {"name": f"{path.name} borders", "metadata": metadata, "opacity": 0.5}, "labels"))
    return layers


def _for_each_path(path: str | list[str], claims: Callable[[Path], bool], reader: Reader) -> Reader | None:
    paths = [Path(p) for p in (path if isinstance(path, (list, tuple)) else [path])]
    if not paths or not all(claims(p) for p in paths):
        return None
    if len(paths) == 1:
        return reader

    def read_all(paths_again: list[str]) -> list[LayerData]:
        return [layer for p in paths_again for layer in reader(p)]

    return read_all


def _claims_image_file(path: Path) -> bool:
    suffix = path.suffix.lower()
    if suffix in image_io.TIFF_SUFFIXES:
        return True
    return suffix == ".png" and image_io.is_labels_path(path)  # ordinary PNGs are left to napari


def _is_integer(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or dtype == np.bool_


def _limits(image: np.ndarray) -> tuple[float, float]:
    if image.dtype == np.uint8:
        return 0.0, 255.0
    low, high = float(np.min(image)), float(np.max(image))
    return (low, high) if high > low else (low, low + 1.0)


def _warn_missing_images(dataset: CocoDataset, found: list[bool]) -> None:
    missing = found.count(False)
    if missing:
        example = dataset.file_name(found.index(False))
        what = "showing labels only" if missing == len(found) else "missing slices are black"
        warnings.warn(f"{dataset.path.name}: {missing} of {len(found)} images not found (e.g. {example}); {what}. "
                      f"Searched: {', '.join(dataset.searched_folders)}", UserWarning, stacklevel=2)


def _coco_labels(dataset: CocoDataset):
    if len(dataset) == 1:
        return dataset.labels(0, annotation_ids=True)
    shape = common_shape([dataset.shape(i) for i in range(len(dataset))])
    return lazy_stack(lambda i: dataset.labels(i, annotation_ids=True), len(dataset), shape, np.uint32)


def _coco_images(dataset: CocoDataset, found: list[bool]):
    first = dataset.read_image(found.index(True))
    if len(dataset) == 1:
        return first, _limits(first)
    plane = common_shape([dataset.shape(i) for i in range(len(dataset))])
    shape = plane + first.shape[2:] if first.ndim == 3 and first.shape[-1] in (3, 4) else plane
    read = lambda i: dataset.read_image(i) if found[i] else None  # noqa: E731
    return lazy_stack(read, len(dataset), shape, first.dtype), _limits(first)


def _pair_stack(pairs: list[DatasetPair], file_of: Callable[[DatasetPair], Path | None],
                read: Callable[[Path], np.ndarray], first: np.ndarray | None):
    if first is None:
        first = read(file_of(pairs[0])) if file_of(pairs[0]) is not None else None
    if len(pairs) == 1 and first is not None:
        return first
    shapes = [image_io.image_shape(file_of(p)) for p in pairs if file_of(p) is not None]
    shape = common_shape(shapes)
    dtype = first.dtype if first is not None else np.uint8
    return lazy_stack(lambda i: read(file_of(pairs[i])) if file_of(pairs[i]) is not None else None,
                      len(pairs), shape, dtype)


def _check_pair_shapes(pairs: list[DatasetPair]) -> None:
    """Labels of another size than their image would be padded or cropped without a word: refuse."""
    for pair in pairs:
        image = image_io.image_shape(pair.image)[:2]
        for mask in (pair.labels, pair.borders):
            if mask is not None and image_io.image_shape(mask)[:2] != image:
                raise DatasetFolderError(mask, f"is {_size(image_io.image_shape(mask))} pixels but its image "
                                         f"{pair.image.name} is {_size(image)}")


def _size(shape: tuple[int, ...]) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) >= 2 else str(shape)


def _read_border(path: Path) -> np.ndarray:
    return (image_io.read_image(path) > 0).astype(np.uint8)
