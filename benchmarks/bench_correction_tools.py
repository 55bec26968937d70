"""Milliseconds per click-to-fix action (`napari_cell_unet.correction`) on a 2048 x 2048 plane.

The plane is a real Usiigaci image (set1, 1022 x 1024) tiled 2 x 2 (then cropped/padded to 2048²), with the
default model's labels and float16 (cell, border) maps tiled the same way (cell ids made unique per tile).
For each of N true cells the model found: delete its predicted cell, add it back by clicking at the true
centroid, merge it with a touching neighbour and split the pair again; then "remove objects < 30 px" once.
Each action is timed on its own (compute the Edit + apply it to the array), best of none: every click counts.

    python benchmarks/bench_correction_tools.py --cells 40
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("CELL_UNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "usiigaci_phase"
SIZE = 2048


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def tile_to(array: np.ndarray, size: int) -> np.ndarray:
    reps = [1] * (array.ndim - 2) + [-(-size // array.shape[-2]), -(-size // array.shape[-1])]
    return np.tile(array, reps)[..., :size, :size]


def tiled_plane(name: str = "set1") -> dict[str, np.ndarray]:
    from napari_cell_unet.inference import segment
    from napari_cell_unet.io import read_image, read_labels

    image = np.asarray(read_image(DATA / name / "raw.tif"))
    truth = np.asarray(read_labels(DATA / name / "instances_ids.png")).astype(np.uint32)
    t0 = time.perf_counter()
    labels, probs = segment(image, return_probabilities=True)
    print(f"segmented {name} {image.shape} in {time.perf_counter() - t0:.1f} s ({int(labels.max())} cells)")
    h, w = labels.shape

    def unique_tiles(ids: np.ndarray) -> np.ndarray:
        out = np.zeros((SIZE, SIZE), np.uint32)
        step = int(ids.max()) + 1
        for i, r in enumerate(range(0, SIZE, h)):
            for j, c in enumerate(range(0, SIZE, w)):
                block = ids[:SIZE - r, :SIZE - c]
                out[r:r + h, c:c + w] = np.where(block > 0, block + step * (2 * i + j), 0)
        return out

    return {"image": tile_to(image, SIZE), "truth": unique_tiles(truth), "labels": unique_tiles(labels),
            "probs": tile_to(probs.astype(np.float16), SIZE)}


def timed(times: dict[str, list[float]], name: str, fn, labels: np.ndarray):
    t0 = time.perf_counter()
    edit = fn()
    if edit is not None:
        edit.apply(labels)
    times.setdefault(name, []).append(1000 * (time.perf_counter() - t0))
    return edit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cells", type=int, default=40)
    args = parser.parse_args()
    from scipy import ndimage
    from skimage.measure import regionprops

    from napari_cell_unet import correction

    from napari_cell_unet.model import load_model

    post = load_model().postprocessing  # the thresholds Segment made the labels with
    thresholds = {"cell_threshold": float(post["cell_threshold"]), "border_threshold": float(post["border_threshold"])}
    plane = tiled_plane()
    labels, probs, truth = plane["labels"].copy(), plane["probs"], plane["truth"]
    rng = np.random.default_rng(0)
    candidates = []
    for region in regionprops(truth):
        r, c = (int(round(v)) for v in region.centroid)
        if truth[r, c] == region.label and labels[r, c]:
            candidates.append((r, c))
    picks = [candidates[i] for i in rng.permutation(len(candidates))[:args.cells]]
    times: dict[str, list[float]] = {}
    ious = []
    for r, c in picks:
        if labels[r, c] == 0:
            continue
        true_cell = truth == truth[r, c]
        timed(times, "delete", lambda: correction.delete_cell(labels, (r, c)), labels)
        try:
            added = timed(times, "add", lambda: correction.add_cell(labels, probs, (r, c), **thresholds), labels)
        except correction.CorrectionError:
            continue
        new = labels == added.label
        ious.append(float((new & true_cell).sum() / (new | true_cell).sum()))
        ring = ndimage.binary_dilation(new, iterations=2) & (labels > 0) & ~new
        if not ring.any():
            continue
        neighbour = np.argwhere(ring)[0]
        nb_label = int(labels[tuple(neighbour)])
        nb_point = tuple(int(v) for v in np.argwhere(labels == nb_label).mean(axis=0).round())
        if labels[nb_point] != nb_label:
            nb_point = tuple(int(v) for v in neighbour)
        timed(times, "merge", lambda: correction.merge_cells(labels, (r, c), nb_point), labels)
        if nb_point == (r, c):
            continue
        timed(times, "split", lambda: correction.split_cell(labels, (r, c), nb_point, probs), labels)
    for _ in range(5):  # on fresh copies: the first call removes them all
        fresh = labels.copy()
        timed(times, "remove small (< 30 px)", lambda: correction.remove_small(fresh, 30), fresh)

    print(f"\nCPU: {cpu_model()} ({os.cpu_count()} cores visible), load average {os.getloadavg()[0]:.1f}")
    print(f"plane {SIZE} x {SIZE}, uint32 labels, float16 maps; {len(picks)} cells\n")
    print("| action | n | median ms | 95th pct ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    for name, values in times.items():
        v = np.asarray(values)
        print(f"| {name} | {v.size} | {np.median(v):.1f} | {np.percentile(v, 95):.1f} | {v.max():.1f} |")
    if ious:
        print(f"\nadded cell vs true cell: median IoU {np.median(ious):.2f}, "
              f"{np.mean(np.asarray(ious) >= 0.7):.0%} at IoU >= 0.7 ({len(ious)} cells)")


if __name__ == "__main__":
    main()
