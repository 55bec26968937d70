"""The correction loop, scripted: segment -> correct (route A) or paint (route B) -> train -> segment again.

Route A ("correct"): the base model's cells in the left half of the image are replaced by the true ones
(Usiigaci `instances_ids.png`), the rest of its output is kept; the whole image is the training pair.
Route B ("paint"): N true cells are painted into an empty layer; region = painted_region(labels, 16).
Both are scored (F1 @ IoU 0.5 and pixel IoU, against the truth) on the corrected image and on other
images of the same and of other experiments, before and after training.

    python benchmarks/bench_correction_loop.py --routes A B --steps 100 --threads 2
    python benchmarks/bench_correction_loop.py --json out.json --set lr=3e-4   # TrainConfig overrides
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

DATA = Path(os.environ.get("CELL_UNET_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) / "usiigaci_phase"
# neighbouring Usiigaci sets show the same experiment; all of these were held out from the default model's training
CORRECTED = "set29"
SAME_EXPERIMENT = ["set21"]
OTHER_EXPERIMENTS = ["set5", "set13", "set35", "set41"]


def load(name: str) -> tuple[np.ndarray, np.ndarray]:
    from napari_cell_unet.io import read_image, read_labels

    return np.asarray(read_image(DATA / name / "raw.tif")), np.asarray(read_labels(DATA / name / "instances_ids.png"))


def corrected_labels(predicted: np.ndarray, truth: np.ndarray, fraction: float = 0.5) -> np.ndarray:
    """The model's labels with its cells in the left `fraction` of the image replaced by the true ones."""
    cut = int(predicted.shape[1] * fraction)
    out = predicted.astype(np.int32).copy()
    left_pred = _ids_centred_left(predicted, cut)
    out[np.isin(out, left_pred)] = 0
    left_true = _ids_centred_left(truth, cut)
    offset = int(out.max()) + 1
    mask = np.isin(truth, left_true)
    out[mask] = truth[mask].astype(np.int32) + offset
    return out


def _ids_centred_left(labels: np.ndarray, cut: int) -> np.ndarray:
    from scipy import ndimage

    ids = np.unique(labels)
    ids = ids[ids > 0]
    if ids.size == 0:
        return ids
    centres = ndimage.center_of_mass(np.ones_like(labels), labels, ids)
    return np.array([i for i, (_, x) in zip(ids, centres) if x < cut], dtype=ids.dtype)


def painted_labels(truth: np.ndarray, n_cells: int, seed: int = 0) -> np.ndarray:
    """`n_cells` true cells (seeded choice, away from the image edge) painted into an empty layer."""
    from skimage.measure import regionprops

    rng = np.random.default_rng(seed)
    height, width = truth.shape
    inside = [p.label for p in regionprops(truth.astype(np.int32))
              if p.bbox[0] > 0 and p.bbox[1] > 0 and p.bbox[2] < height and p.bbox[3] < width]
    chosen = rng.choice(inside, size=min(n_cells, len(inside)), replace=False)
    return np.where(np.isin(truth, chosen), truth, 0).astype(np.int32)


