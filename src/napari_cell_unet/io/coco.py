"""COCO instance annotations (the LIVECell format): validation, image lookup, decoding to label masks."""

from __future__ import annotations

import contextlib
import gc
import json
import math
from collections.abc import Iterable, Iterator
from functools import cached_property
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated, Any, NamedTuple

import msgspec
import numpy as np

from .errors import CocoFormatError, ImageFileError
from .images import read_image

# LIVECell ships images as images/livecell_{train_val,test}_images/<cell type>/<cell type>_Phase_....tif
LIVECELL_IMAGE_FOLDERS = ("livecell_train_val_images", "livecell_train_images", "livecell_val_images",
                          "livecell_test_images")
POLYGON_TOLERANCE_PX = 1.0  # rasterisers round coordinates; allow this much past the image edge
MAX_SIDE = 2**20  # pixels per image side: larger sizes are typos or attacks, not microscopy
MAX_ID = 2**63 - 1  # ids go into int64 tables


class CocoDataset:
    """A validated COCO file. Images are addressed by position ``i`` in ``0 .. len-1``
    (``image_ids[i]`` is the COCO id)."""

    def __init__(self, path: str | Path, data: Any):
        """``data``: the parsed file; annotations given as ``msgspec.Raw`` JSON text (``read_coco(lazy=True)``)
        are decoded, and their segmentations checked, only when their image is asked for."""
        self.path = Path(path)
        self.images, self.categories, self._entries, self._rows = _validate(self.path, data)
        self.image_ids: list[int] = [image["id"] for image in self.images]
        self._by_image = _group_by_image(self._rows)

    def __len__(self) -> int:
        return len(self.images)

    def __repr__(self) -> str:
        return f"CocoDataset({str(self.path)!r}, images={len(self)}, annotations={self.n_annotations})"

    @property
    def n_annotations(self) -> int:
        return len(self._entries)

    def file_name(self, i: int) -> str:
        return self.images[i]["file_name"]

    def shape(self, i: int) -> tuple[int, int]:
        return self.images[i]["height"], self.images[i]["width"]

    def annotations(self, i: int) -> list[dict]:
        """The annotations of image ``i``, in file order (label ``k`` is annotation ``k-1``)."""
        return [self._decoded(self._entries[k], i) for k in self._by_image.get(self.image_ids[i], ())]

    def _decoded(self, entry: dict | Any, i: int) -> dict:
        if isinstance(entry, dict):  # parsed and validated when the file was read
            return entry
        try:
            ann = msgspec.json.decode(entry)
        except msgspec.DecodeError as exc:
            raise CocoFormatError(self.path, f"not valid JSON in an annotation of image {self.image_ids[i]} ({exc})"
                                  ) from None
        _check_segmentation(self.path, ann, self.shape(i))
        return ann

    def image_path(self, i: int) -> Path | None:
        """Where image ``i`` was found (see ``searched_folders``), or None."""
        return self._image_paths[i]

    def read_image(self, i: int) -> np.ndarray:
        path = self.image_path(i)
        if path is None:
            raise ImageFileError(self.file_name(i), f"image of {self.path.name} not found; searched "
                                 + ", ".join(self.searched_folders))
        image = read_image(path)
        if image.shape[:2] != self.shape(i):
            height, width = self.shape(i)
            raise ImageFileError(path, f"image is {image.shape[1]}x{image.shape[0]} pixels but {self.path.name} "
                                 f"says {width}x{height}")
        return image

    def labels(self, i: int, annotation_ids: bool = False) -> np.ndarray:
        """Instance labels of image ``i`` as uint32: 1..N in annotation order, or the COCO
        annotation ids when ``annotation_ids`` (unique across the file). Later annotations win overlaps."""
        from pycocotools import mask as mask_utils

        height, width = self.shape(i)
        try:
            labels = np.zeros((height, width), dtype=np.uint32)
        except MemoryError:
            raise CocoFormatError(self.path, f"image {self.image_ids[i]} ({width}x{height} pixels) is too large "
                                  "to decode in memory") from None
        for number, ann in enumerate(self.annotations(i), start=1):
            rle = _to_rle(ann["segmentation"], height, width)
            if rle is None:
                continue
            x, y, w, h = (int(v) for v in np.round(mask_utils.toBbox(rle)))
            window = (slice(y, y + h + 1), slice(x, x + w + 1))
            mask = mask_utils.decode(rle)[window] > 0
            labels[window][mask] = ann["id"] if annotation_ids else number
        return labels

    def annotation_table(self) -> dict[str, np.ndarray]:
        """One row per annotation (in image order): ids and categories, for a labels layer's features."""
        order = [self._by_image[image_id] for image_id in self.image_ids if image_id in self._by_image]
        rows = self._rows[np.concatenate(order)] if order else self._rows
        category_ids = rows[:, 2]
        known, index = np.unique(category_ids, return_inverse=True)
        names = np.array([self.categories.get(int(c), "") for c in known], dtype=object)[index]
        return {"annotation_id": rows[:, 0], "image_id": rows[:, 1], "category_id": category_ids, "category": names}

    @property
    def searched_folders(self) -> list[str]:
        return [str(folder) for folder in self._plain_folders] + [
            f"{folder}/<cell type>" for folder in self._livecell_folders]

    @cached_property
    def _plain_folders(self) -> list[Path]:
        root = self.path.parent
        return [root, root / "images"]

    @cached_property
    def _livecell_folders(self) -> list[Path]:
        root = self.path.parent
        bases = [base / sub for base in (root, *list(root.parents)[:2]) for sub in ("", "images")]
        return [base / name for base in bases for name in LIVECELL_IMAGE_FOLDERS if (base / name).is_dir()]

    @cached_property
    def _image_paths(self) -> list[Path | None]:
        return [self._find_image(image["file_name"]) for image in self.images]

    def _find_image(self, file_name: str) -> Path | None:
        name = Path(file_name)
        cell_type = name.name.split("_")[0]
        candidates: list[Path] = []  # names are relative and stay inside (validated in _validate_images)
        for folder in self._plain_folders:
            candidates += [folder / name, folder / name.name]
        for folder in self._livecell_folders:
            candidates += [folder / cell_type / name.name, folder / name.name]
        return next((c for c in candidates if c.is_file()), None)


