"""Small helpers over napari layers: choosers, pixel data, writing labels undoably."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from napari.layers import Image, Labels, Layer
from qtpy.QtCore import Signal
from qtpy.QtWidgets import QComboBox

from .._fingerprint import fingerprint  # notices edits made by the user since we wrote a layer

METADATA_KEY = "napari_cell_unet"
NONE_TEXT = "(none)"


class LayerComboBox(QComboBox):
    """A combo box listing the viewer's layers of some types, kept in sync with the layer list.

    `layer_changed` fires whenever the chosen layer changes, whether by the user or by a refresh.
    `follow_active`: choose the layer the user makes active in the layer list, when it is of these types.
    """

    layer_changed = Signal()

    def __init__(self, viewer, layer_types: tuple[type, ...], allow_none: bool = False, parent=None,
                 follow_active: bool = False):
        super().__init__(parent)
        self._viewer = viewer
        self._reported: str | None = None
        self.currentTextChanged.connect(self._report)
        self._types = layer_types
        self._allow_none = allow_none
        events = viewer.layers.events
        for event in (events.removed, events.moved, events.reordered):
            event.connect(self.refresh)
        events.inserted.connect(self._on_inserted)
        for layer in viewer.layers:
            layer.events.name.connect(self.refresh)
        self.refresh()
        if follow_active:
            viewer.layers.selection.events.active.connect(self.follow_active_layer)
            self.follow_active_layer()

    def follow_active_layer(self, event=None) -> None:
        active = self._viewer.layers.selection.active
        if isinstance(active, self._types):
            self.set_layer(active)

    def _on_inserted(self, event) -> None:
        event.value.events.name.connect(self.refresh)
        self.refresh()

    def layers(self) -> list[Layer]:
        return [layer for layer in self._viewer.layers if isinstance(layer, self._types)]

    def refresh(self, event=None) -> None:
        current = self.currentText()
        self.blockSignals(True)
        self.clear()
        if self._allow_none:
            self.addItem(NONE_TEXT)
        for layer in self.layers():
            self.addItem(layer.name)
        self.blockSignals(False)
        index = self.findText(current)
        self.setCurrentIndex(index if index >= 0 else 0)
        self._report()

    def _report(self, *_) -> None:
        if self.currentText() != self._reported:
            self._reported = self.currentText()
            self.layer_changed.emit()

    def layer(self) -> Layer | None:
        name = self.currentText()
        if not name or name == NONE_TEXT or name not in self._viewer.layers:
            return None
        return self._viewer.layers[name]

    def set_layer(self, layer: Layer | None) -> None:
        name = NONE_TEXT if layer is None else layer.name
        if self.findText(name) < 0:
            self.refresh()  # napari tells observers about a new layer in no fixed order
        self.setCurrentIndex(max(0, self.findText(name)))


def spatial_shape(layer: Layer) -> tuple[int, ...]:
    """The layer's data shape without an RGB(A) channel axis."""
    shape = tuple(int(s) for s in layer_data(layer).shape)
    return shape[:-1] if getattr(layer, "rgb", False) else shape


def layer_data(layer: Layer):
    """The full-resolution data (level 0 of a multiscale layer)."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def leading_axes(layer: Layer) -> int:
    """Number of axes before the last two (y, x): 0 for a plain 2D image."""
    return max(0, len(spatial_shape(layer)) - 2)


def current_plane_index(viewer, layer: Layer) -> tuple[int, ...]:
    """Indices of the displayed plane on the layer's leading axes (world -> data)."""
    n_lead = leading_axes(layer)
    if n_lead == 0:
        return ()
    world_point = np.asarray(viewer.dims.point)[-layer.ndim:]
    data_point = layer.world_to_data(world_point)
    shape = spatial_shape(layer)
    return tuple(int(np.clip(round(float(v)), 0, shape[i] - 1)) for i, v in enumerate(data_point[:n_lead]))


