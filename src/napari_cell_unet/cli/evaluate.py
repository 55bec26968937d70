"""Score a model against annotated images: instance F1/precision/recall, pixel IoU/Dice and COCO AP.

Prints one row per image and the mean; `--output` also writes everything as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import _checks as checks
from ._data_arguments import add_data_arguments, check_before_work, load_pairs
from ._diameter import add_diameter_argument

COLUMNS = (("n_true", "true", "{:d}"), ("n_pred", "found", "{:d}"), ("f1_50", "F1@.5", "{:.3f}"),
           ("precision_50", "P@.5", "{:.3f}"), ("recall_50", "R@.5", "{:.3f}"),
           ("mean_f1", "F1@.5:.95", "{:.3f}"), ("pixel_iou", "pixel IoU", "{:.3f}"), ("dice", "Dice", "{:.3f}"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help=checks.MODEL_HELP)
    add_data_arguments(parser, borders=False)
    parser.add_argument("--output", type=Path, help="write per-image and mean scores to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--tile-size", type=checks.tile_size,
                        help=f"tile side for prediction, {checks.MIN_TILE_SIZE} or more (default: {checks.DEFAULT_TILE_SIZE})")
    parser.add_argument("--cell-threshold", type=checks.probability, help="cell probability threshold (default: the model's)")
    parser.add_argument("--border-threshold", type=checks.probability, help="border probability threshold (default: the model's)")
    parser.add_argument("--min-size", type=checks.non_negative_int, help="smallest object kept, in pixels (default: the model's "
                        "rule, a fraction of a cell's area at the cell diameter used)")
    add_diameter_argument(parser)
    parser.add_argument("--no-ap", action="store_true", help="skip COCO AP (slow with thousands of cells)")


def run(args: argparse.Namespace) -> int:
    from ..model import load_model

    check_before_work(args)
    pairs = load_pairs(args)
    model = load_model(args.model)
    report = _evaluate(model, pairs, args)
    for warning in report.get("warnings", []):
        print(f"warning: {warning}", file=sys.stderr)
    print(format_table(report))
    if args.output:
        write_json(args.output, report, overwrite=args.overwrite)
        print(f"scores written to {args.output}")
    return 0


def _evaluate(model: Any, pairs: list, args: argparse.Namespace) -> dict:
    from tqdm import tqdm

    from ..evaluation import evaluate_model

    params = {"device": args.device, "tile_size": args.tile_size, "cell_threshold": args.cell_threshold,
              "border_threshold": args.border_threshold, "min_size": args.min_size}
    params = {**{k: v for k, v in params.items() if v is not None}, "diameter": args.diameter}
    with tqdm(total=len(pairs), unit="image", file=sys.stderr, leave=False) as bar:
        def progress(p) -> None:
            bar.n = p.done
            bar.set_description(p.message)
            bar.refresh()

        report = evaluate_model(model, pairs, progress=progress, with_ap=not args.no_ap, **params)
    report["model"] = str(args.model or "default")
    report["model_name"] = (getattr(model, "metadata", {}) or {}).get("name")
    report["segment_params"] = params
    return report


def format_table(report: dict) -> str:
    rows = [(s["name"], s) for s in report["images"]]
    if report.get("mean"):
        rows.append(("mean", report["mean"]))
    width = max([len("image")] + [len(name) for name, _ in rows])
    header = "  ".join([f"{'image':<{width}}"] + [f"{title:>9}" for _, title, _ in COLUMNS])
    lines = [header, "-" * len(header)]
    for name, scores in rows:
        cells = [_cell(scores.get(key), fmt) for key, _, fmt in COLUMNS]
        lines.append("  ".join([f"{name:<{width}}"] + [f"{c:>9}" for c in cells]))
    mean = report.get("mean") or {}
    if "pooled_f1_50" in mean:
        lines.append(f"pooled over all cells: F1@.5 {mean['pooled_f1_50']:.3f}  P@.5 {mean['pooled_precision_50']:.3f}"
                     f"  R@.5 {mean['pooled_recall_50']:.3f}")
    if "coco" in report:
        coco = report["coco"]
        lines.append(f"COCO mask AP (maxDets 2000): AP {coco['AP']:.3f}  AP50 {coco['AP50']:.3f}  AP75 {coco['AP75']:.3f}")
    return "\n".join(lines)


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return fmt.format(int(value)) if fmt == "{:d}" else fmt.format(float(value))


def write_json(path: Path, report: dict, overwrite: bool = False) -> None:
    from ..io._atomic import atomic_path

    with atomic_path(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(report, indent=2, default=_jsonable))


def _jsonable(value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)
