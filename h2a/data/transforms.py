"""The one path from a uint8 image to what a model sees, plus the training augmentation.

Every consumer (the training engine, validation, evaluation, embeddings, prediction,
Grad-CAM and the Preprocessing page) calls ``input_norm`` + ``to_input`` /
``array_input``, so the page shows exactly the numbers the model is fed. The mean/std
come from the architecture's registry entry (its pretrained weights' statistics), not
from a constant here.
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from h2a.data.preprocess import PreprocessConfig
from h2a.models import model_info


def input_norm(arch: str, cfg: PreprocessConfig) -> tuple[float, float] | None:
    """(mean, std) the architecture's weights expect for one gray channel, or None for per-image."""
    if cfg.normalize == "per_image":
        return None
    mean, std = model_info(arch).norm(1)
    return float(mean[0]), float(std[0])


def to_input(u8: torch.Tensor, norm: tuple[float, float] | None) -> torch.Tensor:
    """uint8 (B,1,H,W) on the device -> normalised float, ready for the model."""
    x = u8.float().div_(255.0)
    if norm is None:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        return (x - mean) / std
    return (x - norm[0]) / norm[1]


def array_input(u8: np.ndarray, norm: tuple[float, float] | None, device: torch.device) -> torch.Tensor:
    """uint8 numpy image (H,W) or batch (N,H,W) -> normalised (N,1,H,W) on the device; a
    cache memmap slice works (it is copied once, contiguously)."""
    t = torch.from_numpy(np.ascontiguousarray(u8))
    return to_input((t[None, None] if t.ndim == 2 else t[:, None]).to(device), norm)


def augmentation(cfg: PreprocessConfig) -> v2.Compose | None:
    """Random flip + affine on uint8 tensors (1,H,W) or (B,1,H,W); None when all off.

    On a (B,1,H,W) batch v2 draws one set of parameters for the whole batch, so the
    training dataset applies it per sample.
    """
    ops: list = []
    if cfg.flip:
        ops.append(v2.RandomHorizontalFlip(p=0.5))
    if cfg.shift > 0 or cfg.rotation > 0 or cfg.zoom > 0:
        ops.append(
            v2.RandomAffine(
                degrees=cfg.rotation,
                translate=(cfg.shift, cfg.shift) if cfg.shift > 0 else None,
                scale=(1.0 - cfg.zoom, 1.0 + cfg.zoom) if cfg.zoom > 0 else None,
                interpolation=InterpolationMode.BILINEAR,
                fill=0,
            )
        )
    return v2.Compose(ops) if ops else None


def augment_samples(u8: np.ndarray, cfg: PreprocessConfig, n: int = 8,
                    seed: int = 0) -> list[np.ndarray]:
    """n augmented uint8 copies for the preview grid; deterministic by seed and leaves
    the global torch RNG untouched."""
    base = np.ascontiguousarray(np.asarray(u8, dtype=np.uint8))
    if base.ndim != 2:
        raise ValueError(f"augment_samples expects a 2-D uint8 image, got shape {base.shape}")
    tf = augmentation(cfg)
    if tf is None:
        return [base.copy() for _ in range(n)]
    t = torch.from_numpy(base.copy()).unsqueeze(0)
    out: list[np.ndarray] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(n):
            out.append(tf(t)[0].numpy().copy())
    return out
