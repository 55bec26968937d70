"""Fit the default model's size regression (`inference/size_model.py`) on its training images at random zooms.

    python scripts/fit_size_model.py features build/size_features.npz      # encoder features, train + validation
    python scripts/fit_size_model.py fit build/size_features.npz --write src/napari_cell_unet/model/weights/default.safetensors

Training samples: every training image of scripts/default_model_data.py zoomed by factors drawn log-uniformly in
0.4x-2.5x (Usiigaci sets more often, so each domain weighs the same); the target is the zoomed labels' median
diameter. The ridge strength is chosen on the validation images at 0.5x, 1x and 2x (the automatic diameter's
protocol); no test image is read.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

from default_model_data import all_items  # noqa: E402

ZOOMS_PER_IMAGE = {"usiigaci": 12, "fluorescence": 2, "tissue": 4}
VALIDATION_ZOOMS = (0.5, 1.0, 2.0)
ALPHAS = (1, 3, 10, 30, 100, 300, 1000, 3000)


def features_of(predictor, image, windows=None):
    from napari_cell_unet.inference import size_model
    from napari_cell_unet.inference.diameter import regression_features

    return regression_features(predictor, image, windows=windows or size_model.WINDOWS)


def collect(args):
    import torch

    from napari_cell_unet.inference import estimate_diameter, size_model
    from napari_cell_unet.inference.predict import TiledPredictor
    from napari_cell_unet.inference.rescale import rescale_plane
    from napari_cell_unet.model import load_model

    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(args.seed)
    model = load_model(None if args.model == "default" else args.model)
    predictor = TiledPredictor(model, device="cpu", threads=args.threads)
    split = all_items(args.data)
    rows = {"x": [], "y": [], "domain": [], "name": [], "zoom": [], "part": []}
    start = time.perf_counter()
    for part in ("train",) if args.skip_validation else ("train", "validation"):
        items = [item for item in split[part] if not args.domains or item.domain in args.domains]
        for number, item in enumerate(items):
            image, labels = item.load()
            true = estimate_diameter(labels)
            if not np.isfinite(true) or true <= 0:
                continue
            zooms = VALIDATION_ZOOMS if part == "validation" else np.exp(
                rng.uniform(np.log(0.4), np.log(2.5), ZOOMS_PER_IMAGE[item.domain]))
            for zoom in zooms:
                zoomed = rescale_plane(image, float(zoom))
                rows["x"].append(features_of(predictor, zoomed, args.windows))
                rows["y"].append(true * zoom)
                for key, value in (("domain", item.domain), ("name", item.name), ("zoom", zoom), ("part", part)):
                    rows[key].append(value)
            if number % 50 == 0:
                print(f"[{time.perf_counter() - start:6.0f}s] {part} {number + 1}/{len(items)}", flush=True)
    predictor.close()
    np.savez_compressed(args.output, windows=args.windows or size_model.WINDOWS,
                        **{k: np.asarray(v) for k, v in rows.items()})
    print(f"{len(rows['y'])} samples in {time.perf_counter() - start:.0f} s -> {args.output}")


def domain_weights(domains):
    domains = np.asarray(domains)
    weights = np.ones(len(domains))
    for domain in np.unique(domains):
        weights[domains == domain] = 1.0 / np.count_nonzero(domains == domain)
    return weights


def evaluate(regression, x, y, domains):
    predicted = np.array([regression.predict(row) for row in x])
    error = predicted / y - 1
    within = np.abs(error) <= 0.15
    by_domain = {d: f"{int(within[domains == d].sum())}/{int((domains == d).sum())}" for d in np.unique(domains)}
    return {"within_15": int(within.sum()), "checked": len(y), "median_abs_error": float(np.median(np.abs(error))),
            "by_domain": by_domain, "errors": error}


def load_features(paths):
    """The samples of one or more feature files (the same window count), concatenated."""
    files = [np.load(path, allow_pickle=False) for path in paths]
    windows = {int(f["windows"]) if "windows" in f.files else 1 for f in files}
    if len(windows) != 1:
        raise SystemExit(f"feature files of different window counts: {sorted(windows)}")
    keys = ("x", "y", "domain", "name", "zoom", "part")
    data = {key: np.concatenate([f[key] for f in files]) for key in keys}
    data["windows"] = windows.pop()
    return data


def fit(args):
    from napari_cell_unet.inference.size_model import SizeRegression

    data = load_features(args.features)
    train, validation = data["part"] == "train", data["part"] == "validation"
    domains = data["domain"]
    results = []
    for alpha in ALPHAS:
        regression = SizeRegression.fit(data["x"][train], data["y"][train], alpha, domain_weights(domains[train]))
        score = evaluate(regression, data["x"][validation], data["y"][validation], domains[validation])
        results.append((alpha, score))
        print(f"alpha {alpha:>5}: validation within 15 % {score['within_15']}/{score['checked']} "
              f"{score['by_domain']}, median |error| {score['median_abs_error']:.3f}")
    alpha, best = max(results, key=lambda r: (r[1]["within_15"], -r[1]["median_abs_error"]))
    print(f"chosen alpha {alpha}")
    for name, zoom, domain, error in zip(data["name"][validation], data["zoom"][validation], domains[validation],
                                         best["errors"]):
        print(f"  {domain:12s} {name:14s} x{zoom:.1f}: {error:+.1%}")
    if args.write:
        write(args, data, train, domains, alpha)


def write(args, data, train, domains, alpha):
    from napari_cell_unet.inference.size_model import METADATA_KEY, SizeRegression, encoder_fingerprint
    from napari_cell_unet.inference.rescale import model_diameter
    from napari_cell_unet.model import load_model, save_model

    model = load_model(args.write)
    both = train | (data["part"] == "validation") if args.with_validation else train
    regression = SizeRegression.fit(data["x"][both], data["y"][both], alpha, domain_weights(domains[both]),
                                    reference=model_diameter(model), fitted_to=encoder_fingerprint(model.network),
                                    windows=data["windows"])
    model.metadata[METADATA_KEY] = regression.to_metadata()
    model.metadata[METADATA_KEY]["fitted"] = {"samples": int(both.sum()), "alpha": alpha,
                                              "script": "scripts/fit_size_model.py"}
    save_model(model, args.write, half=True)
    print(f"size regression written into {args.write} ({len(json.dumps(model.metadata[METADATA_KEY]))} bytes)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("features")
    c.add_argument("output", type=Path)
    c.add_argument("--model", default="default")
    c.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    c.add_argument("--threads", type=int, default=2)
    c.add_argument("--windows", type=int, default=None, help="windows averaged per zoom (default: the product's)")
    c.add_argument("--seed", type=int, default=0, help="of the training zooms (another seed: more samples)")
    c.add_argument("--domains", nargs="+", choices=sorted(ZOOMS_PER_IMAGE), default=None,
                   help="images of these domains only (a specialist model's own)")
    c.add_argument("--skip-validation", action="store_true", help="training images only")
    f = sub.add_parser("fit")
    f.add_argument("features", type=Path, nargs="+", help="feature files (training samples of all are pooled)")
    f.add_argument("--write", type=Path, default=None, help="model file to store the regression in")
    f.add_argument("--with-validation", action="store_true", help="refit on train + validation before writing")
    args = p.parse_args(argv)
    return collect(args) if args.command == "features" else fit(args)


if __name__ == "__main__":
    sys.exit(main())
