"""Grad-CAM heat maps and overlays: where in the radiograph the model's output comes from.

Grad-CAM (Selvaraju et al. 2017) weights each channel of the model's last feature map
(``H2AModel.forward_features``, the output of ``cam_target_layer``) by the spatial mean of the output's gradient and keeps
the positive part. Here the "class score" is the model's single scalar output:

* task ``boneage``: the (standardised) predicted age, so the map shows regions that push
  the estimate *older*; ``negative=True`` shows regions that push it younger.
* task ``sex``: the logit with positive = male, so the map shows evidence for *male*;
  ``negative=True`` shows evidence for female.

The resolution is that of the last feature map (input / 32 for most trunks), upsampled
bilinearly to the input size, so it localises regions (carpals, growth plates), not pixels.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from h2a.data.transforms import array_input
from h2a.models import H2AModel

__all__ = ["CAM_METHODS", "COLORMAPS", "DEFAULT_CAM", "grad_cam", "overlay", "run_cam"]

CAM_METHODS = ("gradcam", "gradcam++")
# The map predict, evaluation and the PDF show: (trunk stage, method). Chosen on held-out
# thumbnails by the share of the map's mass inside the hand and a model-randomisation check
# (bench/bench_cam.py; docs/trust.md gives the figures): stage -2 (stride 16, 8 x 8 at
# 128 px) instead of the last map (4 x 4), which put one coarse blob over the middle fingers.
DEFAULT_CAM = (-2, "gradcam")


def _cam_weights(acts: Tensor, grads: Tensor, method: str) -> Tensor:
    """Channel weights (B, C, 1, 1): Grad-CAM's mean gradient, or Grad-CAM++'s (Chattopadhay
    et al. 2018) positive gradients weighted by alpha = g^2 / (2 g^2 + sum(A) g^3), which
    lets several separate regions of one channel count instead of the largest."""
    if method == "gradcam":
        return grads.mean(dim=(2, 3), keepdim=True)
    if method != "gradcam++":
        raise ValueError(f"unknown heat-map method {method!r} (one of {', '.join(CAM_METHODS)})")
    g2, g3 = grads ** 2, grads ** 3
    denom = 2 * g2 + acts.sum(dim=(2, 3), keepdim=True) * g3
    alpha = g2 / torch.where(denom != 0, denom, torch.ones_like(denom))
    return (alpha * F.relu(grads)).sum(dim=(2, 3), keepdim=True)


def grad_cam(model: H2AModel, x: Tensor, sex: Tensor | None = None, *,
             negative: bool = False, stage: int = -1, method: str = "gradcam") -> np.ndarray:
    """Grad-CAM for each image in ``x`` -> (B, H, W) float32 in [0, 1] at the input size.

    ``x`` is (B, C, H, W) or (C, H, W), preprocessed exactly as for prediction. The model
    is evaluated in eval mode (BN running statistics, no dropout; a model in train mode is
    switched for the call and switched back). No hooks are used, parameter ``.grad`` and
    ``requires_grad`` are untouched, and it works inside the caller's ``torch.no_grad()``
    or ``torch.inference_mode()``. Thread-safe on an eval-mode model (e.g. one cached by
    ``st.cache_resource``).
    Each map is scaled by its own maximum; a map with no positive evidence is all zeros.
    ``stage``: the trunk stage whose map is weighted (-1 = the last; -2 a finer one, where
    the trunk offers intermediates); ``method``: 'gradcam' or 'gradcam++'.
    """
    if x.ndim == 3:
        x = x.unsqueeze(0)
    if x.ndim != 4:
        raise ValueError(f"expected a (B, C, H, W) tensor, got shape {tuple(x.shape)}")
    param = next(model.parameters(), None)
    device = param.device if param is not None else x.device
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    height, width = x.shape[-2:]

    # No hooks: the feature map comes from model.forward_features (by contract the output
    # of cam_target_layer) and the score from the same pooling + head that forward() uses.
    # Hooks would be shared state, and Streamlit sessions call one cached model from
    # several threads at once. An eval-mode model is not mutated at all.
    was_training = model.training
    try:
        if was_training:
            model.eval()
        with torch.inference_mode(False), torch.enable_grad():
            # fresh (non-inference) leaf that requires grad, so the graph exists even when
            # every parameter is frozen; the caller's tensor is untouched
            inp = x.detach().to(device=device, dtype=dtype).clone().requires_grad_(True)
            sex_in = None
            if sex is not None:
                sex_in = torch.as_tensor(sex).detach().to(device=device).clone()
            final, acts = model.features_and_stage(inp, stage)
            out = model.forward_head(final, sex_in)
            score = -out.sum() if negative else out.sum()  # samples are independent in eval
            (grads,) = torch.autograd.grad(score, acts)
        with torch.no_grad():
            acts, grads = acts.detach().float(), grads.detach().float()
            weights = _cam_weights(acts, grads, method)  # (B, C, 1, 1)
            cam = F.relu((weights * acts).sum(dim=1, keepdim=True))  # (B, 1, h, w)
            cam = F.interpolate(cam, size=(height, width), mode="bilinear", align_corners=False)
            cam = cam.squeeze(1).clamp_min(0)
            peak = cam.flatten(1).amax(dim=1).view(-1, 1, 1)
            cam = torch.where(peak > 0, cam / peak.clamp_min(1e-12), torch.zeros_like(cam))
    finally:
        if was_training:
            model.train()
    return cam.cpu().numpy().astype(np.float32, copy=False)


def run_cam(run, image_u8: np.ndarray, male: bool | None, *, negative: bool = False,
            cam: tuple[int, str] | None = None) -> np.ndarray:
    """Grad-CAM (H, W) in [0, 1] of one preprocessed uint8 image under a loaded run.

    The one place that feeds a run's model for a heat map (evaluation, sex and predict
    pages, the PDF report): the input goes through the run's own transform, and ``male``
    is passed only when the model takes sex as an input. ``run`` is a
    ``h2a.inference.loading.LoadedRun``.
    """
    x = array_input(image_u8, run.norm, run.device)
    sex = None
    if run.model.use_sex:
        if male is None:
            raise ValueError("this model takes sex as an input: pass male=True or False")
        sex = torch.tensor([1.0 if male else 0.0], device=run.device)
    stage, method = cam or DEFAULT_CAM
    try:
        return grad_cam(run.model, x, sex, negative=negative, stage=stage, method=method)[0]
    except ValueError:  # a trunk without intermediate stages (tiny_cnn, token models): its last map
        return grad_cam(run.model, x, sex, negative=negative, stage=-1, method=method)[0]


COLORMAPS: tuple[str, ...] = ("jet", "turbo", "inferno", "magma", "plasma", "viridis", "hot", "bone", "cool")


def _colormaps() -> dict[str, int]:
    """OpenCV colormap ids by name (OpenCV is a core dependency; matplotlib is not)."""
    import cv2

    return {n: getattr(cv2, f"COLORMAP_{n.upper()}") for n in COLORMAPS if hasattr(cv2, f"COLORMAP_{n.upper()}")}


def _to_unit(gray: np.ndarray) -> np.ndarray:
    """Gray image as float32 in [0, 1]: integers by their dtype's range, floats clipped."""
    g = np.asarray(gray)
    if g.dtype == np.bool_:
        return g.astype(np.float32)
    if np.issubdtype(g.dtype, np.integer):
        return g.astype(np.float32) / float(np.iinfo(g.dtype).max)
    return np.clip(np.nan_to_num(g.astype(np.float32)), 0.0, 1.0)