def read_coco(path: str | Path, lazy: bool = False) -> CocoDataset:
    """Load and validate a COCO instance-segmentation JSON (LIVECell's dict-shaped annotations too).

    ``lazy``: keep each annotation as its JSON text until its image is asked for (napari's reader: a
    LIVECell-sized file opens several times faster, in a fraction of the memory). Ids and image references
    are still checked here; a bad segmentation raises `CocoFormatError` from ``labels(i)``/``annotations(i)``.
    """
    path = Path(path)
    with paused_garbage_collection():
        return _read_coco(path, lazy)


@contextlib.contextmanager
def paused_garbage_collection() -> Iterator[None]:
    """A LIVECell file becomes tens of millions of small objects; Python's cycle collector would walk
    them all again and again while they are created (they hold no cycles, so pausing it loses nothing)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _read_coco(path: Path, lazy: bool) -> CocoDataset:
    try:
        content = path.read_bytes()
        data = _load_lazily(content) if lazy else _load_json(content)
    except FileNotFoundError:
        raise CocoFormatError(path, "file not found") from None
    except OSError as exc:  # a folder, no permission, an I/O error
        raise CocoFormatError(path, f"cannot read ({exc.strerror or type(exc).__name__})") from None
    except (ValueError, UnicodeDecodeError) as exc:  # json.JSONDecodeError and orjson's error are ValueErrors
        raise CocoFormatError(path, f"not valid JSON ({exc})") from None
    return CocoDataset(path, data)


def _load_json(content: bytes) -> Any:
    """orjson parses LIVECell-sized files several times faster; the standard library is the fallback."""
    try:
        import orjson
    except ImportError:
        return json.loads(content)
    return orjson.loads(content)


def _load_lazily(content: bytes) -> Any:
    """The file with every annotation left as JSON text (``msgspec.Raw``: a view of ``content``, no objects
    per polygon point) and the ids of each in a table. Anything msgspec's types refuse (not COCO, an id out
    of range, a missing key) is parsed whole instead, for _validate to name the problem as it always has."""
    try:
        coco = msgspec.json.decode(content, type=_LazyCoco)
        entries = list(coco.annotations.values()) if isinstance(coco.annotations, dict) else coco.annotations
        keys = [_KEYS.decode(entry) for entry in entries]
    except msgspec.ValidationError:
        return _load_json(content)
    rows = np.array([(k.id, k.image_id, k.category_id) for k in keys], dtype=np.int64).reshape(-1, 3)
    return {"images": coco.images, "annotations": _RawAnnotations(entries, rows), "categories": coco.categories}


class _RawAnnotations(NamedTuple):
    """Annotations as their JSON text, with (id, image_id, category_id) rows in the same (file) order."""

    entries: list[msgspec.Raw]
    rows: np.ndarray


class _LazyCoco(msgspec.Struct):
    images: Any
    annotations: list[msgspec.Raw] | dict[str, msgspec.Raw]
    categories: Any = None


class _AnnotationKeys(msgspec.Struct):
    id: Annotated[int, msgspec.Meta(gt=0, lt=2**32)]
    image_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)]
    segmentation: msgspec.Raw  # required; checked when its image is decoded
    category_id: Annotated[int, msgspec.Meta(ge=0, le=MAX_ID)] = 0


_KEYS = msgspec.json.Decoder(_AnnotationKeys)


def looks_like_coco(data: Any) -> bool:
    return isinstance(data, dict) and "images" in data and "annotations" in data


def _validate(path: Path, data: Any) -> tuple[list[dict], dict[int, str], list[Any], np.ndarray]:
    """Images, categories, annotations (dicts, or JSON text to decode per image) and their
    (id, image_id, category_id) rows, in file order."""
    if not looks_like_coco(data):
        keys = ", ".join(map(repr, list(data)[:5])) if isinstance(data, dict) else type(data).__name__
        raise CocoFormatError(path, f"not a COCO annotation file: needs 'images' and 'annotations' (found {keys})")
    images = _validate_images(path, data["images"])
    categories = _validate_categories(path, data.get("categories") or [])
    if isinstance(data["annotations"], _RawAnnotations):
        entries, rows = data["annotations"]
        _check_rows(path, rows, np.array([image["id"] for image in images], dtype=np.int64))
        return images, categories, entries, rows
    sizes = {image["id"]: (image["height"], image["width"]) for image in images}
    entries = list(_annotation_list(path, data["annotations"]))
    seen: set[int] = set()
    for ann in entries:
        _validate_annotation(path, ann, sizes, seen)
    rows = np.array([(ann["id"], ann["image_id"], ann.get("category_id", 0)) for ann in entries],
                    dtype=np.int64).reshape(-1, 3)
    return images, categories, entries, rows


def _check_rows(path: Path, rows: np.ndarray, image_ids: np.ndarray) -> None:
    """What _validate_annotation checks of ids that msgspec's types cannot: duplicates, unknown images."""
    ids = rows[:, 0]
    order = np.argsort(ids, kind="stable")
    repeated = order[1:][ids[order[1:]] == ids[order[:-1]]]
    if repeated.size:
        raise CocoFormatError(path, f"annotation id {int(ids[repeated.min()])} appears twice")
    unknown = np.flatnonzero(~np.isin(rows[:, 1], image_ids))
    if unknown.size:
        ann_id, image_id = rows[unknown[0], :2].tolist()
        raise CocoFormatError(path, f"annotation {ann_id} refers to image id {image_id!r}, which is not in 'images'")


