"""Tune a candidate default model's thresholds on the validation split, then report it on the test split.

    python scripts/evaluate_default_model.py build/default_v2/model.safetensors --tune --write-model \
        --report docs/default_model/evaluation.json

Split: scripts/default_model_data.py. Thresholds are chosen on the validation images only (each
segmented at its automatically estimated diameter, as the default call does); the test images are
segmented once with the chosen thresholds and never influence anything. Reported per domain and per
held-out group: F1@0.5, mean F1 over IoU 0.5:0.95, pixel IoU, COCO AP; the automatic diameter's
error on test images zoomed 0.5x, 1x and 2x; the cell count on the LIVECell frame at the default call.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from default_model_data import all_items  # noqa: E402
from train_default_model import jsonable, log  # noqa: E402  (same folder)

# 0.05 joined the border grid after 0.1, then its lowest, won every tuning; with the size model it was chosen
# (benchmarks/RESULTS.md, 2026-12-02 evening)
# min_size_fraction (of a cell's area at the diameter segmented at) joined with 0.15 and 0.2; min_size 10 is its floor
# (benchmarks/RESULTS.md, 2026-12-04)
# split_border_threshold 0.01 with split_seed_fraction 0.3 joined after a sweep of 0.003-0.02 x 0.05-0.5 on the
# validation split (benchmarks/RESULTS.md, 2026-12-04 afternoon)
GRID = {"cell_threshold": [0.4, 0.5, 0.6, 0.7], "border_threshold": [0.05, 0.1, 0.2, 0.35, 0.5],
        "min_size": [10, 20, 60], "merge_threshold": [0.0, 0.25, 0.4], "min_size_fraction": [0.0, 0.15, 0.2],
        "split_border_threshold": [0.0, 0.01], "split_seed_fraction": [0.3]}
LIVECELL = REPO.parent / "shared" / "data" / "livecell_samples" / "A172_Phase_A7_1_00d00h00m_1.tif"


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="model file, or 'default' for the bundled one")
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--tune", action="store_true", help="grid-search the thresholds on the validation split first")
    p.add_argument("--write-model", action="store_true", help="store the tuned thresholds in the model file")
    p.add_argument("--dsb-test-every", type=int, default=1, help="use every n-th DSB test image (quick runs)")
    p.add_argument("--zoom-every", type=int, default=4, help="diameter check on every n-th test image")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--diameter", default="auto", help="'auto' (the default call), 'none' (no rescaling) or 'true' (each image "
                   "at its labels' median diameter: how much a perfect size estimate would give)")
    p.add_argument("--tta", action="store_true", help="test-time augmentation: mean over the four flips")
    p.add_argument("--validation-only", action="store_true",
                   help="with --tune: report the validation scores and stop (to compare candidates; no test image)")
    p.add_argument("--domains", nargs="+", choices=("fluorescence", "tissue", "usiigaci"), default=None,
                   help="tune and report on these domains only (a specialist model's own; default: all)")
    p.add_argument("--report", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None, help="also write the tables as Markdown")
    return p.parse_args(argv)


DIAMETER = "auto"
TTA = False


def segment_item(model, image, diameter=None, truth=None, **params):
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import estimate_diameter, iter_segment

    diameter = DIAMETER if diameter is None else diameter
    if diameter == "true":  # the oracle: the median diameter of the image's own labels (a diagnostic, no product)
        diameter = estimate_diameter(truth)
    return result_of(iter_segment(image, model, device="cpu", diameter=diameter, return_probabilities=True, tta=TTA,
                                  **params))


def tune(model, items, start):
    from napari_cell_unet.training.tune import _run_jobs, summarize

    from napari_cell_unet.inference.rescale import model_diameter

    probabilities, truths, domains, diameters = [], [], [], []
    for item in items:
        image, labels = item.load()
        result = segment_item(model, image, truth=labels)
        probabilities.append(result.probabilities)
        truths.append(labels)
        domains.append(item.domain)
        diameters.append(result.diameter or model_diameter(model))
    keys = list(GRID)
    candidates = [dict(zip(keys, values)) for values in itertools.product(*(GRID[k] for k in keys))]
    per_image = _run_jobs([(p, t, candidates, d) for p, t, d in zip(probabilities, truths, diameters)], workers=2)
    rows = []
    for i, params in enumerate(candidates):
        by_domain = {d: summarize([s[i] for s, dom in zip(per_image, domains) if dom == d]) for d in set(domains)}
        # every domain weighs the same, whatever its number of validation images
        rows.append({"params": params, "objective": float(np.mean([v["objective"] for v in by_domain.values()])),
                     "by_domain": by_domain})
    own = [r for r in rows if all(model.postprocessing.get(k) == v for k, v in r["params"].items())]
    if own:  # the file's current thresholds, for comparison
        log(start, f"the model's own thresholds {own[0]['params']}: objective {own[0]['objective']:.3f} "
                   + str({d: round(v["f1_50"], 3) for d, v in own[0]["by_domain"].items()}))
    rows.sort(key=lambda r: -r["objective"])
    log(start, f"tuned on {len(items)} validation images: {rows[0]['params']} (objective {rows[0]['objective']:.3f})")
    return rows[0]["params"], rows[:5]


def test_report(model, items, zoom_every, start):
    from napari_cell_unet.inference import estimate_diameter
    from napari_cell_unet.inference.rescale import resize_bilinear
    from napari_cell_unet.metrics import aggregate, coco_ap, instance_scores

    groups, diameters, overheads = defaultdict(list), [], []
    for number, item in enumerate(items):
        image, labels = item.load()
        started = time.perf_counter()
        result = segment_item(model, image, truth=labels)
        seconds = time.perf_counter() - started
        scores = instance_scores(result.labels, labels)
        true_diameter = estimate_diameter(labels)
        row = {"name": item.name, "domain": item.domain, "group": item.group, "seconds": round(seconds, 2),
               "true_diameter": round(true_diameter, 1), "auto_diameter": result.diameter, **scores,
               "labels": result.labels, "truth": labels, "cell_map": result.probabilities[0]}
        groups[(item.domain, item.group)].append(row)
        if number % zoom_every == 0:
            if result.diameter is not None:  # the estimate's cost: the same call with the diameter given
                fixed = segment_item(model, image, diameter=result.diameter)
                overheads.append((result.seconds - fixed.seconds) / fixed.seconds)
            for zoom in (0.5, 1.0, 2.0):
                zoomed = image if zoom == 1 else resize_bilinear(
                    image, (round(image.shape[0] * zoom), round(image.shape[1] * zoom)), axes=(0, 1))
                estimate = result.diameter if zoom == 1 else segment_diameter(model, zoomed)
                error = (estimate / (true_diameter * zoom) - 1) if estimate else None
                diameters.append({"name": item.name, "domain": item.domain, "zoom": zoom, "error": error})
        if number % 10 == 0:
            log(start, f"test image {number + 1}/{len(items)} ({item.domain}): F1@0.5 {scores['f1_50']:.3f}, "
                       f"auto diameter {result.diameter} (true {true_diameter:.1f})")
    report = {"groups": [], "domains": {}}
    by_domain = defaultdict(list)
    for (domain, group), rows in groups.items():
        report["groups"].append({"domain": domain, "group": group, **summary(rows, aggregate, coco_ap)})
        by_domain[domain].extend(rows)
    for domain, rows in by_domain.items():
        report["domains"][domain] = summary(rows, aggregate, coco_ap)
    within = [d for d in diameters if d["error"] is not None and abs(d["error"]) <= 0.15]
    report["diameter"] = {"checked": len(diameters), "within_15_percent": len(within),
                          "fraction": round(len(within) / max(1, len(diameters)), 3),
                          "by_domain_zoom": _diameter_table(diameters), "rows": diameters,
                          "estimate_overhead_median": round(float(np.median(overheads)), 3) if overheads else None}
    return report


def segment_diameter(model, image):
    from napari_cell_unet.inference.diameter import estimate_cell_diameter

    return estimate_cell_diameter(image, model, device="cpu").diameter


def summary(rows, aggregate, coco_ap):
    skip = ("labels", "truth", "cell_map", "name", "domain", "group", "auto_diameter", "true_diameter")
    scores = [{k: v for k, v in r.items() if k not in skip} for r in rows]
    total = aggregate(scores)
    ap = coco_ap([r["labels"] for r in rows], [r["truth"] for r in rows], probabilities=[r["cell_map"] for r in rows])
    return {"images": len(rows), "cells": int(total["n_true"]), "found": int(total["n_pred"]),
            "f1_50": round(total.get("pooled_f1_50", total["f1_50"]), 3), "mean_f1": round(total["mean_f1"], 3),
            "pixel_iou": round(total["pixel_iou"], 3), "ap": round(ap["AP"], 3), "ap50": round(ap["AP50"], 3),
            "seconds_per_image": round(float(np.mean([r["seconds"] for r in rows])), 2)}


def _diameter_table(rows):
    table = defaultdict(lambda: [0, 0])
    for row in rows:
        key = f"{row['domain']} x{row['zoom']}"
        table[key][1] += 1
        table[key][0] += row["error"] is not None and abs(row["error"]) <= 0.15
    return {k: f"{good}/{n}" for k, (good, n) in sorted(table.items())}


def livecell(model):
    from napari_cell_unet.io import read_image

    # the frame has no labels for the oracle to measure: the oracle run sizes it like the default call
    result = segment_item(model, read_image(LIVECELL), diameter="auto" if DIAMETER == "true" else None)
    return {"cells": int(result.n_cells), "auto_diameter": result.diameter, "seconds": round(result.seconds, 1)}


def main(argv=None):
    global DIAMETER, TTA
    args = parse_args(argv)
    DIAMETER = None if args.diameter == "none" else args.diameter
    TTA = args.tta
    start = time.perf_counter()
    import torch

    from napari_cell_unet.model import load_model, save_model

    torch.set_num_threads(args.threads)
    model = load_model(None if args.model == "default" else args.model)
    split = {part: [i for i in items if args.domains is None or i.domain in args.domains]
             for part, items in all_items(args.data).items()}
    out = {"model": args.model, "grid": GRID, "diameter": args.diameter, "tta": args.tta, "domains": args.domains}
    if args.tune:
        params, top = tune(model, split["validation"], start)
        model.metadata["postprocessing"] = {**model.postprocessing, **params}
        out["tuning"] = {"chosen": params, "top5": top}
        for domain, row in top[0]["by_domain"].items():
            log(start, f"validation {domain}: {_brief(row)}")
        if args.validation_only:
            _write_report(args.report, out)
            return 0
    test = [i for i in split["test"] if i.domain == "usiigaci"]
    test += [i for i in split["test"] if i.domain != "usiigaci"][::args.dsb_test_every]
    out["postprocessing"] = model.postprocessing
    out["test"] = test_report(model, test, args.zoom_every, start)
    if args.domains is None or "usiigaci" in args.domains:  # the LIVECell frame is phase contrast
        out["livecell"] = livecell(model)
        log(start, f"LIVECell frame: {out['livecell']}")
    for domain, row in out["test"]["domains"].items():
        log(start, f"test {domain}: {row}")
    log(start, f"auto diameter within 15 %: {out['test']['diameter']['within_15_percent']}/"
               f"{out['test']['diameter']['checked']} {out['test']['diameter']['by_domain_zoom']}")
    if args.write_model and args.tune and args.model != "default":
        model.metadata.setdefault("training", {})["evaluation"] = {
            "test_domains": out["test"]["domains"], "livecell": out.get("livecell"),
            "diameter_within_15_percent": out["test"]["diameter"]["fraction"]}
        save_model(model, args.model, half=True)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(markdown(out))
    _write_report(args.report, out)
    log(start, "done")
    return 0


def _write_report(path, out) -> None:
    if path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=1, default=jsonable))


def _brief(row) -> str:
    return ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()
                     if not isinstance(v, (list, dict)))


def markdown(out) -> str:
    columns = ("images", "cells", "found", "f1_50", "mean_f1", "pixel_iou", "ap", "ap50", "seconds_per_image")
    header = "| " + " | ".join(("data",) + columns) + " |\n|" + "---|" * (len(columns) + 1) + "\n"
    lines = [f"Model: `{out['model']}`, diameter: {out['diameter']}, post-processing: {out['postprocessing']}", "",
             "Test split, per domain:", "", header.rstrip()]
    lines += ["| " + " | ".join([domain] + [str(row[c]) for c in columns]) + " |"
              for domain, row in sorted(out["test"]["domains"].items())]
    lines += ["", "Per held-out group:", "", header.rstrip()]
    lines += ["| " + " | ".join([f"{g['domain']}: {g['group']}"] + [str(g[c]) for c in columns]) + " |"
              for g in sorted(out["test"]["groups"], key=lambda g: (g["domain"], g["group"]))]
    diameter = out["test"]["diameter"]
    lines += ["", f"Automatic diameter within 15 % of the true median: {diameter['within_15_percent']}/"
                  f"{diameter['checked']} ({diameter['by_domain_zoom']}); median extra time of the estimate: "
                  f"{diameter['estimate_overhead_median']}",
              "", f"LIVECell A172 frame at the default call: {out.get('livecell', 'not measured (not phase contrast)')}"]
    if "tuning" in out:
        lines += ["", f"Thresholds chosen on the validation split: {out['tuning']['chosen']}"]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
