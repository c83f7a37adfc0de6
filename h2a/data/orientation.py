"""Which way round is the hand? Inversion and 90-degree rotation, and a crop to the hand.

WHY: the model was trained on upright RSNA radiographs (fingers up, forearm leaving the
bottom edge, bright bone on a dark background). An upload with a MONOCHROME1/2 mix-up
(dark bones on a bright background) or turned by 90/180 degrees still gets an answer,
and a badly wrong one. Such images must be corrected when that is certain and flagged
when it is not.

How: classical image processing, no learned weights and no patient data. The image is
squashed to a small square, contrast-stretched, and compared (normalised correlation)
with a template of upright hands drawn by the synthetic demo generator
(``h2a.data.demo.render_hand``), in two channels: the intensities (where the bright
hand sits: palm and fingers up, forearm down) and a white top-hat (where the narrow
bright structures sit: the fingers). Eight hypotheses (4 rotations x inverted or not)
are scored; the image is called rotated / inverted only when another hypothesis beats
"as it is" by a margin, and corrected only when that margin is large and the winner is
clear. The thresholds were chosen on real RSNA images; ``bench/bench_ood.py
--orientation`` measures the false-alarm and detection rates they give.

This module only answers the question; ``h2a.predict.checks`` turns the answer into
coded alerts (the data layer does not import the predict layer).

Core module: no streamlit, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import cv2
import numpy as np
from h2a.data.demo import render_hand

__all__ = [
    "CROP_MARGIN",
    "OrientationResult",
    "crop_to_hand",
    "hand_bbox",
    "hand_mask",
    "orientation_check",
    "orientation_scores",
]

WORK_SIDE = 64  # the squashed, contrast-stretched copy the features are computed on
TEMPLATE_SIDE = 32  # the side the correlations are taken at
TOPHAT_KERNEL = 9  # px at WORK_SIDE: about a finger's width, so the top-hat keeps fingers and bones
TEMPLATE_HANDS = 24  # demo hands averaged into the template (about 1 s, once per process)
TEMPLATE_SEED = 0
MIN_CONTRAST = 0.02  # 1st-99th percentile spread below which there is nothing to orient
# Decision thresholds on the correlation scores (each channel's score is in [-1, 1]; two are summed).
FLAG_MARGIN = 0.05  # another hypothesis beats "as it is" by this much: flag
CORRECT_MARGIN = 0.2  # ... by this much, and
CLEAR_WINNER = 0.05  # the winner beats the runner-up by this much: correct
CROP_MARGIN = 0.05  # fraction of the hand's box added on every side by ``crop_to_hand``
ROTATIONS = (0, 90, 180, 270)


@dataclass(frozen=True)
class OrientationResult:
    """What ``orientation_check`` found.

    ``rotation`` is how far the image is turned CLOCKWISE from upright (so undoing it is
    ``np.rot90(img, rotation // 90)``, a counter-clockwise turn); ``inverted`` whether
    bright and dark are swapped. Both are the best guess (None when the image has no
    structure to judge). ``certain`` is True when the image is upright as it is, or when
    the deviation is clear enough to undo: then ``corrected`` holds the upright image
    (None when nothing needed undoing). A deviation that is likely but not certain has
    ``certain`` False and ``corrected`` None: the caller flags it.
    """

    inverted: bool | None
    rotation: int | None
    certain: bool
    corrected: np.ndarray | None
    evidence: float = 0.0  # best hypothesis minus "as it is" (0 when upright wins)
    scores: tuple[float, ...] = ()  # the 8 hypothesis scores: rotations 0/90/180/270, then the same inverted

    @property
    def deviates(self) -> bool:
        """True when the image looks inverted or rotated (corrected or not)."""
        return bool(self.inverted) or bool(self.rotation)

    @property
    def was_corrected(self) -> bool:
        return self.corrected is not None


def _stretch(img: np.ndarray) -> np.ndarray | None:
    """The WORK_SIDE square copy in [0, 1] (1st-99th percentile), None if nearly uniform."""
    a = cv2.resize(np.asarray(img, np.float32), (WORK_SIDE, WORK_SIDE), interpolation=cv2.INTER_AREA)
    lo, hi = np.percentile(a, [1, 99])
    if hi - lo < MIN_CONTRAST:
        return None
    return np.clip((a - lo) / (hi - lo), 0.0, 1.0)


def _unit(x: np.ndarray) -> np.ndarray:
    """Shrunk to TEMPLATE_SIDE, zero mean, unit norm: a dot product is then a correlation."""
    x = cv2.resize(x, (TEMPLATE_SIDE, TEMPLATE_SIDE), interpolation=cv2.INTER_AREA)
    x = x - x.mean()
    return x / max(float(np.linalg.norm(x)), 1e-9)


def _channels(work: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Intensity and white top-hat (narrow bright structures), both unit-normed."""
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (TOPHAT_KERNEL, TOPHAT_KERNEL))
    return _unit(work), _unit(cv2.morphologyEx(work, cv2.MORPH_TOPHAT, kernel))


@lru_cache(maxsize=1)
def _template() -> tuple[np.ndarray, np.ndarray]:
    """Mean channels of upright synthetic hands: drawn by code, so nothing is shipped or learned."""
    rng = np.random.default_rng(TEMPLATE_SEED)
    sums = [np.zeros((TEMPLATE_SIDE, TEMPLATE_SIDE), np.float32) for _ in range(2)]
    for seed in range(TEMPLATE_HANDS):
        hand = render_hand(float(rng.uniform(12, 216)), bool(rng.random() < 0.5), seed).astype(np.float32) / 255.0
        work = _stretch(hand)
        if work is None:
            continue
        for s, c in zip(sums, _channels(work)):
            s += c
    return _unit(sums[0]), _unit(sums[1])


def orientation_scores(img: np.ndarray) -> np.ndarray | None:
    """(8,) scores: index r = "np.rot90(img, r) is upright", 4 + r = the same after inverting.

    Each is the sum of the two channels' correlations with the upright template (so in
    [-2, 2]); None when the image is nearly uniform.
    """
    work = _stretch(img)
    if work is None:
        return None
    t_int, t_top = _template()
    out = np.zeros(8, np.float64)
    for inv in (0, 1):
        c_int, c_top = _channels(1.0 - work if inv else work)
        for r in range(4):
            out[4 * inv + r] = float((np.rot90(c_int, r) * t_int).sum() + (np.rot90(c_top, r) * t_top).sum())
    return out


def _undo(img: np.ndarray, hyp: int) -> np.ndarray:
    a = np.asarray(img, np.float32)
    if hyp >= 4:
        a = 1.0 - a
    return np.ascontiguousarray(np.rot90(a, hyp % 4), dtype=np.float32)


def orientation_check(img: np.ndarray) -> OrientationResult:
    """Is this (float [0, 1], H x W, bright = dense) hand radiograph inverted or rotated?

    Flags when another hypothesis beats "upright as it is" by FLAG_MARGIN; corrects when
    it wins by CORRECT_MARGIN and clearly beats the runner-up too (see the module
    docstring for the measured rates).
    """
    s = orientation_scores(img)
    if s is None:
        return OrientationResult(None, None, False, None)
    best = int(np.argmax(s))
    evidence = float(s[best] - s[0])
    scores = tuple(round(float(v), 4) for v in s)
    if best == 0 or evidence <= FLAG_MARGIN:
        return OrientationResult(False, 0, True, None, max(evidence, 0.0), scores)
    runner_up = float(np.sort(s)[-2])
    certain = evidence > CORRECT_MARGIN and s[best] - runner_up > CLEAR_WINNER
    return OrientationResult(best >= 4, ROTATIONS[best % 4], certain, _undo(img, best) if certain else None,
                             evidence, scores)


# ---------------------------------------------------------------- the hand's box


def hand_mask(img: np.ndarray, side: int = 256) -> np.ndarray:
    """Boolean mask (at most ``side`` px on the longer side) of the largest bright region.

    Otsu on a smoothed small copy, then closing (fills the gaps between bones and soft
    tissue) and opening (drops film grain and thin labels); the largest connected
    component is the hand and forearm. Side markers and labels are small, so they lose.
    """
    a = np.asarray(img, np.float32)
    scale = min(1.0, side / max(a.shape))
    small = cv2.resize(a, (max(1, round(a.shape[1] * scale)), max(1, round(a.shape[0] * scale))),
                       interpolation=cv2.INTER_AREA) if scale < 1 else a
    u8 = cv2.GaussianBlur(np.clip(small * 255.0 + 0.5, 0, 255).astype(np.uint8), (0, 0), 1.5)
    _, m = cv2.threshold(u8, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    k = max(3, (max(m.shape) // 40) | 1)
    ell = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k))
    m = cv2.morphologyEx(cv2.morphologyEx(m, cv2.MORPH_CLOSE, ell), cv2.MORPH_OPEN, ell)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return np.zeros(m.shape, bool)
    biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == biggest


def hand_bbox(img: np.ndarray, margin: float = CROP_MARGIN) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) in ``img`` pixels around the hand plus ``margin`` x its size on each
    side, clipped to the image; None when no hand-like region is found."""
    h, w = img.shape[:2]
    m = hand_mask(img)
    if not m.any():
        return None
    ys, xs = np.nonzero(m)
    sy, sx = h / m.shape[0], w / m.shape[1]
    x0, x1 = xs.min() * sx, (xs.max() + 1) * sx
    y0, y1 = ys.min() * sy, (ys.max() + 1) * sy
    mx, my = margin * (x1 - x0), margin * (y1 - y0)
    box = (max(0, int(x0 - mx)), max(0, int(y0 - my)), min(w, int(np.ceil(x1 + mx))), min(h, int(np.ceil(y1 + my))))
    if box[2] - box[0] < 2 or box[3] - box[1] < 2:
        return None
    return box


def crop_to_hand(img: np.ndarray, margin: float = CROP_MARGIN) -> np.ndarray:
    """``img`` cropped to the hand with a margin; the image unchanged when no hand is found.

    Whether cropping helps the model is for a validation run to decide; this only
    provides the crop.
    """
    box = hand_bbox(img, margin)
    if box is None:
        return img
    x0, y0, x1, y1 = box
    return img[y0:y1, x0:x1]