def pixels(layer: Layer, plane: tuple[int, ...] = ()) -> np.ndarray:
    """The layer's pixels as a numpy array (one plane when `plane` indexes the leading axes)."""
    return np.asarray(layer_data(layer)[plane] if plane else layer_data(layer))


def mark_written(layer: Labels) -> None:
    layer.metadata[METADATA_KEY] = {**layer.metadata.get(METADATA_KEY, {}), "written": fingerprint(layer.data)}


def edited_since_written(layer: Labels) -> bool:
    """True when the layer holds data we did not write (painted since, or a user's own layer)."""
    written = layer.metadata.get(METADATA_KEY, {}).get("written")
    return written != fingerprint(layer.data)


def unwrap(obj):
    """The object behind napari's plugin proxies (widgets get a new proxy of a layer at every lookup)."""
    while hasattr(obj, "__wrapped__"):
        obj = obj.__wrapped__
    return obj


def same_layer(a: Layer | None, b: Layer | None) -> bool:
    return a is not None and b is not None and unwrap(a) is unwrap(b)


def live_layer(viewer, layer: Layer | None) -> Layer | None:
    """`layer` if that very layer object is still in the viewer (under any name), else None."""
    if layer is None:
        return None
    for candidate in viewer.layers:
        if same_layer(candidate, layer):
            return candidate
    return None


def replace_labels(layer: Labels, new: np.ndarray, plane: tuple[int, ...] = ()) -> None:
    """Write `new` into `layer` (or into one plane of it) as one undoable edit (Ctrl+Z restores).

    The pixels are written into the array and recorded in the layer's undo history directly, never
    through `Labels.data_setitem`: that also patches the layer's displayed slice, which is stale while
    the layer is hidden and the dims move, and then raises IndexError (issue 11). Data that is not an
    in-memory numpy array, or that cannot hold the new ids, is replaced as a whole (not undoable).
    """
    layer = unwrap(layer)
    data = layer.data
    new = np.asarray(new)
    fits = (isinstance(data, np.ndarray) and data.flags.writeable and np.issubdtype(data.dtype, np.integer)
            and (new.size == 0 or int(new.max()) <= np.iinfo(data.dtype).max))
    if not fits:
        full = np.array(data, dtype=np.result_type(np.asarray(data).dtype, new.dtype), copy=True)
        if plane:
            full[plane] = new
        else:
            full = new.astype(full.dtype, copy=True)
        layer.data = full
        mark_written(layer)
        return
    old = data[plane] if plane else data
    if old.shape != new.shape:
        raise ValueError(f"labels of shape {new.shape} do not fit layer '{layer.name}' "
                         f"({'plane ' + str(plane) + ' of ' if plane else ''}shape {data.shape})")
    changed = np.nonzero(old != new)
    if changed[0].size:
        prefix = tuple(np.full(changed[0].size, i, dtype=np.intp) for i in plane)
        indices = prefix + changed
        before = data[indices].copy()
        after = new[changed].astype(data.dtype)
        data[indices] = after
        save_history = getattr(layer, "_save_history", None)  # napari's own record of data_setitem edits
        if save_history is not None:
            with layer.block_history():
                save_history((indices, before, after))
        layer.refresh()
    mark_written(layer)


def copy_geometry(source: Layer, n_axes: int | None = None) -> dict:
    """scale/translate keyword arguments that put a new layer on top of `source`."""
    scale, translate = np.asarray(source.scale), np.asarray(source.translate)
    if n_axes is not None:
        scale, translate = scale[-n_axes:], translate[-n_axes:]
    return {"scale": tuple(scale), "translate": tuple(translate)}


def unique_name(viewer, name: str) -> str:
    candidate, i = name, 1
    while candidate in viewer.layers:
        i += 1
        candidate = f"{name} [{i}]"
    return candidate


def images(viewer) -> Sequence[Image]:
    return [layer for layer in viewer.layers if isinstance(layer, Image)]
