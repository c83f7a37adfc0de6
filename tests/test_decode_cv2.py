"""The cv2 fast path of h2a.data.imageio gives exactly what the PIL path gives.

Every file is read twice: once as shipped, once with the fast path switched off (the
PIL path that was the only decoder before issue 18). Pixels must be bit-identical
float32; broken files must fail with the same error class and the same message naming
the file.
"""

from __future__ import annotations

import functools
import io
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageOps

from h2a.data import imageio
from h2a.data.imageio import (
    CorruptImageError,
    ImageReadError,
    ImageTooLargeError,
    read_image,
)
from tests.corpus import png_bomb_bytes, read_with_peak

REAL = Path(__file__).resolve().parents[2] / "shared/data/rsna-fullres/boneage-training-dataset"
H, W = 157, 211  # with BAND_PIXELS, five conversion bands and a shorter last one
BAND_PIXELS = 1 << 13  # small bands (the default is 256 K pixels) keep the files small and fast
RNG = np.random.default_rng(18)
GRAY = np.clip(RNG.normal(120, 50, (H, W)), 0, 255).astype(np.uint8)
RGB = np.clip(RNG.normal(120, 60, (H, W, 3)), 0, 255).astype(np.uint8)
ALPHA = RNG.integers(0, 256, (H, W), dtype=np.uint8)
TWELVE = RNG.integers(0, 4096, (H, W), dtype=np.uint16)


