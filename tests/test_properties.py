"""Property-based tests (hypothesis): label images survive writing and reading unchanged; random bytes and
random mutations of real files raise nothing but documented errors (`CellUnetError`)."""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from conftest import LIVECELL_FRAME, SHARED_DATA, TINY_ARCHITECTURE, USIIGACI
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from napari_cell_unet.errors import CellUnetError
from napari_cell_unet.io import labels_to_coco, read_image, read_labels, write_labels_tiff
from napari_cell_unet.io.coco import CocoDataset, read_coco

# Deterministic by default (each property still sees dozens of inputs); CELL_UNET_HYPOTHESIS=hunt searches
# thousands of random ones.
_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("cell-unet", max_examples=25, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_CHECKS)
settings.register_profile("hunt", max_examples=2000, deadline=None, database=None, suppress_health_check=_CHECKS)
settings.load_profile(os.environ.get("CELL_UNET_HYPOTHESIS", "cell-unet"))


def _label_images(max_side: int = 24, stack: bool = False):
    dtypes = st.sampled_from([np.uint8, np.uint16, np.uint32])
    shapes = st.tuples(*([st.integers(1, 3)] if stack else []), st.integers(1, max_side), st.integers(1, max_side))
    return dtypes.flatmap(lambda dtype: arrays(dtype, shapes, elements=st.one_of(
        st.just(0), st.integers(1, 5), st.integers(0, int(np.iinfo(dtype).max)))))


@given(labels=_label_images(stack=False) | _label_images(stack=True))
def test_labels_survive_a_tiff_round_trip(labels):
    with tempfile.TemporaryDirectory() as folder:
        path = write_labels_tiff(Path(folder) / "labels.tif", labels)
        back = read_labels(path)
    assert back.shape == labels.shape
    np.testing.assert_array_equal(back, labels.astype(np.uint32))


@given(labels=_label_images())
def test_labels_survive_a_coco_rle_round_trip(labels):
    """Through JSON text, validation (RLE runs must cover the image) and pycocotools decoding."""
    coco = json.loads(json.dumps(labels_to_coco(labels)))
    dataset = CocoDataset("written.json", coco)
    np.testing.assert_array_equal(dataset.labels(0, annotation_ids=True), labels.astype(np.uint32))


@pytest.mark.filterwarnings("ignore:.*images not found")  # only labels are saved: no image files beside them
@given(labels=_label_images())
def test_labels_survive_the_napari_writers_and_readers(labels):
    """What a user does: save a Labels layer as TIFF or COCO from napari, open it again."""
    from napari_cell_unet import _reader, _writer

    with tempfile.TemporaryDirectory() as folder:
        tiff = _writer.write_labels_tiff(str(Path(folder) / "cells_labels.tif"), labels, {"name": "cells"})[0]
        coco = _writer.write_labels_coco(str(Path(folder) / "cells.json"), labels, {"name": "cells"})[0]
        (tiff_data, _, tiff_kind), = _reader.read_image_layers(tiff)
        (coco_data, _, coco_kind), = _reader.read_coco_layers(coco)
    assert tiff_kind == coco_kind == "labels"
    np.testing.assert_array_equal(tiff_data, labels.astype(np.uint32))
    np.testing.assert_array_equal(coco_data, labels.astype(np.uint32))


