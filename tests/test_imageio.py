"""h2a.data.imageio against the shared corpus of good, odd and broken files, plus real data."""

from __future__ import annotations

import json
import pickle
import tempfile
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image, ImageFile, ImageOps

from h2a.data import imageio
from h2a.data.imageio import (
    CorruptImageError,
    DicomCompressedError,
    EmptyFileError,
    ImageReadError,
    ImageTooLargeError,
    NotAnImageError,
    inspect,
    read_header,
    read_image,
    to_uint8,
)
from tests import corpus
from tests.corpus import CorpusCase, gray8, make_corpus, make_dicom, phantom

with tempfile.TemporaryDirectory() as _scratch:  # only to learn the case list at collection
    CASES = make_corpus(Path(_scratch))
IDS = [c.filename for c in CASES]
PHI = [corpus.PATIENT_NAME, "Doe", corpus.PATIENT_ID, "ACC-987654", "Children's General"]
REAL_DIR = Path(__file__).resolve().parents[2] / "shared/data/rsna-fullres/boneage-training-dataset"


@pytest.fixture(scope="module")
def cdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("corpus")
    make_corpus(d)
    return d


def _minmax(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a, np.float64)
    return (a - a.min()) / (a.max() - a.min())


def _stored(path: Path) -> np.ndarray:
    """The raw stored values of a corpus DICOM, read independently of imageio."""
    return pydicom.dcmread(path).pixel_array.astype(np.float64)


# --------------------------------------------------------------------------- the corpus


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_read_header_outcome(cdir: Path, case: CorpusCase) -> None:
    path = cdir / case.filename
    if case.header_ok:
        info = read_header(path)
        assert info.name == case.filename
        assert info.width > 0 and info.height > 0 and info.file_size == path.stat().st_size
    else:
        with pytest.raises(ImageReadError) as err:
            read_header(path)
        assert type(err.value).__name__ == case.error_type


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_read_image_outcome(cdir: Path, case: CorpusCase) -> None:
    path = cdir / case.filename
    if case.expect_ok:
        img = read_image(path)
        info = read_header(path)
        assert img.dtype == np.float32 and img.ndim == 2
        assert img.shape == (info.height, info.width)
        assert np.isfinite(img).all() and img.min() >= 0.0 and img.max() <= 1.0
    else:
        with pytest.raises(ImageReadError) as err:
            read_image(path)
        exc = err.value
        assert type(exc).__name__ == case.error_type
        assert exc.name == case.filename and str(exc) == f"{case.filename}: {exc.problem}"
        assert "Traceback" not in str(exc) and "Error" not in exc.problem


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_inspect_never_raises_and_leaks_nothing(cdir: Path, case: CorpusCase) -> None:
    result = inspect(cdir / case.filename)
    assert result["file"] == case.filename
    assert result["ok"] is case.expect_ok
    assert result.get("error_type") == case.error_type
    text = json.dumps(result)  # also proves the dict is JSON-ready for the CLI
    for secret in PHI:
        assert secret not in text


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bytes_input_matches_path(cdir: Path, case: CorpusCase) -> None:
    data = (cdir / case.filename).read_bytes()
    by_bytes = inspect(data, name="upload-" + case.filename)
    by_path = inspect(cdir / case.filename)
    assert by_bytes["file"] == "upload-" + case.filename
    assert by_bytes["ok"] == by_path["ok"] and by_bytes.get("error_type") == by_path.get("error_type")
    if not case.expect_ok:
        assert by_bytes["error"].startswith("upload-" + case.filename + ": ")
    else:
        np.testing.assert_array_equal(read_image(data), read_image(cdir / case.filename))


# --------------------------------------------------------------------------- raster decoding


def test_gray8_png_is_exact(cdir: Path) -> None:
    np.testing.assert_allclose(read_image(cdir / "gray8.png"), gray8() / 255, atol=1e-7)


