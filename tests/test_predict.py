"""Upload-and-predict core: DICOM tags -> sex and age, SDS, batch errors, TTA, OOD, PDF, CLI."""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from h2a.data.datasets import load_dataset
from h2a.data.imageio import read_image
from h2a.data.preprocess import PreprocessConfig, prepare
from h2a.predict.alerts import Alert, Code, codes
from h2a.predict.batch import predict_files
from h2a.predict.clinical import gp_reference
from h2a.predict.predictor import NoModelError, Predictor, cam_to_image
from h2a.predict.report import batch_csv, pdf_report
from tests.conftest import run_cli
from tests.corpus import PATIENT_ID, PATIENT_NAME, make_dicom


def _val_image(tiny_run: Path, demo_dir: Path, k: int = 0) -> tuple[Path, bool, float]:
    """A validation image of the tiny run: (path, male, bone age)."""
    meta = json.loads((tiny_run / "metadata.json").read_text())
    ds = load_dataset(demo_dir)
    rows = ds.meta[ds.meta["id"].astype(str).isin(set(meta["splits"]["validation"]))].sort_values("id")
    row = rows.iloc[k]
    return Path(row["path"]), bool(row["male"]), float(row["boneage"])


@pytest.fixture(scope="module")
def files(tmp_path_factory, tiny_run, demo_dir) -> dict[str, Path]:
    """A demo hand as PNG and as DICOMs (MONOCHROME1/2, 16-bit, window, VOI LUT, no tags), plus odd files."""
    d = tmp_path_factory.mktemp("predict-files")
    png, _, _ = _val_image(tiny_run, demo_dir)
    u8 = np.asarray(Image.open(png).convert("L"))
    v16 = u8.astype(np.uint16) * 257
    out = {"png": png}
    out["mono2"] = make_dicom(d / "mono2.dcm", photometric="MONOCHROME2", bits=16, array=v16, sex="M",
                              birth_date="20150302", study_date="20260115", window=(32767.5, 65536))
    out["mono1"] = make_dicom(d / "mono1.dcm", photometric="MONOCHROME1", bits=16, array=65535 - v16, sex="F",
                              birth_date="20150302", study_date="20260115", window=(32767.5, 65536))
    with warnings.catch_warnings():  # a 65536-entry LUT is written as UN; pydicom says so
        warnings.simplefilter("ignore", UserWarning)
        out["voi"] = make_dicom(d / "voi.dcm", bits=16, array=v16, voi_lut=True, sex="M", birth_date=None,
                                study_date=None, patient_age="010Y")
    out["untagged"] = make_dicom(d / "untagged.dcm", bits=16, array=v16, sex=None, birth_date=None,
                                 study_date=None)
    out["corrupt"] = d / "corrupt.png"
    out["corrupt"].write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    out["white"] = d / "white.png"
    Image.fromarray(np.full((400, 300), 255, np.uint8)).save(out["white"])
    out["noise"] = d / "noise.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (400, 300), dtype=np.uint8)).save(out["noise"])
    return out


@pytest.fixture(scope="module")
def batch(files, tiny_run, tmp_path_factory) -> tuple[list[dict], Path]:
    """One predict_files call over every DICOM plus a corrupt file, writing PDF reports."""
    report_dir = tmp_path_factory.mktemp("reports")
    names = ["mono2", "mono1", "voi", "untagged", "corrupt"]
    results = predict_files(str(tiny_run), [str(files[n]) for n in names], tta=8, report_dir=report_dir)
    return results, report_dir


def _by_file(results: list[dict], path: Path) -> dict:
    return next(r for r in results if r["file"] == str(path))


