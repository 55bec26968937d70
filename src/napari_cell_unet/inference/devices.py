"""Choosing the torch device, the CPU thread count and the arithmetic precision."""

from __future__ import annotations

import os

import torch

from ..errors import CellUnetError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


class DeviceError(CellUnetError, ValueError):
    """A device or precision that cannot be used here; the message is one line."""


def available_devices() -> list[str]:
    """Device names usable on this machine, "auto" first (e.g. ["auto", "cpu", "cuda"])."""
    names = ["auto", "cpu"]
    if torch.cuda.is_available():
        names.append("cuda")
    if _mps_available():
        names.append("mps")
    return names


def resolve_device(name: str | torch.device | None = "auto") -> torch.device:
    """Turn "auto" / "cpu" / "cuda" / "cuda:1" / "mps" into a present `torch.device`.

    "auto" (or None) picks CUDA, then Apple MPS, then the CPU. A device that is not
    present raises `DeviceError`.
    """
    if name is None or str(name).strip().lower() == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(str(name).strip().lower())
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; choose one of {', '.join(available_devices())}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} is not available on this machine (no CUDA GPU); "
                              f"choose one of {', '.join(available_devices())}")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r} does not exist: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
        return device
    if device.type == "mps":
        if not _mps_available():
            raise DeviceError(f"device {name!r} is not available on this machine (no Apple MPS); "
                              f"choose one of {', '.join(available_devices())}")
        return device
    raise DeviceError(f"unsupported device {name!r}; choose one of {', '.join(available_devices())}")


def cpu_threads() -> int:
    """CPU cores this process may actually use (affinity mask and cgroup quota), at least 1."""
    try:
        count = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        count = os.cpu_count() or 1
    quota = _cgroup_cpu_quota()
    if quota is not None:
        count = min(count, quota)
    return max(1, count)


def instance_workers(device: torch.device) -> int:
    """Threads for the instance step beside the network. One where the network runs on the CPU (it uses every
    core); beside a GPU, the cores the GPU does not need to be fed (two kept for cutting and blending tiles), up to
    8: bands of a plane and whole slices are independent, and the instance step's C code mostly runs outside the
    GIL (two threads did one 1824 x 8000 band's halves 1.5-2.2x faster than one; benchmarks/RESULTS.md)."""
    if device.type == "cpu":
        return 1
    return max(1, min(8, cpu_threads() - 2))


def native_bf16_cpu() -> bool:
    """True when the CPU does bf16 matrix work natively (AVX512-BF16 or AMX).

    Without it oneDNN emulates bf16 and is ~300x slower than fp32 (measured on an
    AVX2-only AMD EPYC, see benchmarks/RESULTS.md), so bf16 must never be chosen blindly.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """The precision actually used: "fp32", "bf16" or "fp16".

    "auto": fp16 autocast on CUDA; bf16 autocast on a CPU that does bf16 natively (AVX512-BF16 or
    AMX: 3.5x faster there with channels-last, labels agreeing with fp32, see README); fp32 on other
    CPUs (emulated bf16 is ~300x slower) and on MPS.
    """
    precision = str(precision).lower()
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            return "fp16"
        return "bf16" if device.type == "cpu" and native_bf16_cpu() else "fp32"
    if precision == "fp16" and device.type == "cpu":
        raise DeviceError("fp16 is not supported on the CPU; use fp32 or bf16")
    return precision


def channels_last(device: torch.device, precision: str) -> bool:
    """Whether tensors go channels-last: on CUDA and on the CPU, whatever the precision. oneDNN's fast bf16
    kernels want it (2.5x with it on an AVX512-BF16/AMX CPU), and fp32 gains too: 1.3x there, 1.2x on an
    AVX2-only EPYC (benchmarks/RESULTS.md, bench_speed.py). MPS: not measured, left contiguous."""
    return device.type in ("cuda", "cpu")


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _cgroup_cpu_quota() -> int | None:
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, int(int(quota) // int(period)))
