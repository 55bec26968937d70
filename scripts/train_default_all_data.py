"""Train the default model on all shared data (phase contrast + nuclei), balanced by domain.

    python scripts/train_default_all_data.py --minutes 60 --threads 1 --output build/default_v2/model.safetensors
    python scripts/train_default_all_data.py --steps 4 --limit 3 --output /tmp/smoke.safetensors   # smoke run

Data and split: scripts/default_model_data.py (test images are never loaded here). Each image is
zoomed to the reference cell diameter; crops are zoomed again by 0.6-1.6x (log-uniform) so the
network tolerates a misjudged diameter. Domains are balanced by sampling weight (Usiigaci 45 %,
fluorescent nuclei 35 %, stained tissue 20 % of crops). The best checkpoint on the validation
images is kept; thresholds are tuned afterwards by scripts/evaluate_default_model.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


from default_model_data import REFERENCE_DIAMETER, all_items, at_reference_size  # noqa: E402
from train_default_model import log, train_logged  # noqa: E402  (same folder)

DOMAIN_SHARE = {"usiigaci": 0.45, "fluorescence": 0.35, "tissue": 0.20}
VALIDATION_CROP = 384  # validation images are centre crops (whole-image passes on a CPU are slow)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--base", default="default", help="model to start from: default, scratch or a file")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop-size", type=int, default=160)
    p.add_argument("--scale-range", type=float, nargs=2, default=(0.6, 1.6))
    p.add_argument("--validations", type=int, default=6)
    p.add_argument("--domains", nargs="+", choices=sorted(DOMAIN_SHARE), default=sorted(DOMAIN_SHARE),
                   help="train on these domains only (a specialist), their shares renormalised")
    p.add_argument("--name", default="napari-cell-unet default (phase contrast + nuclei)")
    p.add_argument("--limit", type=int, default=None, help="at most this many images per domain (smoke runs)")
    p.add_argument("--device", default="auto")
    p.add_argument("--output", type=Path, default=REPO / "build" / "default_v2" / "model.safetensors")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


def load_pairs(items, limit, crop=None, domains=tuple(DOMAIN_SHARE)):
    """TrainingPairs at the reference size, weighted so each domain of `domains` gets its share of crops."""
    from napari_cell_unet.training import TrainingPair

    by_domain = {}
    for item in items:
        if item.domain in domains and (limit is None or len(by_domain.get(item.domain, [])) < limit):
            by_domain.setdefault(item.domain, []).append(item)

    def prepare(item):
        image, labels = item.load()
        image, labels, zoom = at_reference_size(image, labels)
        if crop is not None:
            image, labels = _centre_crop(image, crop), _centre_crop(labels, crop)
        return item, image, labels, zoom

    with ThreadPoolExecutor(2) as pool:
        loaded = list(pool.map(prepare, [i for group in by_domain.values() for i in group]))
    areas = {d: sum(labels.size for item, _, labels, _ in loaded if item.domain == d) for d in by_domain}
    pairs = []
    for item, image, labels, zoom in loaded:
        if crop is not None and not labels.any():
            continue
        weight = DOMAIN_SHARE[item.domain] / areas[item.domain] * 1e6
        pairs.append(TrainingPair(image, labels, name=f"{item.domain}/{item.name}@{zoom:.2f}x", weight=weight))
    return pairs


def _centre_crop(array, size):
    height, width = array.shape[:2]
    top, left = max(0, (height - size) // 2), max(0, (width - size) // 2)
    return array[top:top + size, left:left + size]


def recipe_config(args):
    """The recipe's `TrainConfig`: a full training run of the whole network, not a correction."""
    from napari_cell_unet.training import TrainConfig

    return TrainConfig(steps=args.steps, minutes=None if args.steps else args.minutes, batch_size=args.batch_size,
                       crop_size=args.crop_size, lr=args.lr, validations=args.validations, threads=args.threads,
                       freeze_encoder=False, freeze_batchnorm=False, scale_range=tuple(args.scale_range),
                       # no pull back to the starting weights: the library's fine-tuning defaults (anchor 0.05 and
                       # half the change kept, for a few painted corrections) held the stage-4 run of this recipe
                       # near stage 3
                       anchor=0.0, blend=1.0, device=args.device, name=args.name)


def as_default_model(model):
    """Make a trained model a default: the reference cell size, and none of what the fine-tuning engine records for
    a model fine-tuned from the bundled one (a default is measured by its own size model and probes, refitted to its
    encoder by scripts/fit_size_model.py, and remembers no image's cell size)."""
    model.metadata["cell_diameter"] = REFERENCE_DIAMETER
    for key in ("diameter_model", "taught_diameters", "size_model"):
        model.metadata.pop(key, None)
    return model


def main(argv=None):
    args = parse_args(argv)
    start = time.perf_counter()
    from napari_cell_unet.model import load_model, save_model
    from napari_cell_unet.training import iter_train

    if args.output.exists() and not args.overwrite:
        raise SystemExit(f"error: {args.output} exists; pass --overwrite to replace it")
    split = all_items(args.data)
    train_pairs = load_pairs(split["train"], args.limit, domains=args.domains)
    val_pairs = load_pairs(split["validation"], args.limit, crop=VALIDATION_CROP, domains=args.domains)
    log(start, f"{len(train_pairs)} training images, {len(val_pairs)} validation crops "
               f"(test and new-domain images are not loaded)")
    config = recipe_config(args)
    result = train_logged(iter_train(train_pairs, args.base, config, val_pairs=val_pairs), start, every_s=60)
    model = result.model
    as_default_model(model)
    record = model.metadata["training"]
    record["data"] = {"train": [p.name for p in train_pairs], "validation": [p.name for p in val_pairs]}
    record["recipe"] = {"script": "scripts/train_default_all_data.py",
                        "domain_share": {d: DOMAIN_SHARE[d] for d in args.domains}, "anchor": config.anchor,
                        "reference_diameter": REFERENCE_DIAMETER, "scale_range": list(args.scale_range),
                        "split": "scripts/default_model_data.py"}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, args.output, half=True)
    load_model(args.output)
    history = [h for h in result.history if h.get("event") == "validation"]
    args.output.with_suffix(".json").write_text(json.dumps({"training": record, "validations": history}, indent=1,
                                                           default=str))
    log(start, f"wrote {args.output}: {record['steps']} steps, best at {result.best_step}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
