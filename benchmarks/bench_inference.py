"""Bare forward pass vs end-to-end `segment`: megapixels per second and peak memory.

Usage:
  python benchmarks/bench_inference.py [--device cpu|cuda] [--threads 2] [--model PATH]
                                       [--cases frame,2048,stack,8k] [--forward-tiles 8]

Every case runs twice in a fresh subprocess (so peak RSS belongs to that case alone):
  forward  - the network alone on non-overlapping tiles of the default tile size cut from
             the same image (no normalisation, blending or instances), timed over at most
             --forward-tiles tiles: the compute-bound ceiling in MP/s;
  segment  - `napari_cell_unet.inference.iter_segment` on the whole image/stack, end to end.
Images are real Usiigaci/LIVECell frames from ../shared/data (tiled to reach the larger
sizes), or benchmarks/_work/frames.npz when the data folder is absent. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CELL_UNET_SHARED_DATA", HERE.parents[1] / "shared" / "data"))
FRAMES_NPZ = HERE / "_work" / "frames.npz"
DIAMETER: float | str | None = "auto"
CASES = {
    "frame": "704x520 LIVECell frame",
    "2048": "2048x2048",
    "stack": "30 x 512x512 stack",
    "8k": "8000x8000 uint16",
}


def usiigaci_frames(count: int = 4) -> list[np.ndarray]:
    if FRAMES_NPZ.is_file():
        with np.load(FRAMES_NPZ) as data:
            return [data[f"usiigaci{i}"] for i in range(count)]
    import tifffile

    return [tifffile.imread(DATA / "usiigaci_phase" / f"set{n}" / "raw.tif") for n in (20, 21, 22, 24)[:count]]


def livecell_frame() -> np.ndarray:
    if FRAMES_NPZ.is_file():
        with np.load(FRAMES_NPZ) as data:
            return data["livecell"]
    import tifffile

    return tifffile.imread(DATA / "livecell_samples" / "A172_Phase_A7_1_00d00h00m_1.tif")


def make_image(case: str) -> np.ndarray:
    if case == "frame":
        return livecell_frame()
    frames = usiigaci_frames()
    if case == "stack":
        crops = [f[y:y + 512, x:x + 512] for f in frames for y in (0, 255, 510) for x in (0, 256, 512)]
        return np.stack((crops * 3)[:30])
    size = {"2048": 2048, "8k": 8000}[case]
    row = np.concatenate(frames[:2], axis=1)
    mosaic = np.concatenate([row, np.concatenate(frames[2:4], axis=1)], axis=0)  # 2044 x 2048
    reps = -(-size // min(mosaic.shape))
    return np.ascontiguousarray(np.tile(mosaic, (reps, reps))[:size, :size]).astype(np.uint16)


def load(model_path: str | None):
    from napari_cell_unet.model import CellModel, load_model

    if model_path:
        return load_model(model_path)
    import torch

    torch.manual_seed(0)
    return CellModel.create(name="random default architecture")


def run_case(case: str, mode: str, device: str, threads: int, model_path: str | None, forward_tiles: int) -> dict:
    import torch

    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import DEFAULT_TILE_SIZE, iter_segment
    from napari_cell_unet.inference.devices import resolve_device

    torch.set_num_threads(threads)
    model = load(model_path)
    image = make_image(case)
    pixels = int(np.prod(image.shape))
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if mode == "forward":
        seconds, measured = bare_forward(model, image, dev, DEFAULT_TILE_SIZE, forward_tiles, threads)
        extra = {}
    else:
        # Small cases run twice and report the second (first-call set-up excluded, as for the forward pass).
        for _ in range(2 if pixels < 10_000_000 else 1):
            start = time.perf_counter()
            extra = {"cells": result_of(iter_segment(image, model, device=device, threads=threads,
                                                     diameter=DIAMETER)).n_cells}
            seconds, measured = time.perf_counter() - start, pixels
    result = {"case": case, "mode": mode, "pixels": pixels, "seconds": seconds, "mps": measured / seconds / 1e6,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, **extra}
    if dev.type == "cuda":
        result["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return result


def bare_forward(model, image: np.ndarray, device, tile: int, max_tiles: int, threads: int | None = None
                 ) -> tuple[float, int]:
    """Seconds and pixels for the network alone on up to `max_tiles` tiles (batches of 4 on a GPU, 1 on the CPU)."""
    import torch

    from napari_cell_unet.inference import TiledPredictor

    planes = image.reshape(-1, *image.shape[-2:])
    h, w = planes.shape[1:]
    th, tw = min(tile, -(-h // 32) * 32), min(tile, -(-w // 32) * 32)
    tiles = [np.pad(p[y:y + th, x:x + tw], ((0, th - p[y:y + th].shape[0]), (0, tw - p[:, x:x + tw].shape[1])))
             for p in planes for y in range(0, h, th) for x in range(0, w, tw)][:max_tiles]
    batch = np.stack(tiles).astype(np.float32)[:, None] / 65535.0
    predictor = TiledPredictor(model, device=str(device), threads=threads)  # the network exactly as `segment` runs it
    try:
        forward = predictor._forward
        forward(batch[:1])  # warm-up
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        step = 4 if device.type == "cuda" else 1
        for first in range(0, len(batch), step):
            forward(batch[first:first + step])
        seconds = time.perf_counter() - start
    finally:
        predictor.close()
    return seconds, len(tiles) * th * tw


def machine(device: str, threads: int) -> str:
    import torch

    from napari_cell_unet.inference.devices import native_bf16_cpu

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {threads} threads, native bf16 {native_bf16_cpu()}"
    if device == "cuda" and torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", default=None, help="model file (default: random weights, default architecture)")
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--forward-tiles", type=int, default=8)
    parser.add_argument("--diameter", default="auto",
                        help="segment's diameter: auto (the default call: probes, then the image zoomed to the "
                             "model's cell size, so more or fewer pixels than the image), none (the model's own "
                             "size: the same pixels as the forward column) or a number")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    global DIAMETER
    DIAMETER = None if args.diameter == "none" else args.diameter if args.diameter == "auto" else float(args.diameter)
    if args.one:
        print(json.dumps(run_case(*args.one, args.device, args.threads, args.model, args.forward_tiles)))
        return
    print(f"machine: {machine(args.device, args.threads)}; device {args.device}; model: {args.model or 'random weights, default architecture'}; "
          f"segment's diameter: {args.diameter}\n")
    gpu = args.device == "cuda"
    print("| case | forward MP/s | segment MP/s | segment / forward | segment s | cells | peak RSS (MB) |"
          + (" GPU peak (MB) |" if gpu else ""))
    print("|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if gpu else ""))
    for case in args.cases.split(","):
        rows = {mode: _subprocess(args, case, mode) for mode in ("forward", "segment")}
        f, s = rows["forward"], rows["segment"]
        if "error" in f or "error" in s:
            print(f"| {CASES[case]} | failed: {(f.get('error') or s.get('error'))[:80]} |", flush=True)
            continue
        line = (f"| {CASES[case]} | {f['mps']:.3f} | {s['mps']:.3f} | {s['mps'] / f['mps']:.0%} | {s['seconds']:.1f} "
                f"| {s.get('cells', '')} | {s['peak_rss_mb']:.0f} |")
        print(line + (f" {s.get('gpu_peak_mb', 0):.0f} |" if gpu else ""), flush=True)


def _subprocess(args, case: str, mode: str) -> dict:
    command = [sys.executable, __file__, "--one", case, mode, "--device", args.device, "--threads", str(args.threads),
               "--forward-tiles", str(args.forward_tiles), "--diameter", args.diameter] + (["--model", args.model] if args.model else [])
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
