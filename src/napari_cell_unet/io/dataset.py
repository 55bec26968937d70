"""Training-data folders: ``images/``, ``labels/`` (or ``masks/``), optional ``borders/``, paired by file name."""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

from .errors import DatasetFolderError
from .images import IMAGE_SUFFIXES, LABEL_NAME_PATTERN, file_stem

IMAGE_FOLDER = "images"
LABEL_FOLDERS = ("labels", "masks")
BORDER_FOLDER = "borders"
_IMAGE_NAME_SUFFIX = re.compile(r"_(image|img|raw)$", re.IGNORECASE)


@dataclass(frozen=True)
class DatasetPair:
    """One training example of a dataset folder; ``borders`` is None when the folder has no border mask for it."""

    name: str
    image: Path
    labels: Path
    borders: Path | None = None


def is_dataset_folder(folder: str | Path) -> bool:
    folder = Path(folder)
    return (folder / IMAGE_FOLDER).is_dir() and _labels_folder(folder) is not None


def find_dataset_pairs(folder: str | Path) -> list[DatasetPair]:
    """Pair ``images/X.tif`` with ``labels/X.tif`` (also ``X_labels.png``, ``X_mask.tif``, ...) and
    ``borders/X*``. Unpaired files are reported in one warning; no pair at all is an error."""
    folder = Path(folder)
    labels_folder = _labels_folder(folder)
    if not (folder / IMAGE_FOLDER).is_dir() or labels_folder is None:
        raise DatasetFolderError(folder, "a dataset folder needs an images/ and a labels/ (or masks/) subfolder")
    images = _files_by_key(folder / IMAGE_FOLDER)
    labels = _files_by_key(labels_folder)
    borders = _files_by_key(folder / BORDER_FOLDER) if (folder / BORDER_FOLDER).is_dir() else {}
    _warn_unpaired(folder, images, labels)
    pairs = [DatasetPair(key, images[key], labels[key], borders.get(key)) for key in _natural_sorted(images)
             if key in labels]
    if not pairs:
        raise DatasetFolderError(folder, f"no image in images/ has a label file of the same name in {labels_folder.name}/")
    return pairs


def pair_key(path: Path) -> str:
    """The name shared by an image and its masks: ``a_labels.png`` and ``a.tif`` both give ``a``."""
    stem = LABEL_NAME_PATTERN.sub("", file_stem(path))
    return _IMAGE_NAME_SUFFIX.sub("", stem)


def _labels_folder(folder: Path) -> Path | None:
    return next((folder / name for name in LABEL_FOLDERS if (folder / name).is_dir()), None)


def _files_by_key(folder: Path) -> dict[str, Path]:
    files: dict[str, Path] = {}
    try:
        entries = sorted(folder.iterdir())
    except OSError as exc:
        raise DatasetFolderError(folder, f"cannot list the folder ({exc.strerror or type(exc).__name__})") from None
    for path in entries:
        if path.name.startswith(".") or not path.is_file() or not path.name.lower().endswith(IMAGE_SUFFIXES):
            continue
        key = pair_key(path)
        if key in files:
            raise DatasetFolderError(folder, f"{files[key].name} and {path.name} both match the name {key!r}")
        files[key] = path
    return files


def _warn_unpaired(folder: Path, images: dict[str, Path], labels: dict[str, Path]) -> None:
    lonely_images = sorted(set(images) - set(labels))
    lonely_labels = sorted(set(labels) - set(images))
    problems = []
    if lonely_images:
        problems.append(f"{len(lonely_images)} image(s) without labels ({', '.join(lonely_images[:3])}...)")
    if lonely_labels:
        problems.append(f"{len(lonely_labels)} label file(s) without an image ({', '.join(lonely_labels[:3])}...)")
    if problems:
        warnings.warn(f"{folder}: skipping {' and '.join(problems)}", UserWarning, stacklevel=3)


def _natural_sorted(keys) -> list[str]:
    return sorted(keys, key=lambda k: [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", k)])