def _group_by_image(rows: np.ndarray) -> dict[int, np.ndarray]:
    """Positions of each image's annotations, in file order."""
    order = np.argsort(rows[:, 1], kind="stable")
    image_ids, starts = np.unique(rows[order, 1], return_index=True)
    return dict(zip(image_ids.tolist(), np.split(order, starts[1:])))


def _annotation_list(path: Path, annotations: Any) -> Iterable[dict]:
    if isinstance(annotations, dict):  # LIVECell: {"<id>": {...}, ...}
        annotations = annotations.values()
    elif not isinstance(annotations, list):
        raise CocoFormatError(path, f"'annotations' must be a list or an object, not {type(annotations).__name__}")
    return annotations


def _validate_images(path: Path, images: Any) -> list[dict]:
    if not isinstance(images, list):
        raise CocoFormatError(path, f"'images' must be a list, not {type(images).__name__}")
    seen: set[int] = set()
    for image in images:
        if not isinstance(image, dict) or not {"id", "file_name", "height", "width"} <= image.keys():
            raise CocoFormatError(path, f"image entry {str(image)[:80]} lacks id, file_name, height or width")
        if not _is_int(image["id"]) or not 0 <= image["id"] <= MAX_ID:
            raise CocoFormatError(path, f"image id {str(image['id'])[:40]!r} is not an integer in 0..2**63-1")
        if not all(_is_int(image[k]) and 0 < image[k] <= MAX_SIDE for k in ("height", "width")):
            raise CocoFormatError(path, f"image {image['id']} has invalid size {str(image['width'])[:20]}x"
                                  f"{str(image['height'])[:20]} (each side must be 1..{MAX_SIDE} pixels)")
        problem = _file_name_problem(image["file_name"])
        if problem:
            raise CocoFormatError(path, f"image {image['id']}: file_name {str(image['file_name'])[:80]!r} {problem}")
        if image["id"] in seen:
            raise CocoFormatError(path, f"image id {image['id']} appears twice")
        seen.add(image["id"])
    return images