def test_sex_and_dates_come_from_the_dicom(batch, files) -> None:
    results, _ = batch
    m2 = _by_file(results, files["mono2"])
    assert "error" not in m2
    assert (m2["sex"], m2["sex_source"]) == ("male", "dicom")
    expected_ca = (np.datetime64("2026-01-15") - np.datetime64("2015-03-02")).astype(int) / (365.25 / 12)
    assert m2["chronological_age_months"] == pytest.approx(expected_ca, abs=0.01)
    assert m2["chronological_age_source"] == "DICOM dates"
    _, sd, _ = gp_reference(expected_ca, male=True)
    assert m2["sds"] == pytest.approx((m2["bone_age_months"] - expected_ca) / sd, abs=2e-3)
    assert m2["ba_minus_ca_months"] == pytest.approx(m2["bone_age_months"] - expected_ca, abs=0.02)
    assert m2["classification"] in ("delayed", "within normal limits", "advanced")
    m1 = _by_file(results, files["mono1"])
    assert (m1["sex"], m1["sex_source"]) == ("female", "dicom")
    voi = _by_file(results, files["voi"])
    assert voi["chronological_age_months"] == pytest.approx(120.0)
    assert voi["chronological_age_source"].startswith("DICOM PatientAge")


def test_monochrome1_and_2_give_the_png_answer(files, tiny_run) -> None:
    """The same hand stored three ways (PNG, MONOCHROME2 + window, inverted MONOCHROME1) predicts the same."""
    p = Predictor(str(tiny_run))
    ages = [p.predict_image(str(files[k]), sex="male", age_months=100).bone_age_months for k in ("png", "mono2", "mono1")]
    assert ages[0] is not None
    assert ages[1] == pytest.approx(ages[0], abs=0.5)
    assert ages[2] == pytest.approx(ages[0], abs=0.5)
    # the VOI LUT (square root) really changes the picture the model sees
    voi = p.predict_image(str(files["voi"]), sex="male")
    assert not np.array_equal(prepare(read_image(files["voi"]), p.runs[0].preprocess),
                              prepare(read_image(files["mono2"]), p.runs[0].preprocess))
    assert voi.ok


def test_no_sex_anywhere_is_an_error_for_that_file_only(batch, files) -> None:
    results, _ = batch
    r = _by_file(results, files["untagged"])
    assert r["error"].startswith("sex is needed")
    assert "bone_age_months" not in r
    assert sum("error" not in x for x in results) == 3  # mono2, mono1, voi still predicted


def test_corrupt_file_does_not_stop_the_batch(batch, files) -> None:
    results, _ = batch
    assert [r["file"] for r in results][-1] == str(files["corrupt"])
    bad = _by_file(results, files["corrupt"])
    assert "damaged" in bad["error"] or "truncated" in bad["error"]
    csv_text = batch_csv(results).decode()
    assert csv_text.splitlines()[0].startswith("file,sex,")
    assert "sex is needed" in csv_text and "damaged" in csv_text
    assert len(csv_text.strip().splitlines()) == 1 + len(results)


def test_given_sex_wins_and_disagreement_is_a_warning(files, tiny_run) -> None:
    results = predict_files(str(tiny_run), [str(files["untagged"]), str(files["mono1"])], sex="male", tta=2)
    untagged, mono1 = results
    assert (untagged["sex"], untagged["sex_source"]) == ("male", "given")
    assert untagged["chronological_age_months"] is None and untagged["sds"] is None  # no age anywhere
    assert (mono1["sex"], mono1["sex_source"]) == ("male", "given")
    [mismatch] = [w for w in mono1["warnings"] if w["code"] == "sex_mismatch"]
    assert "differs from the DICOM PatientSex (F)" in mismatch["message"]


def test_given_age_beats_dicom_dates(files, tiny_run) -> None:
    [r] = predict_files(str(tiny_run), [str(files["mono2"])], age_months=60, tta=1)
    assert r["chronological_age_months"] == 60 and r["chronological_age_source"] == "age at exam given"
    [r] = predict_files(str(tiny_run), [str(files["mono2"])], dob="2020-01-01", exam_date="2021-01-01", tta=1)
    assert r["chronological_age_months"] == pytest.approx(366 / 30.4375, abs=0.01)
    with pytest.raises(ValueError, match="before the date of birth"):
        predict_files(str(tiny_run), [str(files["mono2"])], dob="2021-01-02", exam_date="2021-01-01")