def overlay(gray: np.ndarray, cam: np.ndarray, alpha: float = 0.4,
            colormap: str = "jet") -> np.ndarray:
    """Blend a CAM, coloured with ``colormap``, over a grayscale image -> (H, W, 3) uint8 RGB.

    ``gray`` is (H, W) uint8 (or another integer type) or float in [0, 1]; ``cam`` is
    (h, w) in [0, 1] and is resized to (H, W) when its size differs (e.g. a CAM at the
    model's input size over the original radiograph).
    """
    import cv2

    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    maps = _colormaps()
    if colormap not in maps:
        raise ValueError(f"unknown colormap {colormap!r}; choose one of {', '.join(maps)}")
    g = _to_unit(gray)
    if g.ndim == 3 and g.shape[-1] in (1, 3, 4):  # tolerate (H, W, C) images: use luminance
        g = g[..., 0] if g.shape[-1] == 1 else g[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    if g.ndim != 2:
        raise ValueError(f"gray must be a 2-D image, got shape {g.shape}")
    c = np.clip(np.nan_to_num(np.asarray(cam, dtype=np.float32)), 0.0, 1.0)
    if c.ndim != 2:
        raise ValueError(f"cam must be a 2-D map, got shape {c.shape}")
    if c.shape != g.shape:
        c = cv2.resize(c, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_LINEAR)
    heat_bgr = cv2.applyColorMap(np.round(c * 255).astype(np.uint8), maps[colormap])
    heat = heat_bgr[..., ::-1].astype(np.float32) / 255.0
    base = np.repeat(g[..., None], 3, axis=2)
    out = (1.0 - alpha) * base + alpha * heat
    return np.clip(np.round(out * 255), 0, 255).astype(np.uint8)
