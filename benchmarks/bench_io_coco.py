"""How long a LIVECell-sized COCO file (1,500 images of 704x520, ~450k cells as polygons) takes to open.

    .venv/bin/python benchmarks/bench_io_coco.py [--images 1500] [--cells-per-image 300]

Prints the JSON size, the time to validate it (``read_coco``), to build the napari layers (lazy stacks)
and to decode one slice, i.e. what a user waits for before the first image shows.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def livecell_like(n_images: int, cells_per_image: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    images = [{"id": i, "file_name": f"A172_Phase_A7_1_{i:05d}.tif", "height": 520, "width": 704}
              for i in range(1, n_images + 1)]
    annotations = {}
    for image_id in range(1, n_images + 1):
        centres = rng.uniform((15, 15), (689, 505), size=(cells_per_image, 2))
        radii = rng.uniform(5, 14, size=cells_per_image)
        for (cx, cy), r in zip(centres, radii):
            ann_id = len(annotations) + 1
            polygon = np.round(np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).ravel(), 2).tolist()
            annotations[str(ann_id)] = {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0,
                                        "segmentation": [polygon], "area": float(np.pi * r * r),
                                        "bbox": [cx - r, cy - r, 2 * r, 2 * r]}
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "cell"}]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1500)
    parser.add_argument("--cells-per-image", type=int, default=300)
    args = parser.parse_args()

    import warnings

    from napari_cell_unet._reader import read_coco_layers
    from napari_cell_unet.io import read_coco

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "livecell_coco_test.json"
        path.write_text(json.dumps(livecell_like(args.images, args.cells_per_image)))
        print(f"{args.images} images, {args.images * args.cells_per_image} cells, "
              f"{path.stat().st_size / 2**20:.0f} MB of JSON")
        start, cpu = time.perf_counter(), time.process_time()
        read_coco(path)
        print(f"read_coco (parse + validate): {time.perf_counter() - start:.1f} s "
              f"({time.process_time() - cpu:.1f} s CPU)")
        start, cpu = time.perf_counter(), time.process_time()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the images are not there
            [(labels, kwargs, _)] = read_coco_layers(path)
        print(f"napari layers (lazy {labels.shape} stack): {time.perf_counter() - start:.1f} s "
              f"({time.process_time() - cpu:.1f} s CPU)")
        layers_wall, layers_cpu = time.perf_counter() - start, time.process_time() - cpu
        start, cpu = time.perf_counter(), time.process_time()
        plane = np.asarray(labels[args.images // 2])
        print(f"decode one slice ({len(np.unique(plane)) - 1} cells): {time.perf_counter() - start:.2f} s")
        print(f"to the first slice: {layers_wall + time.perf_counter() - start:.1f} s "
              f"({layers_cpu + time.process_time() - cpu:.1f} s CPU)")


if __name__ == "__main__":
    main()
