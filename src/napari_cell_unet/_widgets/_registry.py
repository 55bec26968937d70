"""The models a viewer's widgets can use: bundled models (default, cells, nuclei), trained this session, recent files.

One registry per viewer is shared by the segment and train widgets, so a model trained in
the train widget is immediately the one the segment widget uses.
"""

from __future__ import annotations

import os
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qtpy.QtCore import QObject, QSettings, Signal

if TYPE_CHECKING:
    from ..model import CellModel

SETTINGS_ENV = "NAPARI_CELL_UNET_SETTINGS"  # an .ini path; tests point it at a temp file
RECENT_KEY = "recent_model_files"
MAX_RECENT = 6


@dataclass(eq=False)
class ModelEntry:
    label: str
    kind: str  # "default" | "bundled" (a bundled specialist) | "session" | "file"
    path: Path | None = None
    model: CellModel | None = None  # loaded on first use


def _settings() -> QSettings:
    path = os.environ.get(SETTINGS_ENV)
    if path:
        return QSettings(path, QSettings.Format.IniFormat)
    return QSettings("napari-cell-unet", "napari-cell-unet")


def recent_files() -> list[Path]:
    value = _settings().value(RECENT_KEY, [])
    values = [value] if isinstance(value, str) else list(value or [])
    return [Path(v) for v in values if v]


def remember_file(path: Path) -> None:
    paths = [str(path)] + [str(p) for p in recent_files() if p != path]
    settings = _settings()
    settings.setValue(RECENT_KEY, paths[:MAX_RECENT])
    settings.sync()


class ModelRegistry(QObject):
    """Entries in display order and the current choice; emits `changed` when either changes."""

    changed = Signal()

    def __init__(self, parent: QObject | None = None):
        super().__init__(parent)
        self._session: list[ModelEntry] = []
        self._files: dict[Path, ModelEntry] = {}
        self._default: ModelEntry | None = None
        self._specialists: dict[str, ModelEntry] = {}
        self.current: ModelEntry | None = None

    def entries(self) -> list[ModelEntry]:
        out = [self._default_entry()] if self._default_available() else []
        out += self._specialist_entries()
        out += list(reversed(self._session))
        out += [self._file_entry(p) for p in recent_files() if p.is_file() or p in self._files]
        return out

    def current_or_first(self) -> ModelEntry | None:
        entries = self.entries()
        if self.current in entries:
            return self.current
        return entries[0] if entries else None

    def select(self, entry: ModelEntry | None) -> None:
        self.current = entry
        self.changed.emit()

    def load(self, entry: ModelEntry) -> CellModel:
        """The entry's CellModel, loaded on first use (raises ModelFileError for bad files)."""
        if entry.model is None:
            from ..model import load_model  # here, not above: the Correct widget imports this module without torch

            entry.model = load_model(entry.path)
        return entry.model

    def add_file(self, path: str | os.PathLike, select: bool = True) -> ModelEntry:
        """Load a model file now (so errors show at once), remember it, and select it."""
        path = Path(path).expanduser().resolve()
        entry = ModelEntry(label=path.name, kind="file", path=path)
        self.load(entry)
        self._files[path] = entry
        remember_file(path)
        if select:
            self.select(entry)
        return entry

    def add_session_model(self, model, select: bool = True) -> ModelEntry:
        number = len(self._session) + 1
        entry = ModelEntry(label=f"trained #{number}: {model.name}", kind="session", model=model)
        self._session.append(entry)
        if select:
            self.select(entry)
        else:
            self.changed.emit()
        return entry

    def default_entry(self) -> ModelEntry | None:
        return self._default_entry() if self._default_available() else None

    def _default_available(self) -> bool:
        from ..model.files import DEFAULT_MODEL_PATH

        return DEFAULT_MODEL_PATH.is_file()

    def _default_entry(self) -> ModelEntry:
        if self._default is None:
            self._default = ModelEntry(label="bundled default (phase contrast + nuclei)", kind="default", path=None)
        return self._default

    def _specialist_entries(self) -> list[ModelEntry]:
        from ..model.files import BUNDLED_MODELS, bundled_model_path, bundled_names

        for name in bundled_names():
            if name != "default" and name not in self._specialists:
                self._specialists[name] = ModelEntry(label=f"bundled {name} ({BUNDLED_MODELS[name]})", kind="bundled",
                                                     path=bundled_model_path(name))
        return [entry for name, entry in self._specialists.items() if entry.path.is_file()]

    def _file_entry(self, path: Path) -> ModelEntry:
        if path not in self._files:
            self._files[path] = ModelEntry(label=path.name, kind="file", path=path)
        return self._files[path]


_REGISTRIES: dict[int, tuple[weakref.ref, ModelRegistry]] = {}


def registry_for(viewer) -> ModelRegistry:
    """The registry shared by every widget of `viewer`."""
    while hasattr(viewer, "__wrapped__"):  # napari hands plugins a new proxy of the viewer each time
        viewer = viewer.__wrapped__
    key = id(viewer)
    found = _REGISTRIES.get(key)
    if found is not None and found[0]() is viewer:
        return found[1]
    registry = ModelRegistry()
    _REGISTRIES[key] = (weakref.ref(viewer), registry)
    weakref.finalize(viewer, _REGISTRIES.pop, key, None)
    return registry
