"""Train or fine-tune a model on annotated images and save it as one .safetensors file.

Data: --images with --labels (and optional --borders), paired by order; --folder (images/, labels/,
borders/); or --coco (a COCO/LIVECell json). Ctrl-C stops training and still saves the best model.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

from . import _checks as checks
from ._data_arguments import add_data_arguments, check_before_work, load_pairs


# the API's defaults (training.TrainConfig), without importing torch to build the parser
_DEFAULTS = {"lr": None, "val_fraction": 0.2}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser, borders=True)
    parser.add_argument("--init", default="default",
                        help="start from: a bundled model (default, cells or nuclei), scratch, or a model file "
                             "(default: default)")
    parser.add_argument("--output", type=Path, required=True, help="where to save the model (.safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=checks.positive_float, help="epochs (one epoch = crops covering the annotated area once)")
    length.add_argument("--steps", type=checks.positive_int, help="optimizer steps (default: 100)")
    length.add_argument("--minutes", type=checks.positive_float, help="train for this many minutes")
    parser.add_argument("--val-fraction", type=checks.val_fraction, default=_DEFAULTS["val_fraction"],
                        help="fraction of the pairs (or of a single image's width) held out for validation, "
                             f"0 to {checks.MAX_VAL_FRACTION}; 0 = none (default: {_DEFAULTS['val_fraction']})")
    parser.add_argument("--crop-size", type=checks.int_range(32, 4096), help="training crop size in pixels (default: 256 on a GPU, 128 on the CPU)")
    parser.add_argument("--batch-size", type=checks.int_range(1, 1024), help="crops per step (default: 8 on a GPU, 4 on the CPU)")
    parser.add_argument("--lr", type=checks.float_range(0.0, 1.0, low_open=True), default=_DEFAULTS["lr"],
                        help="peak learning rate (default: 1e-4 when fine-tuning, 1e-3 from scratch, as the API "
                             "and the widget)")
    parser.add_argument("--freeze-encoder", action=argparse.BooleanOptionalAction, default=None,
                        help="train only the decoder (default: yes when fine-tuning on a CPU, where it is "
                             "about twice as fast; no from scratch or on a GPU)")
    parser.add_argument("--early-stopping", type=checks.positive_int, metavar="N", help="stop after N validations without improvement")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default: auto)")
    parser.add_argument("--threads", type=checks.int_range(1, 1024), help="CPU threads for training (default: all cores; 1 can be "
                        "much faster when other programs keep the cores busy)")
    parser.add_argument("--seed", type=checks.non_negative_int, default=0)
    parser.add_argument("--name", help="model name stored in the file (shown in the plugin)")


def run(args: argparse.Namespace) -> int:
    _check_arguments(args)
    pairs = load_pairs(args)
    result = _train(pairs, args)
    _save(result.model, args)
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """Everything that can be checked before training, so that no work is lost to a typo."""
    from ..errors import CellUnetError

    if args.output.suffix != ".safetensors":
        raise CellUnetError(f"{args.output}: the output must be a .safetensors file")
    check_before_work(args)
    from ..model import BUNDLED_MODELS

    if args.init not in (*BUNDLED_MODELS, "scratch") and not Path(args.init).is_file():
        raise CellUnetError(f"--init {args.init}: no such model file (or use {', '.join(BUNDLED_MODELS)} or scratch)")


def _train(pairs, args: argparse.Namespace):
    from tqdm import tqdm

    from .._progress import result_of
    from ..training import TrainConfig, TrainStep, Validation, iter_train

    config = TrainConfig(steps=args.steps, epochs=args.epochs, minutes=args.minutes, batch_size=args.batch_size,
                         crop_size=args.crop_size, lr=args.lr, val_fraction=args.val_fraction,
                         early_stopping_patience=args.early_stopping, device=args.device, seed=args.seed,
                         name=args.name, freeze_encoder=args.freeze_encoder,
                         threads=args.threads)
    init = args.init if args.init in ("default", "scratch") else Path(args.init)
    interrupted = []
    previous = signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
    bar = None

    def show(event) -> None:
        nonlocal bar
        if isinstance(event, TrainStep):
            if bar is None:
                bar = tqdm(total=event.total_steps, unit="step", dynamic_ncols=True, file=sys.stderr)
            bar.total = event.total_steps
            bar.update(event.step - bar.n)
            bar.set_postfix(loss=f"{event.loss:.4f}", refresh=False)
        elif isinstance(event, Validation):
            line = (f"epoch {event.epoch:.2f} step {event.step}: val loss {event.val_loss:.4f}  "
                    f"Dice {event.dice:.3f}  F1@0.5 {event.f1:.3f}{'  (best)' if event.is_best else ''}")
            tqdm.write(line, file=sys.stderr) if bar is not None else print(line, file=sys.stderr)

    try:
        result = result_of(iter_train(pairs, init, config, should_stop=lambda: bool(interrupted)), on_event=show)
    finally:
        signal.signal(signal.SIGINT, previous)
        if bar is not None:
            bar.close()
    base, best = result.base_metrics, result.metrics
    if base and best:
        verdict = "improved" if result.improved else "NOT improved: the starting model scored better"
        print(f"held-out F1@0.5 {base['f1']:.3f} -> {best['f1']:.3f}, Dice {base['dice']:.3f} -> {best['dice']:.3f} "
              f"({verdict})", file=sys.stderr)
    if result.cancelled:
        print(f"interrupted: keeping the best model so far (step {result.best_step})", file=sys.stderr)
    elif result.stopped_early:
        print(f"stopped early: no improvement; best model at step {result.best_step}", file=sys.stderr)
    return result


def _save(model, args: argparse.Namespace) -> None:
    from ..model import save_model

    if args.output.exists() and not args.overwrite:  # appeared while we trained
        _save_elsewhere(model, args, "it appeared while training and --overwrite was not given")
    try:
        save_model(model, args.output)
    except OSError as exc:  # OutputError, or the folder vanished
        _save_elsewhere(model, args, str(exc))
    metrics = model.metadata.get("training", {}).get("metrics") or {}
    summary = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    print(f"saved {args.output}" + (f" (best validation: {summary})" if summary else ""))


def _save_elsewhere(model, args: argparse.Namespace, problem: str) -> None:
    """The output cannot be written after all (disk full, folder gone): keep the trained model anyway."""
    import tempfile

    from ..errors import OutputError
    from ..model import save_model

    fd, rescue = tempfile.mkstemp(prefix=f"{args.output.stem}-", suffix=".safetensors")
    os.close(fd)
    save_model(model, rescue)
    raise OutputError(f"{args.output} was not written ({problem}); the trained model was saved to {rescue}")
