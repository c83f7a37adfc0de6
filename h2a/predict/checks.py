"""Cheap signs that an image is not a usable hand radiograph, each a coded ``Alert``.

A model answers for any array it is given; these checks (and the embedding check in
``h2a.predict.ood``) are what tells the reader that the answer may be meaningless:
nearly uniform, noise-like, extreme aspect ratio, colour photograph, DICOM of another
body part or modality. They never stop a prediction.

One check may change the image: an inverted or rotated radiograph
(``h2a.data.orientation``) is turned upright when that is certain and flagged when it is
not, because the model reads a wrong-way-round hand badly. ``checked_image`` runs every
check and returns the image to predict on; it is what the predictor calls.

Core module: no streamlit, no torch.
"""

from __future__ import annotations

import io

import cv2
import numpy as np

from h2a.data.imageio import ImageInfo
from h2a.data.orientation import OrientationResult, orientation_check
from h2a.predict.alerts import Alert, Code
from h2a.predict.inputs import Source

__all__ = ["HAND_PARTS", "NON_RADIOGRAPH_MODALITIES", "NOT_ORIENTED", "checked_image", "colourfulness", "downscale",
           "image_checks", "orientation_alerts"]

UNIFORM_SD = 0.02  # std of the [0, 1] image below which nothing is visible
UNIFORM_RANGE = 0.05  # 1st-99th percentile spread below which nothing is visible
NOISE_CORR = 0.3  # a radiograph's neighbouring pixels correlate > 0.9
MAX_ASPECT = 2.5
COLOUR_LIMIT = 0.08  # mean RGB (max - min) above which the image is in colour
HAND_PARTS = ("HAND", "WRIST", "EXTREMITY", "UPR EXTREMITY", "FINGER")
NON_RADIOGRAPH_MODALITIES = ("CT", "MR", "US", "NM", "PT", "MG", "XA", "RF", "ES", "OP", "SM", "XC")
# Images with these findings are not radiographs: asking which way round they are is meaningless.
NOT_ORIENTED = (Code.UNIFORM, Code.NOISE, Code.COLOUR)


def downscale(img: np.ndarray, side: int) -> np.ndarray:
    """``img`` shrunk (area interpolation) so its longer side is at most ``side``; never enlarged."""
    scale = side / max(img.shape)
    if scale >= 1:
        return img
    return cv2.resize(img, (max(1, round(img.shape[1] * scale)), max(1, round(img.shape[0] * scale))),
                      interpolation=cv2.INTER_AREA)


def colourfulness(source: Source) -> float | None:
    """Mean (max - min) over RGB channels in [0, 1] on a small copy; None if not colour.

    Read from the file itself because the decoder (``h2a.data.imageio``) already made
    the pixels grayscale: the colour is gone by the time ``image_checks`` sees them.
    """
    from PIL import Image

    try:
        data = io.BytesIO(bytes(source)) if isinstance(source, (bytes, bytearray, memoryview)) else open(source, "rb")
        with data, Image.open(data) as im:
            im.draft("RGB", (256, 256))
            if im.mode not in ("RGB", "RGBA", "P", "CMYK", "YCbCr"):
                return None
            if im.mode != "P":  # shrink first: converting an 80-megapixel image copies it whole
                im.thumbnail((256, 256))
            im = im.convert("RGB")
            im.thumbnail((256, 256))
            a = np.asarray(im, dtype=np.float32) / 255.0
    except Exception:  # noqa: BLE001 - a failed colour check is no finding
        return None
    return float((a.max(axis=2) - a.min(axis=2)).mean())


