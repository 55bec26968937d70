"""Instance rules scored on cached maps: which objects to remove as too small (a fixed pixel count, or a fraction of a
cell's area at the diameter used), and which to split (stricter seeds that each cover part of a cell).

Each image of a split (scripts/default_model_data.py), optionally zoomed, is segmented once at the default call
(`diameter="auto"`) and its probabilities and diameter are kept in `--cache`; then every rule is scored on them
(pooled F1 @ 0.5 / pixel IoU / mean F1 0.5:0.95 per domain, and the tuning objective F1 + IoU / 4 averaged over
domains, as `scripts/evaluate_default_model.py` does). A rule is the model's own post-processing with some values
replaced: "fixed N" removes objects under N px (the seeds under N / 2 first); "fraction F" removes objects under
max(10, F * pi / 4 * d^2) px, d = the image's diameter, as `inference.instances.sized_params` does; `--rule
key=value,...` replaces any keys (`split_border_threshold=0.01,split_seed_fraction=0.3`; `own` = the model's file).

    python benchmarks/bench_size_rule.py default --split validation --zooms 1 0.5 2 --fixed 60 --fractions 0.15 0.2
    python benchmarks/bench_size_rule.py nuclei --split test --domains fluorescence tissue --fixed 20 --fractions 0.2
    python benchmarks/bench_size_rule.py default --split test --zooms 1 0.5 2 --fixed --fractions \
        --rule split_border_threshold=0 own
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
DATA = Path(os.environ.get("CELL_UNET_DATA", REPO.parent / "shared" / "data"))
FLOOR = 10


def cache_probabilities(model_name: str, split: str, zoom: float, domains: list[str] | None, cache: Path,
                        every_dsb: int) -> list[Path]:
    """Segment each image of the split once (zoomed by `zoom`); its maps, truth and diameter go to `cache`."""
    from default_model_data import all_items
    from skimage.transform import resize

    import napari_cell_unet as cu
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import iter_segment
    from napari_cell_unet.inference.rescale import model_diameter, resize_bilinear

    items = [i for i in all_items(DATA)[split] if domains is None or i.domain in domains]
    items = [i for i in items if i.domain == "usiigaci"] + [i for i in items if i.domain != "usiigaci"][::every_dsb]
    folder = cache / f"{model_name}_{split}_{zoom}"
    folder.mkdir(parents=True, exist_ok=True)
    model = cu.load_model(model_name)
    files = []
    for number, item in enumerate(items):
        path = folder / f"{item.domain}__{item.name}.npz"
        files.append(path)
        if path.exists():
            continue
        image, truth = item.load()
        if zoom != 1:
            shape = (round(image.shape[0] * zoom), round(image.shape[1] * zoom))
            image = resize_bilinear(image, shape, axes=(0, 1))
            truth = resize(truth, shape, order=0, preserve_range=True, anti_aliasing=False).astype(np.int32)
        result = result_of(iter_segment(image, model, device="cpu", diameter="auto", return_probabilities=True))
        np.savez_compressed(path, p=result.probabilities.astype(np.float16), truth=truth,
                            d=result.diameter or model_diameter(model))
        print(f"  {time.strftime('%H:%M:%S')} {number + 1}/{len(items)} {item.domain} {item.name} "
              f"d={result.diameter}", flush=True)
    return files


def rule_params(rule: tuple[str, object], post: dict) -> dict:
    """The model's post-processing `post` with the rule's values in place (still to be sized to a diameter)."""
    kind, value = rule
    if kind == "fixed":
        return {**post, "min_size": int(value), "min_size_fraction": 0.0}
    if kind == "fraction":
        return {**post, "min_size": FLOOR, "min_size_fraction": float(value)}
    return {**post, **dict(value)}


def labels_under(rule: tuple[str, object], probabilities: np.ndarray, diameter: float, post: dict) -> np.ndarray:
    from napari_cell_unet.inference import instances_from_probabilities
    from napari_cell_unet.inference.instances import sized_params

    params = sized_params(rule_params(rule, post), diameter)
    return instances_from_probabilities(probabilities[0], probabilities[1], **params)


def parse_rule(text: str) -> tuple[str, object]:
    """`own`, or `key=value,key=value` (numbers) over the model's post-processing."""
    if text == "own":
        return ("set", ())
    pairs = [item.split("=", 1) for item in text.split(",")]
    return ("set", tuple((key, float(value)) for key, value in pairs))


def rule_name(rule: tuple[str, object]) -> str:
    kind, value = rule
    if kind == "fixed":
        return f"{int(value)} px"
    if kind == "fraction":
        return f"{value:g} of a cell, at least {FLOOR} px"
    return ", ".join(f"{key} {number:g}" for key, number in value) or "the model's own"


def _score(job):
    path, rules, post = job
    from napari_cell_unet.metrics import instance_scores

    data = np.load(path)
    probabilities, truth, diameter = data["p"].astype(np.float32), data["truth"], float(data["d"])
    return path.name.split("__")[0], [instance_scores(labels_under(r, probabilities, diameter, post), truth)
                                      for r in rules]


def table(files: list[Path], rules: list[tuple[str, float]], post: dict, workers: int) -> str:
    from napari_cell_unet.metrics import aggregate

    with ProcessPoolExecutor(workers) as pool:
        scored = list(pool.map(_score, [(f, rules, post) for f in files]))
    domains = sorted({domain for domain, _ in scored})
    lines = ["| rule | objective | " + " | ".join(f"{d}: F1 / IoU / mean F1 (found/true)" for d in domains) + " |",
             "|---|---:|" + "---|" * len(domains)]
    for index, (kind, value) in enumerate(rules):
        cells, objectives = [], []
        for domain in domains:
            total = aggregate([scores[index] for d, scores in scored if d == domain])
            f1 = total.get("pooled_f1_50", total["f1_50"])
            objectives.append(f1 + 0.25 * total["pixel_iou"])
            cells.append(f"{f1:.3f} / {total['pixel_iou']:.3f} / {total['mean_f1']:.3f} "
                         f"({total.get('n_pred')}/{total.get('n_true')})")
        lines.append(f"| {rule_name((kind, value))} | {np.mean(objectives):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="default, cells, nuclei or a model file")
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--domains", nargs="*", help="usiigaci, fluorescence, tissue (default: all)")
    parser.add_argument("--zooms", type=float, nargs="+", default=[1.0])
    parser.add_argument("--fixed", type=int, nargs="*", default=[60], help="fixed minimum sizes (px) to score")
    parser.add_argument("--fractions", type=float, nargs="*", default=[0.15, 0.2])
    parser.add_argument("--rule", nargs="*", default=[], help="'own' or key=value,... over the model's post-processing")
    parser.add_argument("--every-dsb", type=int, default=1, help="every n-th DSB image of the split")
    parser.add_argument("--cache", type=Path, default=REPO / "build" / "size_rule_cache")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    import torch

    import napari_cell_unet as cu

    torch.set_num_threads(args.threads)
    post = cu.load_model(args.model).postprocessing
    rules = ([("fixed", float(v)) for v in args.fixed] + [("fraction", f) for f in args.fractions]
             + [parse_rule(text) for text in args.rule])
    print(f"model {args.model}, thresholds {post}; torch {torch.__version__}, "
          f"{torch.backends.cpu.get_cpu_capability()}, {args.threads} threads")
    for zoom in args.zooms:
        files = cache_probabilities(args.model, args.split, zoom, args.domains, args.cache, args.every_dsb)
        print(f"\n{args.split}, zoom {zoom:g}, {len(files)} images\n\n{table(files, rules, post, args.threads)}",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
