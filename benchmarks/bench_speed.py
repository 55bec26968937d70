"""One table per run, in one process: where the time goes and what each speed option buys on this machine.

    python benchmarks/bench_speed.py [--threads 2] [--rounds 3] [--coco-images 1500] [--skip-2048]

Rows (each with a ratio to its reference row, measured in the same process):
  forward   the bundled model alone on a 1024x1024 tile of a real Usiigaci frame: fp32 contiguous (reference),
            fp32 channels-last, bf16 autocast contiguous / channels-last (skipped where the CPU lacks native
            bf16: emulated bf16 is ~300x slower), and copies with batch norms folded into the convolutions (fp32:
            what `segment` runs without autocast; bf16 weights: faster, but not used, see inference_network.py);
            the same on CUDA when there is a GPU. Variants are timed in
            interleaved rounds (median), so load changes on a shared machine hit them all alike.
  segment   `segment` end to end (normalisation, tiling, blending, instances; diameter=None: the model's own
            size, no automatic-diameter probes) on 1024x1024 and 2048x2048, as MP/s and as a share of the
            forward pass that `segment` itself uses on that device.
  COCO      a LIVECell-sized synthetic file (bench_io_coco.livecell_like): the full parse and validation
            (`read_coco`) vs napari's reader to the first slice shown (lazy: annotations decoded per image).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from bench_inference import make_image, usiigaci_frames
from bench_io_coco import livecell_like

from napari_cell_unet.inference import normalize_image, segment
from napari_cell_unet.inference.devices import channels_last, native_bf16_cpu, resolve_precision
from napari_cell_unet.inference.inference_network import inference_network
from napari_cell_unet.model import load_model

CPU_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile")


def machine(threads: int) -> str:
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    model = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")),
                 platform.processor())
    flags = set(next((line.split(":", 1)[1].split() for line in info.splitlines() if line.startswith("flags")), []))
    present = ", ".join(f for f in CPU_FLAGS if f in flags) or "none of " + "/".join(CPU_FLAGS)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    load = ", load average %.1f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else ""
    return (f"{model}; {os.cpu_count()} logical CPUs, {threads} torch threads; flags: {present}; "
            f"native bf16 (oneDNN): {native_bf16_cpu()}; GPU: {gpu}; torch {torch.__version__}{load}")


def forward_variants(device: torch.device) -> list[tuple[str, torch.dtype | None, bool, torch.dtype | None]]:
    """(name, autocast dtype, channels-last, folded copy's weight dtype or None: the network as trained) for each
    variant worth timing on `device`."""
    if device.type == "cuda":
        return [("fp32 contiguous", None, False, None), ("fp32 channels-last", None, True, None),
                ("fp16 channels-last", torch.float16, True, None), ("bf16 channels-last", torch.bfloat16, True, None),
                ("folded, fp16 channels-last", torch.float16, True, torch.float32)]
    return [("fp32 contiguous", None, False, None), ("fp32 channels-last", None, True, None),
            ("folded, fp32 channels-last", None, True, torch.float32),
            ("bf16 contiguous", torch.bfloat16, False, None), ("bf16 channels-last", torch.bfloat16, True, None),
            ("folded, bf16 weights channels-last", None, True, torch.bfloat16)]


Timing = tuple[float, float]  # wall-clock seconds, CPU seconds of this process (all threads)


def timed(work) -> Timing:
    start, cpu = time.perf_counter(), time.process_time()
    work()
    return time.perf_counter() - start, time.process_time() - cpu


def _needs_native_bf16(variant) -> bool:
    return torch.bfloat16 in (variant[1], variant[3])


def time_forwards(model, tile: np.ndarray, device: torch.device, rounds: int) -> dict[str, Timing | None]:
    """Median (wall, CPU) seconds per forward of each variant (None: skipped), in interleaved rounds after one
    warm-up each."""
    variants = [v for v in forward_variants(device)
                if device.type == "cuda" or not _needs_native_bf16(v) or native_bf16_cpu()]
    x = torch.from_numpy(normalize_image(tile))[None, None].to(device)
    network = model.network.eval().to(device)
    times: dict[str, list[Timing]] = {name: [] for name, *_ in variants}
    with torch.inference_mode():
        for round_ in range(rounds + 1):  # round 0 warms each variant up (oneDNN / cuDNN set-up per layout)
            for name, dtype, last, folded in variants:
                fmt = torch.channels_last if last else torch.contiguous_format
                net = network.to(memory_format=fmt) if folded is None else inference_network(network, device, folded,
                                                                                              last)
                inp = x.to(folded or torch.float32).contiguous(memory_format=fmt)
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    timing = timed(lambda: torch.sigmoid(net(inp).float()).cpu())
                if round_:
                    times[name].append(timing)
    network.to(memory_format=torch.contiguous_format)
    medians: dict[str, Timing | None] = {name: None for name, *_ in forward_variants(device)}
    medians.update({name: median_timing(t) for name, t in times.items()})
    return medians


def median_timing(timings: list[Timing]) -> Timing:
    return statistics.median(t[0] for t in timings), statistics.median(t[1] for t in timings)


def time_segment(model, image: np.ndarray, device: torch.device, threads: int, repeats: int) -> Timing:
    """The fastest of `repeats` end-to-end calls (the first 1024² call warms up the tile shape all sizes use)."""
    run = lambda: segment(image, model, device=str(device), threads=threads, diameter=None)  # noqa: E731
    if image.size <= 1024 * 1024:
        run()
    return min(timed(run) for _ in range(repeats))


def time_coco(n_images: int) -> tuple[Timing, Timing]:
    """read_coco (full parse + validation), and napari's reader up to the first slice shown (dask imported
    before: napari has it loaded)."""
    import dask.array  # noqa: F401

    import napari_cell_unet._reader  # noqa: F401  (imported before the clock starts)
    from napari_cell_unet.io import read_coco

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "livecell_coco_test.json"
        path.write_text(json.dumps(livecell_like(n_images, 300)))
        eager = timed(lambda: read_coco(path))
        return eager, timed(lambda: first_slice(path, n_images // 2))


def first_slice(path: Path, index: int) -> np.ndarray:
    from napari_cell_unet._reader import read_coco_layers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the images are not there
        [(labels, _, _)] = read_coco_layers(path)
    return np.asarray(labels[index])


def row(what: str, variant: str, timing: Timing | None, pixels: int, reference: float | None, note: str = "") -> str:
    """Ratio: reference wall seconds / these wall seconds (above 1: faster than the reference)."""
    if timing is None:
        return f"| {what} | {variant} | — | — | — | — | {note} |"
    seconds, cpu = timing
    ratio = f"{reference / seconds:.2f}×" if reference else "—"
    mps = f"{pixels / seconds / 1e6:.3f}" if pixels else "—"
    return f"| {what} | {variant} | {seconds:.2f} | {cpu:.2f} | {mps} | {ratio} | {note} |"


def product_variant(device: torch.device, precision: str) -> str:
    """The forward variant that `segment` runs (TiledPredictor: batch norms folded in fp32 only, channels-last)."""
    if device.type == "cuda":
        return "fp16 channels-last"
    assert channels_last(device, precision)
    return "bf16 channels-last" if precision == "bf16" else "folded, fp32 channels-last"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3, help="interleaved timing rounds of the forward variants")
    parser.add_argument("--coco-images", type=int, default=1500, help="0 skips the COCO rows")
    parser.add_argument("--skip-2048", action="store_true", help="segment only the 1024x1024 image")
    parser.add_argument("--sizes", default="1024,2048",
                        help="segment these square sizes (8000: the issue's large image); with a size above 2048 the "
                             "forward variants are timed again after the segments and the reference is the median "
                             "of both (a long run drifts)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model()
    tile = np.ascontiguousarray(np.pad(usiigaci_frames(1)[0], ((0, 2), (0, 0)), mode="reflect")[:1024, :1024])
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"Machine: {machine(args.threads)}\n")
    print("| what | variant | wall s | CPU s | MP/s | ratio | note |")
    print("|---|---|---:|---:|---:|---:|---|")
    cpu_reference = None
    for device in devices:
        forwards = time_forwards(model, tile, device, args.rounds)
        sizes = [int(size) for size in args.sizes.split(",") if not (args.skip_2048 and size.strip() == "2048")]
        images = {size: tile if size == 1024 else make_image("8k" if size > 2048 else str(size))[:size, :size]
                  for size in sizes}
        segments = {size: time_segment(model, image, device, args.threads, repeats=1 if size > 1024 else 2)
                    for size, image in images.items()}
        if max(sizes) > 2048:
            after = time_forwards(model, tile, device, args.rounds)
            forwards = {name: None if timing is None else median_timing([timing, after[name]])
                        for name, timing in forwards.items()}
        reference = forwards["fp32 contiguous"][0]
        cpu_reference = cpu_reference or reference
        for name, seconds in forwards.items():
            note = "skipped: emulated on this CPU" if seconds is None else f"vs fp32 contiguous on {device.type}"
            print(row(f"forward 1024² ({device.type})", name, seconds, tile.size, reference, note), flush=True)
        if device.type == "cuda":
            print(row("forward 1024²", "GPU fp32 vs CPU fp32", reference, tile.size, cpu_reference, "vs CPU"))
        precision = resolve_precision("auto", device)
        used = product_variant(device, precision)
        forward_used = (forwards.get(used) or forwards["fp32 contiguous"])[0]
        for size, image in images.items():
            seconds = segments[size]
            per_forward = forward_used * image.size / tile.size
            print(row(f"segment {size}² ({device.type})", f"auto ({precision})", seconds, image.size, per_forward,
                      f"end to end vs the bare forward it uses ({used})"), flush=True)
    if args.coco_images:
        eager, lazy = time_coco(args.coco_images)
        print(row(f"COCO open, {args.coco_images} images × 300 polygons", "read_coco (full parse)", eager, 0, None))
        print(row(f"COCO open, {args.coco_images} images × 300 polygons", "napari reader to first slice", lazy, 0,
                  eager[0], "vs the full parse"))


if __name__ == "__main__":
    main()