def score(labels: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    from napari_cell_unet.metrics import instance_scores

    scores = instance_scores(labels, truth)
    return {"f1": round(float(scores["f1_50"]), 4), "iou": round(float(scores["pixel_iou"]), 4),
            "tp": int(scores["tp_50"]), "fp": int(scores["fp_50"]), "fn": int(scores["fn_50"])}


def pooled_f1(scores: list[dict]) -> float:
    """F1 @ 0.5 from the matches summed over images (`metrics.aggregate`): one cell is one cell whichever image it
    is in (a per-image F1 on a 60-cell image moves by 0.016 per cell)."""
    from napari_cell_unet.metrics import aggregate

    counts = [{f"{k}_50": s.get(k, 0) for k in ("tp", "fp", "fn")} for s in scores]
    return aggregate(counts)["pooled_f1_50"]


DIAMETER = "auto"  # or "true": each image segmented at its true median cell diameter (isolates what training did)
BASE, BASE_DIAMETERS = None, {}  # with "base": the starting model estimates every image's diameter, once
A_REGION = "image"  # route A trains on the whole image, or "changed": only around the corrected cells
TAUGHT = "use"  # "ignore": the trained model forgets the sizes of its training images' cells before scoring
INTERPOLATE: list[float] = []  # also score start + a * (trained - start) for each a (weight-space interpolation)


# --jitter: each image is also scored under changes a user would not see (its diameter 3 % smaller or larger, the
# image moved by 1 or 2 px); one image's F1 @ 0.5 moves by up to 0.05 under them (benchmarks/RESULTS.md), so a
# change of the model is judged by the mean over these views
JITTER = False
VIEWS = ((1.0, 0), (0.97, 0), (1.03, 0), (1.0, 1), (1.0, 2))  # (diameter factor, shift in px down and right)


def evaluate(model, images: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, dict[str, float]]:
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import estimate_diameter, iter_segment
    from napari_cell_unet.inference.diameter import estimate_cell_diameter

    def diameter(image, truth):
        if DIAMETER == "true":
            return estimate_diameter(truth)
        if DIAMETER == "base":
            if id(image) not in BASE_DIAMETERS:
                BASE_DIAMETERS[id(image)] = estimate_cell_diameter(image, BASE).diameter
            return BASE_DIAMETERS[id(image)]
        return "auto"

    scores = {}
    for name, (image, truth) in images.items():
        result = result_of(iter_segment(image, model, diameter=diameter(image, truth)))
        scores[name] = score(result.labels, truth)
        if JITTER:
            scores[name]["views"] = jittered_scores(model, image, truth, result.diameter)
            f1s = [view["f1"] for view in scores[name]["views"]]
            scores[name].update(f1_views=round(float(np.mean(f1s)), 4), f1_views_sd=round(float(np.std(f1s)), 4))
    return scores


def jittered_scores(model, image: np.ndarray, truth: np.ndarray, diameter: float | None) -> list[dict]:
    """`score` of each of `VIEWS`: the image segmented at `diameter` times a factor, or moved by a few pixels (the
    labels moved back before scoring). `diameter` None = the model's own size."""
    import napari_cell_unet as cu

    own = diameter if diameter is not None else model.metadata["cell_diameter"]
    views = []
    for factor, shift in VIEWS:
        moved = np.pad(image, ((shift, 0), (shift, 0)), mode="edge")[:image.shape[0], :image.shape[1]]
        labels = cu.segment(moved, model, diameter=own * factor)
        if shift:
            labels = np.pad(labels[shift:, shift:], ((0, shift), (0, shift)))
        views.append(score(labels, truth))
    return views


def changed_cells(corrected: np.ndarray, predicted: np.ndarray, iou: float = 0.8) -> np.ndarray:
    """The corrected labels' cells that no predicted cell matches at IoU >= `iou`: what a user had to fix."""
    both = (corrected > 0) & (predicted > 0)
    pairs, inter = np.unique(np.stack([corrected[both], predicted[both]]), axis=1, return_counts=True)
    area_c = dict(zip(*np.unique(corrected, return_counts=True)))
    area_p = dict(zip(*np.unique(predicted, return_counts=True)))
    kept = {int(c) for (c, p), n in zip(pairs.T, inter) if n / (area_c[c] + area_p[p] - n) >= iou}
    ids = [i for i in area_c if i > 0 and int(i) not in kept]
    return np.where(np.isin(corrected, ids), corrected, 0)


def run_route(route: str, base, images, steps: int, n_cells: int, overrides: dict) -> dict:
    from napari_cell_unet.training import TrainConfig, TrainingPair, painted_region, train

    image, truth = images[CORRECTED]
    if route == "A":
        import napari_cell_unet as cu

        predicted = cu.segment(image, base)
        labels = corrected_labels(predicted, truth)
        region = painted_region(changed_cells(labels, predicted), 16) if A_REGION == "changed" else None
        pair = TrainingPair(image, labels, region=region, name=CORRECTED)
    else:
        labels = painted_labels(truth, n_cells)
        pair = TrainingPair(image, labels, region=painted_region(labels, 16), name=CORRECTED)
    started = time.perf_counter()
    result = train([pair], model=base, config=TrainConfig(steps=steps, **overrides), on_event=_log)
    seconds = time.perf_counter() - started
    if TAUGHT == "ignore":
        result.model.metadata.pop("taught_diameters", None)
    interpolated = {str(a): evaluate(interpolated_model(base, result.model, a), images) for a in INTERPOLATE}
    return {"interpolated": interpolated, "route": route, "steps": steps, "n_cells": n_cells if route == "B" else None,
            "seconds": round(seconds, 1), "best_step": result.best_step,
            "improved": getattr(result, "improved", None),
            "after": evaluate(result.model, images),
            "metrics_on_validation": {"base": result.base_metrics, "best": result.metrics}}


def interpolated_model(start, trained, fraction: float):
    """A copy of `trained` (its metadata too) whose weights are start + fraction * (trained - start)."""
    import copy

    from napari_cell_unet.training.loop import blended_state

    blended = copy.deepcopy(trained)
    blended.network.load_state_dict(blended_state(start.network.state_dict(), trained.network.state_dict(), fraction))
    return blended


def _log(event) -> None:
    kind = type(event).__name__
    if kind == "Validation" or (kind == "TrainStep" and event.step % 25 == 0):
        print(f"  {time.strftime('%H:%M:%S')} {event}", flush=True)


def markdown(report: dict) -> str:
    """One row per run: the corrected image before -> after, and the change elsewhere (mean and worst)."""
    before = report["before"]
    head = ("| route | painted cells | steps | s | held-back F1, widget | corrected F1 | corrected IoU "
            "| same exp. dF1 | other exp. dF1 mean / worst | elsewhere pooled F1 | other exp. dIoU mean / worst |\n"
            "|---|---:|---:|---:|---|---|---|---:|---|---|---|\n")
    rows = []
    for run in report["runs"]:
        after = run["after"]

        def delta(names, key):
            values = [after[n][key] - before[n][key] for n in names if n in after]
            return values or [float("nan")]

        same, other = delta(SAME_EXPERIMENT, "f1"), delta(OTHER_EXPERIMENTS, "f1")
        other_iou = delta(OTHER_EXPERIMENTS, "iou")
        c0, c1 = before[CORRECTED], after[CORRECTED]
        elsewhere = [n for n in SAME_EXPERIMENT + OTHER_EXPERIMENTS if n in after]
        p0, p1 = pooled_f1([before[n] for n in elsewhere]), pooled_f1([after[n] for n in elsewhere])
        rows.append(f"| {run['route']} | {run['n_cells'] or 'half image'} | {run['steps']} | {run['seconds']:.0f} "
                    f"| {_held_out(run)} | {c0['f1']:.3f} → {c1['f1']:.3f} | {c0['iou']:.3f} → {c1['iou']:.3f} "
                    f"| {np.mean(same):+.3f} | {np.mean(other):+.3f} / {min(other):+.3f} | {p0:.3f} → {p1:.3f} "
                    f"| {np.mean(other_iou):+.3f} / {min(other_iou):+.3f} |")
    return head + "\n".join(rows) + "\n"


def jitter_markdown(report: dict) -> str:
    """With --jitter: F1 @ 0.5 as the mean over the views, before -> after, per image; in brackets the spread of
    one image's F1 over the views (standard deviation) before training."""
    before = report["before"]
    names = list(before)
    head = ("| route | painted cells | " + " | ".join(f"{n}{' (corrected)' if n == report['corrected'] else ''}"
                                                      for n in names) + " | elsewhere worst |\n"
            + "|---|---:|" + "---|" * len(names) + "---:|\n")
    spread = "| view spread (sd) before | | " + " | ".join(f"{before[n]['f1_views_sd']:.3f}" for n in names) + " | |\n"
    rows = []
    for run in report["runs"]:
        after = run["after"]
        deltas = {n: after[n]["f1_views"] - before[n]["f1_views"] for n in names}
        cells = [f"{before[n]['f1_views']:.3f} → {after[n]['f1_views']:.3f} ({deltas[n]:+.3f})" for n in names]
        worst = min(deltas[n] for n in names if n != report["corrected"])
        rows.append(f"| {run['route']} | {run['n_cells'] or 'half image'} | " + " | ".join(cells) + f" | {worst:+.3f} |")
    return head + spread + "\n".join(rows) + "\n"


def _held_out(run: dict) -> str:
    """'0.83 → 0.85 yes': F1 on the held-back cells, and whether the widget would select the model."""
    scores = run.get("metrics_on_validation") or {}
    base, best = scores.get("base"), scores.get("best")
    verdict = {True: "selected", False: "kept previous", None: "no validation"}[run["improved"]]
    return f"{base['f1']:.2f} → {best['f1']:.2f}, {verdict}" if base and best else verdict


def cpu_flags() -> str:
    """torch's CPU capability and the flags that decide CPU speed (AVX2/AVX-512, native bf16)."""
    import torch

    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    try:
        line = next(row for row in Path("/proc/cpuinfo").read_text().splitlines() if row.startswith("flags"))
        present = [f for f in wanted if f in line.split()]
    except (OSError, StopIteration):
        present = []
    return f"{torch.backends.cpu.get_cpu_capability()} ({' '.join(present) or 'no AVX2'})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--routes", nargs="+", default=["A", "B"], choices=["A", "B"])
    parser.add_argument("--steps", type=int, nargs="+", default=[100])
    parser.add_argument("--cells", type=int, nargs="+", default=[5, 10, 20], help="painted cells for route B")
    parser.add_argument("--images", nargs="+", help="images to score (default: all; the corrected one always)")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--set", nargs="*", default=[], help="TrainConfig overrides, key=value (python literals)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--diameter", choices=("auto", "true", "base"), default="auto",
                        help="segment the scored images with the automatic diameter (default), their true one, or the "
                             "starting model's automatic estimate (diameters that do not move with fine-tuning)")
    parser.add_argument("--taught", choices=("use", "ignore"), default="use",
                        help="ignore: score the trained model without the cell sizes it remembers of its training "
                             "images (every image's diameter then comes from the automatic estimate)")
    parser.add_argument("--split", choices=("test", "validation"), default="test",
                        help="test: set29 corrected, set21 same experiment, set5/13/35/41 others (the numbers reported); "
                             "validation: set27 corrected, set38/10/42 others (where settings are chosen)")
    parser.add_argument("--corrected", help="the image to correct or paint (default: set29 on test, set27 on "
                        "validation); every other image of the split is scored as 'other'")
    parser.add_argument("--a-region", choices=("image", "changed"), default="image",
                        help="route A trains on the whole image, or only around the cells the correction changed "
                             "(the rest kept close to the starting model)")
    parser.add_argument("--jitter", action="store_true",
                        help="also score each image as the mean over views a user would not tell apart (diameter "
                             "x0.97 / x1.03, the image moved by 1-2 px): one image's F1 moves by up to 0.05 under them")
    parser.add_argument("--interpolate", type=float, nargs="*", default=[],
                        help="also score each trained model with its weights moved back towards the start: "
                             "start + a * (trained - start) for each a")
    args = parser.parse_args(argv)
    import ast

    import torch

    import napari_cell_unet as cu

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.set)}
    if args.threads:
        overrides.setdefault("threads", args.threads)
    global DIAMETER, A_REGION, TAUGHT, INTERPOLATE, JITTER
    DIAMETER, A_REGION, TAUGHT, INTERPOLATE = args.diameter, args.a_region, args.taught, args.interpolate
    JITTER = args.jitter
    if args.split == "validation":
        global CORRECTED, SAME_EXPERIMENT, OTHER_EXPERIMENTS
        # set27 (sets 17-29) has no other validation set of its experiment
        CORRECTED, SAME_EXPERIMENT, OTHER_EXPERIMENTS = "set27", [], ["set38", "set10", "set42"]
    if args.corrected:
        split = [CORRECTED] + SAME_EXPERIMENT + OTHER_EXPERIMENTS
        if args.corrected not in split:
            parser.error(f"--corrected must be one of the {args.split} images: {', '.join(split)}")
        CORRECTED = args.corrected
        import sys

        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
        from default_model_data import _usiigaci_group  # neighbouring sets are frames of one dish

        group = _usiigaci_group(CORRECTED)
        SAME_EXPERIMENT = [n for n in split if n != CORRECTED and _usiigaci_group(n) == group]
        OTHER_EXPERIMENTS = [n for n in split if n != CORRECTED and _usiigaci_group(n) != group]
    names = [CORRECTED] + [n for n in (args.images or SAME_EXPERIMENT + OTHER_EXPERIMENTS) if n != CORRECTED]
    images = {name: load(name) for name in names}
    base = cu.load_model()
    global BASE
    BASE = base
    report = {"machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
                         f"{torch.get_num_threads()} threads, CPU capability {cpu_flags()}, torch {torch.__version__}",
              "overrides": overrides, "corrected": CORRECTED, "before": evaluate(base, images), "runs": []}
    print(json.dumps({"before": report["before"]}), flush=True)
    for steps in args.steps:
        for route in args.routes:
            for n_cells in (args.cells if route == "B" else [0]):
                run = run_route(route, base, images, steps, n_cells, overrides)
                report["runs"].append(run)
                print(json.dumps(run), flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(markdown(report))
    if JITTER:
        print(jitter_markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
