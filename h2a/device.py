"""Which device to compute on, and how to describe it to a user."""

from __future__ import annotations

import os

import torch

from h2a.settings import get_settings


def resolve_device(setting: str | None = None, local_rank: int = 0) -> torch.device:
    """'auto' picks the GPU when there is one (the local rank's under torchrun), else CPU."""
    setting = (setting or get_settings().device or "auto").lower()
    if setting == "auto":
        setting = "cuda" if torch.cuda.is_available() else "cpu"
    if setting.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {setting!r} asked for, but no CUDA GPU is visible; use --device cpu")
        if setting == "cuda":
            setting = f"cuda:{local_rank % torch.cuda.device_count()}"
    return torch.device(setting)


def cpu_name() -> str:
    """The processor's model name as the kernel gives it ('AMD EPYC', 'Intel(R) Xeon(R) ...')."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "CPU"


def describe_device(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (cuda:0)' or 'CPU (2 cores)' with the processor's name: figures
    measured on one CPU are not another's (an AVX2-only EPYC trains 1.5-2x slower than AMX)."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    name = cpu_name()
    return f"CPU ({os.cpu_count()} cores)" + (f", {name}" if name != "CPU" else "")


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as the kernel lists them (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_cpu_bf16() -> tuple[bool, str]:
    """Whether this CPU computes bf16 natively (AMX or AVX512-BF16), and the evidence.

    oneDNN also accepts plain AVX512 for bf16, but emulates it there (slower than float32),
    so only the two native units count; elsewhere (an AVX2-only EPYC, ARM) float32 it is."""
    flags = cpu_flags()
    native = sorted(flags & {"amx_bf16", "avx512_bf16"})
    if native and torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return True, f"native bf16 on this CPU ({', '.join(native)})"
    if not flags:
        return False, "CPU features unknown (no /proc/cpuinfo): float32"
    return False, "no native bf16 on this CPU (no AMX or AVX512-BF16): float32"


def choose_amp(device: torch.device, mode: str = "auto") -> tuple[torch.dtype | None, str]:
    """Autocast dtype and why: 'auto' = bf16 on GPUs (fp16 on old ones) and on CPUs with
    native bf16 (AMX / AVX512-BF16), float32 on other CPUs; 'bf16' insists; 'off' = never."""
    if mode == "off":
        return None, "off: float32"
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return torch.bfloat16, "bf16 on the GPU"
        return torch.float16, "fp16 on a GPU without bf16"
    native, why = native_cpu_bf16()
    if mode == "bf16":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise RuntimeError("--amp bf16 on CPU needs a processor with bf16 support (AVX512-BF16 or AMX); "
                               "use --amp auto, which picks float32 here")
        return torch.bfloat16, "bf16 (asked for)"
    return (torch.bfloat16 if native else None), why


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """The dtype half of ``choose_amp``."""
    return choose_amp(device, mode)[0]


def use_channels_last(device: torch.device, dtype: torch.dtype | None) -> bool:
    """NHWC for convolutions: on CUDA always (tensor cores); on CPU only in float32, where
    oneDNN's NHWC kernels train EfficientNet-Lite0 ~1.6x faster than NCHW, while its bf16
    NHWC depthwise backward is ~2x slower (bench/bench_train.py --cpu-variants)."""
    return device.type == "cuda" or dtype is None
