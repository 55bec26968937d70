"""Do reduced precisions keep the labels the same? fp32 vs bf16 (CPU) and fp32 vs fp16 (CUDA).

Usage: python benchmarks/bench_precision.py --model MODEL.safetensors [--threads 2] [--sets set20,set21,set22]

For each image: cell counts, foreground IoU between the two label images, instance F1
at IoU 0.5 between them (metrics.match_instances), max |probability difference|, and
seconds per image for each precision. Images: Usiigaci raw.tif from ../shared/data, or
benchmarks/_work/frames.npz. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench_inference import usiigaci_frames

from napari_cell_unet.inference import segment
from napari_cell_unet.inference.devices import native_bf16_cpu
from napari_cell_unet.metrics import match_instances, pixel_iou
from napari_cell_unet.model import load_model


def timed_segment(image, model, **params):
    start = time.perf_counter()
    labels, probs = segment(image, model, return_probabilities=True, **params)
    return labels, probs, time.perf_counter() - start


def compare(image: np.ndarray, model, device: str, low: str, threads: int) -> str:
    ref, ref_p, ref_s = timed_segment(image, model, device=device, precision="fp32", threads=threads)
    out, out_p, out_s = timed_segment(image, model, device=device, precision=low, threads=threads)
    match = match_instances(out, ref, 0.5)
    f1 = getattr(match, "f1", None)
    return (f"| {device} | {low} | {ref.max()} | {out.max()} | {pixel_iou(out, ref):.4f} | "
            f"{f1 if f1 is None else round(f1, 4)} | {np.abs(out_p - ref_p).max():.4f} | {ref_s:.2f} | {out_s:.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", required=True)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--crop", type=int, default=512, help="crop side on the CPU (bf16 emulation is slow)")
    args = parser.parse_args()
    model = load_model(args.model)
    print(f"native bf16 CPU: {native_bf16_cpu()}, threads {args.threads}, model {args.model}\n")
    print("| device | precision | cells fp32 | cells low | fg IoU | instance F1 | max dprob | s fp32 | s low |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for image in usiigaci_frames(args.images):
        print(compare(image[:args.crop, :args.crop], model, "cpu", "bf16", args.threads), flush=True)
        if torch.cuda.is_available():
            print(compare(image, model, "cuda", "fp16", args.threads), flush=True)


if __name__ == "__main__":
    main()