def test_tta_interval_contains_estimate_and_is_conformal(files, tiny_run) -> None:
    from h2a.inference.conformal import conformal_from_dict

    cal = json.loads((tiny_run / "calibration.json").read_text())
    conf = conformal_from_dict(cal["interval"])  # whichever method validation chose
    p = Predictor(str(tiny_run))
    r8 = p.predict_image(str(files["png"]), sex="female", tta=8)
    lo, hi = r8.interval_months
    assert lo <= r8.bone_age_months <= hi
    assert r8.tta == 8 and r8.tta_sd_months > 0  # augmented copies really differ
    half = conf.half_width([r8.bone_age_months], [False])[0]  # the group of the predicted age and given sex
    assert hi - r8.bone_age_months == pytest.approx(half, rel=1e-6)
    assert r8.interval_source == "conformal" and not r8.interval_procedure_mismatch
    again = p.predict_image(str(files["png"]), sex="female", tta=8)
    assert again.bone_age_months == r8.bone_age_months  # seeded: the same answer every time
    r1 = p.predict_image(str(files["png"]), sex="female", tta=1)
    assert r1.tta_sd_months == 0 and r1.interval_procedure_mismatch  # calibrated for 8 copies, not 1


def test_ensemble_of_two_runs(files, tiny_run) -> None:
    p = Predictor([str(tiny_run), str(tiny_run)])  # the same run twice collapses to one
    assert p.names == [tiny_run.name]
    r = p.predict_image(str(files["png"]), sex="male", tta=2)
    assert r.ok and len(r.members) == 1


def test_ood_warning_for_white_and_noise_not_for_a_demo_image(files, tiny_run, demo_dir) -> None:
    p = Predictor(str(tiny_run))
    demo = p.predict_image(str(files["png"]), sex="female")
    assert demo.ood_score is not None and demo.ood_score <= 1.0
    assert Code.OUT_OF_DISTRIBUTION not in codes(demo.warnings)
    other, male, _ = _val_image(tiny_run, demo_dir, k=3)
    assert Code.OUT_OF_DISTRIBUTION not in codes(p.predict_image(str(other), sex=male).warnings)
    for name in ("white", "noise"):
        r = p.predict_image(str(files[name]), sex="female")
        assert r.ood_score > 1.0, name
        assert codes(r.warnings)[0] == Code.OUT_OF_DISTRIBUTION, (name, r.warnings)  # the most important first
    white = p.predict_image(str(files["white"]), sex="female")
    assert Code.UNIFORM in codes(white.warnings)
    noise = p.predict_image(str(files["noise"]), sex="female")
    assert Code.NOISE in codes(noise.warnings) and Code.UNIFORM not in codes(noise.warnings)
    assert (tiny_run / "ood.npz").exists()  # computed once, cached in the run folder


def test_cam_follows_the_original_geometry(files, tiny_run) -> None:
    r = Predictor(str(tiny_run)).predict_image(str(files["noise"]), sex="male", cam=True)
    assert r.cam.shape == r.image.shape == (400, 300)
    assert 0.0 <= r.cam.min() and r.cam.max() <= 1.0
    cfg = PreprocessConfig(size=64, resize="pad")
    cam = np.zeros((64, 64), np.float32)
    cam[:, 32:] = 1.0  # right half of the square input
    back = cam_to_image(cam, (200, 100), cfg)  # portrait: content spans columns 16..47 of the input
    assert back.shape == (200, 100)
    assert back[:, :40].max() < 0.05 and back[:, 60:].min() > 0.95


def test_pdf_holds_numbers_and_no_identifiers(batch, files) -> None:
    from pypdf import PdfReader

    results, report_dir = batch
    r = _by_file(results, files["mono2"])
    pdf_path = Path(r["report"])
    assert pdf_path.parent == report_dir and pdf_path.stat().st_size > 5000
    reader = PdfReader(str(pdf_path))
    assert len(reader.pages) == 1
    text = reader.pages[0].extract_text()
    assert f"{r['bone_age_months']:.1f} months" in text
    assert f"{r['sds']:+.2f}" in text
    assert r["classification"] in text
    assert "Research use only" in text or "RESEARCH USE ONLY" in text
    assert "Greulich" in text and "tiny-boneage" in text
    raw = pdf_path.read_bytes()
    for ident in (PATIENT_NAME, "Doe", "Jane", PATIENT_ID, "ACC-987654", "Children's General", "mono2"):
        assert ident not in text and ident.encode() not in raw, ident
    assert not any(p.stem == "untagged" for p in report_dir.iterdir())  # no report for a failed file


