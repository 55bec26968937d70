"""What the correction tools keep with a Labels layer, in `layer.metadata["napari_cell_unet"]`.

- "maps": {plane: float16 array (2, H, W)}: the last segmentation's (cell, border) probabilities per plane
  (plane = indices on the leading axes, () for a 2-D layer). Kept only while the layer's planes with maps hold at
  most `MAX_KEPT_PIXELS` pixels in all (float16: 4 bytes per pixel for the two maps); above that they are
  dropped and the Correct widget recomputes them around a click with the model.
- "maps_source": {"image": image layer name, "diameter": cell diameter used, "cell_threshold",
  "border_threshold": the thresholds the labels were made with} to recompute them and grow cells alike.
- "corrected": {plane: bool array (H, W)}: pixels changed by a correction tool. Training "only where painted"
  counts them as painted (a deleted cell is taught as background there).
- "segmented": {plane: labels (H, W)}: the labels Segment wrote (same pixel limit as the maps). Training "only
  where painted or corrected" on a Segment output learns around the cells that differ from them (brush, eraser
  or correction tools alike) and keeps the rest close to the model that made them.
No Qt here; plain numpy on napari layers.
"""

from __future__ import annotations

import numpy as np

from ._layers import METADATA_KEY

MAX_KEPT_PIXELS = 64_000_000  # 256 MB of float16 maps per layer at most


def _store(layer) -> dict:
    metadata = layer.metadata
    if METADATA_KEY not in metadata:
        metadata[METADATA_KEY] = {}
    return metadata[METADATA_KEY]


def _by_plane(array: np.ndarray, plane: tuple[int, ...], plane_ndim: int) -> dict[tuple[int, ...], np.ndarray]:
    """{plane index: that plane's array}: `array` is the one `plane` when it is given, else every plane of a layer
    (its last `plane_ndim` axes are one plane)."""
    lead = array.shape[:-plane_ndim]
    if plane or not lead:
        return {tuple(plane): array.reshape(array.shape[-plane_ndim:])}
    return {index: array[index] for index in np.ndindex(*lead)}


def keep_maps(layer, plane: tuple[int, ...], probabilities: np.ndarray, image_name: str,
              diameter: float | None, thresholds: tuple[float, float] = (0.5, 0.5)) -> bool:
    """Remember the (..., 2, H, W) probabilities written into `plane` (or the whole layer when plane is ()).

    Returns False (and forgets older maps of the layer) when they would exceed MAX_KEPT_PIXELS.
    """
    store = _store(layer)
    maps = dict(store.get("maps", {})) if plane else {}
    maps.update(_by_plane(np.asarray(probabilities), plane, 3))
    store["maps_source"] = {"image": image_name, "diameter": diameter,
                            "cell_threshold": float(thresholds[0]), "border_threshold": float(thresholds[1])}
    pixels = sum(int(np.prod(m.shape[-2:])) for m in maps.values())
    if pixels > MAX_KEPT_PIXELS:
        store.pop("maps", None)
        return False
    store["maps"] = {index: np.asarray(m, dtype=np.float16) for index, m in maps.items()}
    return True


def keep_segmented(layer, plane: tuple[int, ...], labels: np.ndarray) -> bool:
    """Remember the labels Segment wrote into `plane` (all planes when it is ()), to tell corrections later."""
    store = _store(layer)
    kept = dict(store.get("segmented", {})) if plane else {}
    kept.update({index: np.array(plane_labels, copy=True)
                 for index, plane_labels in _by_plane(np.asarray(labels), plane, 2).items()})
    if sum(v.size for v in kept.values()) > MAX_KEPT_PIXELS:
        store.pop("segmented", None)
        return False
    store["segmented"] = kept
    return True


def has_segmentation(layer) -> bool:
    return bool(layer.metadata.get(METADATA_KEY, {}).get("segmented"))


def changed_cells(layer, plane: tuple[int, ...], labels: np.ndarray) -> np.ndarray | None:
    """Where `labels` (the layer's current `plane`) differs from what Segment wrote: every pixel that changed and
    the whole of every cell that now covers a changed pixel. None when Segment's labels are not known."""
    segmented = layer.metadata.get(METADATA_KEY, {}).get("segmented", {}).get(tuple(plane))
    if segmented is None or segmented.shape != labels.shape:
        return None
    changed = labels != segmented
    touched = np.unique(labels[changed])
    return changed | np.isin(labels, touched[touched > 0])


def maps_for(layer, plane: tuple[int, ...]) -> np.ndarray | None:
    maps = layer.metadata.get(METADATA_KEY, {}).get("maps", {})
    return maps.get(tuple(plane))


def maps_source(layer) -> dict:
    return dict(layer.metadata.get(METADATA_KEY, {}).get("maps_source", {}))


def mark_corrected(layer, plane: tuple[int, ...], rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int]) -> None:
    store = _store(layer)
    corrected = dict(store.get("corrected", {}))
    mask = corrected.get(tuple(plane))
    if mask is None or mask.shape != tuple(shape):
        mask = np.zeros(shape, dtype=bool)
    mask[rows, cols] = True
    corrected[tuple(plane)] = mask
    store["corrected"] = corrected


def forget_corrections(layer, plane: tuple[int, ...]) -> None:
    """New labels were written into `plane` (all planes when it is ()): its corrections are gone with them."""
    store = layer.metadata.get(METADATA_KEY, {})
    corrected = store.get("corrected")
    if corrected:
        store["corrected"] = {} if not plane else {k: v for k, v in corrected.items() if k != tuple(plane)}


def corrected_mask(layer, plane: tuple[int, ...]) -> np.ndarray | None:
    """Pixels changed by the correction tools in `plane` (None when none were)."""
    mask = layer.metadata.get(METADATA_KEY, {}).get("corrected", {}).get(tuple(plane))
    return mask if mask is not None and mask.any() else None