def _documented_only(action: Callable[[], object]) -> None:
    """The action succeeds or raises a CellUnetError with a one-line message; nothing else."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            action()
        except CellUnetError as exc:
            assert str(exc) and "\n" not in str(exc)


def _load_model(path: Path):
    from napari_cell_unet.model import load_model

    return load_model(path)


READERS: dict[str, Callable[[Path], object]] = {
    ".tif": read_image, ".png": read_image, ".json": lambda p: read_coco(p).labels(0),
    ".safetensors": _load_model, ".pth": _load_model,
}
MAGIC = {".tif": b"II*\x00", ".png": b"\x89PNG\r\n\x1a\n", ".json": b'{"images": [',
         ".safetensors": (200).to_bytes(8, "little") + b'{"__metadata__": {', ".pth": b"PK\x03\x04"}


@given(suffix=st.sampled_from(sorted(READERS)), with_magic=st.booleans(), content=st.binary(max_size=600))
def test_random_bytes_raise_only_documented_errors(suffix, with_magic, content):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"random{suffix}"
        path.write_bytes((MAGIC[suffix] if with_magic else b"") + content)
        _documented_only(lambda: READERS[suffix](path))


@pytest.fixture(scope="module")
def real_files(tmp_path_factory) -> dict[str, bytes]:
    """Small real files of every kind the package reads."""
    if not USIIGACI.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    import torch

    from napari_cell_unet.model import CellModel, save_model

    folder = tmp_path_factory.mktemp("real")
    torch.manual_seed(0)
    model = save_model(CellModel.create(architecture=dict(TINY_ARCHITECTURE)), folder / "tiny.safetensors")
    coco = json.loads((USIIGACI / "coco_rle.json").read_text())
    image_id = coco["images"][0]["id"]
    small = {"images": coco["images"][:1], "categories": coco["categories"],
             "annotations": [a for a in coco["annotations"] if a["image_id"] == image_id][:4]}
    dsb = SHARED_DATA / "dsb2018_nuclei"
    name = "93c5638e7e6433b5c9cc87c152bcbe28873d2f9d6a392cca0642520807542a77"
    return {".tif": LIVECELL_FRAME.read_bytes(), "labels.tif": (dsb / "labels" / f"{name}.tif").read_bytes(),
            ".png": (dsb / "images" / f"{name}.png").read_bytes(), ".json": json.dumps(small).encode(),
            ".safetensors": model.read_bytes()}


def _mutations(max_offset: int = 4096):
    """(kind, position fraction, bytes): overwrite, insert, delete or truncate, mostly in headers."""
    return st.lists(st.tuples(st.sampled_from(["overwrite", "insert", "delete", "truncate"]),
                              st.integers(0, max_offset), st.binary(min_size=1, max_size=8)), min_size=1, max_size=4)


def _mutate(content: bytes, mutations) -> bytes:
    data = bytearray(content)
    for kind, offset, payload in mutations:
        offset %= max(1, len(data))
        if kind == "overwrite":
            data[offset:offset + len(payload)] = payload
        elif kind == "insert":
            data[offset:offset] = payload
        elif kind == "delete":
            del data[offset:offset + len(payload)]
        else:
            del data[max(offset, 1):]
    return bytes(data)


@given(kind=st.sampled_from([".tif", "labels.tif", ".png", ".json", ".safetensors"]), mutations=_mutations())
def test_mutated_real_files_raise_only_documented_errors(real_files, kind, mutations):
    suffix = Path(kind).suffix or kind
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / f"mutated{suffix}"
        path.write_bytes(_mutate(real_files[kind], mutations))
        reader = read_labels if kind == "labels.tif" else READERS[suffix]
        _documented_only(lambda: reader(path))


def _json_values():
    return st.recursive(st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False)
                        | st.text(max_size=6), lambda inner: st.lists(inner, max_size=4)
                        | st.dictionaries(st.text(max_size=6), inner, max_size=4), max_leaves=8)


def _paths(value, prefix=()):
    """Every (path to a value) inside a JSON document."""
    yield prefix
    children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, child in children:
        yield from _paths(child, (*prefix, key))


@given(data=st.data())
def test_coco_with_any_value_replaced_raises_only_documented_errors(real_files, data):
    """Structural mutations: any one value anywhere in a real COCO file becomes any other JSON value."""
    document = json.loads(real_files[".json"])
    paths = [p for p in _paths(document) if p]
    target = data.draw(st.sampled_from(paths))
    parent = document
    for key in target[:-1]:
        parent = parent[key]
    parent[target[-1]] = data.draw(_json_values())
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "mutated.json"
        path.write_text(json.dumps(document))

        def read_everything():
            dataset = read_coco(path)
            for i in range(len(dataset)):
                dataset.labels(i)
            dataset.annotation_table()

        _documented_only(read_everything)