def test_pdf_prints_a_typed_label_and_handles_no_age(files, tiny_run) -> None:
    from pypdf import PdfReader

    r = Predictor(str(tiny_run)).predict_image(str(files["untagged"]), sex="female", tta=2)
    assert r.assessment is None
    data = pdf_report(r, patient_label="Study case 17")
    text = PdfReader(io.BytesIO(data)).pages[0].extract_text()
    assert "Study case 17" in text and "No chronological age" in text
    assert f"{r.bone_age_months:.1f} months" in text


def test_no_model_is_a_clear_error(monkeypatch, tmp_path, files) -> None:
    monkeypatch.setenv("H2A_MODELS_DIR", str(tmp_path / "empty-models"))
    with pytest.raises(NoModelError, match="no trained bone-age model"):
        predict_files(None, [str(files["png"])], sex="male")
    proc = run_cli("predict", str(files["png"]), "--sex", "male", env={"H2A_MODELS_DIR": str(tmp_path / "none")})
    assert proc.returncode == 2
    assert "no trained bone-age model" in proc.stderr and "Traceback" not in proc.stderr


def test_cli_json_dicom_tags_and_given_sex(files, tiny_run) -> None:
    proc = run_cli("predict", "--model", str(tiny_run), str(files["mono1"]), str(files["untagged"]),
                   str(files["corrupt"]), "--tta", "2", "--json")
    assert proc.returncode == 1, proc.stderr  # one file failed
    out = json.loads(proc.stdout)
    mono1, untagged, corrupt = out
    assert (mono1["sex"], mono1["sex_source"]) == ("female", "dicom")
    assert mono1["chronological_age_months"] > 0 and mono1["sds"] is not None
    lo, hi = mono1["interval_months"]
    assert lo <= mono1["bone_age_months"] <= hi
    assert untagged["error"].startswith("sex is needed")
    assert "error" in corrupt
    assert PATIENT_NAME not in proc.stdout and PATIENT_ID not in proc.stdout
    proc = run_cli("predict", "--model", str(tiny_run), str(files["untagged"]), "--sex", "female",
                   "--age-months", "96", "--tta", "2", "--json")
    assert proc.returncode == 0, proc.stderr
    one = json.loads(proc.stdout)
    assert (one["sex"], one["sex_source"]) == ("female", "given")
    assert one["chronological_age_months"] == 96 and one["classification"]


# ---------------------------------------------------------------- coded warnings

