#!/usr/bin/env bash
# The prepared GPU check for issue 10, run on a lent GPU machine in one call (see prepare_gpu_check.sh): the bundled
# model's bare forward vs `segment` end to end on the frame, 2048², a 30-slice stack and 8000², at the model's own
# size and at the default call, with the GPU path of 2026-12-03 (batches queued ahead through pinned memory,
# cuDNN autotuning, instance threads beside the GPU). Tables land in $OUT. DEVICE=cpu runs it here, as a dry run.
set -uo pipefail
OUT=${OUT:-build/gpu_check}
DEVICE=${DEVICE:-cuda}
THREADS=${THREADS:-$(( $(nproc) > 2 ? $(nproc) - 2 : 1 ))}
CASES=${CASES:-frame,2048,stack,8k}
PY=${PY:-python3}
mkdir -p "$OUT"
if ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || exit 1
fi
export PYTHONPATH="$PWD/src:/tmp/site${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || true
  $PY -c 'import torch, sys; print("python", sys.version.split()[0], "torch", torch.__version__,
"cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "")'
} 2>&1 | tee "$OUT/machine.txt"
MODEL=src/napari_cell_unet/model/weights/default.safetensors
for diameter in none auto; do
    timeout 240 $PY benchmarks/bench_inference.py --device "$DEVICE" --threads "$THREADS" --model "$MODEL" \
        --cases "$CASES" --diameter "$diameter" --forward-tiles 16 2>&1 | tee "$OUT/bench_inference_$diameter.md"
done