@pytest.mark.parametrize("filename", ["gray16_12bit.png", "gray16.tif"])
def test_12bit_data_in_16bit_file_is_not_dark(cdir: Path, filename: str) -> None:
    img = read_image(cdir / filename)
    assert img.max() > 0.85  # the disc (0.9): dividing by 65535 would give 0.056
    np.testing.assert_allclose(img, np.round(phantom() * 4095) / 4095, atol=1e-6)


def test_rgba_is_composited_on_black(cdir: Path) -> None:
    # White RGB everywhere with the picture in alpha: on black it is the picture,
    # on white (or with alpha dropped) it would be uniformly 1.
    np.testing.assert_allclose(read_image(cdir / "rgba.png"), gray8() / 255, atol=1e-5)


@pytest.mark.parametrize("filename,tolerance", [("cmyk.jpg", 0.03), ("palette.png", 0.05), ("rgb.jpg", 0.03)])
def test_colour_files_keep_the_picture(cdir: Path, filename: str, tolerance: float) -> None:
    img = read_image(cdir / filename)
    expected = gray8() / 255
    if filename == "rgb.jpg":  # tinted copy: BT.601 luminance of (g, .95 g, .9 g)
        expected = expected * (0.299 + 0.587 * 0.95 + 0.114 * 0.9)
    assert np.abs(img - expected).mean() < tolerance  # a wrong CMYK inversion is ~0.7 off


def test_float_and_multipage_tiff(cdir: Path) -> None:
    np.testing.assert_allclose(read_image(cdir / "float.tif"), _minmax(phantom()), atol=1e-5)
    np.testing.assert_allclose(read_image(cdir / "multipage.tif"), gray8() / 255, atol=1e-7)
    assert read_header(cdir / "multipage.tif").frames == 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pil(tmp_path: Path, orientation: int) -> None:
    stored = np.arange(12 * 20, dtype=np.uint8).reshape(12, 20)  # asymmetric, lossless PNG
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "oriented.png"
    Image.fromarray(stored).save(path, exif=exif)
    expected = np.asarray(ImageOps.exif_transpose(Image.open(path))) / 255
    img = read_image(path)
    np.testing.assert_allclose(img, expected, atol=1e-7)
    info = read_header(path)
    assert (info.height, info.width) == img.shape


def test_exif_rotated_jpeg_header_and_pixels_agree(cdir: Path) -> None:
    info = read_header(cdir / "exif_rotated.jpg")
    assert (info.width, info.height) == (corpus.HEIGHT, corpus.WIDTH)  # landscape once rotated
    img = read_image(cdir / "exif_rotated.jpg")
    assert np.abs(img - np.rot90(gray8(), -1) / 255).mean() < 0.02


# --------------------------------------------------------------------------- DICOM decoding


def test_monochrome1_is_inverted_so_bone_is_bright(cdir: Path) -> None:
    img = read_image(cdir / "mono1.dcm")
    disc = corpus.disc_mask()
    assert img[disc].mean() > 0.9 and img[~disc].mean() < 0.3
    np.testing.assert_allclose(img, _minmax(phantom()), atol=2e-3)


def test_window_clips_and_scales_as_the_tags_say(cdir: Path) -> None:
    path = cdir / "mono2_16_window.dcm"
    ds = pydicom.dcmread(path)
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    expected = np.clip((_stored(path) - (c - 0.5)) / (w - 1) + 0.5, 0, 1)  # PS3.3 C.11.2.1.2.1
    img = read_image(path)
    np.testing.assert_allclose(img, expected, atol=1e-5)
    assert img[corpus.disc_mask()].min() == 1.0  # clipped above the window
    assert 0.3 < img[~corpus.disc_mask()].max() < 0.99  # background spread inside it