def _file_name_problem(file_name: Any) -> str | None:
    """Image files are looked up next to the JSON file only: a shared annotation file must not make us read
    (and show) arbitrary files such as ``../../.ssh/id_rsa`` or ``/etc/passwd``."""
    if not isinstance(file_name, str) or not file_name.strip():
        return "must be a non-empty string"
    posix, windows = PurePosixPath(file_name), PureWindowsPath(file_name)
    if posix.is_absolute() or windows.anchor:
        return "is an absolute path; only paths relative to the JSON file's folder are read"
    if ".." in windows.parts:  # PureWindowsPath splits on both / and \
        return "points outside the JSON file's folder ('..'); refused"
    if "\0" in file_name:
        return "contains a NUL character"
    return None


def _validate_categories(path: Path, categories: Any) -> dict[int, str]:
    try:
        table = {c["id"]: str(c.get("name", c["id"])) for c in categories}
    except (TypeError, KeyError, AttributeError):
        raise CocoFormatError(path, "'categories' must be a list of objects with an 'id'") from None
    if not all(_is_int(c) and 0 <= c <= MAX_ID for c in table):
        raise CocoFormatError(path, "category ids must be integers in 0..2**63-1")
    return table


def _validate_annotation(path: Path, ann: Any, sizes: dict[int, tuple[int, int]], seen: set[int]) -> None:
    if not isinstance(ann, dict) or "segmentation" not in ann or "image_id" not in ann or "id" not in ann:
        raise CocoFormatError(path, f"annotation {str(ann)[:80]} lacks id, image_id or segmentation")
    ann_id = ann["id"]
    if not _is_int(ann_id) or not 0 < ann_id < 2**32:
        raise CocoFormatError(path, f"annotation id {ann_id!r} is not an integer in 1..2**32-1")
    if ann_id in seen:
        raise CocoFormatError(path, f"annotation id {ann_id} appears twice")
    seen.add(ann_id)
    category = ann.get("category_id", 0)
    if not _is_int(category) or not 0 <= category <= MAX_ID:
        raise CocoFormatError(path, f"annotation {ann_id}: category_id {str(category)[:40]!r} is not an integer "
                              "in 0..2**63-1")
    size = sizes.get(ann["image_id"]) if _hashable(ann["image_id"]) else None
    if size is None:
        raise CocoFormatError(path, f"annotation {ann_id} refers to image id {ann['image_id']!r}, "
                              "which is not in 'images'")
    _check_segmentation(path, ann, size)


def _check_segmentation(path: Path, ann: dict, size: tuple[int, int]) -> None:
    if _polygons_inside(ann["segmentation"], size[1] + POLYGON_TOLERANCE_PX, size[0] + POLYGON_TOLERANCE_PX):
        return
    problem = _segmentation_problem(ann["segmentation"], *size)
    if problem:
        raise CocoFormatError(path, f"annotation {ann['id']} (image {ann['image_id']}): {problem}")


def _polygons_inside(seg: Any, x_max: float, y_max: float) -> bool:
    """Fast check for the common case (well-formed polygons inside the image); False means 'look closer'."""
    if type(seg) is not list:
        return False
    low = -POLYGON_TOLERANCE_PX
    try:
        for polygon in seg:
            xs, ys = polygon[0::2], polygon[1::2]
            if len(polygon) % 2 or not (low <= min(xs) and max(xs) <= x_max and low <= min(ys) and max(ys) <= y_max):
                return False
    except (TypeError, ValueError):
        return False
    return True


