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


def describe_device(device: torch.device) -> str:
    """'NVIDIA H100 80GB HBM3 (cuda:0)' or 'CPU (2 cores)'."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"CPU ({os.cpu_count()} cores)"


def gpu_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def amp_dtype(device: torch.device, mode: str = "auto") -> torch.dtype | None:
    """Autocast dtype: 'auto' = bf16 on GPUs (fp16 on old ones), full precision on CPU;
    'bf16' also on CPU (fast only where oneDNN has AMX/AVX512-BF16); 'off' = never."""
    if mode == "off":
        return None
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if mode == "bf16":
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            raise RuntimeError("--amp bf16 on CPU needs a processor with bf16 support (AVX512-BF16 or AMX)")
        return torch.bfloat16
    return None


def use_channels_last(device: torch.device, dtype: torch.dtype | None) -> bool:
    """NHWC for convolutions: on CUDA always (tensor cores); on CPU only in float32, where
    oneDNN's NHWC kernels train EfficientNet-Lite0 ~1.6x faster than NCHW, while its bf16
    NHWC depthwise backward is ~2x slower (bench/bench_train.py --cpu-variants)."""
    return device.type == "cuda" or dtype is None
