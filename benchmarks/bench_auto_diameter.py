"""diameter="auto" on a subsample of a split, rescaled 0.5x, 1x and 2x: the estimate's error against the true
median diameter (from the labels), what each probe voted, and its cost as the ratio of network input pixels
(auto call / the same `segment` call with the diameter given; load-independent) and, with --timing, of wall time.

    python benchmarks/bench_auto_diameter.py --split validation --per-domain 4 --out build/auto_diameter.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))


MIN_OBJECTS = 5  # an image with fewer labelled cells has no meaningful "true median diameter"


class PixelCounter:
    """Counts the network input pixels of every `TiledPredictor` forward while active."""

    def __init__(self):
        from napari_cell_unet.inference import predict

        self.pixels = 0
        self._predictor = predict.TiledPredictor
        self._launch = predict.TiledPredictor._launch

        def counting(predictor, tiles):
            self.pixels += int(tiles.shape[0] * tiles.shape[-2] * tiles.shape[-1])
            return self._launch(predictor, tiles)

        self._predictor._launch = counting

    def take(self) -> int:
        pixels, self.pixels = self.pixels, 0
        return pixels


def subsample(items, per_domain: int):
    """Up to `per_domain` images of each domain, spread over its groups (round robin)."""
    chosen = []
    for domain in sorted({item.domain for item in items}):
        groups: dict[str, list] = {}
        for item in items:
            if item.domain == domain:
                groups.setdefault(item.group, []).append(item)
        queues = list(groups.values())
        picked = []
        while len(picked) < per_domain and any(queues):
            for queue in queues:
                if queue and len(picked) < per_domain:
                    picked.append(queue.pop(0))
        chosen += picked
    return chosen


def zoomed(image, labels, zoom):
    from scipy import ndimage

    from napari_cell_unet.inference.rescale import resize_bilinear

    if zoom == 1:
        return image, labels
    shape = (round(image.shape[0] * zoom), round(image.shape[1] * zoom))
    return resize_bilinear(image, shape, axes=(0, 1)), ndimage.zoom(labels, zoom, order=0)


def segment_pixels(model, plane_shape, diameter) -> int:
    """Network input pixels of a plain `segment` call at `diameter` (its tiles, as the predictor cuts them)."""
    from napari_cell_unet.inference.predict import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, size_multiple
    from napari_cell_unet.inference.rescale import diameter_scale, scaled_shape
    from napari_cell_unet.inference.tiling import make_grid

    shape = scaled_shape(plane_shape, diameter_scale(model, diameter, plane_shape))
    grid = make_grid(shape, DEFAULT_TILE_SIZE, DEFAULT_OVERLAP, size_multiple(model.metadata.get("architecture") or {}))
    return grid.n_tiles * grid.tile[0] * grid.tile[1]


def final_call(model, image, diameter):
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import iter_segment

    started = time.perf_counter()
    result = result_of(iter_segment(image, model, device="cpu", diameter=diameter))
    return result, time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    parser.add_argument("--per-domain", type=int, default=4)
    parser.add_argument("--zooms", default="0.5,1,2")
    parser.add_argument("--timing", default="", help="comma-separated image names: also time auto vs given diameter "
                                                     "at every zoom (wall time, interleaved)")
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--out", default="build/auto_diameter.json")
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    args = parser.parse_args(argv)

    from default_model_data import all_items
    from napari_cell_unet.inference import estimate_diameter
    from napari_cell_unet.inference.diameter import estimate_cell_diameter
    from napari_cell_unet.model import load_model

    model = load_model(args.model)
    counter = PixelCounter()
    timing = set(filter(None, args.timing.split(",")))
    rows = []
    print(f"{platform.processor() or platform.machine()}, split {args.split}", flush=True)
    for item in subsample(all_items(Path(args.data))[args.split], args.per_domain):
        image, labels = item.load()
        for zoom in (float(z) for z in args.zooms.split(",")):
            image_z, labels_z = zoomed(image, labels, zoom)
            true = estimate_diameter(labels_z)
            counter.take()
            started = time.perf_counter()
            estimate = estimate_cell_diameter(image_z, model, device="cpu")
            row = {"name": item.name, "domain": item.domain, "group": item.group, "zoom": zoom,
                   "objects": int(len(np.unique(labels)) - 1),
                   "shape": list(image_z.shape[:2]), "true": round(true, 2), "estimate": estimate.diameter,
                   "error": None if estimate.diameter is None else round(estimate.diameter / true - 1, 3),
                   "estimate_seconds": round(time.perf_counter() - started, 2), "estimate_pixels": counter.take(),
                   "probes": estimate.probes}
            if estimate.diameter is not None:
                row["segment_pixels"] = segment_pixels(model, image_z.shape[:2], estimate.diameter)
            if item.name in timing and estimate.diameter is not None:
                auto, auto_seconds = final_call(model, image_z, "auto")
                counter.take()
                _, fixed_seconds = final_call(model, image_z, auto.diameter)
                row.update(auto_seconds=round(auto_seconds, 2), fixed_seconds=round(fixed_seconds, 2),
                           time_ratio=round(auto_seconds / fixed_seconds, 3))
            rows.append(row)
            print(f"{item.name} {item.domain} x{zoom}: true {true:.1f}, estimate {estimate.diameter} "
                  f"(error {row['error']}), {row['estimate_seconds']} s, pixels {row['estimate_pixels']} / "
                  f"{row.get('segment_pixels')}" + (f", time ratio {row['time_ratio']}" if "time_ratio" in row else ""),
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"split": args.split, "rows": rows}, indent=1, default=float))
    summarize(rows)
    return 0


def summarize(rows):
    ill_posed = [r for r in rows if r.get("objects", MIN_OBJECTS) < MIN_OBJECTS]
    if ill_posed:
        print(f"not counted (fewer than {MIN_OBJECTS} labelled objects): {sorted({r['name'] for r in ill_posed})}")
    rows = [r for r in rows if r not in ill_posed]
    errors = [r["error"] for r in rows]
    within = sum(e is not None and abs(e) <= 0.15 for e in errors)
    print(f"within 15 %: {within}/{len(rows)}")
    for domain in sorted({r["domain"] for r in rows}):
        for zoom in sorted({r["zoom"] for r in rows}):
            part = [r for r in rows if r["domain"] == domain and r["zoom"] == zoom]
            print(f"  {domain} x{zoom}: {sum(r['error'] is not None and abs(r['error']) <= 0.15 for r in part)}"
                  f"/{len(part)}")
    ratios = [1 + r["estimate_pixels"] / r["segment_pixels"] for r in rows if r.get("segment_pixels")]
    print(f"pixel cost ratio (auto / given): median {np.median(ratios):.2f}, max {np.max(ratios):.2f}")
    timed = [r["time_ratio"] for r in rows if "time_ratio" in r]
    if timed:
        print(f"wall time ratio: median {np.median(timed):.2f} over {len(timed)} calls")


if __name__ == "__main__":
    sys.exit(main())
