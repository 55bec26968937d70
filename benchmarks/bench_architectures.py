"""CPU forward speed of candidate U-Net architectures, to choose the default model.

Usage: python benchmarks/bench_architectures.py [--threads 2] [--size 512] [--repeats 5]

For each candidate: parameter count, fp16 .safetensors size, and forward throughput
(megapixels per second) on a 1x1xSIZExSIZE input in fp32 and under bf16 autocast.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch

from napari_cell_unet.model import CellModel, save_model

CANDIDATES = {
    "resnet18": {"name": "Unet", "encoder_name": "resnet18", "encoder_depth": 5,
                 "decoder_channels": [256, 128, 64, 32, 16]},
    "resnet34": {"name": "Unet", "encoder_name": "resnet34", "encoder_depth": 5,
                 "decoder_channels": [256, 128, 64, 32, 16]},
    "efficientnet-b0": {"name": "Unet", "encoder_name": "efficientnet-b0", "encoder_depth": 5,
                        "decoder_channels": [256, 128, 64, 32, 16]},
    "mobilenet_v2": {"name": "Unet", "encoder_name": "mobilenet_v2", "encoder_depth": 5,
                     "decoder_channels": [256, 128, 64, 32, 16]},
    "resnet18 light decoder": {"name": "Unet", "encoder_name": "resnet18", "encoder_depth": 5,
                               "decoder_channels": [128, 64, 32, 16, 8]},
}


def forward_seconds(network: torch.nn.Module, size: int, bf16: bool) -> float:
    x = torch.randn(1, 1, size, size)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        start = time.perf_counter()
        network(x)
        return time.perf_counter() - start


def fp16_file_mb(model: CellModel) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = save_model(model, Path(tmp) / "m.safetensors", half=True)
        return path.stat().st_size / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--bf16-size", type=int, default=128,
                        help="input size for the bf16 run (small: bf16 is emulated and very slow without AVX512-BF16/AMX)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bf16_native = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    print(f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"threads {args.threads}, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {bf16_native}\n")
    print(f"| encoder / decoder | params (M) | fp16 file (MB) | fp32 MP/s ({args.size}²) | bf16 MP/s ({args.bf16_size}²) |")
    print("|---|---:|---:|---:|---:|")
    models = {}
    for label, arch in CANDIDATES.items():
        try:
            models[label] = CellModel.create(architecture=dict(arch), name=label)
            models[label].network.eval()
            forward_seconds(models[label].network, args.size, bf16=False)  # warm-up (oneDNN primitives)
        except Exception as exc:  # e.g. an encoder that needs a download or an extra package
            print(f"| {label} | — | — | — | build failed: {str(exc).splitlines()[0][:60]} |")
    # Interleaved rounds, best time kept: robust to other processes sharing the CPU.
    best = {label: float("inf") for label in models}
    for _ in range(args.repeats):
        for label, model in models.items():
            best[label] = min(best[label], forward_seconds(model.network, args.size, False))
    for label, model in models.items():
        params = sum(p.numel() for p in model.network.parameters()) / 1e6
        fp32 = args.size ** 2 / best[label] / 1e6
        bf16 = args.bf16_size ** 2 / forward_seconds(model.network, args.bf16_size, bf16=True) / 1e6
        print(f"| {label} | {params:.2f} | {fp16_file_mb(model):.1f} | {fp32:.3f} | {bf16:.4f} |", flush=True)


if __name__ == "__main__":
    main()
