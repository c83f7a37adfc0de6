"""Batched forward passes over uint8 image arrays, with optional test-time augmentation.

Shared by validation in the training loop, evaluation and prediction, so every figure
comes from the same arithmetic.
"""

from __future__ import annotations

import numpy as np
import torch

from h2a.data.preprocess import PreprocessConfig
from h2a.data.transforms import array_input, augment_samples
from h2a.models import H2AModel
from h2a.progress import ProgressFn, report


@torch.inference_mode()
def predict_arrays(
    model: H2AModel,
    images: np.ndarray,
    sex: np.ndarray | None,
    norm: tuple[float, float] | None,
    device: torch.device,
    *,
    batch_size: int = 32,  # on CPU 32 beat 64 and 128 (cache-resident activations)
    flip_tta: bool = False,
    augment: PreprocessConfig | None = None,
    views: int = 0,
    progress: ProgressFn | None = None,
    spread: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Raw model outputs for uint8 images (N,H,W) (a cache memmap slice works).

    ``flip_tta`` averages the output over the image and its horizontal mirror; ``views``
    more copies drawn with ``augment``'s ranges (seeded, so reruns agree) join the mean.
    ``spread=True`` also returns each image's SD over those copies (ddof 1, raw units; 0
    for one copy): the old interval rule's TTA spread, for comparison with conformal ones.
    """
    model.eval()
    n = len(images)
    out = np.empty(n, dtype=np.float32)
    sd = np.zeros(n, dtype=np.float32)
    extra = views if augment is not None else 0
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        u8 = np.ascontiguousarray(images[start:stop])
        x = array_input(u8, norm, device)
        s = None
        if model.use_sex:
            s = torch.as_tensor(sex[start:stop], dtype=torch.float32, device=device)
        y = model(x, s).float()
        sq = y * y
        count = 1
        if flip_tta:
            f = model(torch.flip(x, dims=[3]), s).float()
            y, sq = y + f, sq + f * f
            count += 1
        if extra:
            copies = np.stack([augment_samples(im, augment, n=extra, seed=start + i) for i, im in enumerate(u8)], 1)
            for v in range(extra):
                a = model(array_input(copies[v], norm, device), s).float()
                y, sq = y + a, sq + a * a
            count += extra
        mean = y / count
        out[start:stop] = mean.cpu().numpy()
        if spread and count > 1:
            var = (sq - count * mean * mean).clamp_min(0) / (count - 1)
            sd[start:stop] = var.sqrt().cpu().numpy()
        report(progress, stop, n, "predicting")
    return (out, sd) if spread else out
