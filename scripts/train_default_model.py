"""Train the bundled default model on the Usiigaci phase-contrast sets (the recipe behind the model card).

    python scripts/train_default_model.py --minutes 7 --output build/default_model/default.safetensors
    python scripts/train_default_model.py --minutes 1 --architecture tiny          # CPU smoke run

Steps: read the 40 sets (borders derived from the instances where no feature_0.png exists, OR-ed
with it where it does), hold out the fixed validation sets of configs/default_model.json, train a
U-Net from scratch within the time budget (cosine schedule over the budget), keep the best
validation checkpoint, grid-search the post-processing thresholds on the validation sets, store
them in the model, save it in half precision and write a JSON report next to it.

Imports only numpy, scipy, scikit-image, tifffile, pillow, torch, segmentation-models-pytorch and
safetensors (no napari, Qt, tqdm or pycocotools), so it runs on a bare GPU machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))  # run from a checkout without installing

import numpy as np  # noqa: E402


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="data root holding usiigaci_phase/ (or the usiigaci_phase folder itself)")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "default_model.json")
    p.add_argument("--minutes", type=float, default=None, help="wall-clock budget of the whole run (default: config)")
    p.add_argument("--architecture", choices=("default", "tiny"), default="default",
                   help="tiny: a very small network, for smoke runs")
    p.add_argument("--output", type=Path, default=REPO / "build" / "default_model" / "default.safetensors")
    p.add_argument("--report", type=Path, default=None, help="JSON report (default: next to --output)")
    p.add_argument("--device", default="auto")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--crop-size", type=int, default=None)
    p.add_argument("--validations", type=int, default=None)
    p.add_argument("--workers", type=int, default=None, help="processes for the threshold search")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def find_sets(data: Path, dataset: str) -> dict[str, Path]:
    root = data / dataset if (data / dataset).is_dir() else data
    sets = {d.name: d for d in root.iterdir() if d.is_dir() and re.fullmatch(r"set\d+", d.name)}
    if not sets:
        raise SystemExit(f"error: no setNN folders under {root}")
    return dict(sorted(sets.items(), key=lambda kv: int(kv[0][3:])))


def load_set(name: str, folder: Path):
    """One Usiigaci set as a TrainingPair (image float32, instances; feature_0 as painted borders)."""
    import tifffile
    from PIL import Image

    from napari_cell_unet.training import TrainingPair

    image = tifffile.imread(folder / "raw.tif").astype(np.float32)
    labels = np.asarray(Image.open(folder / "instances_ids.png"))
    border_file = folder / "feature_0.png"
    borders = np.asarray(Image.open(border_file)) > 0 if border_file.exists() else None
    return TrainingPair(image, labels, borders, name=name)


def log(start: float, message: str) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {message}", flush=True)


def train_logged(events, start: float, every_s: float):
    """Run an `iter_train` generator to its `TrainResult`, logging a training step at most every `every_s` seconds
    and every validation."""
    from napari_cell_unet._progress import result_of
    from napari_cell_unet.training import TrainStep, Validation

    last_print = 0.0

    def show(event) -> None:
        nonlocal last_print
        if isinstance(event, TrainStep) and time.perf_counter() - last_print > every_s:
            last_print = time.perf_counter()
            log(start, f"step {event.step} (~{event.total_steps})  epoch {event.epoch:.2f}  loss {event.loss:.4f}  "
                       f"lr {event.lr:.2e}")
        elif isinstance(event, Validation):
            log(start, f"validation at step {event.step}: loss {event.val_loss:.4f}  Dice {event.dice:.3f}  "
                       f"F1@0.5 {event.f1:.3f}{'  (best)' if event.is_best else ''}")

    return result_of(events, on_event=show)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch

    from napari_cell_unet.inference import resolve_device
    from napari_cell_unet.model import save_model, load_model
    from napari_cell_unet.training import TrainConfig, iter_train
    from napari_cell_unet.training.loop import machine_description
    from napari_cell_unet.training.tune import predict_pairs, score_postprocessing, summarize, tune_postprocessing
    from napari_cell_unet.training.targets import as_instance_labels

    config = json.loads(args.config.read_text())
    report_path = args.report or args.output.with_suffix(".json")
    if args.output.exists() and not args.overwrite:
        raise SystemExit(f"error: {args.output} exists; pass --overwrite to replace it")
    device = torch.device(resolve_device(args.device))
    budget = 60.0 * (args.minutes if args.minutes is not None else config["train"]["minutes"])

    sets = find_sets(args.data, config["dataset"])
    val_names = list(config["validation_sets"])
    missing = [n for n in val_names if n not in sets]
    if missing:
        raise SystemExit(f"error: validation sets {missing} not found under {args.data}")
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
        pairs = dict(zip(sets, pool.map(load_set, sets, sets.values())))
    train_pairs = [p for n, p in pairs.items() if n not in val_names]
    val_pairs = [pairs[n] for n in val_names]
    log(start, f"read {len(pairs)} sets: {len(train_pairs)} for training, {len(val_pairs)} for validation "
               f"({', '.join(val_names)}); device {device}")

    on_cpu = device.type == "cpu"
    train_settings = {k: v for k, v in config["train"].items() if k != "minutes"}
    if on_cpu:  # a CPU cannot chew the GPU batch; keep smoke runs short
        train_settings.update(batch_size=4, crop_size=128, validations=0)
    for key in ("batch_size", "crop_size", "validations"):
        if getattr(args, key) is not None:
            train_settings[key] = getattr(args, key)
    architecture = config["tiny_architecture"] if args.architecture == "tiny" else config["architecture"]
    reserve = min(float(config["reserve_seconds"]), 0.4 * budget)
    train_minutes = max(0.1, (budget - (time.perf_counter() - start) - reserve) / 60.0)
    train_config = TrainConfig(minutes=train_minutes, device=str(device), architecture=architecture,
                               name=config["name"], **train_settings)
    log(start, f"training for {train_minutes:.2f} min: {train_settings}")

    result = train_logged(iter_train(train_pairs, "scratch", train_config, val_pairs=val_pairs), start, every_s=10)
    model = result.model
    steps = model.metadata["training"]["steps"]
    log(start, f"trained {steps} steps; best checkpoint at step {result.best_step}")

    probabilities = predict_pairs(model, val_pairs, device=str(device))
    grid = config["smoke_tuning_grid"] if on_cpu else config["tuning_grid"]
    best, table = tune_postprocessing(model, val_pairs, grid, probabilities=probabilities, workers=args.workers)
    model.metadata["postprocessing"] = {**model.postprocessing, **best}
    log(start, f"tuned post-processing on the validation sets: {best}")

    truths = [as_instance_labels(p.labels) for p in val_pairs]
    per_set = {p.name: score_postprocessing(prob, truth, best)
               for p, prob, truth in zip(val_pairs, probabilities, truths)}
    overall = summarize(per_set.values())
    model.metadata["training"]["validation"] = {
        "sets": val_names, "f1_50": overall["f1_50"], "mean_f1_50_95": overall["mean_f1"],
        "pixel_iou": overall["pixel_iou"], "postprocessing": best}
    model.metadata["training"]["recipe"] = "scripts/train_default_model.py + configs/default_model.json"
    model.metadata["training"]["total_seconds"] = round(time.perf_counter() - start, 1)
    save_model(model, args.output, half=True)
    reloaded = load_model(args.output)  # the file must load before we call it done
    size_mb = args.output.stat().st_size / 1e6

    report = {
        "model": str(args.output), "size_mb": round(size_mb, 2), "name": reloaded.name,
        "machine": machine_description(device), "seconds": round(time.perf_counter() - start, 1),
        "train_sets": [p.name for p in train_pairs], "validation_sets": val_names,
        "architecture": architecture, "train_config": model.metadata["training"]["config"],
        "steps": steps, "best_step": result.best_step,
        "validation": overall, "validation_per_set": per_set, "postprocessing": best,
        "tuning_table_top10": table[:10],
        "history": [h for h in result.history if h["event"] == "validation"],
    }
    _write_json(report_path, report)
    log(start, f"validation ({', '.join(val_names)}): F1@0.5 {overall['f1_50']:.3f}  "
               f"mean F1 0.5:0.95 {overall['mean_f1']:.3f}  pixel IoU {overall['pixel_iou']:.3f}")
    log(start, f"wrote {args.output} ({size_mb:.1f} MB) and {report_path}")
    return 0


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2, default=jsonable)
    os.replace(tmp, path)


def jsonable(value):
    """json.dump's `default`: numpy scalars as numbers, anything else as its string."""
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
