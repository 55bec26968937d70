"""Fine-tuning in bf16 autocast vs fp32 on this CPU: steps per second and whether the loss curves match.

    python benchmarks/bench_training_precision.py [--steps 100] [--threads 2] [--sets set1,set2] [--plot out.png]

Fine-tunes the bundled model on whole Usiigaci training sets (never a validation or test set) with the product's
defaults twice, same seed: `TrainConfig(amp=True)` (bf16 autocast + channels-last where the CPU does bf16 natively:
what users get) and `amp=False` (fp32). Reports the training steps per second (the loop alone: from the first to the
last step event), the mean |loss difference| per step and over a 10-step moving average, the final losses, and the
held-back validation metrics of each run. Without native bf16 both runs are fp32 (the table says so).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_correction_loop import cpu_flags  # noqa: E402

DATA = Path(os.environ.get("CELL_UNET_DATA", REPO.parent / "shared" / "data")) / "usiigaci_phase"


def run(pairs, amp: bool, steps: int, threads: int) -> dict:
    from napari_cell_unet.training import TrainConfig, TrainStep, train

    times, losses = [], []

    def record(event) -> None:
        if isinstance(event, TrainStep):
            times.append(time.perf_counter())
            losses.append(event.loss)

    result = train(pairs, model="default", config=TrainConfig(steps=steps, amp=amp, threads=threads, seed=0),
                   on_event=record)
    loop_seconds = times[-1] - times[0]
    return {"amp": amp, "steps_per_second": round((len(times) - 1) / loop_seconds, 3),
            "seconds_per_step": round(loop_seconds / (len(times) - 1), 3), "losses": losses,
            "validation": result.metrics, "base_validation": result.base_metrics,
            "machine": result.model.metadata["training"]["machine"]}


def moving_average(values: list[float], width: int = 10) -> np.ndarray:
    return np.convolve(values, np.ones(width) / width, mode="valid")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sets", default="set1,set2", help="Usiigaci training sets to fine-tune on")
    parser.add_argument("--plot", type=Path, help="write the two loss curves to this PNG")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    import torch

    from napari_cell_unet.inference.devices import native_bf16_cpu
    from napari_cell_unet.io import read_image, read_labels
    from napari_cell_unet.training import TrainingPair

    torch.set_num_threads(args.threads)
    pairs = [TrainingPair(np.asarray(read_image(DATA / name / "raw.tif")),
                          np.asarray(read_labels(DATA / name / "instances_ids.png")), name=name)
             for name in args.sets.split(",")]
    bf16, fp32 = run(pairs, True, args.steps, args.threads), run(pairs, False, args.steps, args.threads)
    a, b = np.array(bf16["losses"]), np.array(fp32["losses"])
    smooth = np.abs(moving_average(a) - moving_average(b))
    print(f"CPU: {cpu_flags()}; native bf16: {native_bf16_cpu()}; {args.threads} threads; {args.steps} steps on "
          f"{args.sets}; product defaults (crop 128, batch 4, encoder frozen on the CPU)\n")
    print("| run | s/step | steps/s | ratio | first → last loss (10-step mean) | held-back F1 / Dice |")
    print("|---|---:|---:|---:|---|---|")
    for name, row in (("bf16 autocast + channels-last (amp=True)", bf16), ("fp32 (amp=False)", fp32)):
        curve = moving_average(row["losses"])
        ratio = row["steps_per_second"] / fp32["steps_per_second"]
        scores = row["validation"] or {}
        print(f"| {name} | {row['seconds_per_step']:.3f} | {row['steps_per_second']:.2f} | {ratio:.2f}× "
              f"| {curve[0]:.3f} → {curve[-1]:.3f} | {scores.get('f1', float('nan')):.3f} / "
              f"{scores.get('dice', float('nan')):.3f} |")
    print(f"\nloss difference per step: mean {np.mean(np.abs(a - b)):.4f}, max {np.max(np.abs(a - b)):.4f}; "
          f"10-step means: mean {smooth.mean():.4f}, max {smooth.max():.4f} (loss scale {np.mean(b):.3f})")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(6, 3.2), dpi=110)
        axis.plot(b, color="0.6", lw=0.8, label="fp32, per step")
        axis.plot(a, color="tab:orange", lw=0.8, alpha=0.6, label="bf16, per step")
        axis.plot(np.arange(9, len(b)), moving_average(b), color="k", lw=1.6, label="fp32, 10-step mean")
        axis.plot(np.arange(9, len(a)), moving_average(a), color="tab:red", lw=1.6, ls="--", label="bf16, 10-step mean")
        axis.set_xlabel("step")
        axis.set_ylabel("training loss")
        axis.set_title(f"Fine-tuning loss, bf16 vs fp32 ({args.sets})", fontsize=9)
        axis.legend(fontsize=7)
        figure.tight_layout()
        figure.savefig(args.plot)
    if args.json:
        args.json.write_text(json.dumps({"bf16": bf16, "fp32": fp32}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