def _neighbour_correlation(img: np.ndarray) -> float:
    """Correlation of horizontally / vertically adjacent pixels (the smaller of the two).

    On a strided (not resampled) copy: interpolation would correlate even pure noise.
    """
    h, w = img.shape
    step = max(1, max(h, w) // 512)
    a = img[::step, ::step].astype(np.float32)
    a = a - a.mean()
    den = float((a * a).mean())
    return min(float((a[:, 1:] * a[:, :-1]).mean()), float((a[1:, :] * a[:-1, :]).mean())) / max(den, 1e-12)


def _structure_checks(img: np.ndarray) -> list[Alert]:
    small = downscale(img, 256).astype(np.float32)
    lo, hi = np.percentile(small, [1, 99])
    if float(small.std()) < UNIFORM_SD or hi - lo < UNIFORM_RANGE:
        return [Alert(Code.UNIFORM, "the image is nearly uniform (no visible structure): "
                                    "this is not a usable radiograph")]
    corr = _neighbour_correlation(img)
    if corr < NOISE_CORR:
        return [Alert(Code.NOISE, f"the image looks like noise (neighbouring pixels are uncorrelated, "
                                  f"r = {corr:.2f}): this does not look like a radiograph")]
    return []


def _dicom_checks(d: dict) -> list[Alert]:
    out: list[Alert] = []
    part = (d.get("body_part") or "").upper()
    if part and not any(k in part for k in HAND_PARTS):
        out.append(Alert(Code.BODY_PART, f"the DICOM says BodyPartExamined = {part}, not a hand"))
    mod = (d.get("modality") or "").upper()
    if mod in NON_RADIOGRAPH_MODALITIES:
        out.append(Alert(Code.MODALITY, f"the DICOM modality is {mod}, not a plain radiograph"))
    return out


def image_checks(img: np.ndarray, info: ImageInfo | None = None, colourfulness: float | None = None) -> list[Alert]:
    """Every check for one decoded image (float in [0, 1], H x W); [] for a plausible radiograph."""
    out = _structure_checks(img)
    h, w = img.shape
    ratio = max(h, w) / max(1, min(h, w))
    if ratio > MAX_ASPECT:
        out.append(Alert(Code.ASPECT, f"extreme aspect ratio ({w} x {h} px, {ratio:.1f}:1): "
                                      "not a typical hand radiograph"))
    if colourfulness is not None and colourfulness > COLOUR_LIMIT:
        out.append(Alert(Code.COLOUR, "the image is in colour (a photograph or a screenshot?), "
                                      "not a grayscale radiograph"))
    if info is not None and info.dicom:
        out += _dicom_checks(info.dicom)
    return out


def _turn(deg: int) -> str:
    """``OrientationResult.rotation`` (clockwise from upright) in words."""
    return {90: "turned a quarter turn clockwise", 180: "upside down (turned 180 degrees)",
            270: "turned a quarter turn counter-clockwise"}.get(deg, f"turned {deg} degrees")


def orientation_alerts(res: OrientationResult) -> list[Alert]:
    """The ``inverted`` / ``rotated`` alerts for one orientation finding, saying whether it was corrected."""
    if not res.deviates:
        return []
    out: list[Alert] = []
    if res.inverted:
        out.append(Alert(Code.INVERTED, (
            "the image looked inverted (dark bones on a bright background, as from a MONOCHROME1/2 mix-up): "
            "H2A inverted it back before predicting; check the image shown") if res.was_corrected else (
            "the image may be inverted (dark bones on a bright background): H2A was not sure and did NOT "
            "correct it, so the bone age below may be wrong; check the image and upload it the right way round")))
    if res.rotation:
        turn = _turn(int(res.rotation))
        out.append(Alert(Code.ROTATED, (
            f"the hand looked {turn} from upright: H2A turned it fingers-up before predicting; "
            "check the image shown") if res.was_corrected else (
            f"the hand may not be upright (it looks {turn}): H2A was not sure and did NOT turn it, so the "
            "bone age below may be wrong; check the image and upload it with the fingers pointing up")))
    return out


def checked_image(img: np.ndarray, info: ImageInfo | None = None,
                  colourfulness: float | None = None) -> tuple[np.ndarray, list[Alert]]:
    """Every check for one decoded image, and the image to predict on.

    The image comes back turned upright / un-inverted when ``orientation_check`` is
    certain (with an alert saying so), unchanged otherwise (with an alert when it looks
    wrong way round). Images that are not radiographs (uniform, noise, colour) skip the
    orientation check.
    """
    alerts = image_checks(img, info, colourfulness)
    if any(a.code in NOT_ORIENTED for a in alerts):
        return img, alerts
    res = orientation_check(img)
    return (res.corrected if res.corrected is not None else img), alerts + orientation_alerts(res)
