"""Every bad input we know of, one row each: what was tried and what the user sees.

Each row runs in this process and must give either a documented one-line `CellUnetError` (naming the file,
argument or problem) or a correct result. The README's "Robustness" table is generated from these rows
(`test_readme_table_matches_the_rows`; run with CELL_UNET_UPDATE_README=1 to rewrite it).
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import os
import re
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tifffile
from conftest import REPO, TINY_ARCHITECTURE, load_small_set

from napari_cell_unet.errors import CellUnetError, OutputError, OutputExistsError
from napari_cell_unet.io import (CocoFormatError, DatasetFolderError, ImageFileError, open_image, read_coco,
                                 read_image, read_labels)


@dataclass(frozen=True)
class Bad:
    id: str
    kind: str  # README group
    tried: str  # the input, in the user's words
    sees: str  # what the user sees
    run: Callable[[Path], Any]  # does it, in an empty tmp_path
    error: type[BaseException] | None = None  # the documented error expected; None = a correct result
    match: str = ""  # regex the one-line message must contain
    check: Callable[[Any], bool] | None = None  # for a correct result


# ------------------------------------------------------------------ helpers
def _tif(path: Path, data: np.ndarray, **kwargs) -> Path:
    tifffile.imwrite(path, data, **kwargs)
    return path


def _bytes(path: Path, content: bytes) -> Path:
    path.write_bytes(content)
    return path


def _cells(shape=(64, 64), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A small synthetic image of bright discs and their labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.uint16)
    for k in range(1, 5):
        cy, cx = rng.integers(10, shape[0] - 10), rng.integers(10, shape[1] - 10)
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = k
    image = (labels > 0) * 100.0 + rng.normal(10, 3, shape)
    return image.astype(np.float32), labels


def _coco(tmp: Path, annotations: list, images: list | None = None, name: str = "a.json") -> Path:
    images = images if images is not None else [{"id": 1, "file_name": "a.tif", "height": 20, "width": 30}]
    path = tmp / name
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "cell"}]}))
    return path


def _square(ann_id=1, x=2, y=2, size=5, image_id=1) -> dict:
    return {"id": ann_id, "image_id": image_id, "category_id": 1,
            "segmentation": [[x, y, x + size, y, x + size, y + size, x, y + size]]}


def _rle(counts, size=(20, 30), ann_id=1) -> dict:
    return {"id": ann_id, "image_id": 1, "category_id": 1, "segmentation": {"size": list(size), "counts": counts}}


def _read_coco_labels(path: Path) -> np.ndarray:
    return read_coco(path).labels(0)


def _dataset(tmp: Path, pairs: dict[str, tuple[tuple[int, int] | None, tuple[int, int] | None]]) -> Path:
    for folder in ("images", "labels"):
        (tmp / "data" / folder).mkdir(parents=True)
    for name, (image_shape, label_shape) in pairs.items():
        if image_shape:
            _tif(tmp / "data" / "images" / f"{name}.tif", np.ones(image_shape, np.uint8))
        if label_shape:
            _tif(tmp / "data" / "labels" / f"{name}.tif", np.ones(label_shape, np.uint8))
    return tmp / "data"


@functools.lru_cache(maxsize=1)
def _tiny_model():
    import torch

    from napari_cell_unet.model import CellModel

    torch.manual_seed(0)
    return CellModel.create(architecture=dict(TINY_ARCHITECTURE), name="tiny")


def _segment(image, model=None, **options) -> np.ndarray:
    from napari_cell_unet.inference import segment

    return segment(image, model or _tiny_model(), device="cpu", tile_size=256, **options)


def _real_crop() -> np.ndarray:
    return load_small_set("set18")["image"][:256, :256].astype(np.float64)


def _model_file(tmp: Path, change: Callable[[dict], None] | None = None, **tensor_changes) -> Path:
    """A tiny model file, with its metadata edited by `change`."""
    from safetensors.torch import load_file, save_file

    from napari_cell_unet.model import save_model
    from napari_cell_unet.model.files import METADATA_KEY

    path = save_model(_tiny_model(), tmp / "m.safetensors")
    if change is None:
        return path
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        metadata = json.loads(f.metadata()[METADATA_KEY])
    change(metadata)
    save_file(load_file(str(path)), str(path), metadata={METADATA_KEY: json.dumps(metadata)})
    return path


def _load(path: Path):
    from napari_cell_unet.model import load_model

    return load_model(path)


class _Exploit:
    def __reduce__(self):
        return (os.mkdir, (os.environ.get("CELL_UNET_PICKLE_MARKER", "/nonexistent/pwned"),))


def _pickled_payload(tmp: Path) -> bool:
    import torch

    marker = tmp / "pwned"
    os.environ["CELL_UNET_PICKLE_MARKER"] = str(marker)
    torch.save({"conv.weight": torch.zeros(1), "payload": _Exploit()}, tmp / "evil.pth")
    try:
        _load(tmp / "evil.pth")
    except CellUnetError as exc:
        return not marker.exists() and "weights_only" not in str(exc) and "refused" in str(exc)
    return False


@dataclass
class CliRun:
    rc: int
    err: str


def _cli(*args: str) -> CliRun:
    from napari_cell_unet.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            rc = main([str(a) for a in args])
        except SystemExit as exc:  # argparse's own errors
            rc = int(exc.code)
    return CliRun(rc, err.getvalue())


def _cli_refused(pattern: str) -> Callable[[CliRun], bool]:
    def check(run: CliRun) -> bool:
        last = run.err.strip().splitlines()[-1] if run.err.strip() else ""
        return (run.rc == 2 and "error:" in last and re.search(pattern, last) is not None
                and "Traceback" not in run.err)

    return check


def _image_and_labels(tmp: Path) -> tuple[Path, Path]:
    image, labels = _cells()
    return _tif(tmp / "img.tif", image), _tif(tmp / "lab.tif", labels)


def _train_args(tmp: Path, *extra: str) -> list[str]:
    image, labels = _image_and_labels(tmp)
    return ["train", "--images", image, "--labels", labels, "--init", "scratch", "--output",
            tmp / "m.safetensors", *extra]


def _warns(pattern: str, action: Callable[[], Any]) -> Any:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = action()
    assert any(re.search(pattern, str(w.message)) for w in caught), [str(w.message) for w in caught]
    return result


def _timed(action: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def _last_slice_seconds(path: Path):
    image = open_image(path)
    start = time.perf_counter()
    np.asarray(image.data[-1])
    return image, time.perf_counter() - start


def _mixed_pages(path: Path, n: int) -> Path:
    with tifffile.TiffWriter(path) as tif:
        for k in range(n):
            tif.write(np.zeros((8, 8) if k % 2 else (4, 6), np.uint8), contiguous=False)
    return path


def _ome_with_pixel_size(path: Path, size: float) -> Path:
    tifffile.imwrite(path, np.ones((20, 30), np.uint16), ome=True,
                     metadata={"axes": "YX", "PhysicalSizeX": size, "PhysicalSizeY": size})
    return path


def _train(pairs, **config):
    from napari_cell_unet.training import TrainConfig, pairs_from_arrays, train

    images, labels = zip(*pairs)
    return train(pairs_from_arrays(list(images), list(labels)), _tiny_model(),
                 TrainConfig(steps=1, crop_size=64, batch_size=1, device="cpu", val_fraction=0),
                 **config)


# ------------------------------------------------------------------ the table
ROWS = [
    # ---- image files
    Bad("tiff-empty", "Image file", "empty (0-byte) `.tif`", "error: `<file>: cannot read TIFF (...)`",
        lambda t: open_image(_bytes(t / "e.tif", b"")), ImageFileError, r"e\.tif: cannot read TIFF"),
    Bad("tiff-truncated", "Image file", "TIFF cut in half", "error: `<file>: TIFF is truncated ...` / `corrupt or truncated TIFF`",
        lambda t: read_image(_bytes(t / "c.tif", (_tif(t / "w.tif", np.ones((5, 64, 64), np.uint16))
                                                  .read_bytes())[:20000])),
        ImageFileError, r"c\.tif: .*(truncated|corrupt)"),
    Bad("tiff-garbage", "Image file", "random bytes after a valid TIFF header", "error: `<file>: cannot read TIFF (...)`",
        lambda t: read_image(_bytes(t / "g.tif", b"II*\x00" + np.random.default_rng(0).bytes(4000))),
        ImageFileError, r"g\.tif: "),
    Bad("tiff-text", "Image file", "a text file named `.tif`", "error: `<file>: cannot read TIFF (...)`",
        lambda t: read_image(_bytes(t / "x.tif", b"hello, not an image\n")), ImageFileError, r"x\.tif: cannot read TIFF"),
    Bad("png-text", "Image file", "a text file named `.png`", "error: `<file>: cannot read image (...)`",
        lambda t: read_image(_bytes(t / "x.png", b"hello")), ImageFileError, r"x\.png: cannot read image"),
    Bad("tiff-complex", "Image file", "complex-valued TIFF", "error: `<file>: unsupported pixel type complex64`",
        lambda t: open_image(_tif(t / "c.tif", np.ones((8, 8), np.complex64))), ImageFileError,
        r"c\.tif: unsupported pixel type complex64"),
    Bad("tiff-bool", "Image file", "boolean (1-bit) TIFF", "opens; segments like a 0/1 image",
        lambda t: _segment(read_image(_tif(t / "b.tif", _cells()[1] > 0))),
        check=lambda labels: labels.shape == (64, 64)),
    Bad("tiff-float16", "Image file", "float16 TIFF", "opens as float32 (values kept)",
        lambda t: read_image(_tif(t / "h.tif", np.arange(64, dtype=np.float16).reshape(8, 8))),
        check=lambda data: data.dtype == np.float32 and data[7, 7] == 63),
    Bad("tiff-int64", "Image file", "int64 TIFF with values above 2**40", "opens; segments without losing precision",
        lambda t: _segment(read_image(_tif(t / "i.tif", (_cells()[0] * 1000).astype(np.int64) + 2**40))),
        check=lambda labels: labels.shape == (64, 64)),
    Bad("tiff-6d", "Image file", "6-D TIFF", "opens with every axis; each 2-D plane is segmented",
        lambda t: open_image(_tif(t / "d.tif", np.ones((2, 1, 2, 1, 8, 8), np.uint8))).data.shape,
        check=lambda shape: shape[-2:] == (8, 8) and np.prod(shape) == 256),
    Bad("tiff-two-channel", "Image file", "(H, W, 2) two-channel TIFF", "opens as 2 channels of H x W (was: H images 2 px wide)",
        lambda t: open_image(_tif(t / "two.tif", np.zeros((64, 48, 2), np.uint16))),
        check=lambda image: image.data.shape == (2, 64, 48) and image.axes == "CYX"),
    Bad("png-gray-alpha", "Image file", "gray + alpha PNG", "opens as the gray image (transparency dropped)",
        lambda t: open_image(_gray_alpha_png(t / "la.png")),
        check=lambda image: image.data.shape == (30, 40) and image.data.max() == 7),
    Bad("tiff-1x1", "Image file", "1 x 1 pixel image", "error: `image is constant (every pixel is 7): nothing to segment`",
        lambda t: _segment(read_image(_tif(t / "p.tif", np.full((1, 1), 7, np.uint8)))), CellUnetError, "constant"),
    Bad("tiff-1xN", "Image file", "1 x 300 pixel image", "labels of shape (1, 300)",
        lambda t: _segment(read_image(_tif(t / "r.tif", np.arange(300, dtype=np.uint16)[None]))),
        check=lambda labels: labels.shape == (1, 300)),
    Bad("tiff-100k-pages", "Image file", "100,000-page TIFF stack", "opens lazily in well under a second (memory-mapped)",
        lambda t: _timed(functools.partial(open_image, _tif(t / "s.tif", np.zeros((100_000, 4, 4), np.uint8),
                                                            photometric="minisblack"))),
        check=lambda r: r[0].lazy and r[0].data.shape == (100_000, 4, 4) and r[1] < 3),
    Bad("tiff-compressed-pages", "Image file", "5,000-page compressed TIFF stack",
        "opens lazily; the last slice decodes in a fraction of a second (was: 4 s to open lazily, 2 s per slice)",
        lambda t: _last_slice_seconds(_tif(t / "z.tif", np.zeros((5000, 8, 8), np.uint8), compression="zlib",
                                           photometric="minisblack")),
        check=lambda r: r[0].lazy and r[0].data.shape == (5000, 8, 8) and r[1] < 1),
    Bad("tiff-mixed-pages", "Image file", "5,000 pages of mixed shapes and types",
        "warning: only the first page is read; opens in milliseconds (was: 6 s for 5,000 pages, growing with the square of the count)",
        lambda t: _timed(functools.partial(_warns, "first page only", functools.partial(
            open_image, _mixed_pages(t / "m.tif", 5000)))),
        check=lambda r: r[0].data.shape == (4, 6) and r[1] < 1),
    Bad("pixel-size-negative", "Image file", "OME-TIFF with a negative pixel size", "warning: pixel size ignored; shown at size 1",
        lambda t: _warns("ignoring the pixel size", lambda: open_image(_ome_with_pixel_size(t / "n.ome.tif", -0.5))),
        check=lambda image: image.scale is None),
    Bad("pixel-size-absurd", "Image file", "OME-TIFF with a 1e30 µm pixel size", "warning: pixel size ignored; shown at size 1",
        lambda t: _warns("ignoring the pixel size", lambda: open_image(_ome_with_pixel_size(t / "n.ome.tif", 1e30))),
        check=lambda image: image.scale is None),
    Bad("huge-header", "Image file", "TIFF header claiming more pixels than memory holds",
        "error: `<file>: the image needs N GiB, more than this computer's M GiB of memory`",
        lambda t: read_image(_bytes(t / "big.tif", _huge_header())), ImageFileError, r"big\.tif: the image needs [0-9,]+ GiB, more than"),
    Bad("labels-float", "Image file", "label file with fractional values", "error: `<file>: not a label mask: pixel type float32 is not integer`",
        lambda t: read_labels(_tif(t / "l.tif", np.full((4, 4), 0.5, np.float32))), ImageFileError, r"l\.tif: not a label mask"),
    Bad("labels-negative", "Image file", "label file with negative values", "error: `<file>: not a label mask: it has negative values`",
        lambda t: read_labels(_tif(t / "l.tif", np.full((4, 4), -3, np.int16))), ImageFileError, "negative"),
    # ---- COCO
    Bad("coco-not-json", "COCO file", "invalid JSON", "error: `<file>: not valid JSON (...)`",
        lambda t: read_coco(_bytes(t / "a.json", b"{nope")), CocoFormatError, r"a\.json: not valid JSON"),
    Bad("coco-folder", "COCO file", "a folder named `.json`", "error: `<path>: cannot read (Is a directory)`",
        lambda t: read_coco((t / "a.json").mkdir() or t / "a.json"), CocoFormatError, r"a\.json: cannot read"),
    Bad("coco-not-coco", "COCO file", "JSON that is not COCO", "error: `<file>: not a COCO annotation file: needs 'images' and 'annotations'`",
        lambda t: read_coco(_bytes(t / "a.json", b'{"layers": []}')), CocoFormatError, "not a COCO annotation file"),
    Bad("coco-missing-keys", "COCO file", "image entry without height/width", "error: `<file>: image entry ... lacks id, file_name, height or width`",
        lambda t: read_coco(_coco(t, [], [{"id": 1, "file_name": "a.tif"}])), CocoFormatError, "lacks id, file_name"),
    Bad("coco-negative-coords", "COCO file", "polygon at negative coordinates", "error: `<file>: annotation 1 (image 1): polygon lies outside the 30x20 image`",
        lambda t: read_coco(_coco(t, [_square(x=-40)])), CocoFormatError, "outside the 30x20 image"),
    Bad("coco-huge-coords", "COCO file", "polygon at 1e12", "error: `... polygon lies outside the 30x20 image`",
        lambda t: read_coco(_coco(t, [_square(x=10**12)])), CocoFormatError, "outside"),
    Bad("coco-nan-coords", "COCO file", "polygon with NaN", "error: `<file>: not valid JSON (...)`",
        lambda t: read_coco(_bytes(t / "a.json", _coco(t, [_square()]).read_text().replace("[[2, 2,", "[[NaN, 2,").encode())),
        CocoFormatError, "not valid JSON"),
    Bad("coco-null-coords", "COCO file", "polygon with `null` or `true` among the numbers", "error: `... polygon must be a flat list of numbers ..., all finite`",
        lambda t: read_coco(_coco(t, [{**_square(), "segmentation": [[None, 2, 7, 2, 7, 7, True, 7]]}])),
        CocoFormatError, "flat list of numbers"),
    Bad("coco-degenerate-polygon", "COCO file", "polygon of 2 points (a line)", "skipped: that annotation gets no pixels",
        lambda t: _read_coco_labels(_coco(t, [{**_square(), "segmentation": [[1, 1, 5, 5]]}, _square(2, 10, 10)])),
        check=lambda labels: set(np.unique(labels)) == {0, 2}),
    Bad("coco-rle-wrong-size", "COCO file", "RLE whose size differs from the image", "error: `... RLE size [10, 10] differs from the image size [20, 30]`",
        lambda t: read_coco(_coco(t, [_rle([100], size=(10, 10))])), CocoFormatError, "RLE size"),
    Bad("coco-rle-short", "COCO file", "RLE whose runs do not cover the image", "error: `... RLE runs cover 100 pixels, the image has 600` (was: leftover memory as labels)",
        lambda t: read_coco(_coco(t, [_rle([50, 50])])), CocoFormatError, "RLE runs cover 100 pixels, the image has 600"),
    Bad("coco-rle-short-string", "COCO file", "compressed RLE string that is too short", "error: `... RLE runs cover N pixels, the image has 600`",
        lambda t: read_coco(_coco(t, [_rle("52203")])), CocoFormatError, "RLE runs cover"),
    Bad("coco-rle-garbage", "COCO file", "RLE counts string with invalid characters", "error: `... RLE counts is not a valid compressed COCO RLE string`",
        lambda t: read_coco(_coco(t, [_rle("\x01\x02!")])), CocoFormatError, "not a valid compressed"),
    Bad("coco-rle-type", "COCO file", "RLE counts that is an object", "error: `... RLE counts must be a list of integers or a compressed string`",
        lambda t: read_coco(_coco(t, [_rle({"a": 1})])), CocoFormatError, "RLE counts must be"),
    Bad("coco-duplicate-annotation", "COCO file", "two annotations with one id", "error: `<file>: annotation id 1 appears twice`",
        lambda t: read_coco(_coco(t, [_square(1), _square(1, 9)])), CocoFormatError, "annotation id 1 appears twice"),
    Bad("coco-duplicate-image", "COCO file", "two images with one id", "error: `<file>: image id 1 appears twice`",
        lambda t: read_coco(_coco(t, [], [{"id": 1, "file_name": f"{k}.tif", "height": 5, "width": 5} for k in "ab"])),
        CocoFormatError, "image id 1 appears twice"),
    Bad("coco-missing-image", "COCO file", "annotation for an image that does not exist", "error: `<file>: annotation 1 refers to image id 99, which is not in 'images'`",
        lambda t: read_coco(_coco(t, [_square(image_id=99)])), CocoFormatError, "refers to image id 99"),
    Bad("coco-huge-size", "COCO file", "image of 10^12 x 10^12 pixels", "error: `<file>: image 1 has invalid size ... (each side must be 1..1048576 pixels)` (was: MemoryError)",
        lambda t: read_coco(_coco(t, [], [{"id": 1, "file_name": "a.tif", "height": 10**12, "width": 10**12}])),
        CocoFormatError, "invalid size"),
    Bad("coco-huge-id", "COCO file", "annotation id 10^30", "error: `<file>: annotation id 1000...0 is not an integer in 1..2**32-1` (was: OverflowError)",
        lambda t: read_coco(_coco(t, [_square(10**30)])), CocoFormatError, "is not an integer"),
    Bad("coco-huge-image-id", "COCO file", "image id 10^30", "error: `<file>: image id ... is not an integer in 0..2**63-1`",
        lambda t: read_coco(_coco(t, [], [{"id": 10**30, "file_name": "a.tif", "height": 5, "width": 5}])),
        CocoFormatError, "image id"),
    Bad("coco-path-escape", "COCO file", "`file_name` of `../../secret.tif`", "error: `... points outside the JSON file's folder ('..'); refused` (was: read)",
        lambda t: read_coco(_coco(t, [], [{"id": 1, "file_name": "../../secret.tif", "height": 5, "width": 5}])),
        CocoFormatError, "points outside"),
    Bad("coco-path-absolute", "COCO file", "`file_name` of `/etc/passwd` or `C:\\x.tif`", "error: `... is an absolute path; only paths relative to the JSON file's folder are read`",
        lambda t: read_coco(_coco(t, [], [{"id": 1, "file_name": "C:\\x.tif", "height": 5, "width": 5}])),
        CocoFormatError, "absolute path"),
    Bad("coco-image-size-differs", "COCO file", "image file of another size than the COCO entry", "error: `<image>: image is 8x8 pixels but a.json says 30x20`",
        lambda t: (_tif(t / "a.tif", np.ones((8, 8), np.uint8)), read_coco(_coco(t, [_square()])).read_image(0)),
        ImageFileError, "image is 8x8 pixels but a.json says 30x20"),
    # ---- dataset folders
    Bad("dataset-unmatched", "Dataset folder", "images without labels and labels without images",
        "warning: `skipping 1 image(s) without labels (b...) and 1 label file(s) without an image (c...)`; the pairs open",
        lambda t: _warns("skipping", lambda: _dataset_pairs(_dataset(t, {"a": ((8, 8), (8, 8)), "b": ((8, 8), None),
                                                                            "c": (None, (8, 8))}))),
        check=lambda pairs: [p.name for p in pairs] == ["a"]),
    Bad("dataset-no-pairs", "Dataset folder", "no image has a label file", "error: `<folder>: no image in images/ has a label file of the same name in labels/`",
        lambda t: _dataset_pairs(_dataset(t, {"a": ((8, 8), None), "c": (None, (8, 8))})), DatasetFolderError, "no image"),
    Bad("dataset-mis-sized", "Dataset folder", "labels of another size than their image", "error: `<labels file>: is 9x8 pixels but its image a.tif is 8x8` (was: padded silently)",
        lambda t: _read_dataset(_dataset(t, {"a": ((8, 8), (8, 9))})), DatasetFolderError, r"a\.tif: is 9x8 pixels but its image"),
    Bad("dataset-bad-second-labels", "Dataset folder", "second labels file with fractional values",
        "opens; that slice shows no labels and a warning names the file (was: an error in Qt's event loop)",
        lambda t: _warns(r"slice 1 left empty: .*b\.tif: not a label mask", lambda: np.asarray(
            _read_dataset(_float_second_labels(t))[1][0][1])),
        check=lambda labels: labels.shape == (8, 8) and not labels.any()),
    # ---- arrays and layers
    Bad("array-nan", "Image array / layer", "all-NaN image", "error: `image has no finite pixel values (all NaN or Inf)`",
        lambda t: _segment(np.full((32, 32), np.nan)), CellUnetError, "no finite pixel values"),
    Bad("array-some-inf", "Image array / layer", "image with NaN and Inf pixels", "labels; NaN counts as background, Inf as bright",
        lambda t: _segment(_with_nan_and_inf(*_cells())), check=lambda labels: labels.shape == (64, 64)),
    Bad("array-zeros", "Image array / layer", "all-zero (constant) image", "error: `image is constant (every pixel is 0): nothing to segment`",
        lambda t: _segment(np.zeros((32, 32))), CellUnetError, "constant"),
    Bad("array-negative", "Image array / layer", "negative values", "labels as for the positive image",
        lambda t: _segment(-_cells()[0]), check=lambda labels: labels.shape == (64, 64)),
    Bad("array-above-2-24", "Image array / layer", "uint32 values around 2**30 (above float32 precision)", "normalised without merging neighbouring values",
        lambda t: _normalized_levels(np.arange(1024, dtype=np.uint32).reshape(32, 32) + 2**30),
        check=lambda levels: levels == 1024),
    Bad("array-1e296", "Image array / layer", "float64 values near 1e296", "the same cells as the image at normal scale (was: overflow, 0 cells)",
        # at the model's own size: on this 256-px crop the automatic size flips with rounding (8.5 vs 18.6 px)
        lambda t: (_segment(_real_crop() * 1e292, _default_model(), diameter=None).max(),
                   _segment(_real_crop(), _default_model(), diameter=None).max()),
        check=lambda counts: counts[0] == counts[1] > 5),
    Bad("array-rgba-gray-model", "Image array / layer", "RGBA image, gray model", "converted to gray; labels of shape (H, W)",
        lambda t: _segment(np.random.default_rng(0).integers(0, 255, (40, 40, 4), dtype=np.uint8)),
        check=lambda labels: labels.shape == (40, 40)),
    Bad("array-gray-rgb-model", "Image array / layer", "gray image, 3-channel model", "gray repeated on the 3 channels; labels",
        lambda t: _segment(_cells()[0], _tiny_rgb_model()), check=lambda labels: labels.shape == (64, 64)),
    Bad("array-5d", "Image array / layer", "5-D layer", "each 2-D plane segmented; labels of the same shape",
        lambda t: _segment(np.random.default_rng(0).random((2, 1, 2, 32, 32))),
        check=lambda labels: labels.shape == (2, 1, 2, 32, 32)),
    Bad("array-dask", "Image array / layer", "dask array", "labels, read plane by plane",
        lambda t: _segment(_dask(np.random.default_rng(0).random((2, 32, 32)))), check=lambda labels: labels.shape == (2, 32, 32)),
    Bad("array-odd-shape", "Image array / layer", "shape the network cannot take (37 x 301)", "padded internally; labels of shape (37, 301)",
        lambda t: _segment(np.random.default_rng(0).random((37, 301))), check=lambda labels: labels.shape == (37, 301)),
    # ---- model files
    Bad("model-pickle", "Model file", "pickled `.pth` with a code payload", "error: `<file>: refused: it holds pickled Python objects (posix.mkdir) ...`; nothing runs",
        _pickled_payload, check=bool),
    Bad("model-truncated", "Model file", "truncated `.safetensors`", "error: `<file>: not a readable safetensors file (...)`",
        lambda t: _load(_bytes(t / "m.safetensors", _model_file(t).read_bytes()[:5000])), CellUnetError, "not a readable safetensors"),
    Bad("model-text", "Model file", "a text file named `.safetensors`", "error: `<file>: not a readable safetensors file (...)`",
        lambda t: _load(_bytes(t / "m.safetensors", b"hello")), CellUnetError, r"m\.safetensors: not a readable"),
    Bad("model-version-string", "Model file", 'metadata `"format_version": "2"`', "error: `<file>: unknown model format_version \"2\"` (was: TypeError)",
        lambda t: _load(_model_file(t, lambda m: m.update(format_version="2"))), CellUnetError, "unknown model format_version"),
    Bad("model-version-newer", "Model file", "metadata `format_version: 2`", "error: `<file>: written by a newer napari-cell-unet (format 2); please upgrade`",
        lambda t: _load(_model_file(t, lambda m: m.update(format_version=2))), CellUnetError, "newer"),
    Bad("model-activation", "Model file", "metadata adding `activation: sigmoid`", "error: `<file>: metadata 'architecture' has settings this version refuses: activation` (was: a model that finds nothing)",
        lambda t: _load(_model_file(t, lambda m: m["architecture"].update(activation="sigmoid"))), CellUnetError, "activation"),
    Bad("model-channels-lie", "Model file", "metadata claiming 3 input channels for 1-channel weights", "error: `<file>: weights do not match the architecture: 1 tensors of the wrong shape (...)`",
        lambda t: _load(_model_file(t, lambda m: m.update(in_channels=3))), CellUnetError, "wrong shape"),
    Bad("model-classes-lie", "Model file", "metadata with other output classes", "error: `<file>: metadata classes [\"cell\"] are not [\"cell\", \"border\"]`",
        lambda t: _load(_model_file(t, lambda m: m.update(classes=["cell"]))), CellUnetError, "classes"),
    Bad("model-threshold-lie", "Model file", "metadata cell threshold 5", "error: `<file>: metadata cell_threshold 5 is not between 0 and 1`",
        lambda t: _load(_model_file(t, lambda m: m["postprocessing"].update(cell_threshold=5))), CellUnetError, "cell_threshold"),
    # ---- command line
    Bad("cli-o-is-file", "Command line", "`segment -o` naming an existing file", "error: `<path>: is a file, not a folder` (was: traceback)",
        lambda t: _cli("segment", _image_and_labels(t)[0], "-o", _bytes(t / "f", b"")), check=_cli_refused("is a file, not a folder")),
    Bad("cli-o-unwritable", "Command line", "`segment -o` in a place that cannot be written", "error: `<path>: cannot write in this folder (...)` (was: traceback)",
        lambda t: _cli("segment", _image_and_labels(t)[0], "-o", _bytes(t / "f", b"") / "sub"), check=_cli_refused("cannot write")),
    Bad("cli-existing-output", "Command line", "`train --output` naming an existing file", "error: `<file>: already exists (add --overwrite to replace it)`; the file is kept",
        lambda t: (_bytes(t / "m.safetensors", b"keep"), _cli(*_train_args(t)))[1], check=_cli_refused("already exists")),
    Bad("cli-train-unwritable", "Command line", "`train` into a folder that cannot be written", "error before training starts (was: the trained model lost at the end)",
        lambda t: _cli(*_train_args(t)[:-1], _bytes(t / "f", b"") / "m.safetensors"), check=_cli_refused("cannot write|not a folder")),
    Bad("cli-evaluate-unwritable", "Command line", "`evaluate --output` that cannot be written", "error before evaluating (was: the scores lost at the end)",
        lambda t: _cli("evaluate", "--images", _image_and_labels(t)[0], "--labels", t / "lab.tif", "--output",
                       _bytes(t / "f", b"") / "s.json"), check=_cli_refused("cannot write|not a folder")),
    Bad("cli-steps-0", "Command line", "`--steps 0` or `--steps -3`", "error: `argument --steps: must be >= 1, got 0` (was: one step)",
        lambda t: [_cli(*_train_args(t, "--steps", s)) for s in ("0", "-3")],
        check=lambda runs: all(_cli_refused("--steps: must be >= 1")(r) for r in runs)),
    Bad("cli-threshold", "Command line", "`--cell-threshold 5` or `nan`", "error: `argument --cell-threshold: must be in (0.0, 1.0)` (was: 0 cells, exit 0)",
        lambda t: [_cli("segment", "x.tif", "-o", t, "--cell-threshold", v) for v in ("5", "nan")],
        check=lambda runs: all(_cli_refused("--cell-threshold: must be")(r) for r in runs)),
    Bad("cli-val-fraction", "Command line", "`--val-fraction 0.99`", "error: `argument --val-fraction: must be in [0.0, 0.5]` (was: validation dropped silently)",
        lambda t: _cli(*_train_args(t, "--val-fraction", "0.99")), check=_cli_refused("--val-fraction: must be in")),
    Bad("cli-tile-size", "Command line", "`--tile-size 1`", "error: `argument --tile-size: must be in [256, 16384], got 1` (was: blamed on the overlap)",
        lambda t: _cli("segment", "x.tif", "-o", t, "--tile-size", "1"), check=_cli_refused("--tile-size: must be in")),
    Bad("cli-device", "Command line", "`--device tpu`", "error: `unknown device ...`",
        lambda t: _cli(*_train_args(t, "--device", "tpu")), check=_cli_refused("device")),
    Bad("cli-init-missing", "Command line", "`train --init missing.safetensors`", "error: `--init ...: no such model file` before loading any data",
        lambda t: _cli(*_train_args(t)[:-4], "--init", t / "missing.safetensors", "--output", t / "m.safetensors"),
        check=_cli_refused("no such model file")),
    # ---- training
    Bad("train-empty-labels", "Training data", "labels that are all 0", "error: `no cells to learn from: the labels of all 1 training image(s) are empty` (was: a model with F1 0.000)",
        lambda t: _train([(_cells()[0], np.zeros((64, 64), np.uint16))]), CellUnetError, "no cells to learn from"),
    Bad("train-shape", "Training data", "labels of another shape than the image", "error: `image 0: labels shape (32, 64) differs from image shape (64, 64)`",
        lambda t: _train([(_cells()[0], _cells()[1][:32])]), CellUnetError, "differs from image shape"),
    Bad("train-negative", "Training data", "negative labels", "error: `labels must not be negative`",
        lambda t: _train([(_cells()[0], _cells()[1].astype(np.int32) - 1)]), CellUnetError, "negative"),
    Bad("train-giant-cell", "Training data", "one cell covering the whole image", "trains (a model that learned one cell)",
        lambda t: _train([(_cells()[0], np.ones((64, 64), np.uint16))]), check=lambda result: result.model is not None),
    Bad("train-cancel-at-once", "Training data", "Cancel in the first second", "stops; the result is marked cancelled",
        lambda t: _train([_cells()], should_stop=lambda: True), check=lambda result: result.cancelled),
]


# ------------------------------------------------------------------ helpers used by rows above
def _huge_header() -> bytes:
    """A valid little-endian TIFF whose one page claims 2**31 x 2**31 pixels, stored as one compressed strip."""
    import struct

    entries = [(256, 4, 1, 2**31 - 1), (257, 4, 1, 2**31 - 1), (258, 3, 1, 8), (259, 3, 1, 8),
               (262, 3, 1, 1), (273, 4, 1, 8 + 2 + 9 * 12 + 4), (277, 3, 1, 1), (278, 4, 1, 2**31 - 1),
               (279, 4, 1, 4)]
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        ifd += struct.pack("<HHII", tag, kind, count, value) if kind == 4 else struct.pack("<HHIHH", tag, kind, count, value, 0)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + b"\x78\x9c\x03\x00"


def _with_nan_and_inf(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    image = image.astype(np.float64)
    image[:4] = np.nan
    image[labels == 1] = np.inf
    return image


def _float_second_labels(tmp: Path) -> Path:
    folder = _dataset(tmp, {"a": ((8, 8), (8, 8)), "b": ((8, 8), None)})
    _tif(folder / "labels" / "b.tif", np.full((8, 8), 0.5, np.float32))
    return folder


def _gray_alpha_png(path: Path) -> Path:
    from PIL import Image

    data = np.zeros((30, 40, 2), np.uint8)
    data[..., 0], data[..., 1] = 7, 255
    Image.fromarray(data, "LA").save(path)
    return path


def _dataset_pairs(folder: Path):
    from napari_cell_unet.io import find_dataset_pairs

    return find_dataset_pairs(folder)


def _read_dataset(folder: Path):
    from napari_cell_unet._reader import read_dataset_layers

    return read_dataset_layers(folder)


def _normalized_levels(image: np.ndarray) -> int:
    from napari_cell_unet.inference import normalize_image

    return len(np.unique(normalize_image(image)))


@functools.lru_cache(maxsize=1)
def _default_model():
    from napari_cell_unet.model import load_model

    return load_model()


@functools.lru_cache(maxsize=1)
def _tiny_rgb_model():
    import torch

    from napari_cell_unet.model import CellModel

    torch.manual_seed(0)
    return CellModel.create(architecture=dict(TINY_ARCHITECTURE), in_channels=3, name="tiny rgb")


def _dask(array: np.ndarray):
    import dask.array as da

    return da.from_array(array, chunks=(1, 32, 32))


# ------------------------------------------------------------------ tests
@pytest.mark.parametrize("row", ROWS, ids=[row.id for row in ROWS])
def test_bad_input(row: Bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if row.error is None:
        result = row.run(tmp_path)
        assert row.check is not None and row.check(result), result
        return
    with pytest.raises(row.error, match=row.match) as info:
        row.run(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, CellUnetError), f"{type(info.value).__name__} is not a documented error"
    assert message and "\n" not in message, "must be one line"
    assert "Traceback" not in message and "weights_only" not in message


def test_row_ids_are_unique():
    ids = [row.id for row in ROWS]
    assert len(ids) == len(set(ids))


README_START, README_END = "<!-- robustness-table:start -->", "<!-- robustness-table:end -->"


def readme_table() -> str:
    lines = ["| Kind | Input tried | What you see |", "|---|---|---|"]
    lines += [f"| {row.kind} | {row.tried} | {row.sees} |" for row in ROWS]
    return "\n".join(lines)


def test_readme_table_matches_the_rows():
    """Every README row is a test row and the other way round (CELL_UNET_UPDATE_README=1 rewrites it)."""
    readme = REPO / "README.md"
    wanted = "\n" + readme_table() + "\n"
    if os.environ.get("CELL_UNET_UPDATE_README") == "1":
        text = readme.read_text()
        start, end = text.index(README_START) + len(README_START), text.index(README_END)
        readme.write_text(text[:start] + wanted + text[end:])
    text = readme.read_text()
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    assert text[start:end] == wanted, "README Robustness table is stale: run CELL_UNET_UPDATE_README=1 pytest " \
                                      "tests/test_bad_inputs.py -k readme"


def test_nothing_failed_to_write_is_left_under_a_temp_name(tmp_path):
    """The failing-write path of every writer: clear OutputError, old file kept, no temp file left."""
    from napari_cell_unet.io import write_labels_coco, write_labels_tiff

    target = tmp_path / "keep.tif"
    target.write_bytes(b"old")

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    for write, module in ((write_labels_tiff, tifffile), (write_labels_coco, Path)):
        attribute = "imwrite" if module is tifffile else "write_text"
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(module, attribute, full_disk)
            with pytest.raises(OutputError, match="No space left on device.*existing file is unchanged"):
                write(target, np.ones((4, 4), np.uint8), overwrite=True)
        assert target.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["keep.tif"]
    with pytest.raises(OutputExistsError):
        write_labels_tiff(target, np.ones((4, 4), np.uint8))


def test_debug_shows_the_traceback_and_a_bug_is_reported_in_one_line(tmp_path, monkeypatch):
    (tmp_path / "f").write_bytes(b"")
    for args in (["--debug", "segment", "x.tif", "-o", tmp_path / "f"], ["segment", "x.tif", "-o", tmp_path / "f", "--debug"]):
        with pytest.raises(OutputError, match="is a file, not a folder"):
            _cli_raw(args)
    from napari_cell_unet.cli import segment

    def bug(args):
        raise KeyError("oops")

    monkeypatch.setattr(segment, "run", bug)
    run = _cli("segment", "x.tif", "-o", tmp_path)
    assert run.rc == 3 and run.err.count("\n") == 1
    assert "unexpected error (please report it; --debug shows the traceback): KeyError: 'oops'" in run.err


def _cli_raw(args: list) -> int:
    from napari_cell_unet.cli import main

    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        return main([str(a) for a in args])
