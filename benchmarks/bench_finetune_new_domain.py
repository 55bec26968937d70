"""Does fine-tuning the default model on a kind of image it never saw pay off in minutes on a CPU?

    python benchmarks/bench_finetune_new_domain.py --steps 300 --threads 2

The DSB 2018 bright-field group (10 images of 1024 x 1024, nuclei annotated) is in no split of the
default model's training (scripts/default_model_data.py). Fine-tune on the first `--train` of them
with the library's CPU defaults (`train(..., TrainConfig(steps=N))`), then score the others: F1@0.5,
mean F1 0.5:0.95 and pixel IoU before and after, at the default call (`diameter="auto"`), and the
seconds per step. Prints one JSON object, with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))

from default_model_data import dsb_items  # noqa: E402


def cpu_description() -> dict:
    import torch

    flags = ""
    try:
        flags = next(line for line in open("/proc/cpuinfo") if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    model = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                 platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    return {"cpu": model, "threads": torch.get_num_threads(),
            "avx512_bf16": "avx512_bf16" in flags, "amx": "amx_bf16" in flags, "avx2": "avx2" in flags,
            "mkldnn_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()), "torch": torch.__version__}


def score(model, items) -> dict:
    from napari_cell_unet import segment
    from napari_cell_unet.metrics import aggregate, instance_scores

    rows = []
    for item in items:
        image, labels = item.load()
        rows.append(instance_scores(segment(image, model, device="cpu"), labels))
    total = aggregate(rows)
    return {"f1_50": round(total.get("pooled_f1_50", total["f1_50"]), 3), "mean_f1": round(total["mean_f1"], 3),
            "pixel_iou": round(total["pixel_iou"], 3), "found": int(total["n_pred"]), "cells": int(total["n_true"])}


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """--data, --model, --threads: shared with bench_bf16_agreement.py."""
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--model", default=None, help="model file (default: the bundled model)")
    parser.add_argument("--threads", type=int, default=2)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--train", type=int, default=5, help="images to fine-tune on; the rest are the test")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the library's)")
    p.add_argument("--unfreeze", action="store_true", help="train the encoder too (a new modality)")
    p.add_argument("--anchor", type=float, default=None, help="pull towards the start's weights (default: library's)")
    args = p.parse_args(argv)
    import torch

    from napari_cell_unet.model import load_model
    from napari_cell_unet.training import TrainConfig, TrainingPair, train

    torch.set_num_threads(args.threads)
    items = dsb_items(args.data)["new_domain"]
    train_items, test_items = items[:args.train], items[args.train:]
    model = load_model(args.model)
    before = score(model, test_items)
    pairs = [TrainingPair(*item.load(), name=item.name) for item in train_items]
    started = time.perf_counter()
    extra = {"lr": args.lr} if args.lr is not None else {}
    extra.update({"freeze_encoder": False} if args.unfreeze else {})
    extra.update({"anchor": args.anchor} if args.anchor is not None else {})
    result = train(pairs, model, TrainConfig(steps=args.steps, threads=args.threads, **extra))
    seconds = time.perf_counter() - started
    after = score(result.model, test_items)
    record = result.model.metadata["training"]
    print(json.dumps({"domain": "DSB 2018 bright field (never trained on)", "train_images": len(train_items),
                      "test_images": len(test_items), "steps": record["steps"], "best_step": record["best_step"],
                      "train_seconds": round(seconds, 1), "seconds_per_step": round(seconds / max(1, record["steps"]), 2),
                      "crop_size": record["crop_size"], "batch_size": record["batch_size"],
                      "freeze_encoder": record["freeze_encoder"], "settings": extra, "before": before, "after": after,
                      "machine": cpu_description()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
