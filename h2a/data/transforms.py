"""The one path from a uint8 image to what a model sees, plus the training augmentation.

Every consumer (the training engine, validation, evaluation, embeddings, prediction,
Grad-CAM and the Preprocessing page) calls ``input_norm`` + ``to_input`` /
``array_input``, so the page shows exactly the numbers the model is fed. The mean/std
come from the architecture's registry entry (its pretrained weights' statistics), not
from a constant here.

Augmentation has two parts. The geometric part (flip, shift, rotation, zoom) is how the
hand lay; the photometric part (``Photometric``: resolution and resampling, blur and
sharpening, gamma and contrast, noise, JPEG) is how the image was made, which is what a
model trained on one archive's thumbnails does not see vary. Photometric ops run first,
on the prepared image as a file would have given it, then the geometry (whose black fill
then stays clean, like ``prepare``'s padding).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.transforms import InterpolationMode, v2

from h2a.data.preprocess import JPEG_QUALITY_RANGE, PreprocessConfig
from h2a.models import model_info

# Down and up filters the downscale-upscale augmentation picks from: the ways real
# pipelines resample (PACS exports, thumbnails, viewers, screenshots).
RESAMPLE_FILTERS = (cv2.INTER_NEAREST, cv2.INTER_LINEAR, cv2.INTER_AREA, cv2.INTER_CUBIC)
MIN_SIGMA = 0.1  # px: below this a Gaussian blur or unsharp mask changes nothing visible
SHARPEN_AMOUNT = 1.0  # unsharp mask: image + amount x (image - blurred)
MIN_NOISE_SD = 0.25  # grey levels: below this rounding to uint8 removes the noise again
_N_DRAWS = 10  # uniform numbers drawn per image (fixed, so one op never shifts another's draws)


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


class Photometric:
    """Per-image photometric augmentation of uint8 tensors (1,H,W) or (B,1,H,W).

    Each image gets its own draws from the torch RNG (so DataLoader workers, seeded by
    torch, stay reproducible); the arithmetic is OpenCV on the uint8 pixels, tens of
    microseconds per op at training sizes, so it adds little to a training step. The
    ranges are ``PreprocessConfig``'s ``aug_*`` fields; an op whose field is 0 is skipped.
    Exact black (0) stays black under contrast and noise: it is padding or a blacked-out
    background, and lighting it up would teach the model a border that never occurs.
    """

    def __init__(self, *, gamma: float = 0.0, contrast: float = 0.0, blur: float = 0.0, downscale: float = 0.0,
                 noise: float = 0.0, jpeg: float = 0.0) -> None:
        self.gamma, self.contrast, self.blur = float(gamma), float(contrast), float(blur)
        self.downscale, self.noise, self.jpeg = float(downscale), float(noise), float(jpeg)

    @classmethod
    def from_config(cls, cfg: PreprocessConfig) -> Photometric | None:
        """The config's photometric augmentation, or None when every part is off."""
        if not cfg.photometric:
            return None
        return cls(gamma=cfg.aug_gamma, contrast=cfg.aug_contrast, blur=cfg.aug_blur,
                   downscale=cfg.aug_downscale, noise=cfg.aug_noise, jpeg=cfg.aug_jpeg)

    def __repr__(self) -> str:
        return (f"Photometric(gamma={self.gamma}, contrast={self.contrast}, blur={self.blur}, "
                f"downscale={self.downscale}, noise={self.noise}, jpeg={self.jpeg})")

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8 or x.ndim < 2:
            raise ValueError(f"Photometric expects uint8 images (...,H,W), got {x.dtype} {tuple(x.shape)}")
        flat = x.reshape(-1, *x.shape[-2:])
        out = torch.empty_like(flat, device="cpu")
        for i in range(len(flat)):
            out[i] = torch.from_numpy(self.apply(np.ascontiguousarray(flat[i].cpu().numpy())))
        return out.reshape(x.shape).to(x.device)

    def apply(self, img: np.ndarray) -> np.ndarray:
        """One uint8 (H, W) image -> its augmented copy (draws from the torch RNG)."""
        u = torch.rand(_N_DRAWS, dtype=torch.float64).tolist()
        out = img
        if self.downscale > 0:
            out = downscale_upscale(out, 1.0 - self.downscale * u[0], RESAMPLE_FILTERS[int(u[1] * 4) % 4],
                                    RESAMPLE_FILTERS[int(u[2] * 4) % 4])
        if self.blur > 0:
            out = blur_or_sharpen(out, self.blur * (2.0 * u[3] - 1.0))
        if self.gamma > 0 or self.contrast > 0:
            g = (1.0 + self.gamma) ** (2.0 * u[4] - 1.0)
            c = 1.0 + self.contrast * (2.0 * u[5] - 1.0)
            out = gamma_contrast(out, g, c)
        if self.noise > 0:
            sd = self.noise * u[6]
            if sd >= MIN_NOISE_SD:
                out = add_noise(out, torch.randn(out.shape, dtype=torch.float32).numpy() * sd)
        if self.jpeg > 0 and u[7] < self.jpeg:
            lo, hi = JPEG_QUALITY_RANGE
            out = jpeg_roundtrip(out, lo + int(u[8] * (hi - lo + 1)) % (hi - lo + 1))
        return out