def test_voi_lut_sequence_wins_over_window(cdir: Path) -> None:
    path = cdir / "voi_lut.dcm"
    expected = np.sqrt(_stored(path) / 4095)  # the square-root LUT make_dicom writes
    np.testing.assert_allclose(read_image(path), expected, atol=1e-4)
    facts = read_header(path).dicom
    assert facts["has_voi_lut"] is True and facts["window_center"] == 2048.0


@pytest.mark.parametrize("filename", ["mono2_12bit.dcm", "mono2_8bit.dcm", "signed_rescale.dcm",
                                      "multiframe.dcm", "no_preamble.dcm", "rgb.dcm"])
def test_dicom_without_voi_shows_the_whole_range(cdir: Path, filename: str) -> None:
    img = read_image(cdir / filename)
    assert img.shape == (corpus.HEIGHT, corpus.WIDTH)  # first frame only, no colour axis
    if filename == "rgb.dcm":
        np.testing.assert_allclose(img, np.round(phantom() * 255) / 255, atol=1e-5)
    else:
        np.testing.assert_allclose(img, _minmax(phantom()), atol=5e-3)  # 8-bit rounding
        assert img.max() == 1.0


def test_dicom_tags_become_iso_dates_and_sex(cdir: Path) -> None:
    facts = read_header(cdir / "sex_dates.dcm").dicom
    assert facts["patient_sex"] == "M"
    assert facts["birth_date"] == "2016-01-05"
    assert facts["study_date"] == facts["acquisition_date"] == "2026-01-10"
    assert facts["patient_age"] == "010Y" and facts["age_months"] == 120.0
    assert facts["modality"] == "DX" and facts["body_part"] == "HAND"
    assert facts["transfer_syntax"] == "Explicit VR Little Endian"
    empty = read_header(cdir / "no_sex.dcm").dicom
    assert empty["patient_sex"] is None and empty["birth_date"] is None and empty["study_date"] is None
    assert empty["age_months"] is None and empty["window_center"] is None and empty["has_voi_lut"] is False
    assert read_header(cdir / "gray8.png").dicom is None


@pytest.mark.parametrize("age,months", [("006M", 6.0), ("004W", 28 * 12 / 365.25), ("015D", 15 * 12 / 365.25),
                                        ("12Y", 144.0), ("bad", None), ("", None)])
@pytest.mark.filterwarnings("ignore:Invalid value for VR AS")  # '12Y' and 'bad' are off-standard on purpose
def test_patient_age_in_months(tmp_path: Path, age: str, months: float | None) -> None:
    facts = read_header(make_dicom(tmp_path / "a.dcm", patient_age=age)).dicom
    if months is None:
        assert facts["age_months"] is None
    else:
        assert facts["age_months"] == pytest.approx(months)


def test_compressed_dicom_says_which_syntax_and_what_helps(cdir: Path) -> None:
    with pytest.raises(DicomCompressedError) as err:
        read_image(cdir / "jpegls_no_plugin.dcm")
    assert "JPEG-LS" in str(err.value) and "pylibjpeg" in str(err.value) and "convert" in str(err.value)
    with pytest.raises(DicomCompressedError) as err:
        read_image(cdir / "j2k_bogus.dcm")
    assert "JPEG 2000" in str(err.value)


@pytest.mark.parametrize("kwargs", [{"pixel_data": False}, {"compressed": True}, {"bits": 8}])
def test_patient_name_never_appears_in_errors(tmp_path: Path, kwargs: dict) -> None:
    path = make_dicom(tmp_path / "p.dcm", patient_name="Secretname^Patient", **kwargs)
    outputs = [inspect(path), inspect(path.read_bytes())]
    for read in (read_header, read_image):
        try:
            outputs.append(str(read(path)) if read is read_header else "decoded")
        except ImageReadError as exc:
            outputs.append(str(exc))
    assert "Secretname" not in json.dumps(outputs)


# --------------------------------------------------------------------------- size guard


