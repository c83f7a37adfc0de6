"""The data CLI as a user runs it: stats, inspect, demo-data, cache."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from tests.conftest import run_cli


def test_stats_json_agrees_with_the_real_csv(thumbs_dir: Path) -> None:
    proc = run_cli("stats", "--data", str(thumbs_dir), "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    csv = pd.read_csv(thumbs_dir / "boneage-training-dataset.csv")
    assert out["n_images"] == len(csv)
    assert out["n_male"] == int(csv["male"].sum())
    assert out["n_female"] == int((~csv["male"]).sum())
    ba = out["boneage_months"]
    assert abs(ba["mean"] - csv["boneage"].mean()) < 1e-3
    assert ba["median"] == csv["boneage"].median()
    assert (ba["min"], ba["max"]) == (csv["boneage"].min(), csv["boneage"].max())
    assert abs(out["by_sex"]["male"]["mean"] - csv.loc[csv["male"], "boneage"].mean()) < 1e-3
    assert abs(out["by_sex"]["female"]["mean"] - csv.loc[~csv["male"], "boneage"].mean()) < 1e-3
    bins = out["age_bins"]
    assert sum(bins["male"]) + sum(bins["female"]) == len(csv)
    first_bin_boys = int(((csv["boneage"] < 12) & csv["male"]).sum())
    assert bins["male"][0] == first_bin_boys
    assert out["width"] == {"n": len(csv), "mean": 100.0, "median": 100.0, "std": 0.0, "min": 100.0, "max": 100.0}
    assert out["problems"] == []


def test_stats_on_fullres_reports_real_resolutions(fullres_dir: Path) -> None:
    proc = run_cli("stats", "--data", str(fullres_dir), "--json")
    out = json.loads(proc.stdout)
    assert out["n_images"] == len(pd.read_csv(fullres_dir / "boneage-training-dataset.csv"))
    assert out["width"]["min"] >= 500 and out["height"]["max"] >= 1500


def test_stats_lists_problems_and_exits_zero(tmp_path: Path) -> None:
    root = tmp_path / "d"
    (root / "boneage-training-dataset").mkdir(parents=True)
    (root / "boneage-training-dataset.csv").write_text("id,boneage,male\n1,12,True\n2,x,False\n")
    from PIL import Image
    import numpy as np

    Image.fromarray(np.zeros((10, 12), np.uint8)).save(root / "boneage-training-dataset" / "1.png")
    proc = run_cli("stats", "--data", str(root), "--json")
    assert proc.returncode == 0
    out = json.loads(proc.stdout)
    assert out["n_images"] == 1
    assert out["problems"] == [{"item": "boneage-training-dataset.csv line 3 (id 2)",
                                "problem": "bone age 'x' is not a number: row skipped"}]
    text = run_cli("stats", "--data", str(root))
    assert text.returncode == 0 and "problems  1" in text.stdout


def test_stats_on_unusable_folder_is_one_clear_line(tmp_path: Path) -> None:
    (tmp_path / "labels.csv").write_text("name,age\nx,1\n")
    proc = run_cli("stats", "--data", str(tmp_path), "--json")
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "no label CSV with known columns" in lines[0]
    assert "Traceback" not in proc.stderr


def test_inspect_reports_every_file_of_the_bad_corpus(tmp_path: Path) -> None:
    from tests.corpus import make_corpus

    cases = make_corpus(tmp_path)
    files = [str(tmp_path / c.filename) for c in cases]
    proc = run_cli("inspect", *files, "--json")
    assert "Traceback" not in proc.stderr
    results = json.loads(proc.stdout)
    assert len(results) == len(cases)
    for case, res in zip(cases, results):
        assert res["ok"] == case.expect_ok, (case.filename, res)
        if not case.expect_ok:
            assert res["error_type"] == case.error_type, (case.filename, res)
            assert Path(case.filename).name in res["error"]
    assert proc.returncode == (0 if all(c.expect_ok for c in cases) else 1)


def test_inspect_dicom_tags(tmp_path: Path) -> None:
    from tests.corpus import make_dicom

    path = make_dicom(tmp_path / "hand.dcm", photometric="MONOCHROME1", sex="M", birth_date="20150302",
                      study_date="20260115", patient_age="010Y")
    proc = run_cli("inspect", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    res = json.loads(proc.stdout)
    assert res["format"] == "DICOM" and res["photometric"] == "MONOCHROME1"
    assert res["dicom"]["patient_sex"] == "M"
    assert res["dicom"]["birth_date"] == "2015-03-02" and res["dicom"]["study_date"] == "2026-01-15"
    assert "Doe" not in proc.stdout  # the patient's name never leaves the file
    human = run_cli("inspect", str(path))
    assert "sex=M" in human.stdout and "birth=2015-03-02" in human.stdout


def test_demo_data_and_cache_commands(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    proc = run_cli("demo-data", "--out", str(out), "--n", "30", "--seed", "5")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads(run_cli("stats", "--data", str(out), "--json").stdout)
    assert stats["n_images"] == 30 and stats["synthetic"] is True
    assert set(stats["splits"]) == {"train", "validation"}
    proc = run_cli("cache", "--data", str(out), "--image-size", "64", "--contrast", "clahe")
    assert proc.returncode == 0, proc.stderr
    assert "30 images x 64x64" in proc.stdout and "0 failed" in proc.stdout
    again = run_cli("cache", "--data", str(out), "--image-size", "64", "--contrast", "clahe")
    assert "(reused)" in again.stdout
    bad = run_cli("cache", "--data", str(out), "--image-size", "3")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
