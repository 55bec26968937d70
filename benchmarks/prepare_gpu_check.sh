#!/usr/bin/env bash
# Prepare, here, what benchmarks/gpu_check.sh needs on a lent GPU machine (issue 10), then restore the tree after.
#
#   bash benchmarks/prepare_gpu_check.sh            # wheels in .whl/, frames in benchmarks/_work/ (both git-ignored)
#   bash benchmarks/prepare_gpu_check.sh --shrink   # also delete the two specialists' weights from the working tree
#   device run: command "bash benchmarks/gpu_check.sh", carry [".whl", "benchmarks/_work"], timeout_s 540
#   git checkout -- src/napari_cell_unet/model/weights   # afterwards: the weights back (they never leave git)
#
# Why --shrink: what travels to the device machine is capped at 64 MiB and the three bundled models alone are 87 MB
# (float16 already); the check needs only the default model. Nothing is staged: `git status` shows the two files
# deleted until the checkout above brings them back.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA=${CELL_UNET_SHARED_DATA:-../shared/data}
mkdir -p .whl benchmarks/_work
SMP=$($PY -c 'import segmentation_models_pytorch as s; print(s.__version__)')
# the device's python3 (3.12, torch and timm there) lacks only segmentation-models-pytorch, a pure-Python wheel
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 -d .whl "segmentation-models-pytorch==$SMP"
$PY - "$DATA" <<'PY'
import sys
from pathlib import Path

import numpy as np
import tifffile

data = Path(sys.argv[1])
frames = {f"usiigaci{i}": tifffile.imread(data / "usiigaci_phase" / f"set{n}" / "raw.tif")
          for i, n in enumerate((20, 21, 22, 24))}  # bench_inference.py's frames, in its order
frames["livecell"] = tifffile.imread(data / "livecell_samples" / "A172_Phase_A7_1_00d00h00m_1.tif")
np.savez_compressed("benchmarks/_work/frames.npz", **frames)
PY
if [[ "${1:-}" == "--shrink" ]]; then
    rm -f src/napari_cell_unet/model/weights/cells.safetensors src/napari_cell_unet/model/weights/nuclei.safetensors
fi
du -sh .whl benchmarks/_work
