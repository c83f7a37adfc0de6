"""The one test-time path: which copies of an image are predicted (``tta_views``) and the
batched forward passes over them (``view_outputs``).

Validation in the training loop, evaluation, calibration, site fitting and the ``Predictor``
all go through here, so an interval is applied with exactly the procedure it was fitted for
and prediction and evaluation of the same image give the same number.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from h2a.data.preprocess import PreprocessConfig
from h2a.data.transforms import array_input, augment_samples
from h2a.inference.conformal import Procedure
from h2a.progress import ProgressFn, report

# Every image's augmented copies are drawn with this seed: the same image gets the same copies
# wherever it is predicted (alone on the Predict page or at row 5,000 of an evaluation).
# Calibrations fitted before 2026-12-07 seeded each copy by the image's row instead (their
# procedure says so); the copies differ, the procedure's expected error does not.
TTA_SEED = 0
BATCH_SIZE = 32  # on CPU 32 beat 64 and 128 (cache-resident activations)


def tta_views(u8: np.ndarray, procedure: Procedure, augment: PreprocessConfig | None) -> np.ndarray:
    """(k, S, S) uint8: the image, its mirror when ``procedure.flip_tta``, then
    ``procedure.views`` copies drawn with ``augment``'s ranges (none without ``augment``)."""
    u8 = np.ascontiguousarray(u8)
    copies = [u8]
    if procedure.flip_tta:
        copies.append(np.ascontiguousarray(u8[:, ::-1]))
    if procedure.views and augment is not None:
        copies += augment_samples(u8, augment, n=procedure.views, seed=TTA_SEED)
    return np.stack(copies)


@torch.inference_mode()
def view_outputs(model: nn.Module, views: np.ndarray, sex: np.ndarray | None, norm: tuple[float, float] | None,
                 device: torch.device, *, batch_size: int = BATCH_SIZE,
                 embed: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Raw outputs (k, B) for ``views`` (k, B, S, S) uint8 (k copies of B images), forwarded in
    batches of ``batch_size`` whatever k and B are; with ``embed``, also the pooled embedding
    (B, D) of copy 0 from the same pass (the out-of-distribution check's input)."""
    k, b = views.shape[:2]
    flat = views.reshape(k * b, *views.shape[2:])
    s_all = None
    if sex is not None and getattr(model, "use_sex", getattr(getattr(model, "module", None), "use_sex", False)):
        s_all = torch.as_tensor(np.tile(np.asarray(sex, np.float32), k), dtype=torch.float32, device=device)
    raw = np.empty(k * b, np.float32)
    emb = None
    for start in range(0, k * b, batch_size):
        stop = min(k * b, start + batch_size)
        x = array_input(np.ascontiguousarray(flat[start:stop]), norm, device)
        s = s_all[start:stop] if s_all is not None else None
        if embed and start < b:  # copy 0 of some images is in this batch
            fmap = model.forward_features(x)
            y = model.forward_head(fmap, s)
            e = model.forward_head(fmap[: min(stop, b) - start], pre_logits=True).float().cpu().numpy()
            emb = e if emb is None else np.concatenate([emb, e])
        else:
            y = model(x, s)
        raw[start:stop] = y.float().cpu().numpy()
    return raw.reshape(k, b), emb


def predict_arrays(
    model: nn.Module,
    images: np.ndarray,
    sex: np.ndarray | None,
    norm: tuple[float, float] | None,
    device: torch.device,
    *,
    batch_size: int = BATCH_SIZE,
    flip_tta: bool = False,
    augment: PreprocessConfig | None = None,
    views: int = 0,
    progress: ProgressFn | None = None,
    spread: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Raw model outputs for uint8 images (N,H,W) (a cache memmap slice works): the mean over
    the copies ``tta_views`` makes for ``Procedure(flip_tta, views)``.

    ``spread=True`` also returns each image's SD over those copies (ddof 1, raw units; 0
    for one copy): the old interval rule's TTA spread, for comparison with conformal ones.
    """
    model.eval()
    procedure = Procedure(bool(flip_tta), int(views) if augment is not None else 0)
    n = len(images)
    out = np.empty(n, dtype=np.float32)
    sd = np.zeros(n, dtype=np.float32)
    for start in range(0, n, batch_size):
        stop = min(n, start + batch_size)
        copies = np.stack([tta_views(im, procedure, augment) for im in images[start:stop]], 1)
        raw, _ = view_outputs(model, copies, None if sex is None else sex[start:stop], norm, device,
                              batch_size=batch_size)
        out[start:stop] = raw.mean(0)
        if spread and len(raw) > 1:
            sd[start:stop] = raw.std(0, ddof=1)
        report(progress, stop, n, "predicting")
    return (out, sd) if spread else out
