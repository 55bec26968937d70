"""Fine-tune the bundled default model so it also segments fluorescent nuclei (an experiment; see
docs/default_model/nuclei_finetune.md).

    python scripts/finetune_default_nuclei.py --minutes 22 --threads 2 \
        --output build/candidate_default.safetensors --figures /tmp/ft

Honest split of the shipped nuclei sample (512x512, DSB2018): training sees only its LEFT 256
columns (cropped, so not even the input pixels of the right half reach the network); the RIGHT
256 columns are the nuclei test image. Training mixes the nuclei crop with the 34 Usiigaci
training sets (the six validation sets of configs/default_model.json are never trained on), so
phase contrast is not forgotten:

  - Usiigaci training sets at 1x, and again downscaled 0.5x (cells ~23 px, like the nuclei and
    LIVECell: cheap scale augmentation as extra pairs, since the augmenter has no rescale);
  - the nuclei left half at 1x and upscaled 2x, repeated in the pair list (the crop sampler draws
    pairs in proportion to their area, so repeats are the oversampling: about 30 % of crops).

No in-loop validation (the test data must not pick the checkpoint): the last model is kept.
Before and after, the script predicts the six Usiigaci validation sets (original 16-bit raw.tif)
and the nuclei right half, grid-searches the post-processing on all of them together (mean of
the Usiigaci and nuclei objectives), stores the result in the model's metadata and, with
--figures, writes overlays of the LIVECell frame.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # train_default_model, also when imported by path

import numpy as np  # noqa: E402

from train_default_model import _write_json, find_sets, load_set, log, train_logged  # noqa: E402  (same folder)

SAMPLE = REPO / "src" / "napari_cell_unet" / "sample_data"
LIVECELL = REPO.parent / "shared" / "data" / "livecell_samples" / "A172_Phase_A7_1_00d00h00m_1.tif"
GRID = {"cell_threshold": [0.5, 0.6, 0.7, 0.8], "border_threshold": [0.05, 0.1, 0.2, 0.3, 0.45],
        "min_size": [40, 100, 150]}  # the fine-tuned border channel is weak: low border thresholds win


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--config", type=Path, default=REPO / "configs" / "default_model.json")
    p.add_argument("--base", default="default", help="model to fine-tune (default: the bundled model)")
    p.add_argument("--minutes", type=float, default=22.0, help="wall-clock budget of the training loop")
    p.add_argument("--steps", type=int, default=None, help="fixed number of steps instead of --minutes")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop-size", type=int, default=128)
    p.add_argument("--freeze-encoder", action="store_true", help="train the decoder only (default: whole network)")
    p.add_argument("--nuclei-repeats", type=int, nargs=2, default=(100, 12), metavar=("AT_1X", "AT_2X"),
                   help="copies of the nuclei left half at 1x and 2x in the pair list (oversampling)")
    p.add_argument("--no-half-scale", action="store_true", help="leave out the 0.5x Usiigaci copies")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", type=Path, default=REPO / "build" / "candidate_default.safetensors")
    p.add_argument("--figures", type=Path, default=None, help="folder for LIVECell / nuclei overlay PNGs")
    p.add_argument("--overwrite", action="store_true")
    return p.parse_args(argv)


# ---------------------------------------------------------------------- data
def rescaled(pair, factor: float, name: str):
    """A TrainingPair resized by `factor` (image linear with anti-aliasing, labels nearest; borders derived)."""
    from skimage.transform import resize

    from napari_cell_unet.training import TrainingPair

    shape = tuple(int(round(s * factor)) for s in pair.labels.shape)
    image = resize(pair.image.astype(np.float32), shape, order=1, anti_aliasing=factor < 1, preserve_range=True)
    labels = resize(pair.labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(pair.labels.dtype)
    return TrainingPair(image.astype(np.float32), labels, None, name=name)


def nuclei_halves():
    """(left half for training, right half for testing) of the shipped nuclei sample."""
    import tifffile

    from napari_cell_unet.training import TrainingPair

    image = tifffile.imread(SAMPLE / "dsb2018_nuclei.tif").astype(np.float32)
    labels = tifffile.imread(SAMPLE / "dsb2018_nuclei_labels.tif")
    half = image.shape[1] // 2
    left = TrainingPair(image[:, :half].copy(), labels[:, :half].copy(), name="dsb2018_nuclei[:, :256]")
    right = TrainingPair(image[:, half:].copy(), labels[:, half:].copy(), name="dsb2018_nuclei[:, 256:]")
    return left, right


def training_pairs(usiigaci_train: list, nuclei_left, repeats: tuple[int, int], half_scale: bool) -> list:
    pairs = list(usiigaci_train)
    if half_scale:
        pairs += [rescaled(p, 0.5, f"{p.name}@0.5x") for p in usiigaci_train]
    nuclei_2x = rescaled(nuclei_left, 2.0, f"{nuclei_left.name}@2x")
    pairs += [nuclei_left] * repeats[0] + [nuclei_2x] * repeats[1]
    return pairs


# ---------------------------------------------------------------------- evaluation
def predict_all(model, pairs: list, threads: int) -> list[np.ndarray]:
    from napari_cell_unet.inference import predict_probabilities

    return [np.asarray(predict_probabilities(p.image, model, device="cpu", threads=threads), np.float32) for p in pairs]


def score_grid(probabilities: list[np.ndarray], truths: list[np.ndarray], candidates: list[dict]) -> list[list[dict]]:
    """scores[image][candidate], one process per image (2 workers)."""
    from napari_cell_unet.training.tune import _run_jobs

    return _run_jobs([(p, t, candidates) for p, t in zip(probabilities, truths)], workers=2)


def group_summary(scores: list[dict]) -> dict[str, float]:
    from napari_cell_unet.training.tune import summarize

    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in summarize(scores).items()}


def evaluate(label: str, probabilities: list[np.ndarray], truths: list[np.ndarray], names: list[str],
             fixed: dict | None, start: float) -> dict:
    """Scores under `fixed` post-processing (if given) and under the best grid point of GRID.

    The grid objective is the mean of the Usiigaci and the nuclei objectives (F1@0.5 + 0.25 pixel IoU),
    so the 57 test nuclei weigh as much as the ~1,000 Usiigaci validation cells."""
    keys = list(GRID)
    candidates = [dict(zip(keys, v)) for v in itertools.product(*(GRID[k] for k in keys))]
    if fixed is not None:
        candidates.append(dict(fixed))
    per_image = score_grid(probabilities, truths, candidates)
    rows = []
    for i, params in enumerate(candidates):
        usiigaci = group_summary([scores[i] for scores in per_image[:-1]])
        nuclei = group_summary([per_image[-1][i]])
        rows.append({"params": params, "usiigaci": usiigaci, "nuclei": nuclei,
                     "objective": round((usiigaci["objective"] + nuclei["objective"]) / 2, 4)})
    best = max(rows[:len(rows) - (fixed is not None)], key=lambda r: r["objective"])
    out = {"tuned": best, "grid_top5": sorted(rows, key=lambda r: -r["objective"])[:5]}
    if fixed is not None:
        out["fixed"] = rows[-1]
    i_best = rows.index(best)
    out["tuned"]["per_image_f1_50"] = {n: round(s[i_best]["f1_50"], 4) for n, s in zip(names, per_image)}
    for kind in ("fixed", "tuned"):
        if kind in out:
            r = out[kind]
            log(start, f"{label} [{kind} {r['params']}]: Usiigaci val F1@0.5 {r['usiigaci']['f1_50']:.3f} "
                       f"mean F1 {r['usiigaci']['mean_f1']:.3f} pixel IoU {r['usiigaci']['pixel_iou']:.3f} | "
                       f"nuclei right half F1@0.5 {r['nuclei']['f1_50']:.3f} pixel IoU {r['nuclei']['pixel_iou']:.3f} "
                       f"({r['nuclei']['n_pred']} found / {r['nuclei']['n_true']})")
    return out


def overlays(model, params: dict, label: str, folder: Path, threads: int) -> dict[str, int]:
    """PNG overlays (outlines in red) of the LIVECell frame at 1x and the nuclei right half; cell counts."""
    import tifffile
    from PIL import Image
    from skimage.segmentation import find_boundaries

    from napari_cell_unet.inference import instances_from_probabilities, normalize_image, predict_probabilities

    folder.mkdir(parents=True, exist_ok=True)
    images = {"livecell": tifffile.imread(LIVECELL).astype(np.float32), "nuclei_right": nuclei_halves()[1].image}
    counts = {}
    for name, image in images.items():
        prob = predict_probabilities(image, model, device="cpu", threads=threads)
        labels = instances_from_probabilities(prob[0], prob[1], **params)
        counts[name] = int(labels.max())
        gray = (np.clip(normalize_image(image), 0, 1) * 255).astype(np.uint8)
        rgb = np.repeat(gray[..., None], 3, axis=2)
        rgb[find_boundaries(labels, mode="inner")] = (255, 0, 0)
        Image.fromarray(rgb).save(folder / f"{label}_{name}.png")
    return counts


# ---------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    import torch

    from napari_cell_unet.model import load_model, save_model
    from napari_cell_unet.training import TrainConfig, iter_train, resolve_model
    from napari_cell_unet.training.loop import machine_description
    from napari_cell_unet.training.targets import as_instance_labels

    if args.output.exists() and not args.overwrite:
        raise SystemExit(f"error: {args.output} exists; pass --overwrite to replace it")
    config = json.loads(args.config.read_text())
    sets = find_sets(args.data, config["dataset"])
    val_names = list(config["validation_sets"])
    usiigaci = {n: load_set(n, f) for n, f in sets.items()}
    usiigaci_train = [p for n, p in usiigaci.items() if n not in val_names]
    nuclei_left, nuclei_right = nuclei_halves()
    test_pairs = [usiigaci[n] for n in val_names] + [nuclei_right]
    test_names = val_names + [nuclei_right.name]
    truths = [as_instance_labels(p.labels) for p in test_pairs]
    log(start, f"{len(usiigaci_train)} Usiigaci training sets; test: {', '.join(test_names)}")

    base = resolve_model(args.base)
    shipped_params = dict(base.postprocessing)
    before = evaluate("before", predict_all(base, test_pairs, args.threads), truths, test_names, shipped_params, start)
    figures_before = overlays(base, before["tuned"]["params"], "before", args.figures, args.threads) if args.figures else {}

    pairs = training_pairs(usiigaci_train, nuclei_left, tuple(args.nuclei_repeats), not args.no_half_scale)
    area = lambda ps: sum(p.labels.size for p in ps)  # noqa: E731
    nuclei_share = area([p for p in pairs if p.name.startswith("dsb2018")]) / area(pairs)
    log(start, f"{len(pairs)} training pairs; nuclei are {nuclei_share:.0%} of the sampled area")
    train_config = TrainConfig(
        steps=args.steps, minutes=None if args.steps else args.minutes, batch_size=args.batch_size,
        crop_size=args.crop_size, lr=args.lr, warmup_fraction=0.05, validations=0, val_fraction=0.0,
        threads=args.threads, freeze_encoder=args.freeze_encoder, seed=args.seed, device="cpu",
        name="napari-cell-unet default + nuclei (candidate)")
    train_start = time.perf_counter()
    result = train_logged(iter_train(pairs, base, train_config, val_pairs=[]), start, every_s=30)
    train_seconds = time.perf_counter() - train_start
    model = result.model
    steps = model.metadata["training"]["steps"]
    log(start, f"trained {steps} steps in {train_seconds / 60:.1f} min")

    torch.set_num_threads(args.threads)
    after = evaluate("after", predict_all(model, test_pairs, args.threads), truths, test_names, shipped_params, start)
    model.metadata["postprocessing"] = {**model.postprocessing, **after["tuned"]["params"]}
    figures_after = overlays(model, after["tuned"]["params"], "after", args.figures, args.threads) if args.figures else {}

    record = model.metadata["training"]
    record["data"] = {"train": sorted({p.name for p in pairs}), "validation": []}  # not 136 repeated names
    record.update({
        "experiment": "fine-tune of the bundled default model on fluorescent nuclei + Usiigaci (scripts/finetune_default_nuclei.py)",
        "base_model": getattr(base, "name", str(args.base)),
        "nuclei_split": "dsb2018_nuclei sample: trained on columns 0-255 only (cropped), tested on columns 256-511",
        "mixing": {"usiigaci_train_sets": len(usiigaci_train), "usiigaci_half_scale_copies": not args.no_half_scale,
                   "nuclei_repeats_1x_2x": list(args.nuclei_repeats), "nuclei_area_share": round(nuclei_share, 3)},
        "train_seconds": round(train_seconds, 1), "machine": machine_description(torch.device("cpu")),
        "evaluation": {"test_sets": test_names, "grid": GRID,
                       "before": {k: before[k] for k in ("fixed", "tuned")},
                       "after": {k: after[k] for k in ("fixed", "tuned")},
                       "livecell_and_nuclei_counts": {"before": figures_before, "after": figures_after}},
        "total_seconds": round(time.perf_counter() - start, 1),
    })
    args.output.parent.mkdir(parents=True, exist_ok=True)
    save_model(model, args.output, half=True)
    load_model(args.output)  # must load before we call it done
    _write_json(args.output.with_suffix(".json"), {"training": record, "history_tail": result.history[-20:]})
    log(start, f"wrote {args.output}; LIVECell/nuclei counts before {figures_before}, after {figures_after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