# -- the photometric ops, each a plain uint8 -> uint8 function (tests and the robustness
#    report call them directly) ---------------------------------------------------------
def gamma_contrast(img: np.ndarray, gamma: float, contrast: float = 1.0) -> np.ndarray:
    """Gamma (< 1 brightens mid-tones), then contrast about the mean of the non-black
    pixels, in one lookup table; 0 stays 0."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    lut = 255.0 * levels ** float(gamma)
    if contrast != 1.0:
        hist = np.bincount(img.ravel(), minlength=256).astype(np.float64)
        hist[0] = 0.0
        mean = float(hist @ lut / hist.sum()) if hist.sum() > 0 else 0.0
        lut = mean + float(contrast) * (lut - mean)
    table = np.clip(lut + 0.5, 0, 255).astype(np.uint8)
    table[0] = 0
    return cv2.LUT(np.ascontiguousarray(img), table)


def blur_or_sharpen(img: np.ndarray, sigma: float) -> np.ndarray:
    """sigma > 0: Gaussian blur; sigma < 0: unsharp-mask sharpening with |sigma|."""
    s = abs(float(sigma))
    if s < MIN_SIGMA:
        return img
    blurred = cv2.GaussianBlur(np.ascontiguousarray(img), (0, 0), s)
    if sigma > 0:
        return blurred
    return cv2.addWeighted(img, 1.0 + SHARPEN_AMOUNT, blurred, -SHARPEN_AMOUNT, 0.0)  # saturates to uint8


def downscale_upscale(img: np.ndarray, factor: float, down: int = cv2.INTER_AREA,
                      up: int = cv2.INTER_LINEAR) -> np.ndarray:
    """Shrink by ``factor`` with filter ``down``, then back to the same shape with ``up``:
    the detail lost by a lower-resolution source, with that pipeline's artefacts."""
    h, w = img.shape[:2]
    nh, nw = max(2, round(h * factor)), max(2, round(w * factor))
    if (nh, nw) == (h, w):
        return img
    small = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=down)
    return cv2.resize(small, (w, h), interpolation=up)


def add_noise(img: np.ndarray, noise: np.ndarray) -> np.ndarray:
    """img + noise (grey levels), rounded and clipped; exact black stays black."""
    out = np.clip(img.astype(np.float32) + noise + 0.5, 0, 255).astype(np.uint8)
    out[img == 0] = 0
    return out


def jpeg_roundtrip(img: np.ndarray, quality: int) -> np.ndarray:
    """Encode as a JPEG of ``quality`` (1-100) and decode: block and ringing artefacts."""
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:  # pragma: no cover - OpenCV always encodes a uint8 image
        return img
    return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)


def geometric_augmentation(cfg: PreprocessConfig) -> v2.Compose | None:
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


def augmentation(cfg: PreprocessConfig) -> v2.Compose | None:
    """The training augmentation: photometric (per image), then geometric; None when all off.

    Applied per sample by the training dataset (``CachedImageDataset``'s transform).
    """
    ops: list = []
    photo = Photometric.from_config(cfg)
    if photo is not None:
        ops.append(photo)
    geo = geometric_augmentation(cfg)
    if geo is not None:
        ops.extend(geo.transforms)
    return v2.Compose(ops) if ops else None


def augment_samples(u8: np.ndarray, cfg: PreprocessConfig, n: int = 8,
                    seed: int = 0, *, photometric: bool = False) -> list[np.ndarray]:
    """n augmented uint8 copies; deterministic by seed and leaves the global torch RNG
    untouched.

    Test-time augmentation (evaluation, prediction) calls it as is: geometric copies only,
    so a run trained with photometric augmentation keeps its TTA means and spreads
    comparable with earlier runs. The Preprocessing page's preview passes
    ``photometric=True`` to show everything training does.
    """
    base = np.ascontiguousarray(np.asarray(u8, dtype=np.uint8))
    if base.ndim != 2:
        raise ValueError(f"augment_samples expects a 2-D uint8 image, got shape {base.shape}")
    tf = augmentation(cfg) if photometric else geometric_augmentation(cfg)
    if tf is None:
        return [base.copy() for _ in range(n)]
    t = torch.from_numpy(base.copy()).unsqueeze(0)
    out: list[np.ndarray] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for _ in range(n):
            out.append(tf(t)[0].numpy().copy())
    return out
