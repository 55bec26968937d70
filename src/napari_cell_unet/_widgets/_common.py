"""Bits shared by both dock widgets: notifications, the model chooser, form helpers."""

from __future__ import annotations

from collections.abc import Callable

from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QSize, Qt
from qtpy.QtWidgets import (QComboBox, QDoubleSpinBox, QFileDialog, QFrame, QLabel, QPushButton, QScrollArea,
                            QSpinBox, QVBoxLayout, QWidget)

from ..errors import CellUnetError
from ._registry import ModelEntry, ModelRegistry

LOAD_FILE_TEXT = "Load model file..."


def error_message(exc: BaseException) -> str:
    """One line for the user: our own errors speak for themselves, others get their type name."""
    lines = str(exc).strip().splitlines()
    text = lines[0] if lines else ""
    if isinstance(exc, (CellUnetError, ValueError, FileNotFoundError, KeyError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


ERROR_PROPERTY = "cell_unet_error"  # the error text a status line shows, "" when it shows none


def notify_error(status: QLabel, text: str) -> None:
    status.setText(text)
    status.setStyleSheet("color: #ff8080")
    status.setProperty(ERROR_PROPERTY, text)
    show_error(text)


def notify_info(status: QLabel, text: str, short: str | None = None) -> None:
    """`text` in the widget's status line; `short` (default `text`) in napari's notification, which
    shows about 40 characters before it elides the rest."""
    status.setText(text)
    status.setStyleSheet("")
    status.setProperty(ERROR_PROPERTY, "")
    show_info(short or text)


def clear_error(status: QLabel) -> None:
    """Blank the status line if it still shows an error (the notification stays in napari's list)."""
    shown = status.property(ERROR_PROPERTY)
    if shown and status.text() == shown:
        status.setText("")
        status.setStyleSheet("")
    status.setProperty(ERROR_PROPERTY, "")


def clear_stale_errors(status: QLabel, viewer, combos) -> None:
    """An error about layers goes away once it no longer applies: when the user changes one of `combos`'
    choices (a chosen layer deleted changes it too) or deletes a layer the error names ('name')."""
    for combo in combos:
        combo.layer_changed.connect(lambda *_: clear_error(status))

    def on_removed(event) -> None:
        shown = status.property(ERROR_PROPERTY)
        if shown and f"'{event.value.name}'" in shown:
            clear_error(status)

    viewer.layers.events.removed.connect(on_removed)


class VerticalScrollArea(QScrollArea):
    """Asks to be as wide as its content needs and as short as a few lines (it scrolls up and down)."""

    def minimumSizeHint(self) -> QSize:
        hint = super().minimumSizeHint()
        content = self.widget()
        if content is None:
            return hint
        width = (content.minimumSizeHint().width() + self.verticalScrollBar().sizeHint().width()
                 + 2 * self.frameWidth() + 24)  # 24: the style's spacing around the scroll bar
        return QSize(max(hint.width(), width), hint.height())


def scrolling_content(owner: QWidget) -> QVBoxLayout:
    """Put a scroll area in `owner` and return the layout of what it scrolls.

    A dock widget then needs only a few lines of height (issue 11: both widgets docked needed 1,250 px,
    leaving "Save model..." off a laptop screen); `owner.scroll_area` scrolls to any control.
    """
    content = QWidget()
    content.setObjectName("cell_unet_content")
    scroll = VerticalScrollArea()
    scroll.setWidgetResizable(True)
    scroll.setFrameShape(QFrame.Shape.NoFrame)
    scroll.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)  # only if docked narrower
    scroll.setWidget(content)
    outer = QVBoxLayout(owner)
    outer.setContentsMargins(0, 0, 0, 0)
    outer.addWidget(scroll)
    owner.scroll_area = scroll
    return QVBoxLayout(content)


def device_names() -> list[str]:
    """"auto" plus the devices present here (the engine decides what exists)."""
    from ..inference import available_devices  # here, not above: the Correct widget imports this module without torch

    names = [str(name) for name in available_devices()]
    return ["auto", *[name for name in names if name != "auto"]]


def button(text: str, on_click: Callable[[], object], tip: str, enabled: bool = True) -> QPushButton:
    made = QPushButton(text)
    made.clicked.connect(on_click)
    made.setToolTip(tip)
    made.setEnabled(enabled)
    return made


def set_tooltips(tips: dict[QWidget, str]) -> None:
    for control, text in tips.items():
        control.setToolTip(text)


def spin(minimum: int, maximum: int, value: int, step: int = 1, suffix: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    if suffix:
        box.setSuffix(suffix)
    return box


def double_spin(minimum: float, maximum: float, value: float, step: float, decimals: int = 2) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setDecimals(decimals)
    box.setRange(minimum, maximum)
    box.setSingleStep(step)
    box.setValue(value)
    return box


class ModelComboBox(QComboBox):
    """Lists the registry's models plus "Load model file..."; selecting one selects it in the registry.

    `on_error(text)` reports a model that cannot be loaded; the previous choice is restored.
    """

    def __init__(self, registry: ModelRegistry, on_error: Callable[[str], None], parent: QWidget | None = None):
        super().__init__(parent)
        self.registry = registry
        self._on_error = on_error
        self._entries: list[ModelEntry] = []
        self.choose_file: Callable[[], str] = self._ask_for_file  # tests replace this
        registry.changed.connect(self.refresh)
        self.activated.connect(self._on_activated)
        self.refresh()

    def refresh(self) -> None:
        self._entries = self.registry.entries()
        self.blockSignals(True)
        self.clear()
        for entry in self._entries:
            self.addItem(entry.label)
        if not self._entries:
            self.addItem("(no model yet: load a file or train one)")
        self.addItem(LOAD_FILE_TEXT)
        current = self.registry.current_or_first()
        self.setCurrentIndex(self._entries.index(current) if current in self._entries else 0)
        self.blockSignals(False)

    def entry(self) -> ModelEntry | None:
        index = self.currentIndex()
        return self._entries[index] if 0 <= index < len(self._entries) else None

    def load_file(self, path: str) -> bool:
        try:
            self.registry.add_file(path)
        except Exception as exc:
            self._on_error(error_message(exc))
            self.refresh()
            return False
        return True

    def _on_activated(self, index: int) -> None:
        if self.itemText(index) == LOAD_FILE_TEXT:
            path = self.choose_file()
            if not path or not self.load_file(path):
                self.refresh()
            return
        entry = self.entry()
        if entry is None:
            return
        try:
            self.registry.load(entry)
        except Exception as exc:
            self._on_error(error_message(exc))
            self.refresh()
            return
        self.registry.select(entry)

    def _ask_for_file(self) -> str:
        path, _ = QFileDialog.getOpenFileName(self, "Load a cell U-Net model", "",
                                              "Model files (*.safetensors *.pt *.pth);;All files (*)")
        return path
