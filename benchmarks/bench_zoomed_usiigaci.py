"""Usiigaci sets zoomed (default 2x: cells of 80-150 px), segmented at their true diameter and with
diameter="auto": F1 @ IoU 0.5 and the automatic diameter's error per set. Used to measure anti-aliased shrinking
(README model card): run it on a tree with and without the change.

    python benchmarks/bench_zoomed_usiigaci.py --split test --zoom 2
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--zoom", type=float, default=2.0)
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    args = parser.parse_args(argv)

    from default_model_data import all_items
    from napari_cell_unet.inference import estimate_diameter
    from napari_cell_unet.inference.rescale import resize_bilinear
    from napari_cell_unet.metrics import instance_scores
    from napari_cell_unet.model import load_model

    print(f"{platform.processor() or platform.machine()}, zoom {args.zoom}, split {args.split}")
    model = load_model()
    for item in (i for i in all_items(Path(args.data))[args.split] if i.domain == "usiigaci"):
        image, labels = item.load()
        shape = (round(image.shape[0] * args.zoom), round(image.shape[1] * args.zoom))
        image = resize_bilinear(image, shape, axes=(0, 1))
        truth = ndimage.zoom(labels, args.zoom, order=0)
        true_diameter = estimate_diameter(labels) * args.zoom
        for diameter in (true_diameter, "auto"):
            started = time.perf_counter()
            found, used = segment_with_diameter(image, model, diameter)
            f1 = instance_scores(found, truth)["f1_50"]
            print(f"{item.name}: diameter {diameter if diameter == 'auto' else round(diameter, 1)} -> {used:.1f} px "
                  f"(error {used / true_diameter - 1:+.2f}), F1@0.5 {f1:.3f}, {time.perf_counter() - started:.1f} s",
                  flush=True)
    return 0


def segment_with_diameter(image, model, diameter):
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import iter_segment

    result = result_of(iter_segment(image, model, device="cpu", diameter=diameter))
    return np.asarray(result.labels), float(result.diameter)


if __name__ == "__main__":
    sys.exit(main())