def test_bomb_is_refused_from_the_header(cdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(ImageTooLargeError) as err:
        read_image(cdir / "bomb.png")
    assert "claims 30000 x 30000 pixels (900 MP), above the 80 MP limit" in str(err.value)
    with pytest.raises(ImageTooLargeError) as err:  # under PIL's own limit: only H2A's check stops it
        read_image(cdir / "bomb_90mp.png")
    assert "10000 x 9000" in str(err.value)
    assert read_header(cdir / "bomb_90mp.png").width == 10_000  # the header itself is fine


def test_max_pixels_override(cdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    exact = corpus.HEIGHT * corpus.WIDTH
    assert read_image(cdir / "gray8.png", max_pixels=exact).shape == (corpus.HEIGHT, corpus.WIDTH)
    for filename in ("gray8.png", "mono2_12bit.dcm"):
        with pytest.raises(ImageTooLargeError, match="48 x 64"):
            read_image(cdir / filename, max_pixels=exact - 1)
    ds = pydicom.dcmread(cdir / "mono2_12bit.dcm")
    ds.Rows = ds.Columns = 20_000  # 400 MP claimed, 6 KB present
    ds.save_as(tmp_path / "huge.dcm")
    monkeypatch.setattr(imageio, "pixel_array", lambda *a, **k: pytest.fail("pixels were decoded"))
    with pytest.raises(ImageTooLargeError, match="20000 x 20000"):
        read_image(tmp_path / "huge.dcm")


# --------------------------------------------------------------------------- API details


def test_bytes_errors_name_the_upload() -> None:
    with pytest.raises(EmptyFileError, match="^scan.png: "):
        read_image(b"", name="scan.png")
    with pytest.raises(NotAnImageError, match=r"^notes.png: .*\(PNG, JPEG, TIFF or DICOM\)"):
        read_image(b"just some text", name="notes.png")
    with pytest.raises(CorruptImageError, match="^upload: the image data is truncated or damaged"):
        read_image(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)


def test_missing_file_and_folder(tmp_path: Path) -> None:
    with pytest.raises(ImageReadError, match="does not exist"):
        read_header(tmp_path / "nope.png")
    assert inspect(tmp_path / "nope.png")["ok"] is False
    assert inspect(tmp_path)["ok"] is False


def test_errors_survive_pickling() -> None:  # they cross process pools in the cache builder
    err = pickle.loads(pickle.dumps(CorruptImageError("a.png", "broken")))
    assert type(err) is CorruptImageError and err.name == "a.png" and str(err) == "a.png: broken"


def test_to_uint8() -> None:
    out = to_uint8(np.array([0.0, 0.5, 1.0, np.nan, 2.0, -1.0], np.float32))
    assert out.dtype == np.uint8 and out.tolist() == [0, 128, 255, 0, 255, 0]


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(not REAL_DIR.is_dir(), reason="real RSNA data not present")
def test_real_rsna_files_decode() -> None:
    files = sorted(REAL_DIR.glob("*.png"))[:3]
    assert files
    for path in files:
        info = read_header(path)
        img = read_image(path)
        assert info.format == "PNG" and img.shape == (info.height, info.width)
        assert img.dtype == np.float32 and 0.0 <= img.min() and img.max() <= 1.0
        assert img.max() > 0.5  # a radiograph has bright bone
        assert inspect(path)["ok"] is True


def test_check_integrity_catches_truncation_without_decoding(tmp_path) -> None:
    """The header scan's cheap check: truncated PNG/JPEG/DICOM fail, whole files pass."""
    from h2a.data.imageio import CorruptImageError, check_integrity
    from tests.corpus import make_corpus

    cases = make_corpus(tmp_path)
    for case in cases:
        path = tmp_path / case.filename
        truncated = case.filename.startswith("truncated")
        if truncated:
            with pytest.raises(CorruptImageError):
                check_integrity(path)
        elif case.expect_ok:
            check_integrity(path)
