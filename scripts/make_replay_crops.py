"""Build the replay crops shipped with the package (`training/replay/crops.npz`).

Fine-tuning on one image's corrections also moves the model on images nobody corrected (issue 8). During
fine-tuning a few of these crops join every batch with the *starting* model's own predictions as targets, so
the model keeps doing on them what it did. Only images are stored (no labels): the targets are computed from
whatever model the user fine-tunes.

The crops come from the default model's **training** split only (scripts/default_model_data.py), so no
validation or test image of the model card or of the correction-loop benchmark is among them: Usiigaci phase
contrast (MIT, (c) 2018 OIST) and DSB 2018 nuclei (CC0; fluorescence and stained tissue). Each image is first
zoomed to the model's reference cell diameter (as training did), then a window rich in cells is cut and stored
as 8 bits over its 0.1-99.9 % intensity range.

    python scripts/make_replay_crops.py --data ../shared/data
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from default_model_data import all_items, at_reference_size  # noqa: E402

OUTPUT = Path(__file__).resolve().parents[1] / "src" / "napari_cell_unet" / "training" / "replay" / "crops.npz"
# per domain: how many crops (one per image, images spread over the domain's training list)
PER_DOMAIN = {"usiigaci": 12, "fluorescence": 8, "tissue": 4}


def cell_rich_window(labels: np.ndarray, size: int, rng: np.random.Generator, tries: int = 32) -> tuple[int, int]:
    """Top-left corner of the `size` window (of `tries` random ones) that holds the most cell pixels."""
    height, width = labels.shape
    best, corner = -1, (0, 0)
    for _ in range(tries):
        top, left = int(rng.integers(0, height - size + 1)), int(rng.integers(0, width - size + 1))
        covered = int((labels[top:top + size, left:left + size] > 0).sum())
        if covered > best:
            best, corner = covered, (top, left)
    return corner


def to_uint8(image: np.ndarray) -> np.ndarray:
    low, high = np.percentile(image, (0.1, 99.9))
    scaled = (image - low) / max(float(high - low), 1e-6)
    return np.clip(np.rint(scaled * 255), 0, 255).astype(np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    train = all_items(args.data)["train"]
    crops, sources = [], []
    for domain, count in PER_DOMAIN.items():
        items = [item for item in train if item.domain == domain]
        for index in np.linspace(0, len(items) - 1, count).round().astype(int):
            item = items[index]
            image, labels = item.load()
            image, labels, zoom = at_reference_size(image, labels)
            if min(image.shape) < args.size:
                continue
            top, left = cell_rich_window(labels, args.size, rng)
            crops.append(to_uint8(image[top:top + args.size, left:left + args.size]))
            sources.append({"domain": domain, "image": item.name, "group": item.group, "zoom": round(zoom, 3),
                            "top": top, "left": left})
    args.output.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=args.output.parent, suffix=".npz")
    os.close(handle)
    np.savez_compressed(temporary, images=np.stack(crops), sources=np.array(json.dumps(sources)))
    os.replace(temporary, args.output)
    print(f"{len(crops)} crops of {args.size}² -> {args.output} ({args.output.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