def _segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    if isinstance(seg, dict):
        size = seg.get("size")
        if "counts" not in seg or not isinstance(size, list) or len(size) != 2:
            return "RLE segmentation needs 'counts' and 'size'"
        if list(size) != [height, width]:
            return f"RLE size {str(size)[:40]} differs from the image size [{height}, {width}]"
        return _rle_counts_problem(seg["counts"], height * width)
    if not isinstance(seg, list):
        return f"segmentation must be polygons or RLE, not {type(seg).__name__}"
    for polygon in seg:
        if not isinstance(polygon, list) or len(polygon) % 2:
            return "polygon must be a flat list of numbers [x1, y1, x2, y2, ...]"
        if not polygon:
            continue
        if not all(_is_number(v) for v in polygon):
            return "polygon must be a flat list of numbers [x1, y1, x2, y2, ...], all finite"
        try:
            x_min, x_max, y_min, y_max = min(polygon[0::2]), max(polygon[0::2]), min(polygon[1::2]), max(polygon[1::2])
            outside = (x_min < -POLYGON_TOLERANCE_PX or x_max > width + POLYGON_TOLERANCE_PX
                       or y_min < -POLYGON_TOLERANCE_PX or y_max > height + POLYGON_TOLERANCE_PX)
        except TypeError:
            return "polygon must be a flat list of numbers [x1, y1, x2, y2, ...]"
        if outside:
            return f"polygon lies outside the {width}x{height} image (x {x_min:g}..{x_max:g}, y {y_min:g}..{y_max:g})"
    return None


def _to_rle(seg: Any, height: int, width: int) -> dict | None:
    from pycocotools import mask as mask_utils

    if isinstance(seg, dict):
        if isinstance(seg["counts"], list):  # uncompressed RLE
            return mask_utils.frPyObjects(seg, height, width)
        return seg
    polygons = [p for p in seg if len(p) >= 6]  # pycocotools would read a 4-number list as a box
    if not polygons:
        return None
    return mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))


def _rle_counts_problem(counts: Any, n_pixels: int) -> str | None:
    """pycocotools trusts the run lengths: runs that do not add up to the image leave the rest of its
    mask buffer uninitialised (leftover memory would become labels)."""
    if isinstance(counts, str):
        runs = rle_string_counts(counts)
        if runs is None:
            return "RLE counts is not a valid compressed COCO RLE string"
    elif isinstance(counts, list):
        if not all(_is_int(c) for c in counts):
            return "RLE counts must be a list of integers or a compressed string"
        runs = np.array(counts, dtype=object)
    else:
        return f"RLE counts must be a list of integers or a compressed string, not {type(counts).__name__}"
    if len(runs) and (min(runs) < 0 or max(runs) >= 2**32):
        return "RLE counts has run lengths outside 0..2**32-1"
    total = int(sum(int(r) for r in runs)) if runs.dtype == object else int(runs.sum())
    if total != n_pixels:
        return f"RLE runs cover {total} pixels, the image has {n_pixels}"
    return None


def rle_string_counts(text: str) -> np.ndarray | None:
    """Run lengths of a compressed COCO RLE string (pycocotools' rleFrString, vectorised), or None when the
    string is malformed. Each number is 5-bit groups, low bits first, 0x20 = more groups follow, 0x10 in the
    last group = negative; from the third run on, each is stored as the difference to the run two before."""
    codes = np.frombuffer(text.encode("latin-1", "replace"), np.uint8).astype(np.int64) - 48
    if codes.size == 0:
        return np.zeros(0, np.int64)
    if codes.min() < 0 or codes.max() > 63 or codes[-1] & 0x20:
        return None
    last = (codes & 0x20) == 0
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    position = np.arange(codes.size) - np.repeat(starts, np.diff(np.append(starts, codes.size)))
    if position.max() > 11:  # more than 60 bits: no real image has such runs
        return None
    values = np.add.reduceat((codes & 0x1F) << (5 * position), starts)
    negative = (codes[last] & 0x10) != 0
    values[negative] -= np.left_shift(1, 5 * (position[last][negative] + 1))
    runs = values.copy()
    runs[2::2] = np.cumsum(values[2::2])
    runs[3::2] = np.cumsum(values[3::2]) + values[1]
    return runs


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value)


def _hashable(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)
