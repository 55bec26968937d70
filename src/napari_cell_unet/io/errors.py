"""Error types for files that are claimed but cannot be read or written."""

from __future__ import annotations

from pathlib import Path

from ..errors import CellUnetError


class CellUnetFileError(CellUnetError, ValueError):
    """A file this package reads or writes is unusable; the message names the file and the problem."""

    def __init__(self, path: str | Path, problem: str):
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ImageFileError(CellUnetFileError):
    """An image or label file (TIFF, PNG, ...) is truncated, corrupt or unsupported."""


class CocoFormatError(CellUnetFileError):
    """A JSON file is not valid COCO instance annotation, or refers to things it does not contain."""


class DatasetFolderError(CellUnetFileError):
    """A dataset folder (images/, labels/, borders/) is laid out in a way that cannot be paired."""