def _enc(im: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _exif(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif


def _palette(colours: int = 60) -> Image.Image:
    return Image.fromarray(RGB).convert("P", palette=Image.Palette.ADAPTIVE, colors=colours)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")


def _png_short_idat() -> bytes:
    """A structurally valid PNG (good CRCs, IEND) whose image data stops at 40%."""
    raw = b"".join(b"\x00" + GRAY[r].tobytes() for r in range(H))
    ihdr = W.to_bytes(4, "big") + H.to_bytes(4, "big") + bytes([8, 0, 0, 0, 0])
    idat = zlib.compress(raw)[: len(zlib.compress(raw)) * 4 // 10]
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def _flip(data: bytes, at: float) -> bytes:
    out = bytearray(data)
    out[int(len(out) * at)] ^= 0x5A
    return bytes(out)


GOOD = {
    "gray8.png": lambda: _enc(Image.fromarray(GRAY)),
    "gray8_trns.png": lambda: _enc(Image.fromarray(GRAY), transparency=7),
    "gray16_12bit.png": lambda: _enc(Image.fromarray(TWELVE)),
    "gray16_8bit_values.png": lambda: _enc(Image.fromarray(GRAY.astype(np.uint16))),
    "bilevel.png": lambda: _enc(Image.fromarray(GRAY).convert("1")),
    "gray8_interlaced.png": lambda: cv2.imencode(".png", GRAY)[1].tobytes(),
    "rgb.png": lambda: _enc(Image.fromarray(RGB)),
    "rgb_trns.png": lambda: _enc(Image.fromarray(RGB), transparency=(1, 2, 3)),
    "rgb16.png": lambda: cv2.imencode(".png", RGB.astype(np.uint16) * 257 + 3)[1].tobytes(),
    "rgba.png": lambda: _enc(Image.fromarray(np.dstack([RGB, ALPHA]), "RGBA")),
    "la.png": lambda: _enc(Image.fromarray(np.dstack([GRAY, ALPHA]), "LA")),
    "palette.png": lambda: _enc(_palette()),
    "palette_trns.png": lambda: _enc(_palette(), transparency=3),
    "palette4_trns.png": lambda: _enc(_palette(16), transparency=0, bits=4),
    "gray.jpg": lambda: _enc(Image.fromarray(GRAY), "JPEG", quality=92),
    "gray_progressive.jpg": lambda: _enc(Image.fromarray(GRAY), "JPEG", progressive=True),
    "gray_trailer.jpg": lambda: _enc(Image.fromarray(GRAY), "JPEG") + b"\x00\x00PHONE-METADATA" * 40,
    "rgb.jpg": lambda: _enc(Image.fromarray(RGB), "JPEG", quality=92),
    "cmyk.jpg": lambda: _enc(Image.fromarray(RGB).convert("CMYK"), "JPEG"),
    **{f"gray_exif{o}.jpg": (lambda o=o: _enc(Image.fromarray(GRAY[:, :120]), "JPEG", exif=_exif(o)))
       for o in range(1, 9)},
    "rgb_exif6.jpg": lambda: _enc(Image.fromarray(RGB[:, :120]), "JPEG", exif=_exif(6)),
}
_gray_png = functools.cache(GOOD["gray8.png"])
_gray_jpg = functools.cache(GOOD["gray.jpg"])
_palette_png = functools.cache(GOOD["palette_trns.png"])
BROKEN = {
    **{f"gray_cut{p}.png": (lambda p=p: _gray_png()[: len(_gray_png()) * p // 100]) for p in (5, 40, 90, 99)},
    **{f"gray_cut{p}.jpg": (lambda p=p: _gray_jpg()[: len(_gray_jpg()) * p // 100]) for p in (5, 40, 90, 99)},
    "gray_cut_eoi_only.jpg": lambda: _gray_jpg()[: len(_gray_jpg()) // 2] + b"\xff\xd9",
    "gray_flipped_byte.png": lambda: _flip(_gray_png(), 0.5),
    "palette_flipped_byte.png": lambda: _flip(_palette_png(), 0.6),
    "gray_flipped_byte.jpg": lambda: _flip(_gray_jpg(), 0.5),
    "gray_short_idat.png": _png_short_idat,
    "gray_no_iend.png": lambda: _gray_png()[:-12],
    "header_only.png": lambda: _gray_png()[:40],
    "empty.png": lambda: b"",
}
# Kinds the fast path must take (the rest keep PIL's path; see imageio's notes).
FAST = {"gray8.png", "gray8_trns.png", "gray16_12bit.png", "gray16_8bit_values.png", "bilevel.png",
        "gray8_interlaced.png", "rgb_trns.png", "rgba.png", "la.png", "palette_trns.png",
        "palette4_trns.png", "gray.jpg", "gray_progressive.jpg", "gray_trailer.jpg",
        *(f"gray_exif{o}.jpg" for o in range(1, 9))}


@pytest.fixture(autouse=True)
def small_bands(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(imageio, "_BAND_PIXELS", BAND_PIXELS)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("decode")
    for name, make in {**GOOD, **BROKEN}.items():
        (d / name).write_bytes(make())
    return d


def _read(source, fast: bool, monkeypatch: pytest.MonkeyPatch):
    """read_image's result, or (error class, message) when it fails."""
    with monkeypatch.context() as m:
        if not fast:
            m.setattr(imageio, "_cv2_gray", lambda *args: None)
        try:
            return read_image(source)
        except ImageReadError as exc:
            return type(exc).__name__, str(exc)


def _assert_same(a, b) -> None:
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
        assert np.array_equal(a, b), f"{np.count_nonzero(a != b)} pixels differ, max {np.abs(a - b).max()}"
    else:
        assert a == b


def _fast_taken(source, monkeypatch: pytest.MonkeyPatch) -> bool:
    fast = imageio._cv2_gray
    taken: list[bool] = []

    def spy(*args):
        out = fast(*args)
        taken.append(out is not None)
        return out

    with monkeypatch.context() as m:
        m.setattr(imageio, "_cv2_gray", spy)
        try:
            read_image(source)
        except ImageReadError:
            pass
    return any(taken)


@pytest.mark.parametrize("name", list(GOOD))
def test_good_files_decode_identically(files: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    pil, fast = _read(files / name, False, monkeypatch), _read(files / name, True, monkeypatch)
    assert isinstance(pil, np.ndarray), pil
    _assert_same(pil, fast)
    assert _fast_taken(files / name, monkeypatch) == (name in FAST)


@pytest.mark.parametrize("name", list(BROKEN))
def test_broken_files_fail_alike(files: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Same outcome: the same error class and message naming the file (or, for a
    flipped byte both decoders read past, the same pixels)."""
    pil, fast = _read(files / name, False, monkeypatch), _read(files / name, True, monkeypatch)
    _assert_same(pil, fast)
    if isinstance(pil, tuple):
        assert name in pil[1]


def test_cut_off_gray_png_is_a_corrupt_image_naming_the_file(files: Path, monkeypatch) -> None:
    with pytest.raises(CorruptImageError, match="gray_cut90.png"):
        read_image(files / "gray_cut90.png")


@pytest.mark.parametrize("name", ["gray8.png", "palette_trns.png", "gray.jpg"])
def test_bytes_and_path_agree(files: Path, name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (files / name).read_bytes()
    _assert_same(_read(data, True, monkeypatch), _read(files / name, False, monkeypatch))


def test_gray_png_goes_through_cv2_imdecode_keeping_16_bits(files: Path, monkeypatch) -> None:
    seen: list[np.dtype] = []
    real = cv2.imdecode

    def spy(buf, flags):
        out = real(buf, flags)
        assert flags == cv2.IMREAD_UNCHANGED
        seen.append(out.dtype)
        return out

    monkeypatch.setattr(cv2, "imdecode", spy)
    read_image(files / "gray8.png")
    read_image(files / "gray16_12bit.png")
    assert seen == [np.uint8, np.uint16]


def test_exif_orientation_is_applied_on_the_fast_path(files: Path) -> None:
    """cv2's IMREAD_UNCHANGED ignores EXIF; the result must still be displayed upright."""
    for o in range(1, 9):
        upright = ImageOps.exif_transpose(Image.open(files / f"gray_exif{o}.jpg"))
        expected = np.asarray(upright, np.float32) * np.float32(1 / 255)
        got = read_image(files / f"gray_exif{o}.jpg")
        assert got.shape == expected.shape and np.array_equal(got, expected), o


def test_when_cv2_cannot_decode_pil_still_does(files: Path, monkeypatch) -> None:
    expected = _read(files / "gray8.png", False, monkeypatch)
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: None)
    _assert_same(read_image(files / "gray8.png"), expected)
    with pytest.raises(CorruptImageError, match="gray_cut40.png"):
        read_image(files / "gray_cut40.png")


def test_size_limit_is_checked_before_cv2_sees_the_file(tmp_path: Path, monkeypatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(cv2, "imdecode", lambda buf, flags: calls.append(1))
    path = tmp_path / "bomb.png"
    path.write_bytes(png_bomb_bytes(10_000, 9_000))
    with pytest.raises(ImageTooLargeError, match="bomb.png"):
        read_image(path)
    small = tmp_path / "small.png"
    small.write_bytes(_gray_png())
    with pytest.raises(ImageTooLargeError, match="small.png"):
        read_image(small, max_pixels=H * W - 1)
    assert calls == []


@pytest.mark.parametrize("mode", ["L", "I;16", "RGBA", "P", "LA"])
def test_fast_path_stays_within_the_decode_memory_bound(tmp_path: Path, mode: str, monkeypatch) -> None:
    """Issue 17's bound (numpy memory at most 1.75x the float32 result) at full band
    size: four-channel images are converted inside cv2's own buffer, not next to it."""
    monkeypatch.setattr(imageio, "_BAND_PIXELS", 1 << 18)
    ramp = np.linspace(0, 255, 1500 * 2000).reshape(1500, 2000).astype(np.uint8)  # as issue 17's test
    im = {"L": lambda: Image.fromarray(ramp), "I;16": lambda: Image.fromarray(ramp.astype(np.uint16) * 16),
          "RGBA": lambda: Image.fromarray(np.dstack([ramp, ramp, ramp[::-1], ramp[:, ::-1]]), "RGBA"),
          "P": lambda: Image.fromarray(ramp).convert("P"), "LA": lambda: Image.fromarray(np.dstack([ramp, ramp]), "LA")}[mode]()
    path = tmp_path / "big.png"
    im.save(path, compress_level=1, **({"transparency": 0} if mode == "P" else {}))
    assert _fast_taken(path, monkeypatch)
    img, peak = read_with_peak(path)
    assert peak / img.nbytes <= 1.75, f"{mode}: {peak / img.nbytes:.2f}x the result"


@pytest.mark.skipif(not REAL.is_dir(), reason="needs ../shared/data/rsna-fullres")
def test_real_rsna_originals_decode_identically(monkeypatch: pytest.MonkeyPatch) -> None:
    """8-bit gray and palette-with-transparency originals of the real dataset."""
    files = sorted(REAL.glob("*.png"))
    palettes = [p for p in files if Image.open(p).mode == "P"][:1]
    for path in files[:2] + palettes:
        _assert_same(_read(path, False, monkeypatch), _read(path, True, monkeypatch))
        assert _fast_taken(path, monkeypatch), path.name