def _smooth(h: int, w: int) -> np.ndarray:
    """A smooth gradient in [0, 1]: structure without noise, so only the check under test fires."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    return (0.5 + 0.4 * np.sin(x / 13.0) * np.cos(y / 17.0)).astype(np.float32)


def test_image_checks_give_codes() -> None:
    from types import SimpleNamespace

    from h2a.predict.checks import image_checks

    assert image_checks(_smooth(400, 300)) == []  # a plausible image: no alert at all
    black = image_checks(np.zeros((400, 300), np.float32))
    assert codes(black) == [Code.UNIFORM] and all(isinstance(a, Alert) for a in black)
    assert codes(image_checks(np.random.default_rng(0).random((400, 300), dtype=np.float32))) == [Code.NOISE]
    assert codes(image_checks(_smooth(100, 400))) == [Code.ASPECT]
    assert codes(image_checks(_smooth(400, 300), colourfulness=0.3)) == [Code.COLOUR]
    assert codes(image_checks(_smooth(400, 300), colourfulness=0.01)) == []
    dicom = SimpleNamespace(dicom={"body_part": "CHEST", "modality": "CT"})
    assert codes(image_checks(_smooth(400, 300), dicom)) == [Code.BODY_PART, Code.MODALITY]
    hand = SimpleNamespace(dicom={"body_part": "HAND", "modality": "CR"})
    assert image_checks(_smooth(400, 300), hand) == []


def test_alert_json_round_trip() -> None:
    a = Alert(Code.NEAR_MATURE, "near the end of the atlas")
    assert a.to_dict() == {"code": "near_mature", "message": "near the end of the atlas"}
    assert json.loads(json.dumps(a.to_dict())) == a.to_dict()
    assert Alert.from_dict(a.to_dict()) == a
    with pytest.raises(ValueError):
        Alert.from_dict({"code": "no such code", "message": "x"})


def test_colour_photo_and_black_image_are_coded(tiny_run, tmp_path) -> None:
    p = Predictor(str(tiny_run))
    rgb = np.zeros((300, 240, 3), np.uint8)
    rgb[..., 0] = np.linspace(0, 255, 240, dtype=np.uint8)[None, :]
    rgb[..., 1] = np.linspace(255, 0, 300, dtype=np.uint8)[:, None]
    rgb[100:200, 80:160, 2] = 220
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    photo = p.predict_image(buf.getvalue(), "photo.png", sex="male", tta=1, cam=False)
    assert photo.ok and Code.COLOUR in codes(photo.warnings), photo.warnings
    black = tmp_path / "black.png"
    Image.fromarray(np.zeros((300, 240), np.uint8)).save(black)
    r = p.predict_image(str(black), sex="male", tta=1, cam=False)
    assert r.ok and Code.UNIFORM in codes(r.warnings) and Code.COLOUR not in codes(r.warnings)
    d = r.to_dict()
    assert all(set(w) == {"code", "message"} for w in d["warnings"])
    assert "uniform" in [w["code"] for w in d["warnings"]]
    json.dumps(d)  # JSON-ready as it is


def test_age_beyond_reference_and_synthetic_model_are_coded(files, tiny_run) -> None:
    p = Predictor(str(tiny_run))
    girl = p.predict_image(str(files["png"]), sex="female", age_months=17 * 12, tta=1, cam=False)
    assert girl.assessment.out_of_table
    assert Code.REFERENCE_EXTRAPOLATED in codes(girl.warnings)
    [ref] = [w for w in girl.warnings if w.code == Code.REFERENCE_EXTRAPOLATED]
    assert ref.message in girl.assessment.notes  # the same sentence, once
    assert Code.SYNTHETIC_MODEL in codes(girl.warnings)  # the tiny run learned from demo images
    inside = p.predict_image(str(files["png"]), sex="female", age_months=10 * 12, tta=1, cam=False)
    assert Code.REFERENCE_EXTRAPOLATED not in codes(inside.warnings)


def test_pdf_and_csv_carry_coded_warnings(files, tiny_run) -> None:
    from pypdf import PdfReader

    r = Predictor(str(tiny_run)).predict_image(str(files["white"]), sex="female", age_months=120, tta=1)
    [uniform] = [w for w in r.warnings if w.code == Code.UNIFORM]
    text = " ".join(PdfReader(io.BytesIO(pdf_report(r))).pages[0].extract_text().split())
    assert "Warnings" in text and " ".join(uniform.message.split()) in text
    rows = batch_csv([r, r.to_dict()]).decode().splitlines()
    header = rows[0].split(",")
    assert "warning_codes" in header
    for row in rows[1:]:
        assert "uniform" in row and "out_of_distribution" in row and "nearly uniform" in row


def test_cli_json_warnings_are_objects(files, tiny_run) -> None:
    proc = run_cli("predict", "--model", str(tiny_run), str(files["white"]), "--sex", "female", "--tta", "1",
                   "--json")
    assert proc.returncode == 0, proc.stderr
    one = json.loads(proc.stdout)
    assert one["warnings"] and all(set(w) == {"code", "message"} for w in one["warnings"])
    got = [w["code"] for w in one["warnings"]]
    assert got[0] == "out_of_distribution" and "uniform" in got
    assert set(got) <= {c.value for c in Code}
