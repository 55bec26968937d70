"""Do bf16 labels agree with fp32 labels? (the condition for bf16 being the default on CPUs that do it natively)

    python benchmarks/bench_bf16_agreement.py --crop 256 --threads 2

Segments held-out crops (Usiigaci test sets, DSB test groups) once in fp32 and once in bf16 channels-last (what
`precision="auto"` picks on AVX512-BF16/AMX CPUs: the network copy with batch norms folded, weights in bf16), at
the model's own cell size so both see identical pixels, and compares: instance F1@0.5 between the two label images, foreground IoU, and the
largest probability difference. On a CPU without native bf16 oneDNN emulates it: the same rounding, ~300x
slower, so keep the crops small there. Prints one JSON object with the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "scripts"))
sys.path.insert(0, str(REPO / "benchmarks"))

import numpy as np  # noqa: E402

from bench_finetune_new_domain import add_common_arguments, cpu_description  # noqa: E402
from default_model_data import all_items  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_arguments(p)
    p.add_argument("--crop", type=int, default=256)
    p.add_argument("--images", type=int, default=8, help="test images used (half Usiigaci, half DSB)")
    args = p.parse_args(argv)
    import torch

    from napari_cell_unet._progress import result_of
    from napari_cell_unet.inference import iter_segment
    from napari_cell_unet.metrics import match_instances, pixel_iou
    from napari_cell_unet.model import load_model

    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    test = all_items(args.data)["test"]
    usiigaci = [i for i in test if i.domain == "usiigaci"]
    dsb = [i for i in test if i.domain != "usiigaci"]
    chosen = usiigaci[:args.images // 2] + dsb[::max(1, len(dsb) // (args.images - args.images // 2))]
    rows = []
    for item in chosen[:args.images]:
        image, _ = item.load()
        top, left = max(0, (image.shape[0] - args.crop) // 2), max(0, (image.shape[1] - args.crop) // 2)
        crop = image[top:top + args.crop, left:left + args.crop]
        results, seconds = {}, {}
        for precision in ("fp32", "bf16"):
            started = time.perf_counter()
            results[precision] = result_of(iter_segment(crop, model, device="cpu", precision=precision, diameter=None,
                                                        return_probabilities=True))
            seconds[precision] = round(time.perf_counter() - started, 2)
        a, b = results["fp32"], results["bf16"]
        rows.append({"image": f"{item.domain}/{item.name}", "cells_fp32": a.n_cells, "cells_bf16": b.n_cells,
                     "f1_50": round(match_instances(b.labels, a.labels, 0.5).f1, 4),
                     "foreground_iou": round(pixel_iou(b.labels > 0, a.labels > 0), 4),
                     "max_abs_probability_difference": round(float(np.abs(a.probabilities - b.probabilities).max()), 4),
                     "seconds": seconds})
    summary = {"images": len(rows), "crop": args.crop,
               "min_f1_50": min(r["f1_50"] for r in rows), "mean_f1_50": round(float(np.mean([r["f1_50"] for r in rows])), 4),
               "min_foreground_iou": min(r["foreground_iou"] for r in rows),
               "max_abs_probability_difference": max(r["max_abs_probability_difference"] for r in rows)}
    print(json.dumps({"summary": summary, "rows": rows, "machine": cpu_description()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
