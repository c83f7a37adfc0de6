"""Inverted and rotated radiographs: detected, corrected when certain, flagged otherwise; the crop."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from h2a.data.demo import render_hand
from h2a.data.orientation import (
    OrientationResult,
    crop_to_hand,
    hand_bbox,
    orientation_check,
)
from h2a.predict.alerts import Alert, Code, codes
from h2a.predict.checks import checked_image, orientation_alerts

THUMBS = Path(__file__).resolve().parents[2] / "shared" / "data" / "rsna-thumbs-100" / "boneage-training-dataset"
# (transform, the rotation clockwise from upright and the inversion it should be reported as)
VARIANTS = {
    "inverted": (lambda a: 1.0 - a, 0, True),
    "cw90": (lambda a: np.rot90(a, -1), 90, False),
    "180": (lambda a: np.rot90(a, 2), 180, False),
    "ccw90": (lambda a: np.rot90(a, 1), 270, False),
    "inverted+cw90": (lambda a: np.rot90(1.0 - a, -1), 90, True),
}


def _hand(seed: int, age: float = 120.0) -> np.ndarray:
    return render_hand(age, seed % 2 == 0, 500 + seed).astype(np.float32) / 255.0


@pytest.mark.parametrize("seed", range(4))
def test_upright_demo_hands_are_left_alone(seed: int) -> None:
    res = orientation_check(_hand(seed, 40.0 + 40 * seed))
    assert res.inverted is False and res.rotation == 0 and res.certain and res.corrected is None
    assert not res.deviates and orientation_alerts(res) == []


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_wrong_way_round_demo_hands_are_corrected(name: str) -> None:
    tf, rot, inv = VARIANTS[name]
    for seed in range(3):
        hand = _hand(seed)
        res = orientation_check(np.ascontiguousarray(tf(hand)))
        assert (res.rotation, res.inverted) == (rot, inv), (name, seed, res.scores)
        assert res.certain and res.corrected is not None
        np.testing.assert_allclose(res.corrected, hand, atol=1e-6)  # exactly the upright original


def test_checked_image_returns_the_upright_image_with_coded_alerts() -> None:
    hand = _hand(7)
    img, alerts = checked_image(np.ascontiguousarray(np.rot90(1.0 - hand, 2)))
    assert codes(alerts) == [Code.INVERTED, Code.ROTATED]
    np.testing.assert_allclose(img, hand, atol=1e-6)
    assert all("before predicting" in a.message for a in alerts)
    same, none = checked_image(hand)
    assert none == [] and same is hand


def test_uniform_and_noise_images_are_not_oriented() -> None:
    flat = np.full((200, 160), 0.4, np.float32)
    assert orientation_check(flat).rotation is None
    img, alerts = checked_image(flat)
    assert img is flat and codes(alerts) == [Code.UNIFORM]
    noise = np.random.default_rng(0).random((200, 160)).astype(np.float32)
    assert codes(checked_image(noise)[1]) == [Code.NOISE]


def test_alert_messages_say_whether_the_image_was_corrected() -> None:
    fixed = OrientationResult(True, 180, True, np.zeros((2, 2), np.float32), 0.5)
    unsure = OrientationResult(True, 90, False, None, 0.1)
    a, b = orientation_alerts(fixed), orientation_alerts(unsure)
    assert codes(a) == codes(b) == ["inverted", "rotated"]
    assert all("before predicting" in x.message and "NOT" not in x.message for x in a)
    assert all("NOT" in x.message for x in b)
    assert "upside down" in a[1].message and "quarter turn clockwise" in b[1].message
    assert Alert.from_dict(b[0].to_dict()) == b[0]
    assert Code("inverted") is Code.INVERTED and Code("rotated") is Code.ROTATED


def test_crop_to_hand_keeps_the_hand_and_drops_empty_border() -> None:
    hand = _hand(3)
    h, w = hand.shape
    canvas = np.zeros((h + 200, w + 300), np.float32)
    canvas[120:120 + h, 60:60 + w] = hand
    x0, y0, x1, y1 = hand_bbox(canvas, margin=0.0)
    assert x0 >= 40 and y0 >= 100 and x1 <= 60 + w + 20 and y1 <= 120 + h + 20  # not the empty border
    assert (x1 - x0) > 0.5 * w and (y1 - y0) > 0.5 * h  # but the hand
    crop = crop_to_hand(canvas)
    wide = hand_bbox(canvas, margin=0.1)
    assert crop.shape[0] < canvas.shape[0] and crop.shape[1] < canvas.shape[1]
    assert wide[0] <= x0 and wide[2] >= x1  # the margin widens the box
    flat = np.zeros((50, 40), np.float32)
    assert crop_to_hand(flat) is flat and hand_bbox(flat) is None


@pytest.mark.skipif(not THUMBS.is_dir(), reason="../shared/data/rsna-thumbs-100 not present")
def test_real_thumbnails_wrong_way_round_are_corrected_or_flagged() -> None:
    from h2a.data.imageio import read_image

    files = sorted(THUMBS.glob("*.png"))
    pick = np.random.default_rng(3).choice(len(files), 40, replace=False)
    imgs = [read_image(files[i]) for i in pick]
    alarms = sum(orientation_check(a).deviates for a in imgs)
    assert alarms <= 3, alarms  # measured ~2% false alarms on 500
    for name, (tf, rot, inv) in VARIANTS.items():
        res = [orientation_check(np.ascontiguousarray(tf(a))) for a in imgs]
        caught = sum(r.deviates for r in res)
        wrong = sum(r.was_corrected and (r.rotation, r.inverted) != (rot, inv) for r in res)
        assert caught >= 37 and wrong <= 2, (name, caught, wrong)


def test_hand_crop_option_frames_the_hand_the_same_however_it_was_shot() -> None:
    """The same hand small in a big empty film and filling the frame prepares (nearly) the
    same with ``hand_crop``; without it the two inputs differ. The CAM goes back onto the box."""
    from h2a.data.preprocess import PreprocessConfig, prepare
    from h2a.predict.predictor import cam_to_image

    h, w = 300, 200
    hand = np.zeros((h, w), np.float32)  # a bright shaded blob on black: the box is unambiguous
    cv2.ellipse(hand, (w // 2, h // 2), (w // 2 - 2, h // 2 - 2), 0, 0, 360, 1.0, -1)
    hand *= np.linspace(0.5, 1.0, h, dtype=np.float32)[:, None]
    canvas = np.zeros((3 * h, 3 * w), np.float32)
    canvas[h:2 * h, w // 2:w // 2 + w] = hand
    tight = np.zeros((h + 60, w + 90), np.float32)  # the same hand, framed tightly and off-centre
    tight[30:30 + h, 20:20 + w] = hand
    on, off = PreprocessConfig(size=128, resize="squash", hand_crop=True), PreprocessConfig(size=128, resize="squash")
    assert on.cache_key() != off.cache_key() and "hand_crop" not in off.deterministic_dict()

    def gap(cfg: PreprocessConfig) -> float:
        return float(np.abs(prepare(canvas, cfg).astype(float) - prepare(tight, cfg).astype(float)).mean())

    assert gap(on) < 4 < 20 < gap(off)
    cam = cam_to_image(np.ones((8, 8), np.float32), canvas.shape, on, canvas)
    x0, y0, x1, y1 = hand_bbox(canvas)
    assert cam[y0:y1, x0:x1].min() > 0.99 and cam.sum() == pytest.approx((x1 - x0) * (y1 - y0), rel=0.01)
